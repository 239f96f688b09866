"""The pure selectors of the method modules: every result is written by the same function."""

import numpy as np
import pytest

from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info, top_k
from lightning_less.selection.methods.bm25 import select_bm25
from lightning_less.selection.methods.dsir import select_dsir
from lightning_less.selection.methods.less import select_less
from lightning_less.selection.methods.random import select_random
from lightning_less.selection.methods.rds import select_rds
from lightning_less.selection.methods.s2l import select_s2l
from lightning_less.selection.outputs import read_selection, write_selection
from lightning_less.selection.result import SelectionResult
from lightning_less.selection.scoring import influence_scores

SELECTORS = {"less": select_less, "rds": select_rds, "s2l": select_s2l, "random": select_random, "bm25": select_bm25,
             "dsir": select_dsir}


@pytest.fixture
def records(tmp_path):
    topics = ["dogs" if i % 3 == 0 else "cats" for i in range(30)]
    lines = [f'{{"prompt": "question {i} about {t}", "completion": "a{i}"}}' for i, t in enumerate(topics)]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    targets = tmp_path / "targets.jsonl"
    targets.write_text(
        '{"prompt": "tell me about dogs", "completion": "dogs", "subtask": "dogs"}\n'
        '{"prompt": "and cats", "completion": "cats", "subtask": "cats"}\n'
    )
    return read_records([path]), read_records([targets])


def _inputs(name, pool, targets):
    rng = np.random.default_rng(0)
    n, labels = len(pool), ["dogs", "cats", "dogs"]
    if name == "less":
        feats = [rng.standard_normal((n, 8)).astype(np.float16) for _ in range(2)]
        tgts = [rng.standard_normal((3, 8)) for _ in range(2)]
        return {"pool_features": feats, "target_features": tgts, "snapshot_lrs": [2.0, 1.0], "target_subtasks": labels}
    if name == "rds":
        feats, tgts = rng.standard_normal((n, 8)), rng.standard_normal((3, 8))
        return {"pool_features": feats, "target_features": tgts, "target_subtasks": labels}
    if name == "s2l":
        return {"trajectories": rng.standard_normal((n, 4)), "n_clusters": 5, "seed": 0}
    if name == "random":
        return {"n": n, "seed": 0}
    return {"pool": pool, "targets": targets}


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_writes_a_selection(name, records, tmp_path):
    pool, targets = records
    budget = budget_info(len(pool), fraction=0.2)
    result = SELECTORS[name](k=budget["k"], **_inputs(name, pool, targets))
    assert isinstance(result, SelectionResult)
    assert result.selected.shape == (6,) and np.unique(result.selected).size == 6
    if result.scores is not None:
        assert result.scores.shape == (30,)
    out = write_selection(
        tmp_path / name, pool, result.selected, result.scores, method=name, budget=budget, seed=0,
        per_subtask=result.per_subtask, params=result.params,
    )
    sel = read_selection(out, pool)
    assert sel.selected.tolist() == result.selected.tolist()
    assert sel.manifest["method"] == name


def test_less_selector_is_top_k_of_influence(records):
    pool, targets = records
    inputs = _inputs("less", pool, targets)
    result = SELECTORS["less"](k=5, **inputs)
    scores = influence_scores(inputs["pool_features"], inputs["target_features"], [2.0, 1.0], inputs["target_subtasks"])
    assert result.selected.tolist() == top_k(scores.score, 5).tolist()
    assert result.per_subtask[0] == ("dogs", "cats")
    rr = SELECTORS["less"](k=5, aggregation="round_robin", **inputs)
    assert rr.params["aggregation"] == "round_robin" and rr.selected.size == 5


def test_lexical_selectors(records):
    pool, targets = records
    result = SELECTORS["bm25"](pool=pool, targets=targets, k=3)
    assert result.per_subtask[0] == ("dogs", "cats")
    # "dogs" is rarer in the pool (10 of 30 prompts) than "cats", so its idf is higher;
    # the dog prompts tie with each other and are taken by ascending index.
    assert result.selected.tolist() == [0, 3, 6]
    dsir = SELECTORS["dsir"](pool=pool, targets=targets, k=3, gumbel=True, seed=1)
    again = SELECTORS["dsir"](pool=pool, targets=targets, k=3, gumbel=True, seed=1)
    assert np.array_equal(dsir.selected, again.selected)
