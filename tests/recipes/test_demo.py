"""The built-in demo end to end (about 2 minutes on 2 idle CPU cores: marked slow)."""

import json

import pytest

from lightning_less.cli import main


@pytest.mark.slow
def test_demo_writes_results_for_every_method(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    main(["demo", "--output", str(tmp_path), "--seed", "0"])
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"less", "random", "full", "bm25", "dsir", "rds", "s2l"} <= set(results)
    for row in results.values():
        assert 0.0 <= row["target_share"] <= 1.0 and row["target_loss"] > 0 and 0.0 <= row["target_exact_match"] <= 1.0
    assert results["less"]["target_share"] > 2 * results["random"]["target_share"]
    assert results["less"]["target_loss"] < results["random"]["target_loss"]
    assert results["full"]["target_share"] == pytest.approx(0.05)
    # The table is printed once, on stdout, with every method's row.
    assert printed.count("lightning-less demo: target task") == 1
    rows = {line.split("│")[1].strip(): line for line in printed.splitlines() if line.count("│") > 2}
    assert set(results) <= set(rows)
    assert f"{results['less']['target_loss']:.3f}" in rows["less"]
