"""Golden token / label layouts of the Tülu template and the chat-template path (char tokenizer)."""

from __future__ import annotations

import copy
import re

import pytest

from lightning_less.data.formatting import (
    IGNORE_INDEX,
    chat_template_segments,
    encode_messages,
    has_response_token,
    tulu_prompt,
    tulu_segments,
)
from lightning_less.data.records import read_records

SPECIAL = re.compile(r"(<s>|</s>|<\|system\|>|<\|user\|>|<\|assistant\|>)")


def hand_ids(tok, text: str) -> list[int]:
    """Ids of ``text`` looked up one vocabulary entry at a time (special tokens whole, else per character)."""
    ids = []
    for piece in SPECIAL.split(text):
        if SPECIAL.fullmatch(piece):
            ids.append(tok.convert_tokens_to_ids(piece))
        else:
            ids.extend(tok.convert_tokens_to_ids(list(piece)))
    assert tok.unk_token_id not in ids, f"test text {text!r} has characters outside the char vocabulary"
    return ids


def labelled_spans(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of labelled positions."""
    assert len(ids) == len(labels)
    spans, run = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if run:
                spans.append(tok.decode(run))
                run = []
        else:
            assert label == i, "a label must be the token id at its own (unshifted) position"
            run.append(label)
    if run:
        spans.append(tok.decode(run))
    return spans


def expected_layout(tok, parts: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels built by hand from ``(text, trained)`` parts."""
    ids, labels = [], []
    for text, trained in parts:
        piece = hand_ids(tok, text)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


# --------------------------------------------------------------------------- Tülu golden layouts


def test_hi_yo_exact_ids_and_labels(char_tokenizer):
    tok = char_tokenizer
    ids, labels = encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    user, assistant = tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("<|assistant|>")
    nl, h, i, y, o = tok.convert_tokens_to_ids(["\n", "h", "i", "y", "o"])
    assert ids == [bos, user, nl, h, i, nl, assistant, nl, y, o, eos, nl]
    assert labels == [-100, -100, -100, -100, -100, -100, -100, -100, y, o, eos, -100]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids) == "<s><|user|>\nhi\n<|assistant|>\nyo</s>\n"


def test_tulu_system_user_assistant(char_tokenizer):
    tok = char_tokenizer
    messages = [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "\nWhat is 2+2?  "},
        {"role": "assistant", "content": " It is 4.\n\n"},
    ]
    ids, labels = encode_messages(messages, tok)
    assert tok.decode(ids) == "<s><|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\nIt is 4.</s>\n"
    assert labelled_spans(tok, ids, labels) == ["It is 4.</s>"]
    assert (ids, labels) == expected_layout(
        tok,
        [
            ("<s><|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n", False),
            ("It is 4.</s>", True),
            ("\n", False),
        ],
    )


def test_tulu_multi_turn_labels_both_assistant_turns(char_tokenizer):
    tok = char_tokenizer
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Count to 3."},
        {"role": "assistant", "content": "1 2 3"},
    ]
    ids, labels = encode_messages(messages, tok)
    assert tok.decode(ids) == (
        "<s><|user|>\nHi there\n<|assistant|>\nHello!</s>\n<|user|>\nCount to 3.\n<|assistant|>\n1 2 3</s>\n"
    )
    assert labelled_spans(tok, ids, labels) == ["Hello!</s>", "1 2 3</s>"]
    assert (ids, labels) == expected_layout(
        tok,
        [
            ("<s><|user|>\nHi there\n<|assistant|>\n", False),
            ("Hello!</s>", True),
            ("\n<|user|>\nCount to 3.\n<|assistant|>\n", False),
            ("1 2 3</s>", True),
            ("\n", False),
        ],
    )
    # Every role tag is unlabelled.
    tags = {tok.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<|system|>")}
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i in tags)


def test_tulu_record_ending_with_a_user_turn(char_tokenizer):
    tok = char_tokenizer
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    ids, labels = encode_messages(messages, tok)
    assert tok.decode(ids) == "<s><|user|>\na\n<|assistant|>\nb</s>\n<|user|>\nc\n"
    assert labelled_spans(tok, ids, labels) == ["b</s>"]


def test_prompt_completion_record(char_tokenizer, write_jsonl):
    tok = char_tokenizer
    path = write_jsonl("pc.jsonl", [{"prompt": "Translate: chat ", "completion": " cat"}])
    (record,) = read_records(path)
    ids, labels = encode_messages(record.messages, tok)
    assert tok.decode(ids) == "<s><|user|>\nTranslate: chat\n<|assistant|>\ncat</s>\n"
    assert (ids, labels) == expected_layout(
        tok, [("<s><|user|>\nTranslate: chat\n<|assistant|>\n", False), ("cat</s>", True), ("\n", False)]
    )


def test_alpaca_records(char_tokenizer, write_jsonl):
    tok = char_tokenizer
    path = write_jsonl(
        "alpaca.jsonl",
        [
            {"instruction": "Reverse.", "input": "abc", "output": "cba"},
            {"instruction": "Say yes.", "input": "", "output": "yes"},
        ],
    )
    with_input, without_input = read_records(path)
    ids, labels = encode_messages(with_input.messages, tok)
    assert tok.decode(ids) == "<s><|user|>\nReverse.\n\nabc\n<|assistant|>\ncba</s>\n"
    assert labelled_spans(tok, ids, labels) == ["cba</s>"]
    ids, labels = encode_messages(without_input.messages, tok)
    assert tok.decode(ids) == "<s><|user|>\nSay yes.\n<|assistant|>\nyes</s>\n"
    assert (ids, labels) == expected_layout(
        tok, [("<s><|user|>\nSay yes.\n<|assistant|>\n", False), ("yes</s>", True), ("\n", False)]
    )


def test_add_bos_false(char_tokenizer):
    ids, labels = encode_messages(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], char_tokenizer, add_bos=False
    )
    assert char_tokenizer.decode(ids) == "<|user|>\nhi\n<|assistant|>\nyo</s>\n"
    assert len(labels) == len(ids)


def test_tulu_segments_and_prompt():
    messages = [
        {"role": "system", "content": " s "},
        {"role": "user", "content": " a"},
        {"role": "assistant", "content": "b "},
        {"role": "user", "content": "c"},
    ]
    segments = tulu_segments(messages, "</s>")
    assert [(s.text, s.trained) for s in segments] == [
        ("<|system|>\ns\n", False),
        ("<|user|>\na\n", False),
        ("<|assistant|>\n", False),
        ("b</s>", True),
        ("\n", False),
        ("<|user|>\nc\n", False),
    ]
    # Earlier assistant turns end with EOS exactly as in training.
    assert tulu_prompt(messages, "</s>") == "<|system|>\ns\n<|user|>\na\n<|assistant|>\nb</s>\n<|user|>\nc\n<|assistant|>\n"


def test_generation_prompt_is_a_prefix_of_the_training_text(char_tokenizer):
    tok = char_tokenizer
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    ids, _ = encode_messages(messages, tok)
    prompt = "<s>" + tulu_prompt(messages[:3], tok.eos_token)
    assert tok.decode(ids) == prompt + "d</s>\n"


def test_tulu_needs_eos(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)


def test_unknown_template(char_tokenizer):
    with pytest.raises(ValueError, match="unknown template"):
        encode_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], char_tokenizer, template="alpaca")


# --------------------------------------------------------------------------- truncation


HI_YO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
# <s> <|user|> \n h i \n <|assistant|> \n | y o </s> | \n  -> 12 tokens, the response at positions 8..10.


def test_no_truncation_when_it_fits(char_tokenizer):
    full = encode_messages(HI_YO, char_tokenizer)
    assert len(full[0]) == 12
    assert encode_messages(HI_YO, char_tokenizer, max_length=12) == full
    assert encode_messages(HI_YO, char_tokenizer, max_length=100) == full


def test_truncation_inside_the_response_keeps_the_first_tokens(char_tokenizer):
    tok = char_tokenizer
    full_ids, full_labels = encode_messages(HI_YO, tok)
    ids, labels = encode_messages(HI_YO, tok, max_length=10)
    assert ids == full_ids[:10]
    assert labels == full_labels[:10]
    assert tok.decode(ids) == "<s><|user|>\nhi\n<|assistant|>\nyo"
    assert labelled_spans(tok, ids, labels) == ["yo"]
    assert has_response_token(labels)
    ids, labels = encode_messages(HI_YO, tok, max_length=9)
    assert labelled_spans(tok, ids, labels) == ["y"]
    assert has_response_token(labels)


@pytest.mark.parametrize("max_length", [1, 4, 8])
def test_truncation_before_the_response(char_tokenizer, max_length):
    ids, labels = encode_messages(HI_YO, char_tokenizer, max_length=max_length)
    assert len(ids) == len(labels) == max_length
    assert all(label == IGNORE_INDEX for label in labels)
    assert not has_response_token(labels)


def test_truncation_of_a_multi_turn_record_keeps_the_first_turn_labels(char_tokenizer):
    tok = char_tokenizer
    messages = HI_YO + [{"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]
    ids, labels = encode_messages(messages, tok, max_length=13)
    assert tok.decode(ids) == "<s><|user|>\nhi\n<|assistant|>\nyo</s>\n<|user|>"
    assert labelled_spans(tok, ids, labels) == ["yo</s>"]


def test_has_response_token_ignores_position_zero():
    # The shifted loss predicts labels[1:], so a label at position 0 is unusable.
    assert not has_response_token([])
    assert not has_response_token([IGNORE_INDEX])
    assert not has_response_token([7, IGNORE_INDEX, IGNORE_INDEX])
    assert has_response_token([IGNORE_INDEX, 7])
    assert has_response_token([7, IGNORE_INDEX, 0])


# --------------------------------------------------------------------------- chat_template path


SIMPLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + ']' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]' }}{% endif %}"
)
# Renders a closing tag only for a finished conversation: "[user]hi\n[end]" is not a prefix of
# "[user]hi\n[assistant]", so the assistant span cannot be found by rendering prefixes.
INCONSISTENT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% else %}{{ '[end]' }}{% endif %}"
)


@pytest.fixture
def templated_tokenizer(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = SIMPLE_TEMPLATE
    return tok


def test_chat_template_labels_the_assistant_spans(templated_tokenizer):
    tok = templated_tokenizer
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "ok!"},
    ]
    ids, labels = encode_messages(messages, tok, template="chat_template")
    text = "<s>[system]sys\n[user]hi\n[assistant]yo</s>\n[user]more\n[assistant]ok!</s>\n"
    assert text == tok.apply_chat_template(messages, tokenize=False)
    # The template writes its own BOS: none is added on top.
    assert tok.decode(ids) == text
    assert ids.count(tok.bos_token_id) == 1
    # The assistant span is what the full rendering adds after the generation prompt.
    assert labelled_spans(tok, ids, labels) == ["yo</s>\n", "ok!</s>\n"]
    assert (ids, labels) == expected_layout(
        tok,
        [
            ("<s>[system]sys\n[user]hi\n[assistant]", False),
            ("yo</s>\n", True),
            ("[user]more\n[assistant]", False),
            ("ok!</s>\n", True),
        ],
    )


def test_chat_template_truncation(templated_tokenizer):
    tok = templated_tokenizer
    ids, labels = encode_messages(HI_YO, tok, template="chat_template", max_length=len("<s>[user]hi\n[assistant]y") - 2)
    assert tok.decode(ids) == "<s>[user]hi\n[assistant]y"
    assert labelled_spans(tok, ids, labels) == ["y"]
    ids, labels = encode_messages(HI_YO, tok, template="chat_template", max_length=5)
    assert not has_response_token(labels)


def test_chat_template_conversation_starting_with_the_assistant(templated_tokenizer):
    tok = templated_tokenizer
    messages = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ids, labels = encode_messages(messages, tok, template="chat_template")
    assert tok.decode(ids) == "<s>[assistant]hello</s>\n[user]hi\n[assistant]yo</s>\n"
    assert labelled_spans(tok, ids, labels) == ["hello</s>\n", "yo</s>\n"]


def test_chat_template_not_prefix_consistent_is_refused(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = INCONSISTENT_TEMPLATE
    with pytest.raises(ValueError, match="prefix-consistent"):
        encode_messages(HI_YO, tok, template="chat_template")
    with pytest.raises(ValueError, match="prefix-consistent"):
        chat_template_segments(HI_YO, tok)


def test_chat_template_missing(char_tokenizer):
    assert getattr(char_tokenizer, "chat_template", None) is None
    with pytest.raises(ValueError, match="no chat_template"):
        encode_messages(HI_YO, char_tokenizer, template="chat_template")


def test_word_level_fast_tokenizer_tokenizes_the_whole_text_and_labels_by_offsets():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lightning_less.data.formatting import encode_messages, tulu_segments

    words = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "say", "hello", "world", "ok"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    messages = [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello world"}]
    ids, labels = encode_messages(messages, tok)
    full = "".join(seg.text for seg in tulu_segments(messages, "</s>"))
    assert ids == [tok.bos_token_id] + tok(full, add_special_tokens=False)["input_ids"]
    trained = [tok.convert_ids_to_tokens(i) for i, label in zip(ids, labels) if label != -100]
    assert trained == ["hello", "world", "</s>"]
    assert all(label == -100 or label == i for i, label in zip(ids, labels))
