"""Merging per-rank shard stores of a DDP pass into one store equal to a one-process run."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lightning_less.errors import IncompatibleError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.manifest import OWNED_KEYS, PROGRESS_KEYS, diff, without

_COPY_ROWS = 1 << 16  # rows per copy step, to bound memory


def merge_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                 overwrite: bool = False) -> GradientDatastore:
    """Merge per-rank shard stores into one complete store (DDP gradient pass).

    Every shard has the same manifest (except progress keys and a ``shard`` entry)
    and its own done masks; together they must cover every row of every snapshot
    exactly once. Rows are copied byte for byte, so the result equals a
    one-process run.

    Args:
        shard_paths: the shard stores (any order).
        out_path: the merged store; an existing store there is refused unless ``overwrite``.
        overwrite: replace an existing store at ``out_path``.

    Returns:
        The merged, complete store (writable handle; reopen with :meth:`open` to read).

    Raises:
        ValueError: incompatible shards, rows done in two shards, or rows done in none.
        FileExistsError: ``out_path`` holds a store and ``overwrite`` is False.
    """
    shards = [GradientDatastore.open(p) for p in shard_paths]
    if not shards:
        raise ValueError("no shards to merge")
    first = shards[0]
    ignore = PROGRESS_KEYS | {"shard"}
    base = without(first.manifest, ignore)
    for shard in shards[1:]:
        diffs = diff(base, without(shard.manifest, ignore))
        if diffs:
            raise IncompatibleError(f"shard {shard.path} differs from {first.path}: " + "; ".join(diffs))
    for snap in first.snapshots:
        count = np.sum([s._done[snap] for s in shards], axis=0)
        if (count > 1).any():
            raise ValueError(f"rows {np.flatnonzero(count > 1)[:10].tolist()} of {snap!r} are done in several shards")
        if (count == 0).any():
            raise ValueError(f"rows {np.flatnonzero(count == 0)[:10].tolist()} of {snap!r} are done in no shard")
    user = without(base, set(OWNED_KEYS))
    out = GradientDatastore.replace(out_path, user, first.snapshots, first.dims, first.n_examples, first.dtype,
                                    overwrite=overwrite)
    with out:  # the lock is released however the copy ends
        for shard in shards:
            for snap in first.snapshots:
                rows = np.flatnonzero(shard._done[snap])
                for start in range(0, rows.size, _COPY_ROWS):
                    part = rows[start : start + _COPY_ROWS]
                    for dim in first.dims:
                        out._arrays[snap, dim][part] = shard._arrays[snap, dim][part]
                        if (snap, dim) in shard._scales:  # a quantized store: codes and scales, byte for byte
                            out._scales[snap, dim][part] = shard._scales[snap, dim][part]
                        out._written[snap, dim][part] = True
                    out.mark_done(snap, part)
        out.finalize()
    return out
