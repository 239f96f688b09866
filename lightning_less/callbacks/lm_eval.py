"""``LMEvalCallback``: lm-evaluation-harness benchmarks inside any Lightning fit, logged to the Trainer's loggers."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_less.errors import InputError
from lightning_less.evaluation.harness import HarnessSettings, run_harness, summarize, task_manager
from lightning_less.models.loading import load_tokenizer


class LMEvalCallback(Callback):
    """Evaluate the module's Hugging Face (or PEFT) model with lm-eval every n training epochs.

    At the end of every ``every_n_epochs``-th training epoch (epoch indices
    ``every_n_epochs - 1``, ``2 * every_n_epochs - 1``, ...) rank 0 puts the model in eval
    mode, runs the tasks through lm-eval's ``HFLM`` (the same code as ``lightning-less
    evaluate``), restores every submodule's train/eval mode and broadcasts the metrics;
    the other ranks wait in that broadcast. Every rank then logs the same values with
    ``pl_module.log`` (``<prefix><task>/<metric>``, e.g. ``lm_eval/mmlu/acc``), so the
    Trainer's loggers write them once and ``ModelCheckpoint(monitor=...)`` can use them.

    Under DDP the waiting ranks sit in a collective for the whole evaluation: a long one
    (MMLU on a 7B model) needs a process-group timeout to match
    (``DDPStrategy(timeout=timedelta(hours=2))``) or a ``limit``.

    Args:
        tasks: lm-eval task, group or tag names.
        every_n_epochs: evaluate after every n-th training epoch.
        num_fewshot: shots for every task or per name (default: the paper's for its benchmarks, else the task's).
        limit: at most this many (first) examples per task, for every task or per name.
        include_path: directories of extra task YAMLs (e.g. ``configs/eval/tasks``).
        include_defaults: also index lm-eval's own tasks (off: faster start, only ``include_path``).
        batch_size: lm-eval's batch size.
        max_length: context length in tokens (default: the model config's).
        tokenizer: a tokenizer name or path, when the module has no ``tokenizer`` attribute.
        prefix: prefix of the logged metric names.
        seed: seed of lm-eval's samplers (training's random streams are restored afterwards).
    """

    def __init__(
        self,
        tasks: list[str],
        every_n_epochs: int = 1,
        num_fewshot: int | dict[str, int] | None = None,
        limit: int | dict[str, int] | None = None,
        include_path: list[str] | str | None = None,
        include_defaults: bool = True,
        batch_size: int = 8,
        max_length: int | None = None,
        tokenizer: str | None = None,
        prefix: str = "lm_eval/",
        seed: int = 0,
    ) -> None:
        if every_n_epochs < 1:
            raise InputError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if not tasks:
            raise InputError("LMEvalCallback needs at least one task")
        self.settings = HarnessSettings(
            tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
            include_path=[include_path] if isinstance(include_path, str) else list(include_path or []),
            include_defaults=include_defaults, batch_size=batch_size, max_length=max_length, seed=seed,
        )
        self.every_n_epochs = every_n_epochs
        self.tokenizer_name = tokenizer
        self.prefix = prefix
        self.evaluated_epochs: list[int] = []  # epochs this rank ran lm-eval (rank 0 only)
        self.history: list[dict[str, Any]] = []  # {"epoch", "step", "metrics"} of every evaluation, on every rank
        self._manager = None
        self._tokenizer = None

    def _due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _tokenizer_for(self, pl_module: pl.LightningModule):
        if self._tokenizer is None:
            if self.tokenizer_name is not None:
                self._tokenizer = load_tokenizer(self.tokenizer_name)
            elif getattr(pl_module, "tokenizer", None) is not None:
                self._tokenizer = pl_module.tokenizer
            else:
                raise InputError("LMEvalCallback: the LightningModule has no `tokenizer`; pass tokenizer=<name or path>")
        return self._tokenizer

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Run the tasks on ``pl_module.model`` (or the module itself) in eval mode, then restore each submodule's mode."""
        model = getattr(pl_module, "model", pl_module)
        modes = [(m, m.training) for m in model.modules()]
        if self._manager is None:
            self._manager = task_manager(self.settings)
        try:
            model.eval()
            results = run_harness(model, self._tokenizer_for(pl_module), self.settings, self._manager)
        finally:
            for module, training in modes:
                module.train(training)
        return summarize(results, self.settings.tasks)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        metrics = None
        if trainer.is_global_zero:
            metrics = self.evaluate(pl_module)
            self.evaluated_epochs.append(trainer.current_epoch)
            rank_zero_info(f"lm-eval after epoch {trainer.current_epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "metrics": metrics})
        for key, value in metrics.items():
            # The same value on every rank: no reduction needed, the loggers write it once.
            pl_module.log(self.prefix + key, value, on_step=False, on_epoch=True, sync_dist=False)
