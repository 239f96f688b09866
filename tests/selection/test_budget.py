"""Budgets and deterministic top-k."""

import numpy as np
import pytest

from lightning_less.selection.budget import budget_info, resolve_budget, round_robin_top_k, top_k


def test_fraction_budget():
    assert resolve_budget(1000, fraction=0.05) == 50
    assert resolve_budget(100, fraction=0.29) == 29  # 0.29 * 100 == 28.999... in binary
    assert resolve_budget(270_679, fraction=0.05) == 13_533
    assert resolve_budget(10, fraction=0.01) == 1  # at least one
    assert resolve_budget(7, fraction=1.0) == 7
    assert budget_info(200, fraction=0.1) == {"fraction": 0.1, "count": None, "k": 20}


def test_count_budget():
    assert resolve_budget(10, count=3) == 3
    assert resolve_budget(10, count=10) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"fraction": 0.1, "count": 3}, "exactly one"),
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"fraction": float("nan")}, "fraction"),
        ({"count": 0}, ">= 1"),
        ({"count": 11}, "exceeds the pool size 10"),
        ({"count": 2.5}, "integer"),
    ],
)
def test_bad_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_budget(10, **kwargs)


def test_top_k_breaks_ties_by_index():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, -np.inf, np.inf])
    assert top_k(scores, 1).tolist() == [6]
    assert top_k(scores, 4).tolist() == [6, 1, 2, 4]
    assert top_k(scores, 7).tolist() == [6, 1, 2, 4, 3, 0, 5]
    assert top_k(np.zeros(5, dtype=np.float32), 3).tolist() == [0, 1, 2]


def test_top_k_is_deterministic():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=1000).astype(np.float32)  # many ties
    first = top_k(scores, 100)
    assert np.array_equal(first, top_k(scores.copy(), 100))
    # Within each tied score, indices ascend.
    for value in np.unique(scores[first]):
        idx = first[scores[first] == value]
        assert np.all(np.diff(idx) > 0)
    assert np.all(np.diff(scores[first]) <= 0)


def test_top_k_refuses_nan():
    with pytest.raises(ValueError, match="2 NaN"):
        top_k(np.array([0.1, np.nan, 0.3, np.nan]), 1)
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.array([0.1, 0.2]), 3)


def test_round_robin_hand_example():
    per_subtask = np.array(
        [
            [0.9, 0.1],
            [0.8, 0.95],
            [0.1, 0.9],
            [0.5, 0.2],
        ]
    )
    # s0 takes 0; s1 takes 1; s0's next best unselected is 3 (1 was taken); s1 takes 2.
    assert round_robin_top_k(per_subtask, 3).tolist() == [0, 1, 3]
    assert round_robin_top_k(per_subtask, 4).tolist() == [0, 1, 3, 2]
    # Row 0 is every subtask's best; then each subtask in turn takes its own favourite.
    favourites = np.array([[0.9, 0.9, 0.9], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert round_robin_top_k(favourites, 3).tolist() == [0, 2, 3]
    assert round_robin_top_k(favourites, 4).tolist() == [0, 2, 3, 1]
    # Ties within a subtask by ascending index.
    assert round_robin_top_k(np.zeros((3, 2)), 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="1 NaN"):
        round_robin_top_k(np.array([[np.nan, 0.0], [0.0, 0.0]]), 1)
