"""Provenance of a store: the data and the snapshots it was computed from, recorded by a pass, checked by its users.

A predict pass (gradients, loss trajectories, hidden states) records in its store's
manifest:

* ``data``: the fingerprint of the data it ran over. Data that offers one
  (:class:`~lightning_less.data.datamodule.FingerprintedData`, e.g. ``InstructionDataModule``:
  files + sha256 + tokenization) gives its own; any other ``DataLoader`` of HF-style
  batches is identified by :func:`token_identity`, a sha256 over per-example digests of
  its token ids and labels, in row order (``kind: "token_sha256"``);
* ``excluded_indices``: rows without an example (no response token);
* for the gradient pass, ``snapshot_info``: each snapshot's files' sha256.

Every consumer compares what it is given with that record and raises
:class:`~lightning_less.errors.IncompatibleError` naming both sides and what differs:
:func:`check_files` (jsonl files given to ``select``, ``compare``, the pipeline),
:func:`check_data` (any data source, e.g. an own ``DataLoader``),
:func:`check_same_snapshots` and :func:`check_same_tokenization` (a pool store and a
target store scored together). Files are hashed once per version (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_less.data.datamodule import FILES_KIND, FingerprintedData
from lightning_less.data.records import file_sha256
from lightning_less.errors import IncompatibleError, InputError
from lightning_less.stores.manifest import diff as _diff
from lightning_less.stores.manifest import snapshot_mismatch

TOKENS_KIND = "token_sha256"
#: How a ``token_sha256`` fingerprint is computed (recorded beside it).
TOKENS_SCHEME = ("per example: sha256 of its int64 input_ids, then its int64 labels, at attention_mask == 1, first 16 "
                 "bytes; the fingerprint: sha256 of the rows' digests in row order (zeros for rows without an example)")
DIGEST_BYTES = 16
BATCH_KEYS = ("input_ids", "attention_mask", "labels")



# ------------------------------------------------------------------ what the model is
#: The files of a snapshot directory that decide the features (their sha256 is the snapshot's identity).
SNAPSHOT_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer_moments.safetensors", "snapshot.json")


def snapshot_files_sha256(path: str | os.PathLike) -> dict[str, str]:
    """``{file: sha256}`` of the files of a snapshot directory that decide the features."""
    return {f: file_sha256(os.path.join(path, f)) for f in SNAPSHOT_FILES if os.path.exists(os.path.join(path, f))}


def sample_indices(numel: int, count: int = 16) -> list[int]:
    """``min(count, numel)`` evenly spaced positions ``0 .. numel - 1`` (first and last included), in exact integers.

    Position ``i`` is ``floor(i * (numel - 1) / (count - 1))``. Float arithmetic would not do:
    float32 ``torch.linspace`` rounds the last position of a parameter over 2^24 elements
    past its end (an IndexError on SmolLM2's and Llama-2-7B's embeddings).
    """
    count = min(count, numel)
    if count <= 1:
        return [0] * count
    return [i * (numel - 1) // (count - 1) for i in range(count)]


def weights_sample_sha256(model: torch.nn.Module, skip: set[str]) -> str:
    """A sha256 of 16 evenly spaced values (as bfloat16) of every parameter not in ``skip``: the base model's
    identity, cheap at any size (the snapshots hold only the adapter, so the base is checked apart)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in skip:
                flat = param.detach().reshape(-1)
                picks = torch.tensor(sample_indices(flat.numel()), dtype=torch.long, device=flat.device)
                h.update(name.encode())
                h.update(flat[picks].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ what the data is
@dataclass
class DataIdentity:
    """The data of a pass as its store records it."""

    fingerprint: dict[str, Any]
    """The manifest's ``data``."""
    n_examples: int
    """Rows of the store."""
    excluded_indices: list[int]
    """Rows without an example; the passes write zeros there and never compute them."""
    digests: np.ndarray | None = None
    """``[n_examples, 16]`` uint8 per-row digests (``token_sha256`` data only), to check the batches against."""


def check_batch(batch: Any) -> None:
    """Refuse a batch that is not an HF-style dict of ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    if not isinstance(batch, Mapping):
        raise InputError(f"a predict pass needs dict batches with {list(BATCH_KEYS)} (and optionally 'index'), "
                         f"got a {type(batch).__name__}")
    missing = [k for k in BATCH_KEYS if not isinstance(batch.get(k), torch.Tensor)]
    if missing:
        raise InputError(f"the batches lack the tensors {missing}: a predict pass needs {list(BATCH_KEYS)} "
                         "([B, T], labels -100 where not predicted) and optionally 'index' [B]")


def example_digests(batch: Mapping[str, torch.Tensor]) -> np.ndarray:
    """``[B, 16]`` uint8: each example's digest of its real tokens' ids and labels (padding-side and width agnostic)."""
    ids, mask, labels = (batch[k].detach().cpu().long() for k in BATCH_KEYS)
    out = np.zeros((ids.shape[0], DIGEST_BYTES), dtype=np.uint8)
    for b in range(ids.shape[0]):
        real = mask[b] != 0
        h = hashlib.sha256(ids[b][real].numpy().astype("<i8").tobytes())
        h.update(labels[b][real].numpy().astype("<i8").tobytes())
        out[b] = np.frombuffer(h.digest()[:DIGEST_BYTES], dtype=np.uint8)
    return out


def has_response(batch: Mapping[str, torch.Tensor]) -> np.ndarray:
    """``[B]`` bool: the example has a predicted token (a label other than -100 after the first position)."""
    return (batch["labels"][:, 1:] != -100).any(dim=1).cpu().numpy()


def _in_order(loader: DataLoader) -> DataLoader:
    """The loader's dataset and collate function, unsharded and in dataset order, in the main process."""
    if loader.batch_sampler is None:  # automatic batching off: each item is a batch already
        return DataLoader(loader.dataset, batch_size=None, shuffle=False, collate_fn=loader.collate_fn)
    return DataLoader(loader.dataset, batch_size=loader.batch_size or 1, shuffle=False, collate_fn=loader.collate_fn)


def token_identity(loader: DataLoader) -> DataIdentity:
    """Identify data without a fingerprint by its token ids and labels, reading it once in dataset order.

    An example's row is its batch ``index`` when batches carry one, else its position in
    the dataset. Examples without a predicted token, and indices no batch holds, are
    excluded rows.
    """
    if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
        raise InputError("data without a data_fingerprint() must be a map-style dataset (with __len__) in a DataLoader; "
                         "an iterable dataset has no stable example positions")
    rows: list[np.ndarray] = []
    digests: list[np.ndarray] = []
    empty: list[np.ndarray] = []
    position = 0
    for batch in _in_order(loader):
        check_batch(batch)
        size = batch["input_ids"].shape[0]
        if "index" in batch:
            index = torch.as_tensor(batch["index"]).cpu().numpy().astype(np.int64).reshape(-1)
        elif loader.batch_sampler is None:
            raise InputError("batches of a DataLoader without automatic batching (batch_size=None) must hold 'index'")
        else:
            index = np.arange(position, position + size)
        position += size
        rows.append(index)
        digests.append(example_digests(batch))
        empty.append(index[~has_response(batch)])
    index = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    if index.size == 0:
        raise InputError("the predict data holds no example")
    if index.min() < 0 or np.unique(index).size != index.size:
        raise InputError("the batches' 'index' values must be distinct and non-negative")
    n = int(index.max()) + 1
    table = np.zeros((n, DIGEST_BYTES), dtype=np.uint8)
    table[index] = np.concatenate(digests)
    holds = np.zeros(n, dtype=bool)
    holds[index] = True
    holds[np.concatenate(empty)] = False
    fingerprint = {"kind": TOKENS_KIND, "n_examples": n, "sha256": hashlib.sha256(table.tobytes()).hexdigest(),
                   "scheme": TOKENS_SCHEME}
    return DataIdentity(fingerprint, n, np.flatnonzero(~holds).tolist(), table)


def fingerprinted_identity(source: FingerprintedData, n_items: int) -> DataIdentity:
    """The identity of data with its own fingerprint, whose dataset holds ``n_items`` examples."""
    fingerprint = source.data_fingerprint()
    excluded = sorted(int(i) for i in source.excluded_indices)
    n = n_items + len(excluded)
    if fingerprint.get("n_examples", n) != n:
        raise InputError(f"the data's fingerprint counts {fingerprint['n_examples']} examples, but its dataset holds "
                         f"{n_items} and it excludes {len(excluded)}")
    return DataIdentity(fingerprint, n, excluded)


def identify_data(source: Any) -> DataIdentity:
    """What a pass over ``source`` records: a ``LightningDataModule`` (its predict data), a ``DataLoader`` or a dataset."""
    import lightning.pytorch as pl

    if isinstance(source, pl.LightningDataModule):
        source.prepare_data()
        source.setup("predict")
        loader = source.predict_dataloader()
        if isinstance(source, FingerprintedData):
            return fingerprinted_identity(source, len(loader.dataset))
        source = loader
    if isinstance(source, DataLoader):
        if isinstance(source.dataset, FingerprintedData):
            return fingerprinted_identity(source.dataset, len(source.dataset))
        return token_identity(source)
    if isinstance(source, FingerprintedData):
        return fingerprinted_identity(source, len(source))
    raise InputError(f"cannot identify data given as a {type(source).__name__}: give a LightningDataModule, a DataLoader "
                     "or a dataset with data_fingerprint()")


# ------------------------------------------------------------------ checks at use
def _data_of(manifest: Mapping[str, Any], label: str) -> dict[str, Any]:
    data = manifest.get("data")
    if not isinstance(data, Mapping) or not data:
        raise IncompatibleError(f"{label} records no data fingerprint (it was not written by a pass of this version): "
                                "compute it again")
    return dict(data)


def identity_view(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """A fingerprint without what does not change the data: file paths (their sha256 stays) and notes."""
    view = {k: v for k, v in fingerprint.items() if k != "scheme"}
    if "files" in view:
        view["files"] = [f.get("sha256") for f in view["files"]]
    return view


def _describe_files(entries: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{e.get('path')} (sha256 {str(e.get('sha256'))[:12]}…)" for e in entries)


def check_files(manifest: Mapping[str, Any], files: Sequence[str | os.PathLike], label: str, files_label: str) -> None:
    """Refuse a store computed on other files than ``files`` (by sha256, in order).

    Args:
        manifest: the store's manifest.
        files: the files it is used with.
        label: how to name the store, e.g. ``"--pool_store runs/x"``.
        files_label: how to name the files, e.g. ``"--pool"``.
    """
    data = _data_of(manifest, label)
    if data.get("kind", FILES_KIND) != FILES_KIND:
        raise IncompatibleError(f"{label} was computed on data given as token ids ({data.get('kind')}), not on files, "
                                f"so it cannot be checked against {files_label} {[str(f) for f in files]}: use it "
                                "with that data (lightning_less.stores.provenance.check_data, or "
                                "lightning_less.selection.methods.less.select_from_stores with pool_data / target_data)")
    recorded = list(data.get("files", []))
    given = [{"path": str(f), "sha256": file_sha256(f)} for f in files]
    if [e.get("sha256") for e in recorded] != [e["sha256"] for e in given]:
        raise IncompatibleError(f"{label} was computed on other data than {files_label}: it records "
                                f"{_describe_files(recorded)}, {files_label} is {_describe_files(given)}; use the store "
                                f"of these files (or compute it), or give the files it was computed on")


def check_data(manifest: Mapping[str, Any], source: Any, label: str, data_label: str = "the data given") -> DataIdentity:
    """Refuse a store computed on other data than ``source`` (any source :func:`identify_data` takes); returns its identity."""
    recorded = _data_of(manifest, label)
    identity = identify_data(source)
    diffs = _diff(identity_view(recorded), identity_view(identity.fingerprint))
    if diffs:
        raise IncompatibleError(f"{label} was computed on other data than {data_label}: " + "; ".join(diffs))
    if manifest.get("n_examples") not in (None, identity.n_examples):
        raise IncompatibleError(f"{label} has {manifest['n_examples']} rows, {data_label} {identity.n_examples}")
    return identity


def _pair_diff(a: Any, b: Any, what: str, a_label: str, b_label: str) -> None:
    diffs = _diff(a, b)
    if diffs:
        raise IncompatibleError(f"{a_label} and {b_label} {what}: " + "; ".join(diffs[:6])
                                + (f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""))


def check_same_snapshots(a: Mapping[str, Any], b: Mapping[str, Any], a_label: str, b_label: str) -> None:
    """Refuse two gradient stores whose snapshots are not byte-identical (every snapshot file's sha256) or whose
    base models differ (the weights sample the gradient pass records)."""
    for label, manifest in ((a_label, a), (b_label, b)):
        if not manifest.get("snapshot_info") or not all("sha256" in s for s in manifest["snapshot_info"]):
            raise IncompatibleError(f"{label} records no sha256 of its snapshots' files (it was not written by a "
                                    "gradient pass of this version): compute it again")
    refusal = snapshot_mismatch(a["snapshot_info"], b["snapshot_info"], a_label, b_label)
    if refusal is not None:
        raise refusal
    weights = lambda m: (m.get("model") or {}).get("weights_sample_sha256")  # noqa: E731
    if weights(a) and weights(b):
        # Before the exact-integer sample positions, many parameters of over 1.2 million elements were sampled at
        # slightly other positions, so a store from before that fix differs from a new one on the same model.
        _pair_diff(weights(a), weights(b), "were computed on base models with different weights (or one of them was "
                   "written before lightning-less sampled the weights at exact positions: compute that one again)",
                   a_label, b_label)


def check_same_tokenization(a: Mapping[str, Any], b: Mapping[str, Any], a_label: str, b_label: str) -> None:
    """Refuse two stores whose data were tokenized differently (``max_length``, ``template``, ``tokenizer``)."""
    keys = ("max_length", "template", "tokenizer")
    da, db = _data_of(a, a_label), _data_of(b, b_label)
    _pair_diff({k: da.get(k) for k in keys}, {k: db.get(k) for k in keys}, "were tokenized differently", a_label, b_label)
