"""The built-in demo's data: a multi-task instruction pool in two surface forms, and targets.

Every task exists in two surface forms: English instructions and the same instructions
in Spanish. Word overlap therefore follows the surface form (all Spanish examples share
words such as "de", "la", "palabra") while the task structure (what the answer is made
of) follows the task. The targets are held-out examples of one task in one surface form
(the demo uses ``last_letter`` in Spanish), so a method that follows task structure picks
the target task in both languages, and one that follows words picks Spanish examples.

Files are written in the three record formats a user would bring (Tülu ``messages``,
``prompt``/``completion`` and Alpaca), over several pool files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lightning_less.errors import InputError

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


def random_word(rng: random.Random) -> str:
    """A pronounceable pseudo-word of 2 or 3 consonant-vowel syllables (thousands of distinct words)."""
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))


# scenario -> share of the target task's pool examples in the targets' surface form
SCENARIOS: dict[str, float] = {
    # The easy case: a fifth of the target task's pool examples share the targets' form.
    "in_form": 0.2,
    # The LESS paper's TydiQA case: the target task exists in the pool only in the other form.
    "cross_form": 0.0,
}

# task -> (english template, spanish template, answer function)
TASKS: dict[str, tuple[str, str]] = {
    "first_letter": ("What is the first letter of the word {w}?", "Cual es la primera letra de la palabra {w}?"),
    "last_letter": ("What is the last letter of the word {w}?", "Cual es la ultima letra de la palabra {w}?"),
    "uppercase": ("Write the word {w} in capital letters.", "Escribe la palabra {w} en mayusculas."),
    "reverse": ("Write the word {w} backwards.", "Escribe la palabra {w} al reves."),
    "length": ("How many letters does the word {w} have?", "Cuantas letras tiene la palabra {w}?"),
    "add": ("What is {a} plus {b}?", "Cuanto es {a} mas {b}?"),
    "repeat": ("Say the word {w} two times.", "Di la palabra {w} dos veces."),
    "bigger": ("Which number is bigger, {a} or {b}?", "Que numero es mayor, {a} o {b}?"),
}


def _answer(task: str, w: str, a: int, b: int) -> str:
    return {
        "first_letter": lambda: w[0],
        "last_letter": lambda: w[-1],
        "uppercase": lambda: w.upper(),
        "reverse": lambda: w[::-1],
        "length": lambda: str(len(w)),
        "add": lambda: str(a + b),
        "repeat": lambda: f"{w} {w}",
        "bigger": lambda: str(max(a, b)),
    }[task]()


def make_example(task: str, form: str, rng: random.Random) -> tuple[str, str]:
    """One ``(prompt, answer)`` pair of a task in a surface form (``en`` or ``es``)."""
    w = random_word(rng)
    a, b = rng.randint(1, 49), rng.randint(1, 49)
    while a == b:
        b = rng.randint(1, 49)
    template = TASKS[task][0 if form == "en" else 1]
    return template.format(w=w, a=a, b=b), _answer(task, w, a, b)


def _record(fmt: str, rid: str, source: str, prompt: str, answer: str, extra: dict) -> dict:
    if fmt == "messages":
        rec = {"dataset": source, "id": rid, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    elif fmt == "prompt_completion":
        rec = {"dataset": source, "id": rid, "prompt": prompt, "completion": answer}
    else:
        rec = {"dataset": source, "id": rid, "instruction": prompt, "input": "", "output": answer}
    rec.update(extra)
    return rec


def generate_demo_data(
    output: str | Path,
    seed: int = 0,
    pool_size: int = 2400,
    target_task: str = "last_letter",
    target_form: str = "es",
    n_targets: int = 8,
    n_eval: int = 64,
    target_pool_share: float = 0.05,
    target_form_share: float | None = None,
    scenario: str = "in_form",
) -> dict[str, list[str] | str]:
    """Write the demo's pool (3 files, 3 formats), targets, and held-out evaluation set.

    The pool holds every task in both surface forms; the target task makes up
    ``target_pool_share`` of it, of which only ``target_form_share`` is in the targets'
    surface form (as in the LESS paper's TydiQA case, where the target language is rare in
    the pool but the task is common in English). ``scenario`` picks ``target_form_share``
    (:data:`SCENARIOS`: ``in_form`` 0.2, ``cross_form`` 0.0, the target task only in the
    other form) unless it is given. Targets and evaluation examples are the target task in
    the target form, disjoint from the pool's prompts.

    Returns:
        ``{"pool": [paths], "targets": path, "eval": path}``.
    """
    if target_task not in TASKS:
        raise ValueError(f"unknown target_task {target_task!r}: expected one of {sorted(TASKS)}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: expected one of {sorted(SCENARIOS)}")
    if target_form_share is None:
        target_form_share = SCENARIOS[scenario]
    if not 0.0 <= target_form_share <= 1.0:
        raise ValueError(f"target_form_share must be in [0, 1], got {target_form_share}")
    if target_form not in ("en", "es"):
        raise ValueError(f"target_form must be 'en' or 'es', got {target_form!r}")
    rng = random.Random(seed)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    n_target = max(2, int(round(pool_size * target_pool_share)))
    others = [t for t in TASKS if t != target_task]
    pool: list[tuple[str, str, str, str]] = []  # (task, form, prompt, answer)
    other_form = "en" if target_form == "es" else "es"
    n_in_form = int(round(n_target * target_form_share))
    for i in range(n_target):
        form = target_form if i < n_in_form else other_form
        pool.append((target_task, form, *make_example(target_task, form, rng)))
    for i in range(pool_size - n_target):
        task = others[i % len(others)]
        form = "en" if (i // len(others)) % 2 == 0 else "es"
        pool.append((task, form, *make_example(task, form, rng)))
    rng.shuffle(pool)
    pool_prompts = {p for _, _, p, _ in pool}

    formats = ["messages", "prompt_completion", "alpaca"]
    files = [out / f"pool_{i}_{fmt}.jsonl" for i, fmt in enumerate(formats)]
    handles = [open(f, "w", encoding="utf-8") for f in files]
    try:
        for i, (task, form, prompt, answer) in enumerate(pool):
            k = i % len(files)
            rec = _record(formats[k], f"pool-{i}", f"{task}_{form}", prompt, answer, {"task": task, "form": form})
            handles[k].write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        for h in handles:
            h.close()

    def held_out(n: int, used: set[str]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for _ in range(100 * n):
            prompt, answer = make_example(target_task, target_form, rng)
            if prompt not in used:
                used.add(prompt)
                found.append((prompt, answer))
            if len(found) == n:
                return found
        raise ValueError(f"cannot draw {n} distinct held-out {target_task} examples")

    used = set(pool_prompts)
    name = f"{target_task}_{target_form}"
    paths = {"targets": out / "targets.jsonl", "eval": out / "eval.jsonl"}
    for key, n in (("targets", n_targets), ("eval", n_eval)):
        with open(paths[key], "w", encoding="utf-8") as f:
            for j, (prompt, answer) in enumerate(held_out(n, used)):
                rec = _record("messages", f"{key}-{j}", name, prompt, answer, {"subtask": name, "task": target_task, "form": target_form})
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"pool": [str(f) for f in files], "targets": str(paths["targets"]), "eval": str(paths["eval"])}


def generate_pretraining_data(path: str | Path, seed: int = 0, n: int = 3000, exclude_task: str = "last_letter") -> str:
    """A "pretraining" corpus for the demo's base model: every task but the target task, both forms.

    Stands in for a pretrained LLM that knows the instruction format but not the target task.
    """
    rng = random.Random(10_000 + seed)
    tasks = [t for t in TASKS if t != exclude_task]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            task, form = tasks[i % len(tasks)], ("en", "es")[(i // len(tasks)) % 2]
            prompt, answer = make_example(task, form, rng)
            f.write(json.dumps(_record("messages", f"pre-{i}", f"{task}_{form}", prompt, answer, {}), ensure_ascii=False) + "\n")
    return str(path)


def demo_data(
    *,
    output: str = "demo_data",
    seed: int = 0,
    pool_size: int = 2400,
    target_task: str = "last_letter",
    scenario: str = "in_form",
) -> dict[str, list[str] | str]:
    """Write the built-in demo's data: a pool of 3 jsonl files in 3 formats, targets and an evaluation set.

    Args:
        output: directory to write into (created if needed; existing files are replaced).
        seed: the data's seed (the same seed writes the same bytes).
        pool_size: number of pool examples.
        target_task: the task the targets and evaluation examples come from (``last_letter``,
            ``first_letter``, ``uppercase``, ``reverse``, ``length``, ``add``, ``repeat``, ``bigger``).
        scenario: ``in_form`` (a fifth of the target task's pool examples in the targets' form) or
            ``cross_form`` (the target task only in the other form).

    Returns:
        The files written: ``{"pool": [3 paths], "targets": path, "eval": path}``.
    """
    if target_task not in TASKS:
        raise InputError(f"--target_task: unknown task {target_task!r}; choose one of {sorted(TASKS)}")
    if pool_size < 3:  # one example per pool file at least: an empty jsonl file is refused by every reader
        raise InputError(f"--pool_size: {pool_size} is too small; give at least 3 (the pool is spread over 3 files)")
    if scenario not in SCENARIOS:
        raise InputError(f"--scenario: unknown scenario {scenario!r}; choose one of {sorted(SCENARIOS)}")
    return generate_demo_data(output, seed=seed, pool_size=pool_size, target_task=target_task, scenario=scenario)
