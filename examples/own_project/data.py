"""A datamodule of token ids, written as in any Lightning project (no lightning-less code).

Every example is ``[BOS, task, x_1..x_L, SEP, y_1..y_L, EOS]``: a task token, a random
string of symbols and its answer under that task (copy, reverse, sort or shift by one),
written in the task's own answer alphabet (as tasks of a real pool differ in what their
answers look like). Only ``y`` and ``EOS`` are predicted (labels -100 elsewhere, the Hugging Face
convention). Batches hold ``input_ids``, ``attention_mask`` and ``labels``; no ``index``.
The pool mixes the four tasks; the targets are a few ``reverse`` examples.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

PAD, BOS, SEP, EOS = 0, 1, 2, 3
FIRST_SYMBOL, N_SYMBOLS = 4, 8
TASKS = ("copy", "reverse", "sort", "shift")
ALPHABET = {task: FIRST_SYMBOL + N_SYMBOLS * (1 + i) for i, task in enumerate(TASKS)}  # first answer symbol
TASK_TOKEN = {task: FIRST_SYMBOL + N_SYMBOLS * (1 + len(TASKS)) + i for i, task in enumerate(TASKS)}
VOCAB_SIZE = FIRST_SYMBOL + N_SYMBOLS * (1 + len(TASKS)) + len(TASKS)
TARGET_TASK = "reverse"


def answer(task: str, xs: list[int]) -> list[int]:
    """The answer of ``task`` on the symbols ``xs``, in the task's answer alphabet."""
    values = [x - FIRST_SYMBOL for x in xs]
    if task == "reverse":
        values = values[::-1]
    elif task == "sort":
        values = sorted(values)
    elif task == "shift":
        values = [(v + 1) % N_SYMBOLS for v in values]
    return [ALPHABET[task] + v for v in values]


def make_examples(tasks: list[str], length: int, seed: int) -> list[dict]:
    """One example per task name, the symbols drawn from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for task in tasks:
        xs = [int(x) for x in rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + N_SYMBOLS, size=length)]
        prompt = [BOS, TASK_TOKEN[task], *xs, SEP]
        response = [*answer(task, xs), EOS]
        out.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response, "task": task})
    return out


class TokenDataset(Dataset):
    """A list of tokenized examples."""

    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {"input_ids": ex["input_ids"], "labels": ex["labels"]}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Right padding: ``input_ids`` with PAD, ``attention_mask`` 0 and ``labels`` -100 on padding."""
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), PAD, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(it["input_ids"]), torch.tensor(it["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TokenTaskDataModule(pl.LightningDataModule):
    """The pool (training, and prediction with ``predict_split="pool"``) and the targets (``predict_split="targets"``).

    Args:
        n_pool: pool examples (the four tasks in turn).
        n_targets: target examples (all ``reverse``).
        length: symbols per example.
        seed: seed of the symbols (the pool and targets differ).
        batch_size: batch size of every loader.
        train_indices: train on these pool examples only (e.g. a selection); default: all.
        predict_split: ``"pool"`` or ``"targets"``.
    """

    def __init__(self, n_pool: int = 64, n_targets: int = 6, length: int = 5, seed: int = 0, batch_size: int = 8,
                 train_indices: list[int] | None = None, predict_split: str = "pool") -> None:
        super().__init__()
        self.pool = make_examples([TASKS[i % len(TASKS)] for i in range(n_pool)], length, seed)
        self.targets = make_examples([TARGET_TASK] * n_targets, length, seed + 1)
        self.batch_size = batch_size
        self.train_indices = train_indices
        self.predict_split = predict_split

    @property
    def target_subtasks(self) -> list[str]:
        """Each target's subtask (for LESS's per-subtask means)."""
        return [ex["task"] for ex in self.targets]

    def loader(self, split: str, indices: list[int] | None = None, shuffle: bool = False) -> DataLoader:
        """The examples of ``split`` (``"pool"`` or ``"targets"``), or some of them, in batches."""
        examples = self.pool if split == "pool" else self.targets
        if indices is not None:
            examples = [examples[i] for i in indices]
        return DataLoader(TokenDataset(examples), batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate)

    @override
    def train_dataloader(self) -> DataLoader:
        return self.loader("pool", self.train_indices, shuffle=True)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split)
