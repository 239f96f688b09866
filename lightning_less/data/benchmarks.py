"""Target sets from the LESS paper's benchmarks: MMLU, TydiQA and BBH few-shot examples.

The LESS paper (Xia et al., 2024) selects data for a benchmark by gradient similarity to
that benchmark's own few-shot examples: 5 dev examples per MMLU subject (57 subjects),
1 example per TydiQA language (9 languages) and the 3 chain-of-thought examples of each
BBH task (27 tasks). This module reads them from a local copy in each benchmark's public
format and writes one target record per example, in the ``messages`` format with
``subtask`` = subject / language / task, formatted as the reference code
(``less/data_selection/get_validation_dataset.py``) formats them with the Tülu chat
format: the user turn is the reference's query without ``<|user|>\\n`` and the assistant
turn is the reference's assistant prefix plus its completion, so that rendering a record
with the Tülu template (``<|user|>\\n{user}\\n<|assistant|>\\n{assistant}``) gives the
reference's query + completion. Where we differ is listed in ``docs/evaluation.md``.

Public formats read:

* MMLU: ``<data>/dev/<subject>_dev.csv`` (question, one column per choice, answer letter; no header).
* TydiQA-GoldP: a SQuAD-like json (``{"data": [{"paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text"}]}]}]}]}``, the language is the ``id``'s prefix), or the
  LESS repository's one-shot file (``{"<language>": [{"context", "question", "answers"}]}``).
* BBH: ``<data>/cot-prompts/<task>.txt`` (canary line, ``-----``, task description, then
  ``Q: ...\\nA: ...`` examples separated by blank lines).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from lightning_less.errors import InputError, MissingInputError

BENCHMARKS = ("mmlu", "tydiqa", "bbh")
# The paper's number of target examples per subtask (its few-shot counts).
DEFAULT_PER_SUBTASK = {"mmlu": 5, "tydiqa": 1, "bbh": 3}

# (instruction, passage label, question label, answer label) per language, as in the
# LESS reference (which copies open-instruct's TydiQA evaluation).
TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": ("Answer the following question based on the information in the given passage.", "Passage:", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:", "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:", "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
MMLU_LETTERS = "ABCDEFGHIJ"


def target_record(benchmark: str, subtask: str, index: int, user: str, assistant: str) -> dict:
    """One target record: ``{"id", "dataset", "subtask", "messages"}``."""
    return {
        "id": f"{benchmark}/{subtask}/{index}",
        "dataset": benchmark,
        "subtask": subtask,
        "messages": [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}],
    }


def _subdir(data: Path, name: str, pattern: str) -> Path:
    """``data/name`` when it exists, else ``data`` itself when it holds files matching ``pattern``."""
    if not data.exists():
        raise MissingInputError(f"{data}: no such directory")
    if (data / name).is_dir():
        return data / name
    if data.is_dir() and any(data.glob(pattern)):
        return data
    raise MissingInputError(f"{data}: expected a '{name}/' directory with {pattern} files (the benchmark's public layout)")


def _select(found: Sequence[str], subtasks: Iterable[str] | None, where: Path) -> list[str]:
    if subtasks is None:
        return sorted(found)
    wanted = list(dict.fromkeys(subtasks))
    missing = [s for s in wanted if s not in found]
    if missing:
        raise InputError(f"{where}: no subtask {missing} (found: {sorted(found)})")
    return sorted(wanted)


# ----------------------------------------------------------------------------- MMLU
def mmlu_subject_header(subject: str) -> str:
    """The reference's header; its ``format_subject`` joins words each with a leading space, hence 'about  x'."""
    return "The following are multiple choice questions (with answers) about {}.\n\n".format("".join(" " + w for w in subject.split("_")))


def read_mmlu_csv(path: Path) -> list[list[str]]:
    """Rows of an MMLU csv, each ``[question, choice..., answer letter]``, cells kept verbatim."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    for number, row in enumerate(rows, start=1):
        letters = MMLU_LETTERS[: len(row) - 2]
        if len(row) < 4 or row[-1].strip() not in letters:
            raise InputError(f"{path}: row {number}: expected question, choices, answer letter ({', '.join(letters) or 'A, B, ...'}); got {row!r}")
    return rows


def mmlu_targets(data: str | os.PathLike, n_per_subtask: int = 5, subtasks: Iterable[str] | None = None) -> list[dict]:
    """The first ``n_per_subtask`` dev examples of each subject, formatted as the LESS reference does.

    Args:
        data: MMLU's ``data/`` directory (holding ``dev/``), or the ``dev/`` directory itself.
        n_per_subtask: examples per subject (the paper: 5, all of ``dev``).
        subtasks: subjects to keep (default: every ``<subject>_dev.csv``).
    """
    dev = _subdir(Path(data), "dev", "*_dev.csv")
    found = {p.name[: -len("_dev.csv")]: p for p in dev.glob("*_dev.csv")}
    records = []
    for subject in _select(list(found), subtasks, dev):
        rows = read_mmlu_csv(found[subject])
        if len(rows) < n_per_subtask:
            raise InputError(f"{found[subject]}: {len(rows)} rows, fewer than the {n_per_subtask} examples asked for")
        for i, row in enumerate(rows[:n_per_subtask]):
            question = row[0] + "".join(f"\n{MMLU_LETTERS[j]}. {c}" for j, c in enumerate(row[1:-1])) + "\nAnswer:"
            records.append(target_record("mmlu", subject, i, mmlu_subject_header(subject) + question, "The answer is: " + row[-1].strip()))
    return records


# --------------------------------------------------------------------------- TydiQA
def _tydiqa_examples(path: Path) -> dict[str, list[dict]]:
    """``{language: [{"id", "context", "question", "answer"}]}`` in file order, from either public format."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read TydiQA json: {err}") from err
    by_lang: dict[str, list[dict]] = {}
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):  # SQuAD-like (TydiQA-GoldP v1.1)
        for article in obj["data"]:
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    lang = str(qa["id"]).split("-")[0]
                    by_lang.setdefault(lang, []).append(
                        {"id": str(qa["id"]), "context": paragraph["context"], "question": qa["question"], "answers": qa["answers"]})
    elif isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):  # LESS's one-shot file
        for lang, examples in obj.items():
            by_lang[lang] = [dict(e, id=str(e.get("id", f"{lang}-{i}"))) for i, e in enumerate(examples)]
    else:
        raise InputError(f"{path}: expected TydiQA-GoldP json ({{'data': [...]}}) or a one-shot file ({{'<language>': [...]}})")
    unknown = sorted(set(by_lang) - set(TYDIQA_TEMPLATES))
    if unknown:
        raise InputError(f"{path}: languages {unknown} have no prompt template (known: {sorted(TYDIQA_TEMPLATES)})")
    for lang, examples in by_lang.items():
        for e in examples:
            if not e.get("answers") or not str(e["answers"][0].get("text", "")).strip():
                raise InputError(f"{path}: example {e['id']} ({lang}) has no answer text")
    return by_lang


def tydiqa_targets(data: str | os.PathLike, n_per_subtask: int = 1, subtasks: Iterable[str] | None = None) -> list[dict]:
    """The first ``n_per_subtask`` examples of each language (gold passage), formatted as the LESS reference does.

    The reference's user turn joins the instruction and ``Passage:`` with no separator
    (``...passage.Passage: ...``); we keep that, since the paper's target gradients were
    computed on exactly that text.

    Args:
        data: a TydiQA-GoldP json (the paper's targets come from the train split, the
            same examples its evaluation shows as the one shot) or LESS's one-shot file.
        n_per_subtask: examples per language (the paper: 1).
        subtasks: languages to keep (default: every language in the file).
    """
    path = Path(data)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such TydiQA json file")
    by_lang = _tydiqa_examples(path)
    records = []
    for lang in _select(list(by_lang), subtasks, path):
        if len(by_lang[lang]) < n_per_subtask:
            raise InputError(f"{path}: {len(by_lang[lang])} {lang} examples, fewer than the {n_per_subtask} asked for")
        instruction, p_label, q_label, a_label = TYDIQA_TEMPLATES[lang]
        for i, e in enumerate(by_lang[lang][:n_per_subtask]):
            user = f"{instruction}{p_label} {e['context']}\n{q_label} {e['question']}\n"
            records.append(target_record("tydiqa", lang, i, user, f"{a_label} {e['answers'][0]['text']}"))
    return records


# ------------------------------------------------------------------------------ BBH
def read_cot_prompt(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """``(task description, [(question, answer)])`` of a BBH ``cot-prompts`` file.

    As in the reference, the canary line and ``-----`` (the file's first two lines) are
    dropped, the rest is split on blank lines, the last three blocks are the examples
    and each example is split at its first ``\\nA:``.
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) >= 2 and lines[1].strip() == "-----":
        lines = lines[2:]
    blocks = "".join(lines).split("\n\n")
    if len(blocks) < 4:
        raise InputError(f"{path}: expected a task description and 3 'Q: ...\\nA: ...' examples separated by blank lines")
    examples = []
    for block in blocks[-3:]:
        question, sep, answer = block.partition("\nA:")
        if not sep:
            raise InputError(f"{path}: example {block[:60]!r}... has no '\\nA:'")
        examples.append((question, answer))
    return "\n\n".join(blocks[:-3]), examples


def bbh_targets(data: str | os.PathLike, n_per_subtask: int = 3, subtasks: Iterable[str] | None = None) -> list[dict]:
    """Each BBH task's chain-of-thought examples, each shown after the task's other examples, as in the LESS reference.

    Args:
        data: the BBH directory holding ``cot-prompts/`` (or ``cot-prompts/`` itself).
        n_per_subtask: examples per task (the paper: 3, every example of the prompt).
        subtasks: tasks to keep (default: every ``<task>.txt``).
    """
    prompts = _subdir(Path(data), "cot-prompts", "*.txt")
    found = {p.stem: p for p in prompts.glob("*.txt")}
    if n_per_subtask > 3:
        raise InputError(f"n_per_subtask={n_per_subtask}: a BBH chain-of-thought prompt holds 3 examples")
    records = []
    for task in _select(list(found), subtasks, prompts):
        description, examples = read_cot_prompt(found[task])
        for i in range(n_per_subtask):
            icl = "".join(q + "\nA:" + a + "\n\n" for j, (q, a) in enumerate(examples) if j != i)
            question, answer = examples[i]
            records.append(target_record("bbh", task, i, description.strip() + "\n\n" + icl + question, "A:" + answer))
    return records


# ----------------------------------------------------------------------------- all
_BUILDERS = {"mmlu": mmlu_targets, "tydiqa": tydiqa_targets, "bbh": bbh_targets}


def build_targets(benchmark: str, data: str | os.PathLike, n_per_subtask: int | None = None,
                  subtasks: Iterable[str] | None = None) -> list[dict]:
    """Target records of one benchmark (``mmlu``, ``tydiqa`` or ``bbh``), subtasks sorted, examples in file order."""
    if benchmark not in _BUILDERS:
        raise InputError(f"unknown benchmark {benchmark!r}: expected one of {list(BENCHMARKS)}")
    n = DEFAULT_PER_SUBTASK[benchmark] if n_per_subtask is None else int(n_per_subtask)
    if n < 1:
        raise InputError(f"n_per_subtask must be >= 1, got {n}")
    return _BUILDERS[benchmark](data, n, subtasks)


def write_targets(records: Sequence[dict], output: str | os.PathLike) -> Path:
    """Write records as jsonl (UTF-8, one line each, keys in a fixed order), atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    return output
