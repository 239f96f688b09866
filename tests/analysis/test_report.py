"""``lightning-less report``: the HTML page, its plots and its numbers (from scores.csv)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typing_extensions import override

from lightning_less.analysis.page import NO_SCORES
from lightning_less.analysis.plots import PLOT_FILES
from lightning_less.analysis.report import build_report, report
from lightning_less.errors import InputError
from lightning_less.selection.outputs import StaleSelectionError
from tests.analysis.selections import SUBTASKS, make_random_selection, make_scored_selection, read_scores_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class KeyParser(HTMLParser):
    """Collects every element with a ``data-key`` attribute (its attributes and text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[dict] = []
        self._open: list[dict | None] = []
        self.images: list[dict] = []

    @override
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "img":
            self.images.append(named)
            return
        item = {"tag": tag, **named, "text": ""} if "data-key" in named else None
        if item is not None:
            self.items.append(item)
        self._open.append(item)

    @override
    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    @override
    def handle_data(self, data: str) -> None:
        for item in self._open:
            if item is not None:
                item["text"] += data

    def value(self, key: str, **match: str) -> str:
        found = [i for i in self.items if i["data-key"] == key and all(i.get(f"data-{k}") == v for k, v in match.items())]
        assert len(found) == 1, (key, match, found)
        return found[0]["data-value"]


def parse_page(path: Path) -> KeyParser:
    parser = KeyParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def expected_numbers(rows: list[dict]) -> dict:
    chosen = [r for r in rows if r["selected"] == "1"]
    pool_scores = [float(r["score"]) for r in rows if r["score"]]
    sel_scores = [float(r["score"]) for r in chosen if r["score"]]
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["source"], [0, 0])
        c[0] += 1
        c[1] += r["selected"] == "1"
    return {
        "k": len(chosen),
        "n_pool": len(rows),
        "sel": sel_scores,
        "pool": pool_scores,
        "counts": counts,
    }


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC), path
    from PIL import Image

    with Image.open(path) as im:
        im.verify()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A LESS-like selection with per-subtask scores and recorded targets, and its report (built once)."""
    fx = make_scored_selection(tmp_path_factory.mktemp("scored"))
    fx["paths"] = build_report(fx["dir"], top_n=3)
    return fx


def test_report_scored_selection(scored):
    fx, paths = scored, scored["paths"]
    index = fx["dir"] / "report" / "index.html"
    assert paths["index"] == index and index.is_file()
    assert set(paths) == {"index", *PLOT_FILES}
    for name, file in PLOT_FILES.items():
        assert paths[name] == index.parent / file
        assert_valid_png(paths[name])

    page = index.read_text(encoding="utf-8")
    parser = parse_page(index)
    # Self-contained: every image is an embedded PNG identical to the file written; no external assets.
    assert len(parser.images) == len(PLOT_FILES)
    for img in parser.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]) == (index.parent / img["data-file"]).read_bytes()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "<link" not in page and "<script" not in page

    rows = read_scores_csv(fx["dir"] / "scores.csv")
    exp = expected_numbers(rows)
    assert int(parser.value("k")) == exp["k"] == 6
    assert int(parser.value("n_pool")) == exp["n_pool"] == 30
    assert int(parser.value("budget_k")) == 6
    assert parser.value("method") == "less"
    assert parser.value("seed") == "3"
    assert float(parser.value("score_mean_selected")) == pytest.approx(sum(exp["sel"]) / len(exp["sel"]), rel=1e-12)
    assert float(parser.value("score_min_selected")) == min(exp["sel"])
    assert float(parser.value("score_max_selected")) == max(exp["sel"])
    assert float(parser.value("score_mean_pool")) == pytest.approx(sum(exp["pool"]) / len(exp["pool"]), rel=1e-12)
    assert float(parser.value("score_min_pool")) == min(exp["pool"])
    assert float(parser.value("score_max_pool")) == max(exp["pool"])
    for source, (n_pool, n_sel) in exp["counts"].items():
        assert int(parser.value("pool_count", source=source)) == n_pool
        assert int(parser.value("selected_count", source=source)) == n_sel
    assert sorted(exp["counts"]) == ["dolly", "flan", "oasst"]
    # The displayed (rounded) text agrees with the exact value.
    k_cell = next(i for i in parser.items if i["data-key"] == "k")
    assert k_cell["text"].strip() == str(exp["k"])
    min_cell = next(i for i in parser.items if i["data-key"] == "score_min_selected")
    assert float(min_cell["text"]) == pytest.approx(min(exp["sel"]), rel=1e-3)
    lengths = [len(r.text.split()) for r in fx["pool"]]
    assert float(parser.value("length_mean_pool")) == pytest.approx(np.mean(lengths))
    chosen = [int(r["index"]) for r in rows if r["selected"] == "1"]
    assert float(parser.value("length_mean_selected")) == pytest.approx(np.mean([lengths[i] for i in chosen]))


def test_report_top_examples_per_subtask(scored):
    parser = parse_page(scored["paths"]["index"])
    rows = read_scores_csv(scored["dir"] / "scores.csv")
    # (e): per target subtask, the top pool examples by score/<subtask> (ties by index), beside the targets.
    for s in SUBTASKS:
        ordered = sorted(rows, key=lambda r: (-float(r[f"score/{s}"]), int(r["index"])))[:3]
        shown = [i for i in parser.items if i["data-key"] == "top_example" and i["data-subtask"] == s]
        assert [int(i["data-index"]) for i in shown] == [int(r["index"]) for r in ordered]
        assert [float(i["data-score"]) for i in shown] == [float(r[f"score/{s}"]) for r in ordered]
    arith = [int(i["data-index"]) for i in parser.items if i["data-key"] == "top_example" and i["data-subtask"] == "arith"]
    assert arith == [1, 5, 20]  # a three-way tie at the top: ascending pool index
    targets = [i["data-id"] for i in parser.items if i["data-key"] == "target_example"]
    assert targets == ["t-ar0", "t-ar1", "t-ar2", "t-geo0", "t-geo1"]
    # Record texts and subtask names are escaped.
    page = scored["paths"]["index"].read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "geo &amp; &lt;maps&gt;" in page and "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_report_random_selection_without_scores(tmp_path, caplog, scored):
    fx = make_random_selection(tmp_path)
    out = tmp_path / "rep"
    shutil.copytree(scored["paths"]["index"].parent, out)  # an earlier report with score plots
    with caplog.at_level("INFO", logger="lightning_less"):
        paths = build_report(fx["dir"], output=out)
    assert paths["index"] == out / "index.html"
    assert set(paths) == {"index", "composition", "lengths"}
    for name in ("composition", "lengths"):
        assert_valid_png(paths[name])
    # No stale plot of the earlier report is left beside the new page.
    assert not (out / PLOT_FILES["scores"]).exists() and not (out / PLOT_FILES["subtasks"]).exists()
    page = paths["index"].read_text(encoding="utf-8")
    assert NO_SCORES in page
    parser = parse_page(paths["index"])
    assert len(parser.images) == 2
    rows = read_scores_csv(fx["dir"] / "scores.csv")
    exp = expected_numbers(rows)
    assert exp["sel"] == [] and exp["pool"] == []
    assert int(parser.value("k")) == exp["k"] == int(parser.value("budget_k")) == 6
    assert "differs" not in page and parser.value("budget") == "fraction 0.2"
    assert int(parser.value("n_pool")) == 30
    assert parser.value("method") == "random"
    assert parser.value("seed") == "1"
    for key in ("score_mean_selected", "score_min_selected", "score_max_selected", "score_mean_pool"):
        assert parser.value(key) == ""
    for source, (n_pool, n_sel) in exp["counts"].items():
        assert int(parser.value("pool_count", source=source)) == n_pool
        assert int(parser.value("selected_count", source=source)) == n_sel
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "reading selection" in messages and str(paths["index"]) in messages


def test_report_pool_and_target_sources(tmp_path):
    fx = make_scored_selection(tmp_path, record_targets=False)
    # Explicit, matching pool and explicit targets.
    paths = build_report(fx["dir"], pool=[str(p) for p in fx["pool_paths"]], targets=str(fx["targets"]))
    parser = parse_page(paths["index"])
    assert len([i for i in parser.items if i["data-key"] == "target_example"]) == 5
    # An explicit pool that does not match the selection is an error.
    with pytest.raises(StaleSelectionError):
        build_report(fx["dir"], pool=[str(fx["pool_paths"][0])])
    # Recorded pool files gone and no targets: still a report, per score column, without lengths or texts.
    shutil.move(str(tmp_path / "data"), tmp_path / "moved")
    paths = build_report(fx["dir"])
    assert "lengths" not in paths and "scores" in paths and "subtasks" in paths
    parser = parse_page(paths["index"])
    assert not [i for i in parser.items if i["data-key"] == "target_example"]
    assert {i["data-subtask"] for i in parser.items if i["data-key"] == "top_example"} == set(SUBTASKS)
    page = paths["index"].read_text(encoding="utf-8")
    assert "not found" in page and "pool records unavailable" in page


def test_report_command_returns_what_it_wrote(tmp_path):
    import json

    fx = make_scored_selection(tmp_path)
    (fx["pool_paths"][0].parent / "targets.jsonl").unlink()  # a recorded target file gone: one warning
    out = tmp_path / "rep"
    result = report(selection=str(fx["dir"]), output=str(out), top_n=2)
    assert json.loads(json.dumps(result)) == result  # JSON-able as it is: no Path, no numpy values
    assert result["selection"] == str(fx["dir"]) and result["index"] == str(out / "index.html")
    assert result["plots"] == {name: str(out / file) for name, file in PLOT_FILES.items()}
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html", *PLOT_FILES.values()])
    assert len(result["warnings"]) == 1 and "not found" in result["warnings"][0]
    assert result["warnings"][0] in out.joinpath("index.html").read_text(encoding="utf-8")  # the page says so too
    with pytest.raises(InputError, match="--top_n must be a positive integer"):
        report(selection=str(fx["dir"]), output=str(out), top_n=0)


def test_failed_report_leaves_no_page(tmp_path, monkeypatch):
    import lightning_less.analysis.report as report_module

    fx = make_random_selection(tmp_path)
    index = build_report(fx["dir"])["index"]
    assert index.is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report_module, "render_html", broken)
    with pytest.raises(RuntimeError, match="rendering failed"):
        build_report(fx["dir"])
    # The earlier page is gone rather than left beside plots of this run; no temporary file either.
    assert sorted(p.name for p in index.parent.iterdir()) == ["composition.png", "lengths.png"]


def test_report_cli(tmp_path, capsys, monkeypatch):
    from lightning_less.cli import main

    monkeypatch.setenv("COLUMNS", "300")
    fx = make_random_selection(tmp_path)
    main(["report", "--selection", str(fx["dir"]), "--output", str(tmp_path / "r"), "--top_n", "2"])
    assert (tmp_path / "r" / "index.html").is_file()
    assert str(tmp_path / "r" / "index.html") in capsys.readouterr().out


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.chromium
def test_report_renders_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    fx = make_scored_selection(tmp_path)
    index = build_report(fx["dir"])["index"]
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        index.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert len(data) > 10_000 and data.startswith(PNG_MAGIC)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # not a blank page
