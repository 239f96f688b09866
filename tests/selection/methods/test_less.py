"""LESS through the registry, against a brute-force computation on hand-made gradient stores."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.runner import run_selection
from tests.selection.fakes import gradient_store, records, selected_ids, write_records


def brute_force_less(pool: list[np.ndarray], targets: list[np.ndarray], lrs: list[float], subtasks: list[str],
                     keep: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """LESS score of every pool row, one loop per pool row, target and snapshot (the targets in ``keep`` only)."""
    weights = np.asarray(lrs) / np.sum(lrs)
    n = pool[0].shape[0]
    per_subtask: dict[str, np.ndarray] = {}
    for s in dict.fromkeys(subtasks[j] for j in keep):
        members = [j for j in keep if subtasks[j] == s]
        col = np.zeros(n)
        for x in range(n):
            total = 0.0
            for j in members:
                for i, w in enumerate(weights):
                    a, b = pool[i][x].astype(np.float64), targets[i][j].astype(np.float64)
                    total += w * a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            col[x] = total / len(members)
        per_subtask[s] = col
    return np.max(np.stack(list(per_subtask.values()), axis=1), axis=1), per_subtask


def _order(scores: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def _scores_csv(selection_dir) -> list[dict]:
    with open(selection_dir / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_excluded_target_rows_are_left_out(tmp_path):
    """Targets 1 (subtask a) and 4 (the only one of subtask c) had no response token: their zero rows are dropped."""
    rng = np.random.default_rng(3)
    pool_feats = [rng.standard_normal((9, 6)) for _ in range(2)]
    target_feats = [rng.standard_normal((5, 6)) for _ in range(2)]
    subtasks = ["a", "a", "b", "b", "c"]
    pool = write_records(tmp_path / "pool.jsonl", records(9, "p"))
    targets = write_records(tmp_path / "targets.jsonl", records(5, "t", subtasks=subtasks))
    pool_store = gradient_store(tmp_path / "ps", "adam", pool_feats, [3.0, 1.0], files=[pool])
    target_store = gradient_store(tmp_path / "ts", "sgd", target_feats, [3.0, 1.0], excluded=[1, 4], files=[targets])

    out = run_selection("less", [pool], [targets], tmp_path / "sel", count=4, pool_store=pool_store, target_store=target_store)

    want, per_subtask = brute_force_less(pool_feats, target_feats, [3.0, 1.0], subtasks, keep=[0, 2, 3])
    assert selected_ids(out) == [f"p{i}" for i in _order(want, 4)]
    rows = _scores_csv(out)
    assert [c for c in rows[0] if c.startswith("score/")] == ["score/a", "score/b"]  # no subtask c: it had no target left
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, rtol=1e-5)
    np.testing.assert_allclose([float(r["score/a"]) for r in rows], per_subtask["a"], rtol=1e-5)


def test_round_robin_takes_turns_between_subtasks(tmp_path):
    """Subtask a has three close pool examples, b only moderately close ones: the turns decide the selection."""
    pool_feats = [np.array([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2], [0.5, 0.87], [0.6, 0.8]])]
    target_feats = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    pool = write_records(tmp_path / "pool.jsonl", records(5, "p"))
    targets = write_records(tmp_path / "targets.jsonl", records(2, "t", subtasks=["a", "b"]))
    stores = {"pool_store": gradient_store(tmp_path / "ps", "adam", pool_feats, [1.0], files=[pool]),
              "target_store": gradient_store(tmp_path / "ts", "sgd", target_feats, [1.0], files=[targets])}
    # cos to a: 1, .990, .980, .498, .6; cos to b: 0, .140, .200, .867, .8.
    # Turns: a takes 0, b takes 3, a takes 1, b takes 4 (a alone would take 0, 1, 2, 4).
    rr = run_selection("less", [pool], [targets], tmp_path / "rr", count=4, aggregation="round_robin", **stores)
    assert selected_ids(rr) == ["p0", "p3", "p1", "p4"]
    # The max over subtasks takes a's three, then b's best.
    top = run_selection("less", [pool], [targets], tmp_path / "max", count=4, **stores)
    assert selected_ids(top) == ["p0", "p1", "p2", "p3"]


def test_store_problems_are_refused_naming_the_flag(tmp_path, world):
    kw = {"count": 3, "pool_store": world["pool_store"], "target_store": world["target_store"]}
    with pytest.raises(MissingInputError, match="--pool_store .*nowhere.* is not a gradient datastore"):
        run_selection("less", world["pool"], world["targets"], tmp_path / "a", **{**kw, "pool_store": str(tmp_path / "nowhere")})
    with pytest.raises(IncompatibleError, match="--target_store .* has 3 rows but --targets holds 6 records"):
        run_selection("less", world["pool"], world["targets"] * 2, tmp_path / "b", **kw)
    with pytest.raises(IncompatibleError, match="--pool_store .* has 12 rows but --pool holds 6 records"):
        run_selection("less", world["pool"][:1], world["targets"], tmp_path / "c", **kw)
    with pytest.raises(InputError, match="--dim 16 is not in the stores' dims"):
        run_selection("less", world["pool"], world["targets"], tmp_path / "d", dim=16, **{k: v for k, v in kw.items()})
    with pytest.raises(InputError, match="adam pool store and an sgd target store"):
        run_selection("less", world["pool"], world["targets"], tmp_path / "e", count=3, pool_store=world["target_store"],
                      target_store=world["pool_store"])
    assert not any((tmp_path / name).exists() for name in "abcde")
