"""The own-project example (examples/own_project) end to end, and its CLI config through ``lightning_less.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.own_project.run import run
from lightning_less.cli import main
from lightning_less.stores.datastore import GradientDatastore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU: extra threads only contend
    try:
        workdir = tmp_path_factory.mktemp("own")
        yield workdir, run(workdir)
    finally:
        torch.set_num_threads(threads)


def test_the_example_selects_the_target_task_and_training_on_it_helps(own_run):
    workdir, out = own_run
    snapshot = json.loads((workdir / "snapshots" / "epoch_000" / "snapshot.json").read_text())
    assert snapshot["base_model"] is None  # built in memory: nothing to reload it from
    pool, targets = GradientDatastore.open(out["pool_store"]), GradientDatastore.open(out["target_store"])
    assert pool.is_complete() and targets.is_complete()
    assert pool.manifest["data"]["kind"] == "token_sha256" and pool.n_examples == 64 and targets.n_examples == 6
    assert pool.manifest["model"]["kind"] == "module"
    assert len(out["selected"]) == len(set(out["selected"])) == 16
    share = out["target_task_share"]
    # Seeded: the LESS selection is mostly the targets' task (a quarter of the pool), so training on it
    # lowers the targets' loss more than training on a random subset of the same size.
    assert share["less"] >= 2 * share["pool"]
    losses = out["target_loss"]
    assert losses["less"] < losses["random"] < losses["untrained"], losses


def test_the_cli_config_computes_the_same_store_with_the_module_built_from_yaml(own_run, tmp_path, monkeypatch):
    workdir, out = own_run
    monkeypatch.chdir(tmp_path)
    # The module named by its class path on the command line too (its default init_args: seed 0, the warmup's).
    main(["predict", "--config", str(ROOT / "configs" / "tiny" / "gradients_own_module.yaml"),
          "--model.init_args.model=examples.own_project.model.OwnLoRAModule",
          f"--model.init_args.snapshots={workdir / 'snapshots'}", f"--model.init_args.output_dir={tmp_path / 'pool'}",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    cli, example = GradientDatastore.open(tmp_path / "pool"), GradientDatastore.open(out["pool_store"])
    assert cli.is_complete()
    drop = {"created"}
    # Same data fingerprint, snapshots and base weights (rebuilt from the seed), so the same features.
    assert {k: v for k, v in cli.manifest.items() if k not in drop} == {k: v for k, v in example.manifest.items() if k not in drop}
    for snap in example.snapshots:
        np.testing.assert_array_equal(np.asarray(cli.features(snap, 64)), np.asarray(example.features(snap, 64)))
