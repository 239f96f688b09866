"""Evaluation through lm-evaluation-harness (``lm_eval``) of a Hugging Face causal LM (or PEFT model).

One function, :func:`run_harness`, serves the ``evaluate`` command and
:class:`~lightning_less.callbacks.lm_eval.LMEvalCallback`: it wraps an already-built model
in lm-eval's ``HFLM`` and runs ``lm_eval.simple_evaluate`` with a number of shots and an
example limit per requested task or group (lm-eval's own arguments are global).
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from lightning_less.errors import InputError

log = logging.getLogger(__name__)

# The LESS paper's shots: MMLU 5, BBH 3 (chain of thought), TydiQA 1 (gold passage).
PAPER_FEWSHOT = {"mmlu": 5, "bbh_cot_fewshot": 3, "less_tydiqa": 1}


@dataclass
class HarnessSettings:
    """What to evaluate and how; shared by the ``evaluate`` command and ``LMEvalCallback``."""

    tasks: list[str]
    """lm-eval task, group or tag names (e.g. ``mmlu``, ``bbh_cot_fewshot``, ``less_tydiqa``)."""
    num_fewshot: int | dict[str, int] | None = None
    """Shots for every task, or per requested name; a name left out gets the paper's
    (``PAPER_FEWSHOT``) or else its task config's own."""
    limit: int | dict[str, int] | None = None
    """At most this many examples (the first ones) of every task, or per requested name
    (applied to each task of a group)."""
    include_path: list[str] = field(default_factory=list)
    """Directories of extra task YAMLs (e.g. ``configs/eval/tasks``)."""
    include_defaults: bool = True
    """Also index lm-eval's own tasks (off: only ``include_path``, faster to start)."""
    batch_size: int = 8
    """Batch size of lm-eval's requests."""
    max_length: int | None = None
    """Context length in tokens (default: the model config's)."""
    bootstrap_iters: int = 0
    """lm-eval's bootstrap iterations for standard errors (0: none, fast)."""
    seed: int = 0
    """Seed of lm-eval's python, numpy, torch and few-shot samplers."""
    log_samples: bool = False
    """Keep every example's prompt, response and metric in the results."""


def task_manager(settings: HarnessSettings):
    """An lm-eval ``TaskManager`` over the settings' include paths."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(settings.include_path) or None, include_defaults=settings.include_defaults)


def _per_name(value: int | dict[str, int] | None, name: str, default: int | None = None) -> int | None:
    if isinstance(value, dict):
        return value.get(name, default)
    return default if value is None else int(value)


def load_tasks(settings: HarnessSettings, manager) -> tuple[list, dict[str, list[int]]]:
    """The requested tasks / groups as lm-eval objects, shots set per name, and the per-task example indices of ``limit``."""
    unknown = [name for name in settings.tasks if name not in manager.all_tasks]
    if unknown:
        where = f" under {settings.include_path}" if settings.include_path else " (pass include_path for task YAMLs such as configs/eval/tasks)"
        raise InputError(f"unknown lm-eval task(s) {unknown}{where}; see `lm_eval ls tasks` for lm-eval's own")
    objects, samples = [], {}
    for name in settings.tasks:
        loaded = manager.load([name])
        group = loaded["groups"].get(name)
        objects.extend([group] if group is not None else list(loaded["tasks"].values()))
        shots = _per_name(settings.num_fewshot, name, PAPER_FEWSHOT.get(name))
        limit = _per_name(settings.limit, name)
        for task_name, task in loaded["tasks"].items():
            if shots is not None:
                task.set_config(key="num_fewshot", value=shots)
            if limit is not None:
                samples[task_name] = list(range(min(limit, len(task.eval_docs))))
    return objects, samples


@contextmanager
def preserved_rng() -> Iterator[None]:
    """lm-eval seeds python, numpy and torch globally; give the caller (a training run) its streams back."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def run_harness(model: torch.nn.Module, tokenizer, settings: HarnessSettings, manager=None) -> dict[str, Any]:
    """Evaluate ``model`` (a ``PreTrainedModel`` or ``PeftModel``, already on its device) with lm-eval's ``HFLM``.

    The model is put in eval mode (``HFLM`` does it); restoring train mode is the caller's
    business. Returns lm-eval's results dict (``results``, ``groups``, ``n-shot``, ...).
    """
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=settings.max_length)
    return evaluate_lm(lm, settings, manager)


def evaluate_lm(lm, settings: HarnessSettings, manager=None) -> dict[str, Any]:
    """Run ``lm_eval.simple_evaluate`` on any lm-eval ``LM`` with the settings' tasks, shots and limits."""
    import lm_eval

    # Everything in here may draw from (or seed) the global generators.
    with preserved_rng(), torch.no_grad():
        manager = manager or task_manager(settings)
        objects, samples = load_tasks(settings, manager)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=objects,
            samples=samples or None,
            task_manager=manager,
            bootstrap_iters=settings.bootstrap_iters,
            log_samples=settings.log_samples,
            random_seed=settings.seed,
            numpy_random_seed=settings.seed,
            torch_random_seed=settings.seed,
            fewshot_random_seed=settings.seed,
        )
    return dict(results)


def summarize(results: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Flat ``{"<name>/<metric>": value}`` of the requested tasks and groups (and each group's tasks).

    lm-eval keys metrics ``"<metric>,<filter>"``; the filter is dropped unless one metric
    has several filters in a task (then ``"<metric>,<filter>"`` stays).
    """
    table = {**results.get("results", {}), **results.get("groups", {})}
    wanted = list(names)
    for name in names:
        wanted.extend(results.get("group_subtasks", {}).get(name, []))
    flat: dict[str, float] = {}
    for name in dict.fromkeys(wanted):
        row = table.get(name, {})
        metrics = [k for k, v in row.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))]
        bases = [k.split(",")[0] for k in metrics]
        for key in metrics:
            base = key.split(",")[0]
            flat[f"{name}/{base if bases.count(base) == 1 else key}"] = float(row[key])
    return flat
