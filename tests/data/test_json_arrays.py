""".json array files read one element at a time, and files cut off at the end (``truncated`` / LIGHTNING_LESS_TRUNCATED)."""

from __future__ import annotations

import json
import logging
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lightning_less.data import jsonfiles
from lightning_less.data.index import JsonArraySource, JsonlSource, open_source
from lightning_less.data.records import RecordError, file_sha256, input_stem, read_raw_lines, read_records
from lightning_less.errors import InputError

ELEMENTS = [
    {"id": "p1", "conversations": [{"from": "human", "value": "Ελλάδα 🙂 \"quoted\" \\ back"},
                                   {"from": "gpt", "value": "ok\nline two"}]},
    {"prompt": "2+2=", "completion": " 4", "subtask": "math", "n": 12345678901234567890, "x": -1.5e-3},
    {"instruction": "Name one.", "input": None, "output": "x", "flag": True, "none": None, "u": "\u2028 日本"},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "dataset": "tulu"},
]


def build_array(path: Path, elements: list, pretty: list[bool]) -> list[tuple[int, int, int]]:
    """Write ``elements`` as a JSON array (each pretty-printed or compact with odd spacing); return each
    element's (1-based start line, byte offset, byte length), counted while writing."""
    out, places = b"[\n", []
    for i, (obj, multi) in enumerate(zip(elements, pretty)):
        text = json.dumps(obj, ensure_ascii=False, indent=2 if multi else None, separators=None if multi else (" ,", ":  "))
        data = text.encode("utf-8")
        out += b"  " if i % 2 else b"\r\n\t"
        places.append((out.count(b"\n") + 1, len(out), len(data)))
        out += data + (b" ,\n" if i < len(elements) - 1 else b"\n")
    path.write_bytes(out + b"]\n")
    return places


@pytest.fixture(params=[7, 64, 1 << 20], ids=["chunk7", "chunk64", "chunk1M"])
def chunk(request, monkeypatch):
    """The scanner's read size: tiny ones put every boundary (inside strings, numbers, multi-byte characters) at a block end."""
    monkeypatch.setattr(jsonfiles, "CHUNK", request.param)
    return request.param


def test_array_elements_are_the_records_with_their_lines_and_bytes(tmp_path, chunk):
    # Catches: an element's offset, length or line off by one, a block boundary splitting a number or character,
    # a pretty-printed element's raw line not one valid JSON line, a compact one not kept byte for byte.
    path = tmp_path / "pool.json"
    pretty = [True, False, True, False]
    places = build_array(path, ELEMENTS, pretty)
    data = path.read_bytes()
    index = read_records(str(path))
    assert isinstance(index.sources[0], JsonArraySource) and len(index) == 4
    reference = read_records(_as_jsonl(tmp_path, ELEMENTS))
    assert [r.messages for r in index] == [r.messages for r in reference]
    assert [index[i].messages for i in (3, 0, 2, 1)] == [reference[i].messages for i in (3, 0, 2, 1)]
    assert [r.line for r in index] == [line for line, _, _ in places] == index.sources[0].lines.tolist()
    assert index.sources[0].offsets.tolist() == [offset for _, offset, _ in places]
    assert [index[i].id for i in (1, 3)] == [f"pool.json:{places[1][0]}", f"pool.json:{places[3][0]}"]
    for i, raw in enumerate(index.raw_lines(range(4))):
        assert b"\n" not in raw and b"\r" not in raw and json.loads(raw) == ELEMENTS[i]
        _, offset, length = places[i]
        assert (raw == data[offset:offset + length]) is not pretty[i]  # compact: its own bytes
        if pretty[i]:
            assert raw == json.dumps(ELEMENTS[i], ensure_ascii=False).encode("utf-8")
    assert read_raw_lines(list(index), [2, 1]) == index.raw_lines([2, 1])  # a list of records: by line too
    assert input_stem(str(path)) == "pool" and index.source_names == ["pool", "tulu"]


def _as_jsonl(tmp_path: Path, elements: list) -> str:
    path = tmp_path / "reference.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in elements), encoding="utf-8")
    return str(path)


def test_a_json_file_of_json_lines_is_read_as_jsonl(tmp_path):
    # Catches: every .json taken for an array (JSON lines saved as .json, common on the hub, refused).
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(e) for e in ELEMENTS) + "\n")
    index = read_records(str(path))
    assert isinstance(index.sources[0], JsonlSource) and [r.line for r in index] == [1, 2, 3, 4]
    pretty_object = tmp_path / "object.json"
    pretty_object.write_text(json.dumps({"data": ELEMENTS}, indent=2))
    with pytest.raises(RecordError, match=r"object\.json:1: malformed JSON: .*read as one JSON array when it starts"):
        read_records(str(pretty_object))


@pytest.mark.parametrize("bad, line, fragment", [
    ('[\n{"prompt": "a", "completion": "b"},\n{"prompt": "a" "completion": "b"},\n{"prompt": "c", "completion": "d"}\n]',
     3, "Expecting ',' delimiter at line 3 column 16"),
    ('[{"prompt": "a", "completion": "b"},\n\n{"prompt": "a"}]', 3, "missing field 'completion'"),
    ('[{"prompt": "a", "completion": "b"},\n123456789012345678901234567890]', 2, "expected a JSON object, got int"),
    ('[{"prompt": "a", "completion": "b"},\n]', 2, "malformed JSON: Expecting value"),
    ('[{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}]', 2, "expected ',' or ']' after the record of line 1"),
    ('[{"prompt": "a", "completion": "b"}]\n[]', 2, "data after the array's closing ']'"),
    ('[{"prompt": "a", "completion": "b"},\n{"prompt": "a", "completion": "b"}}', 2, "expected ',' or ']'"),
    ('[{"prompt": "a", "completion": "b"},\n{"prompt": "x" "completion": "y"}', 2, "Expecting ',' delimiter"),
])
@pytest.mark.parametrize("truncated", ["error", "complete"])
def test_a_malformed_element_is_an_error_even_when_reading_complete_records(tmp_path, bad, line, fragment, truncated,
                                                                           chunk):
    # Catches: a bad element skipped (or taken for a cut end) under 'complete', named by the wrong line, or a
    # number element split at a block boundary read as two.
    path = tmp_path / "bad.json"
    path.write_text(bad)
    with pytest.raises(RecordError) as info:
        read_records(str(path), truncated=truncated)
    assert str(info.value).startswith(f"{path}:{line}: ") and fragment in str(info.value)
    assert "cut off" not in str(info.value)


def test_the_scanner_yields_every_json_value_whole(tmp_path, chunk):
    # Catches: a number or literal at a block boundary taken as two values (a prefix parsed alone).
    values = [123456789012345678901234567890, -1.25e-7, True, None, "ü" * 9, [1, [2, {}]], {"k": "v"}, 0, False]
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values, ensure_ascii=False))
    with open(path, "rb") as handle:
        scanner = jsonfiles.ArrayScanner(handle, str(path))
        assert [obj for _, _, _, obj in scanner] == values and scanner.cut is None


def test_invalid_utf8_in_an_element_names_its_line(tmp_path):
    # Catches: undecodable bytes passed on (or a decoder error without the element's line).
    path = tmp_path / "latin.json"
    path.write_bytes(b'[{"prompt": "a", "completion": "b"},\n{"prompt": "caf\xe9", "completion": "x"}]')
    with pytest.raises(RecordError, match=r"latin\.json:2: malformed JSON: the record is not valid UTF-8"):
        read_records(str(path))


def test_every_cut_of_an_array_is_named_and_its_complete_records_readable(tmp_path, monkeypatch):
    # Each proper prefix of the file: an error naming where the first incomplete element starts (or where the
    # array stops) and how many elements are whole, counted here from the offsets written; with 'complete',
    # exactly those elements. Catches: a cut taken for a malformed record (or the reverse), an element cut after
    # its value but counted, a wrong line or byte offset in the message.
    monkeypatch.setattr(jsonfiles, "CHUNK", 16)
    full = tmp_path / "full.json"
    places = build_array(full, ELEMENTS, [True, False, True, False])
    data = full.read_bytes()
    path = tmp_path / "cut.json"
    for size in range(1, len(data.rstrip())):  # every prefix short of the closing "]"
        path.write_bytes(data[:size])
        whole = sum(offset + length <= size for _, offset, length in places)
        started = [p for p in places if p[1] < size < p[1] + p[2]]
        if started:
            line, where = started[0][0], f"the record starting at line {started[0][0]} (byte {started[0][1]}) is cut off"
        else:  # between elements: the array stops at the end of the file
            line = data[:size].count(b"\n") + 1
            where = f"the JSON array stops at line {line} (byte {size}) without its closing ']'"
        with pytest.raises(RecordError) as info:
            read_records(str(path), truncated="error")
        assert str(info.value) == (f"{path}:{line}: the file is cut off at the end: {where}, after {whole} complete "
                                   "record(s). Complete the file, or read only its complete records with "
                                   "LIGHTNING_LESS_TRUNCATED=complete in the environment (truncated='complete' from "
                                   "Python)"), size
        if whole == 0:
            with pytest.raises(RecordError, match="holds no complete record"):
                read_records(str(path), truncated="complete")
            continue
        index = read_records(str(path), truncated="complete")
        assert [r.messages for r in index] == [r.messages for r in read_records(_as_jsonl(tmp_path, ELEMENTS[:whole]))]
        assert index.sources[0].cut.complete == whole and index.raw_lines([whole - 1])


def test_a_cut_last_jsonl_line_is_named_and_its_complete_records_readable(tmp_path):
    # Every cut of the last line (one inside a multi-byte character too) is a cut; a last line malformed before
    # its end, or one with a newline after it, is malformed. Catches: a cut last line read as malformed (no way to
    # keep the rest) or silently dropped under 'error'; a malformed last line dropped under 'complete'.
    lines = [json.dumps(e, ensure_ascii=False) for e in ELEMENTS]
    head = ("\n".join(lines[1:]) + "\n\n").encode("utf-8")
    last = lines[0].encode("utf-8")
    path = tmp_path / "cut.jsonl"
    for size in range(1, len(last)):
        path.write_bytes(head + last[:size])
        with pytest.raises(RecordError) as info:
            read_records(str(path))
        assert str(info.value).startswith(f"{path}:5: the file is cut off at the end: the record starting at "
                                          f"line 5 (byte {len(head)}) is cut off, after 3 complete record(s)."), size
        index = read_records(str(path), truncated="complete")
        assert len(index) == 3 and [r.line for r in index] == [1, 2, 3] and len(list(index)) == 3
    for malformed in (last + b"}", last[:-1] + b" x}", last + b"  ]", last[:-1] + b"\n"):
        path.write_bytes(head + malformed)
        with pytest.raises(RecordError, match=r"cut\.jsonl:5: malformed JSON"):
            read_records(str(path), truncated="complete")


def test_the_environment_variable_sets_the_default_and_is_checked(tmp_path, monkeypatch):
    # Catches: the variable ignored (CLI commands and DDP children could not read a cut file), an argument
    # not taking precedence over it, or a misspelt value silently taken as 'error'.
    path = tmp_path / "cut.json"
    path.write_text('[{"prompt": "a", "completion": "b"}, {"prompt": "c", "comp')
    monkeypatch.setenv("LIGHTNING_LESS_TRUNCATED", "complete")
    assert len(read_records(str(path))) == 1
    with pytest.raises(RecordError, match="cut off"):
        read_records(str(path), truncated="error")
    monkeypatch.setenv("LIGHTNING_LESS_TRUNCATED", "error")
    with pytest.raises(RecordError, match="cut off"):
        read_records(str(path))
    assert len(read_records(str(path), truncated="complete")) == 1
    monkeypatch.setenv("LIGHTNING_LESS_TRUNCATED", "Complete")
    with pytest.raises(InputError, match=r"LIGHTNING_LESS_TRUNCATED='Complete' is not a valid setting"):
        read_records(str(path))
    monkeypatch.delenv("LIGHTNING_LESS_TRUNCATED")
    with pytest.raises(InputError, match=r"truncated='skip': expected 'error' or 'complete'"):
        read_records(str(path), truncated="skip")


def test_reading_complete_records_warns_once_per_file(tmp_path, caplog):
    # Catches: a cut file read without a word (the user would not know records are missing), or one warning
    # per read (the pool is read several times by one command).
    path = tmp_path / "cut.json"
    path.write_text('[{"prompt": "a", "completion": "b"},\n {"prompt": "c", "completion": "d"},\n {"prom')
    offset = path.read_bytes().rindex(b'{"prom')
    with caplog.at_level(logging.WARNING, logger="lightning_less"):
        read_records(str(path), truncated="complete")
        read_records(str(path), truncated="complete")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path} is cut off at the end (the record starting at line 3 (byte {offset}) is cut off): "
                        "reading only the 2 complete record(s) before it (LIGHTNING_LESS_TRUNCATED=complete)"]


@pytest.mark.parametrize("rank, warned", [("1", False), ("0", True)])
def test_only_rank_zero_warns(tmp_path, caplog, monkeypatch, rank, warned):
    # Catches: one warning per DDP process (each rank reads the pool).
    monkeypatch.setenv("LOCAL_RANK", rank)
    path = tmp_path / "cut.json"
    path.write_text('[{"prompt": "a", "completion": "b"}, {"pro')
    with caplog.at_level(logging.WARNING, logger="lightning_less"):
        assert len(read_records(str(path), truncated="complete")) == 1
    assert any("is cut off" in r.getMessage() for r in caplog.records) is warned


def test_array_index_pickles_and_refuses_a_changed_file(tmp_path):
    # Catches: an index that cannot go to a data-loader worker (an open file in its state), a worker reading
    # another file version at old offsets, or a changed file keeping its old digest.
    path = tmp_path / "pool.json"
    build_array(path, ELEMENTS, [True, True, False, True])
    index = read_records(str(path))
    digest = file_sha256(str(path))
    index[0]  # opens the file in this process
    copy = pickle.loads(pickle.dumps(index))
    assert copy.sources[0]._fd is None and [r.messages for r in copy] == [r.messages for r in index]
    assert copy.raw_lines([3, 0]) == index.raw_lines([3, 0])
    build_array(path, ELEMENTS[::-1], [True, True, False, True])
    assert file_sha256(str(path)) != digest
    for read in (lambda: index[1], lambda: list(index), lambda: index.raw_lines([2])):
        with pytest.raises(RecordError, match="changed since it was read"):
            read()


def test_array_index_memory_per_record_is_a_few_integers(tmp_path, monkeypatch):
    # Catches: the array loaded whole (or a buffer that keeps growing), or per-record Python objects (text, parsed
    # elements) kept by the index.
    monkeypatch.setattr(jsonfiles, "CHUNK", 1 << 16)
    n = 20_000
    path = tmp_path / "pool.json"
    with open(path, "w") as f:
        f.write("[\n")
        for i in range(n):
            obj = {"id": f"r{i}", "dataset": f"s{i % 5}", "conversations": [
                {"from": "human", "value": f"question {i} " * 10}, {"from": "gpt", "value": f"answer {i} " * 10}]}
            f.write(json.dumps(obj, indent=1 if i % 2 else None) + (",\n" if i < n - 1 else "\n"))
        f.write("]\n")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = read_records(str(path))
        held = tracemalloc.get_traced_memory()[0] - before
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(index) == n and index[n - 1].id == f"r{n - 1}" and index[n - 1].line == index.sources[0].lines[-1]
    assert index.nbytes() / n <= 32  # offset 8 + length 4 + line 4 + two int32 codes
    assert held / n < 64, f"the index holds {held / n:.0f} bytes per record"
    # At most: the arrays while copied once, and a few read buffers; far from the 8 MB file.
    assert peak < 2 * held + 16 * jsonfiles.CHUNK < path.stat().st_size / 3, f"the scan held {peak} bytes at once"
    assert index.source_codes.dtype == np.int32


def test_instruction_dataset_reads_a_json_array_like_its_jsonl(tmp_path, char_tokenizer):
    # Catches: training data (tokenization, lengths, fingerprint) that differ when the same records come as an array.
    from lightning_less.data.datamodule import InstructionDataset

    path = tmp_path / "pool.json"
    build_array(path, ELEMENTS, [True, False, True, False])
    array_ds = InstructionDataset(str(path), char_tokenizer, max_length=64)
    jsonl_ds = InstructionDataset(_as_jsonl(tmp_path, ELEMENTS), char_tokenizer, max_length=64)
    assert [array_ds[i] for i in range(len(array_ds))] == [jsonl_ds[i] for i in range(len(jsonl_ds))]
    fingerprint = array_ds.data_fingerprint()
    assert fingerprint["files"] == [{"path": str(path), "sha256": file_sha256(str(path))}]
    assert fingerprint["n_examples"] == 4


def test_open_source_picks_the_reader_by_content(tmp_path):
    # Catches: a .json array with leading whitespace or a byte order mark read as JSON lines.
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf \n\t[" + json.dumps(ELEMENTS[1]).encode() + b"]")
    assert isinstance(open_source(str(path)), JsonArraySource)
    (record,) = read_records(str(path))
    assert record.line == 2 and record.messages[1]["content"] == " 4"
    path.write_text(" [ \n ] \n")
    assert isinstance(open_source(str(path)), JsonArraySource)
    with pytest.raises(RecordError, match=r"empty\.json: file is empty"):
        read_records(str(path.rename(tmp_path / "empty.json")))


def test_select_on_a_cut_file_exits_2_unless_complete_records_are_asked_for(tmp_path, monkeypatch, capsys, caplog):
    # The command line as a user runs it (in this process: the variable is read when the pool is read).
    # Catches: a traceback (or a selection from a half-read file) for a cut pool, or the variable not reaching
    # a command.
    from lightning_less.cli import main

    monkeypatch.delenv("LIGHTNING_LESS_DEBUG", raising=False)
    monkeypatch.delenv("LIGHTNING_LESS_TRUNCATED", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    elements = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
                for i in range(8)]
    text = json.dumps(elements, indent=2)
    path = tmp_path / "pool.json"
    path.write_text(text[:text.index('"c6"') + 2])  # elements 0-5 whole, 6 cut
    command = ["select", "--method", "random", "--pool", str(path), "--count", "4", "--output"]
    with pytest.raises(SystemExit) as exit_:
        main([*command, str(tmp_path / "sel")])
    message = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and message.startswith(f"error: {path}:") and "Traceback" not in message
    assert "after 6 complete record(s)" in message and "LIGHTNING_LESS_TRUNCATED=complete" in message
    assert not (tmp_path / "sel" / "manifest.json").exists()
    monkeypatch.setenv("LIGHTNING_LESS_TRUNCATED", "complete")
    with caplog.at_level(logging.WARNING, logger="lightning_less"):
        main([*command, str(tmp_path / "sel2")])
    assert any("reading only the 6 complete record(s)" in r.getMessage() for r in caplog.records)
    chosen = [json.loads(line) for line in (tmp_path / "sel2" / "selected.jsonl").read_text().splitlines()]
    assert len(chosen) == 4 and all(c in elements[:6] for c in chosen)
    assert json.loads((tmp_path / "sel2" / "manifest.json").read_text())["n_pool"] == 6
