"""``LoRAInstructionTuningModule``: LoRA (or full) instruction tuning of any Hugging Face causal LM."""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_less.modules.losses import per_example_loss
from lightning_less.models.loading import load_causal_lm, load_tokenizer

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]

class LoRAInstructionTuningModule(pl.LightningModule):
    """LoRA instruction tuning of a Hugging Face causal LM (docs/algorithms.md §1.1 and §1.7).

    The training loss is the causal-LM cross-entropy over the batch's response tokens;
    validation and test report the target loss (mean of each example's own token-mean
    loss) and exact match of greedy generation against the reference answer.

    Args:
        model_name_or_path: a hub name, a local directory, or ``builtin:tiny-llama``.
        dtype: weights dtype for ``from_pretrained`` (``float32``, ``bfloat16``, ``float16``, ``auto``).
        from_config: build a randomly initialised model of that architecture instead of loading weights.
        use_lora: train a LoRA adapter (default) or, when False, every parameter.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: module names that get an adapter.
        adapter_name_or_path: start from this saved PEFT adapter instead of a fresh one.
        optimizer: an optimizer callable over the trainable parameters; default AdamW(lr=2e-5, weight_decay=0).
        learning_rate: the default optimizer's learning rate.
        weight_decay: the default optimizer's weight decay.
        scheduler: ``"linear"`` (warmup then linear decay to 0, as in LESS), ``"cosine"`` (S2L) or ``"constant"``.
        warmup_ratio: share of the optimizer steps spent warming up.
        gradient_checkpointing: recompute activations (non-reentrant, input grads enabled for LoRA).
        attn_implementation: passed to ``from_pretrained`` (e.g. ``"sdpa"``, ``"eager"``).
        adapter_dir: where to ``save_pretrained`` the trained adapter (and tokenizer) at the end of ``fit``.
        generation_max_new_tokens: exact match generates at most this many tokens.
        exact_match: compute exact match in validation / test (needs generation).
        seed: seed for the LoRA initialisation (and ``from_config`` weights).
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        dtype: str | None = None,
        from_config: bool = False,
        use_lora: bool = True,
        lora_r: int = 128,
        lora_alpha: int = 512,
        lora_dropout: float = 0.1,
        lora_target_modules: list[str] | None = None,
        adapter_name_or_path: str | None = None,
        optimizer: OptimizerCallable | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.0,
        scheduler: Literal["linear", "cosine", "constant"] = "linear",
        warmup_ratio: float = 0.03,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        adapter_dir: str | None = None,
        generation_max_new_tokens: int = 64,
        exact_match: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_callable = optimizer
        self.model_name_or_path = model_name_or_path
        self.model = self._build_model()
        # Checkpoints hold only trainable weights; the frozen base model comes from its path.
        self.strict_loading = False
        self.val_loss = MeanMetric()
        self.val_exact_match = MeanMetric()
        self.test_loss = MeanMetric()
        self.test_exact_match = MeanMetric()
        self._tokenizer = None

    # ------------------------------------------------------------------ model
    def _build_model(self):
        hp = self.hparams
        model = load_causal_lm(
            hp.model_name_or_path,
            dtype=hp.dtype,
            from_config=hp.from_config,
            attn_implementation=hp.attn_implementation,
            seed=hp.seed,
        )
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hp.use_lora:
                # With frozen embeddings no input needs a gradient, and checkpointed blocks would
                # then see no gradient path to the adapters.
                model.enable_input_require_grads()
        # from_pretrained returns the model in eval mode; Lightning toggles train/eval from here on.
        model.train()
        if not hp.use_lora:
            return model
        from peft import LoraConfig, PeftModel, get_peft_model

        if hp.adapter_name_or_path:
            return PeftModel.from_pretrained(model, hp.adapter_name_or_path, is_trainable=True)
        config = LoraConfig(
            r=hp.lora_r,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=list(hp.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"]),
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            return get_peft_model(model, config)

    @property
    def tokenizer(self):
        if self._tokenizer is None:

            self._tokenizer = load_tokenizer(self.model_name_or_path)
        return self._tokenizer

    def trainable_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Trainable parameters, named as in the (PEFT) model's ``named_parameters()``."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @override
    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    # --------------------------------------------------------------- training
    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].size(0))
        return out.loss

    def _evaluate(self, batch: dict, loss_metric: MeanMetric, em_metric: MeanMetric, prefix: str) -> None:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        losses = per_example_loss(out.logits, batch["labels"])
        loss_metric.update(losses)
        bs = batch["input_ids"].size(0)
        self.log(f"{prefix}/loss", loss_metric, prog_bar=True, batch_size=bs)
        if self.hparams.exact_match and "prompt_input_ids" in batch:
            predictions = self.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"])
            hits = torch.tensor(
                [float(p.strip() == r.strip()) for p, r in zip(predictions, batch["references"])], device=self.device
            )
            em_metric.update(hits)
            self.log(f"{prefix}/exact_match", em_metric, prog_bar=True, batch_size=bs)

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_exact_match, "val")

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_exact_match, "test")

    @torch.no_grad()
    def generate(self, prompt_input_ids: torch.Tensor, prompt_attention_mask: torch.Tensor) -> list[str]:
        """Greedy completions of left-padded prompts, decoded up to the end-of-sequence token."""
        tok = self.tokenizer
        out = self.model.generate(
            input_ids=prompt_input_ids,
            attention_mask=prompt_attention_mask,
            max_new_tokens=self.hparams.generation_max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = out[:, prompt_input_ids.size(1) :]
        return [tok.decode(row, skip_special_tokens=True) for row in new]

    @override
    def configure_optimizers(self):
        params = [p for _, p in self.trainable_named_parameters()]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if self.optimizer_callable is not None:
            optimizer = self.optimizer_callable(params)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "constant" and self.hparams.warmup_ratio == 0:
            return optimizer
        import transformers

        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(self.hparams.warmup_ratio * total)
        make = {
            "linear": transformers.get_linear_schedule_with_warmup,
            "cosine": transformers.get_cosine_schedule_with_warmup,
            "constant": lambda opt, num_warmup_steps, num_training_steps: transformers.get_constant_schedule_with_warmup(opt, num_warmup_steps),
        }[self.hparams.scheduler]
        scheduler = make(optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, _ in self.trainable_named_parameters()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable or not k.startswith("model.")}

    @override
    def on_train_end(self) -> None:
        if self.hparams.adapter_dir and self.trainer.is_global_zero:
            self.save_adapter(self.hparams.adapter_dir)

    def save_adapter(self, path: str | os.PathLike) -> None:
        """``save_pretrained`` the adapter (or the full model without LoRA) and the tokenizer."""
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        rank_zero_info(f"saved the trained {'adapter' if self.hparams.use_lora else 'model'} to {path}")
