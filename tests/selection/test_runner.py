"""run_selection's reuse rule: a selection is reused only when made the same way; every deciding change is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lightning_less.models.tiny import resolve_model_path
from lightning_less.selection.outputs import StaleSelectionError
from lightning_less.selection.registry import get_method
from lightning_less.selection.runner import run_selection
from tests.selection.fakes import gradient_store, trajectory_store


def _copy(world, key, tmp_path):
    return str(shutil.copytree(world[key], tmp_path / f"{key}_copy"))


def _rebuild_pool_store(world, tmp_path):
    """The same path, new content (as a pipeline rerun with other settings would leave it)."""
    shutil.rmtree(world["pool_store"])
    rng = np.random.default_rng(7)
    gradient_store(type(tmp_path)(world["pool_store"]), "adam", [rng.standard_normal((12, 8)) for _ in range(2)], [2.0, 1.0],
                   extra_dims=[4], files=world["pool"])
    return world["pool_store"]


def _rewrite_trajectories(world, tmp_path):
    shutil.rmtree(world["trajectories"])
    trajectory_store(type(tmp_path)(world["trajectories"]), np.random.default_rng(9).standard_normal((12, 3)), world["pool"])
    return world["trajectories"]


# (method, changed option, how to get the new value, what the refusal says)
CHANGES = [
    ("less", "pool_store", lambda w, t: _copy(w, "pool_store", t), "its pool_store is .*pool_store, not .*pool_store_copy"),
    ("less", "target_store", lambda w, t: _copy(w, "target_store", t), "its target_store is"),
    ("less", "pool_store", _rebuild_pool_store, "its pool_store .*pool_store was rebuilt since"),
    ("less", "dim", lambda w, t: 4, "it used dim 8, not 4"),
    ("less", "aggregation", lambda w, t: "round_robin", "it used aggregation 'max_subtask_mean', not 'round_robin'"),
    ("rds", "targets", lambda w, t: w["other_targets"], "other target files"),
    ("rds", "model", lambda w, t: str(resolve_model_path("builtin:tiny-llama")), "it used model 'builtin:tiny-llama', not"),
    ("rds", "max_length", lambda w, t: 32, "it used max_length 64, not 32"),
    ("rds", "aggregation", lambda w, t: "mean", "it used aggregation"),
    ("s2l", "trajectories", lambda w, t: _copy(w, "trajectories", t), "its trajectories is"),
    ("s2l", "trajectories", _rewrite_trajectories, "its trajectories .* was rebuilt since"),
    ("s2l", "n_clusters", lambda w, t: 2, "it used n_clusters 3, not 2"),
    ("s2l", "stratify_by_source", lambda w, t: True, "it used stratify_by_source False, not True"),
    ("s2l", "seed", lambda w, t: 1, "seed 0, not 1"),
    ("random", "seed", lambda w, t: 1, "seed 0, not 1"),
    ("bm25", "targets", lambda w, t: w["other_targets"], "other target files"),
    ("dsir", "targets", lambda w, t: w["other_targets"], "other target files"),
] + [(m, "count", lambda w, t: 4, "it holds 3 examples, the budget is 4") for m in ("less", "random", "s2l", "bm25")]


def _run(world, method, tmp_path, overwrite=False, **change):
    kwargs = {**world["request"], "count": 3 if method != "full" else None, "seed": 0, **change}
    targets = kwargs.pop("targets", world["targets"])
    return run_selection(method, world["pool"], targets, tmp_path / "sel", overwrite=overwrite, **kwargs)


@pytest.mark.parametrize("method, option, value, reason", CHANGES, ids=[f"{m}-{o}-{i}" for i, (m, o, _, _) in enumerate(CHANGES)])
def test_a_deciding_change_is_refused_then_redone_with_overwrite(method, option, value, reason, world, tmp_path):
    assert option in get_method(method).deciding or option == "count"
    out = _run(world, method, tmp_path)
    before = json.loads((out / "manifest.json").read_text())
    new = value(world, tmp_path)
    with pytest.raises(StaleSelectionError, match=f"cannot be reused: .*{reason}"):
        _run(world, method, tmp_path, **{option: new})
    assert json.loads((out / "manifest.json").read_text()) == before  # untouched
    _run(world, method, tmp_path, overwrite=True, **{option: new})
    after = json.loads((out / "manifest.json").read_text())
    assert after["params"]["request"] != before["params"]["request"]
    mtime = (out / "manifest.json").stat().st_mtime_ns
    _run(world, method, tmp_path, overwrite=True, **{option: new})  # now made the same way: reused, even with overwrite
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


# Options a method does not read never make its selection stale.
# (A model only decides what every method leaves out, by its tokenizer: the same tokenizer by another name leaves
# out the same nothing.)
UNUSED = [("random", "targets", lambda w: w["other_targets"]),
          ("random", "model", lambda w: str(resolve_model_path("builtin:tiny-llama"))),
          ("dsir", "seed", lambda w: 5), ("bm25", "aggregation", lambda w: "mean"), ("less", "seed", lambda w: 5),
          ("less", "model", lambda w: str(resolve_model_path("builtin:tiny-llama"))), ("s2l", "targets", lambda w: w["other_targets"]),
          ("full", "seed", lambda w: 3), ("s2l", "model", lambda w: None)]


@pytest.mark.parametrize("method, option, value", UNUSED, ids=[f"{m}-{o}" for m, o, _ in UNUSED])
def test_an_unused_option_reuses_the_selection(method, option, value, world, tmp_path):
    out = _run(world, method, tmp_path)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert _run(world, method, tmp_path, **{option: value(world)}) == out
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_a_changed_pool_or_another_method_is_refused(world, tmp_path):
    out = _run(world, "random", tmp_path)
    with pytest.raises(StaleSelectionError, match="it holds a random selection"):
        _run(world, "bm25", tmp_path)
    with open(world["pool"][1], "a") as f:
        f.write(json.dumps({"prompt": "one more", "completion": "line"}) + "\n")
    with pytest.raises(StaleSelectionError, match="the pool files changed since"):
        _run(world, "random", tmp_path)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(StaleSelectionError, match="manifest.json cannot be read"):
        _run(world, "random", tmp_path)
