"""Gradient-pass throughput: ours vs the one-example-at-a-time reference, and vs the floor; uniform and real lengths.

Two cases. ``--lengths uniform`` (the default) measures steady-state rates on examples whose
lengths repeat in every batch; ``--lengths sharegpt`` measures whole passes over examples with
real lengths (below, "Real lengths"). The uniform case: on one random-init Llama-style model
(LoRA on q/k/v/o) and the same examples, measures:

(a) the reference method: one example per forward+backward, flatten the LoRA gradient,
    Adam transform, TRAK ``BasicProjector`` every 16 examples (as LESS's reference code);
(b) ``GradientDumpLoop`` (the real ``trainer.predict`` pass into a datastore) with the same
    TRAK projector (same matrix: bit-identical projections);
(c) ``GradientDumpLoop`` with the sparse JL projector;
(d) the floor: a plain batched forward + backward (LoRA parameter gradients) of the same
    batches (same batch size, padding, dtype and threads), no per-example work.

How it is timed, so that the ratios reproduce:

* Steady state. (b) and (c) run the whole ``GradientDumpLoop.run`` (fresh Trainer, model
  and snapshot loading, store creation, finalisation), but a callback stamps the start of
  every predict batch and the end of the predict epoch: a batch's time runs from its start
  to the next one's (its step, the datastore write, fetching the next batch). The steady
  time is that of every batch but the first; the fixed costs are printed apart: *setup*
  (``run()`` called -> first batch starts), *first batch* (its time beyond a steady batch:
  the lazy sparse-JL matrix draw, first-call allocations) and *finalise* (last batch done ->
  ``run()`` returns). (d) is timed the same way on a model loaded once and warmed up.
  (b)'s buffered TRAK projection runs in its last batch, so its steady time includes it:
  when TRAK's matrix is too large to keep (d=8192 here), (b) regenerates it once per 1 GiB
  of buffered gradient rows (1,365 rows of this model), so a run shorter than that pays one
  generation for fewer rows and (b)'s rate grows with the run's length up to that size.
* Same work in every batch. Example lengths repeat one shuffled pattern per batch, so every
  batch pads to the same length and the per-example costs of different runs compare exactly
  (batches in file order: ``predict_batching="file_order"``).
* The reference (a) costs the same for each group of 16 examples (16 backwards, one TRAK
  call), so it runs fewer examples (``--ref-groups`` groups of 16, on a model loaded once and
  warmed up) and its per-example time is compared with the others'.
* Repeats, interleaved a, b, c, d, a, b, c, d, ... (``--repeats``, at least 3) so drift and
  other load hit every configuration alike; each ratio is taken within one repeat and the
  median and spread (max - min, as % of the median) over repeats are printed. Torch's
  intra-op threads are pinned (``--threads``) for every configuration and printed, and so
  is the load average before and after (other processes on the cores make every figure
  noisy: compare ratios, not absolute rates, across machines).

Prints the per-configuration table, the fixed costs (also as a share of the steady time
of 1,000 examples), each ratio's spread and, LAST, exactly
``speedup_vs_reference=<b/a> fast_speedup_vs_reference=<c/a> overhead_vs_floor=<time c / time d>``
(per-example steady times, medians over repeats).

Real lengths (``--lengths sharegpt``). A per-example pass computes every padded token, and
real examples vary widely in length, so what batches hold matters as much as the per-example
method. The examples get the token lengths of the first ``--examples`` first exchanges of
ShareGPT in SmolLM2's tokenizer (``benchmarks/sharegpt_lengths.py``), truncated to
``--seq-len`` (the max_length, default 2048), in ShareGPT's file order; their token ids are
random (one character each with the built-in char tokenizer). Measured, interleaved over
``--repeats`` as above, on the ``--preset`` model (default ``mini``, a random-init 3.7M-parameter
Llama-style stand-in for SmolLM2-135M, which is too slow for 2048 tokens on 2 CPU cores; its
shape is the ``smollm2-135m`` preset, for a GPU):

(a) the reference, one example at a time + TRAK every 16, on ``--ref-examples`` examples
    spread evenly over the sample's lengths (every k-th by length), so its per-example time
    stands for the sample's;
(b) ``GradientDumpLoop`` with batches of consecutive examples (``predict_batching="file_order"``);
(c) ``GradientDumpLoop`` with length-grouped batches (the default, ``predict_batching="length"``);
(d) the floor: a plain batched forward+backward of the same length-grouped batches.

(b) and (c) use ``--projector`` (default sparse JL). Each is timed over the whole pass, from
the first batch's start to the end of the predict epoch (batches differ in size, so no batch
is left out); setup (``run()`` called -> first batch) is printed apart. The sample's real and
padded token counts are printed with the times. The LAST line is exactly
``grouped_speedup_vs_file_order=<time b / time c> grouped_overhead_vs_floor=<time c / time d>
grouped_speedup_vs_reference=<time a / time c>`` (per-example times, medians over repeats).

    python benchmarks/gradient_throughput.py --quick          # about 1 minute on 2 CPU cores
    python benchmarks/gradient_throughput.py                  # about 6 minutes on 2 quiet CPU cores
    python benchmarks/gradient_throughput.py --preset llama-1b --device cuda --seq-len 512
    python benchmarks/gradient_throughput.py --lengths sharegpt --quick     # a few minutes (max_length 512)
    python benchmarks/gradient_throughput.py --lengths sharegpt            # max_length 2048 (see README, "Speed")
    python benchmarks/gradient_throughput.py --lengths sharegpt --preset smollm2-135m --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

PRESETS = {
    # name: hidden, layers, heads, key/value heads, intermediate, vocab
    "mini": (256, 4, 4, 4, 688, 1024),     # about 3.7M parameters: the real-length case on CPU
    "small": (512, 6, 8, 8, 1376, 8192),      # about 27M parameters
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152),  # SmolLM2-135M's shape, random init
    "llama-1b": (2048, 16, 32, 32, 8192, 32000),  # Llama-3.2-1B-like shape, random init
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _text(rng: random.Random, length: int) -> str:
    """``length`` characters (one token each with the char tokenizer), letters at both ends."""
    inner = "".join(rng.choice(LETTERS + "    ") for _ in range(max(0, length - 2)))
    return (rng.choice(LETTERS) + inner + rng.choice(LETTERS))[:length] if length > 0 else ""


def build_model(tmp: Path, preset: str, seq_len: int, lora_r: int, seed: int = 0) -> tuple[int, int]:
    """Save a random-init model + char tokenizer and a snapshot (adapter + moments); its sizes."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lightning_less.models.tiny import build_tokenizer

    hidden, layers, heads, kv_heads, inter, vocab = PRESETS[preset]
    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
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
    return n_params, sum(moments[f"{n}.exp_avg"].numel() for n in names)


def write_uniform_data(tmp: Path, n: int, seq_len: int, batch_size: int, seed: int = 0) -> None:
    """n examples whose lengths repeat one pattern (shuffled) every ``batch_size`` examples, so every
    batch (in file order) holds the same lengths and pads to the same shape."""
    rng = random.Random(seed)
    lo, hi = seq_len // 2, seq_len - 8  # text lengths; the template adds a few tokens
    pattern = [lo + (hi - lo) * i // max(1, batch_size - 1) for i in range(batch_size)]
    with open(tmp / "data.jsonl", "w") as f:
        for start in range(0, n, batch_size):
            lengths = rng.sample(pattern, len(pattern))
            for i, total in zip(range(start, min(n, start + batch_size)), lengths):
                p_len = total * 2 // 3
                f.write(json.dumps({"id": f"x{i}", "prompt": _text(rng, p_len - 20),
                                    "completion": _text(rng, total - p_len)}) + "\n")


#: Tokens the Tülu template adds to a prompt/completion record in the char tokenizer (BOS, role tags, EOS...).
TEMPLATE_TOKENS = 8


def write_real_data(tmp: Path, lengths: np.ndarray, seed: int = 0) -> None:
    """One example per entry of ``lengths`` (tokens, template included; at least 10), random characters,
    two thirds prompt and one third response."""
    rng = random.Random(seed)
    with open(tmp / "data.jsonl", "w") as f:
        for i, total in enumerate(lengths):
            chars = max(2, int(total) - TEMPLATE_TOKENS)
            p_len = max(1, chars * 2 // 3)
            f.write(json.dumps({"id": f"x{i}", "prompt": _text(rng, p_len), "completion": _text(rng, chars - p_len)}) + "\n")


def datamodule(tmp: Path, seq_len: int, batch_size: int, batching: str = "file_order"):
    from lightning_less.data.datamodule import InstructionDataModule

    dm = InstructionDataModule(predict_files=[str(tmp / "data.jsonl")], tokenizer_name_or_path=str(tmp / "model"),
                               max_length=seq_len, eval_batch_size=batch_size, predict_batching=batching)
    dm.setup("predict")
    return dm


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    """One run of one configuration: per-batch times and, for the real pass, its fixed costs."""

    batches: list[float]
    examples: list[int]
    """Examples in each batch."""
    setup: float = 0.0
    finalise: float = 0.0
    warm: int = 1
    """Leading batches left out of the steady time (the reference's groups are all alike: 0)."""

    @property
    def steady(self) -> float:
        """Seconds per example over every batch but the first ``warm``."""
        return sum(self.batches[self.warm :]) / sum(self.examples[self.warm :])

    @property
    def first_extra(self) -> float:
        return self.batches[0] - statistics.median(self.batches[1:])

    @property
    def fixed(self) -> float:
        return self.setup + self.first_extra + self.finalise


class BatchClock(Callback):
    """Stamps each predict batch's start and the predict epoch's end (after the datastore writes)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.starts: list[float] = []
        self.end = 0.0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        sync(self.device)
        self.starts.append(time.perf_counter())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.end = time.perf_counter()


def load_peft(tmp: Path, device: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "model"), tmp / "snapshots" / "epoch_000",
                                     is_trainable=True).to(device).eval()


class Reference:
    """(a) LESS's reference loop: batch size 1, full backward per example, TRAK every 16 examples."""

    def __init__(self, tmp: Path, seq_len: int, dim: int, device: str, indices: list[int] | None = None) -> None:
        from safetensors.torch import load_file
        from trak.projectors import BasicProjector, ProjectionType

        self.device = device
        self.model = load_peft(tmp, device)
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        mom = load_file(str(tmp / "snapshots" / "epoch_000" / "optimizer_moments.safetensors"))
        self.m = torch.cat([mom[f"{n}.exp_avg"].flatten() for n in self.names]).to(device)
        self.v = torch.cat([mom[f"{n}.exp_avg_sq"].flatten() for n in self.names]).to(device)
        self.proj = BasicProjector(grad_dim=self.m.numel(), proj_dim=dim, seed=0, proj_type=ProjectionType.rademacher,
                                   device=torch.device(device), block_size=128, dtype=torch.float32)
        self.examples = list(datamodule(tmp, seq_len, 1).predict_dataloader())  # one example a batch, in file order
        if indices is not None:
            self.examples = [self.examples[i] for i in indices]
        self.run(1, group=2)  # warm-up (untimed): two backwards and one TRAK call

    def run(self, groups: int, group: int = 16) -> tuple[Timing, np.ndarray]:
        """The first ``groups`` * 16 examples; one 'batch' per group of 16 (16 backwards + one TRAK call)."""
        model, out, times = self.model, [], []
        for g in range(groups):
            sync(self.device)
            start = time.perf_counter()
            buf = []
            for batch in self.examples[group * g : group * (g + 1)]:
                batch = {k: t.to(self.device) for k, t in batch.items()}
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
                loss.backward()
                grad = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
                model.zero_grad(set_to_none=True)
                m2 = 0.9 * self.m + 0.1 * grad
                v2 = 0.999 * self.v + 0.001 * grad * grad
                buf.append(m2 / torch.sqrt(v2 + 1e-8))
            out.append(self.proj.project(torch.stack(buf), model_id=0).cpu())
            sync(self.device)
            times.append(time.perf_counter() - start)
        # The model is warm, and in the uniform case every group costs the same: none dropped.
        return Timing(batches=times, examples=[group] * groups, warm=0), torch.cat(out).numpy()


def ours(tmp: Path, seq_len: int, dim: int, projector: str, batch_size: int, device: str, out: Path,
         batching: str = "file_order", whole: bool = False) -> tuple[Timing, np.ndarray]:
    """(b)/(c) the real GradientDumpLoop (trainer.predict + datastore): batches stamped, fixed costs apart.

    ``whole``: every batch counts (real lengths: batches differ, the first is the longest).
    """
    from lightning_less.passes.gradient_features import GradientDumpLoop

    clock = BatchClock(device)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    loop = GradientDumpLoop(snapshots=str(tmp / "snapshots"), output_dir=str(out), feature="adam", dims=[dim],
                            projector=projector, store_dtype="float32",
                            trainer_kwargs={"accelerator": accelerator, "devices": 1, "enable_progress_bar": False,
                                            "enable_model_summary": False, "callbacks": [clock]})
    dm = datamodule(tmp, seq_len, batch_size, batching)  # reading and tokenising the data is the user's, not timed
    sizes = [len(b) for b in dm.predict_dataloader().batch_sampler]
    sync(device)
    start = time.perf_counter()
    store = loop.run(dm)
    sync(device)
    finished = time.perf_counter()
    stamps = [*clock.starts, clock.end]
    timing = Timing(batches=list(np.diff(stamps)), examples=sizes, setup=clock.starts[0] - start,
                    finalise=finished - clock.end, warm=0 if whole else 1)
    features = np.asarray(store.features("epoch_000", dim))
    store.close()
    shutil.rmtree(out, ignore_errors=True)
    return timing, features


class Floor:
    """(d) plain batched forward+backward (LoRA parameter gradients), no per-example work."""

    def __init__(self, tmp: Path, seq_len: int, batch_size: int, device: str, batching: str = "file_order") -> None:
        self.device = device
        self.model = load_peft(tmp, device)
        self.loader = datamodule(tmp, seq_len, batch_size, batching).predict_dataloader()
        self.run(limit=2)  # warm-up (untimed)

    def run(self, limit: int | None = None, whole: bool = False) -> Timing:
        """Every batch (or the first ``limit``); ``whole``: the first counts in the time too."""
        stamps, sizes = [], []
        for i, batch in enumerate(self.loader):  # stamped when a batch is in hand, like the pass's callback
            if i == limit:
                break
            sync(self.device)
            stamps.append(time.perf_counter())
            sizes.append(len(batch["input_ids"]))
            batch = {k: t.to(self.device) for k, t in batch.items()}
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            self.model.zero_grad(set_to_none=True)
        sync(self.device)
        stamps.append(time.perf_counter())
        return Timing(batches=list(np.diff(stamps)), examples=sizes, warm=0 if whole else 1)


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:7.2f}  (min-max {min(values):.2f}-{max(values):.2f}, spread {100 * (max(values) - min(values)) / med:4.1f}%)"


def uniform_case(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The steady-state case: the same lengths in every batch, batches in file order."""
    n_batches = args.batches or (4 if args.quick else 12)
    if n_batches < 2:
        parser.error("--batches must be at least 2 (the first batch is not steady)")
    groups = args.ref_groups or (1 if args.quick else 2)
    seq_len = args.seq_len or (96 if args.quick else 128)
    preset = args.preset or "small"
    if 16 * groups > n_batches * args.batch_size:
        parser.error("the reference runs on the first 16 * --ref-groups examples: give more --batches")
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    try:
        n_params, grad_dim = build_model(tmp, preset, seq_len, args.lora_r)
        write_uniform_data(tmp, n_batches * args.batch_size, seq_len, args.batch_size)
        print(f"model: {preset} ({n_params / 1e6:.1f}M parameters), LoRA r={args.lora_r} on q/k/v/o "
              f"({grad_dim:,} trainable), examples of up to {seq_len} tokens (same lengths in every batch), "
              f"d={args.dim}, batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
        print(f"per repeat: (b) (c) (d) {n_batches} batches = {n_batches * args.batch_size} examples "
              f"(steady: the last {(n_batches - 1) * args.batch_size}); (a) {16 * groups} examples "
              f"(+2 warm-up once); {args.repeats} repeats interleaved")
        reference = Reference(tmp, seq_len, args.dim, args.device)
        base = Floor(tmp, seq_len, args.batch_size, args.device)
        runs: dict[str, list[Timing]] = {k: [] for k in "abcd"}
        rel = 0.0
        for rep in range(args.repeats):
            t_a, f_a = reference.run(groups)
            t_b, f_b = ours(tmp, seq_len, args.dim, "trak_basic", args.batch_size, args.device, tmp / "store_b")
            t_c, _ = ours(tmp, seq_len, args.dim, "sparse_jl", args.batch_size, args.device, tmp / "store_c")
            t_d = base.run()
            for key, t in zip("abcd", (t_a, t_b, t_c, t_d)):
                runs[key].append(t)
            rel = max(rel, float(np.abs(f_b[: len(f_a)] - f_a).max() / np.abs(f_a).max()))
            print(f"repeat {rep + 1}: " + "  ".join(f"({k}) {1 / runs[k][-1].steady:.2f}" for k in "abcd")
                  + " examples/s", flush=True)
        labels = {"a": "(a) reference, one example at a time + TRAK every 16", "b": "(b) GradientDumpLoop, TRAK BasicProjector",
                  "c": "(c) GradientDumpLoop, sparse JL", "d": "(d) floor: plain batched forward+backward"}
        print(f"\nsteady-state examples/s, median over {args.repeats} repeats:")
        for key, label in labels.items():
            print(f"{label:<56s} {spread([1 / t.steady for t in runs[key]])}")
        print("\nfixed costs of GradientDumpLoop.run (seconds, median over repeats; not in the steady times):")
        for key in "bc":
            ts = runs[key]
            med = {f: statistics.median(getattr(t, f) for t in ts) for f in ("setup", "first_extra", "finalise", "fixed")}
            per_1000 = med["fixed"] / (1000 * statistics.median(t.steady for t in ts))
            print(f"{labels[key]:<56s} setup {med['setup']:.2f}  first batch +{med['first_extra']:.2f}  finalise "
                  f"{med['finalise']:.2f}  = {med['fixed']:.2f} s, {100 * per_1000:.1f}% of the steady time of 1,000 examples")
        ratios = {"speedup_vs_reference": [a.steady / b.steady for a, b in zip(runs["a"], runs["b"])],
                  "fast_speedup_vs_reference": [a.steady / c.steady for a, c in zip(runs["a"], runs["c"])],
                  "overhead_vs_floor": [c.steady / d.steady for c, d in zip(runs["c"], runs["d"])]}
        print("\nratios of per-example steady times, each within one repeat:")
        for name, values in ratios.items():
            print(f"{name:<27s} {spread(values)}")
        print(f"max |features(b) - features(a)| / max |features(a)| = {rel:.2e}  (same projection matrix)")
        print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
              f"{time.perf_counter() - began:.0f} s in all")
        print(" ".join(f"{name}={statistics.median(values):.2f}" for name, values in ratios.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def real_case(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Real lengths (ShareGPT's): file-order vs length-grouped batches, the floor and the reference, whole passes."""
    from sharegpt_lengths import exchange_lengths, padded_tokens

    seq_len = args.seq_len or (512 if args.quick else 2048)
    n = args.examples or (32 if args.quick else 160)
    groups = args.ref_groups or (1 if args.quick else 2)
    preset = args.preset or "mini"
    if 16 * groups > n:
        parser.error("the reference runs on 16 * --ref-groups of the examples: give more --examples")
    # At least the template and a character each of prompt and response (ShareGPT has a few empty-ish turns).
    lengths = np.clip(exchange_lengths(n)[:n], TEMPLATE_TOKENS + 2, seq_len)
    if lengths.size < n:
        parser.error(f"ShareGPT holds only {lengths.size} exchanges")
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-"))
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    try:
        n_params, grad_dim = build_model(tmp, preset, seq_len, args.lora_r)
        write_real_data(tmp, lengths)
        grouped_loader = datamodule(tmp, seq_len, args.batch_size, "length").predict_dataloader()
        made = grouped_loader.dataset.lengths
        assert np.array_equal(made, lengths), "the written examples do not have the lengths asked for"
        real = int(lengths.sum())
        padded = {"b": padded_tokens(lengths, args.batch_size),
                  "c": int(sum(lengths[b].max() * len(b) for b in grouped_loader.batch_sampler))}
        # The reference's examples: every k-th by length, so their lengths spread like the sample's.
        by_length = np.argsort(lengths, kind="stable")
        picked = sorted(by_length[np.linspace(0, n - 1, 16 * groups).round().astype(int)].tolist())
        print(f"model: {preset} ({n_params / 1e6:.1f}M parameters, random init; a stand-in for SmolLM2-135M unless "
              f"--preset smollm2-135m), LoRA r={args.lora_r} on q/k/v/o ({grad_dim:,} trainable), d={args.dim}, "
              f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
        print(f"examples: the first {n} ShareGPT first exchanges' lengths in SmolLM2's tokenizer, max_length {seq_len} "
              f"(mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, {int(np.sum(lengths == seq_len))} truncated), "
              f"random token ids; {real:,} real tokens")
        print(f"padded tokens computed: (b) file order {padded['b']:,} ({padded['b'] / real:.2f}x real), "
              f"(c) length-grouped {padded['c']:,} ({padded['c'] / real:.2f}x real); (a) {16 * groups} examples "
              f"(mean {lengths[picked].mean():.0f} tokens), no padding; {args.repeats} repeats interleaved")
        reference = Reference(tmp, seq_len, args.dim, args.device, indices=picked)
        base = Floor(tmp, seq_len, args.batch_size, args.device, batching="length")
        runs: dict[str, list[Timing]] = {k: [] for k in "abcd"}
        rel = 0.0
        for rep in range(args.repeats):
            t_a, _ = reference.run(groups)
            t_b, f_b = ours(tmp, seq_len, args.dim, args.projector, args.batch_size, args.device, tmp / "store_b",
                            batching="file_order", whole=True)
            t_c, f_c = ours(tmp, seq_len, args.dim, args.projector, args.batch_size, args.device, tmp / "store_c",
                            batching="length", whole=True)
            t_d = base.run(whole=True)
            for key, t in zip("abcd", (t_a, t_b, t_c, t_d)):
                runs[key].append(t)
            rel = max(rel, float(np.abs(f_c - f_b).max() / np.abs(f_b).max()))
            print(f"repeat {rep + 1}: " + "  ".join(f"({k}) {1 / runs[k][-1].steady:.2f}" for k in "abcd")
                  + " examples/s", flush=True)
        labels = {"a": "(a) reference, one example at a time + TRAK every 16",
                  "b": f"(b) GradientDumpLoop, file order, {args.projector}",
                  "c": f"(c) GradientDumpLoop, length-grouped, {args.projector}",
                  "d": "(d) floor: plain forward+backward, length-grouped"}
        print(f"\nexamples/s over whole passes, median over {args.repeats} repeats:")
        for key, label in labels.items():
            print(f"{label:<56s} {spread([1 / t.steady for t in runs[key]])}")
        setup = {k: statistics.median(t.setup for t in runs[k]) for k in "bc"}
        print(f"setup of GradientDumpLoop.run (not in the times): (b) {setup['b']:.2f} s, (c) {setup['c']:.2f} s")
        ratios = {"grouped_speedup_vs_file_order": [b.steady / c.steady for b, c in zip(runs["b"], runs["c"])],
                  "grouped_overhead_vs_floor": [c.steady / d.steady for c, d in zip(runs["c"], runs["d"])],
                  "grouped_speedup_vs_reference": [a.steady / c.steady for a, c in zip(runs["a"], runs["c"])]}
        print("\nratios of per-example times, each within one repeat:")
        for name, values in ratios.items():
            print(f"{name:<30s} {spread(values)}")
        print(f"max |features(c) - features(b)| / max |features(b)| = {rel:.2e}  (the same rows, other batch companions)")
        print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
              f"{time.perf_counter() - began:.0f} s in all")
        print(" ".join(f"{name}={statistics.median(values):.2f}" for name, values in ratios.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small case: about 1 minute on 2 CPU cores "
                        "(a few minutes with --lengths sharegpt)")
    parser.add_argument("--lengths", default="uniform", choices=["uniform", "sharegpt"],
                        help="uniform: the same lengths in every batch, steady state; sharegpt: real lengths, whole passes")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="the random-init model (default small; mini with --lengths sharegpt)")
    parser.add_argument("--batches", type=int, default=None,
                        help="uniform: batches per run of (b), (c), (d); the first is not steady (default 12, 4 with --quick)")
    parser.add_argument("--examples", type=int, default=None,
                        help="sharegpt: examples per run of (b), (c), (d) (default 160, 32 with --quick)")
    parser.add_argument("--ref-groups", type=int, default=None,
                        help="timed groups of 16 examples per run of the reference (a) (default 2, 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of a, b, c, d (at least 3)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="longest example (max_length): uniform 128 (96 with --quick); sharegpt 2048 (512 with --quick)")
    parser.add_argument("--dim", type=int, default=None, help="projection dim (default 8192 as the paper; 512 with --quick)")
    parser.add_argument("--projector", default="sparse_jl", help="sharegpt: the projector of (b) and (c)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads, all configs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (the median and spread need them)")
    torch.set_num_threads(args.threads)
    args.dim = args.dim or (512 if args.quick else 8192)
    (real_case if args.lengths == "sharegpt" else uniform_case)(args, parser)


if __name__ == "__main__":
    main()
