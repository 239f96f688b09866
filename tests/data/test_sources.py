"""Hugging Face ``datasets`` as input: saved directories, parquet and arrow files read as the same records as jsonl."""

from __future__ import annotations

import json

import pytest

import datasets  # a dependency of the package: missing it is a failure, not a skip

from lightning_less.data.records import RecordError, file_sha256, read_records  # noqa: E402
from lightning_less.errors import LessError  # noqa: E402

ROWS = [
    {"id": f"m{i}", "dataset": "chat", "messages": [{"role": "user", "content": f"question {i} about cats"},
                                                    {"role": "assistant", "content": f"answer {i}"}]}
    for i in range(4)
] + [{"id": f"p{i}", "dataset": "pc", "prompt": f"dogs and birds {i}", "completion": f"yes {i}"} for i in range(4)]
ALPACA = [{"instruction": f"Name a cat {i}", "input": "" if i % 2 else "kitten", "output": f"Tom {i}"} for i in range(4)]


def write(tmp_path, rows, kind: str) -> str:
    """The rows as jsonl (json.dumps, ensure_ascii=False), a saved dataset, a parquet or an arrow file."""
    if kind == "jsonl":
        path = tmp_path / "pool.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return str(path)
    ds = dataset_of(rows)
    if kind == "dir":
        ds.save_to_disk(str(tmp_path / "pool_ds"))
        return str(tmp_path / "pool_ds")
    if kind == "parquet":
        ds.to_parquet(str(tmp_path / "pool.parquet"))
        return str(tmp_path / "pool.parquet")
    ds.save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    return str(arrow)


def dataset_of(rows):
    """A dataset with the union of the rows' columns (absent values null), in first-seen order."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in names})


def _content(records):
    return [(r.index, r.id, r.source, r.subtask, r.messages) for r in records]


@pytest.mark.parametrize("kind", ["dir", "parquet", "arrow"])
@pytest.mark.parametrize("rows", [ROWS, ALPACA], ids=["messages+prompt", "alpaca"])
def test_dataset_inputs_give_the_records_of_the_same_rows_in_jsonl(tmp_path, kind, rows):
    # Catches: a format column misread, null columns of another format taken as present, rows out of order.
    expected = read_records(write(tmp_path, rows, "jsonl"))
    got = read_records(write(tmp_path, rows, kind))
    assert [r[3:] for r in _content(got)] == [r[3:] for r in _content(expected)]
    stem = {"dir": "pool_ds", "parquet": "pool", "arrow": "data-00000-of-00001"}[kind]  # no dataset column: the name
    assert [r.source for r in got] == [r.get("dataset", stem) for r in rows]
    assert [r.index for r in got] == list(range(len(rows))) and [r.line for r in got] == list(range(len(rows)))
    assert [got[i].messages for i in (3, 0)] == [expected[3].messages, expected[0].messages]
    if rows is ALPACA:  # no id column: made from the input name and the row
        assert got[1].id == f"{got.paths[0].rstrip('/').rsplit('/', 1)[-1]}:1"


def test_bad_row_in_parquet_names_the_file_and_row(tmp_path):
    # Catches: a bad row accepted, or reported without its file and row.
    rows = [dict(r) for r in ROWS]
    rows[5]["completion"] = "  "
    path = write(tmp_path, rows, "parquet")
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}, row 5: ") and "'completion' is empty" in str(info.value)
    assert (info.value.path, info.value.line) == (path, 5)


def test_unreadable_and_multi_split_inputs_are_named(tmp_path):
    # Catches: a pyarrow traceback instead of an error naming the input.
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(RecordError, match="broken.parquet: cannot read it as a dataset"):
        read_records(str(broken))
    datasets.DatasetDict({"train": dataset_of(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(RecordError, match="several splits .*train"):
        read_records(str(tmp_path / "dd"))


def test_hub_name_without_a_hub_is_a_clear_error(monkeypatch):
    # Catches: a raw connection traceback (or a hang) for hf:// names on an offline machine.
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LessError, match=r"hf://nobody/nothing: cannot load 'nobody/nothing'"):
        read_records("hf://nobody/nothing")


def test_a_changed_dataset_directory_has_another_fingerprint(tmp_path):
    # Catches: a directory fingerprinted by its name only (a re-saved dataset would look unchanged).
    path = write(tmp_path, ROWS, "dir")
    before = file_sha256(path)
    assert file_sha256(path) == before
    dataset_of(ROWS[::-1]).save_to_disk(str(tmp_path / "other"))
    import shutil

    shutil.rmtree(path)
    shutil.move(str(tmp_path / "other"), path)
    assert file_sha256(path) != before
