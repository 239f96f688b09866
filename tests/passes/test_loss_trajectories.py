"""S2L loss trajectories: batched pass == one example at a time; callback == saved checkpoints;
resume; DDP == one process; refusals; undefined losses are NaN and excluded by S2L."""

import json
import shutil
import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from lightning_less.callbacks.loss_trajectory import LossTrajectoryCallback
from lightning_less.callbacks.save_pretrained import SavePretrainedCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.models.tiny import save_tiny_model
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.modules.losses import per_example_loss
from lightning_less.passes.loss_trajectories import (
    LossTrajectoryModule,
    compute_trajectories,
    resolve_checkpoints,
)
from lightning_less.selection.runner import run_selection
from lightning_less.stores.datastore import GradientDatastore
from lightning_less.stores.trajectory import TrajectoryStore
from tests.helpers import qa_records, run_two_ranks, write_jsonl

MAX_LENGTH = 64
NO_RESPONSE = 5  # index of the pool record whose response is truncated away
SCHEDULE = {"every_n_steps": 3, "at_epoch_end": True}  # 13 examples / batch 4 = 4 steps per epoch: steps 3, 4, 6, 8


class OrderedDataModule(InstructionDataModule):
    """Training without shuffling, so a run resumed from a checkpoint retraces the same steps."""

    def train_dataloader(self):
        return self._loader("train", shuffle=False)


def _pool_records(n=13, prefix="p"):
    records = qa_records(n, prefix=prefix)
    long = {"id": f"{prefix}-long", "messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]}
    return records[:NO_RESPONSE] + [long] + records[NO_RESPONSE:]


def _module(model):
    return LoRAInstructionTuningModule(model_name_or_path=model, use_lora=False, learning_rate=1e-2, scheduler="constant",
                                       warmup_ratio=0.0, exact_match=False)


def _data(model, pool):
    return OrderedDataModule(train_files=[pool], tokenizer_name_or_path=model, max_length=MAX_LENGTH, batch_size=4, eval_batch_size=3)


def _trainer(callbacks, **kw):
    kw.setdefault("enable_checkpointing", False)  # no Lightning checkpoints in the working directory
    return pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks, **kw)


def _compute(run, out, checkpoints=None, files=None, **kw):
    kw.setdefault("batch_size", 3)
    return compute_trajectories(checkpoints or run["ckpts"], [files or run["pool"]], out, tokenizer_name_or_path=run["model"],
                                max_length=MAX_LENGTH, **kw)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls on a shared CPU: extra OpenMP threads only contend (10x slower under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory, _one_thread):
    """A full fine-tune of the tiny proxy recording trajectories, saving models on the same
    schedule and a Lightning checkpoint at the end of epoch 0; then the pass over the saved models."""
    root = tmp_path_factory.mktemp("s2l")
    model = str(save_tiny_model(root / "model"))
    pool = str(write_jsonl(root / "pool.jsonl", _pool_records()))
    pl.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=str(root / "lightning"), save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks = [LossTrajectoryCallback(str(root / "callback_store"), **SCHEDULE),
                 SavePretrainedCallback(str(root / "ckpts"), **SCHEDULE), ckpt]
    _trainer(callbacks, enable_checkpointing=True).fit(_module(model), datamodule=_data(model, pool))
    out = {"root": root, "model": model, "pool": pool, "ckpts": str(root / "ckpts"),
           "callback_store": str(root / "callback_store"), "epoch0_ckpt": str(root / "lightning" / "epoch=0-step=4.ckpt")}
    _compute(out, root / "ckpt_store")
    out["ckpt_store"] = str(root / "ckpt_store")
    return out


def _reference(checkpoints, model, pool, kind):
    """One example per forward (no padding at all), plain Hugging Face / PEFT loading."""
    dm = InstructionDataModule(predict_files=[pool], tokenizer_name_or_path=model, max_length=MAX_LENGTH, eval_batch_size=1)
    dm.setup("predict")
    n = len(dm.datasets["predict"].records)
    cols = []
    for path in checkpoints:
        if kind == "full":
            net = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        else:
            net = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(path)).eval()
        col = np.full(n, np.nan)
        with torch.no_grad():
            for batch in dm.predict_dataloader():
                logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                col[batch["index"].item()] = per_example_loss(logits, batch["labels"]).item()
        cols.append(col)
    return np.stack(cols, axis=1)


def _adapters(run):
    root = run["root"] / "adapters"
    if not root.exists():
        for seed in (0, 1):
            torch.manual_seed(seed)
            config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            get_peft_model(AutoModelForCausalLM.from_pretrained(run["model"]), config).save_pretrained(str(root / f"adapter_{seed}"))
    return [str(root / "adapter_0"), str(root / "adapter_1")]


@pytest.mark.parametrize("kind,padding_side", [("full", "right"), ("full", "left"), ("adapter", "left")])
def test_batched_losses_equal_one_example_at_a_time(run, tmp_path, kind, padding_side):
    checkpoints = resolve_checkpoints(run["ckpts"]) if kind == "full" else _adapters(run)
    store = _compute(run, tmp_path / "store", checkpoints=[str(c) for c in checkpoints], batch_size=4,
                     padding_side=padding_side, model_name_or_path=None if kind == "full" else run["model"])
    got, manifest = store.read()
    want = _reference(checkpoints, run["model"], run["pool"], kind)
    assert got.shape == (14, len(checkpoints)) and manifest["checkpoint_kind"] == kind
    assert np.isfinite(want).sum() == 13 * len(checkpoints)
    assert np.ptp(got[:, 0][np.isfinite(got[:, 0])]) > 0.01  # losses differ between examples
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)  # NaN rows must match too
    if kind == "full":  # the proxy learned: the trajectories move between checkpoints
        assert np.nanmean(got[:, -1]) < np.nanmean(got[:, 0]) - 0.05


def test_callback_trajectories_equal_those_from_saved_checkpoints(run):
    cb, cb_manifest = TrajectoryStore(run["callback_store"]).read()
    ck, ck_manifest = TrajectoryStore(run["ckpt_store"]).read()
    assert cb_manifest["steps"] == ck_manifest["steps"] == [3, 4, 6, 8]
    assert [c["name"] for c in ck_manifest["checkpoints"]] == ["step_000003", "step_000004", "step_000006", "step_000008"]
    assert cb_manifest["data"] == ck_manifest["data"]
    np.testing.assert_allclose(cb, ck, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ck[:, 0], ck[:, -1], equal_nan=True)


def test_interrupted_pass_resumes_to_identical_arrays(run, tmp_path):
    class Kill(pl.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs):
            if trainer.predict_loop.batch_progress.current.completed >= 2:
                raise KeyboardInterrupt

    module = LossTrajectoryModule(run["ckpts"], str(tmp_path / "resumed"))
    data = InstructionDataModule(predict_files=[run["pool"]], tokenizer_name_or_path=run["model"], max_length=MAX_LENGTH,
                                 eval_batch_size=3)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _trainer([Kill()]).predict(module, datamodule=data, return_predictions=False)
    partial = GradientDatastore.open(tmp_path / "resumed")
    assert not partial.is_complete() and 0 < partial.pending("step_000003").size < 13
    with pytest.raises(RuntimeError, match="unfinished"):
        TrajectoryStore(tmp_path / "resumed").read()
    pending = sum(partial.pending(name).size for name in partial.snapshots)

    class Count(pl.Callback):
        computed = 0

        def on_predict_batch_end(self, trainer, pl_module, outputs, *args, **kwargs):
            Count.computed += sum(len(index) for _, _, index, _ in (outputs or {"rows": []})["rows"])

    resumed, _ = _compute(run, tmp_path / "resumed", trainer_kwargs={"callbacks": [Count()]}).read()
    assert Count.computed == pending  # only the rows not done before the interruption
    full, _ = TrajectoryStore(run["ckpt_store"]).read()
    np.testing.assert_array_equal(resumed, full)


def test_callback_resumed_from_a_lightning_checkpoint_gives_identical_arrays(run, tmp_path):
    callback = LossTrajectoryCallback(str(tmp_path / "store"), **SCHEDULE)
    _trainer([callback]).fit(_module(run["model"]), datamodule=_data(run["model"], run["pool"]), ckpt_path=run["epoch0_ckpt"])
    got, manifest = TrajectoryStore(tmp_path / "store").read()
    want, want_manifest = TrajectoryStore(run["callback_store"]).read()
    assert manifest["steps"] == want_manifest["steps"] == [3, 4, 6, 8]  # steps 3, 4 came from the state_dict
    np.testing.assert_array_equal(got, want)


def test_two_process_gloo_equals_one_process(run, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import lightning.pytorch as pl, torch
        from tests.passes.test_loss_trajectories import MAX_LENGTH, SCHEDULE, _data, _module, _trainer
        from lightning_less.callbacks.loss_trajectory import LossTrajectoryCallback
        from lightning_less.callbacks.save_pretrained import SavePretrainedCallback
        from lightning_less.passes.loss_trajectories import compute_trajectories
        torch.set_num_threads(1)
        ddp = dict(accelerator="cpu", devices=2, strategy="ddp")
        compute_trajectories({run['ckpts']!r}, [{run['pool']!r}], {str(tmp_path / 'ddp')!r}, tokenizer_name_or_path={run['model']!r},
                             max_length=MAX_LENGTH, batch_size=3, trainer_kwargs=ddp)
        pl.seed_everything(0, verbose=False)
        callbacks = [LossTrajectoryCallback({str(tmp_path / 'ddp_cb')!r}, **SCHEDULE),
                     SavePretrainedCallback({str(tmp_path / 'ddp_ckpts')!r}, **SCHEDULE)]
        _trainer(callbacks, **ddp).fit(_module({run['model']!r}), datamodule=_data({run['model']!r}, {run['pool']!r}))
    """))
    run_two_ranks(script)
    assert not (tmp_path / "ddp.shards").exists()
    merged, merged_manifest = TrajectoryStore(tmp_path / "ddp").read()
    single, single_manifest = TrajectoryStore(run["ckpt_store"]).read()
    drop = {"created"}
    assert {k: v for k, v in merged_manifest.items() if k not in drop} == {k: v for k, v in single_manifest.items() if k not in drop}
    # The distributed sampler batches other examples together: only the padding widths change.
    np.testing.assert_allclose(merged, single, rtol=1e-5, atol=1e-6)
    # The callback under DDP (each rank a share of the pool, gathered) equals the pass over that run's models.
    cb, cb_manifest = TrajectoryStore(tmp_path / "ddp_cb").read()
    ck, _ = _compute(run, tmp_path / "ddp_ckpt_store", checkpoints=str(tmp_path / "ddp_ckpts")).read()
    # Each rank trains on 7 of the 13 examples: 2 steps per epoch, so steps 2 (epoch end), 3 and 4.
    assert cb_manifest["steps"] == [2, 3, 4] and cb.shape == ck.shape == (14, 3)
    np.testing.assert_allclose(cb, ck, rtol=1e-5, atol=1e-6)


def test_stores_built_differently_are_refused(run, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(run["ckpt_store"], store)
    other = write_jsonl(tmp_path / "other.jsonl", _pool_records(prefix="o"))
    with pytest.raises(ValueError, match="data"):
        _compute(run, store, files=str(other))  # other data into the same store
    with pytest.raises(ValueError, match="checkpoints"):
        _compute(run, store, checkpoints=[str(c) for c in resolve_checkpoints(run["ckpts"])[:2]])
    with pytest.raises(ValueError, match="max_length"):
        compute_trajectories(run["ckpts"], [run["pool"]], store, tokenizer_name_or_path=run["model"], max_length=MAX_LENGTH + 8)
    assert np.array_equal(TrajectoryStore(store).read()[0], TrajectoryStore(run["ckpt_store"]).read()[0], equal_nan=True)
    with pytest.raises(ValueError, match="other data"):
        run_selection("s2l", [str(other)], None, tmp_path / "sel", fraction=None, count=4, trajectories=store, n_clusters=3)
    with pytest.raises(FileExistsError):  # the callback never overwrites a store unless told
        _trainer([LossTrajectoryCallback(str(store), **SCHEDULE)]).fit(
            _module(run["model"]), datamodule=_data(run["model"], run["pool"]))


def test_example_without_response_token_is_nan_reported_and_excluded_by_s2l(run, tmp_path):
    assert TrajectoryStore(run["callback_store"]).read()[1]["excluded_ids"] == ["p-long"]
    for path in (run["ckpt_store"], run["callback_store"]):
        traj, manifest = TrajectoryStore(path).read()
        assert manifest["excluded_indices"] == [NO_RESPONSE]
        assert np.isnan(traj[NO_RESPONSE]).all()
        assert np.isfinite(np.delete(traj, NO_RESPONSE, axis=0)).all()
    out = run_selection("s2l", [run["pool"]], None, tmp_path / "sel", fraction=None, count=13, trajectories=run["ckpt_store"], n_clusters=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["info"]["excluded_indices"] == [NO_RESPONSE]
    ids = [json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(ids) == 13 and "p-long" not in ids  # every example with a defined loss, never the undefined one


def own_loader(model: str, pool: str):
    """Token ids from an own DataLoader (no ``index``, no library datamodule), batches of 4."""
    from torch.utils.data import DataLoader

    from lightning_less.data.formatting import encode_messages
    from lightning_less.data.records import read_records
    from lightning_less.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model)
    items = [dict(zip(("input_ids", "labels"), encode_messages(r.messages, tokenizer, max_length=MAX_LENGTH)))
             for r in read_records([pool])]

    def collate(batch):
        width = max(len(it["input_ids"]) for it in batch)
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731
        return {"input_ids": torch.tensor([pad(it["input_ids"], 0) for it in batch]),
                "attention_mask": torch.tensor([pad([1] * len(it["input_ids"]), 0) for it in batch]),
                "labels": torch.tensor([pad(it["labels"], -100) for it in batch])}

    return DataLoader(items, batch_size=4, collate_fn=collate)


def test_an_own_loader_without_index_gives_the_same_trajectories(run, tmp_path):
    """Rows are dataset positions, the example without a predicted token is excluded, and the losses are
    those of the jsonl pass."""
    module = LossTrajectoryModule(run["ckpts"], str(tmp_path / "own"))
    _trainer([]).predict(module, dataloaders=own_loader(run["model"], run["pool"]), return_predictions=False)
    got, manifest = TrajectoryStore(tmp_path / "own").read()
    want, _ = TrajectoryStore(run["ckpt_store"]).read()
    assert manifest["data"]["kind"] == "token_sha256" and manifest["excluded_indices"] == [NO_RESPONSE]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)  # NaN on the excluded row in both


def test_an_own_loader_under_ddp_leaves_the_excluded_row_to_no_rank(run, tmp_path):
    """The excluded row (position 5) falls in rank 1's share of a plain DataLoader: it is not computed there
    (its NaN loss was refused), and the merged store equals one process's."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from lightning_less.passes.loss_trajectories import LossTrajectoryModule
        from tests.passes.test_loss_trajectories import _trainer, own_loader
        torch.set_num_threads(1)
        module = LossTrajectoryModule({run['ckpts']!r}, {str(tmp_path / 'ddp')!r})
        _trainer([], accelerator="cpu", devices=2, strategy="ddp").predict(
            module, dataloaders=own_loader({run['model']!r}, {run['pool']!r}), return_predictions=False)
    """))
    run_two_ranks(script, timeout=240)
    module = LossTrajectoryModule(run["ckpts"], str(tmp_path / "single"))
    _trainer([]).predict(module, dataloaders=own_loader(run["model"], run["pool"]), return_predictions=False)
    merged, merged_manifest = TrajectoryStore(tmp_path / "ddp").read()
    single, single_manifest = TrajectoryStore(tmp_path / "single").read()
    assert not (tmp_path / "ddp.shards").exists() and merged_manifest["excluded_indices"] == [NO_RESPONSE]
    drop = {"created"}
    assert {k: v for k, v in merged_manifest.items() if k not in drop} == {k: v for k, v in single_manifest.items() if k not in drop}
    np.testing.assert_allclose(merged, single, rtol=1e-6, atol=1e-7)  # NaN on the excluded row in both
