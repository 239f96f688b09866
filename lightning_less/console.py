"""Console output of the command line: logging through rich."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """Attach a rich handler to the package logger when nothing is configured (CLI use)."""
    pkg = logging.getLogger("lightning_less")
    if pkg.handlers or logging.getLogger().handlers:
        return
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    except ImportError:  # pragma: no cover - rich is a dependency
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    pkg.addHandler(handler)
    if pkg.level == logging.NOTSET:
        pkg.setLevel(logging.INFO)
