"""``lightning-less compare``: every number checked against the selection directories it was made from."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["random", "bm25", "dsir", "full"]
WORDS = ["casa", "perro", "gato", "mesa", "libro", "arbol", "luna", "nube", "flor", "agua", "pan", "sol"]
TEMPLATES = {
    ("first", "en"): "What is the first letter of the word {w}?",
    ("first", "es"): "Cual es la primera letra de la palabra {w}?",
    ("upper", "en"): "Write the word {w} in capital letters.",
    ("upper", "es"): "Escribe la palabra {w} en mayusculas.",
}


def _example(task: str, form: str, w: str, rid: str, **extra) -> dict:
    answer = w[0] if task == "first" else w.upper()
    return {"dataset": f"{task}_{form}", "id": rid, **extra,
            "messages": [{"role": "user", "content": TEMPLATES[(task, form)].format(w=w)},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture
def data(tmp_path):
    """A pool of 2 tasks x 2 surface forms (10 each, over 2 files) and 3 targets of ``first_es``."""
    pool_a = [_example(t, f, WORDS[i % 12], f"{t}_{f}-{i}") for t in ("first",) for f in ("en", "es") for i in range(10)]
    pool_b = [_example(t, f, WORDS[(i + 5) % 12], f"{t}_{f}-{i}") for t in ("upper",) for f in ("en", "es") for i in range(10)]
    targets = [_example("first", "es", w, f"t{i}", subtask="first_es") for i, w in enumerate(["tierra", "fuego", "viento"])]
    return {
        "pool": [str(write_jsonl(tmp_path / "in" / "pool_a.jsonl", pool_a)), str(write_jsonl(tmp_path / "in" / "pool_b.jsonl", pool_b))],
        "targets": [str(write_jsonl(tmp_path / "in" / "targets.jsonl", targets))],
        "n_pool": 40,
    }


def run(data, output, methods=METHODS, **kw):
    from lightning_less.recipes.compare import compare_methods

    kw = {"count": 8, "seed": 0, **kw}
    return compare_methods(data["pool"], data["targets"], methods, output, **kw)


def selected_sources(sel_dir: Path) -> list[str]:
    """The ``dataset`` field of every line of ``selected.jsonl``, read with nothing from the package."""
    with open(sel_dir / "selected.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["dataset"] for line in f if line.strip()]


def selected_indices(sel_dir: Path) -> set[int]:
    with open(sel_dir / "scores.csv", newline="", encoding="utf-8") as f:
        return {int(r["index"]) for r in csv.DictReader(f) if r["selected"] == "1"}


def test_target_share_matches_the_selection_dirs(data, tmp_path):
    out = tmp_path / "cmp"
    result = run(data, out, target_form="_es$", group_by_regex=r"^(\w+?)_")
    assert result["target_sources"] == ["first_es"] and result["target_sources_from"] == "targets"
    assert result["pool"]["target_share"] == 10 / 40
    assert result["pool"]["form_share"] == 20 / 40
    assert result["pool"]["group_shares"] == {"first": 0.5, "upper": 0.5}
    for method in METHODS:
        row = result["rows"][method]
        sources = selected_sources(out / "selections" / method)
        assert row["k"] == len(sources) == (40 if method == "full" else 8)
        assert row["target_share"] == sum(s == "first_es" for s in sources) / len(sources)
        assert row["n_target"] == sum(s == "first_es" for s in sources)
        assert row["pool_share"] == 10 / 40
        assert row["form_share"] == sum(s.endswith("_es") for s in sources) / len(sources)
        assert row["group_shares"]["first"] == sum(s.startswith("first_") for s in sources) / len(sources)
        top = Counter(sources).most_common()
        assert [(c["source"], c["count"]) for c in row["composition"]] == sorted(top, key=lambda t: (-t[1], t[0]))[:5]
    assert result["rows"]["full"]["target_share"] == result["pool"]["target_share"]
    # Word overlap with Spanish "first letter" targets: BM25 must beat the pool share.
    assert result["rows"]["bm25"]["target_share"] > 0.25

    # The CSV and the markdown say the same as the JSON.
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["rows"] == result["rows"]
    assert on_disk["files"] == {"json": "comparison.json", "csv": "comparison.csv", "md": "comparison.md", "png": "comparison.png"}
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == METHODS
    for method in METHODS:
        assert float(rows[method]["target_share"]) == result["rows"][method]["target_share"]
        assert int(rows[method]["k"]) == result["rows"][method]["k"]
        assert rows[method]["selection"] == f"selections/{method}"
    md = (out / "comparison.md").read_text()
    for method in METHODS:
        assert f"| {method} | {result['rows'][method]['k']} | {result['rows'][method]['target_share']:.3f} | 0.250 |" in md


def test_explicit_target_sources(data, tmp_path):
    result = run(data, tmp_path / "cmp", methods=["random", "full"], target_sources=["first_en", "first_es"])
    assert result["target_sources"] == ["first_en", "first_es"] and result["target_sources_from"] == "given"
    assert result["pool"]["target_share"] == 0.5
    sources = selected_sources(tmp_path / "cmp" / "selections" / "random")
    assert result["rows"]["random"]["target_share"] == sum(s.startswith("first_") for s in sources) / 8


def test_jaccard_matrix_is_the_set_overlap(data, tmp_path):
    out = tmp_path / "cmp"
    result = run(data, out)
    assert result["jaccard"]["methods"] == METHODS
    mat = result["jaccard"]["matrix"]
    sets = {m: selected_indices(out / "selections" / m) for m in METHODS}
    assert len(sets["full"]) == 40 and len(sets["random"]) == 8
    for i, a in enumerate(METHODS):
        assert mat[i][i] == 1.0
        for j, b in enumerate(METHODS):
            assert mat[i][j] == mat[j][i]
            assert mat[i][j] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]), abs=1e-12)
    assert mat[METHODS.index("random")][METHODS.index("full")] == pytest.approx(8 / 40)
    assert any(mat[i][j] < 1 for i in range(4) for j in range(4))  # not trivially all ones


def test_same_inputs_same_comparison(data, tmp_path):
    first = run(data, tmp_path / "a")
    manifest = (tmp_path / "a" / "selections" / "random" / "manifest.json").stat().st_mtime_ns
    again = run(data, tmp_path / "a")  # reuses the selections
    assert (tmp_path / "a" / "selections" / "random" / "manifest.json").stat().st_mtime_ns == manifest
    elsewhere = run(data, tmp_path / "b")
    text = (tmp_path / "a" / "comparison.json").read_text()
    assert text == (tmp_path / "b" / "comparison.json").read_text()
    assert (tmp_path / "a" / "comparison.csv").read_text() == (tmp_path / "b" / "comparison.csv").read_text()
    assert first["rows"] == again["rows"] == elsewhere["rows"]
    other_seed = run(data, tmp_path / "c", methods=["random"], seed=1)
    assert selected_indices(tmp_path / "c" / "selections" / "random") != selected_indices(tmp_path / "a" / "selections" / "random")
    assert other_seed["seed"] == 1


def test_png_is_written(data, tmp_path):
    result = run(data, tmp_path / "cmp", target_form="_es$")
    png = Path(result["files"]["png"])
    raw = png.read_bytes()
    assert raw.startswith(PNG_MAGIC) and len(raw) > 5000
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 600 and img.std() > 0  # drawn, not blank


def test_given_selections_and_metrics_are_shown(data, tmp_path):
    """A selection made elsewhere (the pipeline's LESS) and training results already computed."""
    from lightning_less.selection.runner import run_selection

    elsewhere = run_selection("random", data["pool"], None, tmp_path / "made" / "random", fraction=None, count=8, seed=3)
    result = run(data, tmp_path / "cmp", methods=["random", "bm25"], selection_dirs={"random": elsewhere},
                 metrics={"random": {"target_loss": 1.5, "target_exact_match": 0.25}, "bm25": {"target_loss": 0.5}})
    assert not (tmp_path / "cmp" / "selections" / "random").exists()
    assert result["rows"]["random"]["selection"] == str(elsewhere.resolve())
    assert result["rows"]["random"]["target_loss"] == 1.5 and result["rows"]["bm25"]["target_loss"] == 0.5
    assert result["trained"] is True
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "target_loss" in md and "1.500" in md and "n/a" in md  # bm25 has no exact match
    assert Path(result["files"]["png"]).read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="has 8 examples, the budget is 10"):
        run(data, tmp_path / "cmp2", methods=["random"], count=10, selection_dirs={"random": elsewhere})


def test_stale_selection_for_other_targets_is_refused(data, tmp_path):
    from lightning_less.selection.outputs import StaleSelectionError

    out = tmp_path / "cmp"
    run(data, out, methods=["bm25"])
    other = write_jsonl(tmp_path / "in" / "other_targets.jsonl", [_example("upper", "en", "sol", "o1", subtask="upper_en")])
    data2 = {**data, "targets": [str(other)]}
    with pytest.raises(StaleSelectionError, match="other target files"):
        run(data2, out, methods=["bm25"])
    result = run(data2, out, methods=["bm25"], overwrite=True)
    assert result["target_sources"] == ["upper_en"]
    assert result["rows"]["bm25"]["target_share"] == sum(s == "upper_en" for s in selected_sources(out / "selections" / "bm25")) / 8
    # Another budget or seed is refused too, and redone with overwrite (never silently reused).
    with pytest.raises(StaleSelectionError, match="the budget is 10"):
        run(data2, out, methods=["bm25"], count=10)
    assert run(data2, out, methods=["bm25"], count=10, overwrite=True)["rows"]["bm25"]["k"] == 10
    run(data, out, methods=["random"])
    with pytest.raises(StaleSelectionError, match="seed 0, not 1"):
        run(data, out, methods=["random"], seed=1)
    manifest = out / "selections" / "random" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    # Every selection is judged before any runs: a stale bm25 stops the comparison before dsir is computed.
    with pytest.raises(StaleSelectionError, match="bm25 cannot be reused"):
        run(data, out, methods=["dsir", "bm25"])
    assert not (out / "selections" / "dsir").exists()
    run(data, out, methods=["random"], overwrite=True)  # made the same way: reused even with overwrite
    assert manifest.stat().st_mtime_ns == before


def test_bad_inputs_fail_before_any_selection(data, tmp_path):
    from lightning_less.errors import InputError, MissingInputError

    out = tmp_path / "cmp"
    with pytest.raises(InputError, match="unknown method 'nope'"):
        run(data, out, methods=["random", "nope"])
    with pytest.raises(MissingInputError, match="needs --pool_store and --target_store"):
        run(data, out, methods=["random", "less"])
    with pytest.raises(InputError, match="more than once"):
        run(data, out, methods=["random", "random"])
    with pytest.raises(MissingInputError, match="--eval files"):
        run(data, out, methods=["random"], train=True, model="builtin:tiny-llama")
    with pytest.raises(MissingInputError, match="'s2l' needs --trajectories"):
        run(data, out, methods=["random", "s2l"])
    with pytest.raises(InputError, match="--target_form"):
        run(data, out, methods=["random"], target_form="(")
    assert not (out / "selections").exists()


def test_rendered_table_fits_the_terminal(data, tmp_path):
    """The command returns the comparison; rich renders it as the table, within the console's width."""
    from rich.console import Console

    from lightning_less.recipes.compare import compare

    out = tmp_path / "cmp"
    result = compare(pool=data["pool"], targets=data["targets"][0], methods=["random", "bm25", "dsir"], output=str(out),
                     fraction=0.25, seed=0)
    on_disk = json.loads((out / "comparison.json").read_text())
    assert result["methods"] == on_disk["methods"] == ["random", "bm25", "dsir"] and result["budget"]["k"] == 10
    assert result["rows"] == on_disk["rows"]
    for width in (250, 60):
        console = Console(width=width, record=True)
        console.print(result)
        printed = console.export_text()
        assert max(len(line) for line in printed.splitlines()) <= width
        for method in result["methods"]:
            assert method in printed
            assert f"{on_disk['rows'][method]['target_share']:.3f}" in printed
        assert ("top sources" in printed) == (width == 250)  # the sources column only when it fits
    wide = Console(width=250, record=True)
    wide.print(result)
    printed = wide.export_text()
    assert str(out / "comparison.json") in printed and str(out / "comparison.png") in printed


@pytest.mark.slow
def test_train_and_evaluate_each_selection(data, tmp_path):
    from lightning_less.recipes.pipeline import TrainSettings

    settings = TrainSettings(epochs=1, learning_rate=1e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=8,
                             generation_max_new_tokens=4)
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    kw = dict(methods=["random", "bm25"], train=True, eval_files=data["targets"], model="builtin:tiny-llama",
              train_settings=settings, trainer=trainer, max_length=64)
    result = run(data, tmp_path / "cmp", **kw)
    for method in ("random", "bm25"):
        row = result["rows"][method]
        assert row["target_loss"] > 0 and 0 <= row["target_exact_match"] <= 1 and row["n_train"] == 8
        assert (tmp_path / "cmp" / "train" / method / "step.json").is_file()
    assert run(data, tmp_path / "cmp", **kw)["rows"] == result["rows"]  # finished trainings are reused
