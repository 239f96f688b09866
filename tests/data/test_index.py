"""The streamed record index against a brute-force reader: same records, indices and errors; little memory per record."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lightning_less.data.index import RecordIndex
from lightning_less.data.records import Record, RecordError, normalise_messages, read_records


def reference_read(paths: list[str]) -> list[Record]:
    """The reader as it was before the index: every line parsed into a list, in one pass."""
    records: list[Record] = []
    for path in paths:
        stem = Path(path).name.removesuffix(".jsonl")
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                raw = raw.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise RecordError(path, number, f"malformed JSON: {err}") from err
                if not isinstance(obj, dict):
                    raise RecordError(path, number, f"expected a JSON object, got {type(obj).__name__}")
                messages = normalise_messages(obj, path, number)
                rid = obj.get("id")
                subtask = obj.get("subtask")
                records.append(Record(len(records), str(rid) if rid not in (None, "") else f"{Path(path).name}:{number}",
                                      str(obj.get("dataset") or obj.get("source") or stem),
                                      None if subtask in (None, "") else str(subtask), path, number, messages))
    return records


ROWS = [
    {"id": "a", "dataset": "flan", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Ελλάδα 🙂"},
                                               {"role": "assistant", "content": "yes"}]},
    "",
    {"prompt": "2+2=", "completion": " 4", "subtask": "math"},
    "   ",
    {"instruction": "Reverse.", "input": " abc\n", "output": "cba", "source": "alp", "id": 7},
    {"instruction": "Name one.", "input": None, "output": "x", "subtask": ""},
]


@pytest.fixture
def two_files(tmp_path) -> list[str]:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes("\r\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in ROWS).encode())
    b.write_bytes(("\n" + json.dumps(ROWS[2]) + "\n\n" + json.dumps(ROWS[0], ensure_ascii=False) + "\n").encode())
    return [str(a), str(b)]


def test_same_records_and_indices_as_the_reference_reader(two_files):
    # Catches: an off-by-one offset or line number, a blank line counted as a record, a lost id/source/subtask.
    expected = reference_read(two_files)
    index = read_records(two_files)
    assert isinstance(index, RecordIndex) and len(index) == len(expected) == 6
    assert list(index) == expected  # streamed iteration
    assert [index[i] for i in range(len(index))] == expected  # random access (pread)
    assert [index[i] for i in reversed(range(len(index)))] == expected[::-1]
    assert index[-1] == expected[-1] and index[1:4] == expected[1:4] and index[::2] == expected[::2]
    assert index.sources_of() == [r.source for r in expected]
    with pytest.raises(IndexError):
        index[6]


def test_raw_lines_are_the_input_bytes(two_files):
    # Catches: offsets that drop a CR/LF wrongly or point at the wrong line.
    index = read_records(two_files)
    lines = [line for p in two_files for line in Path(p).read_bytes().replace(b"\r\n", b"\n").split(b"\n") if line.strip()]
    assert index.raw_lines([5, 0, 3]) == [lines[5], lines[0], lines[3]]


BAD = ['{"prompt": "a", "completion": ', "42", '{"prompt": "a"}', '{"messages": []}', '{"text": "x"}',
       '{"messages": [{"role": "user", "content": "q"}]}', '{"prompt": "", "completion": "b"}']


@pytest.mark.parametrize("bad", BAD)
def test_same_errors_as_the_reference_reader(tmp_path, bad):
    # Catches: validation deferred to access time, or a different file:line in the message.
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[2]) + "\n\n" + bad + "\n" + json.dumps(ROWS[2]) + "\n")
    with pytest.raises(RecordError) as ref:
        reference_read([str(path)])
    with pytest.raises(RecordError) as new:
        read_records(str(path))
    assert str(new.value) == str(ref.value) and new.value.line == 3


def test_index_memory_per_record_is_a_few_integers(tmp_path):
    # Catches: an index that keeps each record's text, messages or id (Python objects per record).
    n = 20_000
    path = tmp_path / "pool.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "dataset": f"s{i % 5}", "prompt": f"question {i} " * 10,
                                "completion": f"answer {i} " * 10}) + "\n")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = read_records(str(path))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == n and index[n - 1].id == f"r{n - 1}"
    assert index.nbytes() / n <= 32  # offset 8 + length 4 + line 4 + two int32 codes
    assert held / n < 64, f"the index holds {held / n:.0f} bytes per record"
    assert index.source_names == [f"s{i}" for i in range(5)] and index.source_codes.dtype == np.int32


def test_a_file_changed_after_indexing_is_refused(two_files):
    # Catches: reading a rewritten file at old offsets (wrong records, silently).
    index = read_records(two_files)
    Path(two_files[1]).write_text(json.dumps(ROWS[2]) + "\n")
    with pytest.raises(RecordError, match="changed since it was read"):
        index[4]
    with pytest.raises(RecordError, match="changed since it was read"):
        list(index)


def test_dataset_tokenizes_lazily_with_the_same_items(two_files, char_tokenizer):
    # Catches: __getitem__ returning another record's tokens, or lengths of the wrong examples.
    from lightning_less.data.datamodule import InstructionDataset
    from lightning_less.data.formatting import encode_messages

    ds = InstructionDataset(two_files, char_tokenizer, max_length=64)
    expected = reference_read(two_files)
    assert not hasattr(ds, "_examples") and ds.example_indices.dtype == np.int64
    for i in range(len(ds)):
        record = expected[int(ds.example_indices[i])]
        ids, labels = encode_messages(record.messages, char_tokenizer, max_length=64)
        assert ds[i] == {"input_ids": ids, "labels": labels, "index": record.index}
        assert ds.lengths[i] == len(ids)
