"""Instruction records: reading jsonl files (and JSON arrays) in the four supported layouts.

Every record is normalised to a list of chat ``messages`` (``system`` / ``user`` /
``assistant`` turns) so that one template and one masking rule serve all formats:

* Tülu / open-instruct: ``{"messages": [{"role": ..., "content": ...}, ...]}``
* ShareGPT: ``{"conversations": [{"from": ..., "value": ...}, ...]}``; ``from`` is mapped
  by :data:`SHAREGPT_ROLES` (``human`` / ``user`` -> user; ``gpt`` / ``assistant`` /
  ``chatgpt`` / ``bing`` / ``bard`` -> assistant; ``system``), any other name is an error.
* prompt / completion: ``{"prompt": ..., "completion": ...}`` -> one user and one assistant turn
* Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` -> the user turn is the
  instruction, followed by a blank line and the input (both stripped) when the input is
  not empty.

Both chat layouts follow the same rules: every turn is kept in order (consecutive turns of
one role too, and a conversation may start with the assistant), every turn's content must
be a non-empty string except a system turn's, and at least one turn must be the
assistant's. A record with several layouts' fields is read by the first in the list above.

Any malformed record raises :class:`RecordError`, whose message names the file and the
1-based line number (of a JSON array: the line where the element starts); a file cut off
at the end is an error or read up to its last complete record
(:mod:`lightning_less.data.jsonfiles`). :func:`read_records` returns a
:class:`~lightning_less.data.index.RecordIndex` (a few integers per record, text read on
access) and also reads Hugging Face ``datasets`` inputs (:mod:`lightning_less.data.sources`);
docs/scaling.md says how.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from lightning_less.errors import InputError

if TYPE_CHECKING:
    from lightning_less.data.index import RecordIndex
    from lightning_less.data.jsonfiles import Truncated

ROLES = ("system", "user", "assistant")


class RecordError(InputError):
    """A record (or a whole file) that cannot be used, with the file and line (or dataset row) it came from.

    Attributes:
        path: the file, directory or hub name.
        line: the 1-based line of a jsonl file, the 0-based row of a dataset, or ``None``.
        reason: the message without its location.
    """

    def __init__(self, path: str | os.PathLike, line: int | None, message: str, unit: str = "line") -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        if line is None:
            where = self.path
        else:
            where = f"{self.path}:{line}" if unit == "line" else f"{self.path}, {unit} {line}"
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


#: ShareGPT speaker names (``from``) and the role each becomes.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def _turns(raw: object, path: str, line: int, name: str, role_key: str, content_key: str, roles: dict) -> tuple:
    """The turns of a ``messages`` or ``conversations`` list, each role mapped through ``roles``."""
    if not isinstance(raw, list) or not raw:
        raise RecordError(path, line, f"field {name!r} must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RecordError(path, line, f"{name}[{i}] must be an object with {role_key!r} and {content_key!r}")
        for key in (role_key, content_key):
            if key not in m:
                raise RecordError(path, line, f"{name}[{i}] is missing field {key!r}")
        role = roles.get(m[role_key]) if isinstance(m[role_key], str) else None
        if role is None:
            raise RecordError(path, line,
                              f"{name}[{i}] has unknown role {m[role_key]!r} (expected one of {tuple(roles)})")
        content = _require_str(m[content_key], path, line, f"{name}[{i}].{content_key}", allow_empty=role == "system")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(path, line, f"no assistant turn in {name!r}")
    return tuple(messages)


def normalise_messages(obj: dict, path: str, line: int) -> tuple:
    """Turn one parsed json object into a tuple of messages, validating it."""
    if "messages" in obj:
        return _turns(obj["messages"], path, line, "messages", "role", "content", {r: r for r in ROLES})
    if "conversations" in obj:
        return _turns(obj["conversations"], path, line, "conversations", "from", "value", SHAREGPT_ROLES)
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
        "unknown record format: expected 'messages', 'conversations', 'prompt'+'completion' or "
        "'instruction'+'output' fields",
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


def input_stem(path: str) -> str:
    """The default ``source`` of an input's records: its file (or directory) name without a data suffix."""
    stem = Path(path.rstrip("/")).name
    for suffix in (".jsonl", ".json", ".parquet", ".arrow"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def record_from_obj(obj: Any, path: str, line: int, index: int, stem: str, unit: str = "line") -> Record:
    """Validate one parsed row (a jsonl object or a dataset row) and make its :class:`Record`.

    Raises:
        RecordError: naming ``path`` and ``line`` (a dataset's ``row``: ``unit="row"``).
    """
    if not isinstance(obj, dict):
        raise RecordError(path, line, f"expected a JSON object, got {type(obj).__name__}", unit)
    try:
        messages = normalise_messages(obj, path, line)
    except RecordError as err:
        if unit == "line":
            raise
        raise RecordError(path, line, err.reason, unit) from None
    rid = obj.get("id")
    rid = str(rid) if rid not in (None, "") else f"{Path(path.rstrip('/')).name}:{line}"
    source = obj.get("dataset") or obj.get("source") or stem
    subtask = obj.get("subtask")
    return Record(index=index, id=rid, source=str(source), subtask=None if subtask in (None, "") else str(subtask),
                  path=path, line=line, messages=messages)


def read_jsonl(path: str | os.PathLike, start_index: int = 0, truncated: Truncated | None = None) -> list[Record]:
    """Read and validate every record of one jsonl (or ``.json``) file into a list (small files: :func:`read_records`)."""
    from lightning_less.data.index import RecordIndex

    return [dataclasses.replace(r, index=start_index + r.index) for r in RecordIndex([path], truncated)]


def read_records(paths: Sequence[str | os.PathLike] | str | os.PathLike,
                 truncated: Truncated | None = None) -> "RecordIndex":
    """Index several inputs (jsonl files, ``.json`` arrays, saved datasets, parquet / arrow files) into one sequence.

    Every record is validated now (a bad one raises :class:`RecordError` naming its file and
    line); the result keeps only byte offsets and small integer codes per record and reads
    (and re-validates) a record's text when it is accessed. It behaves like the list of
    records: ``len``, indexing, slicing (a list) and iteration (streamed, in order), with
    global, stable indices.

    Args:
        paths: the inputs, in order.
        truncated: a file cut off at the end is an error (``"error"``) or read up to its last
            complete record with a warning (``"complete"``); ``None`` (the default) takes
            ``LIGHTNING_LESS_TRUNCATED`` from the environment, else ``"error"``. A malformed
            record before the end is an error either way.
    """
    from lightning_less.data.index import RecordIndex

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no data files given")
    return RecordIndex(paths, truncated)


#: Digests already computed in this process, by version of the file (real path, size, mtime, inode).
_SHA256: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes (of a directory: of its files' names and digests).

    Computed once per version of the file in a process: the selection, its manifest and the
    stores' provenance checks all ask for the same (possibly large) pool files, and a file
    rewritten in place gets a new mtime and is hashed again. A saved dataset directory is
    identified by every file under it (sorted relative paths and their digests), a hub
    dataset (``hf://...``) by the dataset's own ``_fingerprint``.
    """
    if str(path).startswith("hf://"):
        from lightning_less.data.sources import hub_fingerprint

        return hub_fingerprint(str(path))
    if os.path.isdir(path):
        h = hashlib.sha256()
        for rel in _files_under(path):
            h.update(f"{rel}\0{file_sha256(os.path.join(path, rel), chunk)}\n".encode("utf-8"))
        return h.hexdigest()
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


def _files_under(path: str | os.PathLike) -> list[str]:
    """Relative paths of the regular files under a directory, sorted."""
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        out.extend(os.path.relpath(os.path.join(root, f), path) for f in files)
    return sorted(out)


def input_bytes(path: str | os.PathLike) -> int | None:
    """Size in bytes of an input file or of every file under a directory; ``None`` for a hub dataset."""
    if str(path).startswith("hf://"):
        return None
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, rel)) for rel in _files_under(path))
    return os.path.getsize(path)


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """``[{"path", "sha256", "bytes"}]`` for each input (file, dataset directory or hub name), for manifests."""
    return [{"path": str(p), "sha256": file_sha256(p), "bytes": input_bytes(p)} for p in paths]


def read_raw_lines(records: Sequence[Record], indices: Sequence[int] | None = None) -> list[bytes]:
    """The exact input bytes (without line ending) of each record (of ``records[i]`` for ``i`` in ``indices``), in order."""
    from lightning_less.data.index import RecordIndex

    if isinstance(records, RecordIndex):  # read by offset, never building the records
        return records.raw_lines(range(len(records)) if indices is None else indices)
    if indices is not None:
        records = [records[int(i)] for i in indices]
    wanted: dict[str, set[int]] = {}
    for r in records:
        wanted.setdefault(r.path, set()).add(r.line)
    raw: dict[tuple[str, int], bytes] = {}
    for path, lines in wanted.items():
        for number, data in _raw_by_line(path):
            if number in lines:
                raw[(path, number)] = data
    missing = [r for r in records if (r.path, r.line) not in raw]
    if missing:
        raise RecordError(missing[0].path, missing[0].line, "line is blank or gone: the file changed since it was read")
    return [raw[(r.path, r.line)] for r in records]


def _raw_by_line(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line, raw record)`` of a file's records: its lines, or the one-line JSON of each element or row."""
    from lightning_less.data.index import JsonlSource, open_source
    from lightning_less.data.jsonfiles import resolve_truncated

    source = open_source(path, resolve_truncated())
    if isinstance(source, JsonlSource):
        yield from iter_lines(path)
        return
    lines = [line for line, _ in source.scan()]
    for local, line in enumerate(lines):
        yield line, source.raw(local)


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
