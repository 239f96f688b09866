"""A resumable on-disk store of projected per-example gradient features.

Layout of a store directory (docs/architecture.md, "Gradient datastore"):

* ``manifest.json``: ``format_version``, ``feature_kind`` (``adam`` | ``sgd``),
  ``projector`` (``Projector.describe()``), ``snapshots``, ``dims``, ``dtype``,
  ``n_examples``, ``library_version``, ``created``, ``complete`` and whatever else the
  caller records (data files + sha256, model, snapshot fingerprints, ``shard``...).
  Always written atomically (temp file + ``os.replace``), and written *last* on
  creation, so a manifest implies that every array exists.
* ``features/<snapshot>/dim_<d>.npy``: [n_examples, d] unnormalised features in dataset
  order, created at full size with ``np.lib.format.open_memmap`` (sparse on disk until
  written), so any rank can write any row.
* ``done/<snapshot>.npy``: bool [n_examples], one mask per snapshot, because the
  gradient pass loads one snapshot at a time; a row is marked done only after it was
  written for every dim of that snapshot and the feature arrays were flushed.

A store is readable as features only once :meth:`GradientDatastore.finalize` has set
``"complete": true``; stale or differently-built stores are refused, never reused
(docs/algorithms.md §5).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GradientDatastore", "FORMAT_VERSION", "SCORING_KEYS"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Keys that change with progress or time, not with what the store contains.
PROGRESS_KEYS = frozenset({"complete", "created"})
#: Keys that must agree between a pool store and a target store to be scored together.
SCORING_KEYS = ("format_version", "projector", "dims", "snapshots")
_DTYPES = ("float16", "float32")
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COPY_ROWS = 1 << 16  # rows per copy step when merging, to bound memory


def _library_version() -> str:
    from lightning_less.version import __version__

    return __version__


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    """Write JSON to a temp file in the same directory, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ, with both values."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(f"{name}: {a.get(key, '<missing>')!r} != {b.get(key, '<missing>')!r}")
            else:
                out.extend(_diff(a[key], b[key], name))
        return out
    return [] if a == b else [f"{prefix}: {a!r} != {b!r}"]


def _normalise(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip, so tuples and numpy scalars compare like the stored manifest."""
    return json.loads(json.dumps(manifest, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


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

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], mode: str) -> None:
        self.path = Path(path)
        self._manifest = manifest
        self.mode = mode
        self.n_examples: int = int(manifest["n_examples"])
        self.snapshots: list[str] = list(manifest["snapshots"])
        self.dims: list[int] = [int(d) for d in manifest["dims"]]
        self.dtype: str = manifest["dtype"]
        mm = "r+" if mode == "r+" else "r"
        self._arrays: dict[tuple[str, int], np.memmap] = {}
        self._done: dict[str, np.memmap] = {}
        for snap in self.snapshots:
            for dim in self.dims:
                arr = np.load(self._feature_path(snap, dim), mmap_mode=mm)
                if arr.shape != (self.n_examples, dim) or arr.dtype != np.dtype(self.dtype):
                    raise ValueError(f"{self._feature_path(snap, dim)}: shape {arr.shape} {arr.dtype}, manifest "
                                     f"says ({self.n_examples}, {dim}) {self.dtype}")
                self._arrays[snap, dim] = arr
            done = np.load(self._done_path(snap), mmap_mode=mm)
            if done.shape != (self.n_examples,) or done.dtype != np.bool_:
                raise ValueError(f"{self._done_path(snap)}: expected bool ({self.n_examples},), got {done.shape} {done.dtype}")
            self._done[snap] = done
        # Rows written in this session, per array: mark_done checks that every dim got them.
        self._written = {key: np.zeros(self.n_examples, dtype=bool) for key in self._arrays} if mode == "r+" else {}

    # ------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        manifest: Mapping[str, Any],
        snapshots: Sequence[str],
        dims: Sequence[int],
        n_examples: int,
        dtype: str = "float16",
        overwrite: bool = False,
    ) -> GradientDatastore:
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
            dtype: storage dtype, ``float16`` (as the reference) or ``float32``.
            overwrite: replace an existing store whose manifest differs.

        Returns:
            The store, open for writing (``mode="r+"``).

        Raises:
            ValueError: an existing store with a different manifest (naming every
                differing key) unless ``overwrite``; bad arguments.
            FileExistsError: ``path`` is a non-empty directory that is not a store.
        """
        path = Path(path)
        full = cls._build_manifest(manifest, snapshots, dims, n_examples, dtype)
        if (path / MANIFEST).exists():
            existing = cls._read_manifest(path)
            diffs = _diff({k: v for k, v in existing.items() if k not in PROGRESS_KEYS},
                          {k: v for k, v in full.items() if k not in PROGRESS_KEYS})
            if not diffs:
                return cls.open(path, mode="r+")
            if not overwrite:
                raise ValueError(f"{path} holds a gradient datastore built differently (pass overwrite=True to "
                                 "replace it): " + "; ".join(diffs))
            cls._remove(path)
        elif path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty and holds no {MANIFEST}; refusing to write a datastore there")

        for snap in full["snapshots"]:
            (path / "features" / snap).mkdir(parents=True, exist_ok=True)
            for dim in full["dims"]:
                np.lib.format.open_memmap(path / "features" / snap / f"dim_{dim}.npy", mode="w+",
                                          dtype=np.dtype(dtype), shape=(n_examples, dim)).flush()
            (path / "done").mkdir(exist_ok=True)
            np.lib.format.open_memmap(path / "done" / f"{snap}.npy", mode="w+", dtype=np.bool_,
                                      shape=(n_examples,)).flush()
        _write_json_atomic(path / MANIFEST, full)  # last: a manifest implies complete arrays
        return cls(path, full, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> GradientDatastore:
        """Open an existing store read-only (``"r"``) or to continue writing (``"r+"``)."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        path = Path(path)
        return cls(path, cls._read_manifest(path), mode)

    @staticmethod
    def _build_manifest(manifest: Mapping[str, Any], snapshots: Sequence[str], dims: Sequence[int],
                        n_examples: int, dtype: str) -> dict[str, Any]:
        owned = {"format_version", "snapshots", "dims", "dtype", "n_examples", "library_version", *PROGRESS_KEYS}
        clash = sorted(owned & set(manifest))
        if clash:
            raise ValueError(f"manifest keys {clash} are set by the datastore; pass them as arguments")
        for key in ("feature_kind", "projector"):
            if key not in manifest:
                raise ValueError(f"the manifest must record {key!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        snapshots, dims = list(snapshots), [int(d) for d in dims]
        if not snapshots or len(set(snapshots)) != len(snapshots) or not all(map(_SNAPSHOT_NAME.match, snapshots)):
            raise ValueError(f"snapshots must be distinct, non-empty names of letters, digits, '._-': {snapshots}")
        if not dims or len(set(dims)) != len(dims) or min(dims) <= 0:
            raise ValueError(f"dims must be distinct positive integers: {dims}")
        if n_examples <= 0:
            raise ValueError(f"n_examples must be positive, got {n_examples}")
        return _normalise({
            **manifest, "format_version": FORMAT_VERSION, "snapshots": snapshots, "dims": dims, "dtype": dtype,
            "n_examples": int(n_examples), "library_version": _library_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": False,
        })

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a gradient datastore (no {MANIFEST})") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: datastore format_version {version!r}, this library reads {FORMAT_VERSION}")
        return manifest

    @staticmethod
    def _remove(path: Path) -> None:
        # Only what a store owns; other files in the directory are left alone.
        import shutil

        (path / MANIFEST).unlink(missing_ok=True)  # first: a half-removed store is no store
        for sub in ("features", "done"):
            shutil.rmtree(path / sub, ignore_errors=True)

    # ---------------------------------------------------------------- access
    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._manifest))

    def _feature_path(self, snapshot: str, dim: int) -> Path:
        return self.path / "features" / snapshot / f"dim_{dim}.npy"

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
            raise PermissionError(f"{self.path} is open read-only")
        if self._manifest.get("complete"):
            raise PermissionError(f"{self.path} is complete; create a new store instead of changing it")

    def write(self, snapshot: str, dim: int, indices: Sequence[int] | np.ndarray, features: Any) -> None:
        """Write float32 feature rows at dataset ``indices`` (stored in the store's dtype).

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
        with np.errstate(over="ignore"):  # overflow is detected just below, with a clearer message
            stored = feats.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"features up to {np.abs(feats).max():.3g} overflow {self.dtype} (max "
                             f"{np.finfo(self.dtype).max:.3g}); create the store with dtype='float32'")
        lost = (stored == 0).all(axis=1) & (feats != 0).any(axis=1)
        if lost.any():
            raise ValueError(f"nonzero features underflow to zero in {self.dtype} for indices {idx[lost][:10].tolist()}; "
                             "create the store with dtype='float32'")
        self._arrays[snapshot, dim][idx] = stored
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

    def features(self, snapshot: str, dim: int, allow_incomplete: bool = False) -> np.ndarray:
        """The read-only [n_examples, dim] feature array of ``snapshot`` (a memmap).

        Raises:
            RuntimeError: the store is not complete, unless ``allow_incomplete`` (then
                rows not done hold zeros or stale values: check :meth:`done_mask`).
        """
        self._check_key(snapshot, dim)
        if not allow_incomplete and not (self.is_complete() and self._done[snapshot].all()):
            raise RuntimeError(f"{self.path} is not complete ({self.pending(snapshot).size} rows of {snapshot!r} "
                               "pending, or never finalized); finish the gradient pass first")
        return np.load(self._feature_path(snapshot, dim), mmap_mode="r")

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
        for arr in self._arrays.values():
            arr.flush()
        for done in self._done.values():
            done.flush()
        self._manifest["complete"] = True
        _write_json_atomic(self.path / MANIFEST, self._manifest)

    def check_compatible(self, other: GradientDatastore | Mapping[str, Any],
                         keys: Sequence[str] | None = SCORING_KEYS) -> None:
        """Raise ``ValueError`` naming every differing key (with both values).

        Args:
            other: a store or a manifest.
            keys: top-level keys to compare (default: what scoring needs, so a pool
                store and a target store can differ in ``feature_kind``, data files and
                size); ``None`` compares everything but progress keys.
        """
        theirs = other.manifest if isinstance(other, GradientDatastore) else _normalise(other)
        mine = self._manifest
        if keys is None:
            keys = sorted((set(mine) | set(theirs)) - PROGRESS_KEYS)
        sub = lambda m: {k: m.get(k, "<missing>") for k in keys}  # noqa: E731
        diffs = _diff(sub(mine), sub(theirs))
        if diffs:
            raise ValueError(f"incompatible gradient datastores ({self.path} vs other): " + "; ".join(diffs))

    # ----------------------------------------------------------------- merge
    @staticmethod
    def merge_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                     overwrite: bool = False) -> GradientDatastore:
        """Merge per-rank shard stores into one complete store (DDP gradient pass).

        Every shard has the same manifest (except progress keys and a ``shard`` entry)
        and its own done masks; together they must cover every row of every snapshot
        exactly once. Rows are copied byte for byte, so the result equals a
        one-process run.

        Args:
            shard_paths: the shard stores (any order).
            out_path: the merged store; an existing store there is refused unless ``overwrite``.
            overwrite: replace an existing store at ``out_path``.

        Returns:
            The merged, complete store (writable handle; reopen with :meth:`open` to read).

        Raises:
            ValueError: incompatible shards, rows done in two shards, or rows done in none.
            FileExistsError: ``out_path`` holds a store and ``overwrite`` is False.
        """
        shards = [GradientDatastore.open(p) for p in shard_paths]
        if not shards:
            raise ValueError("no shards to merge")
        first = shards[0]
        ignore = PROGRESS_KEYS | {"shard"}
        base = {k: v for k, v in first.manifest.items() if k not in ignore}
        for shard in shards[1:]:
            diffs = _diff(base, {k: v for k, v in shard.manifest.items() if k not in ignore})
            if diffs:
                raise ValueError(f"shard {shard.path} differs from {first.path}: " + "; ".join(diffs))
        for snap in first.snapshots:
            count = np.sum([s._done[snap] for s in shards], axis=0)
            if (count > 1).any():
                raise ValueError(f"rows {np.flatnonzero(count > 1)[:10].tolist()} of {snap!r} are done in several shards")
            if (count == 0).any():
                raise ValueError(f"rows {np.flatnonzero(count == 0)[:10].tolist()} of {snap!r} are done in no shard")
        out_path = Path(out_path)
        if (out_path / MANIFEST).exists():
            if not overwrite:
                raise FileExistsError(f"{out_path} already holds a datastore; pass overwrite=True to replace it")
            GradientDatastore._remove(out_path)
        user = {k: v for k, v in base.items() if k not in {"format_version", "snapshots", "dims", "dtype",
                                                              "n_examples", "library_version"}}
        out = GradientDatastore.create(out_path, user, first.snapshots, first.dims, first.n_examples, first.dtype)
        for shard in shards:
            for snap in first.snapshots:
                rows = np.flatnonzero(shard._done[snap])
                for start in range(0, rows.size, _COPY_ROWS):
                    part = rows[start : start + _COPY_ROWS]
                    for dim in first.dims:
                        out._arrays[snap, dim][part] = shard._arrays[snap, dim][part]
                        out._written[snap, dim][part] = True
                    out.mark_done(snap, part)
        out.finalize()
        return out
