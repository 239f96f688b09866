"""Settings of the LESS pipeline's steps, one dataclass per step.

The defaults are the LESS paper's setting (Xia et al., 2024: Llama-2-7B, LoRA r=128 on the
attention projections, warmup on 5% of the pool for 4 epochs, 8192-dim projections, top
5% by the maximum over target subtasks of the mean cosine similarity, 4 epochs on the
selection), except where a field says otherwise. Every field appears in
``lightning-less pipeline --help`` as ``--<step>.<field>``.

The dataclasses are frozen: a default instance in a function signature is shared by every
call, so it must not be changed in place (use :func:`dataclasses.replace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

Projector = Literal["trak_basic", "trak_cuda", "sparse_jl"]
StoreDtype = Literal["float16", "float32", "int8", "1bit"]
Aggregation = Literal["max_subtask_mean", "mean", "round_robin"]

PROJECTORS: tuple[str, ...] = get_args(Projector)
STORE_DTYPES: tuple[str, ...] = get_args(StoreDtype)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


@dataclass(frozen=True)
class WarmupSettings:
    """Step 1, warmup: LoRA training on a seeded sample of the pool, one snapshot per epoch."""

    fraction: float = 0.05
    """Share of the pool drawn (seeded) for the warmup, in (0, 1]. Default 0.05, the paper's 5%."""
    epochs: int = 4
    """Warmup epochs; each epoch end writes one snapshot (LoRA weights + Adam moments). Default 4, as the paper."""
    learning_rate: float = 2e-5
    """Peak learning rate of the linear schedule. Default 2e-5, as the paper."""
    lora_r: int = 128
    """LoRA rank. Default 128, as the paper."""
    lora_alpha: int = 512
    """LoRA scaling alpha. Default 512, as the paper."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch. Default 0.1, as the paper."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Modules that get LoRA adapters. Default the attention projections q, k, v, o, as the paper."""
    batch_size: int = 1
    """Examples per device per step. Default 1 (the paper: 1 per GPU, effective batch 128 with accumulation)."""
    accumulate_grad_batches: int = 1
    """Batches accumulated per optimizer step. Default 1 (the paper: 32 on 4 GPUs, an effective batch of 128)."""
    warmup_ratio: float = 0.03
    """Share of the training steps spent in the learning-rate warmup. Default 0.03, as the paper."""


@dataclass(frozen=True)
class FeatureSettings:
    """Step 2, gradient features: per-example LoRA gradients of every snapshot, randomly projected."""

    dims: list[int] = field(default_factory=lambda: [8192])
    """Projection dimensions, all computed in one pass. Default [8192], the paper's dimension."""
    projector: Projector = "trak_basic"
    """Random projection: ``trak_basic`` (TRAK's, as the paper), ``trak_cuda`` (TRAK's CUDA kernel) or ``sparse_jl`` (a faster sparse Johnson-Lindenstrauss). Default ``trak_basic``."""
    projector_seed: int = 0
    """Seed of the projection matrix; pool and target features must share it. Default 0."""
    batch_size: int = 8
    """Examples per gradient pass batch (a speed setting; features do not depend on it). Default 8."""
    store_dtype: StoreDtype = "float16"
    """Dtype of the stored features: ``float16`` (as the paper's code), ``float32``, or quantized (QLESS-style) ``int8`` (one scale per row, 2x smaller than fp16) or ``1bit`` (signs only, 16x smaller; scores are cosines of sign vectors). Pool and target stores must be quantized alike. Default ``float16``."""


@dataclass(frozen=True)
class SelectionSettings:
    """Step 3, selection: influence scores of the pool against the targets and the top of the ranking."""

    fraction: float | None = None
    """Budget as a fraction of the pool, in (0, 1]. Default None: 0.05 (the paper's 5%) unless ``count`` is given."""
    count: int | None = None
    """Budget as a number of examples, at most the pool size (instead of ``fraction``). Default None."""
    dim: int | None = None
    """Which projected dimension to score with; one of the features' ``dims``. Default None: the first."""
    aggregation: Aggregation = "max_subtask_mean"
    """How scores against several target subtasks become one: ``max_subtask_mean`` (the paper: the maximum over subtasks of the mean score), ``mean`` or ``round_robin``. Default ``max_subtask_mean``."""


@dataclass(frozen=True)
class TrainSettings:
    """Step 4, training on the selection and evaluation on the target task."""

    model_name_or_path: str | None = None
    """Model trained on the selection; may differ from the selecting model (the paper's LESS-T transfer). Default None: the selecting model."""
    epochs: int = 4
    """Training epochs on the selection. Default 4, as the paper."""
    learning_rate: float = 2e-5
    """Peak learning rate of the linear schedule. Default 2e-5, as the paper."""
    use_lora: bool = True
    """Train LoRA adapters (as the paper) or, when false, every weight. Default true."""
    lora_r: int = 128
    """LoRA rank. Default 128, as the paper."""
    lora_alpha: int = 512
    """LoRA scaling alpha. Default 512, as the paper."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch. Default 0.1, as the paper."""
    batch_size: int = 1
    """Examples per device per step. Default 1 (the paper: 1 per GPU, effective batch 128 with accumulation)."""
    accumulate_grad_batches: int = 1
    """Batches accumulated per optimizer step. Default 1 (the paper: an effective batch of 128)."""
    warmup_ratio: float = 0.03
    """Share of the training steps spent in the learning-rate warmup. Default 0.03, as the paper."""
    generation_max_new_tokens: int = 64
    """Tokens generated per held-out example for the exact-match metric. Default 64."""


@dataclass(frozen=True)
class TargetSetSettings:
    """Step 0 (optional): the target set built from a benchmark's own few-shot examples (as ``lightning-less targets``)."""

    benchmark: Literal["mmlu", "tydiqa", "bbh"] | None = None
    """Build the targets from this benchmark into ``<output>/targets/targets.jsonl``; None: use ``--targets`` as given."""
    data: str | None = None
    """The benchmark's local copy in its public format (MMLU ``data/``, a TydiQA-GoldP json, the BBH directory)."""
    n_per_subtask: int | None = None
    """Examples per subject / language / task. Default None: the paper's 5 / 1 / 3."""
    subtasks: list[str] | None = None
    """Only these subjects / languages / tasks. Default None: all found."""


@dataclass(frozen=True)
class EvalTaskSettings:
    """Step 5 (optional): the trained adapter on benchmarks through lm-evaluation-harness (as ``lightning-less evaluate``)."""

    tasks: list[str] = field(default_factory=list)
    """lm-eval task, group or tag names (``[mmlu]``, ``[bbh_cot_fewshot]``, ``[less_tydiqa]``). Empty: no benchmark evaluation."""
    num_fewshot: int | dict[str, int] | None = None
    """Shots for every task or per task. Default None: the paper's (mmlu 5, bbh_cot_fewshot 3, less_tydiqa 1)."""
    limit: int | dict[str, int] | None = None
    """At most this many (first) examples of each task, or per task (the paper: ``{bbh_cot_fewshot: 40, less_tydiqa: 200}``)."""
    batch_size: int = 8
    """lm-eval's batch size."""
    dtype: str | None = None
    """Weights dtype (``bfloat16``, ``float16``, ``float32``, ``auto``). Default None: the model's."""
    device: str | None = None
    """``cuda``, ``cuda:1``, ``cpu``. Default None: cuda when available."""
    include_path: list[str] = field(default_factory=list)
    """Directories of extra task YAMLs (``configs/eval/tasks`` holds ``less_tydiqa``)."""
    include_defaults: bool = True
    """Also index lm-eval's own tasks (off: only ``include_path``, faster)."""
