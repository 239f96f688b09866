"""LESS step 4: train on a selection, then evaluate on the target task (loss and exact match)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl

from lightning_less.data.records import files_fingerprint
from lightning_less.errors import MissingInputError
from lightning_less.recipes.settings import TrainSettings
from lightning_less.recipes.steps import file_hash, make_trainer, mark_done, say, step_done, step_result

log = logging.getLogger(__name__)


def train_and_evaluate(
    selection_dir: Path,
    eval_files: Sequence[str] | None,
    output: Path,
    model: str,
    settings: TrainSettings,
    max_length: int,
    seed: int,
    trainer_kwargs: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Train on a selection directory, then test on the held-out target examples.

    A finished training made with the same settings (and the same selection) is reused.

    Args:
        selection_dir: a selection directory (``manifest.json``, ``selected.jsonl``, ``scores.csv``).
        eval_files: held-out target-task examples; None trains without evaluating.
        output: the step's directory (``step.json``, ``adapter/``).
        model: the selecting model, trained unless ``settings.model_name_or_path`` names another.
        settings: the training settings.
        max_length: truncation length in tokens.
        seed: seed of the LoRA initialisation and the data order.
        trainer_kwargs: extra Trainer arguments.
        overwrite: redo a training made with other settings instead of refusing it.

    Returns:
        ``{"n_train"}`` plus, with ``eval_files``, ``target_loss`` and ``target_exact_match``.

    Raises:
        MissingInputError: ``selection_dir`` holds no selection yet.
        StaleOutputError: ``output`` holds a training made with other settings and not ``overwrite``.
    """
    from lightning_less.modules.lora import LoRAInstructionTuningModule
    from lightning_less.selection.datamodule import LessDataModule

    selection_dir = Path(selection_dir)
    if not (selection_dir / "manifest.json").is_file():
        raise MissingInputError(f"{selection_dir} holds no selection (no manifest.json): run the selection first "
                                f"(lightning-less select ... --output {selection_dir}) and then train on it")
    train_model = settings.model_name_or_path or model
    config = {"selection": str(selection_dir), "selection_manifest": file_hash(selection_dir / "manifest.json"),
              "eval": files_fingerprint(eval_files or []), "model": train_model, "max_length": max_length,
              "seed": seed, **asdict(settings)}
    if step_done(output, config, overwrite):
        say(f"[skip] training on {selection_dir}: done")
        return step_result(output)
    say(f"[4/4] training {train_model} on the selection {selection_dir} -> {output}")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(
        model_name_or_path=train_model, use_lora=settings.use_lora, lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, learning_rate=settings.learning_rate,
        warmup_ratio=settings.warmup_ratio, seed=seed, generation_max_new_tokens=settings.generation_max_new_tokens,
        adapter_dir=str(output / "adapter"),
    )
    data = LessDataModule(str(selection_dir), tokenizer_name_or_path=train_model, max_length=max_length,
                          test_files=list(eval_files) if eval_files else None, batch_size=settings.batch_size, seed=seed)
    trainer = make_trainer(trainer_kwargs, max_epochs=settings.epochs,
                           accumulate_grad_batches=settings.accumulate_grad_batches, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    result: dict[str, Any] = {"n_train": len(data.datasets["train"])}
    if eval_files:
        metrics = trainer.test(module, datamodule=data, verbose=False)[0]
        result.update({"target_loss": float(metrics["test/loss"]),
                       "target_exact_match": float(metrics.get("test/exact_match", float("nan")))})
    mark_done(output, config, result)
    return result
