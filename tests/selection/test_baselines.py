"""Baselines: BM25 and DSIR against hand computations, seeded random (docs/algorithms.md §3)."""

import math

import numpy as np
import pytest

from lightning_less.data.records import Record
from lightning_less.selection.baselines import (
    _bucket,
    bm25_scores,
    dsir_weights,
    gumbel_top_k,
    hashed_ngram_counts,
    random_select,
    tokenize,
)


def rec(i, prompt, completion="ok", subtask=None):
    messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": completion})
    return Record(index=i, id=str(i), source="src", subtask=subtask, path="mem.jsonl", line=i + 1, messages=messages)


def test_tokenize():
    assert tokenize("The DOG! ran, (fast)... it's a-ok & 42") == ["the", "dog", "ran", "fast", "its", "aok", "42"]
    assert tokenize("Grüße «বাংলা» ভাষা।") == ["grüße", "বাংলা", "ভাষা"]  # vowel signs kept


def test_bm25_matches_hand_computation():
    pool = [
        rec(0, "The cat sat on the mat.", completion="birds birds"),  # only prompts are indexed
        rec(1, "A dog! The DOG ran."),
        rec(2, "Cats, dogs & birds"),
    ]
    targets = [
        rec(0, "cat?", "dog", subtask="s1"),
        rec(1, "birds sing", "yes", subtask="s2"),
        rec(2, "the mat", "ran", subtask="s1"),
    ]
    score, per_subtask, names = bm25_scores(pool, targets)
    assert names == ("s1", "s2")

    # Corpus: d0 = the cat sat on the mat (6), d1 = a dog the dog ran (5),
    # d2 = cats dogs birds (3; "&" is punctuation). N = 3, avgdl = 14 / 3.
    k1, b, n_docs, avgdl = 1.5, 0.75, 3, 14 / 3
    lengths = [6, 5, 3]
    tf = [
        {"the": 2, "cat": 1, "sat": 1, "on": 1, "mat": 1},
        {"a": 1, "dog": 2, "the": 1, "ran": 1},
        {"cats": 1, "dogs": 1, "birds": 1},
    ]
    df = {"the": 2, "cat": 1, "mat": 1, "dog": 1, "ran": 1, "birds": 1}

    def idf(t):  # bm25s "lucene" variant
        return math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))

    def bm25(query, d):
        total = 0.0
        for t in query:  # every occurrence of a query term counts
            f = tf[d].get(t, 0)
            total += idf(t) * f / (f + k1 * (1 - b + b * lengths[d] / avgdl)) if f else 0.0
        return total

    q1 = ["cat", "dog", "the", "mat", "ran"]  # s1: its two targets' texts, concatenated
    q2 = ["birds", "sing", "yes"]  # unknown words score nothing
    expected = np.array([[bm25(q1, d), bm25(q2, d)] for d in range(3)])
    np.testing.assert_allclose(per_subtask, expected, rtol=1e-9)
    np.testing.assert_allclose(score, expected.mean(axis=1), rtol=1e-9)
    assert expected[0, 1] == 0.0 and expected[2, 1] > 0  # d0's response "birds" is not indexed


def test_bm25_query_without_known_words_scores_zero():
    pool = [rec(0, "alpha beta"), rec(1, "gamma")]
    score, per_subtask, _ = bm25_scores(pool, [rec(0, "zzz", "yyy", subtask="x")])
    assert np.all(per_subtask == 0) and np.all(score == 0)


def test_dsir_hand_computation():
    pool = [rec(0, "Apple banana", "ok"), rec(1, "zebra yak", "ok")]
    targets = [rec(0, "apple banana", "apple")]
    ngrams = ["apple", "banana", "ok", "apple banana", "banana ok"]
    ngrams += ["zebra", "yak", "zebra yak", "yak ok", "banana apple"]
    assert len({_bucket(g, 10_000) for g in ngrams}) == len(ngrams)  # no collisions: exact check below

    weights = dsir_weights(pool, targets)
    eps = 1e-8
    # Raw (pool) n-grams, 10 in all: doc0 = apple, banana, ok, "apple banana", "banana ok";
    # doc1 = zebra, yak, ok, "zebra yak", "yak ok". p_raw = 1/10 each, "ok" 2/10.
    # Target n-grams, 5: apple x2, banana, "apple banana", "banana apple".
    p_raw = {g: 0.1 for g in ngrams}
    p_raw["ok"], p_raw["banana apple"] = 0.2, 0.0
    p_t = {"apple": 0.4, "banana": 0.2, "apple banana": 0.2, "banana apple": 0.2}

    def log_ratio(g):
        return math.log(p_t.get(g, 0.0) + eps) - math.log(p_raw[g] + eps)

    doc0 = sum(log_ratio(g) for g in ["apple", "banana", "ok", "apple banana", "banana ok"])
    doc1 = sum(log_ratio(g) for g in ["zebra", "yak", "ok", "zebra yak", "yak ok"])
    np.testing.assert_allclose(weights, [doc0, doc1], rtol=1e-12)
    assert weights[0] > weights[1]

    # The prompt-only variant and the minimum length.
    assert dsir_weights(pool, targets, field="prompt")[0] > 0
    assert dsir_weights(pool, targets, min_tokens=6)[0] == -np.inf


def test_hashed_ngrams_match_data_selection_package():
    hashed = pytest.importorskip("data_selection.hashed_ngram_dsir")
    text = "the quick brown fox jumps over the lazy dog"
    np.testing.assert_array_equal(hashed_ngram_counts(text), hashed.get_ngram_counts(text, n=2, num_buckets=10_000))


def test_gumbel_top_k_is_seeded():
    w = np.log(np.array([1.0, 1.0, 50.0, 1.0, 1.0, 30.0]))
    a = gumbel_top_k(w, 2, seed=0)
    assert np.array_equal(a, gumbel_top_k(w, 2, seed=0)) and np.unique(a).size == 2
    picks = [set(gumbel_top_k(w, 2, seed=s).tolist()) for s in range(20)]
    assert sum(p == {2, 5} for p in picks) >= 10  # heavy weights dominate
    assert len({frozenset(p) for p in picks}) > 1  # but it is a sample


def test_random_select():
    a = random_select(100, 10, seed=0)
    assert np.array_equal(a, random_select(100, 10, seed=0))
    assert a.size == 10 and np.unique(a).size == 10 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, random_select(100, 10, seed=1))
    assert random_select(5, 5, seed=3).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="k must be"):
        random_select(5, 6, seed=0)


def test_bm25_compact_index_equals_bm25s_to_the_bit():
    # Catches: a different idf / length normalisation / summation order than bm25s's lucene variant.
    import bm25s

    from lightning_less.selection.baselines import bm25_scores

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]

    def rec(i: int, n_words: int, subtask: str | None = None) -> Record:
        text = " ".join(words[j] for j in rng.integers(0, 40, size=n_words))
        return Record(i, str(i), "s", subtask, "p", i + 1,
                      ({"role": "user", "content": text or "x"}, {"role": "assistant", "content": "a b"}))

    pool = [rec(i, int(rng.integers(0, 15))) for i in range(300)]
    targets = [rec(i, 6, f"t{i % 2}") for i in range(6)]
    _, per_subtask, _ = bm25_scores(pool, targets)
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene", dtype="float64")
    ref.index([tokenize(r.prompt_text) for r in pool], show_progress=False)
    for s, name in enumerate(("t0", "t1")):
        query = [t for r in targets if r.subtask == name for t in tokenize(r.text)]
        np.testing.assert_array_equal(per_subtask[:, s], ref.get_scores(ref.get_tokens_ids(query)))
