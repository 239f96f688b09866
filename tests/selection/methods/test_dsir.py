"""DSIR through the registry: the highest importance weights, computed here without the package's DSIR code."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

from lightning_less.data.records import read_records
from lightning_less.selection.baselines import tokenize
from lightning_less.selection.methods.dsir import select_dsir
from lightning_less.selection.runner import run_selection
from tests.selection.fakes import records, selected_ids, write_records

FRENCH = ["le chat noir dort", "le chat mange", "un chien noir", "le petit chat noir"]
ENGLISH = ["the dog barks", "a red car", "the sun is hot", "green apples fall", "the black cat sleeps", "rain again"]


def brute_force_weights(pool_texts: list[str], target_texts: list[str], buckets: int = 10_000) -> list[float]:
    def counts(text: str) -> Counter:
        words = tokenize(text)
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        return Counter(int(hashlib.sha256(g.encode()).hexdigest(), 16) % buckets for g in grams)

    raw, target = Counter(), Counter()
    for t in pool_texts:
        raw.update(counts(t))
    for t in target_texts:
        target.update(counts(t))
    n_raw, n_target = sum(raw.values()), sum(target.values())
    log_ratio = {b: math.log(target[b] / n_target + 1e-8) - math.log(raw[b] / n_raw + 1e-8) for b in raw}
    return [sum(c * log_ratio[b] for b, c in counts(t).items()) for t in pool_texts]


def test_dsir_selects_the_highest_importance_weights(tmp_path):
    words = ENGLISH[:3] + FRENCH[:2] + ENGLISH[3:] + FRENCH[2:]
    pool = write_records(tmp_path / "pool.jsonl", records(len(words), "p", words=words))
    targets = write_records(tmp_path / "targets.jsonl", records(2, "t", words=["le chat noir", "un chat dort"]))
    weights = brute_force_weights([r.text for r in read_records([pool])], [r.text for r in read_records([targets])])
    best_first = sorted(range(len(weights)), key=lambda i: (-weights[i], i))

    out = run_selection("dsir", [pool], [targets], tmp_path / "sel", count=4)
    assert selected_ids(out) == [f"p{i}" for i in best_first[:4]]
    assert {words[i] for i in best_first[:4]} == set(FRENCH)  # the targets' language, not the other
    pool_records, target_records = read_records([pool]), read_records([targets])
    result = select_dsir(pool_records, target_records, k=4)
    assert result.selected.tolist() == best_first[:4]
    assert min(result.scores[result.selected]) > max(w for i, w in enumerate(result.scores) if i not in best_first[:4])
