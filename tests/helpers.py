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


def run_two_ranks(script: Path, cwd: Path | None = None) -> list[str]:
    """Run ``script`` as the two ranks of a gloo process group on this machine (a free port, one thread each);
    fail with both ranks' output unless both exit 0. Returns each rank's output."""
    import os
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:  # a free port, not a guessed one
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK="0",
                   LOCAL_RANK=str(rank), RANK=str(rank), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=str(cwd or root),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


def fill_store(store, indices, rows) -> None:
    """Write ``rows(snapshot, dim, indices)`` into every array of ``store`` and mark those rows done."""
    for snap in store.snapshots:
        for dim in store.dims:
            store.write(snap, dim, indices, rows(snap, dim, indices))
        store.mark_done(snap, indices)
