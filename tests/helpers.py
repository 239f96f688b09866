"""Shared test fixtures' building blocks (importable as ``tests.helpers``)."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def qa_records(n: int, prefix: str = "q", task: str = "echo") -> list[dict]:
    """``n`` short, learnable prompt/answer records."""
    out = []
    for i in range(n):
        w = "abcdefghij"[i % 10] * (1 + i % 3)
        out.append({"id": f"{prefix}{i}", "dataset": task, "messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]})
    return out
