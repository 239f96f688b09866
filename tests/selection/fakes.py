"""Inputs for the selection methods written by hand: pool / target files, gradient stores, trajectory stores.

Features and losses are chosen by the tests, so that every selection can be computed
independently (brute force) and compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_less.data.records import file_sha256
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.trajectory import TrajectoryStore
from tests.helpers import write_jsonl


def records(n: int, prefix: str, sources: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
            words: Sequence[str] | None = None) -> list[dict]:
    """``n`` records; their ``dataset`` (source), ``subtask`` and the word of their prompt can be chosen."""
    out = []
    for i in range(n):
        word = words[i] if words else f"w{i}"
        r = {"id": f"{prefix}{i}", "dataset": sources[i] if sources else "pool",
             "messages": [{"role": "user", "content": f"say {word}"}, {"role": "assistant", "content": word}]}
        if subtasks:
            r["subtask"] = subtasks[i]
        out.append(r)
    return out


def write_records(path: Path, recs: list[dict]) -> str:
    return str(write_jsonl(path, recs))


def gradient_store(path: Path, kind: str, features: Sequence[np.ndarray], lrs: Sequence[float],
                   excluded: Sequence[int] = (), extra_dims: Sequence[int] = (), files: Sequence[str] = ()) -> str:
    """A finished gradient datastore of one dim (plus ``extra_dims`` filled with other features) of ``files``;
    rows ``excluded`` hold zeros, as the gradient pass writes examples without a response token."""
    n, d = features[0].shape
    snaps = [f"epoch_{i:03d}" for i in range(len(features))]
    dims = [d, *extra_dims]
    data = {"kind": "files", "files": [{"path": str(f), "sha256": file_sha256(f)} for f in files], "max_length": 64,
            "template": "hand", "tokenizer": {"sha256": "hand"}}
    manifest = {"feature_kind": kind, "projector": {str(x): {"kind": "hand"} for x in dims}, "data": data,
                "snapshot_info": [{"name": s, "sha256": {"snapshot.json": "hand"}} for s in snaps],
                "snapshot_lrs": [float(x) for x in lrs], "excluded_indices": [int(i) for i in excluded]}
    store = GradientDatastore.create(path, manifest, snaps, dims, n, dtype="float32")
    rows = np.arange(n)
    rng = np.random.default_rng(len(dims))
    for snap, feats in zip(snaps, features):
        feats = np.array(feats, dtype=np.float32)
        feats[list(excluded)] = 0.0
        store.write(snap, d, rows, feats)
        for x in extra_dims:
            other = rng.standard_normal((n, x)).astype(np.float32)
            other[list(excluded)] = 0.0
            store.write(snap, x, rows, other)
        store.mark_done(snap, rows)
    store.finalize()
    return str(path)


def trajectory_store(path: Path, losses: np.ndarray, files: Sequence[str]) -> str:
    """A finished loss-trajectory store of ``files`` (NaN rows: no defined loss)."""
    manifest = {"data": {"files": [{"path": str(f), "sha256": file_sha256(f)} for f in files], "max_length": 64,
                         "template": "hand"}}
    TrajectoryStore(path).write(np.asarray(losses, dtype=np.float64),
                                [f"step_{i:06d}" for i in range(np.asarray(losses).shape[1])], manifest)
    return str(path)


def selected_ids(selection_dir: str | Path) -> list[str]:
    """The ``id`` of every line of ``selected.jsonl`` in rank order, read without the package."""
    import json

    lines = (Path(selection_dir) / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["id"] for line in lines]


def build_world(root: Path) -> dict:
    """Every input of every method for one pool of 12 examples (2 files, 2 sources) and 3 targets (2 subtasks).

    Keys: ``pool`` (2 files), ``targets`` and ``other_targets`` (1 file each, 3 records),
    ``pool_store`` / ``target_store`` (dims 8 and 4, 2 snapshots), ``trajectories``,
    ``model`` (the built-in tiny model), and ``request``: keyword arguments of
    ``run_selection`` / ``select`` / ``compare`` that satisfy every method.
    """
    rng = np.random.default_rng(0)
    words = ["casa", "perro", "gato", "mesa", "libro", "arbol", "luna", "nube", "flor", "agua", "pan", "sol"]
    pool_recs = records(12, "p", sources=["src0", "src1"] * 6, words=words)
    pool = [write_records(root / "pool_a.jsonl", pool_recs[:6]), write_records(root / "pool_b.jsonl", pool_recs[6:])]
    targets = write_records(root / "targets.jsonl", records(3, "t", subtasks=["a", "a", "b"], words=["gato", "sol", "luna"]))
    other = write_records(root / "other_targets.jsonl", records(3, "o", subtasks=["a", "b", "b"], words=["pan", "flor", "mesa"]))
    pool_store = gradient_store(root / "pool_store", "adam", [rng.standard_normal((12, 8)) for _ in range(2)], [2.0, 1.0],
                                extra_dims=[4], files=pool)
    target_store = gradient_store(root / "target_store", "sgd", [rng.standard_normal((3, 8)) for _ in range(2)], [2.0, 1.0],
                                  extra_dims=[4], files=[targets])
    trajectories = trajectory_store(root / "trajectories", rng.standard_normal((12, 3)), pool)
    request = {"pool_store": pool_store, "target_store": target_store, "trajectories": trajectories,
               "model": "builtin:tiny-llama", "max_length": 64, "n_clusters": 3}
    return {"pool": pool, "targets": [targets], "other_targets": [other], "pool_store": pool_store,
            "target_store": target_store, "trajectories": trajectories, "request": request}
