"""Per-example LoRA gradients for a whole padded batch in one backward pass.

LESS needs, for every example, the gradient of that example's *own* loss (the token
mean over its response tokens) with respect to the LoRA parameters, flattened in
``named_parameters()`` order (docs/algorithms.md §1.2). The reference runs one backward per
example (docs/algorithms.md §5). Here the batch loss is the *sum* of per-example means, so
the gradient separates by example, and the weight gradient of a linear layer
``y = x W^T`` for example ``b`` is ``sum_t g[b, t]^T x[b, t]`` from the layer's input
``x`` and the gradient ``g`` of its output (the Opacus / Kronfluence pattern,
docs/architecture.md "Speed").

Implementation notes:

* Forward hooks on every ``lora_A`` / ``lora_B`` ``nn.Linear`` of the active adapter
  keep the module input (after LoRA dropout, which is off in eval mode) and register a
  *tensor* hook on the module output (we measured tensor hooks to be markedly
  faster than module full-backward hooks). LoRA's ``scaling`` is applied after
  ``lora_B``, so the autograd chain already includes it in the output gradients.
* The backward is ``torch.autograd.grad(loss, lora_A outputs)``: autograd then computes
  only input gradients along the path to those outputs, never the parameters' own
  ``.grad`` (no ``AccumulateGrad``, no weight-gradient matmuls), which is the floor
  cost "one forward + one backward (input gradients only)".
* Position ids are derived from the attention mask, so a left-padded example sees the
  same positions as the same example alone or right-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PerExampleLoRAGradients", "adam_transform", "flatten_moments"]

#: ``consumer(offset, grads)`` receives one parameter's per-example gradients,
#: ``grads`` of shape [B, numel of that parameter] (float32), starting at ``offset`` in
#: the flattened ``named_parameters()`` order.
ChunkConsumer = Callable[[int, torch.Tensor], None]


class _Slot:
    """One trainable LoRA weight: where it lives in the flat vector and what it saw."""

    __slots__ = ("name", "offset", "numel", "inputs", "calls")

    def __init__(self, name: str, offset: int, param: nn.Parameter) -> None:
        self.name = name
        self.offset = offset
        self.numel = param.numel()
        self.inputs: torch.Tensor | None = None
        self.calls = 0


class PerExampleLoRAGradients:
    """Per-example gradients of the LoRA parameters of a PEFT model, one backward per batch.

    Every ``peft.tuners.lora.Linear`` layer's ``lora_A`` / ``lora_B`` of each active
    adapter is hooked. Every trainable parameter of the model must be one of those
    weights; anything else (``lora_bias``, LoRA embeddings, ``modules_to_save``, DoRA)
    raises ``ValueError`` at construction rather than being silently left out of the
    features.

    Args:
        model: a PEFT causal LM whose ``forward(input_ids=, attention_mask=,
            position_ids=)`` returns an object with ``logits`` [B, T, V].
        position_ids_from_mask: pass ``position_ids = cumsum(attention_mask) - 1`` so
            that the padding side does not move an example's positions (needed for
            absolute position embeddings such as GPT-2's; RoPE models agree either way
            up to rounding).

    Attributes:
        param_names: the trainable LoRA parameters in ``model.named_parameters()`` order.
        numel: total number of their elements, the flattened gradient dimension.

    Example::

        grads_fn = PerExampleLoRAGradients(peft_model)
        with torch.inference_mode(False), torch.enable_grad():
            grads, losses = grads_fn.compute(batch)   # [B, grads_fn.numel], [B]
    """

    def __init__(self, model: nn.Module, position_ids_from_mask: bool = True) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        self.model = model
        self.position_ids_from_mask = position_ids_from_mask
        by_param: dict[int, tuple[nn.Linear, str]] = {}
        self._grad_input_modules: set[nn.Module] = set()
        for mod_name, module in model.named_modules():
            if not isinstance(module, LoraLinear):
                continue
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                if adapter in getattr(module, "lora_variant", {}):
                    raise ValueError(f"{mod_name}: LoRA variants (e.g. DoRA) are not supported by the per-example pass")
                pair = (module.lora_A[adapter], module.lora_B[adapter])
                for role, linear in zip("AB", pair):
                    if not isinstance(linear, nn.Linear) or linear.bias is not None:
                        raise ValueError(f"{mod_name}.lora_{role}.{adapter}: expected an nn.Linear without bias")
                    by_param[id(linear.weight)] = (linear, role)
                # The backward is asked for the gradient of the first trainable output of
                # each pair; the other output (lora_B's) lies on its path, so its hook fires.
                first = pair[0] if pair[0].weight.requires_grad else pair[1]
                if first.weight.requires_grad:
                    self._grad_input_modules.add(first)

        self.param_names: list[str] = []
        self._slots: list[_Slot] = []
        self._module_slot: dict[nn.Module, _Slot] = {}
        unsupported: list[str] = []
        offset = 0
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if id(param) not in by_param:
                unsupported.append(name)
                continue
            linear, _ = by_param[id(param)]
            slot = _Slot(name, offset, param)
            offset += slot.numel
            self.param_names.append(name)
            self._slots.append(slot)
            self._module_slot[linear] = slot
        if unsupported:
            raise ValueError(
                "trainable parameters that are not LoRA A/B weights of an active adapter cannot get "
                f"per-example gradients: {unsupported}"
            )
        if not self._slots:
            raise ValueError("the model has no trainable LoRA parameters (is it a PEFT LoRA model?)")
        self.numel: int = offset

        self._capturing = False
        self._outputs: list[tuple[torch.Tensor, _Slot]] = []
        self._sink: Callable[[_Slot, torch.Tensor], None] | None = None
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self._module_slot]

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the object is unusable afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def param_numels(self) -> list[int]:
        """Number of elements of each parameter, in ``param_names`` order."""
        return [s.numel for s in self._slots]

    # ------------------------------------------------------------------ hooks
    def _forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # Only the forward of ``compute`` is captured: forwards elsewhere (training,
        # gradient-checkpoint recomputation during backward) are ignored.
        if not self._capturing:
            return
        slot = self._module_slot[module]
        slot.calls += 1
        slot.inputs = args[0].detach()
        if output.requires_grad:
            output.register_hook(lambda grad, slot=slot: self._on_output_grad(slot, grad))
            if module in self._grad_input_modules:
                self._outputs.append(output)

    def _on_output_grad(self, slot: _Slot, grad: torch.Tensor) -> None:
        x = slot.inputs
        assert x is not None and self._sink is not None
        # [B, out, T] @ [B, T, in] -> [B, out, in]: sum over time of g_t^T x_t, in fp32
        # whatever the model dtype (docs/algorithms.md §5: no low-precision gradients).
        per_example = torch.bmm(grad.flatten(1, -2).transpose(1, 2).float(), x.flatten(1, -2).float())
        self._sink(slot, per_example.reshape(per_example.shape[0], slot.numel))

    # --------------------------------------------------------------- compute
    def compute(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example gradients and losses of a batch.

        Args:
            batch: ``input_ids``, ``attention_mask`` and ``labels`` [B, T] (labels
                unshifted, -100 on non-response tokens and padding); ``index`` [B]
                is used in error messages only.

        Returns:
            ``(grads, losses)``: grads [B, numel] float32 flattened in
            ``named_parameters()`` order, losses [B] float32 (each example's own token
            mean). The gradients take B * numel * 4 bytes (8.6 GB for B=16 and a 2^27
            LoRA); :meth:`compute_chunks` bounds that to one parameter.

        Raises:
            RuntimeError: under ``torch.inference_mode`` or if a LoRA layer did not run.
            ValueError: for an example without response tokens, a label on padding,
                or non-finite gradients.
        """
        out = None

        def sink(slot: _Slot, g: torch.Tensor) -> None:
            nonlocal out
            if out is None:
                out = torch.zeros(g.shape[0], self.numel, dtype=torch.float32, device=g.device)
            out[:, slot.offset : slot.offset + slot.numel] = g

        losses = self._run(batch, sink)
        if out is None:  # no LoRA output reached the loss: the gradient is exactly zero
            out = torch.zeros(losses.shape[0], self.numel, dtype=torch.float32, device=losses.device)
        bad = ~torch.isfinite(out).all(dim=1)
        if bad.any():
            raise ValueError(f"non-finite per-example gradients for examples {_indices(batch, bad)}")
        return out, losses

    def compute_chunks(self, batch: Mapping[str, torch.Tensor], consumer: ChunkConsumer) -> torch.Tensor:
        """Stream per-example gradients parameter by parameter, without the full [B, numel] buffer.

        ``consumer(offset, grads)`` is called exactly once per parameter (in backward
        order, not ``named_parameters()`` order) with float32 ``grads`` [B, numel_i];
        an Adam transform (element-wise) and a chunk-capable projector (linear) can
        then run per chunk, bounding memory to one parameter's gradients.

        Args:
            batch: as for :meth:`compute`.
            consumer: called with ``(offset, grads)``.

        Returns:
            The per-example losses [B].
        """
        seen: set[int] = set()

        def sink(slot: _Slot, g: torch.Tensor) -> None:
            # No finiteness check per chunk (it costs ~10% of the pass): a non-finite value
            # reaches the projected features, which the datastore refuses to write.
            seen.add(slot.offset)
            consumer(slot.offset, g)

        losses = self._run(batch, sink)
        for slot in self._slots:  # parameters that did not reach the loss: exact zeros
            if slot.offset not in seen:
                consumer(slot.offset, torch.zeros(losses.shape[0], slot.numel, device=losses.device))
        return losses

    def _run(self, batch: Mapping[str, torch.Tensor], sink: Callable[[_Slot, torch.Tensor], None]) -> torch.Tensor:
        if not self._handles:
            raise RuntimeError("remove_hooks() was called; build a new PerExampleLoRAGradients")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "per-example gradients cannot be computed under torch.inference_mode (torch.enable_grad "
                "does not leave it): run with Trainer(inference_mode=False) or torch.inference_mode(False)"
            )
        # Inference tensors (e.g. a batch built under inference mode) cannot be saved for backward.
        input_ids, attention_mask, labels = (_usable(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
        attention_mask = attention_mask.to(input_ids.device)
        target = labels[:, 1:]
        counts = (target != -100).sum(dim=1)
        if (counts == 0).any():
            raise ValueError(f"examples without response tokens have no loss: indices {_indices(batch, counts == 0)}")
        on_padding = ((attention_mask == 0) & (labels != -100)).any(dim=1)
        if on_padding.any():
            raise ValueError(f"labels on padding (attention_mask == 0) in examples {_indices(batch, on_padding)}")

        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.position_ids_from_mask:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        was_training = self.model.training
        self.model.eval()  # docs/algorithms.md §1.2: LoRA dropout off during this pass
        for slot in self._slots:
            slot.inputs, slot.calls = None, 0
        self._outputs, self._sink = [], sink
        try:
            with torch.enable_grad():
                self._capturing = True
                try:
                    logits = self.model(**kwargs).logits
                finally:
                    self._capturing = False
                for slot in self._slots:
                    if slot.calls > 1:
                        raise RuntimeError(
                            f"{slot.name}: its LoRA layer ran {slot.calls} times in one forward; shared "
                            "layers are not supported"
                        )
                if not any(slot.calls for slot in self._slots):
                    raise RuntimeError(
                        "no LoRA layer ran in the forward pass (adapters disabled or merged?)"
                    )
                # Each example's own token mean (docs/algorithms.md §1.2), in fp32; the sum of
                # the means separates the gradient by example.
                # Targets shifted left (last position ignored) rather than logits sliced:
                # cross entropy on the contiguous [B*T, V] view avoids copying the logits.
                shifted = F.pad(target, (0, 1), value=-100)
                token_loss = F.cross_entropy(
                    logits.float().flatten(0, 1), shifted.flatten(), ignore_index=-100, reduction="none"
                )
                losses = token_loss.view_as(shifted).sum(dim=1) / counts.to(token_loss.dtype)
                if self._outputs:
                    torch.autograd.grad(losses.sum(), self._outputs, allow_unused=True)
        finally:
            self._outputs, self._sink = [], None
            for slot in self._slots:
                slot.inputs = None
            self.model.train(was_training)
        return losses.detach()


def _usable(t: torch.Tensor) -> torch.Tensor:
    return t.clone() if t.is_inference() else t


def _indices(batch: Mapping[str, torch.Tensor], mask: torch.Tensor | None) -> list[int]:
    index = batch.get("index")
    if index is None:
        index = torch.arange(batch["input_ids"].shape[0])
    index = index.detach().cpu()
    if mask is not None:
        index = index[mask.detach().cpu()]
    return index.tolist()


def adam_transform(
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The Adam feature of LESS (docs/algorithms.md §1.3), row by row.

    ``m' = b1 m + (1 - b1) g``; ``v' = b2 v + (1 - b2) g^2``; ``m' / sqrt(v' + eps)``,
    with eps *inside* the square root and no bias correction, as the reference.
    Element-wise, so it applies equally to a chunk of the flat vector given the
    matching slice of the moments.

    Args:
        grads: [B, P] per-example gradients.
        exp_avg: [P] Adam first moment of the snapshot.
        exp_avg_sq: [P] Adam second moment of the snapshot.
        beta1, beta2, eps: Adam's hyper-parameters from the snapshot.

    Returns:
        [B, P] float32.
    """
    if exp_avg.shape != grads.shape[-1:] or exp_avg_sq.shape != grads.shape[-1:]:
        raise ValueError(f"moments {tuple(exp_avg.shape)}/{tuple(exp_avg_sq.shape)} do not match grads {tuple(grads.shape)}")
    g = grads.float()
    m = exp_avg.to(g.device, torch.float32)
    v = exp_avg_sq.to(g.device, torch.float32)
    # The same operations in the same order as ``m' / sqrt(v' + eps)`` written out (bit-identical),
    # but in place on two [B, P] buffers instead of allocating seven.
    denom = g.square().mul_(1.0 - beta2).add_(beta2 * v).add_(eps).sqrt_()
    return g.mul(1.0 - beta1).add_(beta1 * m).div_(denom)


def flatten_moments(
    moments: Mapping[str, Any],
    param_names: Sequence[str],
    numels: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten Adam moments by parameter *name* (never by position, docs/algorithms.md §5).

    Args:
        moments: either the snapshot file's flat mapping (``"<name>.exp_avg"`` and
            ``"<name>.exp_avg_sq"`` tensors, see docs/architecture.md) or
            ``{name: {"exp_avg": t, "exp_avg_sq": t}}``.
        param_names: the order of the flat vector (``PerExampleLoRAGradients.param_names``).
        numels: optional expected number of elements per parameter, checked.

    Returns:
        ``(exp_avg, exp_avg_sq)``, each [P] float32.

    Raises:
        KeyError: naming the first parameter without moments.
        ValueError: a moment whose size does not match ``numels``.
    """
    avg, avg_sq = [], []
    for i, name in enumerate(param_names):
        if f"{name}.exp_avg" in moments and f"{name}.exp_avg_sq" in moments:
            m, v = moments[f"{name}.exp_avg"], moments[f"{name}.exp_avg_sq"]
        elif isinstance(moments.get(name), Mapping) and {"exp_avg", "exp_avg_sq"} <= set(moments[name]):
            m, v = moments[name]["exp_avg"], moments[name]["exp_avg_sq"]
        else:
            raise KeyError(f"no Adam moments (exp_avg and exp_avg_sq) for parameter {name!r}")
        if numels is not None and not (m.numel() == v.numel() == numels[i]):
            raise ValueError(f"moments of {name!r} have {m.numel()}/{v.numel()} elements, the parameter {numels[i]}")
        avg.append(m.reshape(-1).float())
        avg_sq.append(v.reshape(-1).float())
    return torch.cat(avg), torch.cat(avg_sq)
