"""Instruction records: reading jsonl files in the three supported formats.

Every record is normalised to a list of chat ``messages`` (``system`` / ``user`` /
``assistant`` turns) so that one template and one masking rule serve all formats:

* Tülu / open-instruct: ``{"messages": [{"role": ..., "content": ...}, ...]}``
* prompt / completion: ``{"prompt": ..., "completion": ...}`` -> one user and one assistant turn
* Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` -> the user turn is the
  instruction, followed by a blank line and the input (both stripped) when the input is
  not empty.

Any malformed record raises :class:`RecordError`, whose message names the file and the
1-based line number.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from lightning_less.errors import InputError

ROLES = ("system", "user", "assistant")


class RecordError(InputError):
    """A record (or a whole file) that cannot be used, with the file and line it came from."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Record:
    """One instruction example, normalised to chat messages.

    Attributes:
        index: position of the record in its dataset (over all files, in order).
        id: the record's ``id`` field, else ``"<file name>:<line>"``.
        source: the record's ``dataset`` (or ``source``) field, else the file's stem.
        subtask: the record's ``subtask`` field (target sets), else ``None``.
        path: the file the record was read from.
        line: 1-based line number in ``path``.
        messages: the normalised conversation, a tuple of ``{"role", "content"}`` dicts.
    """

    index: int
    id: str
    source: str
    subtask: str | None
    path: str
    line: int
    messages: tuple = field(repr=False)

    @property
    def prompt_text(self) -> str:
        """All non-assistant contents joined by newlines (used by lexical baselines)."""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "assistant")

    @property
    def response_text(self) -> str:
        """All assistant contents joined by newlines."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")

    @property
    def text(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


def _require_str(value: object, path: str, line: int, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(path, line, f"field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordError(path, line, f"field {name!r} is empty")
    return value


def normalise_messages(obj: dict, path: str, line: int) -> tuple:
    """Turn one parsed json object into a tuple of messages, validating it."""
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise RecordError(path, line, "field 'messages' must be a non-empty list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise RecordError(path, line, f"messages[{i}] must be an object with 'role' and 'content'")
            if "role" not in m:
                raise RecordError(path, line, f"messages[{i}] is missing field 'role'")
            if "content" not in m:
                raise RecordError(path, line, f"messages[{i}] is missing field 'content'")
            role = m["role"]
            if role not in ROLES:
                raise RecordError(path, line, f"messages[{i}] has unknown role {role!r} (expected one of {ROLES})")
            content = _require_str(m["content"], path, line, f"messages[{i}].content", allow_empty=role == "system")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordError(path, line, "no assistant turn in 'messages'")
        return tuple(messages)
    if "prompt" in obj or "completion" in obj:
        for name in ("prompt", "completion"):
            if name not in obj:
                raise RecordError(path, line, f"missing field {name!r}")
        prompt = _require_str(obj["prompt"], path, line, "prompt")
        completion = _require_str(obj["completion"], path, line, "completion")
        return ({"role": "user", "content": prompt}, {"role": "assistant", "content": completion})
    if "instruction" in obj or "output" in obj:
        for name in ("instruction", "output"):
            if name not in obj:
                raise RecordError(path, line, f"missing field {name!r}")
        instruction = _require_str(obj["instruction"], path, line, "instruction")
        inp = obj.get("input", "")
        if inp is None:
            inp = ""
        inp = _require_str(inp, path, line, "input", allow_empty=True)
        output = _require_str(obj["output"], path, line, "output")
        user = instruction if not inp.strip() else f"{instruction.strip()}\n\n{inp.strip()}"
        return ({"role": "user", "content": user}, {"role": "assistant", "content": output})
    raise RecordError(
        path,
        line,
        "unknown record format: expected 'messages', 'prompt'+'completion' or 'instruction'+'output' fields",
    )


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(1-based line number, raw bytes without the line ending)`` of every non-blank line."""
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise RecordError(path, None, f"cannot read file: {err.strerror or err}") from err
    with handle:
        for number, raw in enumerate(handle, start=1):
            stripped = raw.rstrip(b"\r\n")
            if stripped.strip():
                yield number, stripped


def read_jsonl(path: str | os.PathLike, start_index: int = 0) -> list[Record]:
    """Read and validate every record of one jsonl file."""
    path = str(path)
    if os.path.isdir(path):
        raise RecordError(path, None, "is a directory, expected a jsonl file")
    records: list[Record] = []
    stem = Path(path).name
    for suffix in (".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    for number, raw in iter_lines(path):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RecordError(path, number, f"malformed JSON: {err}") from err
        if not isinstance(obj, dict):
            raise RecordError(path, number, f"expected a JSON object, got {type(obj).__name__}")
        messages = normalise_messages(obj, path, number)
        rid = obj.get("id")
        rid = str(rid) if rid not in (None, "") else f"{Path(path).name}:{number}"
        source = obj.get("dataset") or obj.get("source") or stem
        subtask = obj.get("subtask")
        records.append(
            Record(
                index=start_index + len(records),
                id=rid,
                source=str(source),
                subtask=None if subtask in (None, "") else str(subtask),
                path=path,
                line=number,
                messages=messages,
            )
        )
    if not records:
        raise RecordError(path, None, "file is empty: no records found")
    return records


def read_records(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Record]:
    """Read several jsonl files into one list of records with global, stable indices."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no data files given")
    records: list[Record] = []
    for p in paths:
        records.extend(read_jsonl(p, start_index=len(records)))
    return records


#: Digests already computed in this process, by version of the file (real path, size, mtime, inode).
_SHA256: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes.

    Computed once per version of the file in a process: the selection, its manifest and the
    stores' provenance checks all ask for the same (possibly large) pool files, and a file
    rewritten in place gets a new mtime and is hashed again.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    break
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """``[{"path", "sha256", "bytes"}]`` for each file, for manifests."""
    return [{"path": str(p), "sha256": file_sha256(p), "bytes": os.path.getsize(p)} for p in paths]


def read_raw_lines(records: Sequence[Record]) -> list[bytes]:
    """The exact input bytes (without line ending) of each record, in the order given."""
    wanted: dict[str, set[int]] = {}
    for r in records:
        wanted.setdefault(r.path, set()).add(r.line)
    raw: dict[tuple[str, int], bytes] = {}
    for path, lines in wanted.items():
        for number, data in iter_lines(path):
            if number in lines:
                raw[(path, number)] = data
    missing = [r for r in records if (r.path, r.line) not in raw]
    if missing:
        raise RecordError(missing[0].path, missing[0].line, "line is blank or gone: the file changed since it was read")
    return [raw[(r.path, r.line)] for r in records]


def as_paths(value: Any) -> list[str]:
    """File paths from a CLI value or a manifest entry.

    Accepts ``None``, a path, a list of paths, or a list of ``{"path": ...}`` dicts
    (as :func:`~lightning_less.data.records.files_fingerprint` writes them).
    """
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, dict):
        if "path" in value:
            return [str(value["path"])]
        if "paths" in value:
            return as_paths(value["paths"])
        return []
    out: list[str] = []
    for item in value:
        out.extend(as_paths(item))
    return out
