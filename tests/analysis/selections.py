"""Selection directories for the analysis tests: a scored (LESS-like) one and a random one, on a small pool."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lightning_less.data.records import read_records
from lightning_less.selection.budget import budget_info, top_k
from lightning_less.selection.outputs import write_selection
from tests.helpers import write_jsonl

SUBTASKS = ("arith", "geo & <maps>")  # a name that must be escaped in HTML


def make_pool(root: Path) -> list[Path]:
    """Three pool files in the three record formats, each with a ``dataset`` field."""
    a = [
        {"dataset": "flan", "id": f"f{i}", "instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
        for i in range(12)
    ]
    a[3]["instruction"] = "Explain <script>alert('x')</script> & tags " + "word " * 40
    b = [
        {"dataset": "dolly", "id": f"d{i}", "prompt": f"Name a city in country number {i}.", "completion": "Paris " * (1 + i % 4)}
        for i in range(8)
    ]
    c = [
        {"dataset": "oasst", "id": f"o{i}", "messages": [
            {"role": "user", "content": f"Where is landmark {i} located on the map?"},
            {"role": "assistant", "content": "It is in " + "the north " * (i % 3 + 1)},
        ]}
        for i in range(10)
    ]
    return [write_jsonl(root / "pool_a.jsonl", a), write_jsonl(root / "pool_b.jsonl", b), write_jsonl(root / "pool_c.jsonl", c)]


def make_targets(root: Path) -> Path:
    recs = [
        {"id": f"t-ar{i}", "subtask": SUBTASKS[0], "prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(3)
    ] + [
        {"id": f"t-geo{i}", "subtask": SUBTASKS[1], "prompt": f"Where is place {i}? <b>bold</b>", "completion": "north"}
        for i in range(2)
    ]
    return write_jsonl(root / "targets.jsonl", recs)


def make_scored_selection(root: Path, k: int = 6, record_targets: bool = True) -> dict:
    pool_paths = make_pool(root / "data")
    targets = make_targets(root / "data")
    pool = read_records(pool_paths)
    n = len(pool)
    rng = np.random.default_rng(0)
    per_subtask = np.round(rng.normal(size=(n, 2)), 2)  # rounded: ties happen
    per_subtask[[1, 5, 20], 0] = 9.0  # a three-way tie at the top of the first subtask
    per_subtask[3, 1] = 5.0  # the record with HTML in its text is shown
    scores = per_subtask.max(axis=1)
    selected = top_k(scores, k)
    out = root / "sel_less"
    inputs = {"targets": [str(targets)]} if record_targets else {}
    write_selection(out, pool, selected, scores, "less", budget_info(n, count=k), seed=3, inputs=inputs,
                    per_subtask=(SUBTASKS, per_subtask))
    return {"dir": out, "pool_paths": pool_paths, "targets": targets, "pool": pool}


def make_random_selection(root: Path) -> dict:
    pool_paths = make_pool(root / "data")
    pool = read_records(pool_paths)
    k = 6  # the budget: 20% of 30
    selected = np.sort(np.random.default_rng(1).choice(len(pool), size=k, replace=False))
    out = root / "sel_random"
    write_selection(out, pool, selected, None, "random", budget_info(len(pool), fraction=0.2), seed=1)
    return {"dir": out, "pool_paths": pool_paths, "pool": pool}


def read_scores_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
