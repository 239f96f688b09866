"""S2L through the registry: stratification by source reaches the sampler; trajectories must match the pool."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.selection.runner import run_selection
from lightning_less.selection.s2l import s2l_select
from tests.selection.fakes import records, trajectory_store, write_records

SIZES = {"a": 2, "b": 10, "c": 30}


@pytest.fixture
def stratified_pool(tmp_path):
    sources = [s for s, n in SIZES.items() for _ in range(n)]
    pool = write_records(tmp_path / "pool.jsonl", records(len(sources), "p", sources=sources))
    losses = np.random.default_rng(0).standard_normal((len(sources), 5))
    return pool, sources, losses, trajectory_store(tmp_path / "traj", losses, [pool])


def _sources_of(selection_dir) -> Counter:
    lines = (selection_dir / "selected.jsonl").read_text().splitlines()
    return Counter(json.loads(line)["dataset"] for line in lines)


def test_stratify_by_source_reaches_the_sampler(tmp_path, stratified_pool):
    pool, sources, losses, store = stratified_pool
    kw = {"count": 12, "trajectories": store, "n_clusters": 3, "seed": 0}
    out = run_selection("s2l", [pool], None, tmp_path / "strat", stratify_by_source=True, **kw)
    # Smallest source first: a's quota floor(12/3) = 4 takes both; b gets floor(10/2) = 5; c the other 5.
    assert _sources_of(out) == {"a": 2, "b": 5, "c": 5}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["stratified_by_source"] is True
    assert [(e["source"], e["taken"]) for e in manifest["params"]["info"]["strata"]] == [("a", 2), ("b", 5), ("c", 5)]
    want, _ = s2l_select(losses, 12, n_clusters=3, seed=0, sources=sources)
    got = [int(line.split(",")[0]) for line in (out / "scores.csv").read_text().splitlines()[1:] if line.split(",")[-2] == "1"]
    assert got == want.tolist()
    # Without it the same request samples the pool as a whole: another mix (so the check above can fail).
    plain = run_selection("s2l", [pool], None, tmp_path / "plain", **kw)
    assert _sources_of(plain) != {"a": 2, "b": 5, "c": 5}


def test_trajectory_problems_are_refused_naming_the_flag(tmp_path, stratified_pool, world):
    pool, _, losses, store = stratified_pool
    with pytest.raises(MissingInputError, match="--trajectories: .*not a trajectory store"):
        run_selection("s2l", [pool], None, tmp_path / "a", count=3, trajectories=str(tmp_path / "none"))
    with pytest.raises(IncompatibleError, match="--trajectories .* other data"):
        run_selection("s2l", world["pool"], None, tmp_path / "b", count=3, trajectories=store)
    nan = losses.copy()
    nan[:40] = np.nan
    partial = trajectory_store(tmp_path / "nan", nan, [pool])
    with pytest.raises(InputError, match="exceeds the 2 pool examples with a defined loss"):
        run_selection("s2l", [pool], None, tmp_path / "c", count=3, trajectories=partial)
    with pytest.raises(MissingInputError, match="'s2l' needs --trajectories.*--model to train a proxy"):
        run_selection("s2l", [pool], None, tmp_path / "d", count=3, model="builtin:tiny-llama")
    assert not any((tmp_path / name).exists() for name in "abcd")
