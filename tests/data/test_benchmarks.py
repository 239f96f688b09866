"""Target sets from benchmark files (MMLU, TydiQA, BBH) in their public formats.

The golden files under ``tests/fixtures/benchmarks/expected/`` are regenerated with
``python -c "from tests.data.test_benchmarks import regenerate_golden; regenerate_golden()"``
(only after a deliberate format change; say why in the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from lightning_less.data.benchmarks import TYDIQA_TEMPLATES, build_targets, write_targets
from lightning_less.data.formatting import tulu_segments
from lightning_less.data.records import file_sha256, read_records
from lightning_less.errors import InputError, MissingInputError, StaleOutputError
from lightning_less.recipes.targets import targets

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
INPUTS = {
    "mmlu": FIXTURES / "mmlu",
    "tydiqa": FIXTURES / "tydiqa" / "tydiqa-goldp-v1.1-train.json",
    "bbh": FIXTURES / "bbh",
}
EXPECTED_COUNTS = {
    # abstract_algebra_dev.csv has 6 rows: only the first 5 are targets.
    "mmlu": {"abstract_algebra": 5, "college_biology": 5, "world_religions": 5},
    # english has 2 train questions: only the first is the target.
    "tydiqa": {lang: 1 for lang in ("arabic", "bengali", "english", "finnish", "indonesian", "korean", "russian", "swahili", "telugu")},
    "bbh": {"boolean_expressions": 3, "word_sorting": 3},
}


def regenerate_golden() -> None:
    for benchmark, data in INPUTS.items():
        write_targets(build_targets(benchmark, data), FIXTURES / "expected" / f"{benchmark}_targets.jsonl")


# -------------------------------------------------------------- the LESS reference, rebuilt
# Each function below rebuilds the reference's (query, completion) strings with the Tülu
# chat format, the way less/data_selection/get_validation_dataset.py builds them (pandas
# for MMLU, json for TydiQA, the open-instruct cot-prompt reading for BBH), independently
# of lightning_less.data.benchmarks.
def _less_mmlu(data: Path) -> list[tuple[str, str, str]]:
    out = []
    for subject in sorted(f.split("_dev.csv")[0] for f in os.listdir(data / "dev")):
        df = pd.read_csv(data / "dev" / f"{subject}_dev.csv", header=None)[:5]
        name = "".join(" " + w for w in subject.split("_"))
        for i in range(5):
            prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(name)
            prompt += df.iloc[i, 0]
            for j in range(df.shape[1] - 2):
                prompt += "\n{}. {}".format("ABCD"[j], df.iloc[i, j + 1])
            prompt += "\nAnswer:"
            out.append((subject, "<|user|>\n" + prompt + "\n<|assistant|>\nThe answer is:", " " + df.iloc[i, df.shape[1] - 1]))
    return out


def _less_tydiqa(path: Path) -> list[tuple[str, str, str]]:
    first: dict[str, dict] = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                first.setdefault(qa["id"].split("-")[0], {"context": paragraph["context"], **qa})
    out = []
    for lang in sorted(first):
        example = first[lang]
        prompt, p, q, a = TYDIQA_TEMPLATES[lang]
        prompt += p + " " + example["context"] + "\n" + q + " " + example["question"] + "\n"
        out.append((lang, "<|user|>\n" + prompt + "<|assistant|>\n" + a, " " + example["answers"][0]["text"]))
    return out


def _less_bbh(data: Path) -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((data / "cot-prompts").glob("*.txt")):
        with open(path) as f:
            stuff = "".join(f.readlines()[2:]).split("\n\n")
        exes, task_prompt = stuff[-3:], "\n\n".join(stuff[:-3])
        for i in range(3):
            icl = "".join(ex.split("\nA:")[0] + "\nA:" + ex.split("\nA:")[1] + "\n\n" for ex in exes[:i] + exes[i + 1:])
            question, answer = exes[i].split("\nA:")
            out.append((path.stem, "<|user|>\n" + task_prompt.strip() + "\n\n" + icl + question + "\n<|assistant|>\nA:", answer))
    return out


REFERENCE = {"mmlu": _less_mmlu, "tydiqa": _less_tydiqa, "bbh": _less_bbh}


@pytest.mark.parametrize("bench", ["mmlu", "tydiqa", "bbh"])
def test_records_render_to_the_less_reference_text(bench):
    records = build_targets(bench, INPUTS[bench])
    reference = REFERENCE[bench](INPUTS[bench])
    assert [r["subtask"] for r in records] == [s for s, _, _ in reference]
    for record, (_, query, completion) in zip(records, reference):
        # Our Tülu template renders "<|user|>\n{u}\n<|assistant|>\n{a}</s>\n"; the reference has
        # no end-of-sequence token, and the whitespace that closes a file is stripped.
        rendered = "".join(s.text for s in tulu_segments(record["messages"], eos_token="</s>"))
        assert rendered == (query + completion).rstrip() + "</s>\n"


@pytest.mark.parametrize("bench", ["mmlu", "tydiqa", "bbh"])
def test_counts_per_subtask_and_readable_records(bench, tmp_path):
    result = targets(benchmark=bench, data=str(INPUTS[bench]), output=str(tmp_path / "t.jsonl"))
    assert result["subtasks"] == EXPECTED_COUNTS[bench]
    assert result["examples"] == sum(EXPECTED_COUNTS[bench].values())
    records = read_records(tmp_path / "t.jsonl")
    assert [r.subtask for r in records] == [s for s, n in EXPECTED_COUNTS[bench].items() for _ in range(n)]
    assert {r.source for r in records} == {bench}
    assert len({r.id for r in records}) == len(records)


@pytest.mark.parametrize("bench", ["mmlu", "tydiqa", "bbh"])
def test_output_is_byte_stable(bench, tmp_path):
    a = targets(benchmark=bench, data=str(INPUTS[bench]), output=str(tmp_path / "a.jsonl"))
    golden = FIXTURES / "expected" / f"{bench}_targets.jsonl"
    assert (tmp_path / "a.jsonl").read_bytes() == golden.read_bytes()
    assert a["sha256"] == file_sha256(golden)


def test_one_shot_file_and_dev_json_agree_on_shared_examples(tmp_path):
    from_train = build_targets("tydiqa", INPUTS["tydiqa"], subtasks=["english", "finnish"])
    from_one_shot = build_targets("tydiqa", FIXTURES / "tydiqa" / "tydiqa-one-shot.json")
    assert [r["messages"] for r in from_one_shot] == [r["messages"] for r in from_train]


def test_non_ascii_is_written_as_utf8_text(tmp_path):
    targets(benchmark="tydiqa", data=str(INPUTS["tydiqa"]), output=str(tmp_path / "t.jsonl"), subtasks=["russian"])
    text = (tmp_path / "t.jsonl").read_text(encoding="utf-8")
    assert "Ответ: три" in text and "\\u" not in text


def test_n_per_subtask_and_subtasks(tmp_path):
    records = build_targets("mmlu", INPUTS["mmlu"], n_per_subtask=2, subtasks=["world_religions", "abstract_algebra"])
    assert [(r["subtask"], r["id"]) for r in records] == [
        ("abstract_algebra", "mmlu/abstract_algebra/0"), ("abstract_algebra", "mmlu/abstract_algebra/1"),
        ("world_religions", "mmlu/world_religions/0"), ("world_religions", "mmlu/world_religions/1")]
    # The dev/ directory itself is accepted too.
    assert build_targets("mmlu", INPUTS["mmlu"] / "dev", n_per_subtask=2, subtasks=["world_religions", "abstract_algebra"]) == records
    bbh = build_targets("bbh", INPUTS["bbh"], n_per_subtask=1, subtasks=["word_sorting"])
    assert len(bbh) == 1 and bbh[0]["messages"][0]["content"].endswith("List: pear fig")


def test_user_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="college_biology_dev.csv: 5 rows"):
        build_targets("mmlu", INPUTS["mmlu"], n_per_subtask=6)
    with pytest.raises(InputError, match="1 arabic examples, fewer than the 2"):
        build_targets("tydiqa", INPUTS["tydiqa"], n_per_subtask=2)
    with pytest.raises(InputError, match=r"no subtask \['astronomy'\]"):
        build_targets("mmlu", INPUTS["mmlu"], subtasks=["astronomy"])
    with pytest.raises(InputError, match="unknown benchmark"):
        build_targets("gsm8k", INPUTS["mmlu"])
    with pytest.raises(MissingInputError, match="dev/"):
        build_targets("mmlu", tmp_path)
    bad = tmp_path / "dev" / "x_dev.csv"
    bad.parent.mkdir()
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(InputError, match="x_dev.csv: row 1"):
        build_targets("mmlu", tmp_path)
    lang = tmp_path / "t.json"
    lang.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "klingon-1", "question": "q", "answers": [{"text": "a"}]}]}]}]}))
    with pytest.raises(InputError, match="klingon"):
        build_targets("tydiqa", lang)
    cot = tmp_path / "bbh" / "cot-prompts" / "t.txt"
    cot.parent.mkdir(parents=True)
    cot.write_text("canary\n-----\nTask.\n\nQ: a\nA: b\n\nQ: c\nA: d\n\nQ: e without an answer")
    with pytest.raises(InputError, match=r"t.txt: example 'Q: e without"):
        build_targets("bbh", tmp_path / "bbh")


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text("keep\n")
    with pytest.raises(StaleOutputError, match="--overwrite"):
        targets(benchmark="bbh", data=str(INPUTS["bbh"]), output=str(out))
    assert out.read_text() == "keep\n"
    targets(benchmark="bbh", data=str(INPUTS["bbh"]), output=str(out), overwrite=True)
    assert out.read_bytes() == (FIXTURES / "expected" / "bbh_targets.jsonl").read_bytes()
