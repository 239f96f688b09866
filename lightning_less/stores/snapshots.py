"""Reading LESS warmup snapshots back: one snapshot directory, or a whole, finished set of them.

Written by :class:`~lightning_less.callbacks.snapshot.GradientFeatureCallback`
(docs/architecture.md, "Snapshot directory"):

* ``<dirpath>/epoch_XXX/``: PEFT adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``), ``optimizer_moments.safetensors`` (Adam's
  ``exp_avg`` / ``exp_avg_sq`` by parameter name) and ``snapshot.json`` (epoch, mean
  lr, betas, eps...), moved into place whole (temp dir + ``os.replace``).
* ``<dirpath>/snapshots.json``: the warmup's plan, written when the fit starts and
  updated as each snapshot lands: ``planned`` (the ``epoch_XXX`` names the run will
  write), ``written`` and ``complete`` (the fit ended).

:func:`list_snapshots` returns a set only when it is whole: a fit killed before its last
epoch leaves a plan with snapshots missing, and that is an error naming them, as is an
``epoch_*`` directory without ``snapshot.json`` or one the plan does not know. An
explicit list of snapshot directories (:func:`load_snapshot` on each) stays possible.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from lightning_less.errors import InputError, MissingInputError
from lightning_less.stores.files import check_safetensors, read_json

__all__ = ["Snapshot", "load_snapshot", "list_snapshots", "resolve_snapshots", "planned_snapshots", "snapshot_dirname", "epoch_of",
           "SNAPSHOT_FORMAT_VERSION", "MOMENTS_FILE", "SNAPSHOT_FILE", "PLAN_FILE", "ADAPTER_FILE", "ADAPTER_CONFIG"]

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT_VERSION = 1
MOMENTS_FILE = "optimizer_moments.safetensors"
SNAPSHOT_FILE = "snapshot.json"
PLAN_FILE = "snapshots.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_META_KEYS = ("epoch", "global_step", "lr", "betas", "eps", "step", "base_model", "param_names")
REWARM = "Rerun the warmup (fit with GradientFeatureCallback, overwrite=True) to write it again."


def snapshot_dirname(epoch: int) -> str:
    """``epoch_XXX``: the directory name of the snapshot taken at the end of ``epoch`` (0-based)."""
    return f"epoch_{epoch:03d}"


def epoch_of(path: Path) -> int | None:
    """The epoch of an ``epoch_XXX`` directory, or None for any other name."""
    try:
        return int(path.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return None


def planned_snapshots(max_epochs: int | None, every_n_epochs: int) -> list[str] | None:
    """The snapshot names a fit of ``max_epochs`` writes (every n-th epoch and the last), None if unbounded."""
    if max_epochs is None or max_epochs < 0:
        return None
    return [snapshot_dirname(e) for e in range(max_epochs) if (e + 1) % every_n_epochs == 0 or e + 1 == max_epochs]


@dataclass
class Snapshot:
    """A loaded snapshot: metadata, adapter weights and Adam moments by parameter name."""

    path: Path
    epoch: int
    global_step: int
    lr: float
    betas: tuple[float, float]
    eps: float
    step: int
    base_model: str | None
    param_names: list[str]
    exp_avg: dict[str, torch.Tensor] = field(repr=False)
    exp_avg_sq: dict[str, torch.Tensor] = field(repr=False)
    meta: dict = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def load_snapshot(path: str | os.PathLike) -> Snapshot:
    """Read a snapshot directory written by ``GradientFeatureCallback``; errors name the missing or damaged file.

    Raises:
        MissingInputError: ``snapshot.json``, the moments or the adapter is missing.
        InputError: one of them is truncated or corrupt, or lacks a tensor or field.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path / SNAPSHOT_FILE
    if not meta_path.is_file():
        raise MissingInputError(f"{path} is not a snapshot directory: {SNAPSHOT_FILE} is missing")
    meta = read_json(meta_path, REWARM, required=_META_KEYS)
    for name in (MOMENTS_FILE, ADAPTER_CONFIG, ADAPTER_FILE):
        if not (path / name).is_file():
            raise MissingInputError(f"{path / name} is missing: the snapshot {path} is incomplete. {REWARM}")
    moments_path = path / MOMENTS_FILE
    # Headers only (cheap): a truncated file is named here, not deep inside safetensors or PEFT.
    check_safetensors(moments_path, REWARM)
    check_safetensors(path / ADAPTER_FILE, REWARM)
    read_json(path / ADAPTER_CONFIG, REWARM)
    tensors = load_file(str(moments_path))
    exp_avg, exp_avg_sq = {}, {}
    for name in meta["param_names"]:
        for key, target in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            full = f"{name}.{key}"
            if full not in tensors:
                raise InputError(f"{moments_path}: no tensor {full!r} for parameter {name!r}. {REWARM}")
            target[name] = tensors[full].float()
    return Snapshot(
        path=path,
        epoch=int(meta["epoch"]),
        global_step=int(meta["global_step"]),
        lr=float(meta["lr"]),
        betas=tuple(meta["betas"]),
        eps=float(meta["eps"]),
        step=int(meta["step"]),
        base_model=meta["base_model"] or None,
        param_names=list(meta["param_names"]),
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        meta=meta,
    )


def list_snapshots(dirpath: str | os.PathLike) -> list[Path]:
    """The snapshot directories of a finished warmup under ``dirpath``, in epoch order.

    Raises:
        MissingInputError: ``dirpath`` does not exist, or holds no snapshots.
        InputError: an ``epoch_*`` entry without ``snapshot.json``; a warmup that did
            not finish (the snapshots its plan lists but that are missing are named); an
            ``epoch_*`` directory the plan does not list; a damaged ``snapshots.json``.
    """
    root = Path(dirpath)
    if not root.is_dir():
        raise MissingInputError(f"{root} {'is not a directory' if root.exists() else 'does not exist'}: give the "
                                "directory the warmup wrote its snapshots to (GradientFeatureCallback's dirpath), "
                                "or run the warmup first")
    found = sorted(root.glob("epoch_*"), key=lambda p: (epoch_of(p) is None, epoch_of(p) or 0, p.name))
    for p in found:
        if not (p / SNAPSHOT_FILE).is_file():
            raise InputError(f"{p} is not a snapshot ({SNAPSHOT_FILE} is missing): remove it, or rerun the warmup "
                             "with overwrite=True; an incomplete snapshot is never skipped silently")
    present = [p.name for p in found]
    plan_path = root / PLAN_FILE
    if not plan_path.is_file():
        if not found:
            raise MissingInputError(f"no snapshots (epoch_*/{SNAPSHOT_FILE}) under {dirpath}")
        log.warning("%s has no %s (written by an older version?): cannot check that the warmup finished; using %s",
                    root, PLAN_FILE, present)
        return found
    plan = read_json(plan_path, REWARM, required=("planned", "written", "complete"))
    expected = plan["written"] if plan["complete"] else plan["planned"]
    missing = [n for n in (expected or []) if n not in present]
    if missing and plan["complete"]:
        raise InputError(f"{root} lacks {missing}, which its warmup wrote ({plan_path} lists them; on disk {present}): "
                         "restore them or rerun the warmup with overwrite=True, or pass the snapshot directories to "
                         "use explicitly (a list)")
    if missing or expected is None:
        raise InputError(
            f"the warmup that writes {root} did not finish: {missing or 'the snapshots of epochs not yet run'} "
            f"missing (planned {plan['planned'] or 'until the fit ends'}, on disk {present}). Resume or rerun the "
            "warmup, or pass the snapshot directories to use explicitly (a list)"
        )
    extra = [n for n in present if n not in expected]
    if extra:
        raise InputError(f"{root} holds {extra}, which its warmup ({plan_path}) did not write: remove them, or pass "
                         "the snapshot directories to use explicitly (a list)")
    return [root / n for n in expected]


def resolve_snapshots(snapshots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A snapshot directory, a snapshot root (its whole set, :func:`list_snapshots`) or an explicit list of snapshot dirs.

    Raises:
        MissingInputError: the path does not exist, or holds no snapshots.
        InputError: as :func:`list_snapshots`.
    """
    if isinstance(snapshots, (str, os.PathLike)):
        root = Path(snapshots)
        return [root] if (root / SNAPSHOT_FILE).exists() else list_snapshots(root)
    return [Path(s) for s in snapshots]
