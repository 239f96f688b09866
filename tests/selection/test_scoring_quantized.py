"""Scoring quantized stores (against brute force on the dequantized rows) and scoring over several ranks."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from lightning_less.selection.scoring import influence_scores, merge_rank_scores
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import run_two_ranks
from tests.selection.test_scoring import LABELS, LRS, _features, brute_force

MANIFEST = {"feature_kind": "adam", "projector": {"kind": "sparse_jl", "seed": 0, "sparsity": 4}}


def _quantized_pool(tmp_path, dtype: str, pool: list[np.ndarray]) -> GradientDatastore:
    n, d = pool[0].shape
    names = [f"epoch_{i:03d}" for i in range(len(pool))]
    store = GradientDatastore.create(tmp_path / dtype, MANIFEST, names, [d], n, dtype=dtype)
    for name, rows in zip(names, pool):
        for start in range(0, n, 8):  # in blocks, as the gradient pass writes
            idx = np.arange(start, min(start + 8, n))
            store.write(name, d, idx, rows[idx])
            store.mark_done(name, idx)
    store.finalize()
    return GradientDatastore.open(tmp_path / dtype)


@pytest.mark.parametrize("dtype", ["int8", "1bit"])
@pytest.mark.parametrize("aggregation", ["max_subtask_mean", "mean"])
def test_quantized_scores_equal_brute_force_on_dequantized_rows(tmp_path, dtype, aggregation):
    pool, targets = _features(n=37, d=20)
    store = _quantized_pool(tmp_path, dtype, pool)
    feats = [store.features(s, 20) for s in store.snapshots]
    dequantized = [np.asarray(f, dtype=np.float64) for f in feats]
    if dtype == "1bit":  # the cosine of dequantized 1-bit rows is the cosine of the sign vectors
        dequantized = [np.where(p >= 0, 1.0, -1.0) for p in pool]
    want, want_per, _ = brute_force(dequantized, targets, LRS, LABELS, aggregation)
    got = influence_scores(feats, targets, LRS, LABELS, aggregation, block_size=5)
    np.testing.assert_allclose(got.per_subtask, want_per, atol=1e-5)
    np.testing.assert_allclose(got.score, want, atol=1e-5)
    # The quantized scores are close to, but not the same as, the float ones.
    exact = brute_force(pool, targets, LRS, LABELS, aggregation)[0]
    assert 0 < np.abs(got.score - exact).max() < (0.05 if dtype == "int8" else 0.5)


def test_quantized_zero_row_is_refused(tmp_path):
    pool, targets = _features(n=9, d=16, n_snapshots=1)
    pool[0][4] = 0.0
    store = _quantized_pool(tmp_path, "1bit", pool)
    with pytest.raises(ValueError, match="rows 4"):
        influence_scores([store.features("epoch_000", 16)], targets, [1.0], LABELS)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_shares_merged_equal_one_process(world_size):
    pool, targets = _features(n=37)
    whole = influence_scores(pool, targets, LRS, LABELS, block_size=4)
    parts = [influence_scores(pool, targets, LRS, LABELS, block_size=4, rank=r, world_size=world_size)
             for r in reversed(range(world_size))]
    covered = sorted(p.rows for p in parts)
    assert covered[0][0] == 0 and covered[-1][1] == 37 and all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    assert all(p.rows[0] % 4 == 0 for p in parts)  # whole blocks: the same matmuls as one process
    merged = merge_rank_scores(parts)
    np.testing.assert_array_equal(merged.per_subtask, whole.per_subtask)
    np.testing.assert_array_equal(merged.score, whole.score)
    with pytest.raises(ValueError, match="follow each other|in no part"):  # a rank left out
        merge_rank_scores(parts[:1] + parts[2:])


def test_bad_rank_arguments_are_refused():
    pool, targets = _features(n=5)
    for kwargs in ({"rank": 2, "world_size": 2}, {"rank": 0}, {"distributed": True}):
        with pytest.raises(ValueError):
            influence_scores(pool, targets, LRS, LABELS, **kwargs)


def test_two_gloo_ranks_score_like_one_process(tmp_path):
    pool, targets = _features(n=41, d=24)
    store = _quantized_pool(tmp_path, "int8", pool)
    whole = influence_scores([store.features(s, 24) for s in store.snapshots], targets, LRS, LABELS, block_size=6)
    np.save(tmp_path / "targets.npy", np.stack(targets))
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, torch.distributed as dist
        from lightning_less.selection.scoring import influence_scores
        from lightning_less.stores.datastore import GradientDatastore
        dist.init_process_group("gloo")
        store = GradientDatastore.open({str(tmp_path / 'int8')!r})
        result = influence_scores([store.features(s, 24) for s in store.snapshots], list(np.load({str(tmp_path / 'targets.npy')!r})),
                                  {LRS!r}, {LABELS!r}, block_size=6, distributed=True)
        assert result.rows is None and result.per_subtask.shape[0] == 41
        np.save({str(tmp_path)!r} + f"/rank{{dist.get_rank()}}.npy", result.per_subtask)
        dist.destroy_process_group()
    """))
    run_two_ranks(script)
    for rank in range(2):  # every rank holds every row, equal to one process
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), whole.per_subtask)
