"""``lightning-less targets``: the LESS paper's target sets from a benchmark's own few-shot examples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from lightning_less.data.benchmarks import build_targets, write_targets
from lightning_less.data.records import file_sha256
from lightning_less.errors import StaleOutputError


def targets(
    *,
    benchmark: Literal["mmlu", "tydiqa", "bbh"],
    data: str,
    output: str,
    n_per_subtask: int | None = None,
    subtasks: list[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a benchmark's few-shot examples as target records (jsonl, ``messages`` + ``subtask``).

    The paper's target sets: MMLU, 5 dev examples per subject; TydiQA, 1 example per
    language; BBH, the 3 chain-of-thought examples of each task; each formatted as the
    LESS reference code formats it (Tülu chat format). See ``docs/evaluation.md``.

    Args:
        benchmark: ``mmlu``, ``tydiqa`` or ``bbh``.
        data: the local copy in the benchmark's public format: MMLU's ``data/`` directory
            (with ``dev/<subject>_dev.csv``); a TydiQA-GoldP json (SQuAD-like; the paper's
            targets come from the train split) or LESS's one-shot file; the BBH directory
            with ``cot-prompts/<task>.txt``.
        output: the jsonl file to write.
        n_per_subtask: examples per subject / language / task (default: the paper's 5 / 1 / 3).
        subtasks: only these subjects / languages / tasks (default: all found).
        overwrite: replace an existing output file.

    Returns:
        ``{"output", "benchmark", "examples", "subtasks": {name: count}, "sha256"}``.
    """
    out = Path(output)
    if out.exists() and not overwrite:
        raise StaleOutputError(f"{out} exists: pass --overwrite true to replace it, or choose another --output")
    records = build_targets(benchmark, data, n_per_subtask=n_per_subtask, subtasks=subtasks)
    write_targets(records, out)
    counts = Counter(r["subtask"] for r in records)
    return {"output": str(out), "benchmark": benchmark, "examples": len(records),
            "subtasks": dict(sorted(counts.items())), "sha256": file_sha256(out)}


def build_target_set(settings, output: Path) -> str:
    """The pipeline's optional step 0: the benchmark's target set written to ``<output>/targets.jsonl``.

    The file is rewritten only when its content changes, so the later steps' fingerprints
    (which hash the targets file) reuse their results when nothing changed.

    Args:
        settings: a :class:`~lightning_less.recipes.settings.TargetSetSettings` with ``benchmark`` set.
        output: the step's directory.

    Returns:
        The targets file's path.

    Raises:
        InputError: no ``data`` was given, or the benchmark's files are malformed.
        MissingInputError: ``data`` does not exist.
    """
    from lightning_less.errors import InputError, MissingInputError

    if not settings.data:
        raise InputError(f"--target_set.data: building the {settings.benchmark} targets needs the benchmark's local "
                         "copy (see lightning-less targets --help)")
    if not Path(settings.data).exists():
        raise MissingInputError(f"--target_set.data: {settings.data} does not exist")
    records = build_targets(settings.benchmark, settings.data, n_per_subtask=settings.n_per_subtask,
                            subtasks=settings.subtasks)
    path = Path(output) / "targets.jsonl"
    fresh = write_targets(records, Path(output) / ".targets.new.jsonl")
    if path.exists() and path.read_bytes() == fresh.read_bytes():
        fresh.unlink()
    else:
        fresh.replace(path)
    return str(path)
