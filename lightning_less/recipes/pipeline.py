"""The whole LESS pipeline in one call, skipping steps already finished.

warmup (LoRA on a seeded fraction of the pool, one snapshot per epoch)
-> pool features (``adam``) and target features (``sgd``) -> scores and selection
-> training on the selection -> evaluation on the target task.
Optionally, before: the target set built from a benchmark's few-shot examples (``target_set``);
after: the trained adapter on benchmarks through lm-evaluation-harness (``eval_tasks``).

Every input is checked before the first step starts (files, budget, model, settings, and
which examples keep no response token at ``max_length``), so a mistake fails in seconds
rather than after the warmup. Each step writes into its own directory under ``output`` and
is skipped when it finished with the same settings (see :mod:`lightning_less.recipes.steps`).

Under DDP (``trainer={"devices": 2, "strategy": "ddp", ...}``) Lightning starts the other
ranks at the first ``Trainer`` call by running the same command again; each rank goes
through the same steps: the warmup, the gradient passes and the training run on every rank,
while the step markers, the selection and the summary are written once, by rank 0
(:func:`~lightning_less.distributed.on_rank_zero`), and the other ranks return before the
lm-eval benchmarks, which rank 0 runs alone. Only rank 0 logs the steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl

from lightning_less.data.records import Record, as_paths, files_fingerprint, read_records
from lightning_less.data.subtasks import check_target_subtasks
from lightning_less.distributed import global_rank, on_rank_zero
from lightning_less.errors import InputError, MissingInputError, StaleOutputError
from lightning_less.recipes.settings import (
    AGGREGATIONS,
    PROJECTORS,
    STORE_DTYPES,
    EvalTaskSettings,
    FeatureSettings,
    SelectionSettings,
    TargetSetSettings,
    TrainSettings,
    WarmupSettings,
)
from lightning_less.recipes.steps import (
    STEP_FILE,
    file_hash,
    fingerprint,
    make_trainer,
    mark_done,
    say,
    step_done,
    step_result,
    write_timings,
)
from lightning_less.recipes.train import train_and_evaluate

__all__ = [
    "STEP_FILE", "EvalTaskSettings", "FeatureSettings", "TargetSetSettings", "SelectionSettings", "StaleOutputError", "TrainSettings", "WarmupSettings",
    "check_inputs", "mark_done", "run_features", "run_pipeline", "run_warmup", "step_done", "step_result",
    "train_and_evaluate",
]

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.05  # LESS's budget when neither fraction nor count is given


# ---------------------------------------------------------------------- checks before any compute
def _read_files(flag: str, paths: Sequence[str]) -> list[Record]:
    if not paths:
        raise InputError(f"{flag} is empty: give at least one jsonl file")
    for p in paths:
        if not Path(p).exists():
            raise MissingInputError(f"{flag}: {p} does not exist (relative to {os.getcwd()}); "
                                    "check the path, or write the demo's data with 'lightning-less demo-data --output demo_data'")
    return read_records(list(paths))  # a malformed record raises RecordError naming file and line


def _check_model(flag: str, name: str) -> None:
    """Fail now when ``name`` is neither ``builtin:...``, a model directory nor a loadable hub name."""
    from lightning_less.models.tiny import resolve_model_path

    try:
        path = resolve_model_path(name)
    except ValueError as err:
        raise InputError(f"{flag}: {err}") from None
    if Path(path).is_dir():
        if not any((Path(path) / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise InputError(f"{flag}: {path} is a directory without config.json: not a saved model "
                             "(save one with save_pretrained, or give a hub name or builtin:tiny-llama)")
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{flag}: cannot load the model {name!r}: no such directory and the Hugging Face hub "
                         f"gives: {' '.join(str(err).split())[:300].rstrip('.')}; give a local model directory, a hub name "
                         "(e.g. meta-llama/Llama-2-7b-hf) or builtin:tiny-llama") from None


def _choice(flag: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {list(choices)}")


def check_inputs(pool: Sequence[str], targets: Sequence[str], eval_files: Sequence[str] | None, model: str,
                 max_length: int, warmup: WarmupSettings, features: FeatureSettings, selection: SelectionSettings,
                 train: TrainSettings, skip_training: bool) -> tuple[int, dict[str, Any]]:
    """Check everything a later step would trip over; return the budget ``k`` and what the selection leaves out.

    The pool and the targets are tokenized once with ``model``'s tokenizer at ``max_length``:
    pool examples left without a response token are counted and named (the second value,
    :func:`~lightning_less.selection.runner.excluded_record`; they are never selected),
    targets without one are refused.

    Raises:
        MissingInputError: a data file does not exist.
        InputError: a malformed record, a budget that does not fit the pool (or the pool
            examples left with a response token), an unusable model or setting, targets
            that mix records with and without ``subtask``, targets without a response token.
    """
    from lightning_less.selection.budget import resolve_budget
    from lightning_less.selection.runner import (
        EXCLUDED_WHY,
        check_targets_have_responses,
        describe_excluded,
        excluded_record,
        records_without_response,
    )

    pool_records = _read_files("--pool", pool)
    target_records = _read_files("--targets", targets)
    if eval_files:
        _read_files("--eval", eval_files)
    fraction = selection.fraction
    if fraction is None and selection.count is None:
        fraction = DEFAULT_FRACTION
    try:
        k = resolve_budget(len(pool_records), fraction=fraction, count=selection.count)
    except ValueError as err:
        raise InputError(f"--selection.fraction / --selection.count: {err}; give one of them: a fraction in (0, 1] "
                         f"or a count of at most {len(pool_records)}, the pool's size") from None
    if not 0 < warmup.fraction <= 1:
        raise InputError(f"--warmup.fraction: {warmup.fraction} is not in (0, 1]")
    if max_length < 1:
        raise InputError(f"--max_length: {max_length} must be a positive number of tokens")
    _choice("--features.projector", features.projector, PROJECTORS)
    _choice("--features.store_dtype", features.store_dtype, STORE_DTYPES)
    _choice("--selection.aggregation", selection.aggregation, AGGREGATIONS)
    if not features.dims or any(int(d) != d or d < 1 for d in features.dims):
        raise InputError(f"--features.dims: {features.dims} must be a non-empty list of positive integers")
    if selection.dim is not None:
        _choice("--selection.dim", selection.dim, features.dims)
    check_target_subtasks(target_records)
    _check_model("--model", model)
    if not skip_training and train.model_name_or_path:
        _check_model("--train.model_name_or_path", train.model_name_or_path)
    # What the warmup, the gradient pass and the selection will leave out, known now rather than after the warmup.
    excluded = records_without_response(pool_records, model, max_length)
    check_targets_have_responses(target_records, model, max_length)
    left = len(pool_records) - excluded.size
    if excluded.size:
        say(f"{describe_excluded(pool_records, excluded)} of the {len(pool_records)} pool examples keep no response "
            f"token at --max_length {max_length}: they carry no training signal and are never selected")
    if k > left:
        raise InputError(f"--selection.fraction / --selection.count: the budget ({k}) exceeds the {left} pool examples "
                         f"left with a response token at --max_length {max_length} "
                         f"({describe_excluded(pool_records, excluded)} have none); lower the budget or raise --max_length")
    return k, excluded_record(pool_records, excluded, EXCLUDED_WHY)


def _targets(targets: list[str] | str | None, target_set: TargetSetSettings, output: Path) -> list[str]:
    """The targets files: ``--targets`` as given, or the benchmark's target set built under ``output``."""
    if target_set.benchmark and targets:
        raise InputError(f"--targets and --target_set.benchmark both given: the targets come from one of them "
                         f"(drop --targets to build the {target_set.benchmark} target set, or unset the benchmark)")
    if target_set.benchmark:
        from lightning_less.recipes.targets import build_target_set

        say(f"[0/5] the {target_set.benchmark} target set from {target_set.data} -> {output}")
        return [on_rank_zero(build_target_set, target_set, output)]
    if not targets:
        raise InputError("no targets: give --targets (jsonl files) or --target_set.benchmark with --target_set.data")
    return as_paths(targets)


def _check_eval_tasks(eval_tasks: EvalTaskSettings, skip_training: bool) -> None:
    """Fail before the warmup when the benchmark evaluation could not run at the end."""
    if not eval_tasks.tasks:
        return
    if skip_training:
        raise InputError(f"--eval_tasks.tasks {list(eval_tasks.tasks)} evaluates the trained adapter, but "
                         "--skip_training true trains none: drop one of them")
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise InputError("--eval_tasks.tasks needs lm-evaluation-harness: pip install 'lightning-less[eval]'")
    for path in eval_tasks.include_path:
        if not Path(path).is_dir():
            raise MissingInputError(f"--eval_tasks.include_path: {path} is not a directory of task YAMLs")


# ---------------------------------------------------------------------- steps
def run_warmup(pool: Sequence[str], output: Path, model: str, settings: WarmupSettings, max_length: int, seed: int,
               trainer_kwargs: dict | None = None, overwrite: bool = False) -> Path:
    """Step 1: LoRA warmup with a snapshot per epoch; returns the snapshot root (``output/snapshots``)."""
    from lightning_less.callbacks.snapshot import GradientFeatureCallback
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule

    config = {"pool": files_fingerprint(pool), "model": model, "max_length": max_length, "seed": seed, **asdict(settings)}
    snapshots = output / "snapshots"
    if step_done(output, config, overwrite):
        say(f"[skip] warmup: {snapshots} is complete")
        return snapshots
    say(f"[1/4] warmup: LoRA on {settings.fraction:.0%} of the pool for {settings.epochs} epochs -> {snapshots}")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(
        model_name_or_path=model, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout, lora_target_modules=list(settings.lora_target_modules),
        learning_rate=settings.learning_rate, warmup_ratio=settings.warmup_ratio, seed=seed, exact_match=False,
    )
    data = InstructionDataModule(train_files=list(pool), tokenizer_name_or_path=model, max_length=max_length,
                                 train_fraction=settings.fraction, seed=seed, batch_size=settings.batch_size)
    trainer = make_trainer(trainer_kwargs, max_epochs=settings.epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
                           callbacks=[GradientFeatureCallback(str(snapshots))], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    mark_done(output, config)
    return snapshots


def run_features(files: Sequence[str], snapshots: Path, output: Path, feature: str, model: str,
                 settings: FeatureSettings, max_length: int, trainer_kwargs: dict | None = None,
                 overwrite: bool = False):
    """Step 2: per-example projected gradient features of ``files`` into a datastore (resumable).

    Raises:
        MissingInputError: ``snapshots`` holds no warmup snapshot (``epoch_*``) yet.
    """
    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.passes.gradient_features import GradientDumpLoop
    from lightning_less.stores.datastore import GradientDatastore

    epochs = sorted(Path(snapshots).glob("epoch_*"))
    if not epochs:
        raise MissingInputError(f"{snapshots} holds no warmup snapshot (epoch_*): run the warmup first "
                                "(lightning-less pipeline runs it; on its own: lightning-less fit with a "
                                "GradientFeatureCallback writing there, as configs/tiny/fit.yaml)")
    # The store itself resumes and refuses other settings; the marker only saves starting a Trainer.
    marker = output.parent / f"{output.name}.step.json"
    config = {"files": files_fingerprint(files),
              "snapshots": [file_hash(p / "snapshot.json") + file_hash(p / "adapter_model.safetensors") for p in epochs],
              "feature": feature, "model": model, "max_length": max_length,
              **{k: v for k, v in asdict(settings).items() if k != "batch_size"}}
    if marker.exists() and not overwrite and json.loads(marker.read_text()).get("fingerprint") == fingerprint(config) \
            and (output / "manifest.json").exists() and GradientDatastore.open(output).is_complete():
        say(f"[skip] {feature} gradient features: {output} is complete")
        return GradientDatastore.open(output)
    say(f"[2/4] {feature} gradient features of {', '.join(map(str, files))} -> {output}")
    data = InstructionDataModule(predict_files=list(files), tokenizer_name_or_path=model, max_length=max_length,
                                 eval_batch_size=settings.batch_size)
    loop = GradientDumpLoop(
        snapshots=str(snapshots), output_dir=str(output), feature=feature, dims=list(settings.dims),
        projector=settings.projector, projector_seed=settings.projector_seed, model_name_or_path=model,
        store_dtype=settings.store_dtype, overwrite=overwrite, trainer_kwargs=trainer_kwargs,
    )
    store = loop.run(data)
    on_rank_zero(marker.write_text, json.dumps({"fingerprint": fingerprint(config), "settings": config}, indent=2,
                                               default=str))
    return store


def run_pipeline(
    *,
    pool: list[str] | str,
    targets: list[str] | str | None = None,
    output: str,
    model: str = "builtin:tiny-llama",
    eval: list[str] | str | None = None,
    max_length: int = 2048,
    seed: int = 0,
    warmup: WarmupSettings = WarmupSettings(),
    features: FeatureSettings = FeatureSettings(),
    selection: SelectionSettings = SelectionSettings(),
    train: TrainSettings = TrainSettings(),
    trainer: dict[str, Any] | None = None,
    target_set: TargetSetSettings = TargetSetSettings(),
    eval_tasks: EvalTaskSettings = EvalTaskSettings(),
    skip_training: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run LESS end to end: warmup, gradient features, selection, training on the selection, evaluation.

    Every input is checked before the warmup starts. Finished steps found under ``output``
    are skipped; a step whose output was made with other settings is refused unless
    ``overwrite``. Interrupted gradient passes resume.

    Args:
        pool: the instruction pool's jsonl file(s) (``--pool a.jsonl`` or ``--pool '[a.jsonl,b.jsonl]'``).
        targets: the target examples' jsonl file(s) (each record with a ``subtask`` field); leave
            out when ``target_set`` builds them from a benchmark.
        output: the run directory (``warmup/``, ``features/``, ``selection/``, ``train/``, ``pipeline.json``).
        model: the selecting model: a hub name, a local directory or ``builtin:tiny-llama``.
        eval: held-out target-task examples' jsonl file(s) for the final evaluation (none: no evaluation).
        max_length: truncation length in tokens.
        seed: seed of the warmup sample, the LoRA initialisation and the training.
        warmup: step 1, the warmup's settings.
        features: step 2, the gradient features' settings.
        selection: step 3, the budget and how subtask scores are combined.
        train: step 4, the training on the selection.
        trainer: extra ``Trainer`` arguments for every step (e.g. ``{"accelerator": "gpu", "precision": "bf16-mixed"}``).
        target_set: step 0, the targets built from a benchmark's few-shot examples (instead of ``targets``).
        eval_tasks: step 5, the trained adapter on benchmarks through lm-evaluation-harness.
        skip_training: stop after the selection.
        overwrite: redo steps whose outputs were made with other settings instead of refusing.

    Returns:
        The paths of every step's output (``snapshots``, ``pool_store``, ``target_store``,
        ``selection``) and, unless ``skip_training``, ``train``: the training's
        ``n_train``, ``target_loss`` and ``target_exact_match``; ``excluded``: the pool examples left without a
        response token at ``max_length`` (``count``, the first ``ids`` and ``indices``), never selected; with
        ``target_set``, ``targets``
        (the built file); with ``eval_tasks.tasks``, ``eval_tasks``: ``results`` (lm-eval's JSON) and ``metrics``.
    """
    out = Path(output)
    targets = _targets(targets, target_set, out / "targets")
    _check_eval_tasks(eval_tasks, skip_training)
    pool, eval = as_paths(pool), as_paths(eval) or None
    k, excluded = check_inputs(pool, targets, eval, model, max_length, warmup, features, selection, train, skip_training)
    out.mkdir(parents=True, exist_ok=True)
    laps, start = {}, [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        laps[name], start[0] = round(now - start[0], 2), now

    snapshots = run_warmup(pool, out / "warmup", model, warmup, max_length, seed, trainer, overwrite)
    lap("warmup")
    pool_store = run_features(pool, snapshots, out / "features" / "pool", "adam", model, features, max_length, trainer, overwrite)
    lap("features_pool")
    target_store = run_features(targets, snapshots, out / "features" / "targets", "sgd", model, features, max_length, trainer, overwrite)
    lap("features_targets")
    from lightning_less.selection.runner import run_selection

    say(f"[3/4] LESS scores and the top {k} of the pool")
    selection_dir = on_rank_zero(run_selection, "less", pool, targets, out / "selection", fraction=selection.fraction,
                                 count=selection.count, seed=seed, pool_store=pool_store.path,
                                 target_store=target_store.path, dim=selection.dim,
                                 aggregation=selection.aggregation, overwrite=overwrite)
    lap("selection")
    result: dict[str, Any] = {"snapshots": str(snapshots), "pool_store": str(pool_store.path),
                              "target_store": str(target_store.path), "selection": str(selection_dir),
                              "excluded": excluded}
    if target_set.benchmark:
        result["targets"] = targets[0]
    if not skip_training:
        result["train"] = train_and_evaluate(selection_dir, eval, out / "train", model, train, max_length, seed, trainer, overwrite)
        lap("train")
    if global_rank() != 0:  # what is left is rank 0's alone: lm-eval, the timings and the summary
        return result
    if eval_tasks.tasks:
        from lightning_less.recipes.evaluate import evaluate_adapter

        log.info(f"[5/5] {', '.join(eval_tasks.tasks)} through lm-evaluation-harness -> {out / 'eval'}")
        result["eval_tasks"] = evaluate_adapter(eval_tasks, train.model_name_or_path or model, out / "train" / "adapter",
                                                out / "eval", seed, overwrite)
        lap("eval_tasks")
    laps["total"] = round(sum(laps.values()), 2)
    write_timings(out / "timings.json", laps)  # a rerun keeps the first run's step times
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))
    log.info(f"pipeline finished; summary in {out / 'pipeline.json'}")
    return result
