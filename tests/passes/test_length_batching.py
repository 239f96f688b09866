"""Length-grouped predict batches give the stores of file-order batches (gradients adam + sgd, loss trajectories,
hidden states), in one process and on 2 gloo ranks; a store resumes across a change of batching."""

from __future__ import annotations

import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest

from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.passes.gradient_features import GradientDumpLoop
from lightning_less.passes.hidden_states import ARRAY_NAME, compute_hidden_states
from lightning_less.passes.loss_trajectories import compute_trajectories
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.trajectory import TrajectoryStore
from tests.helpers import run_two_ranks, write_jsonl

BATCH = 3


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A pool whose lengths jump between 14 and about 130 tokens in file order, so the two batchings differ."""
    rows = [{"id": f"x{i}", "subtask": f"s{i % 2}",
             "messages": [{"role": "user", "content": "say " + "ab " * ((i * 7) % 11 + (30 if i % 4 == 1 else 0))},
                          {"role": "assistant", "content": "ab" * (1 + i % 3)}]} for i in range(13)]
    return str(write_jsonl(tmp_path_factory.mktemp("mixed") / "pool.jsonl", rows))


def _data(run, files, batching, **kw):
    return InstructionDataModule(predict_files=[files], tokenizer_name_or_path=run["model"], eval_batch_size=BATCH,
                                 predict_batching=batching, **kw)


def _gradients(run, out, feature, data, callbacks=()):
    loop = GradientDumpLoop(snapshots=run["snapshots"], output_dir=str(out), feature=feature, dims=[32],
                            projector="trak_basic", store_dtype="float32",
                            trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False,
                                            "callbacks": list(callbacks)})
    return loop.run(data)


def _arrays(store) -> dict[tuple[str, int], np.ndarray]:
    return {(s, d): np.asarray(store.features(s, d), dtype=np.float64) for s in store.snapshots for d in store.dims}


def _assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, expected in want.items():
        assert np.abs(expected).max() > 0
        # Other batch companions change only the padding, hence the floating-point summation order.
        np.testing.assert_allclose(got[key], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(), err_msg=str(key))


@pytest.mark.parametrize("feature", ["adam", "sgd"])
def test_gradient_features_grouped_equal_file_order(warm_run, mixed, tmp_path, feature):
    grouped = _gradients(warm_run, tmp_path / "grouped", feature, _data(warm_run, mixed, "length"))
    in_order = _gradients(warm_run, tmp_path / "file_order", feature, _data(warm_run, mixed, "file_order"))
    assert grouped.manifest["data"] == in_order.manifest["data"]  # the batching is not part of what the data is
    _assert_close(_arrays(grouped), _arrays(in_order))


def test_trajectories_and_hidden_states_grouped_equal_file_order(warm_run, mixed, tmp_path):
    kw = dict(batch_size=BATCH, tokenizer_name_or_path=warm_run["model"], trainer_kwargs={"enable_progress_bar": False})
    got, want = (compute_trajectories(warm_run["snapshots"], [mixed], tmp_path / f"traj_{b}", predict_batching=b, **kw)
                 for b in ("length", "file_order"))
    _assert_close({"loss": got.read()[0]}, {"loss": want.read()[0]})
    got, want = (compute_hidden_states(warm_run["model"], [mixed], tmp_path / f"hidden_{b}", batch_size=BATCH,
                                       predict_batching=b) for b in ("length", "file_order"))
    _assert_close({ARRAY_NAME: got}, {ARRAY_NAME: want})


def test_store_started_in_file_order_resumes_grouped(warm_run, mixed, tmp_path):
    class Kill(pl.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs):
            if trainer.predict_loop.batch_progress.current.completed >= 2:
                raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _gradients(warm_run, tmp_path / "store", "adam", _data(warm_run, mixed, "file_order"), callbacks=[Kill()])
    partial = GradientDatastore.open(tmp_path / "store")
    done = ~np.isin(np.arange(partial.n_examples), partial.pending("epoch_000"))
    assert done.sum() == 2 * BATCH and not partial.is_complete()
    resumed = _gradients(warm_run, tmp_path / "store", "adam", _data(warm_run, mixed, "length"))
    full = _gradients(warm_run, tmp_path / "full", "adam", _data(warm_run, mixed, "file_order"))
    for key, expected in _arrays(full).items():
        np.testing.assert_array_equal(_arrays(resumed)[key][done], expected[done])  # kept, not recomputed
    _assert_close(_arrays(resumed), _arrays(full))


def test_two_gloo_ranks_grouped_equal_one_process_in_file_order(warm_run, mixed, tmp_path):
    """Each rank groups its own share by length; the merged stores equal one process's file-order stores."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from lightning_less.data.datamodule import InstructionDataModule
        from lightning_less.passes.gradient_features import GradientDumpLoop
        from lightning_less.passes.hidden_states import compute_hidden_states
        from lightning_less.passes.loss_trajectories import compute_trajectories
        torch.set_num_threads(1)
        ddp = dict(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False, enable_model_summary=False)
        dm = InstructionDataModule(predict_files=[{mixed!r}], tokenizer_name_or_path={warm_run['model']!r},
                                   eval_batch_size={BATCH})
        GradientDumpLoop(snapshots={warm_run['snapshots']!r}, output_dir={str(tmp_path / 'grad')!r}, feature="adam",
                         dims=[32], projector="trak_basic", store_dtype="float32", trainer_kwargs=ddp).run(dm)
        compute_trajectories({warm_run['snapshots']!r}, [{mixed!r}], {str(tmp_path / 'traj')!r}, batch_size={BATCH},
                             tokenizer_name_or_path={warm_run['model']!r}, trainer_kwargs=ddp)
        compute_hidden_states({warm_run['model']!r}, [{mixed!r}], {str(tmp_path / 'hidden')!r}, batch_size={BATCH},
                              trainer_kwargs=ddp)
    """))
    run_two_ranks(script)
    one = _gradients(warm_run, tmp_path / "one", "adam", _data(warm_run, mixed, "file_order"))
    _assert_close(_arrays(GradientDatastore.open(tmp_path / "grad")), _arrays(one))
    kw = dict(batch_size=BATCH, tokenizer_name_or_path=warm_run["model"], predict_batching="file_order",
              trainer_kwargs={"enable_progress_bar": False})
    _assert_close({"loss": TrajectoryStore(tmp_path / "traj").read()[0]},
                  {"loss": compute_trajectories(warm_run["snapshots"], [mixed], tmp_path / "traj_one", **kw).read()[0]})
    hidden = GradientDatastore.open(tmp_path / "hidden")
    _assert_close({ARRAY_NAME: np.asarray(hidden.features(ARRAY_NAME, hidden.dims[0]))},
                  {ARRAY_NAME: compute_hidden_states(warm_run["model"], [mixed], tmp_path / "hidden_one", batch_size=BATCH,
                                                     predict_batching="file_order")})
