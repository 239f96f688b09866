"""Scoring a pool over several processes: each rank scores a range of rows, the ranges are merged.

The rows are split into contiguous ranges of whole scoring blocks, so every rank reads
(and multiplies) exactly the blocks one process would: the merged scores equal a
one-process run bit for bit. Two ways to run it (docs/scaling.md, "Past one machine"):

* inside a ``torch.distributed`` process group (``torchrun``, ``srun`` under Lightning's
  ``SLURMEnvironment``...): ``distributed=True``; the rows are merged with an
  ``all_reduce`` so every rank returns the scores of the whole pool;
* without one: explicit ``rank`` / ``world_size``; each call returns its own rows and
  :func:`lightning_less.selection.scoring.merge_rank_scores` joins them.
"""

from __future__ import annotations

import numpy as np
import torch


def resolve_ranks(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """``(rank, world_size, merge_in_group)`` of a scoring call.

    Raises:
        ValueError: ``distributed`` without an initialised process group, ``distributed``
            together with an explicit rank, or a rank outside ``[0, world_size)``.
    """
    if distributed:
        if rank is not None or world_size is not None:
            raise ValueError("pass either distributed=True (the process group's ranks) or rank/world_size, not both")
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("distributed=True needs an initialised torch.distributed process group (torchrun, srun, "
                             "or a Lightning Trainer's strategy); give rank and world_size to score without one")
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), True
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size, or neither (got rank={rank}, world_size={world_size})")
    if rank is None or world_size is None:
        return 0, 1, False
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size), False


def row_range(n: int, block_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` that ``rank`` of ``world_size`` scores: a contiguous run of whole blocks."""
    blocks = -(-n // block_size)
    first, last = rank * blocks // world_size, (rank + 1) * blocks // world_size
    return min(first * block_size, n), min(last * block_size, n)


def all_reduce_rows(local: np.ndarray, start: int, n: int) -> np.ndarray:
    """The ``[n, S]`` rows of every rank, each rank giving its ``local`` rows from ``start`` (a sum over zeros: exact)."""
    full = np.zeros((n, local.shape[1]), dtype=np.float32)
    full[start : start + local.shape[0]] = local
    tensor = torch.from_numpy(full)
    if torch.distributed.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.cpu().numpy()
