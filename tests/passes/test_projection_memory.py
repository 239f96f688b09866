"""The unchunked gradient pass (trak_basic, trak_cuda) projects each snapshot's gradient as soon as it is computed.

It used to keep every snapshot's full fp32 [B, P] gradient and then a ``torch.cat`` copy of
each before projecting: (snapshots + 1) x B x P x 4 bytes, at least 40 GiB instead of 8 GiB
for the paper's 2^27 LoRA parameters, B = 16 and 4 snapshots. ``trak_cuda`` needs a GPU, but takes
the same code path as ``trak_basic`` (no per-call cost, so nothing is collected over
batches), which these tests run on CPU.
"""

from __future__ import annotations

import gc

import numpy as np
import torch

from lightning_less.callbacks.snapshot import list_snapshots, load_snapshot
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.gradients.projectors import TrakBasicProjector
from lightning_less.passes.gradient_features import GradientDumpLoop

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _run(run, out, batch_size=4, **kw):
    data = InstructionDataModule(predict_files=[run["pool"]], tokenizer_name_or_path=run["model"],
                                 eval_batch_size=batch_size)
    return GradientDumpLoop(snapshots=run["snapshots"], output_dir=str(out), feature="adam", projector="trak_basic",
                            store_dtype="float32", trainer_kwargs=QUIET, **kw).run(data)


def _live_gradient_bytes(numel: int) -> int:
    """Bytes of the distinct storages of every live 2-D float tensor [*, numel]: per-example gradients and copies."""
    storages = {}
    for obj in gc.get_objects():
        if torch.is_tensor(obj) and obj.dim() == 2 and obj.shape[1] == numel and obj.is_floating_point():
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_one_snapshots_gradient_is_alive_when_it_is_projected(warm_run, tmp_path, monkeypatch):
    numel = sum(t.numel() for t in load_snapshot(list_snapshots(warm_run["snapshots"])[0]).exp_avg.values())
    assert len(list_snapshots(warm_run["snapshots"])) == 2
    seen: list[tuple[int, int]] = []  # (live gradient bytes, bytes of the gradient projected) at each call
    project = TrakBasicProjector.project

    def spy(self, grads, offset=0):
        seen.append((_live_gradient_bytes(numel), grads.numel() * grads.element_size()))
        return project(self, grads, offset)

    monkeypatch.setattr(TrakBasicProjector, "project", spy)
    _run(warm_run, tmp_path / "store", batch_size=8, dims=[16])
    assert len(seen) == 2 * 3  # snapshots x batches (22 examples, 8 per batch)
    # The one being projected and nothing else: before, both snapshots' gradients and a concatenated copy (3x).
    assert all(live == one for live, one in seen), seen


def test_features_are_those_of_the_collecting_path(warm_run, tmp_path):
    """Bit for bit what projecting each batch's gradient after collecting it (the path kept for TRAK's per-call cost) gives."""
    row_bytes = 4 * sum(t.numel() for t in load_snapshot(list_snapshots(warm_run["snapshots"])[0]).exp_avg.values()) * 2
    # TRAK regenerating its matrix (two blocks, no cache) collects rows; a buffer of 8 rows projects each batch of 8
    # on its own, as the code before projected every batch (a concatenation of one batch is a copy of it).
    collected = _run(warm_run, tmp_path / "collected", batch_size=8, dims=[136], projector_kwargs={"max_cache_bytes": 0},
                     projection_buffer_bytes=8 * row_bytes)
    direct = _run(warm_run, tmp_path / "direct", batch_size=8, dims=[136])
    for snap in direct.snapshots:
        got, want = np.asarray(direct.features(snap, 136)), np.asarray(collected.features(snap, 136))
        assert np.abs(want).sum() > 0
        np.testing.assert_array_equal(got, want)
