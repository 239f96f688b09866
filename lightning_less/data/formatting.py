"""Turning normalised messages into token ids and labels.

Two templates:

* ``"tulu"`` (default, docs/algorithms.md §4 / open-instruct):
  ``<|system|>\\n{c}\\n``, ``<|user|>\\n{c}\\n``, ``<|assistant|>\\n{c}{eos}\\n`` with every
  content stripped. Only the assistant contents and their end-of-sequence token carry
  labels; the role tags, the other turns and the newline after ``{eos}`` are -100.
* ``"chat_template"``: the tokenizer's own chat template. The assistant span of turn i is
  the text that rendering ``messages[:i+1]`` adds after rendering ``messages[:i]`` with the
  generation prompt; a template for which that is not a prefix is refused.

The whole text is tokenized once, as at generation time, and a fast tokenizer's offset
mapping marks the tokens that overlap a response segment (a token that straddles a
boundary counts as response); slow tokenizers, which have no offsets, are tokenized
segment by segment. With the Tülu template a BOS token is prepended when the tokenizer has
one (a chat template writes its own). Truncation keeps the first ``max_length`` tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

IGNORE_INDEX = -100
TemplateName = Literal["tulu", "chat_template"]


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def tulu_segments(messages: Sequence[dict], eos_token: str) -> list[Segment]:
    """The Tülu template as (text, is-response) segments."""
    segments: list[Segment] = []
    for m in messages:
        content = m["content"].strip()
        if m["role"] == "assistant":
            segments.append(Segment("<|assistant|>\n", False))
            segments.append(Segment(content + eos_token, True))
            segments.append(Segment("\n", False))
        else:
            segments.append(Segment(f"<|{m['role']}|>\n{content}\n", False))
    return segments


def tulu_prompt(messages: Sequence[dict], eos_token: str) -> str:
    """The Tülu prompt for generation: every turn, then an open assistant tag.

    Earlier assistant turns end with ``eos_token`` exactly as in training, so a multi-turn
    (or few-shot) prompt is the prefix of the text the model was trained on.
    """
    text = "".join(s.text for s in tulu_segments(messages, eos_token=eos_token))
    return text + "<|assistant|>\n"


def chat_template_segments(messages: Sequence[dict], tokenizer) -> list[Segment]:
    """Segments of the tokenizer's chat template, assistant spans marked as trained."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("template='chat_template' was asked for but the tokenizer has no chat_template")
    segments: list[Segment] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i == 0:
            # A conversation cannot be rendered empty (transformers refuses it), so the
            # header of a leading assistant turn is found by its content instead.
            full = tokenizer.apply_chat_template(list(messages[:1]), tokenize=False)
            start = full.find(m["content"].strip()) if m["content"].strip() else -1
            if start < 0:
                raise ValueError("cannot find the assistant span of a conversation that starts with an assistant turn")
            segments.append(Segment(full[:start], False))
            segments.append(Segment(full[start:], True))
            done = full
            continue
        if m["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
            if not prefix.startswith(done):
                raise ValueError("the tokenizer's chat template does not render conversations prefix-consistently")
            segments.append(Segment(prefix[len(done):], False))
            done = prefix
        full = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        if not full.startswith(done):
            raise ValueError("the tokenizer's chat template does not render conversations prefix-consistently")
        segments.append(Segment(full[len(done):], m["role"] == "assistant"))
        done = full
    return [s for s in segments if s.text]


def encode_messages(
    messages: Sequence[dict],
    tokenizer,
    max_length: int | None = None,
    template: TemplateName = "tulu",
    add_bos: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation.

    Returns:
        ``(input_ids, labels)``; ``labels`` is -100 on every non-response token. When
        truncation removes every response token the labels are all -100 and the caller
        must drop the example (see :class:`~lightning_less.data.datamodule.InstructionDataset`).
    """
    if template == "tulu":
        if tokenizer.eos_token is None:
            raise ValueError("the Tülu template needs a tokenizer with an eos_token")
        segments = tulu_segments(messages, tokenizer.eos_token)
    elif template == "chat_template":
        segments = chat_template_segments(messages, tokenizer)
    else:
        raise ValueError(f"unknown template {template!r}: expected 'tulu' or 'chat_template'")
    input_ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and template == "tulu":
        input_ids.append(bos)
        labels.append(IGNORE_INDEX)
    if getattr(tokenizer, "is_fast", False):
        ids, trained = _tokenize_whole(segments, tokenizer)
        input_ids.extend(ids)
        labels.extend(i if t else IGNORE_INDEX for i, t in zip(ids, trained))
    else:
        # Slow tokenizers have no offset mapping: segment by segment (exact at the
        # boundaries for character-level and byte-level vocabularies).
        for seg in segments:
            ids = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            labels.extend(ids if seg.trained else [IGNORE_INDEX] * len(ids))
    if max_length is not None and len(input_ids) > max_length:
        input_ids = input_ids[:max_length]
        labels = labels[:max_length]
    return input_ids, labels


def _tokenize_whole(segments: Sequence[Segment], tokenizer) -> tuple[list[int], list[bool]]:
    """Tokenize the whole text once; a token is trained when its characters overlap a response segment.

    Tokenizing the text as a whole gives the same ids the model sees at generation time
    (a SentencePiece tokenizer would add a word-start marker to each separately tokenized
    segment); the offset mapping carries the segment boundaries over to the tokens.
    """
    text = "".join(seg.text for seg in segments)
    spans, pos = [], 0
    for seg in segments:
        if seg.trained:
            spans.append((pos, pos + len(seg.text)))
        pos += len(seg.text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(start < e and end > s for s, e in spans) for start, end in enc["offset_mapping"]]
    return list(enc["input_ids"]), trained


def has_response_token(labels: Sequence[int]) -> bool:
    """Whether an example has at least one label the shifted loss can use (position >= 1)."""
    return any(label != IGNORE_INDEX for label in labels[1:])


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """What decides how a tokenizer turns text into ids: its class, special tokens and a sha256 of its state.

    The state is the fast tokenizer's serialization (vocabulary, merges, normalizer...)
    without its runtime padding / truncation settings, else the vocabulary. Its name or
    path is not part of it, so the same tokenizer loaded from two places is the same.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
    else:
        state = {"vocab": tokenizer.get_vocab()}
    text = json.dumps(state, sort_keys=True, ensure_ascii=False)
    return {
        "class": type(tokenizer).__name__,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
    }
