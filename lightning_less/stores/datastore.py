"""A resumable on-disk store of projected per-example gradient features.

Layout of a store directory (docs/architecture.md, "Gradient datastore"):

* ``manifest.json``: ``format_version``, ``feature_kind`` (``adam`` | ``sgd``),
  ``projector`` (``Projector.describe()``), ``snapshots``, ``dims``, ``dtype``,
  ``n_examples``, ``library_version``, ``created``, ``complete`` and whatever else the
  caller records (data files + sha256, model, snapshot fingerprints, ``shard``...).
  Always written atomically (temp file + ``os.replace``), and written *last* on
  creation, so a manifest implies that every array exists.
* ``features/<snapshot>/dim_<d>.npy``: [n_examples, d] unnormalised features in dataset
  order (for an ``int8`` / ``1bit`` store: their codes, with ``dim_<d>.scale.npy``
  beside them; :mod:`lightning_less.stores.quantize`), created at full size with every
  block allocated (``os.posix_fallocate``: a full disk is an error at create time, never
  a ``SIGBUS`` in the middle of a pass), so any rank can write any row.
* ``done/<snapshot>.npy``: bool [n_examples], one mask per snapshot, because the
  gradient pass loads one snapshot at a time; a row is marked done only after it was
  written for every dim of that snapshot and the feature arrays were flushed.

Every open checks each array's header, dtype, shape and exact file size against the
manifest *before* mapping it (numpy's ``r+`` memmap would zero-fill a truncated file),
so a short or corrupt file is refused by name; ``overwrite`` rebuilds the store. A
writer holds the store's lock (:mod:`lightning_less.stores.lock`) until it finalizes or
closes the store, so a second writer fails at once instead of mixing rows or manifests.

A store is readable as features only once :meth:`GradientDatastore.finalize` has set
``"complete": true``; stale or differently-built stores are refused, never reused
(docs/algorithms.md §5).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_less.errors import IncompatibleError, InputError
from lightning_less.stores.files import (DiskFullError, allocate_npy, ensure_allocated, human_bytes, npy_size,
                                         open_npy, remove_empty_dir, remove_temps, write_json_atomic)
from lightning_less.stores.lock import DirectoryLock, lock_for_writer
from lightning_less.stores.manifest import (FORMAT_VERSION, MANIFEST, PROGRESS_KEYS, REBUILD, SCORING_KEYS,
                                            build_manifest, diff, incompatibilities, normalise, read_manifest, without)
from lightning_less.stores.quantize import QuantizedRows, array_specs, encode, is_quantized

__all__ = ["GradientDatastore", "FORMAT_VERSION", "SCORING_KEYS"]

WRITER = "gradient datastore"  # what the lock's messages call a writer of this store


class GradientDatastore:
    """Projected gradient features of one dataset, per snapshot and dim, with resume.

    Use :meth:`create` (new or resumed store) or :meth:`open`; write rows with
    :meth:`write`, then :meth:`mark_done`, and :meth:`finalize` when nothing is pending.

    Example::

        store = GradientDatastore.create(path, {"feature_kind": "adam", "projector": proj.describe()},
                                         snapshots=["epoch_000"], dims=[8192], n_examples=len(dataset))
        todo = store.pending("epoch_000")          # resume: only rows not yet done
        store.write("epoch_000", 8192, batch_indices, feats)   # feats float32 [b, 8192]
        store.mark_done("epoch_000", batch_indices)
        store.finalize()
    """

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], mode: str,
                 lock: DirectoryLock | None = None) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self.mode = mode
        self._lock = lock
        self.n_examples: int = int(manifest["n_examples"])
        self.snapshots: list[str] = list(manifest["snapshots"])
        self.dims: list[int] = [int(d) for d in manifest["dims"]]
        self.dtype: str = manifest["dtype"]
        mm = "r+" if mode == "r+" else "r"
        self._arrays: dict[tuple[str, int], np.memmap] = {}
        self._scales: dict[tuple[str, int], np.memmap] = {}  # per-row scales of a quantized store
        self._done: dict[str, np.memmap] = {}
        # Once per open: header, dtype, shape and exact size of every file, before any memmap.
        for snap in self.snapshots:
            for dim in self.dims:
                (file, shape, dtype), *scale = self._specs(snap, dim)
                self._arrays[snap, dim] = open_npy(file, shape, dtype, mm, REBUILD)
                if scale:
                    self._scales[snap, dim] = open_npy(*scale[0], mm, REBUILD)
            done = open_npy(self._done_path(snap), (self.n_examples,), np.bool_, mm, REBUILD)
            if np.asarray(done).view(np.uint8).max(initial=0) > 1:
                raise InputError(f"{self._done_path(snap)} is corrupt: a done mask holds bytes other than 0 and 1. {REBUILD}")
            self._done[snap] = done
        if mode == "r+":  # a store made sparse by an older version: allocate before writing rows into it
            for file in [*(f for s, d in self._arrays for f, _, _ in self._specs(s, d)), *map(self._done_path, self.snapshots)]:
                ensure_allocated(file)
        # Rows written in this session, per array: mark_done checks that every dim got them.
        self._written = {key: np.zeros(self.n_examples, dtype=bool) for key in self._arrays} if mode == "r+" else {}
        if lock is not None and self.is_complete():
            lock.release()  # a complete store takes no more writes: no reason to keep others out

    # ------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Mapping[str, Any], snapshots: Sequence[str], dims: Sequence[int],
               n_examples: int, dtype: str = "float16", overwrite: bool = False) -> GradientDatastore:
        """Create a store, or reopen a compatible one to resume it.

        Args:
            path: the store directory.
            manifest: caller's description; must hold ``feature_kind`` (``adam`` for the
                pool, ``sgd`` for targets) and ``projector`` (``Projector.describe()``),
                and should hold the data files with their sha256 and the snapshot
                fingerprints. It may not set the keys the store owns.
            snapshots: snapshot names (directory names, e.g. ``epoch_000``).
            dims: projection dims.
            n_examples: rows of every array (the dataset size).
            dtype: storage dtype, ``float16`` (as the reference), ``float32``, or quantized
                ``int8`` / ``1bit`` (:mod:`lightning_less.stores.quantize`).
            overwrite: replace an existing store whose manifest differs, or that is
                corrupt (a truncated or unreadable file).

        Returns:
            The store, open for writing (``mode="r+"``) and locked until
            :meth:`finalize` or :meth:`close`.

        Raises:
            IncompatibleError: an existing store with a different manifest (naming every
                differing key) unless ``overwrite``.
            InputError: an existing store with a corrupt file (naming it) unless
                ``overwrite``.
            LockedError: another writer holds the store.
            DiskFullError: no room for the store's files (nothing is left behind).
            ValueError: bad arguments.
            FileExistsError: ``path`` is a non-empty directory that is not a store.
        """
        path = Path(path)
        full = build_manifest(manifest, snapshots, dims, n_examples, dtype)
        with lock_for_writer(path, WRITER) as lock:
            if (path / MANIFEST).exists():
                try:
                    existing = read_manifest(path)
                except InputError:
                    if not overwrite:
                        raise
                    existing = None
                if existing is not None:
                    diffs = diff(without(existing, PROGRESS_KEYS), without(full, PROGRESS_KEYS))
                    if not diffs:
                        try:
                            return cls(path, existing, "r+", lock)  # resume
                        except InputError:
                            if not overwrite:
                                raise
                    elif not overwrite:
                        raise IncompatibleError(f"{path} holds a gradient datastore built differently (pass "
                                                "overwrite=True to replace it): " + "; ".join(diffs))
            return cls._create_locked(path, full, lock)

    @classmethod
    def replace(cls, path: str | os.PathLike, manifest: Mapping[str, Any], snapshots: Sequence[str],
                dims: Sequence[int], n_examples: int, dtype: str = "float16", overwrite: bool = False) -> GradientDatastore:
        """Create a new, empty store at ``path`` (never resume); an existing one is refused unless ``overwrite``.

        Arguments as :meth:`create`.

        Raises:
            FileExistsError: ``path`` holds a store and ``overwrite`` is False.
        """
        path = Path(path)
        full = build_manifest(manifest, snapshots, dims, n_examples, dtype)
        with lock_for_writer(path, WRITER) as lock:
            if (path / MANIFEST).exists() and not overwrite:
                raise FileExistsError(f"{path} already holds a datastore; pass overwrite=True to replace it")
            return cls._create_locked(path, full, lock)

    @classmethod
    def _create_locked(cls, path: Path, full: dict[str, Any], lock: DirectoryLock) -> GradientDatastore:
        """Build a fresh store at ``path`` (whose lock the caller holds), replacing a store there."""
        created = not path.exists()  # a directory made here goes too when the creation fails
        if path.exists():
            # Without a manifest, only what a creation killed halfway leaves may be replaced; anything else is not ours.
            foreign = sorted(p.name for p in path.iterdir() if p.name not in (MANIFEST, "features", "done")
                             and not (p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp")))
            if foreign and not (path / MANIFEST).exists():
                raise FileExistsError(f"{path} is not empty ({foreign[:3]}) and holds no {MANIFEST}; refusing to "
                                      "write a datastore there")
            cls._remove(path)
            remove_temps(path, f".{MANIFEST}.", ".tmp")  # left by a writer killed while replacing the manifest
        n = full["n_examples"]
        files = [spec for s in full["snapshots"] for d in full["dims"]
                 for spec in array_specs(path / "features" / s, d, n, full["dtype"])]
        files += [(path / "done" / f"{s}.npy", (n,), np.dtype(np.bool_)) for s in full["snapshots"]]
        try:
            for file, shape, file_dtype in files:
                file.parent.mkdir(parents=True, exist_ok=True)
                allocate_npy(file, shape, file_dtype)
            write_json_atomic(path / MANIFEST, full)  # last: a manifest implies complete arrays
        except BaseException as err:
            cls._remove(path)  # nothing half-made is left to look like a store
            if created:
                remove_empty_dir(path)
            if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            need = sum(npy_size(shape, file_dtype) for _, shape, file_dtype in files)
            raise DiskFullError(f"not enough disk space for the gradient datastore {path}: it needs "
                                f"{human_bytes(need)} ({need} bytes) in {len(files)} files ({err}). Free space or "
                                "choose another output directory, then rerun; nothing was kept.") from None
        return cls(path, full, "r+", lock)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> GradientDatastore:
        """Open an existing store read-only (``"r"``) or to continue writing (``"r+"``, locked).

        Raises:
            MissingInputError: no store at ``path``.
            InputError: a file of the store is corrupt (truncated, unreadable, wrong
                shape or dtype); the message names it.
            LockedError: ``mode="r+"`` while another writer holds the store.
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = Path(path)
        if mode == "r":
            return cls(path, read_manifest(path), mode)
        with lock_for_writer(path, WRITER) as lock:
            return cls(path, read_manifest(path), mode, lock)

    def close(self) -> None:
        """Flush, stop writing and release the lock (reading stays possible); idempotent."""
        if self.mode == "r+":
            for arr in [*self._arrays.values(), *self._scales.values(), *self._done.values()]:
                arr.flush()
            self.mode = "r"
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> GradientDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _remove(path: Path) -> None:
        # Only what a store owns; other files in the directory are left alone.
        (path / MANIFEST).unlink(missing_ok=True)  # first: a half-removed store is no store
        for sub in ("features", "done"):
            shutil.rmtree(path / sub, ignore_errors=True)

    # ---------------------------------------------------------------- access
    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._manifest))

    def _specs(self, snapshot: str, dim: int) -> list[tuple[Path, tuple[int, ...], np.dtype]]:
        return array_specs(self.path / "features" / snapshot, dim, self.n_examples, self.dtype)

    def _done_path(self, snapshot: str) -> Path:
        return self.path / "done" / f"{snapshot}.npy"

    def _check_key(self, snapshot: str, dim: int | None = None) -> None:
        if snapshot not in self._done:
            raise KeyError(f"unknown snapshot {snapshot!r}; the store has {self.snapshots}")
        if dim is not None and (snapshot, dim) not in self._arrays:
            raise KeyError(f"unknown dim {dim}; the store has {self.dims}")

    def _indices(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_examples):
            raise IndexError(f"indices outside [0, {self.n_examples}): {idx[(idx < 0) | (idx >= self.n_examples)][:10]}")
        if np.unique(idx).size != idx.size:
            raise ValueError("duplicate indices in one write")
        return idx

    def _require_writable(self) -> None:
        if self.mode != "r+":
            raise PermissionError(f"{self.path} is open read-only (or was closed)")
        if self._manifest.get("complete"):
            raise PermissionError(f"{self.path} is complete; create a new store instead of changing it")

    def write(self, snapshot: str, dim: int, indices: Sequence[int] | np.ndarray, features: Any) -> None:
        """Write float32 feature rows at dataset ``indices`` (stored in the store's dtype, quantized if int8/1bit).

        Raises:
            ValueError: non-finite features, or values the storage dtype cannot hold
                (fp16 overflow to inf, or a nonzero row flushed to zeros).
        """
        self._require_writable()
        self._check_key(snapshot, dim)
        idx = self._indices(indices)
        if hasattr(features, "detach"):  # a torch tensor
            features = features.detach().float().cpu().numpy()
        feats = np.asarray(features, dtype=np.float32)
        if feats.shape != (idx.size, dim):
            raise ValueError(f"features of shape {feats.shape}, expected ({idx.size}, {dim})")
        if not np.isfinite(feats).all():
            raise ValueError(f"non-finite features for indices {idx[~np.isfinite(feats).all(axis=1)][:10].tolist()}")
        stored, scales = encode(feats, self.dtype, idx)
        self._arrays[snapshot, dim][idx] = stored
        if scales is not None:
            self._scales[snapshot, dim][idx] = scales
        self._written[snapshot, dim][idx] = True

    def mark_done(self, snapshot: str, indices: Sequence[int] | np.ndarray) -> None:
        """Mark rows done for ``snapshot`` once written for every dim; flushes features first."""
        self._require_writable()
        self._check_key(snapshot)
        idx = self._indices(indices)
        for dim in self.dims:
            missing = idx[~self._written[snapshot, dim][idx]]
            if missing.size:
                raise ValueError(f"rows {missing[:10].tolist()} of snapshot {snapshot!r} were not written for dim {dim}")
        for dim in self.dims:  # features reach the file before the mask says so
            self._arrays[snapshot, dim].flush()
            if (snapshot, dim) in self._scales:
                self._scales[snapshot, dim].flush()
        self._done[snapshot][idx] = True
        self._done[snapshot].flush()

    def pending(self, snapshot: str | None = None) -> np.ndarray:
        """Indices not yet done for ``snapshot`` (or, if None, for any snapshot), ascending."""
        if snapshot is not None:
            self._check_key(snapshot)
            return np.flatnonzero(~self._done[snapshot])
        return np.flatnonzero(~np.logical_and.reduce([np.asarray(d) for d in self._done.values()]))

    def done_mask(self, snapshot: str) -> np.ndarray:
        """A copy of the done mask of ``snapshot``."""
        self._check_key(snapshot)
        return np.array(self._done[snapshot])

    def is_complete(self) -> bool:
        """True only for a finalized store (``"complete": true`` in its manifest)."""
        return self._manifest.get("complete") is True

    def features(self, snapshot: str, dim: int, allow_incomplete: bool = False) -> np.ndarray | QuantizedRows:
        """The read-only [n_examples, dim] feature array of ``snapshot``: a memmap, or for an ``int8`` / ``1bit``
        store a :class:`~lightning_less.stores.quantize.QuantizedRows` that dequantizes the rows it is indexed with.

        Raises:
            RuntimeError: the store is not complete, unless ``allow_incomplete`` (then
                rows not done hold zeros or stale values: check :meth:`done_mask`).
        """
        self._check_key(snapshot, dim)
        if not allow_incomplete and not (self.is_complete() and self._done[snapshot].all()):
            raise RuntimeError(f"{self.path} is not complete ({self.pending(snapshot).size} rows of {snapshot!r} "
                               "pending, or never finalized); finish the gradient pass first")
        arrays = [self._arrays[snapshot, dim], *([self._scales[snapshot, dim]] if self._scales else [])]
        if arrays[0].mode != "r":  # a writable store: read-only maps, not the ones being written
            arrays = [open_npy(*spec, "r", REBUILD) for spec in self._specs(snapshot, dim)]
        return QuantizedRows(*arrays, self.dtype, dim) if is_quantized(self.dtype) else arrays[0]

    def finalize(self) -> None:
        """Flush everything and mark the store complete (atomically).

        Raises:
            RuntimeError: some rows are still pending.
        """
        if self.is_complete():
            return
        self._require_writable()
        left = {snap: int((~done).sum()) for snap, done in self._done.items() if not done.all()}
        if left:
            raise RuntimeError(f"cannot finalize {self.path}: rows pending per snapshot {left}")
        for arr in [*self._arrays.values(), *self._scales.values(), *self._done.values()]:
            arr.flush()
        self._manifest["complete"] = True
        write_json_atomic(self.path / MANIFEST, self._manifest)
        if self._lock is not None:
            self._lock.release()  # complete: nothing more to write, another process may read or replace it

    def check_compatible(self, other: GradientDatastore | Mapping[str, Any],
                         keys: Sequence[str] | None = SCORING_KEYS) -> None:
        """Raise :class:`IncompatibleError` (a ``ValueError``) naming every differing key (with both values).

        Args:
            other: a store or a manifest.
            keys: top-level keys to compare (default: what scoring needs, so a pool
                store and a target store can differ in ``feature_kind``, data files and
                size); ``None`` compares everything but progress keys. The dtypes
                must be of one family always: fp16 and fp32 go together, a quantized
                store only with one quantized the same way (``int8`` or ``1bit``).
        """
        theirs = other.manifest if isinstance(other, GradientDatastore) else normalise(other)
        label = other.path if isinstance(other, GradientDatastore) else "the other manifest"
        diffs = incompatibilities(self._manifest, theirs, keys, self.path, label)
        if diffs:
            raise IncompatibleError(f"incompatible gradient datastores ({self.path} vs {label}): " + "; ".join(diffs))

    @staticmethod
    def merge_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                     overwrite: bool = False) -> GradientDatastore:
        """See :func:`lightning_less.stores.merge.merge_shards`."""
        from lightning_less.stores.merge import merge_shards

        return merge_shards(shard_paths, out_path, overwrite=overwrite)
