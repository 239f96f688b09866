"""Random projections of per-example gradients, chosen explicitly, never by fallback.

LESS projects each (Adam-transformed or raw) gradient with a Johnson–Lindenstrauss
matrix R [grad_dim x d] (docs/algorithms.md §1.4). The same matrix must serve every
snapshot, the pool and the targets, on every rank; TRAK's ``BasicProjector`` and
``CudaProjector`` draw *different* matrices from the same seed, so the reference's
silent fallback between them is a pitfall (docs/algorithms.md §5). Here the caller names the
projector, and :meth:`Projector.describe` records everything its matrix depends on in
the datastore manifest.

Kinds:

* ``"trak_basic"``: TRAK's pure-torch ``BasicProjector`` as the reference builds it
  (Rademacher, ``block_size`` 128, ``model_id`` 0). Its matrix depends on the device
  *type* (CPU and CUDA generators differ). Slow: it regenerates the dense matrix on
  every call.
* ``"trak_cuda"``: TRAK's ``CudaProjector`` (``fast_jl`` kernel), ``max_batch_size`` 16;
  its matrix also depends on the GPU's SM count, recorded (and pinnable with
  ``num_sms``).
* ``"sparse_jl"``: a sparse JL transform (block construction of Kane & Nelson 2014): the
  output is split into ``sparsity`` blocks of about d / s rows, and every input
  coordinate has exactly one ±1/sqrt(s) entry in each block, so E||g R||^2 = ||g||^2.
  The row and sign of coordinate j depend only on (seed, j, d, s): they are drawn on
  CPU with a ``torch.Generator`` per group of 2^20 coordinates (seeded with a 32-bit
  hash of (seed, group): mt19937 ignores higher seed bits), so the matrix is the
  same on every device and rank and for every ``grad_dim``. Cost O(s * grad_dim) per
  row instead of O(d * grad_dim); chunks of the gradient can be projected separately
  and summed (``project(chunk, offset)``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = ["Projector", "TrakBasicProjector", "TrakCudaProjector", "SparseJLProjector", "make_projector", "PROJECTOR_KINDS"]

PROJECTOR_KINDS = ("trak_basic", "trak_cuda", "sparse_jl")


class Projector(ABC):
    """A fixed random matrix R [grad_dim x proj_dim]; ``project(G) = G @ R`` in float32.

    Attributes:
        kind: one of :data:`PROJECTOR_KINDS`.
        supports_chunks: whether ``project(chunk, offset)`` accepts a column slice of
            the gradient (linear projectors built from per-coordinate columns).
    """

    kind: str
    supports_chunks: bool = False

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, device: str | torch.device, dtype: torch.dtype) -> None:
        if grad_dim <= 0 or proj_dim <= 0:
            raise ValueError(f"grad_dim and proj_dim must be positive, got {grad_dim} and {proj_dim}")
        self.grad_dim = int(grad_dim)
        self.proj_dim = int(proj_dim)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype

    @abstractmethod
    def _project(self, grads: torch.Tensor, offset: int) -> torch.Tensor: ...

    def project(self, grads: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Project ``grads`` [B, n] (the columns ``offset:offset+n`` of the gradient).

        Args:
            grads: the whole gradient (n = grad_dim, offset 0) or, for projectors with
                ``supports_chunks``, a column chunk of it.
            offset: first gradient coordinate of ``grads``.

        Returns:
            [B, proj_dim] float32. Projections of the chunks of a gradient sum to the
            projection of the whole gradient.
        """
        if grads.dim() != 2:
            raise ValueError(f"expected grads [B, n], got shape {tuple(grads.shape)}")
        n = grads.shape[1]
        if offset < 0 or offset + n > self.grad_dim:
            raise ValueError(f"columns {offset}:{offset + n} are outside grad_dim {self.grad_dim}")
        if (offset != 0 or n != self.grad_dim) and not self.supports_chunks:
            raise ValueError(f"the {self.kind} projector needs the whole gradient ({self.grad_dim} columns)")
        return self._project(grads, offset).float()

    def describe(self) -> dict[str, Any]:
        """Everything the matrix depends on, for the datastore manifest."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "grad_dim": self.grad_dim,
            "proj_dim": self.proj_dim,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


class TrakBasicProjector(Projector):
    """TRAK's ``BasicProjector`` exactly as the LESS reference constructs it (docs/algorithms.md §1.4).

    TRAK regenerates its dense matrix block by block on *every* call, which dominates the
    cost of the gradient pass (docs/architecture.md "Speed"). When the whole matrix fits in
    ``max_cache_bytes`` it is generated once, by TRAK's own code from TRAK's own generator
    states, and kept; each call then runs the same per-block matmuls as TRAK, so the
    output is bit-identical to an uncached TRAK call. Larger matrices are regenerated per
    call as TRAK does (the same matrix either way).

    Args:
        max_cache_bytes: cache the generated matrix when it is at most this large (0: never).
    """

    kind = "trak_basic"

    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, block_size: int = 128, max_cache_bytes: int = 1 << 30) -> None:
        from trak.projectors import BasicProjector, ProjectionType

        super().__init__(grad_dim, proj_dim, seed, device, dtype)
        self.block_size = block_size
        self._trak = BasicProjector(
            grad_dim=self.grad_dim, proj_dim=self.proj_dim, seed=self.seed, proj_type=ProjectionType.rademacher,
            device=self.device, block_size=block_size, dtype=dtype,
        )
        itemsize = torch.empty((), dtype=dtype).element_size()
        # One block: TRAK itself keeps its matrix. Several: cache them when they fit.
        self.cached = self._trak.num_blocks > 1 and self.grad_dim * self.proj_dim * itemsize <= max_cache_bytes
        self.regenerates_per_call = self._trak.num_blocks > 1 and not self.cached
        self._blocks: list[torch.Tensor] | None = None

    def _matrix_blocks(self) -> list[torch.Tensor]:
        if self._blocks is None:
            trak = self._trak
            blocks = []
            for ind in range(trak.num_blocks):
                trak.generate_sketch_matrix(trak.generator_states[ind])
                width = min((ind + 1) * trak.block_size, self.proj_dim) - ind * trak.block_size
                blocks.append(trak.proj_matrix[:, :width].clone())
            self._blocks = blocks
        return self._blocks

    def _project(self, grads: torch.Tensor, offset: int) -> torch.Tensor:
        if not self.cached:
            return self._trak.project(grads.to(self.device), model_id=0)
        grads = grads.to(device=self.device, dtype=self.dtype)
        sketch = torch.zeros((grads.size(0), self.proj_dim), dtype=self.dtype, device=self.device)
        for ind, block in enumerate(self._matrix_blocks()):  # TRAK's per-block matmuls, same order
            st = ind * self._trak.block_size
            sketch[:, st : st + block.shape[1]] = grads @ block
        return sketch

    def describe(self) -> dict[str, Any]:
        # The block structure and the generator's device type shape the matrix.
        return {**super().describe(), "proj_type": "rademacher", "model_id": 0, "block_size": self.block_size,
                "device_type": self.device.type}


class TrakCudaProjector(Projector):
    """TRAK's ``CudaProjector`` (``fast_jl``), ``max_batch_size`` 16 as the reference.

    Raises:
        RuntimeError: without CUDA or without the ``fast_jl`` extension; there is no
            fallback, because other projectors draw different matrices.
    """

    kind = "trak_cuda"

    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0, device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.float32, max_batch_size: int = 16, num_sms: int | None = None) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("projector 'trak_cuda' needs a CUDA device, and none is available; choose "
                               "'trak_basic' or 'sparse_jl' explicitly (their matrices differ)")
        try:
            import fast_jl  # noqa: F401
        except ImportError as err:
            raise RuntimeError("projector 'trak_cuda' needs TRAK's fast_jl CUDA extension (pip install fast_jl); "
                               "choose 'trak_basic' or 'sparse_jl' explicitly (their matrices differ)") from err
        from trak.projectors import CudaProjector, ProjectionType

        device = torch.device(device)
        if device.type != "cuda":
            raise RuntimeError(f"projector 'trak_cuda' runs on a CUDA device, got {device}")
        super().__init__(grad_dim, proj_dim, seed, device, dtype)
        self.max_batch_size = max_batch_size
        self._trak = CudaProjector(grad_dim=self.grad_dim, proj_dim=self.proj_dim, seed=self.seed,
                                   proj_type=ProjectionType.rademacher, device=device, max_batch_size=max_batch_size)
        if num_sms is not None:  # fast_jl's matrix depends on the SM count: pin it to share stores across GPUs
            self._trak.num_sms = int(num_sms)
        self.num_sms = int(self._trak.num_sms)

    def _project(self, grads: torch.Tensor, offset: int) -> torch.Tensor:
        grads = grads.to(self.device, self.dtype)
        # Rows go through fast_jl in groups of max_batch_size, as in the reference.
        parts = [self._trak.project(grads[i : i + self.max_batch_size].contiguous(), model_id=0)
                 for i in range(0, grads.shape[0], self.max_batch_size)]
        return torch.cat(parts)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "proj_type": "rademacher", "model_id": 0,
                "max_batch_size": self.max_batch_size, "num_sms": self.num_sms,
                "device_name": torch.cuda.get_device_name(self.device)}


class SparseJLProjector(Projector):
    """Sparse Johnson–Lindenstrauss projection, deterministic from the seed on any device.

    Args:
        grad_dim: input dimension.
        proj_dim: output dimension d.
        seed: matrix seed.
        device: where the projection runs (the matrix is drawn on CPU, then cached here).
        dtype: dtype of the accumulation (float32 recommended).
        sparsity: s, nonzeros per input coordinate (1 <= s <= d); cost and cache memory
            (about 8 * s bytes per coordinate) grow with s, the concentration of rare
            heavy coordinates improves with it.
    """

    kind = "sparse_jl"
    supports_chunks = True
    #: input coordinates per generator; part of the matrix definition, never change it.
    GROUP = 1 << 20

    def __init__(self, grad_dim: int, proj_dim: int, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, sparsity: int = 4) -> None:
        super().__init__(grad_dim, proj_dim, seed, device, dtype)
        if not 1 <= sparsity <= proj_dim:
            raise ValueError(f"sparsity must be in [1, proj_dim={proj_dim}], got {sparsity}")
        self.sparsity = int(sparsity)
        # Output block k covers rows [starts[k], starts[k + 1]).
        self._starts = [k * self.proj_dim // self.sparsity for k in range(self.sparsity + 1)]
        self._cache: dict[tuple[int, int], torch.Tensor] = {}  # (offset, n) -> CSR [d, n] on the device
        self._cached_columns = 0
        self._drawn: tuple[int, torch.Tensor, torch.Tensor] | None = None  # the last group drawn, on CPU

    def _draw(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (int32) and signs (int8, ±1), each [s, GROUP], of coordinates g*GROUP ..., on CPU."""
        # One stream per (seed, group), independent of grad_dim. The CPU generator
        # (mt19937) keeps only 32 bits of a seed, so (seed, group) is hashed into 32 bits.
        key = hashlib.sha256(f"sparse_jl:{self.seed}:{g}".encode()).digest()
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int.from_bytes(key[:4], "little"))
        rows = torch.empty(self.sparsity, self.GROUP, dtype=torch.int32)
        for k in range(self.sparsity):
            rows[k] = torch.randint(self._starts[k], self._starts[k + 1], (self.GROUP,), generator=gen)
        signs = torch.randint(0, 2, (self.sparsity, self.GROUP), generator=gen, dtype=torch.int8) * 2 - 1
        return rows, signs

    def _columns(self, offset: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and signs [s, n] of coordinates ``offset:offset+n``, on CPU, drawn group by group."""
        parts, pos, end = [], offset, offset + n
        while pos < end:
            g, start = divmod(pos, self.GROUP)
            stop = min(self.GROUP, start + end - pos)
            if self._drawn is None or self._drawn[0] != g:
                # The pass asks for one parameter at a time, in backward order: keeping the last
                # group drawn draws each group once instead of once per parameter.
                self._drawn = (g, *self._draw(g))
            parts.append((self._drawn[1][:, start:stop], self._drawn[2][:, start:stop]))
            pos += stop - start
        return torch.cat([r for r, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)

    def _matrix(self, offset: int, n: int) -> torch.Tensor:
        """R^T restricted to columns ``offset:offset+n``: a CSR [d, n] of ±1 on the device, cached.

        A sparse matrix product streams the gradient once and writes each output row once,
        where ``s`` scattered ``index_add_`` calls over [n, B] copies cost 6-8x more on CPU.
        """
        key = (offset, n)
        if key not in self._cache:
            rows, signs = self._columns(offset, n)
            # Built where it runs: on a GPU the one-time sort runs there too.
            flat = rows.reshape(-1).to(self.device, torch.long)  # entry k * n + j: coordinate j's row in block k
            signs = signs.to(self.device)
            # Stable: the blocks own disjoint rows, so each row's entries stay in coordinate order.
            order = torch.argsort(flat, stable=True)
            crow = torch.zeros(self.proj_dim + 1, dtype=torch.long, device=self.device)
            crow[1:] = torch.bincount(flat, minlength=self.proj_dim).cumsum(0)
            index_dtype = torch.int32 if flat.numel() < 2**31 else torch.long  # int32 halves the cache
            with warnings.catch_warnings():  # torch flags its CSR support as beta; this use is covered by tests
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
                matrix = torch.sparse_csr_tensor(crow.to(index_dtype), (order % n).to(index_dtype),
                                                 signs.reshape(-1)[order].to(self.dtype), (self.proj_dim, n),
                                                 check_invariants=True)
            if self._cached_columns + n > 2 * self.grad_dim:  # callers that chunk differently every time
                self._cache.clear()
                self._cached_columns = 0
            self._cache[key] = matrix  # about (4 + 4) * s bytes per coordinate (int32 column index, value)
            self._cached_columns += n
        return self._cache[key]

    def fingerprint(self) -> str:
        """sha256 of the first 4096 columns' rows and signs: detects any change of the RNG stream."""
        rows, signs = self._draw(0)
        h = hashlib.sha256(rows[:, :4096].numpy().tobytes())
        h.update(signs[:, :4096].numpy().tobytes())
        return h.hexdigest()

    def _project(self, grads: torch.Tensor, offset: int) -> torch.Tensor:
        # Accumulate into [d, B]: the layout of the sparse product R^T @ G^T.
        out = torch.zeros(self.proj_dim, grads.shape[0], dtype=self.dtype, device=self.device)
        self.accumulate(out, grads, offset)
        return self.finish(out)

    def accumulate(self, out: torch.Tensor, grads: torch.Tensor, offset: int) -> None:
        """Add the (unscaled) projection of gradient columns ``offset:offset+n`` into ``out`` [d, B].

        Streaming many chunks of one gradient into one buffer avoids an allocation and a
        transpose per chunk; call :meth:`finish` once at the end. The matrix of each
        ``(offset, n)`` is built on first use and kept (the pass always chunks alike).
        """
        n = grads.shape[1]
        if offset < 0 or offset + n > self.grad_dim:
            raise ValueError(f"columns {offset}:{offset + n} are outside grad_dim {self.grad_dim}")
        out.addmm_(self._matrix(offset, n), grads.to(self.device, self.dtype).t())

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The [B, d] float32 projection from an :meth:`accumulate` buffer."""
        return out.t().mul(1.0 / math.sqrt(self.sparsity)).float()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sparsity": self.sparsity, "construction": "block", "group": self.GROUP,
                "generator": "torch.cpu", "fingerprint": self.fingerprint()}


def make_projector(
    kind: str,
    grad_dim: int,
    proj_dim: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **kw: Any,
) -> Projector:
    """Build the projector named ``kind``; unknown or unavailable kinds raise, never fall back.

    Args:
        kind: ``"trak_basic"``, ``"trak_cuda"`` or ``"sparse_jl"``.
        grad_dim: flattened gradient dimension.
        proj_dim: projected dimension d (build one projector per d).
        seed: matrix seed (the reference uses 0).
        device: where projection runs.
        dtype: computation dtype (float32 avoids the reference's fp16 overflow risk).
        **kw: kind-specific options: ``block_size`` (trak_basic), ``max_batch_size``
            and ``num_sms`` (trak_cuda), ``sparsity`` (sparse_jl).

    Example::

        projectors = {d: make_projector("sparse_jl", grads_fn.numel, d) for d in (1024, 8192)}
    """
    classes = {"trak_basic": TrakBasicProjector, "trak_cuda": TrakCudaProjector, "sparse_jl": SparseJLProjector}
    if kind not in classes:
        raise ValueError(f"unknown projector kind {kind!r}; choose one of {PROJECTOR_KINDS}")
    return classes[kind](grad_dim, proj_dim, seed=seed, device=device, dtype=dtype, **kw)
