"""Response-only labels on a real byte-level BPE tokenizer (SmolLM2's), under its ChatML template and Tülu's."""

from __future__ import annotations

import pytest

from lightning_less.data.formatting import IGNORE_INDEX, encode_messages, tulu_segments
from lightning_less.models.loading import load_tokenizer

# Multi-turn, with a system turn, digits, punctuation and non-ASCII text at the span boundaries.
MESSAGES = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "¿Y cuántos habitantes tiene?"},
    {"role": "assistant", "content": "Unos 2,1 millones (2023), «intra-muros»."},
]
ASSISTANT = [m["content"] for m in MESSAGES if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return load_tokenizer(smollm2_dir)


def labelled_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of labelled positions (each label must be its own token id)."""
    spans, run = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if run:
                spans.append(tokenizer.decode(run))
                run = []
        else:
            assert label == token
            run.append(token)
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def test_chat_template_labels_exactly_the_assistant_turns(tokenizer):
    # Catches: role headers or the generation prompt labelled, a turn's end marker left out, a span
    # cut at a BPE token that straddles its boundary, or a second assistant turn not labelled.
    ids, labels = encode_messages(MESSAGES, tokenizer, template="chat_template")
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    end = tokenizer.eos_token  # ChatML's <|im_end|>
    assert end == "<|im_end|>"
    # A turn's text after the generation prompt: its content, the end marker and the newline of the template.
    assert labelled_spans(tokenizer, ids, labels) == [a + end + "\n" for a in ASSISTANT]


def test_tulu_template_labels_exactly_the_assistant_contents_and_eos(tokenizer):
    ids, labels = encode_messages(MESSAGES, tokenizer, template="tulu")
    text = "".join(s.text for s in tulu_segments(MESSAGES, tokenizer.eos_token))
    assert tokenizer.decode(ids) == tokenizer.bos_token + text
    assert labelled_spans(tokenizer, ids, labels) == [a + tokenizer.eos_token for a in ASSISTANT]
