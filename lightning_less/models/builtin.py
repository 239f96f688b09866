"""Built-in model names (``builtin:...``): what each one is, and building it once into the cache.

Wherever a model name or path is accepted, a built-in name can be given instead:

* ``builtin:tiny-llama`` / ``builtin:tiny-llama-<size>``: the project's own small random-init
  Llama (:mod:`lightning_less.models.tiny`), for tests and the demo;
* ``builtin:smollm2-135m``: SmolLM2-135M-Instruct, a real pretrained Llama with a ChatML
  chat template (:mod:`lightning_less.models.smollm2`), from the ``smollm2`` extra.

Each is built once into ``$LIGHTNING_LESS_CACHE/builtin/<name>-v<N>`` (default
``~/.cache/lightning_less``) as an ordinary ``save_pretrained`` directory, and every later
use loads that directory with the real ``from_pretrained`` code path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from lightning_less.errors import InputError

BUILTIN_PREFIX = "builtin:"
#: The files a built directory must hold to be reused (a model saved with ``save_pretrained`` and its tokenizer).
REQUIRED_FILES = ("config.json", "tokenizer.json")


def cache_dir() -> Path:
    """Where built-in models are built: ``$LIGHTNING_LESS_CACHE``, default ``~/.cache/lightning_less``."""
    return Path(os.environ.get("LIGHTNING_LESS_CACHE", Path.home() / ".cache" / "lightning_less"))


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, calling ``build(directory)`` to fill it first unless it already exists.

    The model is built in a temporary directory beside ``target`` and renamed into place,
    so a half-written model is never reused, and two processes building at once (DDP
    ranks, test workers) both end with the same complete directory: the first rename
    wins, the second finds ``target`` complete and discards its own copy.
    """
    if all((target / f).exists() for f in REQUIRED_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not all((target / f).exists() for f in REQUIRED_FILES):  # another process did not win the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unknown(name: str) -> InputError:
    from lightning_less.models.tiny import SIZES

    return InputError(f"unknown built-in model {name!r}: expected 'builtin:tiny-llama', 'builtin:tiny-llama-<size>' "
                      f"with size in {sorted(SIZES)}, or 'builtin:smollm2-135m'")


def resolve_model_path(name_or_path: str) -> str:
    """Map a ``builtin:`` name to its built directory (building it once); pass anything else through.

    Raises:
        InputError: an unknown built-in name, or the package a built-in model comes from is missing.
    """
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):]
    root = cache_dir() / "builtin"
    if name == "smollm2-135m":
        from lightning_less.models.smollm2 import BUILD_NAME, save_smollm2

        # A built directory is used even when the package it came from is gone; a missing
        # package is an error only when building (before anything is written).
        return str(build_once(root / BUILD_NAME, save_smollm2))
    if name == "tiny-llama" or name.startswith("tiny-llama-"):
        from lightning_less.models.tiny import SIZES, save_tiny_model

        size = name[len("tiny-llama-"):] if name != "tiny-llama" else "tiny"
        if size not in SIZES:
            raise _unknown(name_or_path)
        return str(build_once(root / f"tiny-llama-{size}-v1", lambda path: save_tiny_model(path, size=size, seed=0)))
    raise _unknown(name_or_path)
