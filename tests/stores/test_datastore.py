"""Gradient datastore: roundtrip, resume, refusal of stale or mismatched stores, shard merge."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lightning_less.stores import datastore as ds_module
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import fill_store

N = 10
SNAPSHOTS = ["epoch_000", "epoch_001"]
DIMS = [8, 16]
MANIFEST = {"feature_kind": "adam", "projector": {"kind": "sparse_jl", "seed": 0, "sparsity": 4},
            "data_files": [{"path": "pool.jsonl", "sha256": "ab" * 32}]}


def features_for(snapshot: str, dim: int, indices: np.ndarray) -> np.ndarray:
    """Deterministic per-row values, so any run must give the same arrays."""
    rng = np.random.default_rng([SNAPSHOTS.index(snapshot), dim])
    table = rng.standard_normal((N, dim)).astype(np.float32)
    return table[indices]


def fill(store: GradientDatastore, indices: np.ndarray) -> None:
    fill_store(store, indices, features_for)


def create(path, **kw) -> GradientDatastore:
    args = {"manifest": MANIFEST, "snapshots": SNAPSHOTS, "dims": DIMS, "n_examples": N, **kw}
    return GradientDatastore.create(path, **args)


def test_roundtrip(tmp_path):
    store = create(tmp_path / "s", dtype="float32")
    fill(store, np.arange(N)[::-1])  # written out of order, read in dataset order
    store.finalize()
    again = GradientDatastore.open(tmp_path / "s")
    assert again.is_complete() and again.dims == DIMS and again.snapshots == SNAPSHOTS
    for snap in SNAPSHOTS:
        for dim in DIMS:
            arr = again.features(snap, dim)
            np.testing.assert_array_equal(arr, features_for(snap, dim, np.arange(N)))
            assert not arr.flags.writeable
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["feature_kind"] == "adam"
    assert manifest["format_version"] == 1 and manifest["n_examples"] == N and manifest["dtype"] == "float32"
    assert (tmp_path / "s" / "features" / "epoch_001" / "dim_16.npy").exists()
    assert (tmp_path / "s" / "done" / "epoch_000.npy").exists()


def test_float16_storage_and_overflow(tmp_path):
    store = create(tmp_path / "s")
    assert store.dtype == "float16"
    idx = np.arange(2)
    store.write("epoch_000", 8, idx, np.full((2, 8), 1.5, dtype=np.float32))
    assert np.load(tmp_path / "s" / "features" / "epoch_000" / "dim_8.npy", mmap_mode="r").dtype == np.float16
    with pytest.raises(ValueError, match="overflow float16"):
        store.write("epoch_000", 8, idx, np.full((2, 8), 1e5, dtype=np.float32))
    with pytest.raises(ValueError, match="underflow"):
        store.write("epoch_000", 8, idx, np.full((2, 8), 1e-9, dtype=np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        store.write("epoch_000", 8, idx, np.full((2, 8), np.nan, dtype=np.float32))
    # the failed writes left the earlier values in place
    assert (store.features("epoch_000", 8, allow_incomplete=True)[:2] == 1.5).all()


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full = create(tmp_path / "full")
    fill(full, np.arange(N))
    full.finalize()

    first = create(tmp_path / "resumed")
    fill(first, np.arange(0, N, 2))
    # a row written for one dim but never marked done, as when killed mid-batch
    first.write("epoch_000", 8, [1], np.full((1, 8), 9.0, dtype=np.float32))
    del first

    resumed = create(tmp_path / "resumed")  # same manifest: reopens, does not wipe
    for snap in SNAPSHOTS:
        np.testing.assert_array_equal(resumed.pending(snap), np.arange(1, N, 2))
    np.testing.assert_array_equal(resumed.pending(), np.arange(1, N, 2))
    with pytest.raises(RuntimeError, match="not complete"):
        resumed.features("epoch_000", 8)
    fill(resumed, resumed.pending())
    assert resumed.pending().size == 0
    resumed.finalize()
    for snap in SNAPSHOTS:
        for dim in DIMS:
            np.testing.assert_array_equal(resumed.features(snap, dim), full.features(snap, dim))


def test_mark_done_requires_every_dim(tmp_path):
    store = create(tmp_path / "s")
    store.write("epoch_000", 8, [3], features_for("epoch_000", 8, np.array([3])))
    with pytest.raises(ValueError, match="dim 16"):
        store.mark_done("epoch_000", [3])
    assert store.pending("epoch_000").size == N


def test_incomplete_store_refuses_to_be_read(tmp_path):
    store = create(tmp_path / "s")
    fill(store, np.arange(N))  # every row done, but never finalized
    assert not store.is_complete()
    with pytest.raises(RuntimeError, match="not complete"):
        GradientDatastore.open(tmp_path / "s").features("epoch_000", 8)
    assert GradientDatastore.open(tmp_path / "s").features("epoch_000", 8, allow_incomplete=True).shape == (N, 8)
    partial = create(tmp_path / "p")
    fill(partial, np.arange(3))
    with pytest.raises(RuntimeError, match="pending"):
        partial.finalize()
    # a manifest saying complete does not hide a missing row either
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    (tmp_path / "p" / "manifest.json").write_text(json.dumps({**manifest, "complete": True}))
    with pytest.raises(RuntimeError, match="not complete"):
        GradientDatastore.open(tmp_path / "p").features("epoch_000", 8)


def test_complete_store_is_read_only(tmp_path):
    store = create(tmp_path / "s")
    fill(store, np.arange(N))
    store.finalize()
    with pytest.raises(PermissionError):
        store.write("epoch_000", 8, [0], features_for("epoch_000", 8, np.array([0])))
    with pytest.raises(PermissionError):
        GradientDatastore.open(tmp_path / "s").write("epoch_000", 8, [0], np.zeros((1, 8)))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"manifest": {**MANIFEST, "projector": {**MANIFEST["projector"], "seed": 1}}}, "projector.seed"),
        ({"manifest": {**MANIFEST, "feature_kind": "sgd"}}, "feature_kind"),
        ({"dims": [8, 32]}, "dims"),
        ({"snapshots": ["epoch_000"]}, "snapshots"),
        ({"dtype": "float32"}, "dtype"),
        ({"n_examples": N + 1}, "n_examples"),
    ],
)
def test_incompatible_store_is_refused_not_reused(tmp_path, change, key):
    store = create(tmp_path / "s")
    fill(store, np.arange(4))
    store.close()  # one writer at a time: the next create must not find this one still open
    with pytest.raises(ValueError, match=key) as err:
        create(tmp_path / "s", **change)
    assert "overwrite" in str(err.value)
    # the old data is untouched, and overwrite=True starts from scratch
    assert GradientDatastore.open(tmp_path / "s").pending("epoch_000").size == N - 4
    fresh = create(tmp_path / "s", overwrite=True, **change)
    assert fresh.pending(fresh.snapshots[0]).size == fresh.n_examples


def test_check_compatible_names_keys_and_values(tmp_path):
    pool = create(tmp_path / "pool")
    targets = GradientDatastore.create(tmp_path / "t", {**MANIFEST, "feature_kind": "sgd", "data_files": []},
                                       SNAPSHOTS, DIMS, n_examples=3)
    pool.check_compatible(targets)  # kind, size and data may differ for scoring
    other = GradientDatastore.create(tmp_path / "o", {**MANIFEST, "projector": {"kind": "trak_basic", "seed": 0}},
                                     SNAPSHOTS, [8], n_examples=3)
    with pytest.raises(ValueError) as err:
        pool.check_compatible(other)
    msg = str(err.value)
    assert "projector.kind: 'sparse_jl' != 'trak_basic'" in msg and "dims: [8, 16] != [8]" in msg
    assert "projector.sparsity" in msg
    with pytest.raises(ValueError, match="n_examples"):
        pool.check_compatible(targets, keys=None)


def test_non_store_directory_is_not_overwritten(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        create(tmp_path / "x", overwrite=True)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    store = create(tmp_path / "s")
    fill(store, np.arange(N))
    before = (tmp_path / "s" / "manifest.json").read_text()

    def broken_dump(obj, f, **kw):
        f.write('{"complete": tr')  # half a document, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(ds_module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        store.finalize()
    monkeypatch.undo()
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert sorted(os.listdir(tmp_path / "s")) == ["done", "features", "manifest.json"]  # no temp file left
    assert not GradientDatastore.open(tmp_path / "s").is_complete()


def test_merge_shards_equals_single_store(tmp_path):
    single = create(tmp_path / "single")
    fill(single, np.arange(N))
    single.finalize()
    shards = []
    for rank, rows in enumerate([np.arange(0, N, 2), np.arange(1, N, 2)]):
        shard = create(tmp_path / f"rank{rank}", manifest={**MANIFEST, "shard": {"rank": rank, "world_size": 2}})
        fill(shard, rows)
        shards.append(tmp_path / f"rank{rank}")
    merged = GradientDatastore.merge_shards(shards[::-1], tmp_path / "merged")
    merged = GradientDatastore.open(tmp_path / "merged")
    assert merged.is_complete() and "shard" not in merged.manifest
    single.check_compatible(merged, keys=None)
    for snap in SNAPSHOTS:
        for dim in DIMS:
            np.testing.assert_array_equal(merged.features(snap, dim), single.features(snap, dim))
    with pytest.raises(FileExistsError):
        GradientDatastore.merge_shards(shards, tmp_path / "merged")


def test_merge_refuses_overlap_gaps_and_mismatch(tmp_path):
    def shard(name, rows, manifest=MANIFEST):
        store = create(tmp_path / name, manifest=manifest)
        fill(store, rows)
        return tmp_path / name

    a = shard("a", np.arange(0, 6))
    b = shard("b", np.arange(5, N))
    c = shard("c", np.arange(7, N))
    d = shard("d", np.arange(6, N), {**MANIFEST, "projector": {**MANIFEST["projector"], "seed": 9}})
    with pytest.raises(ValueError, match="several shards"):
        GradientDatastore.merge_shards([a, b], tmp_path / "m1")
    with pytest.raises(ValueError, match=r"no shard"):
        GradientDatastore.merge_shards([a, c], tmp_path / "m2")
    with pytest.raises(ValueError, match="projector.seed"):
        GradientDatastore.merge_shards([a, d], tmp_path / "m3")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m3").exists()
