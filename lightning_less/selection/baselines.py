"""Baselines beside LESS (``docs/algorithms.md`` §3): random, BM25 and DSIR.

RDS is not here: it is the cosine / subtask aggregation / top-k of LESS on hidden
states, so it reuses :func:`lightning_less.selection.scoring.cosine_scores`.

Tokens (BM25 and DSIR): the text is lower-cased, every Unicode punctuation character
(category ``P*``) is removed, and the rest is split on whitespace. There is no
stopword removal and no stemming. Symbols and combining marks are kept, so scripts
such as Bengali keep their vowel signs.

BM25 computes the scores of ``bm25s``'s default ``"lucene"`` variant (k1=1.5, b=0.75) on
its own compact index (read streamed; tested equal to ``bm25s``):
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
import math
import sys
import unicodedata
from array import array
from functools import lru_cache
from typing import Any, Iterable, Sequence

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


def _token_ids(texts: Iterable[str], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every text's tokens as ids of ``vocab`` (grown as words appear): ``(ids [total] int32, lengths [n] int64)``."""
    ids, lengths = array("i"), array("q")
    for text in texts:
        words = tokenize(text)
        ids.extend(vocab.setdefault(w, len(vocab)) for w in words)
        lengths.append(len(words))
    return np.frombuffer(ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64)


def bm25_scores(
    pool: Sequence[Record],
    targets: Sequence[Record],
    k1: float = 1.5,
    b: float = 0.75,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """BM25 of each pool prompt against one query per target subtask.

    The pool's prompts are read once, streamed, into a compact term index (token ids as one
    ``int32`` array, then a term-major sparse matrix of the per-(example, term) weights), so
    memory grows with the pool's distinct (example, word) pairs, not its text. The weights
    and their summation order are those of ``bm25s`` (``method="lucene"``, float64): the
    scores are the same to the last bit.

    Args:
        pool: pool records; each is indexed by the tokens of its ``prompt_text``.
        targets: target records; a subtask's query is its examples' ``text``
            (prompt and response) concatenated, in target order.
        k1: BM25 ``k1``.
        b: BM25 ``b``.

    Returns:
        ``(score [n], per_subtask [n, S], subtask names)`` with ``score`` the mean over subtasks.
    """
    if not pool:
        raise ValueError("the pool is empty")
    names, groups = group_subtasks(target_subtask_labels(targets))
    vocab: dict[str, int] = {}
    ids, lengths = _token_ids((r.prompt_text for r in pool), vocab)
    n, n_terms = lengths.size, max(len(vocab), 1)
    # One entry per distinct (example, term): sorted by example, then term.
    pairs, tf = np.unique(np.repeat(np.arange(n, dtype=np.int64), lengths) * n_terms + ids, return_counts=True)
    doc, term = pairs // n_terms, pairs % n_terms
    del pairs
    df = np.bincount(term, minlength=n_terms)
    idf = np.asarray([math.log(1 + (n - int(d) + 0.5) / (int(d) + 0.5)) if d else 0.0 for d in df], dtype=np.float64)
    avg_len = lengths.mean()
    weight = idf[term] * (tf / (k1 * ((1 - b) + b * lengths[doc] / avg_len) + tf))
    order = np.argsort(term, kind="stable")  # term-major, examples ascending within a term
    doc, weight = doc[order], weight[order]
    indptr = np.concatenate([[0], np.cumsum(df)])
    per_subtask = np.zeros((n, len(names)), dtype=np.float64)
    for s, group in enumerate(groups):
        query = [vocab[t] for i in group for t in tokenize(targets[i].text) if t in vocab]
        for t in query:  # a query with no word of the pool scores 0 everywhere
            col = slice(indptr[t], indptr[t + 1])
            per_subtask[doc[col], s] += weight[col]
    return per_subtask.mean(axis=1), per_subtask, names


@lru_cache(maxsize=1 << 20)
def _bucket(ngram: str, num_buckets: int) -> int:
    # sha256 mod buckets, as data_selection.hashed_ngram_dsir.hash_buckets.
    return int(hashlib.sha256(ngram.encode("utf-8")).hexdigest(), 16) % num_buckets


def _word_buckets(words: list[str], num_buckets: int) -> np.ndarray:
    ngrams = words + [f"{a} {c}" for a, c in zip(words, words[1:])]
    return np.fromiter((_bucket(g, num_buckets) for g in ngrams), dtype=np.int64, count=len(ngrams))


def hashed_ngram_buckets(text: str, num_buckets: int = DSIR_BUCKETS) -> np.ndarray:
    """The bucket of each unigram and bigram of ``text``'s tokens (one entry per occurrence)."""
    return _word_buckets(tokenize(text), num_buckets)


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

    The pool is read once, streamed; its n-gram buckets are kept as one ``int32`` array
    with per-example counts (memory proportional to the pool's n-grams, not its text).

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

    chunks, block, sizes, n_tokens = [], [], array("q"), array("q")
    for r in pool:
        words = tokenize(text_of(r))
        block.append(_word_buckets(words, num_buckets).astype(np.int32))
        sizes.append(block[-1].size)
        n_tokens.append(len(words))
        if len(block) == 4096:  # one array per block of examples, not one per example
            chunks.append(np.concatenate(block))
            block = []
    buckets = np.concatenate(chunks + block) if chunks or block else np.zeros(0, dtype=np.int32)
    raw_counts = np.bincount(buckets, minlength=num_buckets)
    target_counts = sum(hashed_ngram_counts(text_of(r), num_buckets) for r in targets)
    raw_total, target_total = raw_counts.sum(), target_counts.sum()
    if raw_total == 0 or target_total == 0:
        raise ValueError("DSIR: the pool or the targets have no tokens")
    log_diff = np.log(target_counts / target_total + DSIR_EPS) - np.log(raw_counts / raw_total + DSIR_EPS)
    # sum over the example's n-gram occurrences == counts(x) . log_diff (each example's own sum, as before)
    values, ends = log_diff[buckets], np.cumsum(np.frombuffer(sizes, dtype=np.int64))
    weights = np.array([values[e - c:e].sum() for e, c in zip(ends.tolist(), sizes)], dtype=np.float64)
    if min_tokens > 0:
        weights[np.frombuffer(n_tokens, dtype=np.int64) < min_tokens] = -np.inf
    return weights


def gumbel_top_k(log_weights: Any, k: int, seed: int) -> np.ndarray:
    """Sample ``k`` without replacement with probability proportional to ``exp(log_weights)``.

    The Gumbel top-k trick: the top-k of ``log_weights + Gumbel(0, 1)`` noise.
    """
    w = np.asarray(log_weights, dtype=np.float64)
    return top_k(w + np.random.default_rng(seed).gumbel(size=w.shape), k)
