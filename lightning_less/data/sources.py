"""Hugging Face ``datasets`` as input: saved dataset directories, parquet and arrow files, hub names.

A dataset input holds the same four record layouts as a jsonl file, one per row, as
columns: ``messages`` (a list of ``{role, content}``), ``conversations`` (ShareGPT: a list
of ``{from, value}``), ``prompt`` + ``completion``, or ``instruction`` + ``input`` +
``output`` (and optionally ``id``, ``dataset`` / ``source``, ``subtask``). A row's null
columns count as absent, so a dataset may mix formats.

* a directory written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json`` and ``state.json``),
* a ``.parquet`` file (``Dataset.from_parquet``: converted once into the ``datasets`` cache),
* an ``.arrow`` file (``Dataset.from_file``, as ``datasets`` writes them),
* ``hf://<name>[@<split>]``: a dataset of the Hugging Face hub (split ``train`` by default),
  which needs the hub to be reachable (or the dataset in the local ``datasets`` cache).

Every one is read memory-mapped (Arrow), row by row or in small batches; no list of all
rows is ever built. Errors name the input and the 0-based row.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterator

from lightning_less.data.records import RecordError
from lightning_less.errors import InputError, MissingInputError

HUB_PREFIX = "hf://"
DATASET_SUFFIXES = (".parquet", ".arrow")
SAVED_MARKERS = ("dataset_info.json", "state.json")
BATCH_ROWS = 1024  # rows read at once while streaming: bounded memory, few Arrow calls


def is_dataset_input(path: str) -> bool:
    """Whether ``path`` names a ``datasets`` input rather than a jsonl file."""
    if path.startswith(HUB_PREFIX) or path.endswith(DATASET_SUFFIXES):
        return True
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in SAVED_MARKERS + ("dataset_dict.json",))


def open_dataset(path: str):
    """The ``datasets.Dataset`` of an input (memory-mapped), or a :class:`RecordError` naming it."""
    import datasets

    if path.startswith(HUB_PREFIX):
        return _open_hub(path)
    if not os.path.exists(path):
        raise RecordError(path, None, "cannot read file: No such file or directory")
    try:
        if os.path.isdir(path):
            loaded = datasets.load_from_disk(path)
        elif path.endswith(".parquet"):
            loaded = datasets.Dataset.from_parquet(path)
        else:
            loaded = datasets.Dataset.from_file(path)
    except Exception as err:  # datasets / pyarrow raise many types for an unreadable file
        raise RecordError(path, None, f"cannot read it as a dataset: {type(err).__name__}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        raise RecordError(path, None, f"holds several splits ({', '.join(loaded)}): give one split's directory, "
                                      f"e.g. {os.path.join(path, next(iter(loaded)))}")
    return loaded


def _open_hub(path: str):
    import datasets

    name, _, split = path[len(HUB_PREFIX):].partition("@")
    if not name:
        raise InputError(f"{path}: no dataset name after {HUB_PREFIX}")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except (ConnectionError, OSError) as err:
        raise MissingInputError(
            f"{path}: cannot load {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Check the network (or HF_HUB_OFFLINE), or save the dataset locally (save_to_disk / parquet) and pass that"
        ) from err
    except Exception as err:  # a wrong name or split, a dataset that needs a script...
        raise InputError(f"{path}: cannot load {name!r} (split {split or 'train'!r}) from the hub: "
                         f"{type(err).__name__}: {err}") from err


def hub_fingerprint(path: str) -> str:
    """A hub dataset's identity: the sha256 of its ``_fingerprint`` (which changes with its files)."""
    fingerprint = getattr(_open_hub(path), "_fingerprint", None)
    return hashlib.sha256(str(fingerprint).encode("utf-8")).hexdigest()


def row_object(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its null columns (absent in that row's format)."""
    return {k: v for k, v in row.items() if v is not None}


class DatasetSource:
    """One ``datasets`` input: its rows are the records (nothing per row is kept beyond the index's codes)."""

    unit = "row"

    def __init__(self, path: str) -> None:
        self.path = path
        self.dataset = open_dataset(path)

    def __len__(self) -> int:
        return len(self.dataset)

    def stream(self) -> Iterator[tuple[int, dict]]:
        """``(row, row object)`` of every row, in order, a batch of rows at a time."""
        row = 0
        for batch in self.dataset.iter(batch_size=BATCH_ROWS):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield row, row_object(dict(zip(columns, values)))
                row += 1

    scan = stream  # the rows need no offsets: a row's position is its address

    def read(self, local: int) -> tuple[int, dict]:
        return local, row_object(self.dataset[int(local)])

    def raw(self, local: int) -> bytes:
        """The row as one JSON object (its non-null columns, in column order), as ``selected.jsonl`` holds it."""
        return json.dumps(self.read(local)[1], ensure_ascii=False, default=str).encode("utf-8")


def selected_dataset(sources: list, indices, out_dir: str) -> None:
    """Save the rows ``indices`` (global, in rank order) of a pool made only of datasets to ``out_dir``.

    Raises:
        InputError: the pool's datasets have different columns (they cannot form one dataset).
    """
    import datasets

    parts = [s.dataset for s in sources]
    try:
        whole = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise InputError(f"the pool datasets {[s.path for s in sources]} have different columns, so their selected "
                         f"rows cannot be saved as one dataset ({err}); select from one dataset at a time") from err
    whole.select([int(i) for i in indices]).save_to_disk(out_dir)
