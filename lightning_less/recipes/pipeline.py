"""The whole LESS pipeline in one call, skipping steps already finished.

warmup (LoRA on a seeded fraction of the pool, one snapshot per epoch)
-> pool features (``adam``) and target features (``sgd``) -> scores and selection
-> training on the selection -> evaluation on the target task.

Each step writes into its own directory under ``output`` with a ``step.json`` marker
holding the step's settings. A step whose marker matches is skipped; one whose marker
differs is refused (stale output) unless ``overwrite`` is set, so a result is never
silently reused with other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.data.records import files_fingerprint
from lightning_less.errors import StaleOutputError

STEP_FILE = "step.json"


@dataclass
class WarmupSettings:
    """LESS step 1 (docs/algorithms.md §1.1)."""

    fraction: float = 0.05
    """Share of the pool used for warmup (seeded)."""
    epochs: int = 4
    """Warmup epochs = number of snapshots."""
    learning_rate: float = 2e-5
    lora_r: int = 128
    lora_alpha: int = 512
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    batch_size: int = 1
    accumulate_grad_batches: int = 1
    warmup_ratio: float = 0.03


@dataclass
class FeatureSettings:
    """LESS step 2 (docs/algorithms.md §1.2-1.4)."""

    dims: list[int] = field(default_factory=lambda: [8192])
    projector: str = "trak_basic"
    """``trak_basic``, ``trak_cuda`` or ``sparse_jl``."""
    projector_seed: int = 0
    batch_size: int = 8
    store_dtype: str = "float16"


@dataclass
class SelectionSettings:
    """LESS step 3 (docs/algorithms.md §1.5-1.6)."""

    fraction: float | None = None
    """Budget as a fraction of the pool (default 0.05 when ``count`` is not given)."""
    count: int | None = None
    """Budget as a number of examples."""
    dim: int | None = None
    """Which projected dim to score with (default: the first)."""
    aggregation: str = "max_subtask_mean"


@dataclass
class TrainSettings:
    """LESS step 4 (docs/algorithms.md §1.7): the model trained on the selection (may differ: LESS-T)."""

    model_name_or_path: str | None = None
    """Default: the selecting model."""
    epochs: int = 4
    learning_rate: float = 2e-5
    use_lora: bool = True
    lora_r: int = 128
    lora_alpha: int = 512
    lora_dropout: float = 0.1
    batch_size: int = 1
    accumulate_grad_batches: int = 1
    warmup_ratio: float = 0.03
    generation_max_new_tokens: int = 64


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_done(path: Path, settings: dict, overwrite: bool) -> bool:
    """Whether the step in ``path`` already finished with these settings; stale results raise or are removed."""
    marker = path / STEP_FILE
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("fingerprint") == _fingerprint(settings):
            return True
        if not overwrite:
            raise StaleOutputError(
                f"{path} holds results made with other settings ({marker}); pass overwrite=True or use another output"
            )
    if path.exists() and (overwrite or not marker.exists()):
        # An unfinished step (no marker) or one to redo: start clean, never mix.
        shutil.rmtree(path)
    return False


def mark_done(path: Path, settings: dict, result: dict | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{STEP_FILE}.tmp"
    tmp.write_text(json.dumps({"fingerprint": _fingerprint(settings), "settings": settings, "result": result or {}}, indent=2, default=str))
    os.replace(tmp, path / STEP_FILE)


def step_result(path: Path) -> dict:
    return json.loads((path / STEP_FILE).read_text()).get("result", {})


def _trainer(trainer_kwargs: dict | None, **kw) -> pl.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **(trainer_kwargs or {}), **kw}
    return pl.Trainer(**kwargs)


# ---------------------------------------------------------------------- steps
def run_warmup(pool: Sequence[str], output: Path, model: str, settings: WarmupSettings, max_length: int, seed: int,
               trainer_kwargs: dict | None = None, overwrite: bool = False) -> Path:
    """Step 1: LoRA warmup with a snapshot per epoch; returns the snapshot root."""
    from lightning_less.callbacks.snapshot import GradientFeatureCallback
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule

    config = {"pool": files_fingerprint(pool), "model": model, "max_length": max_length, "seed": seed, **asdict(settings)}
    snapshots = output / "snapshots"
    if step_done(output, config, overwrite):
        rank_zero_info(f"[skip] warmup: {snapshots} is complete")
        return snapshots
    rank_zero_info(f"[1/4] warmup: LoRA on {settings.fraction:.0%} of the pool for {settings.epochs} epochs -> {snapshots}")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(
        model_name_or_path=model, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout, lora_target_modules=settings.lora_target_modules,
        learning_rate=settings.learning_rate, warmup_ratio=settings.warmup_ratio, seed=seed, exact_match=False,
    )
    data = InstructionDataModule(train_files=list(pool), tokenizer_name_or_path=model, max_length=max_length,
                                 train_fraction=settings.fraction, seed=seed, batch_size=settings.batch_size)
    trainer = _trainer(trainer_kwargs, max_epochs=settings.epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
                       callbacks=[GradientFeatureCallback(str(snapshots))], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    mark_done(output, config)
    return snapshots


def run_features(files: Sequence[str], snapshots: Path, output: Path, feature: str, model: str,
                 settings: FeatureSettings, max_length: int, trainer_kwargs: dict | None = None,
                 overwrite: bool = False):
    """Step 2: per-example projected gradient features into a datastore (resumable)."""
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.passes.gradient_features import GradientDumpLoop

    from lightning_less.stores.datastore import GradientDatastore

    # The store itself resumes and refuses other settings; the marker only saves starting a Trainer.
    marker = output.parent / f"{output.name}.step.json"
    config = {"files": files_fingerprint(files), "snapshots": [_file_hash(p / "snapshot.json") + _file_hash(p / "adapter_model.safetensors")
              for p in sorted(Path(snapshots).glob("epoch_*"))], "feature": feature, "model": model,
              "max_length": max_length, **{k: v for k, v in asdict(settings).items() if k != "batch_size"}}
    if marker.exists() and not overwrite and json.loads(marker.read_text()).get("fingerprint") == _fingerprint(config) \
            and (output / "manifest.json").exists() and GradientDatastore.open(output).is_complete():
        rank_zero_info(f"[skip] {feature} gradient features: {output} is complete")
        return GradientDatastore.open(output)
    rank_zero_info(f"[2/4] {feature} gradient features of {', '.join(map(str, files))} -> {output}")
    data = InstructionDataModule(predict_files=list(files), tokenizer_name_or_path=model, max_length=max_length,
                                 eval_batch_size=settings.batch_size)
    loop = GradientDumpLoop(
        snapshots=str(snapshots), output_dir=str(output), feature=feature, dims=settings.dims,
        projector=settings.projector, projector_seed=settings.projector_seed, model_name_or_path=model,
        store_dtype=settings.store_dtype, overwrite=overwrite, trainer_kwargs=trainer_kwargs,
    )
    store = loop.run(data)
    marker.write_text(json.dumps({"fingerprint": _fingerprint(config), "settings": config}, indent=2, default=str))
    return store


def train_and_evaluate(selection_dir: Path, eval_files: Sequence[str] | None, output: Path, model: str,
                       settings: TrainSettings, max_length: int, seed: int, trainer_kwargs: dict | None = None,
                       overwrite: bool = False) -> dict:
    """Step 4: train on the selection, then test on the target task (loss and exact match)."""
    from lightning_less.modules.lora import LoRAInstructionTuningModule
    from lightning_less.selection.datamodule import LessDataModule

    train_model = settings.model_name_or_path or model
    config = {"selection": str(selection_dir), "selection_manifest": _file_hash(selection_dir / "manifest.json"),
              "eval": files_fingerprint(eval_files or []), "model": train_model, "max_length": max_length,
              "seed": seed, **asdict(settings)}
    if step_done(output, config, overwrite):
        rank_zero_info(f"[skip] training on {selection_dir}: done")
        return step_result(output)
    rank_zero_info(f"[4/4] training {train_model} on the selection {selection_dir} -> {output}")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(
        model_name_or_path=train_model, use_lora=settings.use_lora, lora_r=settings.lora_r,
        lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, learning_rate=settings.learning_rate,
        warmup_ratio=settings.warmup_ratio, seed=seed, generation_max_new_tokens=settings.generation_max_new_tokens,
        adapter_dir=str(output / "adapter"),
    )
    data = LessDataModule(str(selection_dir), tokenizer_name_or_path=train_model, max_length=max_length,
                          test_files=list(eval_files) if eval_files else None, batch_size=settings.batch_size, seed=seed)
    trainer = _trainer(trainer_kwargs, max_epochs=settings.epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
                       num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    result: dict[str, Any] = {"n_train": len(data.datasets["train"])}
    if eval_files:
        metrics = trainer.test(module, datamodule=data, verbose=False)[0]
        result.update({"target_loss": float(metrics["test/loss"]), "target_exact_match": float(metrics.get("test/exact_match", float("nan")))})
    mark_done(output, config, result)
    return result


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_pipeline(
    *,
    pool: list[str],
    targets: list[str],
    output: str,
    model: str = "builtin:tiny-llama",
    eval: list[str] | None = None,
    max_length: int = 2048,
    seed: int = 0,
    warmup: WarmupSettings | None = None,
    features: FeatureSettings | None = None,
    selection: SelectionSettings | None = None,
    train: TrainSettings | None = None,
    trainer: dict[str, Any] | None = None,
    skip_training: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run LESS end to end: warmup, features, selection, training on the selection and evaluation.

    Args:
        pool: the instruction pool's jsonl files.
        targets: target examples (jsonl, with a ``subtask`` field).
        output: the run directory; finished steps found there are skipped.
        model: the selecting model (hub name, path or ``builtin:tiny-llama``).
        eval: held-out target-task examples for the final evaluation.
        max_length: truncation length in tokens.
        seed: seed of the warmup sample, LoRA init and training.
        warmup: step 1 settings.
        features: step 2 settings.
        selection: step 3 settings.
        train: step 4 settings.
        trainer: extra ``Trainer`` arguments for every step (e.g. ``{"accelerator": "gpu", "precision": "bf16-mixed"}``).
        skip_training: stop after the selection.
        overwrite: redo steps whose outputs were made with other settings instead of refusing.

    Returns:
        Paths of every step's output and the evaluation metrics.
    """
    warmup, features, selection, train = warmup or WarmupSettings(), features or FeatureSettings(), selection or SelectionSettings(), train or TrainSettings()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = run_warmup(pool, out / "warmup", model, warmup, max_length, seed, trainer, overwrite)
    pool_store = run_features(pool, snapshots, out / "features" / "pool", "adam", model, features, max_length, trainer, overwrite)
    target_store = run_features(targets, snapshots, out / "features" / "targets", "sgd", model, features, max_length, trainer, overwrite)
    from lightning_less.selection.runner import run_selection

    rank_zero_info("[3/4] LESS scores and selection")
    selection_dir = run_selection("less", pool, targets, out / "selection", fraction=selection.fraction,
                                  count=selection.count, seed=seed, pool_store=pool_store.path,
                                  target_store=target_store.path, dim=selection.dim,
                                  aggregation=selection.aggregation, overwrite=overwrite)
    result: dict[str, Any] = {"snapshots": str(snapshots), "pool_store": str(pool_store.path),
                              "target_store": str(target_store.path), "selection": str(selection_dir)}
    if not skip_training:
        result["train"] = train_and_evaluate(selection_dir, eval, out / "train", model, train, max_length, seed, trainer, overwrite)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))
    rank_zero_info(f"pipeline finished; summary in {out / 'pipeline.json'}")
    return result
