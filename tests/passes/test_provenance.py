"""Stores are used only with the data and snapshots they were computed from: select, compare, LessDataModule refuse the rest."""

from __future__ import annotations

import json
import shutil

import lightning.pytorch as pl
import pytest

from lightning_less.callbacks.snapshot import GradientFeatureCallback
from lightning_less.data.datamodule import InstructionDataModule
from lightning_less.errors import IncompatibleError
from lightning_less.modules.lora import LoRAInstructionTuningModule
from lightning_less.passes.gradient_features import GradientDumpLoop
from lightning_less.recipes.compare import compare
from lightning_less.selection.datamodule import LessDataModule
from lightning_less.selection.outputs import StaleSelectionError
from lightning_less.selection.runner import run_selection
from tests.helpers import qa_records, write_jsonl

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _store(run, snapshots, files, out, feature, max_length=2048):
    data = InstructionDataModule(predict_files=[files], tokenizer_name_or_path=run["model"], eval_batch_size=8,
                                 max_length=max_length)
    return GradientDumpLoop(snapshots=str(snapshots), output_dir=str(out), feature=feature, dims=[16], projector="sparse_jl",
                            store_dtype="float32", trainer_kwargs=QUIET).run(data)


@pytest.fixture(scope="module")
def stores(warm_run, tmp_path_factory):
    """The warm run's pool and target stores, a second pool and second targets of the same sizes, and a second warmup."""
    root = tmp_path_factory.mktemp("provenance")
    pool_1 = write_jsonl(root / "pool_1.jsonl", qa_records(22, prefix="x", task="other"))
    other_targets = write_jsonl(root / "other_targets.jsonl",
                                [dict(r, subtask="s" + str(i % 2)) for i, r in enumerate(qa_records(5, prefix="u"))])
    pl.seed_everything(1, verbose=False)  # another warmup, its snapshots named the same (epoch_000, epoch_001)
    module = LoRAInstructionTuningModule(model_name_or_path=warm_run["model"], lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                         learning_rate=5e-3, warmup_ratio=0.0, exact_match=False, seed=1)
    data = InstructionDataModule(train_files=[warm_run["pool"]], tokenizer_name_or_path=warm_run["model"], batch_size=4, seed=1)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[GradientFeatureCallback(str(root / "warmup_b"))],
               **QUIET).fit(module, datamodule=data)
    return {
        "root": root, "pool_1": str(pool_1), "other_targets": str(other_targets),
        "pool_store": _store(warm_run, warm_run["snapshots"], warm_run["pool"], root / "pool_store", "adam").path,
        "target_store": _store(warm_run, warm_run["snapshots"], warm_run["targets"], root / "target_store", "sgd").path,
        "target_store_b": _store(warm_run, root / "warmup_b", warm_run["targets"], root / "target_store_b", "sgd").path,
    }


def _select(warm_run, stores, out, pool=None, targets=None, **kw):
    kw = {"pool_store": stores["pool_store"], "target_store": stores["target_store"], **kw}
    return run_selection("less", [pool or warm_run["pool"]], [targets or warm_run["targets"]], out, count=4, **kw)


def test_a_pool_store_is_refused_for_another_pool_of_the_same_size(warm_run, stores, tmp_path):
    with pytest.raises(IncompatibleError, match=r"--pool_store .*pool_store was computed on other data than --pool: it "
                                                r"records .*pool\.jsonl .* --pool is .*pool_1\.jsonl"):
        _select(warm_run, stores, tmp_path / "sel", pool=stores["pool_1"])
    assert not (tmp_path / "sel").exists()
    with pytest.raises(IncompatibleError, match=r"--target_store .* was computed on other data than --targets"):
        _select(warm_run, stores, tmp_path / "sel", targets=stores["other_targets"])
    assert not (tmp_path / "sel").exists()
    assert (_select(warm_run, stores, tmp_path / "sel") / "selected.jsonl").exists()  # the right files: selected


def test_compare_refuses_it_too(warm_run, stores, tmp_path):
    with pytest.raises(IncompatibleError, match="--pool_store"):
        compare(methods=["less"], pool=[stores["pool_1"]], targets=[warm_run["targets"]], output=str(tmp_path / "cmp"),
                count=4, pool_store=str(stores["pool_store"]), target_store=str(stores["target_store"]))


def test_stores_of_two_warmups_are_refused_even_with_the_same_snapshot_names(warm_run, stores, tmp_path):
    snaps_a = json.loads((stores["pool_store"] / "manifest.json").read_text())["snapshots"]
    snaps_b = json.loads((stores["target_store_b"] / "manifest.json").read_text())["snapshots"]
    assert snaps_a == snaps_b == ["epoch_000", "epoch_001"]
    with pytest.raises(IncompatibleError, match=r"--pool_store .* and --target_store .*target_store_b were computed from "
                                                r"different snapshots: .*adapter_model\.safetensors"):
        _select(warm_run, stores, tmp_path / "sel", target_store=stores["target_store_b"])
    assert not (tmp_path / "sel").exists()


def test_the_command_line_says_it_in_one_paragraph_and_lists_every_file_under_debug(warm_run, stores, tmp_path,
                                                                                      capsys, monkeypatch):
    from lightning_less.cli import main

    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    args = ["select", "--method", "less", "--pool", warm_run["pool"], "--targets", warm_run["targets"], "--count", "4",
            "--pool_store", str(stores["pool_store"]), "--target_store", str(stores["target_store_b"]),
            "--output", str(tmp_path / "sel")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    text = " ".join(err[err.index("error:"):].split())
    assert "were computed from different snapshots: epoch_000/adapter_model.safetensors has sha256" in text, err
    assert "other snapshot files differ too (--debug lists them all)" in text
    assert len(err[err.index("error:"):].splitlines()) <= 8  # was about 60 lines of sha256s
    with pytest.raises(IncompatibleError) as raised:
        main([*args, "--debug"])
    err = capsys.readouterr().err
    every = raised.value.details.splitlines()
    assert len(every) >= 4 and all(line in err for line in every)  # the full list, full digests, before the traceback
    assert not (tmp_path / "sel").exists()


def test_stores_tokenized_differently_are_refused(warm_run, stores, tmp_path):
    short = _store(warm_run, warm_run["snapshots"], warm_run["targets"], tmp_path / "short", "sgd", max_length=512)
    with pytest.raises(IncompatibleError, match="were tokenized differently: max_length: 2048 != 512"):
        _select(warm_run, stores, tmp_path / "sel", target_store=short.path)


def test_a_snapshot_changed_in_place_is_refused(warm_run, stores, tmp_path):
    """Same directory, same names: a byte of the moments differs, so the targets' features differ."""
    snaps = tmp_path / "snaps"
    shutil.copytree(warm_run["snapshots"], snaps)
    moments = snaps / "epoch_001" / "optimizer_moments.safetensors"
    data = bytearray(moments.read_bytes())
    data[-1] ^= 1
    moments.write_bytes(bytes(data))
    targets = _store(warm_run, snaps, warm_run["targets"], tmp_path / "targets", "sgd")
    with pytest.raises(IncompatibleError, match=r"epoch_001.*optimizer_moments\.safetensors"):
        _select(warm_run, stores, tmp_path / "sel", target_store=targets.path)


def test_less_datamodule_refuses_a_selection_of_another_pool(warm_run, stores, tmp_path):
    selection = _select(warm_run, stores, tmp_path / "sel")
    with pytest.raises(StaleSelectionError, match="pool_1.jsonl changed"):
        LessDataModule(str(selection), pool_files=[stores["pool_1"]], tokenizer_name_or_path=warm_run["model"])
    data = LessDataModule(str(selection), tokenizer_name_or_path=warm_run["model"])
    assert len(data.train_indices) == 4


def test_instruction_data_records_its_files_and_tokenization(warm_run, stores):
    from lightning_less.data.datamodule import InstructionDataset
    from lightning_less.data.formatting import tokenizer_fingerprint
    from lightning_less.data.records import file_sha256
    from lightning_less.errors import InputError
    from lightning_less.models.loading import load_tokenizer

    data = json.loads((stores["pool_store"] / "manifest.json").read_text())["data"]
    tokenizer = load_tokenizer(warm_run["model"])
    assert data == {"kind": "files", "files": [{"path": warm_run["pool"], "sha256": file_sha256(warm_run["pool"])}],
                    "n_examples": 22, "max_length": 2048, "template": "tulu", "tokenizer": tokenizer_fingerprint(tokenizer)}
    # The tokenizer's identity is its content, not where it was loaded from or its padding settings.
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.bos_token
    assert tokenizer_fingerprint(tokenizer) == data["tokenizer"]
    with pytest.raises(InputError, match="a predict pass runs over whole files"):
        InstructionDataset([warm_run["pool"]], tokenizer, fraction=0.5).data_fingerprint()


def test_the_report_refuses_targets_other_than_the_selections(warm_run, stores, tmp_path):
    from lightning_less.analysis.inputs import load_inputs

    selection = _select(warm_run, stores, tmp_path / "sel")
    with pytest.raises(IncompatibleError, match="are not the target files the selection was made for"):
        load_inputs(selection, targets=[stores["other_targets"]])
    assert len(load_inputs(selection, targets=[warm_run["targets"]]).targets) == 5
