"""RDS and RDS+: hand-computable selections, and both methods through the registry on the hidden-state pass
(the features themselves are checked one example at a time in tests/passes/test_hidden_states.py)."""

import numpy as np
import pytest

from lightning_less.models.tiny import resolve_model_path
from lightning_less.passes.hidden_states import compute_hidden_states
from lightning_less.selection.runner import run_selection
from lightning_less.selection.methods.rds import select_rds
from tests.helpers import qa_records, write_jsonl


def test_rds_selection_by_hand():
    # Pool rows at known angles to the two subtask means; the cosine ranking is computable by hand.
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [3.0, 0.1]])
    targets = np.array([[2.0, 0.0], [0.0, 5.0]])
    result = select_rds(pool, targets, ["a", "b"], k=3)
    # max over subtasks of cosines: [1, 1, 0.707, 0, 0.9994]; ties by index.
    assert list(result.selected) == [0, 1, 4]
    np.testing.assert_allclose(result.scores, [1.0, 1.0, np.sqrt(0.5), 0.0, 3 / np.sqrt(9.01)], rtol=1e-6)


def test_rds_plus_round_robin_alternates_subtasks_by_hand():
    # Subtask "a" prefers rows 0, 2; subtask "b" prefers rows 1, 3 (cosines computable by hand).
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.05]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = select_rds(pool, targets, ["a", "b"], k=4, aggregation="round_robin")
    # a's best is 0, b's best 1, then a's next (4: 0.9988 > 2: 0.9939), then b's next (3).
    assert list(result.selected) == [0, 1, 4, 3]


@pytest.mark.parametrize("method,pooling", [("rds", "last"), ("rds_plus", "weighted_mean"), ("rds_response", "response_mean")])
def test_methods_select_by_their_pooling(tmp_path, method, pooling):
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_records(12, prefix="p"))
    targets = write_jsonl(tmp_path / "targets.jsonl", [{**r, "subtask": "s"} for r in qa_records(3, prefix="t")])
    model = str(resolve_model_path("builtin:tiny-llama"))
    out = run_selection(method, [str(pool)], [str(targets)], tmp_path / method, count=4, model=model, max_length=64)
    # An independent recomputation: the pass's features, cosine, mean over the targets.
    p = compute_hidden_states(model, [str(pool)], tmp_path / "p", pooling=pooling, max_length=64)
    t = compute_hidden_states(model, [str(targets)], tmp_path / "t", pooling=pooling, max_length=64)
    cos = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    expected = np.lexsort((np.arange(len(p)), -cos.mean(1)))[:4]
    from lightning_less.selection.outputs import read_selection

    assert list(read_selection(out).selected) == list(expected)
