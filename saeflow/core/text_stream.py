"""Reading a prompt file in bounded memory, whatever its size.

- :func:`bounded_lines`: raw byte chunks -> numbered lines, refusing a line longer than a
  limit before it is held whole (a 1 GB file without a newline never sits in memory).
- :func:`decoded_chunks`: raw byte chunks -> UTF-8 text chunks, naming the line of a bad
  byte.
- :class:`JsonPromptDocument`: the ``{"prompts": [...], "saeflow": {...}}`` document read
  value by value: each array item and each top-level value is parsed by the standard
  library's JSON decoder (``raw_decode``) as soon as it is complete; only the structure
  between them (braces, brackets, commas, keys) is scanned here.

Every error is :class:`InvalidPromptSet` (or :class:`PromptSetTooLarge`) with its line.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from typing import Any

from saeflow.core.errors import InvalidPromptSet, PromptSetTooLarge

BOM = b"\xef\xbb\xbf"
_WHITESPACE = " \t\n\r"


def bounded_lines(
    chunks: Iterable[bytes], *, max_line_bytes: int, max_file_bytes: int
) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without terminator)``; ``\\r\\n`` ends a line like ``\\n``."""
    pending = b""
    number, total = 0, 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_file_bytes:
            raise PromptSetTooLarge(
                f"the prompt set exceeds {max_file_bytes} bytes", line=number + 1
            )
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            number += 1
            yield number, line.removesuffix(b"\r")
        if len(pending) > max_line_bytes:
            raise InvalidPromptSet(
                f"line longer than {max_line_bytes} bytes (the longest prompt allowed plus "
                "room for JSON)",
                line=number + 1,
            )
    if pending:
        yield number + 1, pending.removesuffix(b"\r")


def decode_line(raw: bytes, number: int) -> str:
    """One line as text (a leading BOM on line 1 dropped); InvalidPromptSet names a bad byte."""
    if number == 1 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPromptSet(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}", line=number
        ) from exc


def decoded_chunks(chunks: Iterable[bytes], *, max_file_bytes: int) -> Iterator[str]:
    """UTF-8 text of the chunks (BOM dropped); a bad byte is InvalidPromptSet with its line."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    total, lines_before, first = 0, 0, True
    for chunk in chunks:
        total += len(chunk)
        if total > max_file_bytes:
            raise PromptSetTooLarge(f"the prompt set exceeds {max_file_bytes} bytes")
        if first and chunk:
            chunk, first = chunk.removeprefix(BOM), False
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            line = lines_before + chunk.count(b"\n", 0, exc.start) + 1
            raise InvalidPromptSet(f"not UTF-8: byte 0x{chunk[exc.start]:02x}", line=line) from exc
        lines_before += chunk.count(b"\n")
        yield text
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidPromptSet("not UTF-8: the file ends inside a character") from exc
    if tail:
        yield tail


class JsonPromptDocument:
    """Walks ``{"prompts": [item, ...], "saeflow": {...}}`` over text chunks.

    Iterating yields ``("prompt", item, index, line)`` for each array item and
    ``("options", value, None, line)`` for the ``saeflow`` value, in document order. A value
    longer than ``max_value_chars`` is refused before the rest of the file is read.
    """

    def __init__(self, chunks: Iterable[str], *, max_value_chars: int) -> None:
        self._chunks = iter(chunks)
        self._max_value = max_value_chars
        self._buf = ""
        self._pos = 0
        self._line = 1  # line of self._pos
        self._eof = False
        self._decoder = json.JSONDecoder()

    # --- buffer -----------------------------------------------------------------------

    def _more(self) -> bool:
        """Read the next chunk; False at the end of the file."""
        if self._eof:
            return False
        for chunk in self._chunks:
            if chunk:
                # Drop what was consumed, so the buffer holds at most one value and a chunk.
                self._buf = self._buf[self._pos :] + chunk
                self._pos = 0
                return True
        self._eof = True
        return False

    def _advance(self, to: int) -> None:
        self._line += self._buf.count("\n", self._pos, to)
        self._pos = to

    def _peek(self) -> str:
        """The next non-blank character ("" at the end), not consumed."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._advance(self._pos + 1)
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def _expect(self, chars: str, what: str) -> str:
        found = self._peek()
        if not found or found not in chars:
            shown = repr(found) if found else "the end of the file"
            raise InvalidPromptSet(f"invalid JSON: expected {what}, found {shown}", line=self._line)
        self._advance(self._pos + 1)
        return found

    def _value(self) -> tuple[Any, int]:
        """The next JSON value and the line it starts on."""
        line_before = self._line
        if not self._peek():  # nothing left: name the line the document stopped on
            raise InvalidPromptSet("invalid JSON: Expecting value", line=line_before)
        start_line = self._line
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                error: json.JSONDecodeError | None = exc
            except RecursionError as exc:
                raise InvalidPromptSet("JSON nested too deeply", line=start_line) from exc
            else:
                error = None
                if end < len(self._buf) or self._eof:  # a number may continue in the next chunk
                    self._advance(end)
                    return value, start_line
            if len(self._buf) - self._pos > self._max_value:
                raise InvalidPromptSet(
                    f"a JSON value longer than {self._max_value} characters (the longest "
                    "prompt allowed plus room for JSON)",
                    line=start_line,
                )
            if not self._more():
                message = error.msg if error is not None else "incomplete value"
                raise InvalidPromptSet(f"invalid JSON: {message}", line=start_line)

    # --- structure --------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[str, Any, int | None, int]]:
        self._expect("{", "an object {...}")
        if self._peek() == "}":
            self._advance(self._pos + 1)
        else:
            while True:
                key, line = self._value()
                if not isinstance(key, str):
                    raise InvalidPromptSet("invalid JSON: object keys must be strings", line=line)
                self._expect(":", "':'")
                if key == "prompts":
                    yield from self._items(line)
                else:
                    value, value_line = self._value()
                    yield ("options" if key == "saeflow" else key), value, None, value_line
                if self._expect(",}", "',' or '}'") == "}":
                    break
        if self._peek():
            raise InvalidPromptSet("invalid JSON: extra data after the object", line=self._line)

    def _items(self, line: int) -> Iterator[tuple[str, Any, int | None, int]]:
        if self._peek() != "[":
            value, value_line = self._value()
            yield "prompts", value, None, value_line  # not an array: the caller names it
            return
        self._advance(self._pos + 1)
        if self._peek() == "]":
            self._advance(self._pos + 1)
            return
        index = 0
        while True:
            item, item_line = self._value()
            yield "prompt", item, index, item_line
            index += 1
            if self._expect(",]", "',' or ']'") == "]":
                return
