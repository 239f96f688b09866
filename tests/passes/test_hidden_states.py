"""The RDS / RDS+ hidden-state pass: batched features == one example at a time by hand (both poolings, both
padding sides); resume; refusal of another pooling; 2-process gloo == one process."""

import json
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_less.data.datamodule import InstructionDataset
from lightning_less.models.loading import load_tokenizer
from lightning_less.models.tiny import save_tiny_model
from lightning_less.passes.hidden_states import (
    ARRAY_NAME,
    compute_hidden_states,
    pool_hidden_states,
)
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import qa_records, run_two_ranks, write_jsonl

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidden")
    model = str(save_tiny_model(root / "model", seed=3))
    # Lengths differ (1 to 3 letters, and one long prompt), so every batch is padded.
    records = qa_records(11, prefix="h")
    records.insert(4, {"id": "h-long", "messages": [{"role": "user", "content": "say " + "ab " * 8}, {"role": "assistant", "content": "ab"}]})
    pool = str(write_jsonl(root / "pool.jsonl", records))
    return {"root": root, "model": model, "pool": pool}


def _by_hand(model_path, pool, pooling):
    """One example at a time, no padding, with transformers and a Python loop over the tokens."""
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ds = InstructionDataset([pool], tokenizer, max_length=MAX_LENGTH)
    rows = []
    for i in range(len(ds)):
        ids = torch.tensor([ds[i]["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
        if pooling == "last":
            rows.append(hidden[-1].numpy())
        elif pooling == "response_mean":
            response = [pos for pos, label in enumerate(ds[i]["labels"]) if label != -100]
            rows.append(np.mean([hidden[pos].numpy() for pos in response], axis=0))
        else:
            t = hidden.size(0)
            acc = np.zeros(hidden.size(1))
            for pos in range(t):
                acc += (pos + 1) / (t * (t + 1) / 2) * hidden[pos].numpy()
            rows.append(acc)
    return np.stack(rows)


@pytest.mark.parametrize("pooling", ["last", "weighted_mean", "response_mean"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_features_equal_one_example_at_a_time(setup, tmp_path, pooling, padding_side):
    feats = compute_hidden_states(setup["model"], [setup["pool"]], tmp_path / "store", pooling=pooling,
                                  max_length=MAX_LENGTH, batch_size=4, padding_side=padding_side)
    expected = _by_hand(setup["model"], setup["pool"], pooling)
    assert feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    manifest = GradientDatastore.open(tmp_path / "store").manifest
    assert manifest["feature_kind"] == "hidden" and manifest["pooling"] == pooling and manifest["complete"]


def test_the_two_poolings_differ_and_weights_favour_late_tokens():
    hidden = torch.tensor([[[1.0], [2.0], [4.0], [9.0]]])  # last position is padding (right side)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool_hidden_states(hidden, mask, "last").item() == 4.0
    # weights 1/6, 2/6, 3/6 over the three real tokens
    assert pool_hidden_states(hidden, mask, "weighted_mean").item() == pytest.approx((1 + 4 + 12) / 6)
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden_states(hidden, mask, "mean")


def test_resume_recomputes_only_missing_rows_and_refuses_another_pooling(setup, tmp_path):
    out = tmp_path / "store"
    full = compute_hidden_states(setup["model"], [setup["pool"]], out, max_length=MAX_LENGTH, batch_size=4)
    # An interrupted run: two rows not done (their values garbage), the store never finalized.
    lost = np.array([1, 7])
    done = np.load(out / "done" / f"{ARRAY_NAME}.npy", mmap_mode="r+")
    done[lost] = False
    done.flush()
    (array_file,) = (out / "features" / ARRAY_NAME).glob("dim_*.npy")
    values = np.load(array_file, mmap_mode="r+")
    values[lost] = 123.0
    values.flush()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    resumed = compute_hidden_states(setup["model"], [setup["pool"]], out, max_length=MAX_LENGTH, batch_size=4)
    np.testing.assert_allclose(resumed, full, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        compute_hidden_states(setup["model"], [setup["pool"]], out, pooling="last", max_length=MAX_LENGTH)


def test_two_process_gloo_equals_one_process(setup, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from lightning_less.passes.hidden_states import compute_hidden_states
        torch.set_num_threads(1)
        compute_hidden_states({setup['model']!r}, [{setup['pool']!r}], {str(tmp_path / 'ddp')!r}, max_length={MAX_LENGTH},
                              batch_size=3, trainer_kwargs=dict(accelerator="cpu", devices=2, strategy="ddp"))
    """))
    run_two_ranks(script)
    assert not (tmp_path / "ddp.shards").exists()
    single = compute_hidden_states(setup["model"], [setup["pool"]], tmp_path / "one", max_length=MAX_LENGTH, batch_size=4)
    merged = GradientDatastore.open(tmp_path / "ddp")
    one = GradientDatastore.open(tmp_path / "one")
    drop = {"created"}
    assert {k: v for k, v in merged.manifest.items() if k not in drop} == {k: v for k, v in one.manifest.items() if k not in drop}
    np.testing.assert_allclose(merged.features(ARRAY_NAME, merged.dims[0]), single, rtol=1e-5, atol=1e-6)
