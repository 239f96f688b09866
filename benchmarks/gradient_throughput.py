"""Gradient-pass throughput: ours vs the one-example-at-a-time reference, and vs the floor.

On one random-init Llama-style model (LoRA on q/k/v/o) and the same examples, times:

(a) the reference method: one example per forward+backward, flatten the LoRA gradient,
    Adam transform, TRAK ``BasicProjector`` every 16 examples (as LESS's reference code);
(b) ``GradientDumpLoop`` (the real ``trainer.predict`` pass into a datastore) with the same
    TRAK projector (same matrix: bit-identical projections);
(c) ``GradientDumpLoop`` with the sparse JL projector;
(d) a plain batched forward+backward of the same examples with no per-example work (the floor).

Prints examples/s for each and, LAST, exactly:
``speedup_vs_reference=<b/a> fast_speedup_vs_reference=<c/a> overhead_vs_floor=<time c / time d>``

    python benchmarks/gradient_throughput.py --quick          # < 60 s on 2 CPU cores
    python benchmarks/gradient_throughput.py --preset llama-1b --device cuda --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = {
    # name: hidden, layers, heads, intermediate, vocab
    "small": (512, 6, 8, 1376, 8192),      # about 27M parameters
    "llama-1b": (2048, 16, 32, 8192, 32000),  # Llama-3.2-1B-like shape, random init
}


def build(tmp: Path, preset: str, n: int, seq_len: int, lora_r: int, device: str, seed: int = 0):
    """Save a random-init model + char tokenizer, a snapshot (adapter + moments) and n examples."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lightning_less.models.tiny import build_tokenizer

    hidden, layers, heads, inter, vocab = PRESETS[preset]
    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max(seq_len, 128) + 8, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    peft = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    names, moments = [], {}
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if p.requires_grad:
                if "lora_B" in name:  # a warmed-up adapter: B is no longer zero
                    p.normal_(0, 0.02)
                names.append(name)
                moments[f"{name}.exp_avg"] = torch.randn_like(p) * 1e-4
                moments[f"{name}.exp_avg_sq"] = torch.rand_like(p) * 1e-8
    snap = tmp / "snapshots" / "epoch_000"
    peft.save_pretrained(snap)
    save_file(moments, str(snap / "optimizer_moments.safetensors"))
    (snap / "snapshot.json").write_text(json.dumps({
        "format_version": 1, "epoch": 0, "global_step": 1, "lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8,
        "step": 1, "base_model": str(tmp / "model"), "param_names": names}))
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz     "
    with open(tmp / "data.jsonl", "w") as f:
        for i in range(n):
            total = rng.randint(seq_len // 2, seq_len - 8)  # char tokenizer: one token per character
            p_len = total * 2 // 3
            prompt = "".join(rng.choice(letters) for _ in range(p_len - 20)).strip() or "q"
            answer = "".join(rng.choice(letters) for _ in range(total - p_len)).strip() or "a"
            f.write(json.dumps({"id": f"x{i}", "prompt": prompt, "completion": answer}) + "\n")
    grad_dim = sum(moments[f"{n}.exp_avg"].numel() for n in names)
    return n_params, grad_dim


def datamodule(tmp: Path, seq_len: int, batch_size: int):
    from lightning_less.data.datamodule import InstructionDataModule

    dm = InstructionDataModule(predict_files=[str(tmp / "data.jsonl")], tokenizer_name_or_path=str(tmp / "model"),
                               max_length=seq_len, eval_batch_size=batch_size)
    dm.setup("predict")
    return dm


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reference(tmp: Path, seq_len: int, dim: int, device: str) -> tuple[float, np.ndarray]:
    """(a) LESS's reference loop: batch size 1, full backward per example, TRAK every 16 examples."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from trak.projectors import BasicProjector, ProjectionType
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "model"), tmp / "snapshots" / "epoch_000",
                                      is_trainable=True).to(device).eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    mom = load_file(str(tmp / "snapshots" / "epoch_000" / "optimizer_moments.safetensors"))
    m = torch.cat([mom[f"{n}.exp_avg"].flatten() for n in names]).to(device)
    v = torch.cat([mom[f"{n}.exp_avg_sq"].flatten() for n in names]).to(device)
    proj = BasicProjector(grad_dim=m.numel(), proj_dim=dim, seed=0, proj_type=ProjectionType.rademacher,
                          device=torch.device(device), block_size=128, dtype=torch.float32)
    loader = datamodule(tmp, seq_len, 1).predict_dataloader()
    out, buf = [], []
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        batch = {k: t.to(device) for k, t in batch.items()}
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        g = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
        model.zero_grad(set_to_none=True)
        m2 = 0.9 * m + 0.1 * g
        v2 = 0.999 * v + 0.001 * g * g
        buf.append(m2 / torch.sqrt(v2 + 1e-8))
        if len(buf) == 16:
            out.append(proj.project(torch.stack(buf), model_id=0).cpu())
            buf = []
    if buf:
        out.append(proj.project(torch.stack(buf), model_id=0).cpu())
    sync(device)
    return time.perf_counter() - start, torch.cat(out).numpy()


def ours(tmp: Path, seq_len: int, dim: int, projector: str, batch_size: int, device: str, name: str) -> tuple[float, np.ndarray]:
    """(b)/(c) the real GradientDumpLoop (trainer.predict + datastore), whole run timed."""
    from lightning_less.passes.gradient_features import GradientDumpLoop

    out = tmp / f"store_{name}"
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    loop = GradientDumpLoop(snapshots=str(tmp / "snapshots"), output_dir=str(out), feature="adam", dims=[dim],
                            projector=projector, store_dtype="float32",
                            trainer_kwargs={"accelerator": accelerator, "devices": 1, "enable_progress_bar": False,
                                            "enable_model_summary": False})
    dm = datamodule(tmp, seq_len, batch_size)
    sync(device)
    start = time.perf_counter()
    store = loop.run(dm)
    sync(device)
    elapsed = time.perf_counter() - start
    return elapsed, np.asarray(store.features("epoch_000", dim))


def floor(tmp: Path, seq_len: int, batch_size: int, device: str) -> float:
    """(d) plain batched forward+backward (LoRA parameter gradients), no per-example work."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "model"), tmp / "snapshots" / "epoch_000",
                                      is_trainable=True).to(device).eval()
    loader = datamodule(tmp, seq_len, batch_size).predict_dataloader()
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        batch = {k: t.to(device) for k, t in batch.items()}
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
        model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small case that finishes in under 60 s on 2 CPU cores")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None, help="projection dim (default 8192 as the paper; 1024 with --quick)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    n = args.examples or (32 if args.quick else 128)
    seq_len = args.seq_len or (96 if args.quick else 128)
    args.dim = args.dim or (1024 if args.quick else 8192)
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    try:
        n_params, grad_dim = build(tmp, args.preset, n, seq_len, args.lora_r, args.device)
        print(f"model: {args.preset} ({n_params / 1e6:.1f}M parameters), LoRA r={args.lora_r} on q/k/v/o "
              f"({grad_dim:,} trainable), {n} examples of up to {seq_len} tokens, d={args.dim}, "
              f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
        t_d = floor(tmp, seq_len, args.batch_size, args.device)  # also warms up kernels and caches
        t_a, f_a = reference(tmp, seq_len, args.dim, args.device)
        t_b, f_b = ours(tmp, seq_len, args.dim, "trak_basic", args.batch_size, args.device, "basic")
        t_c, _ = ours(tmp, seq_len, args.dim, "sparse_jl", args.batch_size, args.device, "sparse")
        t_d = min(t_d, floor(tmp, seq_len, args.batch_size, args.device))
        rel = float(np.abs(f_b - f_a).max() / np.abs(f_a).max())
        for label, t in (("(a) reference, one example at a time + TRAK every 16", t_a),
                         ("(b) GradientDumpLoop, TRAK BasicProjector", t_b),
                         ("(c) GradientDumpLoop, sparse JL", t_c),
                         ("(d) floor: plain batched forward+backward", t_d)):
            print(f"{label:<56s} {n / t:8.2f} examples/s  ({t:.2f} s)")
        print(f"max |features(b) - features(a)| / max |features(a)| = {rel:.2e}  (same projection matrix)")
        print(f"speedup_vs_reference={t_a / t_b:.2f} fast_speedup_vs_reference={t_a / t_c:.2f} overhead_vs_floor={t_c / t_d:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
