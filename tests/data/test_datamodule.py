"""InstructionDataset, InstructionCollator and InstructionDataModule: dropping, sampling, batches, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_less.data.datamodule import (
    InstructionCollator,
    InstructionDataModule,
    InstructionDataset,
    load_tokenizer,
    sample_fraction,
)
from lightning_less.data.formatting import IGNORE_INDEX, encode_messages
from lightning_less.modules.losses import per_example_loss

TINY = "builtin:tiny-llama"


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM

    from lightning_less.models.tiny import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY), dtype=torch.float32)
    return model.eval()


def pool_rows(n: int) -> list[dict]:
    """``n`` records of varied formats and lengths."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": "q" * (1 + i % 5)}, {"role": "assistant", "content": f"answer {i}"}]})
        elif i % 3 == 1:
            rows.append({"prompt": f"prompt number {i}", "completion": "c" * (1 + i % 4)})
        else:
            rows.append({"instruction": "Do it", "input": "x" * (i % 7), "output": f"done {i}"})
    return rows


def losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return per_example_loss(logits, batch["labels"])


# --------------------------------------------------------------------------- dropping


def test_examples_without_response_token_are_dropped_and_reported(char_tokenizer, write_jsonl):
    long_prompt = "p" * 60
    path = write_jsonl(
        "pool.jsonl",
        [
            {"id": "short-1", "prompt": "hi", "completion": "yo"},
            {"id": "long-a", "prompt": long_prompt, "completion": "yo"},
            {"prompt": "hey", "completion": "ok"},
            {"prompt": long_prompt, "completion": "late"},  # id pool.jsonl:4
        ],
    )
    with pytest.warns(UserWarning, match=r"2 example\(s\).*max_length=32.*long-a, pool\.jsonl:4"):
        ds = InstructionDataset(path, char_tokenizer, max_length=32)
    assert [r.id for r in ds.dropped] == ["long-a", "pool.jsonl:4"]
    assert len(ds) == 2
    assert [ds[i]["index"] for i in range(len(ds))] == [0, 2]
    assert all(any(label != IGNORE_INDEX for label in ds[i]["labels"][1:]) for i in range(len(ds)))


def test_nothing_dropped_nothing_reported(char_tokenizer, write_jsonl, recwarn):
    path = write_jsonl("pool.jsonl", pool_rows(5))
    ds = InstructionDataset(path, char_tokenizer, max_length=256)
    assert ds.dropped == []
    assert len(ds) == 5
    assert not [w for w in recwarn if "truncation" in str(w.message)]


def test_all_dropped_is_an_error(char_tokenizer, write_jsonl):
    path = write_jsonl("pool.jsonl", [{"prompt": "a long prompt", "completion": "x"}])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable examples"):
        InstructionDataset(path, char_tokenizer, max_length=5)


def test_dropping_prevents_nan_loss(char_tokenizer, write_jsonl, tiny_model):
    rows = [{"prompt": "p" * 40, "completion": "never seen"}, {"prompt": "hi", "completion": "yo"}, {"prompt": "2+2", "completion": "4"}]
    path = write_jsonl("pool.jsonl", rows)
    with pytest.warns(UserWarning):
        ds = InstructionDataset(path, char_tokenizer, max_length=24)
    assert len(ds.dropped) == 1
    batch = InstructionCollator(char_tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    loss = losses(tiny_model, batch)
    assert loss.shape == (2,)
    assert torch.isfinite(loss).all()
    # What the dataset protects against: the dropped example alone has no loss (NaN).
    ids, labels = encode_messages(ds.dropped[0].messages, char_tokenizer, max_length=24)
    bad = InstructionCollator(char_tokenizer.pad_token_id)([{"input_ids": ids, "labels": labels, "index": 0}])
    assert torch.isnan(losses(tiny_model, bad)).all()


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("n, fraction", [(100, 0.05), (1000, 0.05), (37, 0.3), (10, 1.0), (7, 0.5)])
def test_sample_fraction_size_and_range(n, fraction):
    sample = sample_fraction(n, fraction, seed=3)
    assert len(sample) == round(n * fraction)
    assert len(set(sample.tolist())) == len(sample)
    assert sample.min() >= 0 and sample.max() < n
    assert list(sample) == sorted(sample)


def test_sample_fraction_is_seeded():
    a = sample_fraction(1000, 0.05, seed=11)
    assert np.array_equal(a, sample_fraction(1000, 0.05, seed=11))
    assert not np.array_equal(a, sample_fraction(1000, 0.05, seed=12))
    # Unaffected by the global RNGs.
    np.random.seed(0)
    torch.manual_seed(0)
    assert np.array_equal(a, sample_fraction(1000, 0.05, seed=11))


def test_sample_fraction_edges():
    assert len(sample_fraction(10, 0.01, seed=0)) == 1  # at least one
    assert sample_fraction(5, 1.0, seed=0).tolist() == [0, 1, 2, 3, 4]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            sample_fraction(10, bad, seed=0)


def test_dataset_fraction_samples_records(char_tokenizer, write_jsonl):
    path = write_jsonl("pool.jsonl", pool_rows(40))
    ds = InstructionDataset(path, char_tokenizer, max_length=256, fraction=0.25, seed=5)
    assert [ds[i]["index"] for i in range(len(ds))] == sample_fraction(40, 0.25, 5).tolist()
    other = InstructionDataset(path, char_tokenizer, max_length=256, fraction=0.25, seed=6)
    assert [ex.record.index for ex in other.examples] != [ex.record.index for ex in ds.examples]


def test_dataset_fraction_does_not_depend_on_truncation(char_tokenizer, write_jsonl):
    # Records 0..19; the odd ones have a prompt too long for max_length=40 and are dropped.
    rows = [{"prompt": ("long " * 20 if i % 2 else f"q{i}"), "completion": f"a{i}"} for i in range(20)]
    path = write_jsonl("pool.jsonl", rows)
    expected = sample_fraction(20, 0.5, 9).tolist()
    full = InstructionDataset(path, char_tokenizer, max_length=512, fraction=0.5, seed=9)
    assert [ex.record.index for ex in full.examples] == expected
    with pytest.warns(UserWarning):
        short = InstructionDataset(path, char_tokenizer, max_length=40, fraction=0.5, seed=9)
    # The same sample, less the examples truncation emptied (reported among the sample only).
    assert [ex.record.index for ex in short.examples] == [i for i in expected if i % 2 == 0]
    assert [r.index for r in short.dropped] == [i for i in expected if i % 2 == 1]


def test_dataset_indices_keep_order_and_global_index(char_tokenizer, write_jsonl):
    a = write_jsonl("a.jsonl", pool_rows(4))
    b = write_jsonl("b.jsonl", pool_rows(3))
    ds = InstructionDataset([a, b], char_tokenizer, max_length=256, indices=[6, 0, 4])
    assert [ds[i]["index"] for i in range(len(ds))] == [6, 0, 4]
    assert ds.examples[0].record.path == b
    with pytest.raises(IndexError):
        InstructionDataset([a, b], char_tokenizer, max_length=256, indices=[7])


# --------------------------------------------------------------------------- datamodule


def test_datamodule_train_fraction_equals_sample_fraction(write_jsonl):
    path = write_jsonl("pool.jsonl", pool_rows(60))
    for seed in (0, 42):
        dm = InstructionDataModule(train_files=[path], tokenizer_name_or_path=TINY, max_length=128, train_fraction=0.1, seed=seed, batch_size=4)
        dm.setup("fit")
        chosen = [ex.record.index for ex in dm.datasets["train"].examples]
        assert chosen == sample_fraction(60, 0.1, seed).tolist()
        assert len(chosen) == 6
        # Every training batch's index lies in the sample; over an epoch each appears once.
        seen = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
        assert sorted(seen) == chosen


def test_datamodule_batches_carry_global_indices(write_jsonl):
    a = write_jsonl("a.jsonl", pool_rows(5))
    b = write_jsonl("b.jsonl", pool_rows(4))
    dm = InstructionDataModule(predict_files=[a, b], tokenizer_name_or_path=TINY, max_length=128, eval_batch_size=4,
                               predict_batching="file_order")
    dm.setup("predict")
    records = dm.datasets["predict"].records
    batches = list(dm.predict_dataloader())
    assert [len(x["index"]) for x in batches] == [4, 4, 1]
    assert torch.cat([x["index"] for x in batches]).tolist() == [r.index for r in records] == list(range(9))
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
        assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
        # Padding is masked and unlabelled.
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_datamodule_train_indices(write_jsonl):
    path = write_jsonl("pool.jsonl", pool_rows(10))
    dm = InstructionDataModule(train_files=[path], tokenizer_name_or_path=TINY, max_length=128, train_indices=[8, 3, 5], batch_size=2)
    dm.setup("fit")
    assert [ex.record.index for ex in dm.datasets["train"].examples] == [8, 3, 5]
    assert sorted(torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()) == [3, 5, 8]


def test_datamodule_errors(write_jsonl):
    path = write_jsonl("pool.jsonl", pool_rows(3))
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        InstructionDataModule(train_files=[path]).setup("fit")
    with pytest.raises(ValueError, match="no val files"):
        InstructionDataModule(train_files=[path], tokenizer_name_or_path=TINY).setup("validate")


def test_load_tokenizer_has_pad():
    tok = load_tokenizer(TINY)
    assert tok.pad_token_id is not None
    assert tok.convert_tokens_to_ids("<|assistant|>") != tok.unk_token_id


# --------------------------------------------------------------------------- collator and padding


def test_collator_pads_labels_with_ignore_index():
    items = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 4},
        {"input_ids": [8], "labels": [-100], "index": 9},
    ]
    right = InstructionCollator(pad_token_id=3, padding_side="right")(items)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert right["index"].tolist() == [4, 9]
    left = InstructionCollator(pad_token_id=3, padding_side="left")(items)
    assert left["input_ids"].tolist() == [[5, 6, 7], [3, 3, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert "prompt_input_ids" not in left
    with pytest.raises(ValueError):
        InstructionCollator(pad_token_id=3, padding_side="middle")


def test_right_and_left_padding_give_the_same_losses(char_tokenizer, write_jsonl, tiny_model):
    path = write_jsonl("pool.jsonl", pool_rows(6) + [{"prompt": "a much longer prompt " * 3, "completion": "and a longer answer too"}])
    ds = InstructionDataset(path, char_tokenizer, max_length=256)
    items = [ds[i] for i in range(len(ds))]
    assert len({len(it["input_ids"]) for it in items}) > 2
    right = InstructionCollator(char_tokenizer.pad_token_id, "right")(items)
    left = InstructionCollator(char_tokenizer.pad_token_id, "left")(items)
    assert not torch.equal(right["input_ids"], left["input_ids"])
    loss_right, loss_left = losses(tiny_model, right), losses(tiny_model, left)
    assert torch.isfinite(loss_right).all()
    torch.testing.assert_close(loss_left, loss_right, atol=1e-5, rtol=0)
    # And each equals the example's loss computed alone, without any padding.
    alone = torch.cat([losses(tiny_model, InstructionCollator(char_tokenizer.pad_token_id)([it])) for it in items])
    torch.testing.assert_close(loss_right, alone, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- generation batches


def test_generation_batches_have_left_padded_prompts_and_references(write_jsonl):
    path = write_jsonl(
        "target.jsonl",
        [
            {"subtask": "arith", "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": " 2 "}]},
            {"subtask": "arith", "prompt": "A much longer question: 10+10?", "completion": "20"},
            {
                "messages": [
                    {"role": "user", "content": "shot"},
                    {"role": "assistant", "content": "one"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "two"},
                ]
            },
        ],
    )
    dm = InstructionDataModule(val_files=[path], tokenizer_name_or_path=TINY, max_length=128, eval_batch_size=3, padding_side="right")
    dm.setup("validate")
    tok = dm.tokenizer
    (batch,) = list(dm.val_dataloader())
    assert batch["references"] == ["2", "20", "two"]
    assert batch["index"].tolist() == [0, 1, 2]
    prompts, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    tag = tok.convert_tokens_to_ids(["<|assistant|>", "\n"])
    assert (prompts[:, -2:] == torch.tensor(tag)).all()  # every prompt ends where generation starts
    assert (mask[:, -1] == 1).all()
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3
    for row, m, n in zip(prompts, mask, lengths.tolist()):
        assert m.tolist() == [0] * (len(m) - n) + [1] * n  # left padded
        assert (row[: len(m) - n] == tok.pad_token_id).all()
    texts = [tok.decode(row[m.bool()]) for row, m in zip(prompts, mask)]
    assert texts == [
        "<s><|user|>\n1+1?\n<|assistant|>\n",
        "<s><|user|>\nA much longer question: 10+10?\n<|assistant|>\n",
        # A few-shot prompt is exactly the training text up to the last answer (EOS included).
        "<s><|user|>\nshot\n<|assistant|>\none</s>\n<|user|>\nq\n<|assistant|>\n",
    ]
    # The training part of the batch keeps the datamodule's (right) padding.
    assert batch["attention_mask"][:, 0].tolist() == [1, 1, 1]
    full = tok.decode(batch["input_ids"][2][batch["attention_mask"][2].bool()])
    assert full == texts[2] + "two</s>\n"


def test_generation_prompt_truncation_keeps_the_end(char_tokenizer, write_jsonl):
    path = write_jsonl("target.jsonl", [{"prompt": "x" * 50, "completion": "y"}])
    ds = InstructionDataset(path, char_tokenizer, max_length=64, with_generation=True)
    ds.max_length = 10
    prompt = ds[0]["prompt_ids"]
    assert len(prompt) == 10
    assert char_tokenizer.decode(prompt) == "xxxxxxx\n<|assistant|>\n"
