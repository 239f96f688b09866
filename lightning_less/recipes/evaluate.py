"""``lightning-less evaluate``: a base model (+ PEFT adapter) on benchmarks through lm-evaluation-harness."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning_less.errors import StaleOutputError
from lightning_less.evaluation.harness import HarnessSettings, run_harness, summarize
from lightning_less.evaluation.loading import load_for_evaluation
from lightning_less.evaluation.report import EvaluationReport


def evaluate(
    *,
    model: str,
    tasks: list[str],
    adapter: str | None = None,
    num_fewshot: int | dict[str, int] | None = None,
    limit: int | dict[str, int] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    output: str | None = None,
    include_path: list[str] | str | None = None,
    include_defaults: bool = True,
    seed: int = 0,
    bootstrap_iters: int = 0,
    log_samples: bool = False,
    overwrite: bool = False,
) -> EvaluationReport:
    """Evaluate a model, optionally with a PEFT adapter, on lm-eval tasks (the paper's: MMLU, BBH, TydiQA).

    The paper's shots are the default for its benchmarks (``mmlu`` 5, ``bbh_cot_fewshot``
    3, ``less_tydiqa`` 1); any other task keeps its config's own. See ``docs/evaluation.md``.

    Args:
        model: the base model: a hub name, a local directory or ``builtin:tiny-llama``.
        tasks: lm-eval task, group or tag names (``--tasks '[mmlu,bbh_cot_fewshot,less_tydiqa]'``).
        adapter: a PEFT adapter directory (``save_pretrained``) applied on top of ``model``.
        num_fewshot: shots for every task, or per name (``--num_fewshot '{mmlu: 5}'``).
        limit: at most this many (first) examples of each task, or per name (``{bbh_cot_fewshot: 40}``).
        batch_size: lm-eval's batch size.
        device: ``cuda``, ``cuda:1``, ``cpu``, ... (default: cuda when available).
        dtype: weights dtype (``float32``, ``bfloat16``, ``float16``, ``auto``).
        max_length: context length in tokens (default: the model config's).
        output: write the results (lm-eval's, plus the flat metrics) to this JSON file.
        include_path: directories of extra task YAMLs (``configs/eval/tasks`` for ``less_tydiqa``).
        include_defaults: also index lm-eval's own tasks (off: only ``include_path``, faster).
        seed: seed of lm-eval's samplers.
        bootstrap_iters: bootstrap iterations for standard errors (0: none).
        log_samples: keep every example's prompt, response and metric in ``output``.
        overwrite: replace an existing ``output``.

    Returns:
        An :class:`EvaluationReport` (printed as a table; ``to_dict()`` for JSON).
    """
    if output is not None and Path(output).exists() and not overwrite:
        raise StaleOutputError(f"{output} exists: pass --overwrite true to replace it, or choose another --output")
    settings = HarnessSettings(
        tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, max_length=max_length,
        include_path=[include_path] if isinstance(include_path, str) else list(include_path or []),
        include_defaults=include_defaults, seed=seed, bootstrap_iters=bootstrap_iters, log_samples=log_samples,
    )
    network, tokenizer = load_for_evaluation(model, adapter, dtype=dtype, device=device)
    results = run_harness(network, tokenizer, settings)
    report = EvaluationReport(
        model=model, adapter=adapter, metrics=summarize(results, settings.tasks),
        n_shot={k: int(v) for k, v in results.get("n-shot", {}).items()},
        samples={k: int(v.get("effective", 0)) for k, v in results.get("n-samples", {}).items()},
        output=output,
    )
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({**report.to_dict(), "lm_eval": results}, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return report


def evaluate_adapter(settings, model: str, adapter: Path, output: Path, seed: int, overwrite: bool = False) -> dict:
    """The pipeline's optional step 5: the trained adapter on ``settings.tasks``, reused when nothing changed.

    Args:
        settings: an :class:`~lightning_less.recipes.settings.EvalTaskSettings` with tasks.
        model: the trained base model.
        adapter: the adapter directory the training wrote.
        output: the step's directory (``results.json``, ``step.json``).
        seed: seed of lm-eval's samplers.
        overwrite: redo an evaluation made with other settings instead of refusing it.

    Returns:
        ``{"results": <path>, "metrics": {task/metric: value}}``.
    """
    from dataclasses import asdict

    from lightning_less.recipes.steps import file_hash, mark_done, step_done, step_result

    weights = sorted(Path(adapter).glob("adapter_model.*"))
    config = {"model": model, "adapter": str(adapter), "adapter_weights": [file_hash(w) for w in weights],
              "seed": seed, **asdict(settings)}
    if step_done(output, config, overwrite):
        return step_result(output)
    report = evaluate(model=model, adapter=str(adapter), tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                      limit=settings.limit, batch_size=settings.batch_size, device=settings.device, dtype=settings.dtype,
                      output=str(output / "results.json"), include_path=list(settings.include_path),
                      include_defaults=settings.include_defaults, seed=seed, overwrite=True)
    result = {"results": str(output / "results.json"), "metrics": report.metrics}
    mark_done(output, config, result)
    return result
