"""Console output of the command line: progress and log lines on stderr through ``logging``.

A command's *result* goes to stdout, printed once by the CLI; everything else (progress,
skipped steps, warnings) goes to stderr, so ``lightning-less demo-data > paths.json``
captures only the result.
"""

from __future__ import annotations

import logging
import sys
import warnings

# Loggers through which Lightning's ``rank_zero_info`` emits its messages, tips included.
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropPromotionalTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡 Tip")


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a line is written (it may be replaced later)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_PlainFormatter())

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


class _PlainFormatter(logging.Formatter):
    """The message alone for information; ``WARNING: message`` and up for the rest."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


def quiet_lightning_tips() -> None:
    """Install :class:`DropPromotionalTips` on Lightning's loggers (idempotent; imports nothing)."""
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropPromotionalTips) for f in logger.filters):
            logger.addFilter(DropPromotionalTips())


#: Warnings that tell the user of this library nothing they can act on: ``(message regex, category, module regex)``,
#: the module being the one the warning is attributed to. Each is matched on all three, so the same
#: message from elsewhere (e.g. a user's own module) still shows.
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # peft reads the deprecated property while wrapping any transformers >= 5 model in LoRA.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
    # Lightning's own pytree helper uses a torch API deprecated in torch 2.10.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # An empty *list* is how a data module without validation files says "no validation loop"
    # (an empty DataLoader, a real mistake, is named `DataLoader` and still warns).
    (r"Total length of `list` across ranks is zero", UserWarning, r"lightning\.pytorch\.utilities\.data"),
    # The predict passes write their results to a store and return nothing from predict_step, on purpose.
    (r"predict returned None if it was on purpose", UserWarning, r"lightning\.pytorch\.loops\.prediction_loop"),
)


def quiet_known_warnings() -> None:
    """Ignore the :data:`QUIET_WARNINGS` (idempotent: each filter is installed once, ahead of the others)."""
    for message, category, module in QUIET_WARNINGS:
        # filterwarnings moves an identical filter to the front instead of adding a second one.
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the package's log lines to stderr (rich on a terminal, plain lines otherwise).

    Does nothing to the package logger when the application already configured logging
    (a handler on the package or root logger); Lightning's promotional tips and the
    :data:`QUIET_WARNINGS` are dropped in every case.

    Args:
        level: the package logger's level when it has none set.
    """
    quiet_lightning_tips()
    quiet_known_warnings()
    pkg = logging.getLogger("lightning_less")
    if pkg.handlers or logging.getLogger().handlers:
        return
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # a pipe or a file: whole lines, never wrapped at an assumed width
        handler = _StderrHandler()
    pkg.addHandler(handler)
    if pkg.level == logging.NOTSET:
        pkg.setLevel(level)
