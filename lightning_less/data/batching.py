"""Length-grouped batches for the per-example passes: examples of similar length padded together.

A per-example pass (gradient features, loss trajectories, hidden states) computes every
padded token, so batches of examples in file order waste much of their work on real data,
whose lengths vary widely (docs/architecture.md, "Speed"). :class:`LengthGroupedBatchSampler`
sorts the positions its sampler gives by token length and cuts them into batches of
``batch_size`` (and, with ``max_tokens``, of at most ``max_tokens`` padded tokens). The
passes write every row by the batch's ``index``, so the order of the batches changes
nothing in a store but the floating-point summation order of padding.

Under DDP, Lightning rebuilds a ``BatchSampler`` subclass made in a ``*_dataloader`` hook
with its distributed sampler as ``sampler`` (rank ``r`` of ``W``: positions ``r, r + W,
...``), so each rank groups its own disjoint share by length.
"""

from __future__ import annotations

from typing import Iterator, Literal, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Sampler

from lightning_less.errors import InputError

#: How a predict pass batches its examples: ``"length"`` (grouped by token length) or ``"file_order"``.
PredictBatching = Literal["length", "file_order"]
PREDICT_BATCHINGS = ("length", "file_order")


def check_predict_batching(batching: str, max_tokens: int | None) -> None:
    """Refuse a predict batching that is not one of :data:`PREDICT_BATCHINGS`, or a token budget without ``"length"``."""
    if batching not in PREDICT_BATCHINGS:
        raise InputError(f"predict_batching must be one of {PREDICT_BATCHINGS}, got {batching!r}")
    if max_tokens is not None and (batching != "length" or max_tokens < 1):
        raise InputError(f"predict_max_tokens={max_tokens} needs predict_batching='length' and a positive budget")


def length_grouped_batches(positions: Sequence[int], lengths: Sequence[int] | np.ndarray, batch_size: int,
                           max_tokens: int | None = None, drop_last: bool = False) -> list[list[int]]:
    """``positions`` cut into batches of similar length: longest first, ties in the order given.

    Each batch holds at most ``batch_size`` positions and, with ``max_tokens``, at most
    ``max_tokens`` padded tokens (its size times its longest length). The longest batch
    comes first, so a batch too large for the device fails at the start of a pass, not
    hours into it.

    Args:
        positions: dataset positions (what a sampler yields).
        lengths: token length of every dataset position (indexed by position).
        batch_size: the most examples in a batch.
        max_tokens: the most padded tokens in a batch, or ``None`` for no budget.
        drop_last: leave out the last batch when it holds fewer than ``batch_size`` examples.

    Raises:
        InputError: an example alone is longer than ``max_tokens``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if not positions.size:
        return []
    sizes = np.asarray(lengths, dtype=np.int64)[positions]
    order = np.argsort(-sizes, kind="stable")  # longest first; equal lengths keep the sampler's order
    if max_tokens is not None and sizes[order[0]] > max_tokens:
        raise InputError(f"an example (dataset position {int(positions[order[0]])}) has {int(sizes[order[0]])} tokens, "
                         f"more than max_tokens={max_tokens} padded tokens a batch may hold (predict_max_tokens): give at least "
                         "max_length")
    batches: list[list[int]] = []
    start = 0
    while start < order.size:
        # Sorted longest first, so a batch's padded length is that of its first example.
        count = batch_size if max_tokens is None else min(batch_size, max_tokens // int(sizes[order[start]]))
        batches.append(positions[order[start : start + count]].tolist())
        start += count
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class LengthGroupedBatchSampler(BatchSampler):
    """Batches of the positions ``sampler`` yields, grouped by token length (:func:`length_grouped_batches`).

    Built like a ``BatchSampler`` (``sampler``, ``batch_size``, ``drop_last``), so Lightning
    can rebuild it around its distributed sampler; ``lengths`` and ``max_tokens`` are
    kept. Make it inside a ``*_dataloader`` hook (as :class:`InstructionDataModule` does):
    Lightning records the arguments only of batch samplers made there, and a predict pass
    rebuilds its batch sampler even in one process, so one made elsewhere is refused then.

    Args:
        sampler: the dataset positions to batch (e.g. ``SequentialSampler(dataset)``).
        batch_size: the most examples in a batch.
        drop_last: leave out the last (shortest) batch when it is not full.
        lengths: token length of every dataset position.
        max_tokens: the most padded tokens (batch size times its longest length) in a batch.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int, drop_last: bool = False, *,
                 lengths: Sequence[int] | np.ndarray | None = None, max_tokens: int | None = None) -> None:
        if lengths is None:  # Lightning rebuilding one made outside a *_dataloader hook (it knows no lengths)
            raise InputError("LengthGroupedBatchSampler needs the examples' lengths; Lightning rebuilds a predict "
                             "loader's batch sampler with its original arguments only when it was made inside the "
                             "predict_dataloader hook: make the DataLoader there (a LightningDataModule or module)")
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = max_tokens
        self._batches()  # an example over max_tokens is refused now, not at the first batch

    def _batches(self) -> list[list[int]]:
        # Drawn from the sampler each time, as BatchSampler does (a sampler may change between epochs).
        return length_grouped_batches(list(self.sampler), self.lengths, self.batch_size, self.max_tokens, self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
