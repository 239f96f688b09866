"""A LightningModule written as in any Lightning project: a Llama built from its config, LoRA, AdamW, LambdaLR.

The base model is built in memory (never saved) from ``seed``, so building the module
again with the same arguments gives the same base weights: that is how the gradient
pass, run later (or from the command line), sees the model the warmup trained.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from typing_extensions import override

from examples.own_project.data import VOCAB_SIZE


class OwnLoRAModule(pl.LightningModule):
    """A tiny Llama with a LoRA adapter on its attention projections.

    Args:
        hidden_size: model width.
        num_layers: decoder layers.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        learning_rate: AdamW's peak learning rate (then linear decay to 0).
        seed: seed of the base weights and of the adapter's initialisation.
    """

    def __init__(self, hidden_size: int = 32, num_layers: int = 2, lora_r: int = 4, lora_alpha: int = 8,
                 learning_rate: float = 1e-2, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = LlamaForCausalLM(config)
            lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
            self.model = get_peft_model(base, lora)

    @override
    def forward(self, batch: dict) -> torch.Tensor:
        """The model's causal-LM loss of a batch (the mean over its predicted tokens)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.hparams.learning_rate,
                                      weight_decay=0.0)
        total = max(1, self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def example_losses(self, loader) -> torch.Tensor:
        """Each example's own loss (the mean over its predicted tokens), in loader order, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for batch in loader:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
            out.append(token.sum(1) / (labels != -100).sum(1))
        self.model.train(was_training)
        return torch.cat(out)
