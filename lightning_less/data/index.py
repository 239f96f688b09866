"""``RecordIndex``: a pool of records held as byte offsets and integer codes, read when needed.

A pool of millions of examples does not fit in memory as Python objects. The index reads
every input once, validating each record as :func:`~lightning_less.data.records.read_records`
always did (a bad line raises at once, naming its file and line), and keeps per record only

* where it is: the byte offset, length and (starting) line number of a jsonl line or of
  an element of a ``.json`` array (a dataset row is its own position: nothing is kept),
* its ``source`` and ``subtask`` as ``int32`` codes into two small vocabularies,

about 28 bytes per record. A record's text is read again (``os.pread``, or a memory-mapped
Arrow row) and parsed when it is accessed; iterating streams the inputs in order. The raw
line of a jsonl record is read back byte for byte for ``selected.jsonl`` (a pretty-printed
array element as one line of compact JSON). A file cut off at the end is an error or is
read up to its last complete record (``truncated``, :mod:`lightning_less.data.jsonfiles`).
"""

from __future__ import annotations

import itertools
import json
import os
from array import array
from typing import Iterator, Sequence, overload

import numpy as np

from lightning_less.data.jsonfiles import (CHUNK, ArrayScanner, Cut, Truncated, accept_cut, first_byte,
                                           resolve_truncated, stops_at_end)
from lightning_less.data.records import Record, RecordError, input_stem, record_from_obj

#: Per-record arrays of an index, for the memory test and the docs.
PER_RECORD_ARRAYS = ("offsets", "lengths", "lines", "source_codes", "subtask_codes")


class _FileSource:
    """A file of records: the offset, byte length and starting line of each, filled by ``scan``; read back by pread."""

    unit = "line"

    def __init__(self, path: str, truncated: Truncated = "error") -> None:
        if os.path.isdir(path):
            raise RecordError(path, None, "is a directory, expected a jsonl file or a saved dataset directory "
                                          "(Dataset.save_to_disk: it holds dataset_info.json and state.json)")
        self.path = path
        self.truncated = truncated
        self.cut: Cut | None = None  # where a file cut off at the end stops (read with truncated="complete")
        self.offsets = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int32)
        self.lines = np.zeros(0, dtype=np.int32)
        self._version: tuple[int, int] | None = None
        self._fd: tuple[int, int] | None = None  # (pid, fd): a forked data-loader worker opens its own

    def __len__(self) -> int:
        return int(self.offsets.size)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None
        return state

    def _open(self):
        """The file opened for a scan, its version (size, mtime) recorded."""
        try:
            handle = open(self.path, "rb")
        except OSError as err:
            raise RecordError(self.path, None, f"cannot read file: {err.strerror or err}") from err
        st = os.fstat(handle.fileno())
        self._version = (st.st_size, st.st_mtime_ns)
        return handle

    def _keep(self, offsets: array, lengths: array, lines: array, cut: Cut | None) -> None:
        """Store the scanned records' places; a cut at the end is an error or a warning (``truncated``)."""
        self.offsets = np.frombuffer(offsets, dtype=np.int64).copy()
        self.lengths = np.frombuffer(lengths, dtype=np.int32).copy()
        self.lines = np.frombuffer(lines, dtype=np.int32).copy()
        self.cut = cut
        if cut is not None:
            accept_cut(self.path, cut, self.truncated)

    def check_unchanged(self) -> None:
        st = os.stat(self.path) if os.path.exists(self.path) else None
        if st is None or (st.st_size, st.st_mtime_ns) != self._version:
            raise RecordError(self.path, None, "the file changed since it was read: read the records again")

    def _pread(self, local: int) -> bytes:
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            self._fd = (pid, os.open(self.path, os.O_RDONLY))
        st = os.fstat(self._fd[1])
        data = os.pread(self._fd[1], int(self.lengths[local]), int(self.offsets[local]))
        if (st.st_size, st.st_mtime_ns) != self._version or len(data) != int(self.lengths[local]):
            raise RecordError(self.path, int(self.lines[local]), "line is blank or gone: the file changed since it was "
                                                                 "read (read the records again)")
        return data

    def raw(self, local: int) -> bytes:
        """The record's bytes as written to ``selected.jsonl`` (one line)."""
        return self._pread(local)

    def read(self, local: int) -> tuple[int, object]:
        line = int(self.lines[local])
        return line, _parse(self._pread(local), self.path, line)


class JsonlSource(_FileSource):
    """One jsonl file (or a ``.json`` file of JSON lines): one record per non-blank line."""

    def _lines(self) -> Iterator[tuple[int, int, bytes, bool]]:
        """``(line number, byte offset, stripped bytes, ends with a newline)`` of every non-blank line."""
        with self._open() as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                stripped = raw.rstrip(b"\r\n")
                if stripped.strip():
                    yield number, offset, stripped, raw.endswith(b"\n")
                offset += len(raw)

    def scan(self) -> Iterator[tuple[int, object]]:
        """Parse every line once, recording where it is; yields ``(line, parsed object)``."""
        offsets, lengths, lines = array("q"), array("i"), array("i")
        cut = None
        for number, offset, raw, ended in self._lines():
            try:
                obj = _parse(raw, self.path, number)
            except RecordError as err:
                if ended or not _stops_at_end(raw):  # not the last line, or malformed before its end
                    if self.path.lower().endswith(".json") and number == 1:
                        raise RecordError(self.path, number, f"{err.reason} (a .json file is read as one JSON "
                                                             "array when it starts with '[', else as JSON lines)")
                    raise
                cut = Cut(number, offset, len(offsets))
                break
            offsets.append(offset)
            lengths.append(len(raw))
            lines.append(number)
            yield number, obj
        self._keep(offsets, lengths, lines, cut)

    def stream(self) -> Iterator[tuple[int, object]]:
        """``(line, parsed object)`` of every record, reading the file in order."""
        self.check_unchanged()
        for number, _, raw, _ in itertools.islice(self._lines(), len(self)):  # not the cut last line
            yield number, _parse(raw, self.path, number)


class JsonArraySource(_FileSource):
    """One ``.json`` file holding a JSON array: one record per element, which may span several lines.

    ``line`` is the line where the element starts. :meth:`raw` gives the element's own
    bytes when they hold no line break, else the element as compact JSON on one line
    (``json.dumps(element, ensure_ascii=False)``), so ``selected.jsonl`` stays JSON lines.
    """

    def scan(self) -> Iterator[tuple[int, object]]:
        """Parse every element once, recording where it is; yields ``(line, parsed object)``."""
        offsets, lengths, lines = array("q"), array("i"), array("i")
        with self._open() as handle:
            scanner = ArrayScanner(handle, self.path)
            for line, offset, length, obj in scanner:
                offsets.append(offset)
                lengths.append(length)
                lines.append(line)
                yield line, obj
        self._keep(offsets, lengths, lines, scanner.cut)

    def stream(self) -> Iterator[tuple[int, object]]:
        """``(line, parsed object)`` of every record, reading the file in order a block at a time."""
        self.check_unchanged()
        with open(self.path, "rb") as handle:
            block, start = b"", 0
            for local in range(len(self)):
                offset, length, line = int(self.offsets[local]), int(self.lengths[local]), int(self.lines[local])
                if offset + length > start + len(block):
                    handle.seek(offset)
                    block, start = handle.read(max(length, CHUNK)), offset
                data = block[offset - start:offset - start + length]
                if len(data) != length:
                    self.check_unchanged()
                yield line, _parse(data, self.path, line)

    def raw(self, local: int) -> bytes:
        data = self._pread(local)
        if b"\n" in data or b"\r" in data:  # a pretty-printed element: one line of compact JSON instead
            return json.dumps(json.loads(data), ensure_ascii=False).encode("utf-8")
        return data


def _stops_at_end(raw: bytes) -> bool:
    """Whether a jsonl line that does not parse is the start of a valid JSON value (cut off, not malformed)."""
    text = raw.decode("utf-8", "surrogateescape")  # a cut inside a multi-byte character: a lone surrogate
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return stops_at_end(text, err)
    return False  # parses as text: the bytes were not valid UTF-8


def _parse(raw: bytes, path: str, line: int) -> object:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(path, line, f"malformed JSON: {err}") from err


def open_source(path: str, truncated: Truncated = "error"):
    """The source reading ``path``: a jsonl file, a ``.json`` array, or a Hugging Face dataset (directory,
    parquet, arrow, ``hf://``)."""
    from lightning_less.data.sources import DatasetSource, is_dataset_input

    if is_dataset_input(path):
        return DatasetSource(path)
    if path.lower().endswith(".json") and os.path.isfile(path) and _first_byte(path) == b"[":
        return JsonArraySource(path, truncated)
    return JsonlSource(path, truncated)


def _first_byte(path: str) -> bytes:
    try:
        return first_byte(path)
    except OSError as err:
        raise RecordError(path, None, f"cannot read file: {err.strerror or err}") from err


class RecordIndex(Sequence[Record]):
    """The records of several inputs, indexed once, read when needed (see the module docstring).

    Args:
        paths: jsonl files, ``.json`` files (one JSON array, or JSON lines), saved dataset
            directories, parquet / arrow files or ``hf://`` names, in order.
        truncated: a file cut off at the end (:mod:`lightning_less.data.jsonfiles`) is an
            error (``"error"``) or read up to its last complete record (``"complete"``);
            ``None``: ``LIGHTNING_LESS_TRUNCATED`` in the environment, else ``"error"``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], truncated: Truncated | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.truncated = resolve_truncated(truncated)
        self.sources = []
        self.source_names: list[str] = []
        self.subtask_names: list[str] = []
        source_codes, subtask_codes = array("i"), array("i")
        source_of: dict[str, int] = {}
        subtask_of: dict[str, int] = {}
        starts = [0]
        for path in self.paths:
            source = open_source(path, self.truncated)
            stem = input_stem(path)
            count = 0
            for line, obj in source.scan():
                record = record_from_obj(obj, path, line, starts[-1] + count, stem, source.unit)
                source_codes.append(_code(record.source, source_of, self.source_names))
                subtask_codes.append(-1 if record.subtask is None else _code(record.subtask, subtask_of, self.subtask_names))
                count += 1
            if count == 0:
                raise RecordError(path, None, "file is empty: no records found")
            self.sources.append(source)
            starts.append(starts[-1] + count)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.source_codes = np.frombuffer(source_codes, dtype=np.int32).copy()
        self.subtask_codes = np.frombuffer(subtask_codes, dtype=np.int32).copy()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"record index {index} out of range for a pool of {n}")
        s = int(np.searchsorted(self.starts, index, side="right")) - 1
        return s, index - int(self.starts[s])

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        s, local = self._locate(int(index))
        source = self.sources[s]
        line, obj = source.read(local)
        start = int(self.starts[s])
        return record_from_obj(obj, source.path, line, start + local, input_stem(source.path), source.unit)

    def __iter__(self) -> Iterator[Record]:
        for s, source in enumerate(self.sources):
            stem, start = input_stem(source.path), int(self.starts[s])
            for local, (line, obj) in enumerate(source.stream()):
                yield record_from_obj(obj, source.path, line, start + local, stem, source.unit)

    def __add__(self, other: Sequence[Record]) -> list[Record]:
        return list(self) + list(other)

    def __radd__(self, other: Sequence[Record]) -> list[Record]:
        return list(other) + list(self)

    def __eq__(self, other: object) -> bool:
        # As the list it stands for (small pools: tests, reports).
        if isinstance(other, (list, tuple, RecordIndex)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so not hashable either

    def __repr__(self) -> str:
        return f"RecordIndex({len(self)} records from {self.paths})"

    def sources_of(self) -> list[str]:
        """Each record's ``source`` (a list of ``len(self)`` references to a few strings)."""
        return [self.source_names[c] for c in self.source_codes]

    def raw_lines(self, indices: Sequence[int]) -> list[bytes]:
        """The exact input line (jsonl) or the row as one JSON object (datasets) of each index, in that order."""
        out = []
        for i in indices:
            s, local = self._locate(int(i))
            out.append(self.sources[s].raw(local))
        return out

    def only_datasets(self) -> bool:
        """Whether every input is a ``datasets`` input (its selected rows can be saved as a dataset)."""
        return all(source.unit == "row" for source in self.sources)

    def nbytes(self) -> int:
        """Bytes held by the per-record arrays (offsets, lengths, lines and the two codes)."""
        total = self.source_codes.nbytes + self.subtask_codes.nbytes
        for source in self.sources:
            total += sum(getattr(source, name).nbytes for name in ("offsets", "lengths", "lines") if hasattr(source, name))
        return total


def _code(value: str, codes: dict[str, int], names: list[str]) -> int:
    if value not in codes:
        codes[value] = len(names)
        names.append(value)
    return codes[value]
