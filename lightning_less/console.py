"""Console output of the command line: progress and log lines on stderr through ``logging``.

A command's *result* goes to stdout, printed once by the CLI; everything else (progress,
skipped steps, warnings) goes to stderr, so ``lightning-less demo-data > paths.json``
captures only the result.
"""

from __future__ import annotations

import logging
import sys

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


def setup_logging(level: int = logging.INFO) -> None:
    """Send the package's log lines to stderr (rich on a terminal, plain lines otherwise).

    Does nothing to the package logger when the application already configured logging
    (a handler on the package or root logger); Lightning's promotional tips are dropped
    in every case.

    Args:
        level: the package logger's level when it has none set.
    """
    quiet_lightning_tips()
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
