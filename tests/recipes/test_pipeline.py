"""The whole LESS pipeline on a tiny pool: runs, skips finished steps, refuses stale ones."""


import numpy as np
import pytest

from lightning_less.recipes.pipeline import (
    FeatureSettings,
    SelectionSettings,
    StaleOutputError,
    TrainSettings,
    WarmupSettings,
    run_pipeline,
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
    again = run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(out), eval=[str(t)], max_length=64, seed=0, **_settings())
    assert again["train"] == result["train"]

    # Other settings on the same output are refused, never silently mixed.
    settings = _settings()
    settings["warmup"].epochs = 3
    with pytest.raises(StaleOutputError, match="other settings"):
        run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(out), eval=[str(t)], max_length=64, seed=0, **settings)


def test_selection_follows_the_target_task(tmp_path):
    a, b, t = _pool(tmp_path)
    result = run_pipeline(pool=[str(a), str(b)], targets=[str(t)], output=str(tmp_path / "run"), max_length=64, seed=0, skip_training=True, **_settings())
    pool = read_records([str(a), str(b)])
    sel = read_selection(result["selection"])
    share = np.mean([pool[i].source == "upper" for i in sel.selected])
    assert share > 0.25  # the pool's share of the target task is 0.25
