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


def run_two_ranks(script: Path, cwd: Path | None = None, timeout: float = 300, expect_success: bool = True) -> list[str]:
    """Run ``script`` as the two ranks of a gloo process group on this machine (a free port, one thread each).

    A run past ``timeout`` seconds (a hang) kills both ranks and fails the test with their
    output. With ``expect_success`` both ranks must exit 0, else both must exit non-zero.
    Returns each rank's output.
    """
    import os
    import socket
    import subprocess
    import sys
    import time

    import pytest

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:  # a free port, not a guessed one
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = []
    logs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK="0",
                   LOCAL_RANK=str(rank), RANK=str(rank), PYTHONPATH=str(root), OMP_NUM_THREADS="1")
        logs.append(open(Path(script).with_suffix(f".rank{rank}.log"), "w+b"))  # a file: a full pipe cannot block a rank
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=str(cwd or root),
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    hung = [rank for rank, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read().decode(errors="replace"))
        log.close()
    if hung:
        pytest.fail(f"ranks {hung} still ran after {timeout} s (a hang): " + "\n".join(outs))
    codes = [p.returncode for p in procs]
    assert all(c == 0 for c in codes) if expect_success else all(c != 0 for c in codes), (codes, outs)
    return outs


def fill_store(store, indices, rows) -> None:
    """Write ``rows(snapshot, dim, indices)`` into every array of ``store`` and mark those rows done."""
    for snap in store.snapshots:
        for dim in store.dims:
            store.write(snap, dim, indices, rows(snap, dim, indices))
        store.mark_done(snap, indices)
