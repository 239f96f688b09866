"""One writer at a time: an exclusive, non-blocking ``flock`` on a lock file beside a directory.

A datastore while a pass writes it, a snapshot directory while a warmup writes it and a
selection directory while it is written each hold ``<parent>/.<name>.lock`` (beside the
directory, so the directory's own contents stay exactly the documented files). A second
writer fails at once with a :class:`LockedError` naming the holder (pid, host, start
time and command line, written into the lock file), instead of two processes
interleaving rows, snapshots or manifests.

The kernel drops an ``flock`` when its holder exits, however it exits (``kill -9``
included), so a lock file left behind never blocks anyone: only a live holder does.
The lock is per open file, so a second handle in the *same* process is refused too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from lightning_less.errors import LessError

__all__ = ["DirectoryLock", "LockedError", "lock_path_for", "lock_for_writer"]

log = logging.getLogger(__name__)
#: File systems without flock (some network mounts): the lock is skipped with a warning.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class LockedError(LessError, RuntimeError):
    """Another live process (or another open handle of this one) is writing the same directory."""


def lock_path_for(directory: str | os.PathLike) -> Path:
    """The lock file of ``directory``: ``<parent>/.<name>.lock``."""
    path = Path(directory).absolute()
    return path.parent / f".{path.name}.lock"


class DirectoryLock:
    """An exclusive lock on ``directory`` for as long as this object holds it.

    Args:
        directory: the directory written under the lock (its parent is created if missing).
        what: what is written, for messages (``"gradient datastore"``, ``"selection"``...).

    Example::

        with DirectoryLock(out_dir, "selection"):
            ...  # write out_dir
    """

    def __init__(self, directory: str | os.PathLike, what: str) -> None:
        self.directory = Path(directory)
        self.what = what
        self.path = lock_path_for(directory)
        self._release: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._release is not None and self._release.alive

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise :class:`LockedError` at once (never waits).

        Raises:
            LockedError: a live holder has it; the message names it.
            PermissionError: the lock file cannot be created (parent directory not writable).
        """
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockedError(f"{self.directory} is being written by another {self.what} writer ({holder}); "
                              f"wait for it to finish or stop it (lock file {self.path})") from None
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                os.close(fd)
                raise
            log.warning("cannot lock %s (%s): nothing stops a second writer of %s", self.path, err.strerror,
                        self.directory)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500], "what": self.what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        # Closing the descriptor drops the lock: on release(), or when this object is collected.
        self._release = weakref.finalize(self, _close, fd)
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def lock_for_writer(directory: str | os.PathLike, what: str) -> Iterator[DirectoryLock]:
    """Take ``directory``'s lock for a writer built inside the block: released if the block fails, kept if not.

    Example::

        with lock_for_writer(path, "gradient datastore") as lock:
            return Store(path, lock)  # the store releases it when it is finished or closed
    """
    lock = DirectoryLock(directory, what).acquire()
    try:
        yield lock
    except BaseException:
        lock.release()
        raise


def _close(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # the holder's details are stale from now on
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, OSError):
        info = None
    if not isinstance(info, dict):
        return "holder unknown: it is still starting"
    mine = " (this process: another open handle still holds it, close that first)" \
        if (info.get("pid"), info.get("host")) == (os.getpid(), socket.gethostname()) else ""
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}{mine}, "
            f"command: {info.get('command') or '?'}")
