"""LESS through the registry, against a brute-force computation on hand-made gradient stores."""

from __future__ import annotations

import csv
import json

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


def test_targets_without_a_response_token_are_refused_by_id(tmp_path):
    """Targets 1 and 4 had no response token: a target without signal is a mistake, named, never dropped silently."""
    rng = np.random.default_rng(3)
    feats = [rng.standard_normal((9, 6)) for _ in range(2)], [rng.standard_normal((5, 6)) for _ in range(2)]
    pool = write_records(tmp_path / "pool.jsonl", records(9, "p"))
    targets = write_records(tmp_path / "targets.jsonl", records(5, "t", subtasks=["a", "a", "b", "b", "c"]))
    pool_store = gradient_store(tmp_path / "ps", "adam", feats[0], [3.0, 1.0], files=[pool])
    target_store = gradient_store(tmp_path / "ts", "sgd", feats[1], [3.0, 1.0], excluded=[1, 4], files=[targets])
    with pytest.raises(InputError, match=r"2 target examples .* \(ids t1, t4\)"):
        run_selection("less", [pool], [targets], tmp_path / "sel", count=4, pool_store=pool_store, target_store=target_store)
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("aggregation", ["max_subtask_mean", "round_robin"])
def test_pool_rows_without_a_response_token_are_never_selected(tmp_path, aggregation):
    """Pool rows 0 and 5 (zero features) would have refused the pool: they are counted, named, left blank in
    scores.csv and never selected, and the others rank as brute force says."""
    rng = np.random.default_rng(4)
    pool_feats = [rng.standard_normal((9, 6)) for _ in range(2)]
    target_feats = [rng.standard_normal((4, 6)) for _ in range(2)]
    subtasks = ["a", "a", "b", "b"]
    pool = write_records(tmp_path / "pool.jsonl", records(9, "p"))
    targets = write_records(tmp_path / "targets.jsonl", records(4, "t", subtasks=subtasks))
    pool_store = gradient_store(tmp_path / "ps", "adam", pool_feats, [3.0, 1.0], excluded=[0, 5], files=[pool])
    target_store = gradient_store(tmp_path / "ts", "sgd", target_feats, [3.0, 1.0], files=[targets])
    out = run_selection("less", [pool], [targets], tmp_path / "sel", count=7, pool_store=pool_store,
                        target_store=target_store, aggregation=aggregation)
    want, per_subtask = brute_force_less(pool_feats, target_feats, [3.0, 1.0], subtasks, keep=[0, 1, 2, 3])
    kept = [i for i in range(9) if i not in (0, 5)]
    chosen = selected_ids(out)
    assert sorted(chosen) == sorted(f"p{i}" for i in kept)  # 7 of 9: every row but the two
    if aggregation == "max_subtask_mean":
        assert chosen == [f"p{i}" for i in sorted(kept, key=lambda i: (-want[i], i))]
    rows = _scores_csv(out)
    assert rows[0]["score"] == rows[5]["score"] == "" and rows[0]["selected"] == "0"
    np.testing.assert_allclose([float(rows[i]["score/a"]) for i in kept], per_subtask["a"][kept], rtol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["excluded"]["count"] == 2 and manifest["params"]["excluded"]["ids"] == ["p0", "p5"]
    with pytest.raises(InputError, match="exceeds the 7 pool examples left with a response token"):
        run_selection("less", [pool], [targets], tmp_path / "sel8", count=8, pool_store=pool_store,
                      target_store=target_store)


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
