"""Commands of the ``lightning-less`` CLI that need no Trainer of their own."""

from __future__ import annotations


from lightning_less.models.tiny import save_tiny_model
from lightning_less.recipes.pipeline import TrainSettings, run_pipeline


def tiny_model(*, output: str, size: str = "tiny", seed: int = 0) -> None:
    """Build the offline tiny Llama-style model and tokenizer and save them to a directory.

    Args:
        output: directory to ``save_pretrained`` into.
        size: ``tiny`` or ``small``.
        seed: initialisation seed.
    """
    path = save_tiny_model(output, size=size, seed=seed)
    print(f"saved tiny model and tokenizer to {path}")


def demo_data(output: str = "demo_data", seed: int = 0, pool_size: int = 2400) -> None:
    """Write the built-in demo's pool (3 jsonl files in 3 formats), targets and evaluation set.

    Args:
        output: directory to write into.
        seed: the data's seed.
        pool_size: number of pool examples.
    """
    from lightning_less.data.demo import generate_demo_data

    paths = generate_demo_data(output, seed=seed, pool_size=pool_size)
    for key, value in paths.items():
        print(f"{key}: {value}")


def demo(output: str = "demo_output", seed: int = 0, methods: list[str] | None = None,
         target_task: str = "last_letter") -> None:
    """Run the built-in demo: the whole LESS pipeline and the baselines on generated data, on CPU.

    Prints a table and writes ``<output>/results.json``.

    Args:
        output: the run directory (finished steps found there are skipped).
        seed: seed of the data, the warmup sample, every sampled method and training.
        methods: methods to run (default: less, random, bm25, dsir, rds, s2l, full).
        target_task: the demo task the targets come from (``last_letter``, ``first_letter``, ``uppercase``, ...).
    """
    from lightning_less.recipes.demo import DEMO_METHODS, run_demo

    run_demo(output, seed=seed, methods=tuple(methods or DEMO_METHODS), target_task=target_task)


def report(
    *,
    selection: str,
    output: str | None = None,
    pool: list[str] | str | None = None,
    targets: list[str] | str | None = None,
    top_n: int = 5,
) -> dict:
    """Write an offline HTML report (index.html + PNG plots) of a selection directory.

    Args:
        selection: the selection directory (scores.csv, selected.jsonl, manifest.json).
        output: the report directory (default: <selection>/report).
        pool: pool jsonl file(s) (``--pool a.jsonl`` or ``--pool '[a.jsonl,b.jsonl]'``);
            default: the pool files recorded in the manifest.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``, if any.
        top_n: top pool examples (and target examples) shown per target subtask.
    """
    from lightning_less.analysis.report import report_command

    return report_command(selection, output, pool, targets, top_n)


def inspect_selection(
    *,
    selection: str,
    target_index: int | None = None,
    subtask: str | None = None,
    top_k: int = 10,
    targets: list[str] | str | None = None,
    pool: list[str] | str | None = None,
) -> list:
    """Print the top-k pool examples of one target subtask of a selection, with their scores.

    Args:
        selection: the selection directory.
        target_index: a target example's index (over the target files); shows the ranking of
            its subtask (per-example scores need the gradient features). Exclusive with subtask.
        subtask: the target subtask whose ranking (``score/<subtask>``) is shown.
        top_k: number of pool examples to show.
        targets: target jsonl file(s); default: the manifest's ``inputs.targets``.
        pool: pool jsonl file(s) for the texts; default: the pool files recorded in the manifest.
    """
    from lightning_less.analysis.inspect import inspect_selection as inspect_view
    from lightning_less.console import setup_logging

    setup_logging()
    return inspect_view(selection, target_index, subtask, top_k, targets, pool)


def select(
    *,
    method: str,
    pool: list[str],
    output: str,
    targets: list[str] | None = None,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    pool_store: str | None = None,
    target_store: str | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | None = None,
    n_clusters: int = 100,
    stratify_by_source: bool = False,
    max_length: int = 2048,
    overwrite: bool = False,
) -> None:
    """Select a budget of the pool with one method and write a selection directory.

    Every method writes the same outputs: ``scores.csv``, ``selected.jsonl`` (input lines,
    byte for byte) and ``manifest.json``.

    Args:
        method: ``less``, ``rds``, ``s2l``, ``random``, ``bm25``, ``dsir`` or ``full``.
        pool: the pool's jsonl files (one global selection over all of them).
        output: the selection directory (an existing different selection is refused).
        targets: target examples (jsonl with a ``subtask`` field); needed by less, rds, bm25, dsir.
        fraction: budget as a fraction of the pool (default 0.05, as LESS).
        count: budget as a number of examples (instead of ``fraction``).
        seed: seed of sampled methods (random, s2l, dsir with Gumbel).
        pool_store: LESS: the pool's ``adam`` gradient datastore.
        target_store: LESS: the targets' ``sgd`` gradient datastore.
        dim: LESS: which projected dim to use (default: the first).
        aggregation: LESS / RDS: ``max_subtask_mean`` (default), ``mean`` or ``round_robin``.
        model: RDS: the model whose hidden states are compared; S2L: a proxy to train when no trajectories are given.
        trajectories: S2L: a loss-trajectory store.
        n_clusters: S2L: number of k-means clusters.
        stratify_by_source: S2L: sample each source separately.
        max_length: truncation length in tokens (RDS, S2L proxy).
        overwrite: replace an existing selection.
    """
    from lightning_less.selection.runner import run_selection

    path = run_selection(method, pool, targets, output, fraction=fraction, count=count, seed=seed, pool_store=pool_store,
                         target_store=target_store, dim=dim, aggregation=aggregation, model=model,
                         trajectories=trajectories, n_clusters=n_clusters, stratify_by_source=stratify_by_source,
                         max_length=max_length, overwrite=overwrite)
    print(f"selection written to {path} (scores.csv, selected.jsonl, manifest.json)")


def compare(
    *,
    pool: list[str] | str,
    targets: list[str] | str,
    methods: list[str],
    output: str,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    target_sources: list[str] | None = None,
    target_form: str | None = None,
    group_by_regex: str | None = None,
    top_sources: int = 5,
    pool_store: str | None = None,
    target_store: str | None = None,
    dim: int | None = None,
    aggregation: str = "max_subtask_mean",
    model: str | None = None,
    trajectories: str | None = None,
    max_length: int = 2048,
    train: bool = False,
    eval: list[str] | str | None = None,
    train_settings: TrainSettings | None = None,
    trainer: dict | None = None,
    overwrite: bool = False,
) -> None:
    """Run several selection methods on the same pool, targets and budget and compare their selections.

    Writes ``<output>/selections/<method>`` (existing identical selections are reused) and
    ``comparison.json``, ``comparison.csv``, ``comparison.md`` and ``comparison.png``: per
    method the budget k, the target share, the pool's share, the top sources, the Jaccard
    overlap between methods and, with ``--train true``, target loss and exact match.

    Args:
        pool: the pool's jsonl file(s) (``--pool a.jsonl`` or ``--pool '[a.jsonl,b.jsonl]'``).
        targets: the target examples' jsonl file(s).
        methods: methods to compare (``--methods '[random,bm25,dsir]'``): ``less``, ``rds``, ``s2l``, ``random``, ``bm25``, ``dsir``, ``full``
            (``full`` takes the whole pool).
        output: the comparison directory.
        fraction: budget as a fraction of the pool (default 0.05 when ``count`` is not given).
        count: budget as a number of examples (instead of ``fraction``).
        seed: seed of every sampled method and of training.
        target_sources: pool ``source`` (``dataset``) values that count as the target task for
            ``target_share``; default: the target records' own ``source`` values.
        target_form: a regex searched in each ``source`` for an extra ``form_share`` column (e.g. ``_es$``).
        group_by_regex: a regex whose first group in ``source`` names a group; adds per-group shares.
        top_sources: how many of a selection's most frequent sources to list.
        pool_store: LESS: the pool's ``adam`` gradient datastore.
        target_store: LESS: the targets' ``sgd`` gradient datastore.
        dim: LESS: which projected dim to use (default: the first).
        aggregation: LESS / RDS: ``max_subtask_mean``, ``mean`` or ``round_robin``.
        model: RDS: the model whose hidden states are compared; S2L: a proxy to train without
            trajectories; training: the model trained on each selection.
        trajectories: S2L: a loss-trajectory store.
        max_length: truncation length in tokens (RDS, S2L proxy, training).
        train: train on each selection and evaluate on ``eval`` (off by default).
        eval: the target task's held-out examples (with ``train``).
        train_settings: training settings (with ``train``).
        trainer: extra Trainer arguments (S2L proxy, training).
        overwrite: redo selections and trainings made with other settings instead of refusing.
    """
    from lightning_less.recipes.compare import compare_methods, print_comparison

    result = compare_methods(pool, targets, methods, output, fraction=fraction, count=count, seed=seed,
                             target_sources=target_sources, target_form=target_form, group_by_regex=group_by_regex,
                             top_sources=top_sources, pool_store=pool_store, target_store=target_store, dim=dim,
                             aggregation=aggregation, model=model, trajectories=trajectories, max_length=max_length,
                             train=train, eval_files=eval, train_settings=train_settings, trainer=trainer,
                             overwrite=overwrite)
    print_comparison(result)


COMMANDS = {"demo": demo, "pipeline": run_pipeline, "select": select, "tiny-model": tiny_model, "demo-data": demo_data,
            "report": report, "inspect": inspect_selection,
            "compare": compare}
