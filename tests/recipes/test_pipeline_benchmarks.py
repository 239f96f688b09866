"""The pipeline's benchmark ends: targets built from a benchmark's files (step 0), lm-eval on the adapter (step 5)."""

from __future__ import annotations

import json

import pytest

from lightning_less.errors import LessError
from lightning_less.recipes.pipeline import EvalTaskSettings, TargetSetSettings, run_pipeline
from tests.evaluation import TASKS
from tests.recipes.test_pipeline import _pool, _settings

MMLU = "tests/fixtures/benchmarks/mmlu"


@pytest.fixture
def in_repo(monkeypatch):
    """The fixture tasks' data files (and MMLU above) are relative to the repository root."""
    from tests.evaluation import REPO

    monkeypatch.chdir(REPO)


def _eval_tasks() -> EvalTaskSettings:
    return EvalTaskSettings(tasks=["fixture_mc"], include_path=[str(TASKS)], include_defaults=False, batch_size=4,
                            device="cpu")


def test_pipeline_builds_the_targets_and_evaluates_the_adapter(tmp_path, in_repo, monkeypatch):
    from lightning_less.recipes import evaluate as evaluate_module
    from lightning_less.recipes.targets import targets as targets_command

    a, b, _ = _pool(tmp_path)
    out = tmp_path / "run"
    kwargs = dict(pool=[str(a), str(b)], output=str(out), max_length=1024, seed=0, **_settings(),
                  target_set=TargetSetSettings(benchmark="mmlu", data=MMLU), eval_tasks=_eval_tasks())
    result = run_pipeline(**kwargs)

    # Step 0 wrote the same file as `lightning-less targets`, and the selection scored against it.
    by_hand = targets_command(benchmark="mmlu", data=MMLU, output=str(tmp_path / "by_hand.jsonl"))
    assert open(result["targets"], "rb").read() == open(by_hand["output"], "rb").read()
    selection = json.loads((out / "selection" / "manifest.json").read_text())
    assert result["targets"] in json.dumps(selection)

    # Step 5 equals `lightning-less evaluate` run by hand on the trained adapter.
    direct = evaluate_module.evaluate(model="builtin:tiny-llama", adapter=str(out / "train" / "adapter"),
                                      tasks=["fixture_mc"], include_path=str(TASKS), include_defaults=False,
                                      batch_size=4, device="cpu")
    assert result["eval_tasks"]["metrics"] == direct.metrics and "fixture_mc/acc" in direct.metrics
    assert json.loads(open(result["eval_tasks"]["results"]).read())["metrics"] == direct.metrics

    # A rerun rewrites nothing and evaluates nothing.
    before = (out / "targets" / "targets.jsonl").stat().st_mtime_ns

    def boom(**kwargs):
        raise AssertionError("a finished evaluation ran again")

    monkeypatch.setattr(evaluate_module, "evaluate", boom)
    again = run_pipeline(**kwargs)
    assert again == result and (out / "targets" / "targets.jsonl").stat().st_mtime_ns == before


@pytest.mark.parametrize("overrides, match", [
    (dict(targets=["x.jsonl"], target_set=TargetSetSettings(benchmark="mmlu", data=MMLU)), "both given"),
    (dict(), "no targets"),
    (dict(target_set=TargetSetSettings(benchmark="mmlu")), "target_set.data"),
    (dict(targets=["T"], eval_tasks=EvalTaskSettings(tasks=["mmlu"]), skip_training=True), "skip_training"),
    (dict(targets=["T"], eval_tasks=EvalTaskSettings(tasks=["mmlu"], include_path=["nowhere"])), "include_path"),
])
def test_benchmark_settings_fail_before_the_warmup(tmp_path, in_repo, monkeypatch, overrides, match):
    import lightning.pytorch as pl

    a, b, t = _pool(tmp_path)
    if overrides.get("targets") == ["T"]:
        overrides["targets"] = [str(t)]
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("the warmup started"))
    with pytest.raises(LessError, match=match):
        run_pipeline(pool=[str(a), str(b)], output=str(tmp_path / "run"), **overrides)
