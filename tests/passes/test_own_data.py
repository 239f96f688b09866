"""The gradient pass on an own project: a config-built model never saved to disk, own data without ``index``.

Features equal a one-example-at-a-time autograd computation with the Adam transform; 2 processes
equal one; the user's module comes back as it was; changed data, stores of other data and stores
of other snapshots or base models are refused, at resume and at selection.
"""

from __future__ import annotations

import copy
import json
import textwrap

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import set_peft_model_state_dict
from peft.utils import load_peft_weights
from torch.utils.data import DataLoader, Dataset

from examples.own_project.data import TASKS, TokenDataset, collate, make_examples
from examples.own_project.model import OwnLoRAModule
from lightning_less.callbacks.snapshot import (
    GradientFeatureCallback,
    list_snapshots,
    load_snapshot,
)
from lightning_less.errors import IncompatibleError, InputError, MissingInputError
from lightning_less.gradients.projectors import make_projector
from lightning_less.passes.gradient_features import (
    GradientDumpLoop,
    GradientFeatureModule,
)
from lightning_less.selection.methods.less import select_from_stores
from lightning_less.stores.datastore import GradientDatastore
from tests.helpers import run_two_ranks

DIM = 32
NO_RESPONSE = 4  # the position of the example with no predicted token
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def own_examples(seed: int = 0) -> list[dict]:
    """Examples of two lengths (so batches are padded), interleaved, one without a predicted token."""
    short = make_examples([TASKS[i % 4] for i in range(7)], 3, seed)
    long = make_examples([TASKS[(i + 1) % 4] for i in range(6)], 6, seed + 10)
    examples = [ex for pair in zip(short, long) for ex in pair] + short[6:]
    examples[NO_RESPONSE] = dict(examples[NO_RESPONSE], labels=[-100] * len(examples[NO_RESPONSE]["labels"]))
    return examples


def own_loader(examples: list[dict], batch_size: int = 5) -> DataLoader:
    return DataLoader(TokenDataset(examples), batch_size=batch_size, collate_fn=collate)


def _loop(snapshots, out, model, feature="adam", **kw) -> GradientDumpLoop:
    return GradientDumpLoop(snapshots=str(snapshots), output_dir=str(out), feature=feature, dims=[DIM], projector="sparse_jl",
                            store_dtype="float32", model=model, trainer_kwargs={**QUIET, **kw.pop("trainer_kwargs", {})}, **kw)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A warmup of the own module (2 epochs, a snapshot each) on the own pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("own")
    pl.seed_everything(0, verbose=False)
    module = OwnLoRAModule(seed=0, learning_rate=3e-2)
    train = DataLoader(TokenDataset(make_examples([TASKS[i % 4] for i in range(16)], 4, 5)), batch_size=4, shuffle=True,
                       collate_fn=collate)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[GradientFeatureCallback(str(root / "snaps"))],
               **QUIET).fit(module, train_dataloaders=train)
    yield {"root": root, "module": module, "snapshots": root / "snaps"}
    torch.set_num_threads(threads)


def _reference(module: OwnLoRAModule, snapshots, examples: list[dict], feature: str) -> dict[str, np.ndarray]:
    """One example per forward and backward with plain autograd on a copy of the module, no padding,
    the Adam transform by hand in float64, then the same projection."""
    model = copy.deepcopy(module.model).eval()
    out = {}
    for snap_dir in list_snapshots(snapshots):
        snap = load_snapshot(snap_dir)
        set_peft_model_state_dict(model, load_peft_weights(str(snap_dir), device="cpu"))
        params = dict(model.named_parameters())
        for name, param in params.items():
            param.requires_grad_(name in snap.param_names)
        numel = sum(params[n].numel() for n in snap.param_names)
        proj = make_projector("sparse_jl", numel, DIM)
        rows = []
        for ex in examples:
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor(ex["labels"])
            if (labels[1:] == -100).all():
                rows.append(np.zeros(DIM, dtype=np.float32))
                continue
            model.zero_grad()
            logits = model(input_ids=ids).logits[0]
            F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100).backward()  # this example's token mean
            g = torch.cat([params[n].grad.flatten() for n in snap.param_names]).double()
            if feature == "adam":
                m = torch.cat([snap.exp_avg[n].flatten() for n in snap.param_names]).double()
                v = torch.cat([snap.exp_avg_sq[n].flatten() for n in snap.param_names]).double()
                (b1, b2), eps = snap.betas, snap.eps
                g = (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + eps)  # eps inside the root, no bias correction
            rows.append(proj.project(g.float()[None]).numpy()[0])
        out[snap_dir.name] = np.stack(rows)
    return out


def _user_module() -> OwnLoRAModule:
    """The warmup's base weights (same seed) with LoRA weights of its own and everything frozen, in train mode:
    a state no snapshot holds, so the pass must give back exactly this."""
    module = OwnLoRAModule(seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    module.freeze()
    module.train()
    return module


def _lora_state(module: OwnLoRAModule) -> dict:
    return {n: (p.detach().clone(), p.requires_grad) for n, p in module.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("feature", ["adam", "sgd"])
def test_features_of_an_in_memory_model_and_unindexed_data_equal_one_example_at_a_time(own, tmp_path, feature):
    module, examples = _user_module(), own_examples()
    before, training = _lora_state(module), module.model.training
    store = _loop(own["snapshots"], tmp_path / "store", module, feature=feature).run(own_loader(examples))
    assert store.is_complete() and store.n_examples == len(examples)
    assert store.manifest["excluded_indices"] == [NO_RESPONSE] and store.manifest["data"]["kind"] == "token_sha256"
    ref = _reference(module, own["snapshots"], examples, feature)
    for snap, want in ref.items():
        got = np.asarray(store.features(snap, DIM))
        keep = np.arange(len(examples)) != NO_RESPONSE
        rel = np.linalg.norm(got[keep] - want[keep], axis=1) / np.linalg.norm(want[keep], axis=1)
        assert rel.max() < 1e-5, rel
        assert not got[NO_RESPONSE].any()
    # The user's module is given back as it was: its own LoRA weights, trainable flags and mode.
    after = _lora_state(module)
    assert all(torch.equal(before[n][0], after[n][0]) and before[n][1] == after[n][1] for n in before)
    assert module.model.training == training
    assert not any(m._forward_hooks for m in module.model.modules())  # no hook left behind


def test_a_failing_pass_gives_the_module_back_too(own, tmp_path):
    module = _user_module()
    before = _lora_state(module)

    class Fail(pl.Callback):
        def on_predict_batch_end(self, *args, **kwargs):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _loop(own["snapshots"], tmp_path / "s", module, trainer_kwargs={"callbacks": [Fail()]}).run(own_loader(own_examples()))
    after = _lora_state(module)
    assert all(torch.equal(before[n][0], after[n][0]) and before[n][1] == after[n][1] for n in before)


def test_two_process_gloo_on_an_own_loader_equals_one_process(own, tmp_path):
    single = _loop(own["snapshots"], tmp_path / "single", own["module"]).run(own_loader(own_examples()))
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from examples.own_project.model import OwnLoRAModule
        from tests.passes.test_own_data import _loop, own_examples, own_loader
        torch.set_num_threads(1)
        module = OwnLoRAModule(seed=0)  # the same base weights: built from the same seed; LoRA weights come from the snapshots
        _loop({str(own['snapshots'])!r}, {str(tmp_path / 'ddp')!r}, module,
              trainer_kwargs=dict(accelerator="cpu", devices=2, strategy="ddp")).run(own_loader(own_examples()))
    """))
    run_two_ranks(script)
    merged = GradientDatastore.open(tmp_path / "ddp")
    assert merged.is_complete() and not (tmp_path / "ddp.shards").exists()
    drop = {"created"}
    assert {k: v for k, v in merged.manifest.items() if k not in drop} == {k: v for k, v in single.manifest.items() if k not in drop}
    for snap in single.snapshots:
        want = np.asarray(single.features(snap, DIM))
        # Rank r gets positions r, r+2, ...: other batches, other padding widths, the same rows.
        np.testing.assert_allclose(np.asarray(merged.features(snap, DIM)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def excluded_on_both_ranks() -> list[dict]:
    """The own examples with a second one without a predicted token, at an odd position: rank 1's share."""
    examples = own_examples()
    examples[NO_RESPONSE + 1] = dict(examples[NO_RESPONSE + 1], labels=[-100] * len(examples[NO_RESPONSE + 1]["labels"]))
    return examples


def test_rows_without_a_response_token_on_every_rank_give_the_one_process_store(own, tmp_path):
    """A plain DataLoader deals the excluded rows to both ranks (positions 4 and 5): no rank computes them
    (a computed row would raise: no loss), and the merged store equals one process's."""
    single = _loop(own["snapshots"], tmp_path / "single", own["module"]).run(own_loader(excluded_on_both_ranks()))
    assert single.manifest["excluded_indices"] == [NO_RESPONSE, NO_RESPONSE + 1]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from examples.own_project.model import OwnLoRAModule
        from tests.passes.test_own_data import _loop, excluded_on_both_ranks, own_loader
        torch.set_num_threads(1)
        _loop({str(own['snapshots'])!r}, {str(tmp_path / 'ddp')!r}, OwnLoRAModule(seed=0),
              trainer_kwargs=dict(accelerator="cpu", devices=2, strategy="ddp")).run(own_loader(excluded_on_both_ranks()))
    """))
    run_two_ranks(script, timeout=240)
    merged = GradientDatastore.open(tmp_path / "ddp")
    assert merged.is_complete() and not (tmp_path / "ddp.shards").exists()
    drop = {"created"}
    assert {k: v for k, v in merged.manifest.items() if k not in drop} == {k: v for k, v in single.manifest.items() if k not in drop}
    for snap in single.snapshots:
        want = np.asarray(single.features(snap, DIM))
        assert not want[[NO_RESPONSE, NO_RESPONSE + 1]].any() and np.abs(want).sum(axis=1)[:NO_RESPONSE].all()
        np.testing.assert_allclose(np.asarray(merged.features(snap, DIM)), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # Selecting from it: the two rows are never selected (they used to refuse the whole pool).
    targets_data = make_examples(["reverse"] * 3, 4, 99)
    targets = _loop(own["snapshots"], tmp_path / "targets", own["module"], feature="sgd").run(own_loader(targets_data))
    kw = {"target_data": own_loader(targets_data), "target_subtasks": ["reverse"] * 3,
          "pool_data": own_loader(excluded_on_both_ranks())}
    n = merged.n_examples
    result = select_from_stores(merged, targets, n - 2, **kw)
    assert sorted(result.selected.tolist()) == [i for i in range(n) if i not in (NO_RESPONSE, NO_RESPONSE + 1)]
    assert np.isnan(result.scores[[NO_RESPONSE, NO_RESPONSE + 1]]).all()
    with pytest.raises(InputError, match=f"k={n - 1} exceeds the {n - 2} rows"):
        select_from_stores(merged, targets, n - 1, **kw)


def test_changed_data_is_refused_on_resume_at_selection_and_during_the_pass(own, tmp_path):
    module = own["module"]
    examples = [ex for i, ex in enumerate(own_examples()) if i != NO_RESPONSE]
    changed = list(examples)
    ids = list(changed[7]["input_ids"])
    ids[2] = ids[3] if ids[2] != ids[3] else ids[2] + 1  # one prompt token
    changed[7] = dict(changed[7], input_ids=ids)

    class Kill(pl.Callback):
        def on_predict_batch_end(self, trainer, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _loop(own["snapshots"], tmp_path / "pool", module, trainer_kwargs={"callbacks": [Kill()]}).run(own_loader(examples))
    assert not GradientDatastore.open(tmp_path / "pool").is_complete()
    with pytest.raises(ValueError, match=r"built differently .*data\.sha256"):
        _loop(own["snapshots"], tmp_path / "pool", module).run(own_loader(changed))
    pool = _loop(own["snapshots"], tmp_path / "pool", module).run(own_loader(examples, batch_size=3))  # resumed, other batches
    targets_data = make_examples(["reverse"] * 3, 4, 99)
    targets = _loop(own["snapshots"], tmp_path / "targets", module, feature="sgd").run(own_loader(targets_data))
    kw = {"target_data": own_loader(targets_data), "k": 4, "target_subtasks": ["reverse"] * 3}
    with pytest.raises(IncompatibleError, match=f"the pool store {tmp_path / 'pool'} was computed on other data .*sha256"):
        select_from_stores(pool, targets, pool_data=own_loader(changed), **kw)
    with pytest.raises(IncompatibleError, match="the pool store"):
        select_from_stores(pool, targets, pool_data=own_loader(examples[::-1]), **kw)  # the same examples, another order
    with pytest.raises(IncompatibleError, match="the target store"):
        select_from_stores(pool, targets, pool_data=own_loader(examples), **{**kw, "target_data": own_loader(targets_data[:2])})
    result = select_from_stores(tmp_path / "pool", tmp_path / "targets", pool_data=own_loader(examples), **kw)
    assert len(result.selected) == 4


def test_data_that_changes_between_reads_is_refused(own, tmp_path):
    class Drifting(Dataset):
        """Gives other token ids once it has been read once (a random augmentation would)."""

        def __init__(self, examples):
            self.inner, self.reads = TokenDataset(examples), 0

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            self.reads += 1
            item = dict(self.inner[i])
            if self.reads > len(self.inner):
                item["input_ids"] = [1] + item["input_ids"][1:-1] + [item["input_ids"][-2]]
            return item

    examples = [ex for i, ex in enumerate(own_examples()) if i != NO_RESPONSE]
    with pytest.raises(IncompatibleError, match="differ from those read when the pass started"):
        _loop(own["snapshots"], tmp_path / "s", own["module"]).run(DataLoader(Drifting(examples), batch_size=4, collate_fn=collate))
    store = GradientDatastore.open(tmp_path / "s")
    assert not store.done_mask("epoch_000").any()  # nothing of the drifted data was written


def test_stores_of_other_base_weights_are_not_scored_together(own, tmp_path):
    examples = [ex for i, ex in enumerate(own_examples()) if i != NO_RESPONSE]
    targets_data = make_examples(["reverse"] * 3, 4, 99)
    pool = _loop(own["snapshots"], tmp_path / "pool", own["module"]).run(own_loader(examples))
    other = OwnLoRAModule(seed=1)  # the same layout, other base weights: the snapshots fit, the features differ
    targets = _loop(own["snapshots"], tmp_path / "targets", other, feature="sgd").run(own_loader(targets_data))
    with pytest.raises(IncompatibleError, match="base models with different weights"):
        select_from_stores(pool, targets, 3, ["reverse"] * 3, pool_data=own_loader(examples),
                           target_data=own_loader(targets_data))
    same = _loop(own["snapshots"], tmp_path / "targets_same", own["module"], feature="sgd").run(own_loader(targets_data))
    result = select_from_stores(pool, same, 3, ["reverse"] * 3, pool_data=own_loader(examples), target_data=own_loader(targets_data))
    assert len(result.selected) == 3


def test_the_model_is_required_and_must_fit_the_snapshots(own, tmp_path):
    meta = json.loads((own["snapshots"] / "epoch_000" / "snapshot.json").read_text())
    assert meta["base_model"] is None
    with pytest.raises(MissingInputError, match="built in memory .*pass model=<your module or path>"):
        GradientFeatureModule(snapshots=str(own["snapshots"]), output_dir=str(tmp_path / "s"), dims=[8])
    with pytest.raises(InputError, match="holds no PEFT model"):
        GradientFeatureModule(snapshots=str(own["snapshots"]), output_dir=str(tmp_path / "s"), dims=[8],
                              model=torch.nn.Linear(2, 2))
    with pytest.raises(IncompatibleError, match="lora_alpha: 8 != 16"):
        GradientFeatureModule(snapshots=str(own["snapshots"]), output_dir=str(tmp_path / "s"), dims=[8],
                              model=OwnLoRAModule(lora_alpha=16))
    with pytest.raises(IncompatibleError, match="r: 4 != 8"):
        GradientFeatureModule(snapshots=str(own["snapshots"]), output_dir=str(tmp_path / "s"), dims=[8],
                              model=OwnLoRAModule(lora_r=8, lora_alpha=8))


def test_batches_without_the_needed_tensors_are_refused(own, tmp_path):
    loader = DataLoader([{"input_ids": torch.tensor([1, 2, 3])}] * 2, batch_size=2)
    with pytest.raises(InputError, match=r"lack the tensors \['attention_mask', 'labels'\]"):
        _loop(own["snapshots"], tmp_path / "s", own["module"]).run(loader)


class Versioned(TokenDataset):
    """An own dataset that says what it is (``FingerprintedData``); its last row is an excluded example."""

    def __init__(self, examples, version: str, with_index: bool = True):
        super().__init__(examples)
        self.version, self.with_index = version, with_index

    def data_fingerprint(self) -> dict:
        return {"kind": "my_corpus", "version": self.version, "n_examples": len(self) + 1}

    @property
    def excluded_indices(self) -> list[int]:
        return [len(self)]

    def __getitem__(self, i):
        return {**super().__getitem__(i), **({"index": i} if self.with_index else {})}


def _collate_with_index(items):
    return {**collate(items), **({"index": torch.tensor([it["index"] for it in items])} if "index" in items[0] else {})}


def test_data_with_its_own_fingerprint_is_recorded_by_it(own, tmp_path):
    from lightning_less.stores.provenance import check_data

    examples = [ex for i, ex in enumerate(own_examples()) if i != NO_RESPONSE]
    loader = lambda version, **kw: DataLoader(Versioned(examples, version, **kw), batch_size=4,  # noqa: E731
                                              collate_fn=_collate_with_index)
    store = _loop(own["snapshots"], tmp_path / "s", own["module"]).run(loader("v1"))
    manifest = store.manifest
    assert manifest["data"] == {"kind": "my_corpus", "version": "v1", "n_examples": len(examples) + 1}
    assert store.n_examples == len(examples) + 1 and manifest["excluded_indices"] == [len(examples)]
    want = _reference(own["module"], own["snapshots"], examples, "adam")
    got = np.asarray(store.features("epoch_001", DIM))[: len(examples)]
    np.testing.assert_allclose(got, want["epoch_001"], rtol=1e-4, atol=1e-5 * np.abs(want["epoch_001"]).max())
    check_data(manifest, loader("v1"), "the store")  # the same data: accepted
    with pytest.raises(IncompatibleError, match="version: 'v1' != 'v2'"):
        check_data(manifest, loader("v2"), "the store")
    with pytest.raises(ValueError, match=r"built differently .*data\.version"):
        _loop(own["snapshots"], tmp_path / "s", own["module"]).run(loader("v2"))
    with pytest.raises(InputError, match="excludes some indices but its batches hold no 'index'"):
        _loop(own["snapshots"], tmp_path / "t", own["module"]).run(loader("v1", with_index=False))
