"""Reading the pool's feature rows block by block for scoring (:mod:`lightning_less.selection.scoring`).

A block is copied out of the (possibly memory-mapped, fp16, or quantized) array into
reused buffers, the next block being read by a background thread while the current one
is scored; for a ``np.memmap`` the pages of a consumed block are released, so they do
not pile up in the process's resident set. The rows of an ``int8`` / ``1bit`` store are
read as codes and dequantized per block (:mod:`lightning_less.stores.quantize`).
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lightning_less.stores.quantize import QuantizedRows, decode_into


class MappedRows:
    """Releases the pages of consumed rows of a ``np.memmap`` (or a row-strided view of one).

    ``MADV_DONTNEED`` drops the pages from this process's resident set; they stay in
    the OS page cache. Without it every touched page of a memory-mapped store counts
    in RSS until the end of the pass.
    """

    def __init__(self, array: np.memmap) -> None:
        self.mapped: mmap.mmap = array._mmap
        view = np.frombuffer(self.mapped, dtype=np.uint8)
        self.base = view.ctypes.data
        self.size = view.size
        del view  # release the buffer export at once
        self.array = array

    @staticmethod
    def usable(array: Any) -> bool:
        return (
            isinstance(array, np.memmap)
            and getattr(array, "_mmap", None) is not None
            and hasattr(mmap, "MADV_DONTNEED")
            and array.strides[1] == array.itemsize
            and array.strides[0] > 0
        )

    def release(self, start: int, stop: int) -> None:
        first = self.array[start].ctypes.data - self.base
        last = self.array[stop - 1].ctypes.data - self.base + self.array.strides[1] * self.array.shape[1]
        first -= first % mmap.PAGESIZE
        self.mapped.madvise(mmap.MADV_DONTNEED, first, min(last, self.size) - first)


class BlockReader:
    """Reads row blocks of the pool arrays one step ahead of their use.

    Blocks are read in the order they are scored (block 0 of every snapshot, then
    block 1, ...). A single background thread copies the next block from disk into
    one of two reused host buffers while the current one is scored, so reading the
    store and scoring overlap (numpy releases the GIL while copying). The fp32 buffer
    is shared by all snapshots, so peak memory is about two blocks in their stored
    dtype plus one fp32 block, whatever the pool size.
    """

    def __init__(self, pool: Sequence[Any], block_size: int, device: torch.device) -> None:
        self.pool = pool
        self.block_size = block_size
        self.device = device
        self._host: dict[tuple[np.dtype, int, int], np.ndarray] = {}
        self._fp32: dict[int, torch.Tensor] = {}
        # A quantized store's rows are read as codes (int8 or packed signs) and dequantized per block.
        self._stored = [a.codes if isinstance(a, QuantizedRows) else a for a in pool]
        self._mapped = [MappedRows(a) if MappedRows.usable(a) else None for a in self._stored]

    def _fetch(self, i: int, start: int, stop: int, slot: int) -> Any:
        array = self._stored[i]
        if isinstance(array, torch.Tensor):
            return array[start:stop].detach()
        d = int(array.shape[1])
        dtype = np.asarray(array[:0]).dtype
        host = self._host.get((dtype, d, slot))
        if host is None:
            host = self._host[(dtype, d, slot)] = np.empty((self.block_size, d), dtype=dtype)
        host = host[: stop - start]
        np.copyto(host, array[start:stop], casting="unsafe")
        if self._mapped[i] is not None:
            self._mapped[i].release(start, stop)
        quantized = self.pool[i]
        if isinstance(quantized, QuantizedRows):
            return host, np.array(quantized.scales[start:stop], dtype=np.float32), quantized
        return torch.from_numpy(host)

    def _to_fp32(self, src: torch.Tensor | tuple[np.ndarray, np.ndarray, QuantizedRows]) -> torch.Tensor:
        if self.device.type != "cpu" and isinstance(src, torch.Tensor):
            return src.to(device=self.device).to(torch.float32)
        rows, d = (src[0].shape[0], src[2].shape[1]) if isinstance(src, tuple) else src.shape
        out = self._fp32.get(d)
        if out is None:
            out = self._fp32[d] = torch.empty((self.block_size, d), dtype=torch.float32)
        out = out[:rows]
        if isinstance(src, tuple):  # dequantized straight into the reused fp32 buffer
            decode_into(out.numpy(), src[0], src[1], src[2].dtype)
            return out.to(self.device)
        out.copy_(src)  # torch's fp16 -> fp32 copy is several times faster than numpy's astype
        return out

    def blocks(self, first: int, stop: int) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """Yield ``(snapshot, start, stop, fp32 rows)`` of rows ``[first, stop)``; each tensor is valid until the next."""
        tasks = [(i, start, min(start + self.block_size, stop)) for start in range(first, stop, self.block_size)
                 for i in range(len(self.pool))]
        if not tasks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="influence-read") as io:
            pending = io.submit(self._fetch, *tasks[0], 0)
            for k, (i, start, stop) in enumerate(tasks):
                src = pending.result()
                if k + 1 < len(tasks):
                    # Slot (k + 1) % 2 was last used by task k - 1, which is finished.
                    pending = io.submit(self._fetch, *tasks[k + 1], (k + 1) % 2)
                yield i, start, stop, self._to_fp32(src)
            # An exception in the consumer leaves at most one read in flight; the
            # executor's exit waits for it.
