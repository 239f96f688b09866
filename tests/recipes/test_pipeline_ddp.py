"""``lightning-less pipeline`` with a Trainer on two devices (DDP, gloo, CPU), run as a user runs it.

Lightning starts the second rank by running the command again; both go through the steps.
The passes and the training run on both ranks, the markers, the selection and the summary
are written once; each step line and the result are printed once; the stores and the
selection equal a one-process run on the same warmup; a rerun skips every step. A hang
(a rank waiting for a peer that left) fails on the timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_jsonl
from tests.recipes.test_pipeline import _pool

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
STEPS = ["[1/4] warmup", "[2/4] adam gradient features", "[2/4] sgd gradient features", "[3/4] LESS scores",
         "[4/4] training"]


def _files(tmp_path: Path) -> list[str]:
    a, b, t = _pool(tmp_path)
    long = {"id": "long", "dataset": "echo", "messages": [{"role": "user", "content": "echo " + "x" * 200},
                                                        {"role": "assistant", "content": "x"}]}
    write_jsonl(a, [json.loads(line) for line in a.read_text().splitlines()] + [long])  # no response token at 64
    return [str(a), str(b), str(t)]


def _pipeline(files: list[str], output: Path, trainer: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    """The command line, in a process group of its own (its other rank included) killed on a timeout."""
    a, b, t = files
    args = ["--pool", f"[{a},{b}]", "--targets", t, "--eval", t, "--output", str(output), "--max_length", "64",
            "--warmup.fraction", "0.5", "--warmup.epochs", "2", "--warmup.learning_rate", "5e-3", "--warmup.lora_r", "4",
            "--warmup.lora_alpha", "8", "--warmup.batch_size", "4", "--features.dims", "[64]",
            "--features.projector", "sparse_jl", "--features.batch_size", "8", "--features.store_dtype", "float32",
            "--selection.fraction", "0.25", "--train.epochs", "1", "--train.lora_r", "4", "--train.lora_alpha", "8",
            "--train.batch_size", "4", "--train.generation_max_new_tokens", "3", "--trainer", json.dumps(trainer)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lightning_less.cli", "pipeline", *args], cwd=str(output.parent),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the pipeline still ran after {timeout} s (a hang):\n{err.decode(errors='replace')[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def test_pipeline_on_two_devices_runs_each_step_once_and_equals_one_process(tmp_path):
    files = _files(tmp_path)
    ddp = _pipeline(files, tmp_path / "ddp", {**QUIET, "devices": 2, "strategy": "ddp"})
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    result = json.loads(ddp.stdout)  # one JSON object: printed twice, it would not parse
    for step in STEPS:
        assert ddp.stderr.count(step) == 1, (step, ddp.stderr[-4000:])
    assert result["excluded"]["count"] == 1 and result["excluded"]["ids"] == ["long"]
    selected = [json.loads(line)["id"] for line in (tmp_path / "ddp" / "selection" / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 10 and "long" not in selected
    assert result["train"]["n_train"] == 10
    manifest = json.loads((tmp_path / "ddp" / "features" / "pool" / "manifest.json").read_text())
    assert manifest["excluded_indices"] == [25] and manifest["excluded_ids"] == ["long"]  # counted and named

    # One process on the same warmup (two devices train differently): the same stores and selection.
    (tmp_path / "one").mkdir()
    shutil.copytree(tmp_path / "ddp" / "warmup", tmp_path / "one" / "warmup")
    one = _pipeline(files, tmp_path / "one", QUIET)
    assert one.returncode == 0, one.stderr[-4000:]
    # Each rank groups its own share by length, so batches (and their padding) differ from one
    # process's: the features agree to float rounding, the selection exactly.
    for rel in ["features/pool/features/epoch_000/dim_64.npy", "features/pool/features/epoch_001/dim_64.npy",
                "features/targets/features/epoch_001/dim_64.npy"]:
        np.testing.assert_allclose(np.load(tmp_path / "ddp" / rel), np.load(tmp_path / "one" / rel), rtol=1e-4, atol=1e-4,
                                   err_msg=rel)
    # The pool repeats some examples word for word: their scores tie up to rounding, so which copy is
    # chosen may differ; the chosen examples' contents are the same.
    def chosen(run: str) -> list[str]:
        lines = (tmp_path / run / "selection" / "selected.jsonl").read_text().splitlines()
        return sorted(json.dumps(json.loads(line)["messages"]) for line in lines)

    assert chosen("ddp") == chosen("one")
    assert json.loads(one.stdout)["excluded"] == result["excluded"]

    # A rerun finds every step done: exit 0, the same result, printed once.
    again = _pipeline(files, tmp_path / "ddp", {**QUIET, "devices": 2, "strategy": "ddp"})
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout) == result and "[skip] training" in again.stderr
