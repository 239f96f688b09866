"""Baselines beside LESS (``docs/algorithms.md`` section 3): random, BM25 and DSIR.

RDS is not here: it is the cosine / subtask aggregation / top-k of LESS on hidden
states, so it reuses :func:`lightning_less.selection.scoring.cosine_scores`.

Tokens (BM25 and DSIR): the text is lower-cased, every Unicode punctuation character
(category ``P*``) is removed, and the rest is split on whitespace. There is no
stopword removal and no stemming. Symbols and combining marks are kept, so scripts
such as Bengali keep their vowel signs.

BM25 uses ``bm25s`` with its default ``"lucene"`` variant, k1=1.5, b=0.75:
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and term weight
``tf / (tf + k1 * (1 - b + b * |d| / avgdl))`` (Lucene drops Okapi's constant
``k1 + 1`` factor, which does not change rankings). A query term counts once per
occurrence in the query, so a subtask query, made of its examples' texts
concatenated, weights the words its examples use often.

DSIR: our own implementation, not the ``data-selection`` package. The package is
file-based (it reads jsonl paths, writes caches and resampled files to disk, runs a
process pool) and drops examples under 100 words by default; wrapping it for
in-memory records meant temporary files and subprocesses for a few lines of math,
and its Gumbel sampling uses the unseeded global ``np.random``. We keep its model
exactly: unigram + bigram features hashed into 10,000 buckets with sha256 (the
package's hash, so buckets agree for the same tokens), bag-of-ngram distributions
``p = counts / sum(counts)`` of the targets and of the raw pool, the package's
smoothing ``log(p + 1e-8)``, and importance weight
``w(x) = sum_b c_b(x) * (log(p_target,b + 1e-8) - log(p_raw,b + 1e-8))``.
The raw distribution is fitted on the whole pool. No minimum length by default
(``min_tokens`` can rank short examples last). Selection is plain top-k by default,
or Gumbel top-k (``keys = w + Gumbel(0, 1)``) with a seeded Generator.
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from lightning_less.data.records import Record
from lightning_less.selection.budget import top_k
from lightning_less.selection.scoring import group_subtasks

DSIR_BUCKETS = 10_000
DSIR_EPS = 1e-8


def random_select(n: int, k: int, seed: int) -> np.ndarray:
    """A uniform random sample of ``k`` of ``n`` indices, seeded; ascending."""
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k}")
    return np.sort(np.random.default_rng(seed).choice(int(n), size=int(k), replace=False)).astype(np.int64)


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def tokenize(text: str) -> list[str]:
    """Lower-cased, punctuation-stripped, whitespace-split tokens (no stopwords, no stemming)."""
    return text.lower().translate(_punctuation_table()).split()


def target_subtask_labels(targets: Sequence[Record]) -> list[str]:
    """Each target's subtask, falling back to its source when it has none."""
    return [r.subtask if r.subtask is not None else r.source for r in targets]


def bm25_scores(
    pool: Sequence[Record],
    targets: Sequence[Record],
    k1: float = 1.5,
    b: float = 0.75,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """BM25 of each pool prompt against one query per target subtask.

    Args:
        pool: pool records; each is indexed by the tokens of its ``prompt_text``.
        targets: target records; a subtask's query is its examples' ``text``
            (prompt and response) concatenated, in target order.
        k1: BM25 ``k1``.
        b: BM25 ``b``.

    Returns:
        ``(score [n], per_subtask [n, S], subtask names)`` with ``score`` the mean over subtasks.
    """
    import bm25s

    if not pool:
        raise ValueError("the pool is empty")
    names, groups = group_subtasks(target_subtask_labels(targets))
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    retriever.index([tokenize(r.prompt_text) for r in pool], show_progress=False)
    per_subtask = np.zeros((len(pool), len(names)), dtype=np.float64)
    for s, group in enumerate(groups):
        query = [t for i in group for t in tokenize(targets[i].text)]
        ids = retriever.get_tokens_ids(query)
        if ids:  # a query with no word of the pool scores 0 everywhere
            per_subtask[:, s] = retriever.get_scores(ids)
    return per_subtask.mean(axis=1), per_subtask, names


@lru_cache(maxsize=1 << 20)
def _bucket(ngram: str, num_buckets: int) -> int:
    # sha256 mod buckets, as data_selection.hashed_ngram_dsir.hash_buckets.
    return int(hashlib.sha256(ngram.encode("utf-8")).hexdigest(), 16) % num_buckets


def hashed_ngram_buckets(text: str, num_buckets: int = DSIR_BUCKETS) -> np.ndarray:
    """The bucket of each unigram and bigram of ``text``'s tokens (one entry per occurrence)."""
    words = tokenize(text)
    ngrams = words + [f"{a} {c}" for a, c in zip(words, words[1:])]
    return np.fromiter((_bucket(g, num_buckets) for g in ngrams), dtype=np.int64, count=len(ngrams))


def hashed_ngram_counts(text: str, num_buckets: int = DSIR_BUCKETS) -> np.ndarray:
    """Unigram + bigram counts of ``text``'s tokens, hashed into ``num_buckets`` buckets."""
    return np.bincount(hashed_ngram_buckets(text, num_buckets), minlength=num_buckets)


def dsir_weights(
    pool: Sequence[Record],
    targets: Sequence[Record],
    num_buckets: int = DSIR_BUCKETS,
    min_tokens: int = 0,
    field: str = "text",
) -> np.ndarray:
    """DSIR log importance weights of the pool examples.

    Args:
        pool: pool records (the "raw" distribution is fitted on all of them).
        targets: target records.
        num_buckets: hash buckets (DSIR: 10,000).
        min_tokens: examples with fewer tokens get weight ``-inf`` (ranked last).
        field: which text of a record to use: ``"text"`` (all turns) or ``"prompt"``.

    Returns:
        ``[n]`` float64 weights ``sum_b c_b(x) * (log p_target,b - log p_raw,b)``.
    """
    if field not in ("text", "prompt"):
        raise ValueError(f"field must be 'text' or 'prompt', got {field!r}")
    if not pool or not targets:
        raise ValueError("DSIR needs a non-empty pool and non-empty targets")

    def text_of(r: Record) -> str:
        return r.text if field == "text" else r.prompt_text

    # Per-example bucket lists rather than a dense [n, buckets] matrix: memory stays
    # proportional to the pool's n-grams.
    pool_buckets = [hashed_ngram_buckets(text_of(r), num_buckets) for r in pool]
    raw_counts = np.bincount(np.concatenate(pool_buckets), minlength=num_buckets)
    target_counts = sum(hashed_ngram_counts(text_of(r), num_buckets) for r in targets)
    raw_total, target_total = raw_counts.sum(), target_counts.sum()
    if raw_total == 0 or target_total == 0:
        raise ValueError("DSIR: the pool or the targets have no tokens")
    log_diff = np.log(target_counts / target_total + DSIR_EPS) - np.log(raw_counts / raw_total + DSIR_EPS)
    # sum over the example's n-gram occurrences == counts(x) . log_diff
    weights = np.array([log_diff[bkt].sum() for bkt in pool_buckets], dtype=np.float64)
    if min_tokens > 0:
        n_tokens = np.array([len(tokenize(text_of(r))) for r in pool])
        weights[n_tokens < min_tokens] = -np.inf
    return weights


def gumbel_top_k(log_weights: Any, k: int, seed: int) -> np.ndarray:
    """Sample ``k`` without replacement with probability proportional to ``exp(log_weights)``.

    The Gumbel top-k trick: the top-k of ``log_weights + Gumbel(0, 1)`` noise.
    """
    w = np.asarray(log_weights, dtype=np.float64)
    return top_k(w + np.random.default_rng(seed).gumbel(size=w.shape), k)
