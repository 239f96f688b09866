import json
from collections import Counter

import pytest

from lightning_less.data.demo import TASKS, generate_demo_data, generate_pretraining_data
from lightning_less.data.records import read_records


def test_demo_pool_composition_and_formats(tmp_path):
    paths = generate_demo_data(tmp_path, seed=1, pool_size=400, target_task="last_letter", target_form="es",
                               target_pool_share=0.05, target_form_share=0.25)
    pool = read_records(paths["pool"])
    assert len(pool) == 400
    sources = Counter(r.source for r in pool)
    assert sources["last_letter_es"] == 5 and sources["last_letter_en"] == 15
    assert {s.rsplit("_", 1)[0] for s in sources} == set(TASKS)
    keys = [set(json.loads(open(p).readline())) for p in paths["pool"]]
    assert "messages" in keys[0] and "prompt" in keys[1] and "instruction" in keys[2]
    targets, evals = read_records([paths["targets"]]), read_records([paths["eval"]])
    assert {t.subtask for t in targets} == {"last_letter_es"}
    prompts = {r.prompt_text for r in pool}
    held_out = [r.prompt_text for r in targets + evals]
    assert not prompts & set(held_out) and len(set(held_out)) == len(held_out)
    for r in targets + evals:  # answers are right
        word = r.prompt_text.rstrip("?").split()[-1]
        assert r.response_text == word[-1]


def test_demo_data_is_seeded(tmp_path):
    a = generate_demo_data(tmp_path / "a", seed=3, pool_size=200)
    b = generate_demo_data(tmp_path / "b", seed=3, pool_size=200)
    c = generate_demo_data(tmp_path / "c", seed=4, pool_size=200)
    read = lambda paths: [open(p, "rb").read() for p in paths["pool"] + [paths["targets"], paths["eval"]]]  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)


def test_pretraining_corpus_leaves_out_the_target_task(tmp_path):
    path = generate_pretraining_data(tmp_path / "pre.jsonl", n=100, exclude_task="last_letter")
    assert not any(r.source.startswith("last_letter") for r in read_records([path]))


def test_bad_demo_arguments(tmp_path):
    with pytest.raises(ValueError, match="target_task"):
        generate_demo_data(tmp_path, target_task="nope")


@pytest.mark.parametrize("scenario,n_es,n_en", [("in_form", 24, 96), ("cross_form", 0, 120)])
def test_scenarios_place_the_target_task_in_the_right_forms(tmp_path, scenario, n_es, n_en):
    # 5% of 2400 = 120 target-task examples; in_form puts a fifth of them in the targets' form, cross_form none.
    pool = read_records(generate_demo_data(tmp_path, seed=0, scenario=scenario)["pool"])
    sources = Counter(r.source for r in pool)
    assert (sources["last_letter_es"], sources["last_letter_en"]) == (n_es, n_en)
    # Everything else as in the default: the other 7 tasks cycled, in blocks of 7 alternating en / es.
    others = [r for r in pool if not r.source.startswith("last_letter_")]
    assert len(others) == 2280 and sum(r.source.endswith("_es") for r in others) == sum((i // 7) % 2 for i in range(2280))


def test_unknown_scenario_is_refused(tmp_path):
    with pytest.raises(ValueError, match="scenario"):
        generate_demo_data(tmp_path, scenario="cross")
