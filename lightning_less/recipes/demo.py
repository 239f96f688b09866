"""``lightning-less demo``: the whole LESS pipeline and the baselines on generated data, on CPU.

1. Generate a multi-task pool in two surface forms (English / Spanish instructions), held-out
   targets and evaluation examples of one task in one form (``first_letter`` in Spanish).
2. Build a base model: the offline tiny Llama, trained on a corpus of every *other* task, so
   it knows the instruction format but not the target task.
3. LESS: warmup with snapshots, gradient features, selection (the real pipeline).
4. The same budget chosen by the other methods; every selection trained on the same way.
5. A table and ``results.json``: ``{method: {target_share, target_loss, target_exact_match}}``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_less.analysis.comparison import TargetRule, target_rule, target_share
from lightning_less.data.records import read_records
from lightning_less.recipes.pipeline import (
    FeatureSettings,
    SelectionSettings,
    TrainSettings,
    WarmupSettings,
    mark_done,
    run_pipeline,
    step_done,
    train_and_evaluate,
)

DEMO_METHODS = ("less", "random", "bm25", "dsir", "rds", "rds_plus", "rds_response", "s2l", "full")
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": True}


def task_of(source: str) -> str:
    """The demo's task name from a record's source (``<task>_<form>``)."""
    return source.rsplit("_", 1)[0]


def demo_relevance(target_task: str) -> TargetRule:
    """The demo's relevance rule: the target task in either surface form (``<task>_en``, ``<task>_es``).

    The same :class:`~lightning_less.analysis.comparison.TargetRule` that ``compare`` uses
    with ``target_source_regex``, so both report the same ``target_share``.
    """
    return target_rule(target_source_regex=f"^{re.escape(target_task)}_(en|es)$")


def write_timings(path: Path, timings: dict[str, float]) -> None:
    """Write ``timings.json``, keeping the first run's time of every step already recorded.

    A rerun skips finished steps and takes seconds for them; the file keeps what they cost
    when they ran (``last_run_total``: the rerun's own total).
    """
    previous = json.loads(path.read_text()) if path.exists() else {}
    merged = {**timings, **{k: v for k, v in previous.items() if k != "last_run_total"}}
    if previous:
        merged["last_run_total"] = timings["total"]
    path.write_text(json.dumps(merged, indent=2))


def build_base_model(output: Path, pretrain_file: str, seed: int, epochs: int = 2) -> str:
    """Full fine-tuning of the tiny model on the pretraining corpus, saved with ``save_pretrained``."""
    import lightning.pytorch as pl

    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule

    config = {"pretrain_file": pretrain_file, "seed": seed, "epochs": epochs, "version": 1}
    if step_done(output, config, overwrite=False):
        return str(output / "model")
    rank_zero_info(f"[0/4] base model: the tiny Llama trained on {pretrain_file} (every task but the target)")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path="builtin:tiny-llama", use_lora=False, learning_rate=3e-3,
                                         warmup_ratio=0.05, seed=seed, exact_match=False)
    data = InstructionDataModule(train_files=[pretrain_file], tokenizer_name_or_path="builtin:tiny-llama",
                                 max_length=128, batch_size=32, seed=seed)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_model_summary=False, **TRAINER)
    trainer.fit(module, datamodule=data)
    module.save_adapter(output / "model")
    mark_done(output, config)
    return str(output / "model")


def run_demo(output: str = "demo_output", seed: int = 0, methods: Sequence[str] = DEMO_METHODS,
             pool_size: int = 2400, fraction: float = 0.05, target_task: str = "last_letter",
             scenario: str = "in_form") -> dict:
    """Run the demo and return ``{method: {"target_share", "target_loss", "target_exact_match"}}``."""
    from lightning_less.data.demo import generate_demo_data, generate_pretraining_data

    unknown = sorted(set(methods) - set(DEMO_METHODS))
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}: choose from {list(DEMO_METHODS)}")
    start = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: list[float] = [start]) -> None:
        now = time.time()
        timings[name] = round(now - since[0], 2)
        since[0] = now

    out = Path(output)
    data = generate_demo_data(out / "data", seed=seed, pool_size=pool_size, target_task=target_task, scenario=scenario)
    pretrain = generate_pretraining_data(out / "data" / "pretrain.jsonl", seed=seed, n=2000, exclude_task=target_task)
    lap("data")
    base = build_base_model(out / "base", pretrain, seed)
    lap("base_model")
    pool_files, targets, eval_files = data["pool"], [data["targets"]], [data["eval"]]
    pool = read_records(pool_files)
    target_task = task_of(read_records(targets)[0].source)
    target_form = read_records(targets)[0].source.rsplit("_", 1)[1]
    train = TrainSettings(epochs=4, learning_rate=2e-3, lora_r=16, lora_alpha=32, lora_dropout=0.0, batch_size=8,
                          warmup_ratio=0.03, generation_max_new_tokens=4)
    max_length = 128
    selections: dict[str, Path] = {}
    results: dict[str, dict] = {}
    if "less" in methods:
        res = run_pipeline(
            pool=pool_files, targets=targets, output=str(out / "less"), model=base, eval=eval_files,
            max_length=max_length, seed=seed,
            warmup=WarmupSettings(fraction=fraction, epochs=4, learning_rate=2e-3, lora_r=16, lora_alpha=32,
                                  lora_dropout=0.0, batch_size=8),
            features=FeatureSettings(dims=[1024], projector="sparse_jl", batch_size=16, store_dtype="float32"),
            selection=SelectionSettings(fraction=fraction),
            train=train, trainer=TRAINER,
        )
        selections["less"] = Path(res["selection"])
        results["less"] = res["train"]
        lap("less")
    from lightning_less.recipes.select import select  # trains the S2L proxy from the base model

    for method in methods:
        if method == "less":
            continue
        selections[method] = Path(select(method=method, pool=pool_files, targets=targets, output=str(out / "selections" / method),
                                         model=base, fraction=1.0 if method == "full" else fraction, seed=seed,
                                         max_length=max_length, trainer=TRAINER)["selection"])
        lap(f"{method}_select")
        results[method] = train_and_evaluate(selections[method], eval_files, out / "train" / method, base, train,
                                             max_length, seed, TRAINER)
        lap(f"{method}_train")
    from lightning_less.selection.outputs import read_selection

    relevant = demo_relevance(target_task)
    table = {}
    for method in methods:
        sel = read_selection(selections[method])
        forms = [pool[i].source.rsplit("_", 1)[1] for i in sel.selected]
        table[method] = {
            "target_share": target_share([pool[i] for i in sel.selected], relevant),
            # Share of the selection in the targets' surface form (whatever the task): what word overlap follows.
            "surface_share": float(np.mean([f == target_form for f in forms])),
            "target_loss": results[method]["target_loss"],
            "target_exact_match": results[method]["target_exact_match"],
            "n_selected": int(len(sel.selected)),
        }
    (out / "results.json").write_text(json.dumps(table, indent=2))
    timings["total"] = round(time.time() - start, 2)
    write_timings(out / "timings.json", timings)
    _print_table(table, target_task, time.time() - start, out / "results.json")
    return table


def _print_table(table: dict, target_task: str, seconds: float, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"lightning-less demo: target task '{target_task}' ({seconds:.0f} s)")
    for col in ("method", "selected", "target_share", "surface_share", "target_loss", "target_exact_match"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for method, row in table.items():
        t.add_row(method, str(row["n_selected"]), f"{row['target_share']:.3f}", f"{row['surface_share']:.3f}", f"{row['target_loss']:.3f}",
                  f"{row['target_exact_match']:.3f}")
    console = Console()
    console.print(t)
    console.print(f"results written to {path}")
