"""Length-grouped predict batches: padding as sorted chunks, every example once, the token budget, DDP shares."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from lightning_less.data.batching import LengthGroupedBatchSampler, length_grouped_batches
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.data.formatting import encode_messages
from lightning_less.data.records import read_records
from lightning_less.errors import InputError
from lightning_less.models.loading import load_tokenizer
from tests.helpers import run_two_ranks

TINY = "builtin:tiny-llama"


def mixed_rows(n: int = 23) -> list[dict]:
    """Records whose lengths jump around in file order (a few long, many short), as real data's do."""
    return [{"id": f"m{i}", "prompt": "p" * (3 + (i * 37) % 29 + (60 if i % 5 == 0 else 0)),
             "completion": "c" * (1 + i % 4)} for i in range(n)]


def token_lengths(path: str) -> list[int]:
    """Each record's token count, encoded here one by one (not the dataset's own ``lengths``)."""
    tokenizer = load_tokenizer(TINY)
    return [len(encode_messages(r.messages, tokenizer, max_length=2048)[0]) for r in read_records([path])]


def padded_tokens(batches) -> int:
    return sum(int(b["input_ids"].numel()) for b in batches)


def _data(path: str, **kw) -> InstructionDataModule:
    dm = InstructionDataModule(predict_files=[path], tokenizer_name_or_path=TINY, eval_batch_size=4, **kw)
    dm.setup("predict")
    return dm


def test_length_grouped_is_the_default_and_pads_as_sorted_chunks(write_jsonl):
    path = write_jsonl("pool.jsonl", mixed_rows())
    lengths = token_lengths(path)
    grouped = list(_data(path).predict_dataloader())
    in_order = list(_data(path, predict_batching="file_order").predict_dataloader())
    # Every example exactly once, each batch's rows carried as its index.
    assert sorted(torch.cat([b["index"] for b in grouped]).tolist()) == list(range(len(lengths)))
    for batch in grouped:
        assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in batch["index"].tolist()]
    # Padded tokens: those of sorted lengths cut into chunks of 4 (longest first), computed independently.
    ordered = sorted(lengths, reverse=True)
    expected = sum(max(chunk) * len(chunk) for chunk in (ordered[i : i + 4] for i in range(0, len(ordered), 4)))
    assert padded_tokens(grouped) == expected
    assert padded_tokens(in_order) == sum(max(c) * len(c) for c in (lengths[i : i + 4] for i in range(0, len(lengths), 4)))
    assert padded_tokens(grouped) < 0.75 * padded_tokens(in_order)


def test_max_tokens_budget_is_kept_and_filled(write_jsonl):
    path = write_jsonl("pool.jsonl", mixed_rows())
    lengths = token_lengths(path)
    budget = 2 * max(lengths)  # the longest examples go two by two, short ones up to the batch size
    batches = list(_data(path, predict_max_tokens=budget).predict_dataloader())
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(len(lengths)))
    for k, batch in enumerate(batches):
        size, width = batch["input_ids"].shape
        assert size * width <= budget
        if k + 1 < len(batches):  # greedy: a batch stops at the batch size or where one more would break the budget
            assert size == 4 or (size + 1) * width > budget
    assert batches[0]["input_ids"].shape[0] == 2 and max(b["input_ids"].shape[0] for b in batches) == 4
    with pytest.raises(InputError, match="max_tokens"):
        _data(path, predict_max_tokens=max(lengths) - 1).predict_dataloader()


def test_wrong_settings_are_refused():
    with pytest.raises(InputError, match="predict_batching"):
        InstructionDataModule(predict_files=["x.jsonl"], tokenizer_name_or_path=TINY, predict_batching="sorted")
    with pytest.raises(InputError, match="predict_max_tokens"):
        InstructionDataModule(predict_files=["x.jsonl"], tokenizer_name_or_path=TINY, predict_batching="file_order",
                              predict_max_tokens=512)


def test_batch_sampler_groups_the_positions_it_is_given():
    lengths = np.array([5, 1, 9, 3, 7, 2, 8])
    # A rank's share (positions 1, 3, 5): grouped among themselves, longest first, drop_last honoured.
    sampler = LengthGroupedBatchSampler([1, 3, 5], batch_size=2, lengths=lengths)
    assert list(sampler) == [[3, 5], [1]] and len(sampler) == 2
    assert length_grouped_batches([1, 3, 5], lengths, 2, drop_last=True) == [[3, 5]]
    # Equal lengths keep the order given.
    assert length_grouped_batches([4, 0, 2], [1, 1, 1, 1, 1], 2) == [[4, 0], [2]]


def test_a_loader_made_outside_a_hook_is_refused_clearly():
    """Lightning rebuilds a predict batch sampler; it knows the lengths only of one made in predict_dataloader."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, SequentialSampler

    class Nothing(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def predict_step(self, batch, batch_idx):
            return batch

    items = [[0] * n for n in (3, 9, 1, 7, 5)]
    sampler = LengthGroupedBatchSampler(SequentialSampler(items), 2, lengths=[len(i) for i in items])
    loader = DataLoader(items, batch_sampler=sampler, collate_fn=lambda batch: [len(i) for i in batch])
    assert list(loader) == [[9, 7], [5, 3], [1]]  # usable as is outside Lightning
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(InputError, match="predict_dataloader hook"):
        trainer.predict(Nothing(), dataloaders=loader)


def test_two_gloo_ranks_get_disjoint_length_grouped_shares(write_jsonl, tmp_path):
    """Lightning rebuilds the batch sampler around its DDP sampler: each rank groups its own share by length."""
    path = write_jsonl("pool.jsonl", mixed_rows())
    lengths = token_lengths(path)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch, lightning.pytorch as pl
        from lightning.pytorch.callbacks import BasePredictionWriter
        from lightning_less.data.datamodule import InstructionDataModule

        class Record(BasePredictionWriter):  # what the store writer sees: the indices Lightning tracked, the batch
            def __init__(self):
                super().__init__(write_interval="batch")
                self.seen = []
            def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
                assert list(batch_indices) == batch["index"].tolist()  # batch_rows' fallback agrees with the rows
                self.seen.append(batch["index"].tolist())

        class Nothing(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(1, 1)
            def predict_step(self, batch, batch_idx):
                return None

        dm = InstructionDataModule(predict_files=[{path!r}], tokenizer_name_or_path="builtin:tiny-llama", eval_batch_size=4)
        record = Record()
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[record])
        trainer.predict(Nothing(), datamodule=dm, return_predictions=False)
        with open({str(tmp_path)!r} + f"/rank_{{trainer.global_rank}}.json", "w") as f:
            json.dump(record.seen, f)
    """))
    run_two_ranks(script)
    seen = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    for rank, batches in enumerate(seen):
        share = list(range(rank, len(lengths), 2))  # what Lightning's unrepeated DDP sampler deals this rank
        assert batches == length_grouped_batches(share, lengths, 4)
    flat = [i for batches in seen for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # disjoint, and every example once
