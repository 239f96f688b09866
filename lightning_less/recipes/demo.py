"""``lightning-less demo``: the whole LESS pipeline and the baselines on generated data, on CPU.

1. Generate a multi-task pool in two surface forms (English / Spanish instructions), held-out
   targets and evaluation examples of one task in one form (``last_letter`` in Spanish).
2. Build a base model: the offline tiny Llama, trained on a corpus of every *other* task, so
   it knows the instruction format but not the target task.
3. LESS: warmup with snapshots, gradient features, selection (the real pipeline).
4. The same budget chosen by the other methods; every selection trained on the same way.
5. LESS-T: the LESS and random selections also trained on a second, larger model (the
   ``small`` built-in size, pretrained the same way): rows ``less_t`` and ``random_t``.
6. A table and ``results.json``: ``{method: {target_share, target_loss, target_exact_match}}``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lightning_less.analysis.comparison import TargetRule, target_rule, target_share
from lightning_less.data.records import read_records
from lightning_less.errors import InputError
from lightning_less.recipes.pipeline import run_pipeline
from lightning_less.recipes.settings import FeatureSettings, SelectionSettings, TrainSettings, WarmupSettings
from lightning_less.recipes.steps import make_trainer, mark_done, step_done, write_timings
from lightning_less.recipes.train import train_and_evaluate

log = logging.getLogger(__name__)

DEMO_METHODS = ("less", "random", "bm25", "dsir", "rds", "rds_plus", "rds_response", "s2l", "full")
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": True}
# LESS-T rows: the row's name -> the method whose selection the larger model trains on.
TRANSFER_ROWS = {"less_t": "less", "random_t": "random"}
COLUMNS = ("n_selected", "target_share", "surface_share", "target_loss", "target_exact_match")


def task_of(source: str) -> str:
    """The demo's task name from a record's source (``<task>_<form>``)."""
    return source.rsplit("_", 1)[0]


def demo_relevance(target_task: str) -> TargetRule:
    """The demo's relevance rule: the target task in either surface form (``<task>_en``, ``<task>_es``).

    The same :class:`~lightning_less.analysis.comparison.TargetRule` that ``compare`` uses
    with ``target_source_regex``, so both report the same ``target_share``.
    """
    return target_rule(target_source_regex=f"^{re.escape(target_task)}_(en|es)$")


def build_base_model(output: Path, pretrain_file: str, seed: int, epochs: int = 2, size: str = "tiny") -> str:
    """Full fine-tuning of a built-in model (``size``) on the pretraining corpus, saved with ``save_pretrained``."""
    import lightning.pytorch as pl

    from lightning_less.data.datamodule import InstructionDataModule
    from lightning_less.modules.lora import LoRAInstructionTuningModule

    config = {"pretrain_file": pretrain_file, "seed": seed, "epochs": epochs, "version": 1}
    if size != "tiny":  # the tiny base's config stays as it was, so earlier demo runs are reused
        config["size"] = size
    if step_done(output, config, overwrite=False):
        return str(output / "model")
    log.info(f"[0/4] base model: the {size} Llama trained on {pretrain_file} (every task but the target)")
    pl.seed_everything(seed, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path=f"builtin:tiny-llama-{size}", use_lora=False, learning_rate=3e-3,
                                         warmup_ratio=0.05, seed=seed, exact_match=False)
    data = InstructionDataModule(train_files=[pretrain_file], tokenizer_name_or_path="builtin:tiny-llama",
                                 max_length=128, batch_size=32, seed=seed)
    make_trainer(TRAINER, max_epochs=epochs).fit(module, datamodule=data)
    module.save_adapter(output / "model")
    mark_done(output, config)
    return str(output / "model")


@dataclass(frozen=True)
class DemoResult:
    """The demo's table: per method, what it selected and how training on it did."""

    rows: dict[str, dict]
    """``{method: {"n_selected", "target_share", "surface_share", "target_loss", "target_exact_match"}}``."""
    target_task: str
    """The task the targets come from."""
    seconds: float
    """Wall time of the whole demo."""
    results_path: Path
    """Where ``rows`` were written as JSON."""

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"lightning-less demo: target task '{self.target_task}' ({self.seconds:.0f} s)")
        table.add_column("method")
        for column in COLUMNS:  # headers wrap at spaces on a narrow terminal instead of being cut
            table.add_column("selected" if column == "n_selected" else column.replace("_", " "), justify="right")
        for method, row in self.rows.items():
            table.add_row(method, str(row["n_selected"]), *(f"{row[c]:.3f}" for c in COLUMNS[1:]))
        return Group(table, f"results written to {self.results_path}")


def demo(
    *,
    output: str = "demo_output",
    seed: int = 0,
    methods: list[str] | None = None,
    target_task: str = "last_letter",
    pool_size: int = 2400,
    fraction: float = 0.05,
    scenario: str = "in_form",
    transfer: bool = True,
) -> DemoResult:
    """Run the built-in demo: the whole LESS pipeline and the baselines on generated data, on CPU.

    Writes ``<output>/results.json``, ``<output>/timings.json`` and every step's outputs
    (data, base model, snapshots, datastores, selections, adapters), and returns the table
    of every method's target share, target loss and exact match.

    Args:
        output: the run directory; finished steps found there are skipped.
        seed: seed of the data, the warmup sample, every sampled method and training.
        methods: methods to run (default: less, random, bm25, dsir, rds, rds_plus, rds_response, s2l, full).
        target_task: the demo task the targets come from (``last_letter``, ``first_letter``, ``uppercase``, ...).
        pool_size: number of pool examples generated.
        fraction: every method's budget as a fraction of the pool (LESS's 5%).
        scenario: ``in_form`` (a fifth of the target task's pool examples in the targets' surface
            form) or ``cross_form`` (the target task only in the other form, as TydiQA in the LESS paper).
        transfer: also train the LESS and random selections on a second, larger model (the built-in
            ``small`` size, pretrained like the base): the LESS paper's LESS-T rows ``less_t`` and ``random_t``.
    """
    from lightning_less.data.demo import generate_demo_data, generate_pretraining_data
    from lightning_less.selection.outputs import read_selection

    methods = list(methods or DEMO_METHODS)
    unknown = sorted(set(methods) - set(DEMO_METHODS))
    if unknown:
        raise InputError(f"--methods: unknown demo methods {unknown}; choose from {list(DEMO_METHODS)}")
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
    target_source = read_records(targets)[0].source
    target_task, target_form = task_of(target_source), target_source.rsplit("_", 1)[1]
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
        steps = json.loads((out / "less" / "timings.json").read_text())
        timings.update({f"less_{name}": seconds for name, seconds in steps.items() if "total" not in name})
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

    transfers = {row: method for row, method in TRANSFER_ROWS.items() if transfer and method in methods}
    if transfers:
        larger = build_base_model(out / "base_small", pretrain, seed, size="small")
        lap("base_model_small")
        for row, method in transfers.items():
            settings = replace(train, model_name_or_path=larger)
            results[row] = train_and_evaluate(selections[method], eval_files, out / "train" / row, base, settings,
                                              max_length, seed, TRAINER)
            selections[row] = selections[method]
            lap(f"{row}_train")

    relevant = demo_relevance(target_task)
    rows = {}
    for method in [*methods, *transfers]:
        selected = read_selection(selections[method]).selected
        rows[method] = {
            "target_share": target_share([pool[i] for i in selected], relevant),
            # Share of the selection in the targets' surface form (whatever the task): what word overlap follows.
            "surface_share": float(np.mean([pool[i].source.rsplit("_", 1)[1] == target_form for i in selected])),
            "target_loss": results[method]["target_loss"],
            "target_exact_match": results[method]["target_exact_match"],
            "n_selected": int(len(selected)),
        }
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    timings["total"] = round(time.time() - start, 2)
    write_timings(out / "timings.json", timings)
    return DemoResult(rows, target_task, time.time() - start, out / "results.json")
