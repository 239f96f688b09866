"""Reading jsonl records: the three formats, ids / sources / indices, and every error path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lightning_less.data.records import Record, RecordError, read_jsonl, read_raw_lines, read_records


def _messages(record: Record) -> list[dict]:
    return [dict(m) for m in record.messages]


# --------------------------------------------------------------------------- formats


def test_tulu_messages_with_system_and_several_turns(write_jsonl):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    path = write_jsonl("tulu.jsonl", [{"dataset": "flan_v2", "id": "flan_7", "messages": messages}])
    (record,) = read_records(path)
    assert _messages(record) == messages
    assert record.id == "flan_7"
    assert record.source == "flan_v2"
    assert record.subtask is None
    assert (record.index, record.path, record.line) == (0, path, 1)
    assert record.prompt_text == "You are terse.\nCapital of France?\nAnd of Italy?"
    assert record.response_text == "Paris.\nRome."


def test_tulu_messages_drop_extra_keys_of_a_turn(write_jsonl):
    path = write_jsonl(
        "t.jsonl",
        [{"messages": [{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": "a"}]}],
    )
    (record,) = read_records(path)
    assert _messages(record) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_tulu_system_turn_may_be_empty(write_jsonl):
    path = write_jsonl(
        "t.jsonl",
        [{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    (record,) = read_records(path)
    assert record.messages[0] == {"role": "system", "content": ""}


def test_prompt_completion_becomes_user_and_assistant(write_jsonl):
    path = write_jsonl("pc.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    (record,) = read_records(path)
    assert _messages(record) == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": " 4"}]


def test_alpaca_without_input_is_the_instruction_alone(write_jsonl):
    path = write_jsonl(
        "alpaca.jsonl",
        [
            {"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Name a colour.", "input": "", "output": "Red."},
            {"instruction": "Name a colour.", "input": "   ", "output": "Green."},
            {"instruction": "Name a colour.", "input": None, "output": "Teal."},
        ],
    )
    records = read_records(path)
    assert [_messages(r) for r in records] == [
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": out}]
        for out in ("Blue.", "Red.", "Green.", "Teal.")
    ]


def test_alpaca_with_input_joins_instruction_blank_line_input(write_jsonl):
    path = write_jsonl(
        "alpaca.jsonl",
        [
            {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
            # Surrounding whitespace must not add extra blank lines between the two parts.
            {"instruction": "Reverse the word.\n", "input": " abc\n", "output": "cba"},
        ],
    )
    for record in read_records(path):
        assert _messages(record) == [
            {"role": "user", "content": "Reverse the word.\n\nabc"},
            {"role": "assistant", "content": "cba"},
        ]


# --------------------------------------------------------------------------- ids, sources, indices


def test_id_kept_or_made_stable_from_file_name_and_line(write_jsonl):
    path = write_jsonl(
        "pool.jsonl",
        [
            {"id": "keep-me", "prompt": "a", "completion": "b"},
            "",
            {"prompt": "a", "completion": "b"},
            {"id": "", "prompt": "a", "completion": "b"},
            {"id": 17, "prompt": "a", "completion": "b"},
            {"id": 0, "prompt": "a", "completion": "b"},
        ],
    )
    records = read_records(path)
    assert [r.id for r in records] == ["keep-me", "pool.jsonl:3", "pool.jsonl:4", "17", "0"]
    # Stable: reading again gives the same ids.
    assert [r.id for r in read_records(path)] == [r.id for r in records]


def test_source_from_dataset_field_else_file_stem(write_jsonl):
    path = write_jsonl(
        "my_pool.jsonl",
        [
            {"dataset": "cot", "prompt": "a", "completion": "b"},
            {"prompt": "a", "completion": "b"},
            {"dataset": "", "prompt": "a", "completion": "b"},
        ],
    )
    assert [r.source for r in read_records(path)] == ["cot", "my_pool", "my_pool"]


def test_subtask_kept(write_jsonl):
    path = write_jsonl(
        "mmlu.jsonl",
        [
            {"subtask": "abstract_algebra", "prompt": "a", "completion": "b"},
            {"prompt": "a", "completion": "b"},
        ],
    )
    assert [r.subtask for r in read_records(path)] == ["abstract_algebra", None]


def test_global_indices_over_several_files(write_jsonl):
    first = write_jsonl("a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(3)])
    second = write_jsonl("b.jsonl", [{"prompt": f"b{i}", "completion": "x"} for i in range(2)])
    third = write_jsonl("c.jsonl", [{"prompt": "c0", "completion": "x"}])
    records = read_records([first, second, third])
    assert [r.index for r in records] == [0, 1, 2, 3, 4, 5]
    assert [(Path(r.path).name, r.line) for r in records] == [
        ("a.jsonl", 1), ("a.jsonl", 2), ("a.jsonl", 3), ("b.jsonl", 1), ("b.jsonl", 2), ("c.jsonl", 1)
    ]
    assert [r.messages[0]["content"] for r in records] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    # The order of the files decides the indices.
    swapped = read_records([second, first])
    assert [(r.index, r.messages[0]["content"]) for r in swapped][:3] == [(0, "b0"), (1, "b1"), (2, "a0")]
    # read_jsonl's start_index offsets one file.
    assert [r.index for r in read_jsonl(second, start_index=10)] == [10, 11]


def test_a_single_path_is_accepted(write_jsonl, tmp_path):
    path = write_jsonl("a.jsonl", [{"prompt": "a", "completion": "x"}])
    assert len(read_records(path)) == 1
    assert len(read_records(Path(path))) == 1
    with pytest.raises(ValueError):
        read_records([])


def test_blank_lines_skipped_but_counted(write_jsonl):
    path = write_jsonl(
        "gaps.jsonl",
        ["", {"prompt": "a", "completion": "x"}, "   ", "", {"prompt": "b", "completion": "y"}, "\t"],
    )
    records = read_records(path)
    assert [(r.index, r.line, r.id) for r in records] == [(0, 2, "gaps.jsonl:2"), (1, 5, "gaps.jsonl:5")]


def test_blank_lines_counted_in_error_line_number(write_jsonl):
    path = write_jsonl("gaps.jsonl", ["", {"prompt": "a", "completion": "x"}, "", "", "{broken"])
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert info.value.line == 5
    assert f"{path}:5:" in str(info.value)


# --------------------------------------------------------------------------- errors


GOOD = {"prompt": "fine", "completion": "fine"}
BAD_LINES = {
    "malformed JSON": '{"prompt": "a", "completion": ',
    "not an object (list)": '[{"prompt": "a", "completion": "b"}]',
    "not an object (string)": '"just a string"',
    "not an object (number)": "42",
    "prompt without completion": {"prompt": "a"},
    "completion without prompt": {"completion": "b"},
    "instruction without output": {"instruction": "do it", "input": "x"},
    "output without instruction": {"output": "done"},
    "message without role": {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
    "message without content": {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
    "message not an object": {"messages": ["hello", {"role": "assistant", "content": "a"}]},
    "messages empty": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "empty completion": {"prompt": "a", "completion": ""},
    "empty prompt": {"prompt": "", "completion": "b"},
    "whitespace-only output": {"instruction": "do it", "output": " \n\t "},
    "whitespace-only instruction": {"instruction": "  ", "output": "x"},
    "empty user content": {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
    "empty assistant content": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
    "non-string content": {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
    "non-string completion": {"prompt": "a", "completion": ["b"]},
    "non-string input": {"instruction": "a", "input": 5, "output": "b"},
    "unknown role": {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "no assistant turn": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
    "unknown format": {"text": "free text"},
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_names_file_and_exact_line(case, write_jsonl):
    # Two good lines and a blank one before the bad line: it is physical line 4.
    path = write_jsonl("bad.jsonl", [GOOD, "", GOOD, BAD_LINES[case], GOOD])
    with pytest.raises(RecordError) as info:
        read_records(path)
    err = info.value
    assert err.path == path
    assert err.line == 4
    assert str(err).startswith(f"{path}:4: ")
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("malformed JSON", "malformed JSON"),
        ("not an object (list)", "JSON object"),
        ("prompt without completion", "'completion'"),
        ("instruction without output", "'output'"),
        ("message without role", "'role'"),
        ("message without content", "'content'"),
        ("empty completion", "'completion' is empty"),
        ("whitespace-only output", "'output' is empty"),
        ("empty user content", "messages[0].content"),
        ("unknown role", "'human'"),
        ("no assistant turn", "no assistant turn"),
    ],
)
def test_bad_record_message_says_what_is_wrong(case, fragment, write_jsonl):
    path = write_jsonl("bad.jsonl", [BAD_LINES[case]])
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: ") as info:
        read_records(path)
    assert fragment in str(info.value)


def test_error_in_second_file_names_that_file(write_jsonl):
    good = write_jsonl("good.jsonl", [GOOD, GOOD])
    bad = write_jsonl("bad.jsonl", [GOOD, GOOD, GOOD, {"prompt": "a"}])
    with pytest.raises(RecordError) as info:
        read_records([good, bad])
    assert (info.value.path, info.value.line) == (bad, 4)
    assert str(info.value).startswith(f"{bad}:4: ")


def test_invalid_utf8_is_a_record_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "café", "completion": "x"}'.encode("latin-1") + b"\n")
    with pytest.raises(RecordError) as info:
        read_records(str(path))
    assert (info.value.path, info.value.line) == (str(path), 2)


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n\r\n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError) as info:
        read_records(str(path))
    assert str(path) in str(info.value)
    assert "empty" in str(info.value)
    assert info.value.line is None


def test_nonexistent_path(tmp_path):
    path = str(tmp_path / "missing.jsonl")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert "cannot read" in str(info.value)


def test_directory_path(tmp_path):
    with pytest.raises(RecordError) as info:
        read_records(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path}: ")
    assert "directory" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(write_jsonl):
    path = write_jsonl("locked.jsonl", [GOOD])
    os.chmod(path, 0)
    try:
        with pytest.raises(RecordError, match="cannot read"):
            read_records(path)
    finally:
        os.chmod(path, 0o644)


# --------------------------------------------------------------------------- raw lines


def test_read_raw_lines_exact_bytes_unicode(tmp_path):
    lines = [
        '{"prompt": "Ελληνικά und Ümlaute 日本語 🙂", "completion": "ok"}',
        '{"completion": "escaped \\u00e9", "prompt":   "spacing  kept" }  ',
        '{"prompt": "line\u2028separator", "completion": "x"}',
    ]
    path = tmp_path / "uni.jsonl"
    path.write_bytes(("\n".join(lines[:2]) + "\n\n" + lines[2]).encode("utf-8"))  # no final newline
    records = read_records(str(path))
    assert [r.line for r in records] == [1, 2, 4]
    assert records[0].messages[0]["content"] == "Ελληνικά und Ümlaute 日本語 🙂"
    assert read_raw_lines(records) == [line.encode("utf-8") for line in lines]
    # In the order given, across files, repeated.
    assert read_raw_lines([records[2], records[0], records[2]]) == [lines[2].encode(), lines[0].encode(), lines[2].encode()]


def test_read_raw_lines_crlf(tmp_path):
    lines = ['{"prompt": "a", "completion": "b"}', '{"prompt": "ü", "completion": "d"}']
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    records = read_records(str(path))
    assert [r.line for r in records] == [1, 2]
    raw = read_raw_lines(records)
    assert raw == [line.encode("utf-8") for line in lines]
    assert all(not r.endswith(b"\r") for r in raw)
    assert records[1].messages[0]["content"] == "ü"


def test_read_raw_lines_over_several_files(write_jsonl):
    a = write_jsonl("a.jsonl", ['{"prompt":"a","completion":"1"}', '{"prompt":"b","completion":"2"}'])
    b = write_jsonl("b.jsonl", ["", '{"prompt":"c","completion":"3"}'])
    records = read_records([a, b])
    assert read_raw_lines([records[2], records[0]]) == [b'{"prompt":"c","completion":"3"}', b'{"prompt":"a","completion":"1"}']


def test_read_raw_lines_file_changed(write_jsonl):
    path = write_jsonl("a.jsonl", [GOOD, GOOD])
    records = read_records(path)
    Path(path).write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(RecordError, match="changed since it was read") as info:
        read_raw_lines(records)
    # The index notices the new file version at the first line it reads back.
    assert (info.value.path, info.value.line) == (path, 1)
    # A list of records (e.g. from another reader) is still matched by line number.
    with pytest.raises(RecordError) as info:
        read_raw_lines([_stale_record(path, 2)])
    assert (info.value.path, info.value.line) == (path, 2)


def _stale_record(path: str, line: int) -> Record:
    return Record(index=0, id="x", source="a", subtask=None, path=path, line=line, messages=())
