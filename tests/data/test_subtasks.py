"""Targets that label some records with a subtask and not others are refused, by every entry point, before any compute.

The unlabelled ones would otherwise form a subtask named after their source and take part in
``max_subtask_mean`` like a real subtask, with exit status 0 and no warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_less.data.records import read_records
from lightning_less.data.subtasks import check_target_subtasks
from lightning_less.errors import InputError
from tests.helpers import qa_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def files(tmp_path):
    """A pool; labelled targets; unlabelled targets; a file mixing both (line 3 unlabelled)."""
    labelled = [dict(r, subtask="upper") for r in qa_records(3, prefix="t")]
    plain = qa_records(2, prefix="u")
    return {
        "pool": write_jsonl(tmp_path / "pool.jsonl", qa_records(12, prefix="p")),
        "labelled": write_jsonl(tmp_path / "labelled.jsonl", labelled),
        "plain": write_jsonl(tmp_path / "plain.jsonl", plain),
        "mixed": write_jsonl(tmp_path / "mixed.jsonl", labelled[:2] + plain[:1] + labelled[2:]),
    }


def test_all_or_none_labelled_pass(files):
    check_target_subtasks(read_records([str(files["labelled"])]))
    check_target_subtasks(read_records([str(files["plain"])]))  # each file (source) is one task: fine
    check_target_subtasks([])


def test_a_mix_in_one_file_names_the_first_unlabelled_record(files):
    with pytest.raises(InputError) as err:
        check_target_subtasks(read_records([str(files["mixed"])]))
    message = str(err.value)
    assert message.startswith(f"{files['mixed']}:3: this target has no 'subtask' field")
    assert "1 of 4 targets lack one" in message and "give every target a subtask, or none" in message


def test_a_mix_over_two_files_names_both(files):
    with pytest.raises(InputError) as err:
        check_target_subtasks(read_records([str(files["labelled"]), str(files["plain"])]))
    message = str(err.value)
    assert message.startswith(f"{files['plain']}:1: ") and f"in {files['labelled']} do" in message
    assert "2 of 5 targets lack one" in message and "source ('echo')" in message  # the subtask they would form


def test_run_selection_refuses_before_selecting(files, tmp_path, monkeypatch):
    from lightning_less.selection import methods  # noqa: F401  (registers the methods)
    from lightning_less.selection.registry import get_method
    from lightning_less.selection.runner import run_selection

    def boom(*args, **kwargs):
        raise AssertionError("a method ran before the targets were checked")

    monkeypatch.setattr(type(get_method("bm25")), "select", boom)
    with pytest.raises(InputError, match=r"mixed\.jsonl:3: this target has no 'subtask'"):
        run_selection("bm25", [str(files["pool"])], [str(files["mixed"])], tmp_path / "sel", count=2)
    assert not (tmp_path / "sel").exists()
    monkeypatch.undo()
    run_selection("bm25", [str(files["pool"])], [str(files["labelled"])], tmp_path / "sel", count=2)  # the same, labelled
    assert (tmp_path / "sel" / "manifest.json").is_file()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("LIGHTNING_LESS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lightning_less.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_select_command_refuses_with_exit_2(files, tmp_path):
    out = tmp_path / "out"
    done = _cli("select", "--method", "random", "--pool", str(files["pool"]), "--targets", str(files["mixed"]),
                "--count", "2", "--output", str(out))
    assert done.returncode == 2, done.stderr
    err = " ".join(done.stderr.split())
    assert f"error: {files['mixed']}:3: this target has no 'subtask' field" in err, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()


def test_the_compare_command_refuses_with_exit_2(files, tmp_path, capsys, monkeypatch):
    from lightning_less.cli import main

    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--methods", '["random", "full"]', "--pool", str(files["pool"]), "--targets",
              str(files["mixed"]), "--count", "2", "--output", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"error: {files['mixed']}:3: this target has no 'subtask' field" in " ".join(err.split()), err
    assert not out.exists()
