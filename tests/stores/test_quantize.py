"""Quantized gradient stores (int8 with a per-row scale, 1-bit signs): round trip, sizes, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_less.errors import IncompatibleError
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.quantize import QuantizedRows, decode, encode

MANIFEST = {"feature_kind": "adam", "projector": {"kind": "sparse_jl", "seed": 0, "sparsity": 4}}
N, DIM = 12, 21  # 21: the packed signs end in a partial byte


def _rows(seed: int = 0, n: int = N, d: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Rows of very different magnitudes: one scale for the whole store would fail the per-element bound.
    return (rng.standard_normal((n, d)) * rng.uniform(1e-4, 1e3, size=(n, 1))).astype(np.float32)


def _store(path, dtype: str, rows: np.ndarray, snapshots=("epoch_000",)) -> GradientDatastore:
    store = GradientDatastore.create(path, MANIFEST, list(snapshots), [rows.shape[1]], rows.shape[0], dtype=dtype)
    idx = np.arange(rows.shape[0])
    for block in (idx[::2], idx[1::2]):  # written out of order, in two blocks, as a pass does
        for snap in snapshots:
            store.write(snap, rows.shape[1], block, rows[block])
            store.mark_done(snap, block)
    store.finalize()
    return GradientDatastore.open(path)


def test_int8_round_trip_within_half_a_step(tmp_path):
    x = _rows()
    store = _store(tmp_path / "s", "int8", x)
    feats = store.features("epoch_000", DIM)
    assert isinstance(feats, QuantizedRows) and feats.shape == (N, DIM)
    assert feats.codes.dtype == np.int8 and feats.codes.shape == (N, DIM)
    scales = np.asarray(feats.scales, dtype=np.float64)
    np.testing.assert_allclose(scales, np.abs(x).max(axis=1) / 127, rtol=1e-6)
    deq = np.asarray(feats)
    # |x - deq| <= scale / 2 per element (plus float32 rounding of the product).
    err = np.abs(x.astype(np.float64) - deq)
    assert (err <= scales[:, None] / 2 * (1 + 1e-5) + 1e-30).all(), (err / scales[:, None]).max()
    assert np.abs(feats.codes).max() == 127  # the largest element of every row uses the full range
    np.testing.assert_array_equal(feats[3:5], deq[3:5])
    np.testing.assert_array_equal(feats[7], deq[7])


def test_one_bit_round_trip_keeps_signs_exactly(tmp_path):
    x = _rows(1)
    store = _store(tmp_path / "s", "1bit", x)
    feats = store.features("epoch_000", DIM)
    assert feats.codes.dtype == np.uint8 and feats.codes.shape == (N, 3)  # ceil(21 / 8) bytes a row
    deq = np.asarray(feats)
    np.testing.assert_array_equal(np.sign(deq), np.sign(x))
    np.testing.assert_allclose(np.abs(deq), np.repeat(np.abs(x).mean(axis=1, keepdims=True), DIM, axis=1), rtol=1e-6)


def test_zero_row_stays_zero():
    for dtype in ("int8", "1bit"):
        x = np.zeros((2, DIM), dtype=np.float32)
        x[1, 3] = -2.0
        codes, scales = encode(x, dtype, np.arange(2))
        deq = decode(codes, scales, dtype, DIM)
        assert not deq[0].any(), dtype  # a row without features must stay one (scoring refuses it)
        assert deq[1, 3] < 0


def test_quantized_files_are_smaller(tmp_path):
    x = _rows(2, n=64, d=256)
    sizes = {}
    for dtype in ("float16", "int8", "1bit"):
        _store(tmp_path / dtype, dtype, x)
        sizes[dtype] = sum(f.stat().st_size for f in (tmp_path / dtype / "features").rglob("*.npy"))
    assert sizes["int8"] < 0.6 * sizes["float16"]
    assert sizes["1bit"] < 0.15 * sizes["float16"]
    assert GradientDatastore.open(tmp_path / "int8").manifest["dtype"] == "int8"


def test_resume_with_another_dtype_is_refused(tmp_path):
    store = GradientDatastore.create(tmp_path / "s", MANIFEST, ["epoch_000"], [DIM], N, dtype="int8")
    store.write("epoch_000", DIM, [0, 1], _rows()[:2])
    store.mark_done("epoch_000", [0, 1])
    store.close()
    with pytest.raises(IncompatibleError, match="dtype: 'int8' != 'float16'"):
        GradientDatastore.create(tmp_path / "s", MANIFEST, ["epoch_000"], [DIM], N, dtype="float16")
    resumed = GradientDatastore.create(tmp_path / "s", MANIFEST, ["epoch_000"], [DIM], N, dtype="int8")
    assert resumed.pending("epoch_000").tolist() == list(range(2, N))


@pytest.mark.parametrize("dtypes", [("float16", "int8"), ("int8", "float16"), ("int8", "1bit")])
def test_mixing_quantized_and_other_stores_is_refused(tmp_path, dtypes):
    a = _store(tmp_path / "a", dtypes[0], _rows())
    b = _store(tmp_path / "b", dtypes[1], _rows())
    with pytest.raises(IncompatibleError) as err:
        a.check_compatible(b)
    assert str(tmp_path / "a") in str(err.value) and str(tmp_path / "b") in str(err.value)
    assert f"{dtypes[0]!r}" in str(err.value) and f"{dtypes[1]!r}" in str(err.value)


def test_float16_and_float32_still_score_together(tmp_path):
    _store(tmp_path / "a", "float16", _rows()).check_compatible(_store(tmp_path / "b", "float32", _rows()))


def test_merging_shards_of_other_dtypes_is_refused_and_int8_shards_merge(tmp_path):
    x = _rows(3)
    shards = []
    for rank, dtype in enumerate(("int8", "int8", "float16")):
        store = GradientDatastore.create(tmp_path / f"r{rank}", {**MANIFEST, "shard": rank}, ["e"], [DIM], N, dtype=dtype)
        rows = np.arange(rank, N, 2) if rank < 2 else np.arange(N)
        store.write("e", DIM, rows, x[rows])
        store.mark_done("e", rows)
        store.close()
        shards.append(tmp_path / f"r{rank}")
    with pytest.raises(IncompatibleError, match=r"r2 differs from .*r0.*dtype: 'int8' != 'float16'"):
        GradientDatastore.merge_shards(shards, tmp_path / "merged")
    merged = GradientDatastore.merge_shards(shards[:2], tmp_path / "merged")
    one = _store(tmp_path / "one", "int8", x, snapshots=("e",))
    got, want = merged.features("e", DIM), one.features("e", DIM)
    np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(want.codes))
    np.testing.assert_array_equal(np.asarray(got.scales), np.asarray(want.scales))
