"""The method registry: discovery, needs enforced before anything runs, a new method is one new file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_less.errors import InputError, MissingInputError
from lightning_less.selection import methods as methods_package
from lightning_less.selection import registry
from lightning_less.selection.registry import NEEDS_HELP, REQUEST_FIELDS, SelectionRequest, available, get_method
from lightning_less.selection.runner import run_selection
from tests.selection.fakes import selected_ids

NEEDS = [(name, need) for name, method in available().items() for need in method.needs]


def test_every_method_is_one_discovered_module():
    files = sorted(p.stem for p in Path(methods_package.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert files == list(available()) == ["bm25", "dsir", "full", "less", "random", "rds", "rds_plus", "rds_response", "s2l"]
    for name, method in available().items():
        assert method.name == name and method.description and "\n" not in method.description
        assert set(method.needs) <= set(NEEDS_HELP) and set(method.deciding) <= set(REQUEST_FIELDS)
        assert type(method).__module__ == f"{methods_package.__name__}.{name}"
    assert get_method("full").whole_pool and get_method("full").default_fraction == 1.0
    assert {m.default_fraction for n, m in available().items() if n != "full"} == {0.05}
    with pytest.raises(InputError, match=r"unknown method 'nope' \(--method\): expected one of \['bm25'"):
        get_method("nope")


@pytest.mark.parametrize("method, need", NEEDS, ids=[f"{m}-{n}" for m, n in NEEDS])
def test_missing_need_is_refused_before_anything_runs(method, need, world, tmp_path, monkeypatch):
    cls = type(get_method(method))

    def boom(*args, **kwargs):
        raise AssertionError(f"{method} loaded or selected without its {need}")

    monkeypatch.setattr(cls, "load", boom)
    monkeypatch.setattr(cls, "select", boom)
    kwargs = {**world["request"], "count": 3}
    kwargs.update({need: None} if need != "targets" else {})
    targets = None if need == "targets" else world["targets"]
    if need == "trajectories":
        kwargs["model"] = None  # with a model the message also says how to make them
    with pytest.raises(MissingInputError, match=f"method '{method}' needs .*--{need}: {NEEDS_HELP[need]}"):
        run_selection(method, world["pool"], targets, tmp_path / "sel", **kwargs)
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.1, "count": 3}, "--fraction or --count, not both"),
    ({"aggregation": "median"}, "--aggregation 'median' is unknown"),
    ({"n_clusters": 0}, "--n_clusters must be an integer >= 1"),
    ({"dim": 2.5}, "--dim must be an integer"),
    ({"count": 13}, "--count: budget count 13 exceeds the pool size 12"),
    ({"fraction": 1.5}, r"--fraction: budget fraction must be in \(0, 1\]"),
])
def test_bad_options_are_refused_naming_the_flag(kwargs, match, world, tmp_path):
    with pytest.raises(InputError, match=match):
        run_selection("random", world["pool"], None, tmp_path / "sel", **kwargs)
    assert not (tmp_path / "sel").exists()


def test_full_refuses_a_budget(world, tmp_path):
    with pytest.raises(InputError, match="'full' takes the whole pool"):
        run_selection("full", world["pool"], None, tmp_path / "sel", fraction=0.5)
    assert selected_ids(run_selection("full", world["pool"], None, tmp_path / "sel")) == [f"p{i}" for i in range(12)]


NEW_METHOD = '''
"""Last: the last k pool examples (a method added as one file)."""

import numpy as np

from lightning_less.selection.registry import Inputs, SelectionMethod, register
from lightning_less.selection.result import SelectionResult


@register
class Last(SelectionMethod):
    name = "last"
    description = "the last k pool examples"
    needs = ("targets",)
    deciding = ("targets",)

    def select(self, inputs: Inputs) -> SelectionResult:
        n = len(inputs.pool)
        return SelectionResult(np.arange(n - inputs.k, n, dtype=np.int64)[::-1].copy(), None)
'''


def test_a_new_method_is_one_new_file(world, tmp_path, monkeypatch):
    """A module dropped into the methods package is a method of run_selection, select and compare."""
    extra = tmp_path / "more_methods"
    extra.mkdir()
    (extra / "last.py").write_text(NEW_METHOD)
    monkeypatch.setattr(methods_package, "__path__", [*methods_package.__path__, str(extra)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, f"{methods_package.__name__}.last", raising=False)
    try:
        assert "last" in available()
        with pytest.raises(MissingInputError, match="method 'last' needs --targets"):
            run_selection("last", world["pool"], None, tmp_path / "x", count=2)
        out = run_selection("last", world["pool"], world["targets"], tmp_path / "sel", count=2)
        assert selected_ids(out) == ["p11", "p10"]
        from lightning_less.recipes.compare import compare
        from lightning_less.recipes.select import select

        assert select(method="last", pool=world["pool"], targets=world["targets"], output=str(tmp_path / "sel"),
                      count=2)["reused"] is True
        result = compare(pool=world["pool"], targets=world["targets"], methods=["last", "full"], output=str(tmp_path / "cmp"),
                         count=2, target_sources=["src1"], plot=False)
        assert result["rows"]["last"]["target_share"] == 0.5
    finally:
        sys.modules.pop(f"{methods_package.__name__}.last", None)


def test_request_normalises_paths():
    request = SelectionRequest(pool="a.jsonl", targets=[Path("t.jsonl")], pool_store=Path("s"))
    assert request.pool == ("a.jsonl",) and request.targets == ("t.jsonl",) and request.pool_store == "s"
    with pytest.raises(MissingInputError, match="--pool"):
        SelectionRequest(pool=[])
    assert np.isclose(registry.DEFAULT_FRACTION, 0.05)
