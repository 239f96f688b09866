"""The ``select`` command: reproducible selections, the S2L proxy trained first, the same selections as ``compare``."""

import inspect
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

from lightning_less.errors import InputError, MissingInputError, StaleOutputError
from lightning_less.recipes import s2l_proxy
from lightning_less.recipes.compare import compare
from lightning_less.recipes.s2l_proxy import ProxySettings
from lightning_less.recipes.select import select
from lightning_less.selection.datamodule import LessDataModule
from lightning_less.selection.outputs import StaleSelectionError, read_selection
from lightning_less.selection.registry import SelectionRequest, available
from lightning_less.selection.runner import run_selection
from lightning_less.stores.trajectory import TrajectoryStore
from tests.helpers import qa_records, write_jsonl
from tests.selection.fakes import build_world

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


@pytest.fixture()
def files(tmp_path):
    pool = [write_jsonl(tmp_path / f"pool_{i}.jsonl", qa_records(10, prefix=f"f{i}-", task=f"src{i}")) for i in range(3)]
    targets = write_jsonl(tmp_path / "targets.jsonl", [dict(r, subtask="s") for r in qa_records(3, prefix="t")])
    return [str(p) for p in pool], str(targets)


@pytest.fixture
def world(tmp_path):
    return build_world(tmp_path / "in")


@pytest.mark.parametrize("method", ["random", "bm25", "dsir"])
def test_select_command_is_reproducible_and_byte_identical(tmp_path, files, method):
    pool, targets = files
    outs = []
    for run in range(2):
        out = tmp_path / f"{method}_{run}"
        result = select(method=method, pool=pool, targets=[targets], output=str(out), count=7, seed=3)
        assert result == {"selection": str(out), "method": method, "k": 7, "n_pool": 30, "n_excluded": 0, "reused": False}
        outs.append(out)
    a, b = ((o / "selected.jsonl").read_bytes() for o in outs)
    assert a == b and len(a.splitlines()) == 7
    raw = b"".join(Path(p).read_bytes() for p in pool).splitlines()
    assert all(line in raw for line in a.splitlines())
    assert select(method=method, pool=pool, targets=[targets], output=str(outs[0]), count=7, seed=3)["reused"] is True
    with pytest.raises(StaleSelectionError, match="it holds 7 examples, the budget is 5"):  # another budget, same directory
        select(method=method, pool=pool, targets=[targets], output=str(outs[0]), count=5, seed=3)


def test_less_data_module_serves_the_selection(tmp_path, files):
    pool, targets = files
    out = tmp_path / "bm25"
    select(method="bm25", pool=pool, targets=targets, output=str(out), count=6)
    sel = read_selection(out)
    dm = LessDataModule(str(out), tokenizer_name_or_path="builtin:tiny-llama", batch_size=2)
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert [ex.record.index for ex in ds.examples] == list(sel.selected)
    recut = LessDataModule(str(out), count=3, tokenizer_name_or_path="builtin:tiny-llama")
    recut.setup("fit")
    order = np.lexsort((np.arange(len(sel.scores)), -sel.scores))[:3]
    assert [ex.record.index for ex in recut.datasets["train"].examples] == list(order)
    # A pool edited after selection is stale.
    with open(pool[1], "a") as f:
        f.write(json.dumps({"prompt": "new", "completion": "line"}) + "\n")
    with pytest.raises(StaleSelectionError):
        LessDataModule(str(out), tokenizer_name_or_path="builtin:tiny-llama")


def test_select_and_compare_make_the_same_selections(world, tmp_path):
    """Every method, one request: compare's selections are byte for byte select's."""
    methods = list(available())
    options = {**world["request"], "stratify_by_source": True, "aggregation": "round_robin"}
    result = compare(pool=world["pool"], targets=world["targets"], methods=methods, output=str(tmp_path / "cmp"), count=4,
                     seed=2, plot=False, **options)
    assert result["methods"] == methods
    for method in methods:
        out = tmp_path / "select" / method
        made = select(method=method, pool=world["pool"], targets=world["targets"], output=str(out),
                      count=None if method == "full" else 4, seed=2, **options)
        assert made["k"] == (12 if method == "full" else 4)
        theirs = tmp_path / "cmp" / "selections" / method
        for name in ("selected.jsonl", "scores.csv"):
            assert (out / name).read_bytes() == (theirs / name).read_bytes(), (method, name)
        mine, other = (json.loads((d / "manifest.json").read_text()) for d in (out, theirs))
        assert mine["params"] == other["params"] and mine["budget"] == other["budget"]


def test_command_signatures_cover_every_request_option():
    """select, compare and run_selection take every option of a request, with the request's defaults."""
    fields = {f.name: f.default for f in SelectionRequest.__dataclass_fields__.values()}
    renamed = {"pool": "pool_files", "targets": "target_files"}
    for fn in (select, compare, run_selection):
        params = inspect.signature(fn).parameters
        for name, default in fields.items():
            name = renamed.get(name, name) if fn is run_selection else name
            assert name in params, (fn.__name__, name)
            if name not in ("pool", "pool_files", "targets", "target_files"):
                assert params[name].default == default, (fn.__name__, name)
    assert {"proxy", "overwrite"} <= set(inspect.signature(select).parameters)
    assert {"proxy", "overwrite", "train", "eval", "train_settings"} <= set(inspect.signature(compare).parameters)


def test_s2l_trains_its_proxy_first_with_the_trainer_arguments(tmp_path, files, monkeypatch):
    pool, _ = files
    seen = []

    class RecordingTrainer(pl.Trainer):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(s2l_proxy.pl, "Trainer", RecordingTrainer)
    out = tmp_path / "s2l"
    kw = dict(method="s2l", pool=pool, output=str(out), count=6, model="builtin:tiny-llama", n_clusters=3, max_length=64,
              proxy=ProxySettings(epochs=2, batch_size=8), trainer={**TRAINER, "limit_train_batches": 2})
    result = select(**kw)
    assert seen and seen[0]["max_epochs"] == 2 and seen[0]["limit_train_batches"] == 2 and seen[0]["accelerator"] == "cpu"
    traj, _ = TrajectoryStore(tmp_path / "s2l_proxy").read()
    assert traj.shape == (30, 2)  # one column per proxy epoch
    sel = read_selection(out)
    assert result["k"] == len(sel.selected) == 6 and sel.manifest["inputs"]["trajectories"] == str(tmp_path / "s2l_proxy")
    # The same request again trains nothing and reuses the selection.
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("the proxy was trained again"))
    assert select(**kw)["reused"] is True
    # Another proxy is refused before anything is trained; the selection layer never trains one.
    with pytest.raises(StaleOutputError, match=r"trained with settings .*'epochs': 2.*not .*'epochs': 3"):
        select(**{**kw, "proxy": ProxySettings(epochs=3, batch_size=8)})
    with pytest.raises(MissingInputError, match="--model to train a proxy"):
        run_selection("s2l", pool, None, tmp_path / "x", count=6, model="builtin:tiny-llama")
    with pytest.raises(InputError, match="--trainer.max_epochs cannot be set for the S2L proxy: use --proxy.epochs"):
        select(**{**kw, "output": str(tmp_path / "other"), "trainer": {"max_epochs": 5}})


def test_the_command_line_reaches_the_settings():
    """jsonargparse builds the commands' options from their signatures: the shipped config parses, nested settings too."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    def parser(fn):
        p = ArgumentParser(exit_on_error=False)
        p.add_argument("--config", action=ActionConfigFile)
        p.add_function_arguments(fn)
        return p

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "select.yaml"
    args = parser(select).parse_args(["--config", str(config)])
    assert args.method == "less" and args.dim == 1024 and args.pool_store == "runs/tiny-fit/features/pool"
    args = parser(select).parse_args(["--method", "s2l", "--pool", "a.jsonl", "--output", "o", "--model", "m",
                                      "--proxy.epochs", "2", "--trainer", '{"accelerator": "gpu"}'])
    assert args.proxy.epochs == 2 and args.trainer == {"accelerator": "gpu"}
    args = parser(compare).parse_args(["--pool", "[a.jsonl,b.jsonl]", "--methods", "[s2l,random]", "--output", "o",
                                       "--n_clusters", "5", "--stratify_by_source", "true", "--proxy.batch_size", "4"])
    assert args.n_clusters == 5 and args.stratify_by_source is True and args.proxy.batch_size == 4
