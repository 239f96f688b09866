"""GradientDumpLoop: features equal an independent one-example-at-a-time computation; resume; DDP; refusals."""

import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lightning_less.callbacks.snapshot import list_snapshots, load_snapshot
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.gradients.projectors import make_projector
from lightning_less.modules.losses import per_example_loss
from lightning_less.passes.gradient_features import (
    GradientDumpLoop,
    GradientFeatureModule,
)
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import run_two_ranks


def _data(run, files, batch_size=3, padding_side="right"):
    return InstructionDataModule(predict_files=[files], tokenizer_name_or_path=run["model"], eval_batch_size=batch_size,
                                 padding_side=padding_side)


def _loop(run, out, feature="adam", **kw):
    kw.setdefault("projector", "trak_basic")
    kw.setdefault("dims", [32, 16])
    return GradientDumpLoop(snapshots=run["snapshots"], output_dir=str(out), feature=feature, store_dtype="float32",
                            trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False}, **kw)


def _reference_features(run, files, feature, dim, projector="trak_basic"):
    """One example per forward+backward with plain autograd, Adam transform by hand, then project."""
    dm = _data(run, files, batch_size=1)
    dm.setup("predict")
    out = {}
    for snap_dir in list_snapshots(run["snapshots"]):
        snap = load_snapshot(snap_dir)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run["model"]), str(snap_dir), is_trainable=True).eval()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        proj = make_projector(projector, sum(p.numel() for n, p in model.named_parameters() if p.requires_grad), dim)
        rows = []
        for batch in dm.predict_dataloader():
            model.zero_grad()
            loss = per_example_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
            loss.sum().backward()
            g = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
            if feature == "adam":
                m = torch.cat([snap.exp_avg[n].flatten() for n in names])
                v = torch.cat([snap.exp_avg_sq[n].flatten() for n in names])
                b1, b2 = snap.betas
                g = (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + snap.eps)
            rows.append((batch["index"].item(), proj.project(g[None]).numpy()[0]))
        out[snap_dir.name] = np.stack([row for _, row in sorted(rows, key=lambda r: r[0])])  # in row (index) order
    return out


@pytest.mark.parametrize("feature,padding_side", [("adam", "right"), ("sgd", "left")])
def test_features_equal_one_example_at_a_time(warm_run, tmp_path, feature, padding_side):
    files = warm_run["pool"] if feature == "adam" else warm_run["targets"]
    store = _loop(warm_run, tmp_path / "store", feature=feature).run(_data(warm_run, files, 4, padding_side))
    assert store.is_complete() and store.manifest["feature_kind"] == feature
    ref = _reference_features(warm_run, files, feature, 32)
    for snap, expected in ref.items():
        got = np.asarray(store.features(snap, 32))
        assert np.abs(got).sum() > 0  # gradients in the predict pass are not zero
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("buffered", [False, True], ids=["per-batch", "buffered-projection"])
def test_interrupted_run_resumes_to_identical_arrays(warm_run, tmp_path, buffered):
    kw = {}
    if buffered:  # TRAK regenerating its matrix per call: rows are collected over batches first
        snap = load_snapshot(list_snapshots(warm_run["snapshots"])[0])
        row_bytes = 4 * sum(t.numel() for t in snap.exp_avg.values()) * 2  # fp32 x 2 snapshots
        kw = {"dims": [256, 16], "projector_kwargs": {"max_cache_bytes": 0}, "projection_buffer_bytes": 6 * row_bytes}
    full = _loop(warm_run, tmp_path / "full", **kw).run(_data(warm_run, warm_run["pool"]))

    class Kill(pl.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs):
            if trainer.predict_loop.batch_progress.current.completed >= 3:
                raise KeyboardInterrupt

    loop = _loop(warm_run, tmp_path / "resumed", **kw)
    loop.trainer_kwargs["callbacks"] = [Kill()]
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        loop.run(_data(warm_run, warm_run["pool"]))
    partial = GradientDatastore.open(tmp_path / "resumed")
    assert not partial.is_complete() and 0 < partial.pending("epoch_000").size < partial.n_examples
    with pytest.raises(RuntimeError):
        partial.features("epoch_000", 16)  # an unfinished store never reads as complete
    resumed = _loop(warm_run, tmp_path / "resumed", **kw).run(_data(warm_run, warm_run["pool"]))
    for snap in full.snapshots:
        for dim in full.dims:
            np.testing.assert_array_equal(np.asarray(resumed.features(snap, dim)), np.asarray(full.features(snap, dim)))
    # Another batch size changes only floating-point summation order, never which rows are computed.
    other = _loop(warm_run, tmp_path / "other", **kw).run(_data(warm_run, warm_run["pool"], batch_size=5))
    got, want = np.asarray(other.features("epoch_001", 16)), np.asarray(full.features("epoch_001", 16))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_inference_mode_is_refused(warm_run, tmp_path):
    module = GradientFeatureModule(snapshots=warm_run["snapshots"], output_dir=str(tmp_path / "s"), dims=[8])
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, inference_mode=True)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer.predict(module, datamodule=_data(warm_run, warm_run["targets"]), return_predictions=False)


def test_store_built_differently_is_refused(warm_run, tmp_path):
    _loop(warm_run, tmp_path / "s", dims=[16]).run(_data(warm_run, warm_run["targets"]))
    with pytest.raises(ValueError, match="projector"):
        _loop(warm_run, tmp_path / "s", dims=[16], projector_seed=1).run(_data(warm_run, warm_run["targets"]))
    with pytest.raises(ValueError):
        _loop(warm_run, tmp_path / "s", dims=[16], projector="sparse_jl").run(_data(warm_run, warm_run["targets"]))


def test_two_process_gloo_store_equals_one_process(warm_run, tmp_path):
    single = _loop(warm_run, tmp_path / "single").run(_data(warm_run, warm_run["pool"]))
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from lightning_less.data.datamodule import InstructionDataModule
        from lightning_less.passes.gradient_features import GradientDumpLoop
        torch.set_num_threads(1)
        dm = InstructionDataModule(predict_files=[{warm_run['pool']!r}], tokenizer_name_or_path={warm_run['model']!r}, eval_batch_size=3)
        GradientDumpLoop(snapshots={warm_run['snapshots']!r}, output_dir={str(tmp_path / 'ddp')!r}, feature="adam",
                         projector="trak_basic", dims=[32, 16], store_dtype="float32",
                         trainer_kwargs=dict(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False)).run(dm)
    """))
    run_two_ranks(script)
    merged = GradientDatastore.open(tmp_path / "ddp")
    assert merged.is_complete()
    assert not (tmp_path / "ddp.shards").exists()
    # The distributed sampler batches other examples together, which changes only the
    # floating-point summation order (padding widths), never which rows exist or their values beyond it.
    for snap in single.snapshots:
        for dim in single.dims:
            want = np.asarray(single.features(snap, dim))
            np.testing.assert_allclose(np.asarray(merged.features(snap, dim)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert merged.manifest["projector"] == single.manifest["projector"]


def test_other_dims_are_refused_and_scoring_refuses_mixed_projectors(warm_run, tmp_path):
    from lightning_less.selection.runner import run_selection

    _loop(warm_run, tmp_path / "s", dims=[16]).run(_data(warm_run, warm_run["targets"]))
    with pytest.raises(ValueError, match="dims"):
        _loop(warm_run, tmp_path / "s", dims=[32]).run(_data(warm_run, warm_run["targets"]))
    # Pool and targets projected with different matrices must never be compared.
    _loop(warm_run, tmp_path / "pool", dims=[16], projector="sparse_jl").run(_data(warm_run, warm_run["pool"]))
    with pytest.raises(ValueError, match="projector"):
        run_selection("less", [warm_run["pool"]], [warm_run["targets"]], tmp_path / "sel", count=3,
                      pool_store=tmp_path / "pool", target_store=tmp_path / "s")
    assert not (tmp_path / "sel").exists()
    # With matching stores the selection works, and the feature kinds are checked too.
    _loop(warm_run, tmp_path / "targets_sparse", feature="sgd", dims=[16], projector="sparse_jl").run(_data(warm_run, warm_run["targets"]))
    run_selection("less", [warm_run["pool"]], [warm_run["targets"]], tmp_path / "sel", count=3,
                  pool_store=tmp_path / "pool", target_store=tmp_path / "targets_sparse")
    with pytest.raises(ValueError, match="adam pool store and an sgd target store"):
        run_selection("less", [warm_run["pool"]], [warm_run["targets"]], tmp_path / "sel2", count=3,
                      pool_store=tmp_path / "targets_sparse", target_store=tmp_path / "pool")
