"""Benchmark: what selection costs as the pool grows (10k, 100k and 1M short records).

For each pool size, each step runs in a fresh subprocess; its wall time and peak RSS
(``os.wait4``'s ``ru_maxrss`` of that child) are measured:

(a) ``lightning-less select --method random`` (reading the pool, random 5%, writing the selection),
(b) ``... --method bm25`` and (c) ``... --method dsir`` against 200 targets in 4 subtasks,
    all three through the real CLI (``python -m lightning_less.cli select``): what a user gets;
(d) LESS scoring (:func:`~lightning_less.selection.scoring.influence_scores` block by block,
    then top 5%) of a synthetic gradient store of one snapshot at d=8192, written block by
    block with :class:`~lightning_less.stores.datastore.GradientDatastore` (not timed):
    fp16 at 10k and 100k, ``int8`` at 1M; ``int8`` and ``1bit`` are also scored at 100k
    (for the Jaccard below) and ``1bit`` at 1M, shown as (d:int8) / (d:1bit) rows;
(e) writing ``selected.jsonl`` (reading the pool and
    :func:`~lightning_less.selection.outputs.write_selection` of a 5% selection).

The synthetic features have structure: 32 clusters (random directions), each row its
cluster's direction times a per-row strength plus noise; the targets come from 4 of the
clusters. The last line compares 1M with 100k: the largest peak RSS of (a), (d), (e), its
growth, the growth of the total time of (a)-(e) (primary (d) only), and the Jaccard
index of the top-5% LESS selections of the int8 and 1-bit stores with the fp16 one at 100k.

Run::

    python benchmarks/scale.py --quick      # 10k and 100k (< 2 min on 2 cores, ~4 GB temp disk)
    python benchmarks/scale.py              # + 1M (~10 GB temp disk for the int8 and 1-bit stores)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, CLUSTERS, SUBTASKS, TARGETS, FRACTION = 8192, 32, 4, 200, 0.05
BLOCK = 2048  # rows per store write
WORDS = ("apple river stone cloud piano garden engine winter forest signal matrix planet copper violin harbor "
         "lantern desert meadow rocket silver").split()
MANIFEST = {"feature_kind": "adam", "projector": {"kind": "synthetic", "seed": 0}}


def write_pool(path: Path, n: int) -> None:
    """``n`` short chat records, a plain f-string loop (fast; no json.dumps)."""
    w = len(WORDS)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b, c = WORDS[i % w], WORDS[(i * 7 + 3) % w], WORDS[(i * 13 + 5) % w]
            f.write(f'{{"id": "p{i}", "dataset": "syn{i % 5}", "messages": [{{"role": "user", "content": '
                    f'"Tell me about the {a} and the {b}, case {i}."}}, {{"role": "assistant", "content": '
                    f'"The {a} is near the {c}; the {b} is not ({i % 97})."}}]}}\n')


def write_targets(path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for j in range(TARGETS):
            s = j % SUBTASKS
            a, b = WORDS[s], WORDS[(s * 5 + j) % len(WORDS)]
            f.write(f'{{"id": "t{j}", "dataset": "target", "subtask": "s{s}", "messages": [{{"role": "user", '
                    f'"content": "What about the {a} and the {b}?"}}, {{"role": "assistant", "content": '
                    f'"The {a} goes with the {b}."}}]}}\n')


class Features:
    """Structured synthetic features: ``strength * direction[cluster] + noise`` (noise from a shifted bank)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.directions = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32) / np.sqrt(DIM, dtype=np.float32)
        self.bank = rng.standard_normal((BLOCK, DIM), dtype=np.float32) / np.sqrt(DIM, dtype=np.float32)

    def pool(self, start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop)
        rng = np.random.default_rng([1, start])
        strength = rng.uniform(0.0, 1.5, size=(rows.size, 1)).astype(np.float32)
        # Each block of rows draws another cyclic shift of the bank: distinct noise, no fresh normals to draw.
        noise = np.roll(self.bank[: rows.size], int(rng.integers(DIM)), axis=1)
        return strength * self.directions[(rows * 2654435761) % CLUSTERS] + noise

    def targets(self) -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng(2)
        subtask = np.arange(TARGETS) % SUBTASKS
        rows = self.directions[subtask] + 0.5 * rng.standard_normal((TARGETS, DIM), dtype=np.float32) / np.sqrt(DIM)
        return rows.astype(np.float32), [f"s{s}" for s in subtask]


def build_store(path: Path, n: int, dtype: str, features: Features, kind: str = "adam") -> None:
    """A complete one-snapshot store written block by block through the datastore's writer API."""
    from lightning_less.stores.datastore import GradientDatastore

    store = GradientDatastore.create(path, {**MANIFEST, "feature_kind": kind}, ["epoch_000"], [DIM], n, dtype=dtype)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        rows = features.pool(start, stop) if kind == "adam" else features.targets()[0][start:stop]
        store.write("epoch_000", DIM, np.arange(start, stop), rows)
        if stop == n or (stop // BLOCK) % 8 == 0:  # marking done flushes: every 8 blocks, like a buffered writer
            store.mark_done("epoch_000", np.arange(stop - (stop - 1) % (8 * BLOCK) - 1, stop))
    store.finalize()


# A small launcher runs each step and reports the step's own peak RSS: a child forked from this
# (large) process would inherit its resident set in ru_maxrss; the launcher's is a few MB.
LAUNCHER = ("import resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
            "print('@@measure', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd`` in a fresh subprocess; fails loudly on a nonzero exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    out = done.stdout.decode(errors="replace")
    last = out.rstrip().splitlines()[-1].split() if out.strip() else []
    if not last or last[0] != "@@measure" or last[1] != "0":
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return float(last[2]), int(last[3]) / 1024  # ru_maxrss is in KiB on Linux


def score_child(pool_store: str, target_store: str, out: str) -> None:
    """Step (d), in its own process: open both stores, check them, score block by block, save the top 5%."""
    from lightning_less.selection.budget import top_k
    from lightning_less.selection.scoring import influence_scores
    from lightning_less.stores.datastore import GradientDatastore

    pool, targets = GradientDatastore.open(pool_store), GradientDatastore.open(target_store)
    pool.check_compatible(targets)
    labels = json.loads((Path(target_store) / "labels.json").read_text())
    result = influence_scores([pool.features("epoch_000", DIM)], [np.asarray(targets.features("epoch_000", DIM))],
                              [1.0], labels)
    np.save(out, top_k(result.score, max(1, int(FRACTION * pool.n_examples))))


def write_child(pool: str, out: str) -> None:
    """Step (e), in its own process: read the pool, write a 5% selection directory."""
    from lightning_less.data.records import read_records
    from lightning_less.selection.outputs import write_selection

    records = read_records([pool])
    k = max(1, int(FRACTION * len(records)))
    selected = np.random.default_rng(0).choice(len(records), size=k, replace=False)
    write_selection(out, records, selected, None, "random", {"fraction": FRACTION, "count": None, "k": k}, 0,
                    overwrite=True)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b)


def stores_dir(n: int, work: Path) -> Path:
    """Stores up to 100k rows (at most 1.7 GB each) go to /dev/shm when it has room: building them is then
    not bound by a slow shared disk (scoring reads a just-written store from the page cache either way)."""
    shm = Path("/dev/shm")
    if n <= 100_000 and shm.is_dir() and shutil.disk_usage(shm).free > 8e9:
        path = shm / work.name
        path.mkdir(exist_ok=True)
        return path
    return work


def run_size(n: int, work: Path, features: Features, dtypes: list[str]) -> dict[str, tuple[float, float]]:
    """Every step at pool size ``n``: ``{step: (seconds, peak RSS MB)}``; selections saved under ``work``."""
    here = work / f"n{n}"
    here.mkdir(parents=True, exist_ok=True)
    pool, targets = here / "pool.jsonl", work / "targets.jsonl"
    t0 = time.perf_counter()
    write_pool(pool, n)
    print(f"[{n}] pool written in {time.perf_counter() - t0:.1f} s ({pool.stat().st_size / 1e6:.0f} MB)", flush=True)
    steps: dict[str, tuple[float, float]] = {}
    cli = [sys.executable, "-m", "lightning_less.cli", "select", "--pool", str(pool), "--fraction", str(FRACTION)]
    for step, method in (("a", "random"), ("b", "bm25"), ("c", "dsir")):
        extra = [] if method == "random" else ["--targets", str(targets)]
        steps[step] = measure([*cli, "--method", method, "--output", str(here / method), *extra])
        print(f"[{n}] ({step}) {method}: {steps[step][0]:.1f} s, {steps[step][1]:.0f} MB", flush=True)
    for i, dtype in enumerate(dtypes):
        t0 = time.perf_counter()
        store, tstore = stores_dir(n, work) / f"store_{n}_{dtype}", work / f"targets_{dtype}"
        build_store(store, n, dtype, features)
        if not tstore.exists():
            build_store(tstore, TARGETS, dtype, features, kind="sgd")
            (tstore / "labels.json").write_text(json.dumps(features.targets()[1]))
        size = sum(f.stat().st_size for f in (store / "features").rglob("*.npy"))
        print(f"[{n}] {dtype} store built in {time.perf_counter() - t0:.1f} s: {size / 1e6:.0f} MB", flush=True)
        key = "d" if i == 0 else f"d:{dtype}"
        steps[key] = measure([sys.executable, __file__, "--child-score", str(store), str(tstore),
                              str(here / f"top_{dtype}.npy")])
        steps[key] = (*steps[key], size / 1e6)  # type: ignore[assignment]
        print(f"[{n}] ({key}) LESS {dtype}: {steps[key][0]:.1f} s, {steps[key][1]:.0f} MB", flush=True)
        if n >= 1_000_000:
            shutil.rmtree(store)  # 8 GB of int8 codes: free the disk (and page cache) for the next store
    steps["e"] = measure([sys.executable, __file__, "--child-write", str(pool), str(here / "written")])
    print(f"[{n}] (e) write selected.jsonl: {steps['e'][0]:.1f} s, {steps['e'][1]:.0f} MB", flush=True)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    parser.add_argument("--dir", default=None, help="where the temp files go (default: the temp dir)")
    parser.add_argument("--child-score", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-write", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_score:
        return score_child(*args.child_score)
    if args.child_write:
        return write_child(*args.child_write)
    sizes = {10_000: ["float16"], 100_000: ["float16", "int8", "1bit"]}
    if not args.quick:
        sizes[1_000_000] = ["int8", "1bit"]
    work = Path(tempfile.mkdtemp(prefix="ll-bench-scale-", dir=args.dir))
    started = time.perf_counter()
    try:
        write_targets(work / "targets.jsonl")
        features = Features()
        results = {n: run_size(n, work, features, dtypes) for n, dtypes in sizes.items()}
        top = {dtype: np.load(work / "n100000" / f"top_{dtype}.npy") for dtype in sizes[100_000]}
        int8_j, onebit_j = jaccard(top["int8"], top["float16"]), jaccard(top["1bit"], top["float16"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(Path("/dev/shm") / work.name, ignore_errors=True)

    print(f"\n{'pool':>9} {'step':<10} {'seconds':>8} {'peak RSS MB':>12} {'store MB':>9}")
    for n, steps in results.items():
        for step, values in steps.items():
            store = f"{values[2]:9.0f}" if len(values) > 2 else ""
            print(f"{n:>9} {step:<10} {values[0]:8.1f} {values[1]:12.0f} {store}")
    print(f"total wall time {time.perf_counter() - started:.0f} s; top-5% Jaccard vs fp16 at 100k: "
          f"int8 {int8_j:.4f}, 1bit {onebit_j:.4f}")

    def peak(n: int) -> float:
        return max(v[1] for k, v in results[n].items() if k in ("a", "d", "e") or k.startswith("d:"))

    def total(n: int) -> float:
        return sum(v[0] for k, v in results[n].items() if k in ("a", "b", "c", "d", "e"))

    big = 1_000_000 in results
    rss = peak(1_000_000) if big else float("nan")
    rss_growth = rss / peak(100_000) if big else float("nan")
    time_growth = total(1_000_000) / total(100_000) if big else float("nan")
    print(f"rss_1m_mb={rss:.0f} rss_growth_1m_vs_100k={rss_growth:.2f} time_growth_1m_vs_100k={time_growth:.2f} "
          f"int8_jaccard={int8_j:.4f} onebit_jaccard={onebit_j:.4f}")


if __name__ == "__main__":
    main()
