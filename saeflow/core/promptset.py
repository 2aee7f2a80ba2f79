"""Prompt sets: parse ``.jsonl`` / ``.txt`` / ``.json`` files, enforce limits, find options.

Formats (DESIGN.md):

- ``.jsonl``: one object a line, ``{"prompt": str, "id": str|int (optional), "tags": [str]
  (optional)}``; a bare JSON string is read as a prompt. The first non-blank line may be
  ``{"saeflow": {...}}``: the run options. Blank lines are skipped.
- ``.txt``: one prompt per line; blank lines are skipped.
- ``.json``: ``{"prompts": [str | {"prompt", "id", "tags"}], "saeflow": {...} (optional)}``.

Every error names the 1-based line when it has one (``err.line``). Limits
(:class:`PromptLimits`) are checked while streaming, so an oversized file is rejected
without being read whole (the size counts each line terminator as one byte). Validation cannot tokenise, so prompt length is bounded in
UTF-8 bytes here (default 512 tokens x 32 bytes); the worker enforces the token limit.

Input to :func:`parse_prompt_lines` is an iterable of raw ``bytes`` lines without
terminators (what ``ObjectStore.iter_lines`` yields).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from saeflow.core.errors import (
    InvalidPromptSet,
    PromptSetTooLarge,
    PromptTooLong,
    UnsupportedPromptFile,
)
from saeflow.core.idset import IdHashSet
from saeflow.core.layout import PROMPT_SUFFIXES, is_sidecar
from saeflow.core.text_stream import JsonPromptDocument, bounded_lines, decode_line, decoded_chunks

DEFAULT_MAX_PROMPTS = 10_000
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PROMPT_TOKENS = 512
# No tokenizer here: a token is rarely more than a few bytes, so 32 bytes per token
# only rejects what can never fit; the worker applies the exact token limit.
BYTES_PER_TOKEN_BOUND = 32
RECORD_KEYS = ("prompt", "id", "tags")
OPTIONS_KEY = "saeflow"
# Far deeper than any prompt record or options document needs (options nest 5 levels);
# deeper input is refused by name rather than left to hit Python's recursion limit.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class PromptLimits:
    """Limits on one prompt set (all configurable by the deployment)."""

    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    @property
    def max_prompt_bytes(self) -> int:
        return self.max_prompt_tokens * BYTES_PER_TOKEN_BOUND

    @property
    def max_line_bytes(self) -> int:
        """The longest line (or ``.json`` value) read before refusing it: the longest
        prompt, escaped as JSON at worst (``\\uXXXX``: 6 bytes a byte), plus room for id
        and tags."""
        return 6 * self.max_prompt_bytes + 64 * 1024


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``index`` is 0-based within its set; ``line`` is the source line."""

    index: int
    id: str
    text: str
    tags: tuple[str, ...] = ()
    line: int | None = None

    def record(self, set_name: str) -> dict[str, Any]:
        """The extraction input record (worker serve contract)."""
        return {"prompt_index": self.index, "id": self.id, "set": set_name, "text": self.text}


@dataclass
class PromptSet:
    """A parsed prompt set and the raw options found in the file (not yet validated)."""

    format: str
    prompts: list[Prompt] = field(default_factory=list)
    options: dict[str, Any] | None = None
    options_line: int | None = None


def prompt_format(key: str) -> str:
    """``jsonl`` | ``txt`` | ``json`` from the key; raises UnsupportedPromptFile."""
    if is_sidecar(key):
        raise UnsupportedPromptFile(f"{key} is a run-options sidecar, not a prompt set")
    for suffix in PROMPT_SUFFIXES:
        if key.endswith(suffix):
            return suffix[1:]
    raise UnsupportedPromptFile(
        f"unsupported prompt file {key!r}: use .jsonl, .txt or .json "
        f"(see the prompt set format in the README)"
    )


def parse_prompt_lines(
    lines: Iterable[bytes], fmt: str, limits: PromptLimits | None = None
) -> PromptSet:
    """Parse a prompt set from raw lines (no terminators) into memory; raises a named error
    with ``line`` set. Big sets stream through :class:`PromptReader` instead."""
    reader = PromptReader((line + b"\n" for line in lines), fmt, limits, trailing_newline=False)
    prompts = list(reader)
    return PromptSet(
        format=fmt, prompts=prompts, options=reader.options, options_line=reader.options_line
    )


def parse_prompt_bytes(data: bytes, fmt: str, limits: PromptLimits | None = None) -> PromptSet:
    """:func:`parse_prompt_lines` over an in-memory file."""
    return parse_prompt_lines(iter_byte_lines(data), fmt, limits)


def iter_byte_lines(data: bytes) -> Iterator[bytes]:
    """Split like ``ObjectStore.iter_lines``: no terminators, no final empty line."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the empty piece after a trailing newline is not a line
    for line in lines:
        yield line.removesuffix(b"\r")


def loads_json(text: str, *, line: int | None = None, source: str = "") -> Any:
    """``json.loads`` whose every failure is :class:`InvalidPromptSet` (with the line):
    malformed JSON, and nesting deeper than :data:`MAX_JSON_DEPTH` levels."""
    where = f"{source}: " if source else ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        at = exc.lineno if line is None else line
        raise InvalidPromptSet(f"{where}invalid JSON: {exc.msg}", line=at) from exc
    except RecursionError as exc:
        raise InvalidPromptSet(f"{where}JSON nested too deeply", line=line) from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidPromptSet(f"{where}JSON nested deeper than {MAX_JSON_DEPTH} levels", line=line)
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def parse_options_document(data: bytes, source: str) -> dict[str, Any]:
    """A sidecar ``*.options.json``: a JSON object of run options (optionally under ``saeflow``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPromptSet(f"{source} is not UTF-8") from exc
    value = loads_json(text, source=source)
    if isinstance(value, dict) and set(value) == {OPTIONS_KEY}:
        value = value[OPTIONS_KEY]
    if not isinstance(value, dict):
        raise InvalidPromptSet(f"{source} must hold a JSON object of run options")
    return value


# --- internals ------------------------------------------------------------------------


class _Collector:
    """Builds prompts one at a time, checking count, length and id uniqueness (ids as
    64-bit hashes: :class:`saeflow.core.idset.IdHashSet`)."""

    def __init__(self, limits: PromptLimits) -> None:
        self.limits = limits
        self.count = 0
        self.ids = IdHashSet()

    def make(
        self, text: Any, line: int | None, where: str, id_: Any = None, tags: Any = None
    ) -> Prompt:
        # ``where`` locates an item without a line (".json" arrays): "prompts[3]".
        where = f"{where}: " if where else ""
        if not isinstance(text, str):
            raise InvalidPromptSet(f"{where}prompt must be a string", line=line)
        if not text.strip():
            raise InvalidPromptSet(f"{where}prompt is empty", line=line)
        if self.count >= self.limits.max_prompts:
            raise PromptSetTooLarge(f"more than {self.limits.max_prompts} prompts", line=line)
        n_bytes = len(text.encode("utf-8"))
        if n_bytes > self.limits.max_prompt_bytes:
            raise PromptTooLong(
                f"{where}prompt is {n_bytes} bytes; the limit is {self.limits.max_prompt_tokens} "
                f"tokens (at most {self.limits.max_prompt_bytes} bytes)",
                line=line,
            )
        index = self.count
        if id_ is None:
            id_ = f"p{index + 1}"
        elif isinstance(id_, bool) or not isinstance(id_, str | int) or not str(id_).strip():
            raise InvalidPromptSet(f"{where}id must be a non-empty string or integer", line=line)
        id_ = str(id_)
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidPromptSet(f"{where}tags must be a list of strings", line=line)
        if not self.ids.add(id_):
            raise InvalidPromptSet(
                f"{where}duplicate id {id_!r} (an earlier prompt has the same id)", line=line
            )
        self.count += 1
        return Prompt(index=index, id=id_, text=text, tags=tuple(tags), line=line)

    def make_record(self, value: Any, line: int | None, where: str) -> Prompt:
        prefix = f"{where}: " if where else ""
        if isinstance(value, str):
            return self.make(value, line, where)
        if not isinstance(value, dict):
            raise InvalidPromptSet(f'{prefix}expected {{"prompt": "..."}} or a string', line=line)
        unknown = sorted(set(value) - set(RECORD_KEYS))
        if unknown:
            hint = " (run options belong on the first line)" if OPTIONS_KEY in unknown else ""
            raise InvalidPromptSet(
                f"{prefix}unknown key {unknown[0]!r}; allowed: {', '.join(RECORD_KEYS)}{hint}",
                line=line,
            )
        if "prompt" not in value:
            raise InvalidPromptSet(f'{prefix}missing "prompt"', line=line)
        return self.make(value["prompt"], line, where, value.get("id"), value.get("tags"))


class PromptReader:
    """One prompt set read prompt by prompt, in memory bounded whatever the file's size.

    Iterate it for the prompts. ``options`` / ``options_line`` are known once the first
    prompt came out for ``.jsonl`` (the options line comes first) and ``.txt`` (none), and
    once the iteration ended for ``.json`` (the ``saeflow`` key may follow the prompts).
    ``chunks`` are the file's raw bytes in pieces of any size.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        fmt: str,
        limits: PromptLimits | None = None,
        *,
        trailing_newline: bool = True,
    ) -> None:
        if fmt not in ("jsonl", "txt", "json"):
            raise UnsupportedPromptFile(f"unsupported prompt format {fmt!r}")
        self.format = fmt
        self.limits = limits or PromptLimits()
        self.options: dict[str, Any] | None = None
        self.options_line: int | None = None
        self._chunks = chunks
        self._collector = _Collector(self.limits)
        # parse_prompt_lines adds a newline to every line, the last one included: one byte
        # that is not in the file.
        self._max_bytes = self.limits.max_file_bytes + (0 if trailing_newline else 1)

    @property
    def n_prompts(self) -> int:
        return self._collector.count

    def __iter__(self) -> Iterator[Prompt]:
        if self.format == "json":
            yield from self._json()
        else:
            yield from self._lines()
        if self._collector.count == 0:
            raise InvalidPromptSet("the prompt set holds no prompts")

    def _lines(self) -> Iterator[Prompt]:
        lines = bounded_lines(
            self._chunks,
            max_line_bytes=self.limits.max_line_bytes,
            max_file_bytes=self._max_bytes,
        )
        seen_content = False
        for number, raw in lines:
            text = decode_line(raw, number)
            if not text.strip():
                continue
            if self.format == "txt":
                yield self._collector.make(text, number, "")
                continue
            value = loads_json(text, line=number)
            if isinstance(value, dict) and OPTIONS_KEY in value:
                self._take_options_line(value, number, seen_content)
            else:
                yield self._collector.make_record(value, number, "")
            seen_content = True

    def _take_options_line(self, value: dict[str, Any], number: int, seen_content: bool) -> None:
        if seen_content or set(value) != {OPTIONS_KEY}:
            raise InvalidPromptSet(
                'the options line {"saeflow": {...}} must be the first line and hold nothing else',
                line=number,
            )
        if not isinstance(value[OPTIONS_KEY], dict):
            raise InvalidPromptSet('"saeflow" must be an object of run options', line=number)
        self.options, self.options_line = value[OPTIONS_KEY], number

    def _json(self) -> Iterator[Prompt]:
        text = decoded_chunks(self._chunks, max_file_bytes=self._max_bytes)
        document = JsonPromptDocument(
            _object_first(text), max_value_chars=self.limits.max_line_bytes
        )
        for kind, value, index, line in document:
            if json_depth(value) > MAX_JSON_DEPTH:
                raise InvalidPromptSet(
                    f"JSON nested deeper than {MAX_JSON_DEPTH} levels", line=line
                )
            if kind == "prompt":
                # Items keep the location they always had ("prompts[3]"), not a line.
                yield self._collector.make_record(value, None, f"prompts[{index}]")
            elif kind == "prompts":
                raise InvalidPromptSet('"prompts" must be an array')
            elif kind == "options":
                if not isinstance(value, dict):
                    raise InvalidPromptSet('"saeflow" must be an object of run options')
                self.options = value
            else:
                raise InvalidPromptSet(f"unknown top-level key {kind!r}; allowed: prompts, saeflow")


def _object_first(text: Iterator[str]) -> Iterator[str]:
    """The text, after checking it starts as an object (else the message every .json
    prompt set error has always had; a non-object is parsed only to name deep nesting)."""
    first = ""
    for chunk in text:
        first += chunk
        if first.strip():
            break
    if not first.lstrip().startswith("{"):
        rest = first + "".join(text)  # not a prompt set: small or deeply nested, say which
        loads_json(rest) if rest.strip() else None
        raise InvalidPromptSet('a .json prompt set must be an object with a "prompts" array')
    yield first
    yield from text
