"""TydiQA gold passage as the LESS paper evaluates it: the functions its lm-eval task YAMLs name.

The paper's evaluation (open-instruct's ``eval/tydiqa/run_eval.py`` with the Tülu chat
format, 1 shot per language, F1) builds this prompt for a question::

    <|user|>
    {instruction}

    {Passage:} {shot context}
    {Question:} {shot question}
    {Answer:} {shot answer}

    {Passage:} {context}
    {Question:} {question}

    <|assistant|>
    {Answer:}

and generates until a newline. The task YAMLs in ``configs/eval/tasks/less_tydiqa/`` get
it from lm-eval's pieces: ``description`` = the first two lines, the shot's text + ``" "``
+ its answer + ``"\\n\\n"``, then the question's ``prompt``. The docs come from a TydiQA-GoldP
json (SQuAD-like, one row per article), flattened to one row per question of one language.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import partial

from lightning_less.data.benchmarks import TYDIQA_TEMPLATES

_PUNCTUATION = set(string.punctuation)


def flatten_language(dataset, lang: str):
    """One row per question of ``lang`` (id prefix), with the prompt pieces of that language."""
    instruction, p_label, q_label, a_label = TYDIQA_TEMPLATES[lang]

    def rows(batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in ("id", "lang", "context", "question", "answers", "header", "shot", "prompt")}
        for paragraphs in batch["paragraphs"]:
            for paragraph in paragraphs:
                for qa in paragraph["qas"]:
                    if str(qa["id"]).split("-")[0] != lang:
                        continue
                    passage = f"{p_label} {paragraph['context']}\n{q_label} {qa['question']}\n"
                    out["id"].append(str(qa["id"]))
                    out["lang"].append(lang)
                    out["context"].append(paragraph["context"])
                    out["question"].append(qa["question"])
                    out["answers"].append([a["text"] for a in qa["answers"]])
                    out["header"].append(f"<|user|>\n{instruction}\n\n")
                    out["shot"].append(passage + a_label)
                    out["prompt"].append(passage + "\n<|assistant|>\n" + a_label)
        return out

    return dataset.map(rows, batched=True, remove_columns=dataset.column_names)


# One name per language for the YAMLs' ``process_docs: !function ...``.
arabic = partial(flatten_language, lang="arabic")
bengali = partial(flatten_language, lang="bengali")
english = partial(flatten_language, lang="english")
finnish = partial(flatten_language, lang="finnish")
indonesian = partial(flatten_language, lang="indonesian")
korean = partial(flatten_language, lang="korean")
russian = partial(flatten_language, lang="russian")
swahili = partial(flatten_language, lang="swahili")
telugu = partial(flatten_language, lang="telugu")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation (the ``squad`` metric the paper's evaluation uses)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, truth: str) -> float:
    """SQuAD token F1 between two answers."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """F1 and exact match of the stripped generation, each the max over the gold answers (0..1, the paper x100)."""
    prediction = results[0].strip()
    return {
        "f1": max(f1(prediction, a) for a in doc["answers"]),
        "exact_match": max(float(normalize_answer(prediction) == normalize_answer(a)) for a in doc["answers"]),
    }
