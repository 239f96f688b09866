"""``InstructionCollator``: items of an instruction dataset padded into one batch (docs/architecture.md "Batches")."""

from __future__ import annotations

import torch

from lightning_less.data.formatting import IGNORE_INDEX

__all__ = ["InstructionCollator"]


class InstructionCollator:
    """Pads a list of items into a batch (see docs/architecture.md "Batches")."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def _pad(self, seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            if side == "right":
                out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            else:
                out[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        return out

    def __call__(self, items: list[dict]) -> dict:
        ids = [it["input_ids"] for it in items]
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id, self.padding_side),
            "attention_mask": self._pad([[1] * len(s) for s in ids], 0, self.padding_side),
            "labels": self._pad([it["labels"] for it in items], IGNORE_INDEX, self.padding_side),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }
        if "prompt_ids" in items[0]:
            # Generation always left-pads, so every prompt ends where generation starts.
            prompts = [it["prompt_ids"] for it in items]
            batch["prompt_input_ids"] = self._pad(prompts, self.pad_token_id, "left")
            batch["prompt_attention_mask"] = self._pad([[1] * len(p) for p in prompts], 0, "left")
            batch["references"] = [it["reference"] for it in items]
        return batch
