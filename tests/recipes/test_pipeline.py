"""The whole LESS pipeline on a tiny pool: runs, skips finished steps, refuses stale ones, checks inputs first."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lightning_less.errors import InputError, MissingInputError
from lightning_less.recipes.pipeline import (
    FeatureSettings,
    SelectionSettings,
    StaleOutputError,
    TrainSettings,
    WarmupSettings,
    run_features,
    run_pipeline,
    train_and_evaluate,
)
from lightning_less.selection.outputs import read_selection
from lightning_less.data.records import read_records
from tests.helpers import write_jsonl


def _pool(tmp_path):
    pool = []
    for i in range(40):
        task = "upper" if i % 4 == 0 else "echo"
        w = "abcdefgh"[i % 8] * (1 + i % 3)
        answer = w.upper() if task == "upper" else w
        pool.append({"id": f"p{i}", "dataset": task, "messages": [{"role": "user", "content": f"{task} {w}"}, {"role": "assistant", "content": answer}]})
    targets = [{"id": f"t{i}", "subtask": "upper", "dataset": "upper", "messages": [{"role": "user", "content": f"upper {w}"}, {"role": "assistant", "content": w.upper()}]}
               for i, w in enumerate(["xy", "zz", "qq"])]
    return (write_jsonl(tmp_path / "pool_a.jsonl", pool[:25]), write_jsonl(tmp_path / "pool_b.jsonl", pool[25:]),
            write_jsonl(tmp_path / "targets.jsonl", targets))


def _settings():
    return dict(
        warmup=WarmupSettings(fraction=0.5, epochs=2, learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=4),
        features=FeatureSettings(dims=[64], projector="sparse_jl", batch_size=8, store_dtype="float32"),
        selection=SelectionSettings(fraction=0.25),
        train=TrainSettings(epochs=1, learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=4,
                            generation_max_new_tokens=3),
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )


def test_pipeline_runs_then_skips_then_refuses_stale(tmp_path, monkeypatch):
    a, b, t = _pool(tmp_path)
    out = tmp_path / "run"
    result = run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(out), eval=[str(t)], max_length=64, seed=0, **_settings())
    sel = read_selection(result["selection"], read_records([str(a), str(b)]))
    assert len(sel.selected) == 10 and sel.manifest["method"] == "less"
    assert np.isfinite(result["train"]["target_loss"]) and 0.0 <= result["train"]["target_exact_match"] <= 1.0
    assert len(list((out / "warmup" / "snapshots").glob("epoch_*"))) == 2

    # A second run finds every step finished and trains nothing.
    import lightning.pytorch as pl

    def boom(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(pl.Trainer, "fit", boom)
    monkeypatch.setattr(pl.Trainer, "predict", boom)
    first = json.loads((out / "timings.json").read_text())
    assert set(first) == {"warmup", "features_pool", "features_targets", "selection", "train", "total"}
    assert first["total"] == pytest.approx(sum(v for k, v in first.items() if k != "total"), abs=0.05)
    again = run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(out), eval=[str(t)], max_length=64, seed=0, **_settings())
    assert again["train"] == result["train"]
    # The rerun's seconds do not replace what the steps cost when they ran.
    timings = json.loads((out / "timings.json").read_text())
    assert {k: timings[k] for k in first} == first and timings["last_run_total"] < first["total"]

    # Other settings on the same output are refused, never silently mixed.
    settings = _settings()
    settings["warmup"] = replace(settings["warmup"], epochs=3)
    with pytest.raises(StaleOutputError, match="other settings"):
        run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(out), eval=[str(t)], max_length=64, seed=0, **settings)


def test_selection_follows_the_target_task(tmp_path):
    a, b, t = _pool(tmp_path)
    # A single target file may be given as a path rather than a list.
    result = run_pipeline(pool=[str(a), str(b)], targets=str(t), output=str(tmp_path / "run"), max_length=64, seed=0, skip_training=True, **_settings())
    pool = read_records([str(a), str(b)])
    sel = read_selection(result["selection"])
    share = np.mean([pool[i].source == "upper" for i in sel.selected])
    assert share > 0.25  # the pool's share of the target task is 0.25


def _run(tmp_path, **overrides):
    a, b, t = _pool(tmp_path)
    kwargs = dict(pool=[str(a), str(b)], targets=[str(t)], output=str(tmp_path / "run"), max_length=64, seed=0,
                  **_settings())
    kwargs.update(overrides)
    return run_pipeline(**kwargs)


@pytest.mark.parametrize("overrides, match", [
    ({"selection": SelectionSettings(count=41)}, "count 41 exceeds the pool size 40"),
    ({"selection": SelectionSettings(fraction=1.5)}, r"fraction must be in \(0, 1\]"),
    ({"selection": SelectionSettings(fraction=0.1, count=3)}, "exactly one"),
    ({"warmup": WarmupSettings(fraction=0.0)}, "--warmup.fraction"),
    ({"features": FeatureSettings(projector="trak")}, "--features.projector"),
    ({"features": FeatureSettings(dims=[64]), "selection": SelectionSettings(dim=32)}, "--selection.dim"),
    ({"selection": SelectionSettings(aggregation="max")}, "--selection.aggregation"),
    ({"model": "builtin:tiny-llama-huge"}, "--model"),
])
def test_bad_settings_fail_before_the_warmup(tmp_path, monkeypatch, overrides, match):
    import lightning.pytorch as pl

    def boom(*args, **kwargs):
        raise AssertionError("a step started before the inputs were checked")

    monkeypatch.setattr(pl.Trainer, "fit", boom)
    with pytest.raises(InputError, match=match):
        _run(tmp_path, **overrides)
    assert not (tmp_path / "run").exists()


def test_bad_files_fail_before_the_warmup(tmp_path):
    a, b, t = _pool(tmp_path)
    with pytest.raises(MissingInputError, match="--targets: .*nope.jsonl does not exist"):
        _run(tmp_path, targets=[str(tmp_path / "nope.jsonl")])
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"\n')
    with pytest.raises(InputError, match="eval.jsonl:2: malformed JSON"):
        _run(tmp_path, eval=[str(bad)])
    # Some targets with a subtask and some without would silently group the latter by source.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(t.read_text() + json.dumps({"prompt": "upper q", "completion": "Q"}) + "\n")
    with pytest.raises(InputError, match="mixed.jsonl:4: this target has no 'subtask'"):
        _run(tmp_path, targets=[str(mixed)])
    assert not (tmp_path / "run").exists()


def test_a_step_before_the_step_it_needs_names_what_to_run_first(tmp_path):
    a, b, t = _pool(tmp_path)
    (tmp_path / "snapshots").mkdir()
    with pytest.raises(MissingInputError, match="no warmup snapshot .* run the warmup first"):
        run_features([str(a)], tmp_path / "snapshots", tmp_path / "features", "adam", "builtin:tiny-llama",
                     FeatureSettings(), 64)
    with pytest.raises(MissingInputError, match="holds no selection .* run the selection first"):
        train_and_evaluate(tmp_path / "selection", None, tmp_path / "train", "builtin:tiny-llama", TrainSettings(), 64, 0)
    assert not (tmp_path / "features").exists() and not (tmp_path / "train").exists()


def test_settings_are_the_papers_defaults_and_frozen():
    # The LESS paper's setting (Xia et al., 2024), independent of the dataclasses' own text.
    assert (WarmupSettings().fraction, WarmupSettings().epochs, WarmupSettings().lora_r, WarmupSettings().lora_alpha) == (0.05, 4, 128, 512)
    assert WarmupSettings().lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert FeatureSettings().dims == [8192] and SelectionSettings().aggregation == "max_subtask_mean"
    with pytest.raises(AttributeError):  # a shared default instance must not be edited in place
        WarmupSettings().epochs = 3



def test_less_t_trains_another_model_on_the_same_selection(tmp_path):
    """LESS-T: the tiny model selects, the larger ``small`` model trains on exactly that selection."""
    from safetensors.torch import load_file

    a, b, t = _pool(tmp_path)
    settings = _settings()
    settings["train"] = replace(settings["train"], epochs=1)
    result = run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(tmp_path / "run"), eval=[str(t)],
                          max_length=64, seed=0, model="builtin:tiny-llama", **settings)
    selection = Path(result["selection"])
    transfer = replace(settings["train"], model_name_or_path="builtin:tiny-llama-small")
    moved = train_and_evaluate(selection, [str(t)], tmp_path / "less_t", "builtin:tiny-llama", transfer, 64, 0,
                               settings["trainer"])
    # Same selection: the same number of training rows, from the selecting model's choice.
    assert moved["n_train"] == result["train"]["n_train"] == len(read_selection(selection).selected)
    # Another model: the adapters' LoRA factors have the trained model's width (small: 128, tiny: 64).
    widths = {}
    for name, out in (("selecting", tmp_path / "run" / "train"), ("transfer", tmp_path / "less_t")):
        weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        widths[name] = {w.shape[1] for k, w in weights.items() if "lora_A" in k}
    assert widths == {"selecting": {64}, "transfer": {128}}
    assert moved["target_loss"] != result["train"]["target_loss"]
    step = json.loads((tmp_path / "less_t" / "step.json").read_text())
    assert "tiny-llama-small" in json.dumps(step)


def _long(prefix: str, n: int, **extra) -> list[dict]:
    """Records whose response lies beyond max_length=64 (one token per character): no response token left."""
    return [{"id": f"{prefix}{i}", **extra, "messages": [{"role": "user", "content": "echo " + "x" * 200},
                                                         {"role": "assistant", "content": "x"}]} for i in range(n)]


def test_examples_without_a_response_token_are_counted_before_the_warmup(tmp_path, monkeypatch, caplog):
    """Counted and named before anything is computed (not refused after the gradient pass), checked against the
    budget, and targets without one are refused, all before the warmup."""
    import lightning.pytorch as pl

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(pl.Trainer, "fit", started)
    a, b, t = _pool(tmp_path)
    long = write_jsonl(tmp_path / "pool_long.jsonl", _long("long", 3))
    with caplog.at_level("INFO", logger="lightning_less"), pytest.raises(Started):
        _run(tmp_path, pool=[str(a), str(b), str(long)])
    assert "3 (ids long0, long1, long2) of the 43 pool examples keep no response token at --max_length 64" in caplog.text
    with pytest.raises(InputError, match=r"the budget \(41\) exceeds the 40 pool examples left with a response token"):
        _run(tmp_path, pool=[str(a), str(b), str(long)], selection=SelectionSettings(count=41))
    targets = write_jsonl(tmp_path / "targets_long.jsonl", [json.loads(line) for line in t.read_text().splitlines()]
                          + _long("tlong", 1, subtask="upper"))
    with pytest.raises(InputError, match=r"--targets: target examples without a response token .*1 \(ids tlong0\)"):
        _run(tmp_path, targets=[str(targets)])
    assert not (tmp_path / "run" / "warmup").exists()
