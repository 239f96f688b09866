"""The base-weights sample a gradient store records: exact positions at any parameter size, SmolLM2 included."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from lightning_less.errors import IncompatibleError
from lightning_less.stores.provenance import check_same_snapshots, sample_indices, weights_sample_sha256

BIG = 2**24 + 4  # float32 linspace put this parameter's last sample position one past its end


@pytest.mark.parametrize("numel", [1, 2, 15, 16, 17, 1000, 2**24, 2**24 + 3, BIG, 49152 * 576, 32000 * 4096])
def test_sample_positions_are_exact_and_evenly_spaced(numel):
    # Catches: float positions (rounding past the end, or off by one from floor(i (n-1) / 15)).
    picks = sample_indices(numel)
    count = min(16, numel)
    assert len(picks) == count and picks[0] == 0 and picks[-1] == numel - 1
    expected = (np.arange(count, dtype=np.int64) * (numel - 1)) // max(count - 1, 1)  # int64 numpy, not Python ints
    assert picks == expected.tolist()
    gaps = np.diff(picks)
    assert count < 2 or gaps.max() - gaps.min() <= 1


class _Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Parameter(torch.arange(BIG, dtype=torch.float32) % 251, requires_grad=False)
        self.lora = torch.nn.Parameter(torch.ones(4))


def test_parameter_over_2_24_elements_is_sampled_at_its_exact_positions():
    # Catches: the IndexError of float32 torch.linspace on parameters over 2^24 elements, and a
    # sample that misses the last element or reads other positions than the exact ones.
    holder = _Holder()
    digest = weights_sample_sha256(holder, skip={"lora"})
    with torch.no_grad():
        holder.lora.fill_(7.0)  # a skipped (trainable) parameter does not count
    assert weights_sample_sha256(holder, skip={"lora"}) == digest
    unsampled = sample_indices(BIG)[7] + 1
    with torch.no_grad():
        holder.big[unsampled] += 1.0
    assert weights_sample_sha256(holder, skip={"lora"}) == digest
    for position in (sample_indices(BIG)[7], BIG - 1):
        with torch.no_grad():
            holder.big[position] += 1.0
        changed = weights_sample_sha256(holder, skip={"lora"})
        assert changed != digest
        digest = changed


def test_smollm2_weights_sample_equals_an_independent_computation(smollm2_dir):
    # SmolLM2's 49,152 x 576 embedding (tied to the output layer) is over 2^24 elements.
    # Catches: a crash on a real model, a tied parameter hashed twice, the skip set ignored.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    skip = {"model.norm.weight"}
    h = hashlib.sha256()
    for name, param in model.named_parameters():  # tied lm_head.weight is listed once, as the embedding
        if name in skip:
            continue
        flat = param.detach().numpy().reshape(-1)
        count = min(16, flat.size)
        picks = (np.arange(count, dtype=np.int64) * (flat.size - 1)) // max(count - 1, 1)
        h.update(name.encode())
        h.update(torch.from_numpy(flat[picks].copy()).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    assert model.model.embed_tokens.weight.numel() > 2**24
    assert weights_sample_sha256(model, skip) == h.hexdigest()


def test_stores_with_other_weight_samples_are_refused_naming_the_older_sampling():
    # Catches: a refusal that does not say a store from before the exact positions must be recomputed.
    snapshots = [{"name": "epoch_000", "sha256": {"adapter_model.safetensors": "ab"}}]
    old = {"snapshot_info": snapshots, "model": {"weights_sample_sha256": "1" * 64}}
    new = {"snapshot_info": snapshots, "model": {"weights_sample_sha256": "2" * 64}}
    with pytest.raises(IncompatibleError, match="different weights.*exact positions: compute that one again"):
        check_same_snapshots(old, new, "--pool_store a", "--target_store b")
    check_same_snapshots(new, dict(new), "--pool_store a", "--target_store b")
