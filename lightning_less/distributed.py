"""Several processes acting as one: a failure on one rank raised on every rank, work done once and shared.

Under DDP every rank runs the same code and meets its peers at collectives (``all_reduce``,
``barrier``, ``broadcast``). When one rank raises between two collectives, its peers wait at
the next one for a partner that never comes: they hang (NCCL), or fail later with an
unrelated "Connection closed by peer" (gloo). :func:`shared_failure` closes that gap: every
rank runs a block, then the ranks tell each other whether it failed, and when one did,
every rank raises the same error (the lowest failing rank's class and message) before any
of them reaches the next collective. :func:`on_rank_zero` runs a piece of work (writing a
file, a selection) once, on global rank 0, and gives every rank its result or its error.

Without an initialised process group of more than one rank both are plain calls.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


def group_size() -> int:
    """The number of ranks of the initialised ``torch.distributed`` process group (1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def global_rank() -> int:
    """This process's global rank: the process group's, else the launcher's (``RANK`` / ``LOCAL_RANK``
    environment, as Lightning reads it, so a rank started by Lightning's launcher knows it is not
    rank 0 before its process group exists), else 0."""
    if group_size() > 1:
        return torch.distributed.get_rank()
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _error_class(module: str, qualname: str) -> type[Exception]:
    """The exception class named by ``module`` and ``qualname``; ``RuntimeError`` when it cannot be found."""
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001 - any failure to find it: fall back to a plain error
        return RuntimeError
    return found if isinstance(found, type) and issubclass(found, Exception) else RuntimeError


def _same_error(cls: type[Exception], text: str) -> Exception:
    try:
        return cls(text)
    except Exception:  # noqa: BLE001 - a class that does not take one message
        return RuntimeError(text)


@contextmanager
def shared_failure(name_rank: bool = True) -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, raise the same error on every rank.

    Every rank of the process group must enter the block at the same point (it ends with one
    small ``all_gather_object``). The error raised everywhere has the class and message of
    the lowest failing rank's error; on that rank it is raised from the original (whose
    traceback is kept). Only ``Exception`` is shared; an interrupt goes its own way.

    Args:
        name_rank: end the message with ``(rank r of w)``; off for work only rank 0 does.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # noqa: BLE001 - shared with the peers, then raised again below
        error = err
    world = group_size()
    if world == 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error).__module__, type(error).__qualname__, str(error))
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    failed = [(rank, record) for rank, record in enumerate(gathered) if record is not None]
    if not failed:
        return
    rank, (module, qualname, message) = failed[0]
    text = f"{message} (rank {rank} of {world})" if name_rank else message
    if rank == torch.distributed.get_rank() and error is not None:
        raise _same_error(type(error), text) from error
    raise _same_error(_error_class(module, qualname), text) from None


def on_rank_zero(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on global rank 0 only; every rank returns its result or raises its error.

    Without a process group of several ranks every process runs ``fn`` itself: one process,
    or a rank that Lightning's launcher started and that goes through the work rank 0
    already did before its process group forms (``fn`` must then find that work done).
    """
    if group_size() == 1:
        return fn(*args, **kwargs)
    holder: list[Any] = [None]
    with shared_failure(name_rank=False):
        if torch.distributed.get_rank() == 0:
            holder[0] = fn(*args, **kwargs)
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]
