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
from saeflow.core.layout import PROMPT_SUFFIXES, is_sidecar

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
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class PromptLimits:
    """Limits on one prompt set (all configurable by the deployment)."""

    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    @property
    def max_prompt_bytes(self) -> int:
        return self.max_prompt_tokens * BYTES_PER_TOKEN_BOUND


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
    """Parse a prompt set from raw lines; raises a named error with ``line`` set."""
    limits = limits or PromptLimits()
    decoded = _decode(lines, limits)
    if fmt == "jsonl":
        result = _parse_jsonl(decoded, limits)
    elif fmt == "txt":
        result = _parse_txt(decoded, limits)
    elif fmt == "json":
        result = _parse_json(decoded, limits)
    else:
        raise UnsupportedPromptFile(f"unsupported prompt format {fmt!r}")
    if not result.prompts:
        raise InvalidPromptSet("the prompt set holds no prompts")
    return result


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


def _decode(lines: Iterable[bytes], limits: PromptLimits) -> Iterator[tuple[int, str]]:
    total = 0
    for number, raw in enumerate(lines, start=1):
        total += len(raw) + 1
        if total > limits.max_file_bytes + 1:  # +1: no newline after the last line
            raise PromptSetTooLarge(
                f"the prompt set exceeds {limits.max_file_bytes} bytes", line=number
            )
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPromptSet(
                f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}",
                line=number,
            ) from exc
        yield number, text.removesuffix("\r")


class _Collector:
    """Builds prompts, checking count, length and id uniqueness."""

    def __init__(self, limits: PromptLimits) -> None:
        self.limits = limits
        self.prompts: list[Prompt] = []
        self.ids: set[str] = set()

    def add(
        self, text: Any, line: int | None, where: str, id_: Any = None, tags: Any = None
    ) -> None:
        # ``where`` locates an item without a line (".json" arrays): "prompts[3]".
        where = f"{where}: " if where else ""
        if not isinstance(text, str):
            raise InvalidPromptSet(f"{where}prompt must be a string", line=line)
        if not text.strip():
            raise InvalidPromptSet(f"{where}prompt is empty", line=line)
        if len(self.prompts) >= self.limits.max_prompts:
            raise PromptSetTooLarge(f"more than {self.limits.max_prompts} prompts", line=line)
        n_bytes = len(text.encode("utf-8"))
        if n_bytes > self.limits.max_prompt_bytes:
            raise PromptTooLong(
                f"{where}prompt is {n_bytes} bytes; the limit is {self.limits.max_prompt_tokens} "
                f"tokens (at most {self.limits.max_prompt_bytes} bytes)",
                line=line,
            )
        index = len(self.prompts)
        if id_ is None:
            id_ = f"p{index + 1}"
        elif isinstance(id_, bool) or not isinstance(id_, str | int) or not str(id_).strip():
            raise InvalidPromptSet(f"{where}id must be a non-empty string or integer", line=line)
        id_ = str(id_)
        if id_ in self.ids:
            raise InvalidPromptSet(f"{where}duplicate id {id_!r}", line=line)
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidPromptSet(f"{where}tags must be a list of strings", line=line)
        self.ids.add(id_)
        self.prompts.append(Prompt(index=index, id=id_, text=text, tags=tuple(tags), line=line))

    def add_record(self, value: Any, line: int | None, where: str) -> None:
        prefix = f"{where}: " if where else ""
        if isinstance(value, str):
            self.add(value, line, where)
            return
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
        self.add(value["prompt"], line, where, value.get("id"), value.get("tags"))


def _parse_jsonl(lines: Iterator[tuple[int, str]], limits: PromptLimits) -> PromptSet:
    result = PromptSet(format="jsonl")
    collector = _Collector(limits)
    seen_content = False
    for number, text in lines:
        if not text.strip():
            continue
        value = loads_json(text, line=number)
        if isinstance(value, dict) and OPTIONS_KEY in value:
            if seen_content or set(value) != {OPTIONS_KEY}:
                raise InvalidPromptSet(
                    'the options line {"saeflow": {...}} must be the first line and hold '
                    "nothing else",
                    line=number,
                )
            if not isinstance(value[OPTIONS_KEY], dict):
                raise InvalidPromptSet('"saeflow" must be an object of run options', line=number)
            result.options = value[OPTIONS_KEY]
            result.options_line = number
            seen_content = True
            continue
        seen_content = True
        collector.add_record(value, number, "")
    result.prompts = collector.prompts
    return result


def _parse_txt(lines: Iterator[tuple[int, str]], limits: PromptLimits) -> PromptSet:
    collector = _Collector(limits)
    for number, text in lines:
        if text.strip():
            collector.add(text, number, "")
    return PromptSet(format="txt", prompts=collector.prompts)


def _parse_json(lines: Iterator[tuple[int, str]], limits: PromptLimits) -> PromptSet:
    # A JSON document cannot be parsed line by line; the file-size limit (checked while
    # reading) bounds what is held in memory.
    document = "\n".join(text for _, text in lines)
    value = loads_json(document)
    if not isinstance(value, dict) or "prompts" not in value:
        raise InvalidPromptSet('a .json prompt set must be an object with a "prompts" array')
    unknown = sorted(set(value) - {"prompts", OPTIONS_KEY})
    if unknown:
        raise InvalidPromptSet(f"unknown top-level key {unknown[0]!r}; allowed: prompts, saeflow")
    if not isinstance(value["prompts"], list):
        raise InvalidPromptSet('"prompts" must be an array')
    result = PromptSet(format="json")
    if OPTIONS_KEY in value:
        if not isinstance(value[OPTIONS_KEY], dict):
            raise InvalidPromptSet('"saeflow" must be an object of run options')
        result.options = value[OPTIONS_KEY]
    collector = _Collector(limits)
    for i, item in enumerate(value["prompts"]):
        collector.add_record(item, None, f"prompts[{i}]")
    result.prompts = collector.prompts
    return result
