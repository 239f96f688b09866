"""``LessDataModule``: train on a selection (LESS step 4, docs/algorithms.md §1.7)."""

from __future__ import annotations

import numpy as np

from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.data.records import read_records


class LessDataModule(InstructionDataModule):
    """An :class:`InstructionDataModule` whose training set is a selection of the pool.

    The selection comes from a selection directory (``selected.jsonl`` order, verified
    against the pool files' hashes), optionally re-cut to a smaller budget from its
    scores table. The model trained here may differ from the one that selected the data
    (LESS-T): only the pool files and indices are shared.

    Args:
        selection_dir: a directory written by ``lightning-less select`` (or any method).
        pool_files: the pool files the selection was made from (default: the manifest's).
        fraction: re-cut the selection to this fraction of the pool, by score.
        count: re-cut the selection to this many examples, by score.
        **kwargs: everything else of :class:`InstructionDataModule` (``val_files``, ``max_length``...).
    """

    def __init__(
        self,
        selection_dir: str,
        pool_files: list[str] | None = None,
        fraction: float | None = None,
        count: int | None = None,
        **kwargs,
    ) -> None:
        from lightning_less.selection.budget import resolve_budget, top_k
        from lightning_less.selection.outputs import read_selection

        probe = read_selection(selection_dir)
        files = pool_files or [entry["path"] for entry in probe.manifest["inputs"]["pool"]]
        records = read_records(files)
        selection = read_selection(selection_dir, records)  # refuses a pool that changed since
        indices = np.asarray(selection.selected, dtype=np.int64)
        if fraction is not None or count is not None:
            k = resolve_budget(len(records), fraction=fraction, count=count)
            scored = not np.isnan(selection.scores).all()
            if k > len(indices) and not scored:
                raise ValueError(f"{selection_dir}: cannot grow an unscored selection of {len(indices)} to {k}")
            indices = top_k(selection.scores, k) if scored else indices[:k]
        kwargs.pop("train_files", None)
        kwargs.pop("train_indices", None)
        super().__init__(train_files=files, train_indices=[int(i) for i in indices], **kwargs)
        self.selection_dir = selection_dir
