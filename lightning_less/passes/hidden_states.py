"""The hidden-state pass of RDS and RDS+: each example's pooled final-layer hidden state, as a ``trainer.predict`` pass.

:class:`HiddenStateModule` runs the model over padded batches (the whole formatted example,
prompt and response) and pools the last hidden layer over each example's real tokens
(docs/algorithms.md):

* ``pooling="last"`` (RDS): the hidden state at the last real token;
* ``pooling="weighted_mean"`` (RDS+, Ivison et al. 2025): the mean over the real tokens
  with weights proportional to their position ``1, 2, ..., T`` (normalised to sum 1), so
  later tokens, which have seen more of the example, weigh more;
* ``pooling="response_mean"`` (``rds_response``): the plain mean over the response tokens
  (those with a label, the tokens LESS's loss is taken on), so the instruction's wording
  (its surface form) enters only through what the response tokens attend to.

Pooling looks only at the attention mask, so left and right padding give the same
features. The rows go into a :class:`~lightning_less.stores.datastore.GradientDatastore`
(``feature_kind="hidden"``, one array ``final_layer`` of the hidden size, the pooling in the
manifest) through the shared :class:`~lightning_less.callbacks.store_writer.ShardedStoreWriter`:
resumable, one shard per rank under DDP merged by rank 0, equal to one process.
:func:`compute_hidden_states` runs it and returns the features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from lightning_less.callbacks.store_writer import ShardedStoreWriter, batch_rows
from lightning_less.data.datamodule import IGNORE_INDEX
from lightning_less.data.records import file_sha256
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.provenance import DataIdentity

POOLINGS = ("last", "weighted_mean", "response_mean")
FEATURE_KIND = "hidden"
ARRAY_NAME = "final_layer"
NO_PROJECTOR = {"kind": "none"}


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``hidden`` [b, t, h] over the real tokens of ``attention_mask`` [b, t] (any padding side) to [b, h].

    ``response_mean`` needs ``labels`` [b, t] (``-100`` off the response).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = attention_mask.to(hidden.dtype)
    if pooling == "response_mean":
        if labels is None:
            raise ValueError("pooling='response_mean' needs the labels (the response tokens)")
        response = (labels != IGNORE_INDEX).to(hidden.dtype) * mask
        return torch.einsum("bt,bth->bh", response / response.sum(dim=1, keepdim=True), hidden)
    if pooling == "last":
        # The last real token is the one with the largest position among the real ones.
        positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
        last = (positions * attention_mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    # Weight t for the t-th real token (1-based), 0 for padding, normalised per example.
    weights = torch.cumsum(mask, dim=1) * mask
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.einsum("bt,bth->bh", weights, hidden)


def model_fingerprint(model_name_or_path: str) -> dict[str, Any]:
    """The model as its name and, for a local directory, its weight files' sha256."""
    path = Path(model_name_or_path)
    if not path.is_dir():
        return {"name": str(model_name_or_path)}
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {"name": path.name, "weights_sha256": {p.name: file_sha256(p) for p in weights}}


class HiddenStateModule(pl.LightningModule):
    """Pooled final-layer hidden states of every example, in ``predict_step``; a :class:`StorePass`.

    Args:
        model_name_or_path: the causal LM whose hidden states are pooled (a name, a
            ``save_pretrained`` directory or ``builtin:tiny-llama``).
        output_dir: the store to write (a compatible unfinished one is resumed).
        pooling: ``"last"`` (RDS) or ``"weighted_mean"`` (RDS+).
        dtype: weights dtype (see ``load_causal_lm``).
        overwrite: replace an existing store built differently (otherwise refused).
    """

    def __init__(self, model_name_or_path: str, output_dir: str | os.PathLike, pooling: str = "weighted_mean",
                 dtype: str | None = None, overwrite: bool = False) -> None:
        super().__init__()
        from lightning_less.models.loading import load_causal_lm

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model_name_or_path = str(model_name_or_path)
        self.pooling = pooling
        self.dtype_name = dtype
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.model = load_causal_lm(self.model_name_or_path, dtype=dtype)
        self.model.eval()
        self.model.requires_grad_(False)
        self.store: GradientDatastore | None = None
        self.skip = False
        self.done: dict[str, np.ndarray] = {}

    @override
    def configure_callbacks(self):
        return [ShardedStoreWriter("hidden-state store")]

    @override
    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise RuntimeError("HiddenStateModule only runs `predict` (the hidden-state pass)")

    def store_spec(self, data: DataIdentity) -> tuple[dict[str, Any], list[str], list[int], str]:
        """What :class:`ShardedStoreWriter` needs to create (or resume) the store (it records the data itself)."""
        manifest = {"feature_kind": FEATURE_KIND, "projector": NO_PROJECTOR, "pooling": self.pooling, "layer": "last",
                    "model": model_fingerprint(self.model_name_or_path), "model_dtype": self.dtype_name}
        return manifest, [ARRAY_NAME], [int(self.model.config.hidden_size)], "float32"

    @override
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        if self.skip:
            return None
        index = batch_rows(self.trainer, batch)
        todo = ~self.done[ARRAY_NAME][index]
        if not todo.any():
            return None
        keep = torch.as_tensor(np.flatnonzero(todo), device=batch["input_ids"].device)
        mask = batch["attention_mask"][keep]
        with torch.no_grad():
            hidden = self.model(input_ids=batch["input_ids"][keep], attention_mask=mask,
                                output_hidden_states=True).hidden_states[-1]
            pooled = pool_hidden_states(hidden.float(), mask, self.pooling, batch["labels"][keep])
        return {"rows": [(ARRAY_NAME, pooled.size(1), index[todo], pooled.cpu().numpy())]}


def compute_hidden_states(
    model_name_or_path: str,
    files: Sequence[str],
    output_dir: str | os.PathLike,
    pooling: str = "weighted_mean",
    max_length: int = 2048,
    batch_size: int = 16,
    padding_side: str = "right",
    template: str = "tulu",
    trainer_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    allow_excluded: bool = False,
    predict_batching: str = "length",
) -> np.ndarray:
    """Run the hidden-state pass of ``model_name_or_path`` over ``files`` into ``output_dir``; return [n, hidden].

    Examples without a response token after truncation (the dataset's ``dropped``) are
    refused, unless ``allow_excluded``: their rows are then zeros, for a caller that leaves
    them out itself (the selection runner never selects them). Batches are grouped by
    length unless ``predict_batching="file_order"`` (``InstructionDataModule``).
    """
    from lightning_less.data.datamodule import InstructionDataModule

    module = HiddenStateModule(model_name_or_path, output_dir, pooling=pooling, overwrite=overwrite)
    data = InstructionDataModule(predict_files=list(files), tokenizer_name_or_path=model_name_or_path,
                                 max_length=max_length, template=template, eval_batch_size=batch_size,
                                 padding_side=padding_side, predict_batching=predict_batching)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
              **(trainer_kwargs or {})}
    pl.Trainer(**kwargs).predict(module, datamodule=data, return_predictions=False)
    store = GradientDatastore.open(output_dir)
    excluded = store.manifest.get("excluded_indices", [])
    if excluded and not allow_excluded:
        raise ValueError(f"{len(excluded)} examples of {list(files)} have no response token after truncation "
                         f"(e.g. indices {excluded[:5]}): raise max_length")
    return np.asarray(store.features(ARRAY_NAME, store.dims[0]), dtype=np.float32)
