"""RDS: last non-pad token hidden states (checked one example at a time) and a hand-computable selection."""

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from lightning_less.data.datamodule import InstructionDataset
from lightning_less.models.loading import load_tokenizer
from lightning_less.models.tiny import resolve_model_path
from lightning_less.passes.hidden_states import last_token_hidden_states
from lightning_less.selection.methods.rds import select_rds
from tests.helpers import qa_records, write_jsonl


def test_last_token_hidden_states_equal_one_example_at_a_time(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", qa_records(7))
    model_path = resolve_model_path("builtin:tiny-llama")
    got = last_token_hidden_states(model_path, [str(path)], max_length=64, batch_size=3)
    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    ds = InstructionDataset([str(path)], tok, max_length=64)
    for ex in ds.examples:
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ex.input_ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(got[ex.record.index], h.numpy(), rtol=1e-4, atol=1e-5)


def test_rds_selection_by_hand():
    # Pool rows at known angles to the two subtask means; the cosine ranking is computable by hand.
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [3.0, 0.1]])
    targets = np.array([[2.0, 0.0], [0.0, 5.0]])
    result = select_rds(pool, targets, ["a", "b"], k=3)
    # max over subtasks of cosines: [1, 1, 0.707, 0, 0.9994]; ties by index.
    assert list(result.selected) == [0, 1, 4]
    np.testing.assert_allclose(result.scores, [1.0, 1.0, np.sqrt(0.5), 0.0, 3 / np.sqrt(9.01)], rtol=1e-6)
