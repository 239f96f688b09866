"""Run the built-in demo over several seeds and scenarios and print the README's mean ± std tables.

    python benchmarks/demo_table.py --seeds 0 1 2 --scenarios in_form cross_form --output demo_runs

A finished run (its ``results.json``) is reused; each run's ``timings.json`` keeps its first run's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("target_share", "surface_share", "target_loss", "target_exact_match")


def table(scenario: str, seeds: list[int], output: Path) -> None:
    """Run (or reuse) one scenario's seeds and print its markdown table."""
    results, seconds = {}, {}
    for seed in seeds:
        out = output / scenario / f"seed_{seed}"
        if not (out / "results.json").exists():
            subprocess.run([sys.executable, "-m", "lightning_less.cli", "demo", "--output", str(out), "--seed", str(seed),
                            "--scenario", scenario], check=True)
        seconds[seed] = json.loads((out / "timings.json").read_text())["total"]
        results[seed] = json.loads((out / "results.json").read_text())
    methods = list(results[seeds[0]])
    print(f"### {scenario}: seeds {seeds}; first-run time per seed (s): " + ", ".join(f"{seconds[s]:.0f}" for s in seeds))
    print()
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for m in methods:
        cells = []
        for c in COLUMNS:
            values = np.array([results[s][m][c] for s in seeds], dtype=float)
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=["in_form", "cross_form"])
    parser.add_argument("--output", default="demo_runs")
    args = parser.parse_args()
    for scenario in args.scenarios:
        table(scenario, args.seeds, Path(args.output))


if __name__ == "__main__":
    main()
