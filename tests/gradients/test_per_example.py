"""Per-example LoRA gradients against one-example-at-a-time autograd (docs/algorithms.md §1.2)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from lightning_less.gradients.per_example import PerExampleLoRAGradients, adam_transform, flatten_moments

LENGTHS = [[7], [5, 9, 3, 12], [6, 6], [3, 4, 5, 6, 7, 8]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls: with 2 threads on a busy 2-core machine, OpenMP spin-waits made
    # these tests about 10x slower; results do not depend on the thread count here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_lora_model(attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # LoRA B starts at zero, which would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    return model.eval().float()


def make_examples(lengths: list[int], seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, 64, (n,), generator=gen)
        labels = ids.clone()
        labels[: n // 2] = -100  # the first half is the prompt
        out.append((ids, labels))
    return out


def collate(examples: list[tuple[torch.Tensor, torch.Tensor]], side: str, index: list[int] | None = None) -> dict:
    width = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": torch.zeros(len(examples), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), width, dtype=torch.long),
             "labels": torch.full((len(examples), width), -100, dtype=torch.long)}
    for i, (ids, labels) in enumerate(examples):
        cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        batch["input_ids"][i, cols] = ids
        batch["attention_mask"][i, cols] = 1
        batch["labels"][i, cols] = labels
    batch["index"] = torch.tensor(index if index is not None else list(range(len(examples))))
    return batch


def reference_grad(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The reference method: one example, unpadded, one backward, flatten ``p.grad``."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return grad, loss.item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def setup(request):
    model = tiny_lora_model(request.param)
    grads_fn = PerExampleLoRAGradients(model)
    yield model, grads_fn
    grads_fn.remove_hooks()


@pytest.fixture(scope="module")
def eager_setup():
    model = tiny_lora_model("eager")
    grads_fn = PerExampleLoRAGradients(model)
    yield model, grads_fn
    grads_fn.remove_hooks()


def test_param_names_and_numel(setup):
    model, grads_fn = setup
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert grads_fn.param_names == expected
    assert all(".lora_A." in n or ".lora_B." in n for n in expected)
    assert grads_fn.numel == sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 4 * 2 * 4 * 32


@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda x: "-".join(map(str, x)))
def test_matches_one_example_at_a_time(setup, lengths):
    model, grads_fn = setup
    examples = make_examples(lengths)
    refs = [reference_grad(model, ids, labels) for ids, labels in examples]
    half = grads_fn.param_numels[0]
    for side in ("right", "left"):
        grads, losses = grads_fn.compute(collate(examples, side))
        assert grads.shape == (len(lengths), grads_fn.numel) and grads.dtype == torch.float32
        for i, (ref, ref_loss) in enumerate(refs):
            assert ref.abs().max() > 0
            assert rel_err(grads[i], ref) < 1e-5, (side, i, rel_err(grads[i], ref))
            # the first lora_A block on its own, not just the overall norm
            assert rel_err(grads[i, :half], ref[:half]) < 1e-5
            assert losses[i].item() == pytest.approx(ref_loss, rel=1e-5)


def test_example_independent_of_batch(eager_setup):
    _, grads_fn = eager_setup
    examples = make_examples([6, 11, 2, 9], seed=3)
    alone, _ = grads_fn.compute(collate(examples[:1], "right"))
    for side in ("right", "left"):
        for others in (examples[1:2], examples[1:]):
            batched, _ = grads_fn.compute(collate(examples[:1] + others, side))
            assert rel_err(batched[0], alone[0]) < 1e-6
        # same example at another position of the batch
        batched, _ = grads_fn.compute(collate(examples[1:] + examples[:1], side))
        assert rel_err(batched[-1], alone[0]) < 1e-6


def test_no_parameter_grad_accumulates(eager_setup):
    model, grads_fn = eager_setup
    model.zero_grad(set_to_none=True)
    grads_fn.compute(collate(make_examples([4, 8]), "right"))
    assert all(p.grad is None for p in model.parameters())


def test_compute_chunks_equals_compute(eager_setup):
    _, grads_fn = eager_setup
    batch = collate(make_examples([4, 8, 6]), "left")
    full, losses = grads_fn.compute(batch)
    assembled = torch.full_like(full, float("nan"))
    calls = []

    def consumer(offset: int, chunk: torch.Tensor) -> None:
        calls.append(offset)
        assembled[:, offset : offset + chunk.shape[1]] = chunk

    chunk_losses = grads_fn.compute_chunks(batch, consumer)
    assert sorted(calls) == [sum(grads_fn.param_numels[:i]) for i in range(len(grads_fn.param_numels))]
    torch.testing.assert_close(assembled, full, rtol=0, atol=0)
    torch.testing.assert_close(chunk_losses, losses)


def test_training_mode_is_evaluated_with_dropout_off_and_restored(eager_setup):
    model, grads_fn = eager_setup
    examples = make_examples([5, 10])
    batch = collate(examples, "right")
    expected, _ = grads_fn.compute(batch)
    model.train()
    try:
        again, _ = grads_fn.compute(batch)
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_inference_mode_raises(eager_setup):
    _, grads_fn = eager_setup
    batch = collate(make_examples([5]), "right")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        grads_fn.compute(batch)


def test_inference_tensors_batch_is_accepted(eager_setup):
    _, grads_fn = eager_setup
    with torch.inference_mode():  # e.g. a batch built by a predict loop
        batch = collate(make_examples([5, 7]), "right")
    expected, _ = grads_fn.compute(collate(make_examples([5, 7]), "right"))
    with torch.inference_mode(False), torch.enable_grad():
        grads, _ = grads_fn.compute(batch)
    torch.testing.assert_close(grads, expected, rtol=0, atol=0)


def test_example_without_response_tokens_raises(eager_setup):
    _, grads_fn = eager_setup
    examples = make_examples([5, 6])
    examples[1][1][:] = -100
    with pytest.raises(ValueError, match=r"without response tokens.*\[41\]"):
        grads_fn.compute(collate(examples, "right", index=[40, 41]))


def test_label_on_padding_raises(eager_setup):
    _, grads_fn = eager_setup
    batch = collate(make_examples([5, 8]), "right")
    batch["labels"][0, -1] = 3
    with pytest.raises(ValueError, match="padding"):
        grads_fn.compute(batch)


def test_absolute_positions_left_padding():
    # GPT-2 has absolute position embeddings: without position ids from the mask, a
    # left-padded example would be read at shifted positions (relative error ~1).
    from transformers import GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                             fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    model.eval()
    examples = make_examples([6, 11, 2])
    grads, _ = PerExampleLoRAGradients(model).compute(collate(examples, "left"))
    for i, (ids, labels) in enumerate(examples):
        assert rel_err(grads[i], reference_grad(model, ids, labels)[0]) < 1e-5


def test_unsupported_trainable_parameter_raises():
    model = tiny_lora_model()
    model.get_input_embeddings().weight.requires_grad_(True)
    with pytest.raises(ValueError, match="embed_tokens"):
        PerExampleLoRAGradients(model)


def test_bf16_model_gives_fp32_grads_close_to_fp32():
    model = tiny_lora_model()
    batch = collate(make_examples([6, 9]), "right")
    fp32 = PerExampleLoRAGradients(model)
    expected, _ = fp32.compute(batch)
    fp32.remove_hooks()
    model = model.to(torch.bfloat16)
    grads, losses = PerExampleLoRAGradients(model).compute(batch)
    assert grads.dtype == torch.float32 and losses.dtype == torch.float32
    assert rel_err(grads, expected) < 0.1


def test_adam_transform_hand_worked():
    g = torch.tensor([[1.0, -2.0, 0.0]])
    m = torch.tensor([0.5, 0.0, 1.0])
    v = torch.tensor([0.25, 1.0, 0.0])
    out = adam_transform(g, m, v, beta1=0.9, beta2=0.999, eps=1e-8)
    # m' = 0.9 m + 0.1 g ; v' = 0.999 v + 0.001 g^2 ; m' / sqrt(v' + eps)
    expected = torch.tensor([[0.55 / (0.25075 + 1e-8) ** 0.5, -0.2 / (1.003 + 1e-8) ** 0.5, 0.9 / 1e-4]])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)
    # eps inside the square root: 0.9 / sqrt(1e-8) = 9000, not 0.9 / (0 + 1e-8)
    assert out[0, 2].item() == pytest.approx(9000.0, rel=1e-6)


def test_adam_transform_is_the_written_out_formula_bit_for_bit_and_leaves_its_input():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(6, 5000, generator=gen) * 1e-3
    m, v = torch.randn(5000, generator=gen) * 1e-4, torch.rand(5000, generator=gen) * 1e-8
    before = g.clone()
    out = adam_transform(g, m, v, beta1=0.8, beta2=0.99, eps=1e-6)
    written_out = (0.8 * m + (1.0 - 0.8) * g) / torch.sqrt(0.99 * v + (1.0 - 0.99) * g.square() + 1e-6)
    torch.testing.assert_close(out, written_out, rtol=0, atol=0)
    torch.testing.assert_close(g, before, rtol=0, atol=0)  # computed in place, but never in the caller's tensor


def test_flatten_moments_by_name_not_position():
    names = ["a.weight", "b.weight"]
    flat = {"b.weight.exp_avg": torch.full((2,), 2.0), "b.weight.exp_avg_sq": torch.full((2,), 20.0),
            "a.weight.exp_avg": torch.ones(1, 3), "a.weight.exp_avg_sq": torch.full((3,), 10.0)}
    m, v = flatten_moments(flat, names, numels=[3, 2])
    torch.testing.assert_close(m, torch.tensor([1.0, 1, 1, 2, 2]))
    torch.testing.assert_close(v, torch.tensor([10.0, 10, 10, 20, 20]))
    nested = {"a.weight": {"exp_avg": torch.ones(3), "exp_avg_sq": torch.full((3,), 10.0)}}
    m, _ = flatten_moments(nested, ["a.weight"])
    torch.testing.assert_close(m, torch.ones(3))
    with pytest.raises(KeyError, match="c.weight"):
        flatten_moments(flat, ["a.weight", "c.weight"])
    with pytest.raises(ValueError, match="a.weight"):
        flatten_moments(flat, names, numels=[4, 2])
