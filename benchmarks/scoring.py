"""Benchmark: streaming LESS influence scoring of a large fp16 gradient datastore.

Builds a synthetic store like the paper's (docs/algorithms.md §1.4: 270,679 x 8192 fp16 per
snapshot, 4 snapshots): by default 200,000 x 8192 fp16 x 4 snapshots (13.1 GB of
``.npy`` files, written in chunks from a seeded RNG), and scores it against 300
targets in 10 subtasks with :func:`lightning_less.selection.scoring.influence_scores`,
reading the store through ``np.load(mmap_mode="r")`` as the datastore does. The first
64 rows are checked against a direct float64 computation.

Only the scoring is timed. By default the files are evicted from the OS page cache
before scoring (``fsync`` + ``posix_fadvise(DONTNEED)``), so the number includes
reading the store from disk, as for a store larger than RAM; ``--warm`` skips that.
Peak RSS is this process's ``ru_maxrss``; it must stay far below the store's size.

Run (the last line is the result)::

    python benchmarks/scoring.py            # full: needs ~14 GB free disk
    python benchmarks/scoring.py --quick    # 20,000 x 1024, well under a minute
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_less.selection.scoring import influence_scores  # noqa: E402

LRS = [1.69e-5, 1.29e-5, 7.70e-6, 2.56e-6]  # docs/algorithms.md §1.1, lr 2e-5 over 4 epochs


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_store(path: Path, n: int, dim: int, rng: np.random.Generator, chunk_rows: int) -> None:
    """Write an ``[n, dim]`` fp16 ``.npy`` with plain file writes (no mapping, so no RSS growth)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, dim)})
        for start in range(0, n, chunk_rows):
            rows = min(chunk_rows, n - start)
            # Uniform in [-0.5, 0.5): 4x faster to draw than normals, and the values do
            # not change the scoring cost; torch's fp32 -> fp16 cast is faster than numpy's.
            chunk = rng.random((rows, dim), dtype=np.float32)
            chunk -= 0.5
            f.write(torch.from_numpy(chunk).half().numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())


def evict(path: Path) -> None:
    """Drop a file's clean pages from the page cache, so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 x 1024 instead of 200,000 x 8192")
    parser.add_argument("--n", type=int, default=None, help="pool rows")
    parser.add_argument("--dim", type=int, default=None, help="feature dimension")
    parser.add_argument("--snapshots", type=int, default=4)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--subtasks", type=int, default=10)
    parser.add_argument("--block-size", type=int, default=None, help="pool rows per block (default: auto)")
    parser.add_argument("--dir", default=None, help="where to write the store (default: the temp dir)")
    parser.add_argument("--warm", action="store_true", help="do not evict the store from the page cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 200_000)
    dim = args.dim or (1024 if args.quick else 8192)

    store_bytes = args.snapshots * n * dim * 2
    base = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < store_bytes * 1.1:
        sys.exit(f"need {store_bytes / 1e9:.1f} GB free in {base}, have {free / 1e9:.1f} GB; use --dir or --quick")
    print(f"store: {args.snapshots} snapshots x {n} x {dim} fp16 = {store_bytes / 1e9:.2f} GB in {base}")
    print(f"rss after imports: {_rss_mb():.0f} MB")

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-scoring-", dir=base))
    try:
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(args.snapshots + 1)]
        t0 = time.perf_counter()
        paths = [tmp / f"snapshot_{i}.npy" for i in range(args.snapshots)]
        for path, rng in zip(paths, rngs):
            write_store(path, n, dim, rng, chunk_rows=max(1, (32 << 20) // (4 * dim)))
        print(f"generated in {time.perf_counter() - t0:.1f} s (not timed below)")
        if not args.warm:
            for path in paths:
                evict(path)

        rng = rngs[-1]
        targets = [rng.standard_normal((args.targets, dim), dtype=np.float32) for _ in range(args.snapshots)]
        labels = [f"subtask_{s}" for s in rng.permutation(np.arange(args.targets) % args.subtasks)]
        pool = [np.load(path, mmap_mode="r") for path in paths]

        rss_before = _rss_mb()
        t0 = time.perf_counter()
        lrs = LRS[: args.snapshots] if args.snapshots <= len(LRS) else [1.0] * args.snapshots
        result = influence_scores(pool, targets, lrs, labels, block_size=args.block_size, device=args.device)
        seconds = time.perf_counter() - t0
        peak = _peak_rss_mb()

        # Sanity: the first rows against a direct float64 computation.
        check = min(64, n)
        w = np.asarray(result.weights)
        direct = np.zeros((check, args.subtasks))
        for i, (p, t) in enumerate(zip(pool, targets)):
            x = np.asarray(p[:check], dtype=np.float64)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            z = t.astype(np.float64) / np.linalg.norm(t, axis=1, keepdims=True)
            sims = x @ z.T
            for s, name in enumerate(result.subtasks):
                direct[:, s] += w[i] * sims[:, [j for j, lab in enumerate(labels) if lab == name]].mean(axis=1)
        err = float(np.abs(direct - result.per_subtask[:check]).max())

        rate = n / seconds
        print(f"cache: {'warm' if args.warm else 'cold (evicted)'}, device: {args.device}, "
              f"block size: {args.block_size or 'auto'}")
        print(f"scored {n} examples x {args.snapshots} snapshots in {seconds:.2f} s "
              f"({rate * args.snapshots * dim * 2 / 1e9:.2f} GB/s of fp16 features)")
        print(f"rss before scoring: {rss_before:.0f} MB, after: {_rss_mb():.0f} MB; max |error| vs float64: {err:.2e}")
        print(f"scoring_examples_per_s={rate:.1f} peak_rss_mb={peak:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
