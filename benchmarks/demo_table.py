"""Run the built-in demo over several seeds and print the README's mean ± std table.

    python benchmarks/demo_table.py --seeds 0 1 2 --output demo_runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = ("target_share", "surface_share", "target_loss", "target_exact_match")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="demo_runs")
    args = parser.parse_args()
    results, seconds = {}, {}
    for seed in args.seeds:
        out = Path(args.output) / f"seed_{seed}"
        start = time.time()
        if not (out / "results.json").exists():
            subprocess.run([sys.executable, "-m", "lightning_less.cli", "demo", "--output", str(out), "--seed", str(seed)], check=True)
        seconds[seed] = time.time() - start
        results[seed] = json.loads((out / "results.json").read_text())
    methods = list(results[args.seeds[0]])
    print(f"seeds {args.seeds}; wall time per seed (s): " + ", ".join(f"{seconds[s]:.0f}" for s in args.seeds))
    print()
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for m in methods:
        cells = []
        for c in COLUMNS:
            values = np.array([results[s][m][c] for s in args.seeds], dtype=float)
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
