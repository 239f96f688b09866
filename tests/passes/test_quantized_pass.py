"""The gradient pass writes int8 / 1-bit stores directly: their rows are the quantized fp32 pass rows."""

import numpy as np
import pytest

from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.passes.gradient_features import GradientDumpLoop
from lightning_less.stores.quantize import encode


def _run(run, out, store_dtype):
    data = InstructionDataModule(predict_files=[run["pool"]], tokenizer_name_or_path=run["model"], eval_batch_size=4)
    return GradientDumpLoop(snapshots=run["snapshots"], output_dir=str(out), feature="adam", projector="trak_basic",
                            dims=[16], store_dtype=store_dtype,
                            trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False}).run(data)


@pytest.fixture(scope="module")
def fp32_store(warm_run, tmp_path_factory):
    return _run(warm_run, tmp_path_factory.mktemp("fp32") / "store", "float32")


@pytest.mark.parametrize("dtype", ["int8", "1bit"])
def test_pass_writes_the_quantized_fp32_rows(warm_run, fp32_store, tmp_path, dtype):
    store = _run(warm_run, tmp_path / "store", dtype)
    assert store.is_complete() and store.manifest["dtype"] == dtype
    # Only codes and scales on disk: no float copy of the rows.
    files = sorted(p.name for p in (tmp_path / "store" / "features").rglob("*.npy"))
    assert files == sorted(["dim_16.npy", "dim_16.scale.npy"] * len(store.snapshots))
    for snap in store.snapshots:
        rows = np.asarray(fp32_store.features(snap, 16))
        codes, scales = encode(rows, dtype, np.arange(rows.shape[0]))
        got = store.features(snap, 16)
        np.testing.assert_array_equal(np.asarray(got.codes), codes)
        np.testing.assert_array_equal(np.asarray(got.scales), scales)
