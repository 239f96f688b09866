import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lightning_less.cli import main
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.modules.losses import per_example_loss
from lightning_less.models.tiny import resolve_model_path, save_tiny_model
from tests.helpers import qa_records, write_jsonl


@pytest.fixture()
def train_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", qa_records(48))


def _batch(path, tokenizer_path):
    dm = InstructionDataModule(train_files=[str(path)], tokenizer_name_or_path=tokenizer_path, batch_size=48)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_fit_cli_trains_and_exports_a_reloadable_adapter(tmp_path, train_file):
    model_dir = save_tiny_model(tmp_path / "tiny")  # the real from_pretrained path, not a built-in
    adapter = tmp_path / "adapter"
    main([
        "fit",
        "--seed_everything=0",
        "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--model=lightning_less.LoRAInstructionTuningModule",
        f"--model.model_name_or_path={model_dir}", "--model.lora_r=8", "--model.lora_alpha=16",
        "--model.lora_dropout=0.0", "--model.learning_rate=0.01", "--model.warmup_ratio=0.0",
        f"--model.adapter_dir={adapter}",
        "--data=lightning_less.InstructionDataModule",
        f"--data.train_files=[{train_file}]", "--data.batch_size=8",
    ])
    assert (adapter / "adapter_model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8

    batch = _batch(train_file, str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        before = per_example_loss(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    with torch.no_grad():
        after_logits = tuned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    after = per_example_loss(after_logits, batch["labels"])
    assert after.mean() < before.mean() - 0.3, (before.mean(), after.mean())


def test_reloaded_adapter_gives_identical_logits(tmp_path, train_file):
    path = resolve_model_path("builtin:tiny-llama")
    module = LoRAInstructionTuningModule(model_name_or_path=path, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    with torch.no_grad():  # a non-trivial adapter: LoRA B starts at zero
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    module.save_adapter(tmp_path / "adapter")
    batch = _batch(train_file, path)
    module.model.eval()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tmp_path / "adapter").eval()
    with torch.no_grad():
        a = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_optimizer_sees_only_trainable_parameters_and_checkpoint_holds_only_them():
    module = LoRAInstructionTuningModule(lora_r=4, lora_alpha=8, scheduler="constant", warmup_ratio=0.0)
    opt = module.configure_optimizers()
    params = [p for g in opt.param_groups for p in g["params"]]
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert params and all("lora_" in names[id(p)] for p in params)
    assert opt.defaults["lr"] == 2e-5 and opt.defaults["weight_decay"] == 0.0
    assert isinstance(opt, torch.optim.AdamW)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    kept = [k for k in ckpt["state_dict"] if k.startswith("model.")]
    assert kept and all("lora_" in k for k in kept)
    assert len(kept) == len(params)


def test_gradient_checkpointing_keeps_lora_gradients(tmp_path, train_file):
    path = resolve_model_path("builtin:tiny-llama")
    batch = _batch(train_file, path)
    grads = []
    for ckpt in (False, True):
        module = LoRAInstructionTuningModule(model_name_or_path=path, lora_r=4, lora_alpha=8, lora_dropout=0.0, gradient_checkpointing=ckpt)
        with torch.no_grad():
            for name, p in module.model.named_parameters():
                if "lora_B" in name:
                    torch.manual_seed(0)
                    p.normal_(0, 0.1)
        module.model.train()
        module.training_step(batch, 0).backward() if False else module.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in module.trainable_named_parameters()]))
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_fit_on_bad_input_names_file_and_line_and_writes_nothing(tmp_path):
    from lightning_less.data.records import RecordError

    data = tmp_path / "data"
    bad = write_jsonl(data / "train.jsonl", qa_records(3))
    with open(bad, "a") as f:
        f.write('{"prompt": "no completion here"}\n')
    run = tmp_path / "run"
    with pytest.raises(RecordError, match=rf"{bad}:4: missing field 'completion'"):
        main([  # --debug: the exception itself, not the CLI's one-paragraph message and exit status 2
            "fit", "--debug", "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
            "--trainer.callbacks+=lightning_less.GradientFeatureCallback", f"--trainer.callbacks.dirpath={run}/snapshots",
            "--model=lightning_less.LoRAInstructionTuningModule", "--model.lora_r=4", f"--model.adapter_dir={run}/adapter",
            "--data=lightning_less.InstructionDataModule", f"--data.train_files=[{bad}]",
        ])
    assert not run.exists() or not any(run.rglob("*")), sorted(run.rglob("*"))
