"""The shipped ``less_tydiqa`` tasks: the paper's prompt, 1 shot, F1 averaged over languages."""

from __future__ import annotations

import json
import shutil

import pytest
from lm_eval.api.model import LM

from lightning_less.data.benchmarks import TYDIQA_TEMPLATES
from lightning_less.evaluation.harness import HarnessSettings, evaluate_lm
from lightning_less.evaluation.tydiqa import f1, process_results
from tests.evaluation import PAPER_TASKS, REPO

FIXTURE = REPO / "tests" / "fixtures" / "benchmarks" / "tydiqa"


class AnswerEnglishLM(LM):
    """Answers every English question with its first gold answer (with a leading space), every other one wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[tuple[str, str]] = []

    def generate_until(self, requests):
        out = []
        for request in requests:
            self.contexts.append((request.doc["id"], request.args[0]))
            out.append(" " + request.doc["answers"][0] if request.doc["lang"] == "english" else " no idea")
        return out

    def loglikelihood(self, requests):  # pragma: no cover - a generation task
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):  # pragma: no cover - a generation task
        raise NotImplementedError


@pytest.fixture
def less_data(tmp_path, monkeypatch):
    """The TydiQA fixture files where the task YAMLs look for them (the LESS data layout)."""
    target = tmp_path / "data" / "eval" / "tydiqa"
    target.mkdir(parents=True)
    for name in ("tydiqa-goldp-v1.1-train.json", "tydiqa-goldp-v1.1-dev.json"):
        shutil.copy(FIXTURE / name, target / name)
    monkeypatch.chdir(tmp_path)


def _first_train_example(lang: str) -> dict:
    for article in json.loads((FIXTURE / "tydiqa-goldp-v1.1-train.json").read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["id"].startswith(lang + "-"):
                    return {"context": paragraph["context"], **qa}
    raise KeyError(lang)


def _open_instruct_prompt(lang: str, example: dict) -> str:
    """The paper's evaluation prompt (open-instruct run_eval.py, 1 shot, Tülu chat format), rebuilt by hand."""
    instruction, p, q, a = TYDIQA_TEMPLATES[lang]
    shot = _first_train_example(lang)
    prompt = instruction + "\n\n"
    prompt += p + " " + shot["context"] + "\n" + q + " " + shot["question"] + "\n" + a + " " + shot["answers"][0]["text"] + "\n\n"
    prompt += p + " " + example["context"] + "\n" + q + " " + example["question"] + "\n"
    prompt = "<|user|>\n" + prompt + "\n" + "<|assistant|>\n"
    return prompt + a


def test_prompts_are_the_papers_and_f1_is_averaged_over_languages(less_data):
    lm = AnswerEnglishLM()
    settings = HarnessSettings(tasks=["less_tydiqa"], include_path=[str(PAPER_TASKS)], include_defaults=False)
    results = evaluate_lm(lm, settings)
    assert results["n-shot"]["less_tydiqa_english"] == 1
    dev = json.loads((FIXTURE / "tydiqa-goldp-v1.1-dev.json").read_text(encoding="utf-8"))
    expected = {}
    for article in dev["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                lang = qa["id"].split("-")[0]
                expected[qa["id"]] = _open_instruct_prompt(lang, {"context": paragraph["context"], **qa})
    assert dict(lm.contexts) == expected
    # English (2 of 10 questions) right, the 8 other languages wrong: the paper's mean over
    # languages is 1/9; a mean over questions would be 2/10.
    assert results["results"]["less_tydiqa_english"]["f1,none"] == 1.0
    assert results["results"]["less_tydiqa"]["f1,none"] == pytest.approx(1 / 9)
    assert results["results"]["less_tydiqa"]["exact_match,none"] == pytest.approx(1 / 9)


def test_limit_takes_the_first_questions_of_each_language(less_data):
    lm = AnswerEnglishLM()
    settings = HarnessSettings(tasks=["less_tydiqa_english"], limit=1, include_path=[str(PAPER_TASKS)], include_defaults=False)
    evaluate_lm(lm, settings)
    assert [doc_id for doc_id, _ in lm.contexts] == ["english-1001-0"]


def test_squad_f1_and_max_over_answers():
    assert f1("The two lighthouses!", "two") == pytest.approx(2 / 3)  # articles and punctuation dropped
    assert f1("Two", "two.") == 1.0
    assert f1("nothing", "two") == 0.0
    doc = {"answers": ["two", "two lighthouses"]}
    assert process_results(doc, ["  the two lighthouses\n"]) == {"f1": 1.0, "exact_match": 1.0}
    assert process_results(doc, ["two big lighthouses"]) == {"f1": pytest.approx(0.8), "exact_match": 0.0}
