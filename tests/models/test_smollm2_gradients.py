"""Per-example LoRA gradients of a real pretrained model (SmolLM2: grouped-query attention, tied embeddings)
against one-example-at-a-time autograd: the batched computation alone, and the whole gradient pass."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_less.callbacks.snapshot import GradientFeatureCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.gradients.per_example import PerExampleLoRAGradients
from lightning_less.modules.lora import LoRAInstructionTuningModule
from tests.gradients.test_per_example import collate, reference_grad, rel_err
from tests.helpers import qa_records, write_jsonl
from tests.passes.test_gradient_features import _data, _loop, _reference_features

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_batched_per_example_gradients_equal_one_at_a_time(smollm2_dir):
    # Catches: per-example gradients of k_proj / v_proj computed with the query head count (GQA maps
    # 576 -> 192), padding leaking into another example, left padding read at shifted positions.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_dir),
                           LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():  # LoRA B starts at zero, which would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    examples = []
    for n in (5, 11, 8):
        ids = torch.randint(0, model.config.vocab_size, (n,), generator=gen)
        labels = ids.clone()
        labels[: n // 2] = -100
        examples.append((ids, labels))
    refs = [reference_grad(model, ids, labels)[0] for ids, labels in examples]
    grads_fn = PerExampleLoRAGradients(model)
    names = grads_fn.param_names
    assert any(".k_proj.lora_B" in n for n in names) and any(".v_proj.lora_A" in n for n in names)
    k_b = names.index(next(n for n in names if ".k_proj.lora_B" in n))
    k_slice = slice(sum(grads_fn.param_numels[:k_b]), sum(grads_fn.param_numels[: k_b + 1]))
    assert grads_fn.param_numels[k_b] == 192 * 2  # the key projection's B: [192, r]
    for side in ("right", "left"):
        grads, _ = grads_fn.compute(collate(examples, side))
        for i, ref in enumerate(refs):
            assert ref.abs().max() > 0
            assert rel_err(grads[i], ref) < 1e-4, (side, i, rel_err(grads[i], ref))
            assert rel_err(grads[i, k_slice], ref[k_slice]) < 1e-4  # the GQA block on its own
    grads_fn.remove_hooks()


@pytest.fixture(scope="module")
def smollm2_run(smollm2_dir, tmp_path_factory):
    """A 1-step LoRA warmup of SmolLM2 (one Adam snapshot), a pool and targets of different lengths."""
    root = tmp_path_factory.mktemp("smollm2_warm")
    records = qa_records(4, prefix="p")
    for i, r in enumerate(records):  # different lengths, so every batch is padded
        r["messages"][0]["content"] += " please" * (3 * i)
    pool = write_jsonl(root / "pool.jsonl", records[:2])
    targets = write_jsonl(root / "targets.jsonl", records[2:])
    pl.seed_everything(0, verbose=False)
    module = LoRAInstructionTuningModule(model_name_or_path=smollm2_dir, lora_r=2, lora_alpha=4, lora_dropout=0.0,
                                         learning_rate=1e-3, warmup_ratio=0.0, exact_match=False,
                                         lora_target_modules=TARGETS)
    data = InstructionDataModule(train_files=[str(pool)], tokenizer_name_or_path=smollm2_dir, batch_size=2,
                                 max_length=64)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[GradientFeatureCallback(str(root / "snapshots"))])
    trainer.fit(module, datamodule=data)
    return {"root": root, "model": smollm2_dir, "pool": str(pool), "targets": str(targets),
            "snapshots": str(root / "snapshots")}


@pytest.mark.parametrize("feature,padding_side", [("adam", "right"), ("sgd", "left")])
def test_gradient_pass_features_equal_one_example_at_a_time(smollm2_run, tmp_path, feature, padding_side):
    # The real pass: base model from the saved directory, snapshot adapter and Adam moments, batched
    # per-example gradients, projection; against plain autograd one example at a time (tests/passes).
    files = smollm2_run["pool"] if feature == "adam" else smollm2_run["targets"]
    store = _loop(smollm2_run, tmp_path / "store", feature=feature, dims=[32]).run(
        _data(smollm2_run, files, 2, padding_side))
    assert store.is_complete() and store.manifest["model"]["weights_sample_sha256"]
    for snap, expected in _reference_features(smollm2_run, files, feature, 32).items():
        got = np.asarray(store.features(snap, 32))
        assert np.abs(got).sum() > 0
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
