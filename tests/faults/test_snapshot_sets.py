"""Snapshot sets: a warmup killed before its last epoch is refused by name; damaged snapshot files are named.

The warmup writes ``snapshots.json`` (its plan) when the fit starts and updates it as each
snapshot lands; :func:`list_snapshots` (what the gradient pass uses for a snapshot root)
returns a set only when it is whole. An explicit list of snapshot directories stays possible.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import pytest

from lightning_less.callbacks.snapshot import GradientFeatureCallback, list_snapshots, load_snapshot
from lightning_less.errors import InputError, MissingInputError
from lightning_less.passes.gradient_features import GradientFeatureModule, resolve_snapshots
from tests.faults.conftest import truncate, warmup
from tests.helpers import qa_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


class StopAtEpoch(pl.Callback):
    """Dies when ``epoch`` starts, as a fit killed there would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-epoch warmup with a snapshot every 2 epochs (and the last): epoch_001, epoch_002."""
    root = tmp_path_factory.mktemp("finished")
    warmup(root, [GradientFeatureCallback(str(root / "snaps"), every_n_epochs=2)], epochs=3)
    return root / "snaps"


def _copy(finished, tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", qa_records(4))  # data for the predict command
    return shutil.copytree(finished, tmp_path / "snaps")


def test_plan_of_a_finished_warmup(finished):
    plan = json.loads((finished / "snapshots.json").read_text())
    assert plan["planned"] == plan["written"] == ["epoch_001", "epoch_002"]
    assert plan["complete"] is True and plan["max_epochs"] == 3 and plan["every_n_epochs"] == 2
    assert [p.name for p in list_snapshots(finished)] == ["epoch_001", "epoch_002"]


def test_warmup_killed_before_its_last_epoch_is_refused_naming_the_missing(tmp_path):
    snaps = tmp_path / "snaps"
    with pytest.raises(RuntimeError, match="killed"):
        warmup(tmp_path, [GradientFeatureCallback(str(snaps)), StopAtEpoch(2)], epochs=4)
    assert sorted(p.name for p in snaps.glob("epoch_*")) == ["epoch_000", "epoch_001"]
    with pytest.raises(InputError) as err:
        list_snapshots(snaps)
    assert "did not finish: ['epoch_002', 'epoch_003'] missing" in str(err.value)
    # The gradient pass refuses the root before loading any model...
    with pytest.raises(InputError, match="epoch_003"):
        GradientFeatureModule(snapshots=str(snaps), output_dir=str(tmp_path / "store"))
    # ...while an explicit list of the snapshots that exist is still accepted.
    chosen = [str(snaps / "epoch_000"), str(snaps / "epoch_001")]
    assert [load_snapshot(p).epoch for p in resolve_snapshots(chosen)] == [0, 1]
    # Rerunning the warmup (overwrite) makes the set whole again.
    warmup(tmp_path, [GradientFeatureCallback(str(snaps), overwrite=True)], epochs=4)
    assert [p.name for p in list_snapshots(snaps)] == ["epoch_000", "epoch_001", "epoch_002", "epoch_003"]


def test_killed_after_the_last_snapshot_is_whole(finished, tmp_path):
    snaps = _copy(finished, tmp_path)
    plan = json.loads((snaps / "snapshots.json").read_text())
    (snaps / "snapshots.json").write_text(json.dumps({**plan, "complete": False, "written": ["epoch_001"]}))
    assert [p.name for p in list_snapshots(snaps)] == ["epoch_001", "epoch_002"]  # every planned one is on disk


def test_epoch_dir_without_snapshot_json_is_an_error_not_skipped(finished, tmp_path):
    snaps = _copy(finished, tmp_path)
    (snaps / "epoch_002" / "snapshot.json").unlink()
    with pytest.raises(InputError, match=r"epoch_002 is not a snapshot \(snapshot.json is missing\)"):
        list_snapshots(snaps)
    (snaps / "snapshots.json").unlink()  # also without a plan (an older warmup)
    with pytest.raises(InputError, match="epoch_002 is not a snapshot"):
        list_snapshots(snaps)


def test_snapshot_the_plan_does_not_know_is_refused(finished, tmp_path):
    snaps = _copy(finished, tmp_path)
    shutil.copytree(snaps / "epoch_001", snaps / "epoch_007")
    with pytest.raises(InputError, match=r"holds \['epoch_007'\], which its warmup"):
        list_snapshots(snaps)


def test_damaged_plan_is_named(finished, tmp_path):
    snaps = _copy(finished, tmp_path)
    truncate(snaps / "snapshots.json", 30)
    with pytest.raises(InputError, match="snapshots.json is corrupt or incomplete: not valid JSON"):
        list_snapshots(snaps)


def test_snapshots_without_a_plan_are_listed_with_a_warning(finished, tmp_path, caplog):
    snaps = _copy(finished, tmp_path)
    (snaps / "snapshots.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_snapshots(snaps)] == ["epoch_001", "epoch_002"]
    assert "cannot check that the warmup finished" in caplog.text
    with pytest.raises(MissingInputError, match="empty does not exist"):
        list_snapshots(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no snapshots"):
        list_snapshots(tmp_path / "empty")


DAMAGE = {
    "snapshot.json truncated": ("snapshot.json", lambda p: truncate(p, 25), InputError, "not valid JSON"),
    "snapshot.json field missing": ("snapshot.json",
                                    lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                                       if k != "lr"})), InputError, "['lr']"),
    "moments truncated": ("optimizer_moments.safetensors", lambda p: truncate(p, -100), InputError, "truncated"),
    "moments header garbage": ("optimizer_moments.safetensors", lambda p: p.write_bytes(b"\x10" * 64), InputError,
                               "no valid safetensors header"),
    "moments missing": ("optimizer_moments.safetensors", lambda p: p.unlink(), MissingInputError, "is missing"),
    "adapter missing": ("adapter_model.safetensors", lambda p: p.unlink(), MissingInputError, "is missing"),
    "adapter truncated": ("adapter_model.safetensors", lambda p: truncate(p, -8), InputError, "truncated"),
    "adapter config missing": ("adapter_config.json", lambda p: p.unlink(), MissingInputError, "is missing"),
}


@pytest.mark.parametrize("cell", list(DAMAGE))
def test_damaged_snapshot_file_is_named(finished, tmp_path, cell):
    name, damage, error, says = DAMAGE[cell]
    snaps = _copy(finished, tmp_path)
    load_snapshot(snaps / "epoch_002")
    damage(snaps / "epoch_002" / name)
    with pytest.raises(error) as err:
        load_snapshot(snaps / "epoch_002")
    assert str(snaps / "epoch_002" / name) in str(err.value) and says in str(err.value), str(err.value)


# ---------------------------------------------------------------- the predict command on a bad snapshot set
FAULTS = {
    "snapshot.json missing": (lambda s: (s / "epoch_002" / "snapshot.json").unlink(),
                              r"epoch_002 is not a snapshot \(snapshot.json is missing\): remove it, or rerun"),
    "a whole epoch missing": (lambda s: shutil.rmtree(s / "epoch_001"),
                              r"lacks \['epoch_001'\], which its warmup wrote .*restore them or rerun the warmup"),
    "no such path": (lambda s: shutil.rmtree(s), r"snaps does not exist: give the directory the warmup wrote"),
}


def _predict_args(snaps, tmp_path):
    return ["predict", "--config", str(ROOT / "configs/tiny/gradients_pool.yaml"), "--model.init_args.snapshots",
            str(snaps), "--model.init_args.output_dir", str(tmp_path / "store"), "--data.init_args.predict_files",
            json.dumps([str(tmp_path / "pool.jsonl")])]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_predict_on_a_bad_snapshot_set_is_one_paragraph_naming_it(finished, tmp_path, fault, capsys, monkeypatch):
    """Not jsonargparse's hundred lines ("Does not validate against any of the Union subtypes ...")."""
    from lightning_less.cli import main

    damage, says = FAULTS[fault]
    snaps = _copy(finished, tmp_path)
    damage(snaps)
    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main(_predict_args(snaps, tmp_path))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    paragraph = err[err.index("error:"):].strip()  # the last thing written, after Lightning's own lines
    text = " ".join(paragraph.split())
    assert re.search(says, text) and str(snaps) in text, err
    assert "\n\n" not in paragraph and len(paragraph.splitlines()) <= 4, err
    assert "Union" not in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_predict_from_the_yaml_config_in_a_subprocess(finished, tmp_path):
    """The real command line: exit status 2, the path and what to do on stderr, no traceback."""
    snaps = _copy(finished, tmp_path)
    (snaps / "epoch_002" / "snapshot.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("LIGHTNING_LESS_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "lightning_less.cli", *_predict_args(snaps, tmp_path)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    text = " ".join(done.stderr.split())
    assert f"error: {snaps / 'epoch_002'} is not a snapshot (snapshot.json is missing): remove it" in text, done.stderr
    assert "Traceback" not in done.stderr and "Union" not in done.stderr and done.stdout == ""


class Picky:
    """A class whose ``__init__`` refuses its input, as GradientFeatureModule does."""

    def __init__(self, path: str = "x") -> None:
        raise InputError(f"{path} is bad: fix it")


def test_only_errors_jsonargparse_wrapped_are_unwrapped():
    """A class's InputError inside jsonargparse's Union error is the error; a bug whose context is one is not."""
    import jsonargparse

    from lightning_less.cli import expected_error

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--thing", type=Optional[Picky])
    cfg = parser.parse_args(["--thing", json.dumps({"class_path": f"{__name__}.Picky", "init_args": {"path": "p"}})])
    with pytest.raises(ValueError, match="Union") as wrapped:
        parser.instantiate_classes(cfg)
    found = expected_error(wrapped.value)
    assert isinstance(found, InputError) and str(found) == "p is bad: fix it"
    try:
        try:
            raise InputError("handled")
        except InputError:
            raise RuntimeError("a bug while handling it")  # noqa: B904
    except RuntimeError as bug:
        assert expected_error(bug) is None
    assert expected_error(MissingInputError("direct")) is not None
