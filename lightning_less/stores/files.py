"""Files that are either whole or refused: checked ``.npy`` / ``.safetensors`` / JSON, atomic writes, preallocation.

Everything that reads an on-disk artefact of the library (datastores, trajectory stores,
snapshots, selections) goes through these helpers, so a truncated or corrupt file is an
error that names it, never a memmap silently zero-filled to its expected size, a
``JSONDecodeError`` traceback, or a ``SIGBUS`` when the disk fills under a sparse file.

* :func:`check_npy` reads a ``.npy`` header and compares shape, dtype and the file size
  with what the caller expects *before* anything is mapped (numpy's ``r+`` memmap extends
  a short file with zeros).
* :func:`allocate_npy` creates a ``.npy`` file at full size with ``os.posix_fallocate``,
  so a full disk is an error at create time naming the path and the bytes needed.
* :func:`write_json_atomic` / :func:`make_temp_dir` create files and directories with the
  modes the user's umask gives (``tempfile`` would force ``0600`` / ``0700``).
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lightning_less.errors import InputError, LessError

__all__ = ["DiskFullError", "check_npy", "allocate_npy", "ensure_allocated", "npy_size", "open_npy", "read_json",
           "write_json_atomic", "make_temp_dir", "remove_temps", "remove_empty_dir", "apply_umask", "current_umask",
           "check_safetensors", "human_bytes", "is_disk_full", "disk_full_error", "disk_full_as", "free_bytes"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_ZEROS = 1 << 24  # bytes per write when a file system cannot fallocate


class DiskFullError(LessError, OSError):
    """Not enough disk space (or quota) for a file the library must create in full."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota) is full.

    An ``OSError`` carries ``ENOSPC`` / ``EDQUOT``; safetensors' Rust writer raises its own
    ``SafetensorError`` whose message holds the OS error (``I/O error: No space left on device
    (os error 28)``, or ``code: 28`` in older versions).
    """
    if isinstance(err, OSError):
        return err.errno in _NO_SPACE
    if type(err).__name__ != "SafetensorError":
        return False
    codes = re.findall(r"(?:os error |code: )(\d+)", str(err))
    return any(int(code) in _NO_SPACE for code in codes)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the file system of ``path`` (or of its nearest existing parent), None if unknown."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_error(path: str | os.PathLike, what: str, fix: str, need: int | None = None,
                    cause: BaseException | None = None) -> DiskFullError:
    """The one-paragraph error for a write that found the disk full: what, where, how much, what to do.

    Args:
        path: the file or directory that could not be written.
        what: what it is (``"the selection"``, ``"the snapshot of epoch 2"``).
        fix: what to do once space is free (``"then rerun with overwrite=True"``).
        need: bytes the whole write takes, when known.
        cause: the error the write raised (its errno says disk or quota).
    """
    free = free_bytes(path)
    amount = f"it needs {human_bytes(need)} ({need} bytes)" if need is not None else "its size is not known in advance"
    where = f", {human_bytes(free)} are free there" if free is not None else ""
    code = cause.errno if isinstance(cause, OSError) and cause.errno in _NO_SPACE else errno.ENOSPC
    return DiskFullError(f"not enough disk space to write {what} {path} ({os.strerror(code)}): {amount}{where}. "
                         f"Free space or choose another location, {fix}.")


@contextmanager
def disk_full_as(path: str | os.PathLike, what: str, fix: str, need: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block (an ``OSError`` or safetensors error, see :func:`is_disk_full`) into
    :func:`disk_full_error`; every other error passes unchanged. Arguments as :func:`disk_full_error`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise disk_full_error(path, what, fix, need, err) from None


def human_bytes(n: int) -> str:
    """``n`` bytes as a short human-readable size (``1.5 GiB``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _corrupt(path: Path, problem: str, fix: str) -> InputError:
    return InputError(f"{path} is corrupt or incomplete: {problem}. {fix}")


# ---------------------------------------------------------------------------- .npy
def _npy_header(path: Path, fix: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of a ``.npy`` file, or an error naming it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), f.tell()
    except FileNotFoundError:
        raise _corrupt(path, "the file is missing", fix) from None
    except (ValueError, OSError, SyntaxError, EOFError, struct.error) as err:
        raise _corrupt(path, f"no valid .npy header ({err})", fix) from None


def check_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, fix: str) -> int:
    """Check a ``.npy`` file's header and size against ``shape`` and ``dtype``; return its data offset.

    Args:
        path: the file.
        shape: the shape it must have.
        dtype: the dtype it must have.
        fix: what the user should do, appended to the error (e.g. "rerun with overwrite").

    Raises:
        InputError: the file is missing, its header is unreadable, or shape, dtype or
            size (header + data, exactly) differ from what is expected.
    """
    path = Path(path)
    found_shape, found_dtype, fortran, offset = _npy_header(path, fix)
    want = np.dtype(dtype)
    if found_shape != tuple(shape) or found_dtype != want or fortran:
        raise _corrupt(path, f"it holds a {'Fortran-order ' if fortran else ''}{found_dtype} array of shape "
                             f"{found_shape}, expected {want} {tuple(shape)}", fix)
    size = os.stat(path).st_size
    expected = offset + int(np.prod(shape, dtype=np.int64)) * want.itemsize
    if size != expected:
        what = "truncated" if size < expected else "longer than its array"
        raise _corrupt(path, f"{what}: {size} bytes, its header says {expected}", fix)
    return offset


def open_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, mode: str, fix: str) -> np.memmap:
    """A memmap of a ``.npy`` file checked with :func:`check_npy` first (so ``r+`` never extends it)."""
    offset = check_npy(path, shape, dtype, fix)
    return np.memmap(path, dtype=np.dtype(dtype), mode=mode, offset=offset, shape=tuple(shape))


def allocate_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> None:
    """Create a zero-filled ``.npy`` file with every block allocated on disk.

    A sparse file (what ``np.lib.format.open_memmap(mode="w+")`` leaves) makes a later
    write through a memmap die with ``SIGBUS`` when the disk fills; allocating up front
    turns that into an error now.

    Raises:
        DiskFullError: the file system has no room (or quota) for the whole file.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        total = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        f.flush()
        try:
            _allocate(f.fileno(), total)
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise DiskFullError(f"no space left to create {path} ({human_bytes(total)}, {total} bytes): "
                                    f"{os.strerror(err.errno)}") from None
            raise


def npy_size(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes of a ``.npy`` file of ``shape`` and ``dtype`` (header included), as :func:`allocate_npy` writes it."""
    dtype = np.dtype(dtype)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def ensure_allocated(path: str | os.PathLike) -> None:
    """Allocate every block of an existing file (a no-op for a file already allocated; data unchanged).

    A store written by an older version is sparse; this makes resuming it safe from ``SIGBUS`` too.

    Raises:
        DiskFullError: the file system has no room for the rest of the file.
    """
    if not hasattr(os, "posix_fallocate"):
        return  # never write zeros over an existing file's data
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise DiskFullError(f"no space left to allocate {path} ({human_bytes(size)}, {size} bytes), a sparse "
                                f"file written by an older version: {os.strerror(err.errno)}") from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _allocate(fd: int, size: int) -> None:
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    # No fallocate here: write the zeros, which allocates the blocks just as well.
    start = os.fstat(fd).st_size
    block = bytes(min(_ZEROS, max(size - start, 0)))
    os.lseek(fd, start, os.SEEK_SET)
    while start < size:
        start += os.write(fd, block[: size - start])


# ---------------------------------------------------------------------------- JSON
def read_json(path: str | os.PathLike, fix: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object file, or an :class:`InputError` naming it (truncated, not UTF-8, not an object, keys missing).

    Raises:
        FileNotFoundError: the file does not exist (callers say what it means).
        InputError: anything else wrong with it.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"not valid JSON ({err})", fix) from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"a JSON {type(obj).__name__}, expected an object", fix)
    missing = [k for k in required if k not in obj]
    if missing:
        raise _corrupt(path, f"the keys {missing} are missing", fix)
    return obj


def _random_name(parent: Path, prefix: str, suffix: str = "") -> Path:
    return parent / f"{prefix}{secrets.token_hex(4)}{suffix}"


def write_json_atomic(path: str | os.PathLike, obj: Mapping[str, Any], **dump_kwargs: Any) -> None:
    """Write JSON to a temp file in the same directory, fsync, then ``os.replace`` (mode from the umask)."""
    path = Path(path)
    dump_kwargs = {"indent": 2, "sort_keys": True, **dump_kwargs}
    tmp = _random_name(path.parent, f".{path.name}.", ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden directory ``<parent>/<prefix><random>`` with the umask's mode (not ``0700``)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = _random_name(parent, prefix)
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary directory {prefix}* in {parent}")


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike) -> None:
    """Give everything under ``root`` the mode a plain ``open`` / ``mkdir`` would (some writers force ``0600``).

    safetensors, for one, creates its files ``0600`` whatever the umask.
    """
    mask = current_umask()
    for path in [Path(root), *Path(root).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def remove_temps(parent: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Remove ``<parent>/<prefix>*<suffix>``: what an interrupted writer left. Call it with the lock held.

    Returns:
        The paths removed.
    """
    removed = []
    for p in Path(parent).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def remove_empty_dir(path: str | os.PathLike) -> None:
    """Remove ``path`` if it is an empty directory (what a failed writer made and emptied); anything else stays."""
    try:
        Path(path).rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------- safetensors
def check_safetensors(path: str | os.PathLike, fix: str) -> None:
    """Check that a ``.safetensors`` file is whole (header readable, every tensor's bytes present).

    Reads only the header; cheap next to loading the tensors.

    Raises:
        InputError: missing, truncated, or not a safetensors file.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n).decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        raise _corrupt(path, "the file is missing", fix) from None
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise _corrupt(path, f"no valid safetensors header ({err})", fix) from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise _corrupt(path, f"truncated: {size} bytes, its header says {expected}", fix)
