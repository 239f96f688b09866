"""``InstructionDataset`` and ``InstructionDataModule``: jsonl pools and target sets as batches."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from typing_extensions import override

from lightning_less.data.batching import LengthGroupedBatchSampler, PredictBatching, check_predict_batching
from lightning_less.data.collate import InstructionCollator  # re-exported: callers import it from here
from lightning_less.data.formatting import (
    IGNORE_INDEX,
    TemplateName,
    encode_messages,
    has_response_token,
    tokenizer_fingerprint,
    tulu_prompt,
)
from lightning_less.data.records import Record, file_sha256, read_records
from lightning_less.errors import InputError
from lightning_less.models.loading import load_tokenizer

#: ``data_fingerprint()["kind"]`` of data read from files (jsonl records, tokenized here).
FILES_KIND = "files"


@runtime_checkable
class FingerprintedData(Protocol):
    """Data that says what it is: met by a dataset or a datamodule that a predict pass runs over.

    The gradient, trajectory (and hidden-state) passes record ``data_fingerprint()`` in their
    store's manifest; a resumed pass and every consumer of the store compare it with the
    data they are given (docs/architecture.md, "Running a pass on your own project").
    Data that does not offer it is identified by a hash of its token ids and labels
    instead (``lightning_less.stores.provenance``).

    Rows of the store are example indices ``0 .. len(dataset) + len(excluded_indices) - 1``:
    the batches' ``index`` entries. A source that lists excluded indices must put ``index``
    in its batches (without ``index``, an example's row is its position in the dataset).
    """

    def data_fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the examples and of how they become token ids.

        Two fingerprints are equal exactly when the batches would hold the same examples;
        ``kind`` names the scheme (``"files"``: jsonl files with their sha256,
        ``n_examples``, ``max_length``, ``template`` and ``tokenizer``).
        """
        ...

    @property
    def excluded_indices(self) -> list[int]:
        """Indices that are part of the numbering but hold no example (no response token left)."""
        ...


def sample_fraction(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``round(n * fraction)`` (at least 1) positions out of ``n``, sorted.

    The seed given is the seed used (the reference code ignored it, docs/algorithms.md §5).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(n * fraction)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[:k])


@dataclass(frozen=True)
class EncodedExample:
    record: Record
    input_ids: list[int]
    labels: list[int]


class LazyExamples(Sequence[EncodedExample]):
    """The kept examples of an :class:`InstructionDataset`, each read and tokenized when accessed."""

    def __init__(self, dataset: "InstructionDataset") -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return int(self.dataset.example_indices.size)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.dataset.encode(self.dataset.records[int(self.dataset.example_indices[i])])


class InstructionDataset(Dataset):
    """Instruction examples with their dataset indices, read and tokenized when a batch asks for them.

    The records are indexed (validated, a few integers each) and tokenized once in a
    streaming pass that keeps only integers: examples left with no response token after
    truncation are reported (count and ids in ``dropped``) and left out, so they are never
    trained on nor given a NaN loss; ``lengths`` holds each kept example's token count.
    ``__getitem__`` reads and tokenizes its example again.

    Args:
        files: jsonl files (Tülu ``messages``, ``prompt``/``completion`` or Alpaca) or
            ``datasets`` inputs (:mod:`lightning_less.data.sources`).
        tokenizer: a Hugging Face tokenizer.
        max_length: truncate each example to this many tokens.
        template: ``"tulu"`` or ``"chat_template"``.
        fraction: keep a seeded random fraction of the records (LESS's warmup subset), drawn
            by :func:`sample_fraction` before tokenization (after ``indices``).
        seed: the seed of that sample.
        with_generation: also keep each example's prompt (up to its last assistant turn) and
            reference answer, for exact-match evaluation.
        indices: keep only these record indices (e.g. a selection), in this order.
    """

    def __init__(
        self,
        files: Sequence[str] | str,
        tokenizer,
        max_length: int = 2048,
        template: TemplateName = "tulu",
        fraction: float | None = None,
        seed: int = 0,
        with_generation: bool = False,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.files = [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = template
        self.with_generation = with_generation
        self.subset = indices is not None or fraction is not None
        self.records = read_records(self.files)
        n = len(self.records)
        chosen = np.arange(n, dtype=np.int64)
        if indices is not None:
            chosen = np.asarray([int(i) for i in indices], dtype=np.int64)
            bad = chosen[(chosen < 0) | (chosen >= n)]
            if bad.size:
                raise IndexError(f"indices {bad[:5].tolist()} are outside the {n} records of {self.files}")
        if fraction is not None:
            # Sample records, not encoded examples: the subset then depends only on the
            # files and the seed, not on the tokenizer or max_length (LESS-T reuses it
            # across models).
            chosen = chosen[sample_fraction(chosen.size, fraction, seed)]
        # One streaming pass (in file order when the whole pool is used) that keeps integers only.
        ordered = self.records if indices is None and fraction is None else (self.records[int(i)] for i in chosen)
        lengths = np.zeros(chosen.size, dtype=np.int32)
        keep = np.zeros(chosen.size, dtype=bool)
        for position, record in enumerate(ordered):
            ids, labels = encode_messages(record.messages, tokenizer, max_length=max_length, template=template)
            lengths[position], keep[position] = len(ids), has_response_token(labels)
        self.example_indices = chosen[keep]
        self.lengths = lengths[keep]
        self.dropped_indices = chosen[~keep]
        if self.dropped_indices.size:
            dropped = self.dropped_indices
            shown = ", ".join(self.records[int(i)].id for i in dropped[:10])
            more = "" if dropped.size <= 10 else f" and {dropped.size - 10} more"
            rank_zero_warn(
                f"{dropped.size} example(s) of {self.files} have no response token left after truncation to "
                f"max_length={max_length} and are left out: {shown}{more}"
            )
        if not self.example_indices.size:
            raise ValueError(f"no usable examples in {self.files}")

    @property
    def examples(self) -> LazyExamples:
        """The kept examples (read and tokenized on access)."""
        return LazyExamples(self)

    @property
    def dropped(self) -> list[Record]:
        """The records left out (no response token after truncation)."""
        return [self.records[int(i)] for i in self.dropped_indices]

    def encode(self, record: Record) -> EncodedExample:
        """One record tokenized as training sees it."""
        ids, labels = encode_messages(record.messages, self.tokenizer, max_length=self.max_length,
                                      template=self.template)
        return EncodedExample(record, ids, labels)

    def __len__(self) -> int:
        return int(self.example_indices.size)

    def data_fingerprint(self) -> dict[str, Any]:
        """The files with their sha256, the number of records and the tokenization (:class:`FingerprintedData`).

        Raises:
            InputError: the dataset is a sample or a selection of its files (a pass runs over whole files).
        """
        if self.subset:
            raise InputError(f"a dataset of a sample or a selection of {self.files} has no data fingerprint: "
                             "a predict pass runs over whole files (give them as predict_files)")
        fingerprint = {
            "kind": FILES_KIND,
            "files": [{"path": f, "sha256": file_sha256(f)} for f in self.files],  # a dataset directory: its files
            "n_examples": len(self.records),
            "max_length": self.max_length,
            "template": self.template,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
        }
        if self.template == "chat_template":
            template = self.tokenizer.chat_template or ""
            fingerprint["tokenizer"]["chat_template_sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
        return fingerprint

    @property
    def excluded_indices(self) -> list[int]:
        """Records with no response token after truncation (``dropped``): no example, but a row."""
        return self.dropped_indices.tolist()

    @property
    def excluded_ids(self) -> list[str]:
        """The ids of those records (a store's manifest names them beside their indices)."""
        return [r.id for r in self.dropped]

    def __getitem__(self, i: int) -> dict:
        ex = self.encode(self.records[int(self.example_indices[i])])
        item = {"input_ids": ex.input_ids, "labels": ex.labels, "index": ex.record.index}
        if self.with_generation:
            messages = list(ex.record.messages)
            last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
            item["prompt_ids"] = self.prompt_ids(messages[:last])
            item["reference"] = messages[last]["content"].strip()
        return item

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a generation prompt (the conversation, then an open assistant turn)."""
        if self.template == "chat_template":
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(tulu_prompt(messages, self.tokenizer.eos_token), add_special_tokens=False)["input_ids"]
            if self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id] + ids
        return ids[-self.max_length :]


class InstructionDataModule(pl.LightningDataModule):
    """Instruction pools and target sets from jsonl files, for ``fit``, ``validate``, ``test`` and ``predict``.

    Args:
        train_files: jsonl files to train on.
        val_files: jsonl files to validate on (loss and exact match).
        test_files: jsonl files to test on; defaults to ``val_files``.
        predict_files: jsonl files for the gradient / trajectory passes.
        tokenizer_name_or_path: tokenizer name or path (linked to the model's by the CLI).
        max_length: truncation length in tokens.
        template: ``"tulu"`` (docs/algorithms.md §4) or ``"chat_template"`` (the tokenizer's).
        train_fraction: train on a seeded random fraction of ``train_files`` (LESS warmup: 0.05).
        seed: seed of that sample.
        batch_size: training batch size per device.
        eval_batch_size: batch size of validation, test and predict.
        padding_side: ``"right"`` or ``"left"``.
        num_workers: data loader workers.
        train_indices: train only on these record indices of ``train_files`` (a selection).
        predict_batching: ``"length"``: predict batches of examples of similar length, longest first
            (:mod:`lightning_less.data.batching`); ``"file_order"``: consecutive examples.
        predict_max_tokens: with ``"length"``, at most this many padded tokens in a predict batch.
    """

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        predict_files: list[str] | None = None,
        tokenizer_name_or_path: str | None = None,
        max_length: int = 2048,
        template: TemplateName = "tulu",
        train_fraction: float | None = None,
        seed: int = 0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        padding_side: str = "right",
        num_workers: int = 0,
        train_indices: list[int] | None = None,
        predict_batching: PredictBatching = "length",
        predict_max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_predict_batching(predict_batching, predict_max_tokens)
        self.save_hyperparameters()
        self.train_files = train_files
        self.val_files = val_files
        self.test_files = test_files
        self.predict_files = predict_files
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.max_length = max_length
        self.template = template
        self.train_fraction = train_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.padding_side = padding_side
        self.num_workers = num_workers
        self.train_indices = train_indices
        self.predict_batching = predict_batching
        self.predict_max_tokens = predict_max_tokens
        self._tokenizer = None
        self.datasets: dict[str, InstructionDataset] = {}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.tokenizer_name_or_path is None:
                raise ValueError("InstructionDataModule needs tokenizer_name_or_path (the CLI links it to the model's)")
            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path)
        return self._tokenizer

    def data_fingerprint(self) -> dict[str, Any]:
        """The predict dataset's fingerprint (:class:`FingerprintedData`): what the passes record."""
        return self._dataset("predict").data_fingerprint()

    @property
    def excluded_indices(self) -> list[int]:
        """The predict dataset's records without a response token."""
        return self._dataset("predict").excluded_indices

    @property
    def excluded_ids(self) -> list[str]:
        """Their ids."""
        return self._dataset("predict").excluded_ids

    def _dataset(self, split: str) -> InstructionDataset:
        if split in self.datasets:
            return self.datasets[split]
        files = {
            "train": self.train_files,
            "val": self.val_files,
            "test": self.test_files or self.val_files,
            "predict": self.predict_files,
        }[split]
        if not files:
            raise ValueError(f"no {split} files given to InstructionDataModule ({split}_files)")
        kwargs = dict(tokenizer=self.tokenizer, max_length=self.max_length, template=self.template)
        if split == "train":
            ds = InstructionDataset(files, fraction=self.train_fraction, seed=self.seed, indices=self.train_indices, **kwargs)
        else:
            ds = InstructionDataset(files, with_generation=split in ("val", "test"), **kwargs)
        rank_zero_info(f"{split}: {len(ds)} examples from {', '.join(map(str, files))}")
        self.datasets[split] = ds
        return ds

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._dataset("train")
            if self.val_files:
                self._dataset("val")
        elif stage == "validate":
            self._dataset("val")
        elif stage == "test":
            self._dataset("test")
        elif stage == "predict":
            self._dataset("predict")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._dataset(split)
        collate = InstructionCollator(self.tokenizer.pad_token_id, self.padding_side)
        if split == "predict" and self.predict_batching == "length":
            # Made here, in the hook, so that Lightning can rebuild it around its DDP sampler.
            batches = LengthGroupedBatchSampler(SequentialSampler(ds), self.eval_batch_size, lengths=ds.lengths,
                                                max_tokens=self.predict_max_tokens)
            return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=self.num_workers)
        size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(ds, batch_size=size, shuffle=shuffle, collate_fn=collate, num_workers=self.num_workers)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        # No validation files means no validation loop (Lightning skips an empty list).
        return self._loader("val", shuffle=False) if self.val_files else []

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
