"""Influence scoring against a brute-force computation (docs/algorithms.md §1.5)."""

import numpy as np
import pytest
import torch

from lightning_less.selection.scoring import cosine_scores, influence_scores

# Non-contiguous labels with unequal group sizes: b x5, a x3, c x2, d x1.
LABELS = ["b", "a", "b", "c", "a", "b", "b", "c", "a", "b", "d"]
LRS = [1.69e-5, 1.29e-5, 7.7e-6]


def _features(n=37, m=len(LABELS), d=16, n_snapshots=3, seed=0):
    rng = np.random.default_rng(seed)
    # Rows of very different norms: without normalisation the brute force would disagree.
    scale = rng.uniform(0.01, 100.0, size=(n, 1))
    pool = [rng.standard_normal((n, d)) * scale for _ in range(n_snapshots)]
    targets = [rng.standard_normal((m, d)) * rng.uniform(0.1, 10, size=(m, 1)) for _ in range(n_snapshots)]
    return pool, targets


def brute_force(pool, targets, lrs, labels, aggregation="max_subtask_mean"):
    """Explicit loops over pool rows, subtasks, target rows and snapshots, in float64."""
    weights = [lr / sum(lrs) for lr in lrs]
    names = list(dict.fromkeys(labels))
    n = pool[0].shape[0]
    per = np.zeros((n, len(names)))
    for x in range(n):
        for s, name in enumerate(names):
            members = [j for j, label in enumerate(labels) if label == name]
            total = 0.0
            for j in members:
                for i in range(len(pool)):
                    a = np.asarray(pool[i][x], dtype=np.float64)
                    b = np.asarray(targets[i][j], dtype=np.float64)
                    total += weights[i] * float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
            per[x, s] = total / len(members)
    if aggregation == "mean":
        sizes = np.array([labels.count(name) for name in names])
        return per @ sizes / sizes.sum(), per, names
    return per.max(axis=1), per, names


@pytest.mark.parametrize("aggregation", ["max_subtask_mean", "mean"])
def test_scores_equal_brute_force(aggregation):
    pool, targets = _features()
    expected, per, names = brute_force(pool, targets, LRS, LABELS, aggregation)
    result = influence_scores(pool, targets, LRS, LABELS, aggregation=aggregation)
    assert result.subtasks == tuple(names) == ("b", "a", "c", "d")
    np.testing.assert_allclose(result.per_subtask, per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.score, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sum(result.weights), 1.0)
    np.testing.assert_allclose(result.weights, np.array(LRS) / sum(LRS))


@pytest.mark.parametrize("block_size", [1, 5, 7, 36, 37, 1000, None])
def test_blocked_equals_unblocked(block_size):
    pool, targets = _features()
    whole = influence_scores(pool, targets, LRS, LABELS, block_size=37)
    blocked = influence_scores(pool, targets, LRS, LABELS, block_size=block_size)
    np.testing.assert_allclose(blocked.per_subtask, whole.per_subtask, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked.score, whole.score, rtol=1e-6, atol=1e-7)


def test_fp16_memmap_pool(tmp_path):
    pool, targets = _features()
    pool16 = []
    for i, p in enumerate(pool):
        path = tmp_path / f"pool_{i}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=p.shape)
        mm[:] = p
        mm.flush()
        del mm
        pool16.append(np.load(path, mmap_mode="r"))
    assert isinstance(pool16[0], np.memmap) and pool16[0].dtype == np.float16
    # The reference is computed on the same fp16 values, upcast.
    expected, per, _ = brute_force([np.asarray(p) for p in pool16], targets, LRS, LABELS)
    result = influence_scores(pool16, targets, LRS, LABELS, block_size=8)
    np.testing.assert_allclose(result.per_subtask, per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.score, expected, rtol=1e-5, atol=1e-6)


def test_memmap_row_views(tmp_path):
    pool, targets = _features()
    views = []
    for i, p in enumerate(pool):
        np.save(tmp_path / f"pool_{i}.npy", p.astype(np.float32))
        views.append(np.load(tmp_path / f"pool_{i}.npy", mmap_mode="r")[5:])  # a view, not the whole map
    expected, _, _ = brute_force([p[5:] for p in pool], targets, LRS, LABELS)
    result = influence_scores(views, targets, LRS, LABELS, block_size=6)
    np.testing.assert_allclose(result.score, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    pool, targets = _features()
    cpu = influence_scores(pool, targets, LRS, LABELS, block_size=10)
    gpu = influence_scores(pool, targets, LRS, LABELS, block_size=10, device="cuda")
    np.testing.assert_allclose(gpu.per_subtask, cpu.per_subtask, rtol=1e-4, atol=1e-5)


def test_torch_inputs_and_scale_invariance():
    pool, targets = _features()
    base = influence_scores(pool, targets, LRS, LABELS)
    scaled = [p.copy() for p in pool]
    scaled[1][3] *= 1e3  # cosine: a row's scale must not matter
    via_torch = influence_scores([torch.from_numpy(p) for p in scaled], targets, LRS, LABELS, block_size=4)
    np.testing.assert_allclose(via_torch.score, base.score, rtol=1e-5, atol=1e-6)


def test_lr_weights_matter():
    pool, targets = _features()
    a = influence_scores(pool, targets, [1.0, 1.0, 1.0], LABELS)
    b = influence_scores(pool, targets, [10.0, 1.0, 1.0], LABELS)
    expected, _, _ = brute_force(pool, targets, [10.0, 1.0, 1.0], LABELS)
    np.testing.assert_allclose(b.score, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.score, b.score)


def test_round_robin_keeps_per_subtask():
    pool, targets = _features()
    result = influence_scores(pool, targets, LRS, LABELS, aggregation="round_robin")
    _, per, _ = brute_force(pool, targets, LRS, LABELS)
    np.testing.assert_allclose(result.per_subtask, per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.score, per.max(axis=1), rtol=1e-5, atol=1e-6)


def test_cosine_scores_is_one_snapshot():
    pool, targets = _features(n_snapshots=1)
    expected, per, _ = brute_force(pool, targets, [1.0], LABELS)
    result = cosine_scores(pool[0], targets[0], LABELS, block_size=10)
    np.testing.assert_allclose(result.per_subtask, per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.score, expected, rtol=1e-5, atol=1e-6)
    assert result.weights == (1.0,)


def test_zero_norm_rows_refused():
    pool, targets = _features()
    pool[2][20] = 0.0
    with pytest.raises(ValueError, match=r"snapshot 2: 1 row\(s\) with zero or non-finite L2 norm \(rows 20\)"):
        influence_scores(pool, targets, LRS, LABELS, block_size=16)
    pool, targets = _features()
    targets[0][4] = np.nan
    with pytest.raises(ValueError, match="target features of snapshot 0"):
        influence_scores(pool, targets, LRS, LABELS)


def test_bad_inputs_refused():
    pool, targets = _features()
    with pytest.raises(ValueError, match="one learning rate per snapshot"):
        influence_scores(pool, targets, LRS[:2], LABELS)
    with pytest.raises(ValueError, match="subtask labels"):
        influence_scores(pool, targets, LRS, LABELS[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        influence_scores(pool, targets, [1.0, -1.0, 1.0], LABELS)
    with pytest.raises(ValueError, match="unknown aggregation"):
        influence_scores(pool, targets, LRS, LABELS, aggregation="median")
    with pytest.raises(ValueError, match="pool rows"):
        influence_scores([pool[0], pool[1][:-1], pool[2]], targets, LRS, LABELS)
    with pytest.raises(ValueError, match="dim"):
        influence_scores([pool[0][:, :8], pool[1], pool[2]], targets, LRS, LABELS)


def test_a_snapshot_at_learning_rate_zero_weighs_nothing_but_all_zero_is_refused():
    """A one-step epoch inside the LR warmup has mean LR 0: its snapshot gets weight 0 (the formula's own
    answer), instead of refusing features already computed; all-zero, negative or NaN rates are refused."""
    from lightning_less.selection.scoring import snapshot_weights

    np.testing.assert_array_equal(snapshot_weights([0.0, 1e-3, 3e-3]), [0.0, 0.25, 0.75])
    for bad in ([0.0, 0.0], [-1e-3, 2e-3], [float("nan"), 1e-3], []):
        with pytest.raises(ValueError):
            snapshot_weights(bad)
