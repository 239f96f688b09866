"""Influence scoring: LR-weighted cosine similarity between pool and target features.

This is step 3 of LESS (``docs/algorithms.md`` §1.5), shared with RDS
(§3.4), which is the same computation with a single "snapshot" of weight 1.

For snapshots ``i = 1..N`` with mean learning rates ``eta_i`` the score of a pool
example ``x`` against a target example ``z`` is::

    score(x, z) = sum_i w_i * <Gamma_i(x) / |Gamma_i(x)|, g_i(z) / |g_i(z)|>,
    w_i = eta_i / sum_j eta_j

and the targets are aggregated per subtask (the mean over the subtask's examples),
then over subtasks (the max by default). Subtasks are given by a label per target
example, so groups may have any size and need not be contiguous (the reference
hard-codes equal contiguous groups, docs/algorithms.md §1.5).

Because ``mean_z <a, b_z> = <a, mean_z b_z>``, each snapshot's normalised target
features are reduced once to a ``[S, d]`` matrix ``M_i`` of per-subtask means, and a
block of pool rows costs one ``[B, d] @ [d, S]`` matmul per snapshot. The pool is
streamed in row blocks (:mod:`lightning_less.selection.blocks`), so peak memory does not
grow with the pool size (``benchmarks/scoring.py``: 13 GB store, peak RSS about 0.6 GB);
the rows of a quantized (``int8`` / ``1bit``) store are dequantized block by block, and
since a cosine ignores a row's scale, the scores are the cosines of the dequantized rows.
The rows can be shared by several processes (:mod:`lightning_less.selection.ranks`).

Zero norms: a feature row whose L2 norm is zero or not finite has no direction, so
its cosine is undefined. Such rows are refused with a :class:`ValueError` naming the
snapshot and rows (no ``eps`` is added: a zero gradient means the example had no
response token or the gradient pass failed, and silently scoring it 0 would hide that).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lightning_less.distributed import shared_failure
from lightning_less.selection.blocks import BlockReader
from lightning_less.selection.ranks import all_reduce_rows, resolve_ranks, row_range

AGGREGATIONS = ("max_subtask_mean", "mean", "round_robin")

# Rows per block when ``block_size`` is not given: about 64 MiB of fp32 per block.
_DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class InfluenceScores:
    """Scores of every pool example.

    Attributes:
        score: ``[n]`` float32, the aggregated score used for top-k (for
            ``"round_robin"`` this is the max over subtasks, kept for display; the
            selection itself uses ``per_subtask``).
        per_subtask: ``[n, S]`` float32, the mean over each subtask's targets.
        subtasks: the ``S`` subtask names, in order of first appearance among targets.
        weights: the snapshot weights ``w_i`` (they sum to 1).
        aggregation: how ``score`` was formed from ``per_subtask``.
        rows: ``(start, stop)`` when these are only the pool rows ``[start, stop)`` one
            rank scored (explicit ``rank`` / ``world_size``; join with
            :func:`merge_rank_scores`); ``None`` for the whole pool.
        group_sizes: targets per subtask (what ``"mean"`` weighs the subtasks by).
    """

    score: np.ndarray
    per_subtask: np.ndarray
    subtasks: tuple[str, ...]
    weights: tuple[float, ...]
    aggregation: str
    rows: tuple[int, int] | None = None
    group_sizes: tuple[int, ...] = ()


def group_subtasks(labels: Sequence[str]) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Group target positions by subtask label.

    Args:
        labels: one subtask label per target example (any order, any group sizes).

    Returns:
        ``(names, groups)``: the distinct labels in order of first appearance, and for
        each the ascending positions of its targets.
    """
    labels = [str(s) for s in labels]
    if not labels:
        raise ValueError("no target examples: target_subtasks is empty")
    names: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        names.setdefault(label, []).append(position)
    return tuple(names), [np.asarray(v, dtype=np.int64) for v in names.values()]


def snapshot_weights(snapshot_lrs: Sequence[float]) -> np.ndarray:
    """``w_i = eta_i / sum_j eta_j`` (docs/algorithms.md §1.5).

    Every ``eta_i`` must be finite and non-negative, and one at least positive. A snapshot whose
    epoch ran at learning rate 0 throughout (a one-step epoch inside the LR warmup) gets weight 0:
    the formula's own answer, not a reason to throw away the computed features.
    """
    lrs = np.asarray(snapshot_lrs, dtype=np.float64)
    if lrs.ndim != 1 or lrs.size == 0:
        raise ValueError("snapshot_lrs must be a non-empty list of learning rates, one per snapshot")
    if not np.all(np.isfinite(lrs)) or np.any(lrs < 0) or not np.any(lrs > 0):
        raise ValueError(f"snapshot learning rates must be finite, non-negative and not all 0, got {lrs.tolist()}")
    return lrs / lrs.sum()


def _rows_to_fp32(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.require(x, dtype=np.float32, requirements=["C", "W"])).to(device=device)  # copies read-only maps


def _check_norms(norms: torch.Tensor, what: str, offset: int = 0) -> None:
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        rows = (torch.nonzero(bad).flatten() + offset).tolist()
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"{what}: {len(rows)} row(s) with zero or non-finite L2 norm (rows {shown}); "
            "their cosine similarity is undefined. Check the gradient datastore for "
            "unfinished rows or examples without response tokens."
        )


def _shape2(x: Any, what: str) -> tuple[int, int]:
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(f"{what} must be a 2-D array [rows, dim], got shape {shape}")
    return int(shape[0]), int(shape[1])


def _auto_block_size(d: int) -> int:
    return max(1, _DEFAULT_BLOCK_BYTES // (4 * max(d, 1)))


def _target_means(targets: Sequence[Any], averaging: torch.Tensor, weights: np.ndarray,
                  device: torch.device) -> list[torch.Tensor]:
    """``M_i``: per-subtask means of the unit-normalised targets, pre-scaled by ``w_i``, ``[d_i, S]`` per snapshot."""
    subtask_means = []
    for i, t in enumerate(targets):
        t32 = _rows_to_fp32(t, device)
        norms = torch.linalg.vector_norm(t32, dim=1)
        _check_norms(norms, f"target features of snapshot {i}")
        means = averaging @ (t32 / norms[:, None])
        subtask_means.append((means * float(weights[i])).T.contiguous())
    return subtask_means


def _score_rows(reader: BlockReader, first: int, stop: int, subtask_means: list[torch.Tensor], n_subtasks: int,
                skip: np.ndarray, device: torch.device) -> np.ndarray:
    """``[stop - first, S]`` per-subtask scores of the pool rows ``[first, stop)``; NaN on the ``skip`` rows."""
    if device.type == "cpu":
        # On CPU the [B, d] @ [d, S] product goes through numpy: torch's MKL sgemm was
        # 2x slower than numpy's OpenBLAS for this skinny shape on AMD EPYC
        # (benchmarks/scoring.py); both are fp32.
        subtask_means_np = [m.numpy() for m in subtask_means]
    per_subtask = np.zeros((stop - first, n_subtasks), dtype=np.float32)
    with torch.no_grad():
        for i, start, end, x in reader.blocks(first, stop):
            norms = torch.linalg.vector_norm(x, dim=1)
            left_out = torch.from_numpy(skip[start:end]).to(norms.device)
            norms = torch.where(left_out, torch.ones_like(norms), norms)  # no direction to check: never scored
            _check_norms(norms, f"pool features of snapshot {i}", offset=start)
            # (x / |x|) @ M_i == (x @ M_i) / |x|: saves a pass over the block.
            if device.type == "cpu":
                part = x.numpy() @ subtask_means_np[i]
                part /= norms.numpy()[:, None]
            else:
                part = ((x @ subtask_means[i]) / norms[:, None]).cpu().numpy()
            part[skip[start:end]] = np.nan
            # Snapshots of a block arrive in order: the sum over i is accumulated in order.
            per_subtask[start - first : end - first] += part
    return per_subtask


def influence_scores(
    pool: Sequence[Any],
    targets: Sequence[Any],
    snapshot_lrs: Sequence[float],
    target_subtasks: Sequence[str],
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> InfluenceScores:
    """LESS influence scores of every pool example (docs/algorithms.md §1.5).

    Args:
        pool: one ``[n, d_i]`` array per snapshot (numpy, ``np.memmap`` of any float
            dtype such as fp16, torch, or the :class:`~lightning_less.stores.quantize.QuantizedRows`
            of an int8 / 1-bit store, dequantized block by block), the pool's unnormalised
            projected Adam features.
        targets: one ``[m, d_i]`` array per snapshot, the targets' unnormalised SGD features.
        snapshot_lrs: ``eta_i``, the mean learning rate of each snapshot's epoch.
        target_subtasks: ``m`` subtask labels, one per target row.
        aggregation: ``"max_subtask_mean"`` (the paper: mean within each subtask, then
            max over subtasks), ``"mean"`` (mean over all target examples) or
            ``"round_robin"`` (``score`` is the max over subtasks; select with
            :func:`lightning_less.selection.budget.round_robin_top_k` on ``per_subtask``).
        block_size: pool rows per block (default: about 64 MiB of fp32 per block).
        device: torch device for the matmuls (``"cpu"`` or ``"cuda"``).
        distributed: every rank of the initialised ``torch.distributed`` process group
            calls this: each scores its share of the rows, and every rank gets all of
            them back (equal to one process; :mod:`lightning_less.selection.ranks`).
        rank: with ``world_size``, without a process group: score only this rank's rows
            (the result's ``rows``); join the ranks' results with :func:`merge_rank_scores`.
        world_size: how many ranks share the rows.
        exclude: pool rows never scored (examples without a response token, whose features are
            zeros): their scores are NaN and their norms are not checked.

    Returns:
        The :class:`InfluenceScores`.

    Raises:
        ValueError: on mismatched shapes, bad learning rates, an unknown aggregation,
            a feature row with zero or non-finite norm, or bad rank arguments. With
            ``distributed``, a row refused on one rank raises the same error on every rank
            (:func:`lightning_less.distributed.shared_failure`), never a hang in the ``all_reduce``.

    Example::

        scores = influence_scores([pool_e0, pool_e1], [tgt_e0, tgt_e1], [1.7e-5, 1.3e-5],
                                  ["mmlu/law", "mmlu/law", "mmlu/art"])
        top = top_k(scores.score, k=100)
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}, expected one of {AGGREGATIONS}")
    if len(pool) != len(targets) or len(pool) != len(snapshot_lrs):
        raise ValueError(
            f"need one pool array, one target array and one learning rate per snapshot; got "
            f"{len(pool)} pool, {len(targets)} target arrays and {len(snapshot_lrs)} learning rates"
        )
    weights = snapshot_weights(snapshot_lrs)
    names, groups = group_subtasks(target_subtasks)
    rank, world_size, in_group = resolve_ranks(distributed, rank, world_size)
    device = torch.device(device)

    n = None
    for i, (p, t) in enumerate(zip(pool, targets)):
        n_i, d_i = _shape2(p, f"pool features of snapshot {i}")
        m_i, dt_i = _shape2(t, f"target features of snapshot {i}")
        if n is None:
            n = n_i
        if n_i != n:
            raise ValueError(f"snapshot {i} has {n_i} pool rows, snapshot 0 has {n}")
        if dt_i != d_i:
            raise ValueError(f"snapshot {i}: pool dim {d_i} != target dim {dt_i}")
        if m_i != len(target_subtasks):
            raise ValueError(f"snapshot {i} has {m_i} target rows but {len(target_subtasks)} subtask labels")
    assert n is not None
    if n == 0:
        raise ValueError("the pool is empty")

    # averaging[s, j] = 1 / |s| for the targets j of subtask s.
    averaging = torch.zeros((len(names), len(target_subtasks)), dtype=torch.float32)
    for s, g in enumerate(groups):
        averaging[s, torch.from_numpy(g)] = 1.0 / len(g)
    averaging = averaging.to(device)
    skip = np.zeros(n, dtype=bool)
    if exclude is not None and len(exclude):
        rows = np.asarray(exclude, dtype=np.int64)
        if rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"exclude holds rows outside the pool's {n}: {rows[(rows < 0) | (rows >= n)][:5].tolist()}")
        skip[rows] = True
    if block_size is None:
        block_size = _auto_block_size(max(_shape2(p, "pool")[1] for p in pool))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    reader = BlockReader(pool, min(block_size, n), device)
    first, stop = row_range(n, reader.block_size, rank, world_size)
    # A row refused on one rank (zero norm) must stop every rank before the all_reduce its peers wait in.
    with shared_failure() if in_group else nullcontext():
        subtask_means = _target_means(targets, averaging, weights, device)
        per_subtask = _score_rows(reader, first, stop, subtask_means, len(names), skip, device)
    if in_group:
        per_subtask = all_reduce_rows(per_subtask, first, n)
    sharded = world_size > 1 and not in_group
    return _aggregated(per_subtask, names, tuple(len(g) for g in groups), tuple(float(w) for w in weights),
                       aggregation, (first, stop) if sharded else None)


def _aggregated(per_subtask: np.ndarray, names: tuple[str, ...], sizes: tuple[int, ...], weights: tuple[float, ...],
                aggregation: str, rows: tuple[int, int] | None) -> InfluenceScores:
    if aggregation == "mean":
        share = np.asarray(sizes, dtype=np.float64)
        score = (per_subtask.astype(np.float64) @ (share / share.sum())).astype(np.float32)
    else:
        score = per_subtask.max(axis=1) if per_subtask.shape[0] else np.zeros(0, dtype=np.float32)
    return InfluenceScores(score=score, per_subtask=per_subtask, subtasks=names, weights=weights,
                           aggregation=aggregation, rows=rows, group_sizes=sizes)


def merge_rank_scores(parts: Sequence[InfluenceScores]) -> InfluenceScores:
    """Join the results of every rank of an explicit ``rank`` / ``world_size`` scoring into the whole pool's.

    Raises:
        ValueError: parts of different scorings, or rows missing or scored twice.
    """
    parts = sorted(parts, key=lambda p: p.rows[0] if p.rows else -1)
    if not parts or any(p.rows is None for p in parts):
        raise ValueError("merge_rank_scores joins the results of influence_scores(..., rank=, world_size=)")
    first = parts[0]
    for before, part in zip(parts, parts[1:]):
        if (part.subtasks, part.weights, part.aggregation) != (first.subtasks, first.weights, first.aggregation):
            raise ValueError("the parts come from different scorings (subtasks, weights or aggregation differ)")
        if part.rows[0] != before.rows[1]:
            raise ValueError(f"rows {before.rows} and {part.rows}: the ranks' rows must follow each other exactly")
    if first.rows[0] != 0:
        raise ValueError(f"rows before {first.rows[0]} are in no part: give every rank's result")
    return _aggregated(np.concatenate([p.per_subtask for p in parts]), first.subtasks, first.group_sizes,
                       first.weights, first.aggregation, None)


def cosine_scores(
    pool: Any,
    targets: Any,
    target_subtasks: Sequence[str],
    aggregation: str = "max_subtask_mean",
    block_size: int | None = None,
    device: str | torch.device = "cpu",
    exclude: Sequence[int] | np.ndarray | None = None,
) -> InfluenceScores:
    """Cosine scores with subtask aggregation for a single feature space (RDS, docs/algorithms.md §3.4).

    The same computation as :func:`influence_scores` with one snapshot of weight 1.

    Args:
        pool: ``[n, d]`` pool features (e.g. final-layer hidden states).
        targets: ``[m, d]`` target features.
        target_subtasks: ``m`` subtask labels.
        aggregation: as in :func:`influence_scores`.
        block_size: pool rows per block.
        device: torch device.
        exclude: pool rows never scored (NaN), as in :func:`influence_scores`.

    Returns:
        The :class:`InfluenceScores`.
    """
    return influence_scores([pool], [targets], [1.0], target_subtasks, aggregation, block_size, device, exclude=exclude)
