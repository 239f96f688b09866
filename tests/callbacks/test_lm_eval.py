"""``LMEvalCallback``: lm-eval inside a fit, at the right epochs, once under DDP, training state untouched."""

from __future__ import annotations

import csv
import json
import random
import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

import lightning_less.callbacks.lm_eval as lm_eval_callback
from lightning_less.callbacks.lm_eval import LMEvalCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.errors import InputError
from lightning_less.evaluation.harness import HarnessSettings, evaluate_lm
from lightning_less.models.tiny import resolve_model_path
from lightning_less.modules.lora import LoRAInstructionTuningModule
from tests.evaluation import REPO, TASKS
from tests.helpers import qa_records, run_two_ranks, write_jsonl

METRIC = "lm_eval/fixture_mc/acc"


class RecordingLogger(Logger):
    """Every ``log_metrics`` call, as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, dict(metrics)))

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _module(model: str) -> LoRAInstructionTuningModule:
    return LoRAInstructionTuningModule(model_name_or_path=model, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                       learning_rate=5e-3, warmup_ratio=0.0, exact_match=False)


def _data(model: str, pool: str) -> InstructionDataModule:
    return InstructionDataModule(train_files=[pool], tokenizer_name_or_path=model, batch_size=4)


def _callback(**kw) -> LMEvalCallback:
    return LMEvalCallback(tasks=["fixture_mc"], limit=4, include_path=str(TASKS), include_defaults=False, batch_size=4, **kw)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    return resolve_model_path("builtin:tiny-llama"), str(write_jsonl(tmp_path / "pool.jsonl", qa_records(8)))


def test_logs_at_the_right_epochs_in_eval_mode_and_restores_train_mode(setup, tmp_path, monkeypatch):
    model, pool = setup
    seen = []
    real = lm_eval_callback.run_harness

    def spy(network, tokenizer, settings, manager=None):
        seen.append({"eval_mode": not any(m.training for m in network.modules())})
        results = real(network, tokenizer, settings, manager)
        seen[-1]["acc"] = results["results"]["fixture_mc"]["acc,none"]
        return results

    monkeypatch.setattr(lm_eval_callback, "run_harness", spy)
    recorder, callback = RecordingLogger(), _callback(every_n_epochs=2)
    module = _module(model)
    train_modes: list[bool] = []
    trainer = pl.Trainer(max_epochs=4, logger=[recorder, CSVLogger(str(tmp_path), name="csv")], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], log_every_n_steps=1)

    class TrainMode(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            train_modes.append(all(m.training for m in pl_module.model.modules()))

    trainer.callbacks.append(TrainMode())
    trainer.fit(module, datamodule=_data(model, pool))
    # every_n_epochs=2 over 4 epochs: after epoch indices 1 and 3, never after 0 or 2.
    assert callback.evaluated_epochs == [1, 3]
    assert [h["epoch"] for h in callback.history] == [1, 3]
    assert [s["eval_mode"] for s in seen] == [True, True]
    assert train_modes and all(train_modes)  # each epoch after an evaluation trains in train mode again
    logged = [(step, m[METRIC]) for step, m in recorder.calls if METRIC in m]
    # 2 optimizer steps per epoch; Lightning logs epoch-end values at the epoch's last step index (3, 7).
    assert logged == [(3, pytest.approx(seen[0]["acc"])), (7, pytest.approx(seen[1]["acc"]))]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert [(r["epoch"], float(r[METRIC])) for r in rows if r.get(METRIC)] == [("1", seen[0]["acc"]), ("3", seen[1]["acc"])]
    assert trainer.callback_metrics[METRIC] == pytest.approx(seen[1]["acc"])
    # Outside a fit too: a mix of train and eval submodules comes back exactly as it was.
    module.model.train()
    for name, sub in module.model.named_modules():
        if "lora_A" in name:
            sub.eval()
    before = [m.training for m in module.model.modules()]
    callback.evaluate(module)
    assert [m.training for m in module.model.modules()] == before and True in before and False in before


def test_training_random_streams_are_restored(setup):
    from lm_eval.api.model import LM

    class AnswerA(LM):  # any LM: lm-eval seeds python, numpy and torch before asking it
        def loglikelihood(self, requests):
            return [(0.0, True) for _ in requests]

        def loglikelihood_rolling(self, requests):  # pragma: no cover
            raise NotImplementedError

        def generate_until(self, requests):  # pragma: no cover
            raise NotImplementedError

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    want = draws()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    evaluate_lm(AnswerA(), HarnessSettings(tasks=["fixture_mc"], limit=2, include_path=[str(TASKS)], include_defaults=False))
    assert draws() == want


def test_configuration_errors(setup):
    with pytest.raises(InputError, match="every_n_epochs"):
        _callback(every_n_epochs=0)
    with pytest.raises(InputError, match="at least one task"):
        LMEvalCallback(tasks=[])


def test_two_process_ddp_evaluates_on_rank_zero_and_logs_once(setup, tmp_path):
    model, pool = setup
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, torch, lightning.pytorch as pl
        from lightning.pytorch.loggers import CSVLogger
        from tests.callbacks.test_lm_eval import _callback, _data, _module
        torch.set_num_threads(1)
        pl.seed_everything(0, verbose=False)
        callback = _callback(every_n_epochs=2)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                             logger=CSVLogger({str(tmp_path)!r}, name="csv"), log_every_n_steps=1)
        trainer.fit(_module({model!r}), datamodule=_data({model!r}, {pool!r}))
        with open({str(tmp_path)!r} + f"/rank{{trainer.global_rank}}.json", "w") as f:
            json.dump({{"evaluated": callback.evaluated_epochs, "history": callback.history}}, f)
    """))
    run_two_ranks(script)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["evaluated"] == [1] and ranks[1]["evaluated"] == []  # lm-eval ran on rank 0 only
    assert ranks[0]["history"] == ranks[1]["history"] and [h["epoch"] for h in ranks[0]["history"]] == [1]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    logged = [(r["epoch"], float(r[METRIC])) for r in rows if r.get(METRIC)]
    assert logged == [("1", pytest.approx(ranks[0]["history"][0]["metrics"]["fixture_mc/acc"]))]
