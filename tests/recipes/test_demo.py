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
    assert {"less", "random", "full", "bm25", "dsir", "rds", "s2l", "less_t", "random_t"} <= set(results)
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


def test_demo_and_compare_count_target_share_by_one_rule(tmp_path):
    import numpy as np

    from lightning_less.analysis.comparison import ShareSettings, measure_selections, target_share
    from lightning_less.data.demo import generate_demo_data
    from lightning_less.data.records import read_records
    from lightning_less.recipes.demo import demo_relevance

    paths = generate_demo_data(tmp_path, seed=2, pool_size=400)
    pool, targets = read_records(paths["pool"]), read_records([paths["targets"]])
    chosen = np.random.default_rng(0).choice(len(pool), 60, replace=False)
    # Independent truth: the generator's own "task" field of each raw record.
    by_id = {json.loads(line)["id"]: json.loads(line)["task"] for p in paths["pool"] for line in open(p)}
    truth = np.mean([by_id[pool[i].id] == "last_letter" for i in chosen])
    demo_share = target_share([pool[i] for i in chosen], demo_relevance("last_letter"))
    measured = measure_selections(pool, targets, {"x": chosen}, ShareSettings(target_source_regex="^last_letter_(en|es)$"))
    assert demo_share == measured["rows"]["x"]["target_share"] == pytest.approx(truth)
    assert measured["pool"]["target_share"] == pytest.approx(0.05)
    # The default rule (the targets' own source) counts only the targets' form: a different, smaller number.
    default = measure_selections(pool, targets, {"x": chosen}, ShareSettings())
    assert default["pool"]["target_share"] == pytest.approx(0.01)


def test_rerun_keeps_the_first_runs_timings(tmp_path):
    from lightning_less.recipes.steps import write_timings

    path = tmp_path / "timings.json"
    write_timings(path, {"less": 100.0, "total": 150.0})
    write_timings(path, {"less": 0.5, "rds_plus_select": 3.0, "total": 4.0})
    assert json.loads(path.read_text()) == {"less": 100.0, "rds_plus_select": 3.0, "total": 150.0, "last_run_total": 4.0}
