"""What the recipes' steps share: finished-step markers and the Trainer they run under.

Each step writes into its own directory with a ``step.json`` marker holding the step's
settings and a fingerprint of them. A step whose marker matches is skipped; one whose
marker differs is refused (stale output) unless ``overwrite`` is set, so a result is never
silently reused with other settings. A directory without a marker is an interrupted step
and is started again from scratch.

Under DDP every rank calls the same steps: rank 0 alone decides whether a step is done
(removing what an interrupted step left) and writes its marker, and every rank gets its
decision, or its refusal (:func:`~lightning_less.distributed.on_rank_zero`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_less.distributed import global_rank, on_rank_zero
from lightning_less.errors import StaleOutputError

STEP_FILE = "step.json"


def say(message: str, logger: str = "lightning_less.recipes") -> None:
    """Log a step's line once: on global rank 0 (under DDP every rank goes through the steps)."""
    if global_rank() == 0:
        logging.getLogger(logger).info(message)


def fingerprint(settings: dict) -> str:
    """A short, order-independent hash of a step's settings (JSON-able values)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def step_done(path: Path, settings: dict, overwrite: bool) -> bool:
    """Whether the step in ``path`` already finished with these settings (decided on rank 0 under DDP).

    Args:
        path: the step's directory.
        settings: everything the step's result depends on.
        overwrite: remove a result made with other settings instead of refusing it.

    Returns:
        True when ``path`` holds a finished result of these settings; False when the step
        must run (``path`` is then absent: an unfinished or overwritten result is removed).

    Raises:
        StaleOutputError: ``path`` holds a result made with other settings and not ``overwrite``.
    """
    return on_rank_zero(_step_done, path, settings, overwrite)


def _step_done(path: Path, settings: dict, overwrite: bool) -> bool:
    marker = path / STEP_FILE
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("fingerprint") == fingerprint(settings):
            return True
        if not overwrite:
            raise StaleOutputError(
                f"{path} holds results made with other settings ({marker}); pass --overwrite true "
                "(overwrite=True) to redo the step, or choose another output directory"
            )
    if path.exists() and (overwrite or not marker.exists()) and global_rank() == 0:
        # An unfinished step (no marker) or one to redo: start clean, never mix. (Another rank that
        # Lightning's launcher started goes through the steps rank 0 did before it: it only reads.)
        shutil.rmtree(path)
    return False


def mark_done(path: Path, settings: dict, result: dict | None = None) -> None:
    """Write the step's marker (atomically, last): its settings, their fingerprint and its result (rank 0 under DDP)."""
    on_rank_zero(_write_marker, path, settings, result)


def _write_marker(path: Path, settings: dict, result: dict | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{STEP_FILE}.tmp"
    record = {"fingerprint": fingerprint(settings), "settings": settings, "result": result or {}}
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path / STEP_FILE)


def step_result(path: Path) -> dict:
    """The ``result`` a finished step recorded in its marker."""
    return json.loads((path / STEP_FILE).read_text()).get("result", {})


def make_trainer(trainer_kwargs: dict[str, Any] | None, **kwargs: Any) -> pl.Trainer:
    """A Trainer for one step: no logger, checkpoints or model summary unless ``trainer_kwargs`` asks.

    Args:
        trainer_kwargs: the user's Trainer arguments (e.g. accelerator, precision); they
            override the quiet defaults.
        **kwargs: the step's own arguments (e.g. ``max_epochs``); they override both.
    """
    quiet = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    return pl.Trainer(**{**quiet, **(trainer_kwargs or {}), **kwargs})


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
