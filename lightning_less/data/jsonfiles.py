"""JSON array files read a record at a time, and files cut off at the end.

A ``.json`` file that is one JSON array is never loaded whole: it is decoded a buffer at
a time and each element is parsed with ``json.JSONDecoder.raw_decode``, which gives where
the element ends; the element's byte offset, byte length and 1-based starting line are
what the index keeps (:class:`~lightning_less.data.index.JsonArraySource`).

A download or copy that stopped early leaves a file *cut off*: a JSON array that stops
inside an element or before its closing ``]``, or a jsonl file whose last line has no
newline and stops in the middle of its JSON. That is an error by default, naming the file,
where the cut record starts and how many complete records precede it. The ``truncated``
setting (``LIGHTNING_LESS_TRUNCATED`` in the environment, so every command and DDP child
process honours it) set to ``"complete"`` reads the complete records before the cut and
logs a warning instead. A malformed record anywhere else is always an error.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import IO, Any, Iterator, Literal

from lightning_less.data.records import RecordError
from lightning_less.errors import InputError

log = logging.getLogger(__name__)

Truncated = Literal["error", "complete"]
TRUNCATED_CHOICES = ("error", "complete")
#: The environment variable giving the default of every ``truncated`` argument.
TRUNCATED_ENV = "LIGHTNING_LESS_TRUNCATED"
CHUNK = 1 << 20  # bytes read at once while scanning an array
_NON_WS = re.compile(r"[^ \t\n\r]")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_TAIL = re.compile(r"[-+.eE0-9]*")
_ESCAPE_TAIL = re.compile(r"u[0-9a-fA-F]{0,3}")
_DECODER = json.JSONDecoder()


def resolve_truncated(value: str | None = None) -> Truncated:
    """The ``truncated`` setting: ``value`` when given, else ``LIGHTNING_LESS_TRUNCATED``, else ``"error"``.

    Raises:
        InputError: the value (or the variable) is neither ``"error"`` nor ``"complete"``.
    """
    if value is None:
        env = os.environ.get(TRUNCATED_ENV, "")
        if env == "":
            return "error"
        if env not in TRUNCATED_CHOICES:
            raise InputError(f"{TRUNCATED_ENV}={env!r} is not a valid setting: set it to 'error' (a file cut off "
                             "at the end is an error, the default) or 'complete' (read only its complete records)")
        return env  # type: ignore[return-value]
    if value not in TRUNCATED_CHOICES:
        raise InputError(f"truncated={value!r}: expected 'error' or 'complete'")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Cut:
    """Where a file cut off at the end stops.

    Attributes:
        line: 1-based line where the cut record starts (or where an unclosed array stops).
        offset: its byte offset.
        complete: how many complete records precede it.
        record: whether a record is cut (``False``: an array stops between records, before its ``]``).
    """

    line: int
    offset: int
    complete: int
    record: bool = True

    def describe(self) -> str:
        where = f"line {self.line} (byte {self.offset})"
        if self.record:
            return f"the record starting at {where} is cut off"
        return f"the JSON array stops at {where} without its closing ']'"


def cut_error(path: str, cut: Cut) -> RecordError:
    """The error for a file cut off at the end: where, how many complete records, and how to read them."""
    return RecordError(path, cut.line, f"the file is cut off at the end: {cut.describe()}, after {cut.complete} "
                                       f"complete record(s). Complete the file, or read only its complete records "
                                       f"with {TRUNCATED_ENV}=complete in the environment (truncated='complete' "
                                       "from Python)")


#: Files already reported as cut in this process, by version (real path, size, mtime): one warning per file.
_WARNED: set[tuple[str, int, int]] = set()


def accept_cut(path: str, cut: Cut, truncated: Truncated) -> None:
    """Refuse a cut file (``truncated="error"``), or warn once per file version that only its complete records are read.

    Raises:
        RecordError: ``truncated`` is ``"error"``, or no record before the cut is complete.
    """
    if truncated != "complete":
        raise cut_error(path, cut)
    if cut.complete == 0:
        raise RecordError(path, cut.line, f"the file is cut off at the end ({cut.describe()}) and holds no complete "
                                          "record before it")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _WARNED and _rank_zero():
        _WARNED.add(key)
        log.warning("%s is cut off at the end (%s): reading only the %d complete record(s) before it (%s=complete)",
                    path, cut.describe(), cut.complete, TRUNCATED_ENV)


def _rank_zero() -> bool:
    # Lightning's rule for a process's rank (the launcher's environment): only rank 0 warns under DDP.
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]) == 0
    return True


def stops_at_end(text: str, err: json.JSONDecodeError) -> bool:
    """Whether ``text`` failed to parse only because it ends: it is the start of some valid JSON value.

    The decoder reports an unterminated string (the text ends inside it), or an error at
    the end of the text, or one at a token the end cut short (``tru``, ``-``, ``1.``, ``\\u12``).
    """
    if err.msg.startswith("Unterminated string"):
        return True
    tail = text[err.pos:]
    return (any(literal.startswith(tail) for literal in _LITERALS) or _NUMBER_TAIL.fullmatch(tail) is not None
            or (err.msg.startswith("Invalid \\uXXXX") and _ESCAPE_TAIL.fullmatch(tail) is not None))


def first_byte(path: str) -> bytes:
    """The first byte of a file that is not whitespace (nor a UTF-8 byte order mark); ``b""`` if none."""
    with open(path, "rb") as handle:
        head = handle.read(3)
        if head != codecs.BOM_UTF8:
            handle.seek(0)
        while True:
            block = handle.read(1 << 16)
            if not block:
                return b""
            stripped = block.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]


class ArrayScanner:
    """The elements of one JSON array file, parsed one at a time from buffered reads.

    Iterating yields ``(line, byte offset, byte length, parsed element)``; a malformed
    element, or anything but ``,`` / ``]`` between elements, raises ``RecordError`` naming
    the element's line. After the iteration, :attr:`cut` says where a file cut off at the
    end stops (``None`` for a whole array). Memory is one buffer of about the largest
    element (at least :data:`CHUNK` bytes of text).
    """

    def __init__(self, handle: IO[bytes], path: str) -> None:
        self.handle, self.path = handle, path
        self.cut: Cut | None = None
        # Undecodable bytes become lone surrogates, so byte counts stay exact; a record holding one is refused.
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._buf, self._pos, self._eof = "", 0, False
        self.byte, self.line = 0, 1  # of the character at _pos

    def _more(self) -> None:
        data = self.handle.read(max(CHUNK, len(self._buf) - self._pos))  # doubling: big elements parse in O(n)
        self._eof = not data
        self._buf = self._buf[self._pos:] + self._decoder.decode(data, final=self._eof)
        self._pos = 0

    def _advance(self, to: int, nbytes: int | None = None) -> None:
        skipped = self._buf[self._pos:to]
        self.byte += len(skipped.encode("utf-8", "surrogateescape")) if nbytes is None else nbytes
        self.line += skipped.count("\n")
        self._pos = to

    def _skip_ws(self) -> bool:
        """Move to the next non-whitespace character; ``False`` at the end of the file."""
        while True:
            found = _NON_WS.search(self._buf, self._pos)
            if found:
                self._advance(found.start())
                return True
            self._advance(len(self._buf))
            if self._eof:
                return False
            self._more()

    def _error(self, line: int, message: str) -> RecordError:
        return RecordError(self.path, line, f"malformed JSON: {message}")

    def __iter__(self) -> Iterator[tuple[int, int, int, Any]]:
        self._skip_ws()
        if self._buf.startswith("\ufeff", self._pos):  # a byte order mark
            self._advance(self._pos + 1)
            self._skip_ws()
        self._advance(self._pos + 1)  # the "[" (the caller checked it)
        count = 0
        while True:
            if not self._skip_ws():
                self.cut = Cut(self.line, self.byte, count, record=False)
                return
            if count == 0 and self._buf[self._pos] == "]":
                self._advance(self._pos + 1)
                break
            element = self._element(count)
            if element is None:
                return
            yield element
            count += 1
            if not self._skip_ws():
                self.cut = Cut(self.line, self.byte, count, record=False)
                return
            char = self._buf[self._pos]
            self._advance(self._pos + 1)
            if char == "]":
                break
            if char != ",":
                raise self._error(self.line, f"expected ',' or ']' after the record of line {element[0]}, "
                                             f"found {char!r}")
        if self._skip_ws():
            raise self._error(self.line, "data after the array's closing ']'")

    def _element(self, count: int) -> tuple[int, int, int, Any] | None:
        """Parse the element at the current position (reading more as needed); ``None`` when the file cuts it off."""
        line, offset = self.line, self.byte
        while True:
            try:
                obj, end = _DECODER.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                if not self._eof and (err.msg.startswith("Unterminated string") or err.pos >= len(self._buf) - 16):
                    self._more()
                    continue
                if self._eof and stops_at_end(self._buf, err):
                    self.cut = Cut(line, offset, count)
                    return None
                at = self.line + self._buf.count("\n", self._pos, err.pos)
                column = err.pos - self._buf.rfind("\n", 0, err.pos)
                raise self._error(line, f"{err.msg} at line {at} column {column}") from None
            except RecursionError:
                raise self._error(line, "nested too deeply") from None
            if end == len(self._buf) and not self._eof:  # a number or literal may go on in the next block
                self._more()
                continue
            break
        text = self._buf[self._pos:end]
        try:
            nbytes = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise self._error(line, "the record is not valid UTF-8") from None
        self._advance(end, nbytes)
        return line, offset, nbytes, obj
