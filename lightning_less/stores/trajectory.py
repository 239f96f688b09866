"""The loss-trajectory store of S2L: each example's loss at each checkpoint.

A :class:`~lightning_less.stores.datastore.GradientDatastore` with the checkpoints as its
snapshots, ``dims=[1]``, ``dtype="float32"``, ``feature_kind="loss"`` and
``projector={"kind": "none"}``. Examples with no response token left after truncation
have no defined loss: their rows hold 0 on disk (the datastore accepts only finite
values) and are listed in the manifest's ``excluded_indices`` / ``excluded_ids``;
:meth:`TrajectoryStore.read` returns them as NaN, never 0, so the S2L sampler excludes
and reports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lightning_less.data.records import file_sha256
from lightning_less.errors import IncompatibleError, MissingInputError
from lightning_less.stores.datastore import GradientDatastore

FEATURE_KIND = "loss"
LOSS_DIM = 1
NO_PROJECTOR = {"kind": "none"}
LOSS_DEFINITION = "response_token_mean"


def check_trajectory_data(manifest: dict[str, Any], files: Sequence[str | os.PathLike], n_examples: int | None = None) -> None:
    """Refuse trajectories recorded on other data than ``files`` (compared by sha256, in order)."""
    recorded = [f["sha256"] for f in manifest.get("data", {}).get("files", [])]
    given = [file_sha256(f) for f in files]
    if recorded != given:
        raise ValueError(f"the trajectories were recorded on other data ({[f['path'] for f in manifest['data']['files']]}, "
                         f"sha256 {recorded}) than {list(map(str, files))} (sha256 {given})")
    if n_examples is not None and manifest.get("n_examples") != n_examples:
        raise ValueError(f"the trajectories have {manifest.get('n_examples')} rows, the data {n_examples} records")


# ------------------------------------------------------------------------ the store
class TrajectoryStore:
    """Reader (and whole-array writer) of a trajectory store: a loss ``GradientDatastore``.

    ``read()`` returns ``(trajectories [n_examples, n_checkpoints] float64, manifest)``,
    in dataset order and checkpoint order, NaN on the manifest's ``excluded_indices``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def open(self) -> GradientDatastore:
        """The underlying store, read-only; every file checked (errors name a truncated or corrupt one)."""
        store = GradientDatastore.open(self.path)
        m = store.manifest
        if m.get("feature_kind") != FEATURE_KIND or store.dims != [LOSS_DIM]:
            raise IncompatibleError(f"{self.path} is not a loss-trajectory store (feature_kind={m.get('feature_kind')!r}, "
                             f"dims={store.dims})")
        return store

    def read(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The trajectories and the manifest; raises if the store is missing or unfinished."""
        if not (self.path / "manifest.json").exists():
            raise MissingInputError(f"{self.path} is not a trajectory store (no manifest.json)")
        if (self.path / "trajectories.npy").exists():
            raise IncompatibleError(f"{self.path} is a trajectory store of an older format (trajectories.npy); record it again")
        store = self.open()
        if not store.is_complete():
            pending = {s: int(store.pending(s).size) for s in store.snapshots}
            raise RuntimeError(f"{self.path} is an unfinished trajectory store (rows pending per checkpoint: {pending}); "
                               "run the trajectory pass again to resume it")
        traj = np.stack([np.asarray(store.features(s, LOSS_DIM))[:, 0] for s in store.snapshots], axis=1).astype(np.float64)
        manifest = store.manifest
        traj[np.asarray(manifest.get("excluded_indices", []), dtype=np.int64)] = np.nan
        return traj, manifest

    def write(self, trajectories: np.ndarray, checkpoints: Sequence[str], manifest: dict[str, Any],
              overwrite: bool = False) -> GradientDatastore:
        """Write a whole ``[n, T]`` array at once (NaN rows = no defined loss, listed as excluded)."""
        x = np.asarray(trajectories, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(checkpoints):
            raise ValueError(f"trajectories of shape {x.shape} for {len(checkpoints)} checkpoints")
        undefined = np.isnan(x).all(axis=1)
        bad = ~undefined & ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"non-finite losses (a diverged proxy?) for indices {np.flatnonzero(bad)[:10].tolist()}")
        full = {**manifest, "feature_kind": FEATURE_KIND, "projector": NO_PROJECTOR,
                "excluded_indices": np.flatnonzero(undefined).tolist()}
        # Locked, allocated in full, manifest last: a killed or failed write leaves no complete-looking store.
        store = GradientDatastore.replace(self.path, full, list(checkpoints), [LOSS_DIM], x.shape[0], dtype="float32",
                                          overwrite=overwrite)
        with store:
            rows = np.arange(x.shape[0])
            for j, name in enumerate(checkpoints):
                store.write(name, LOSS_DIM, rows, np.where(undefined, 0.0, x[:, j])[:, None])
                store.mark_done(name, rows)
            store.finalize()
        return store

    @staticmethod
    def check_compatible(a: dict, b: dict, keys: Sequence[str] = ("data", "n_examples", "checkpoints")) -> None:
        diffs = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
        if diffs:
            raise ValueError("incompatible trajectory stores: " + "; ".join(diffs))


