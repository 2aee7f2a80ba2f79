"""The batch-transform record formats (docs/ARCHITECTURE.md, "serve").

One JSON object per input line. An extraction record carries a prompt; a steer
record carries a ``steer`` object. Parsing is strict so that a bad line becomes
a per-line error object instead of failing the whole batch. No torch here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from saeflow.core.errors import SaeflowError


class InvalidRecord(SaeflowError):
    """An input line of a transform payload is not a valid extraction or steer record."""


@dataclass(frozen=True)
class ExtractionRecord:
    """A prompt to extract features from."""

    prompt_index: int | None
    id: str | None
    set: str
    text: str

    def header(self) -> dict[str, Any]:
        """The identifying fields echoed into the output line."""
        return {"prompt_index": self.prompt_index, "id": self.id, "set": self.set}


@dataclass(frozen=True)
class SteerRecord:
    """One steered generation request (one feature, one strength)."""

    raw: dict[str, Any]
    feature: int
    strength: float
    prompt: str
    max_new_tokens: int
    temperature: float
    freq_penalty: float
    seed: int


# The seed notebook's sampling settings.
DEFAULT_MAX_NEW_TOKENS = 50
DEFAULT_TEMPERATURE = 0.5
DEFAULT_FREQ_PENALTY = 2.0
DEFAULT_SEED = 0
MAX_NEW_TOKENS_LIMIT = 1024
SETS = ("main", "contrast")


def parse_record(line: str) -> ExtractionRecord | SteerRecord:
    """Parse one input line; raise :class:`InvalidRecord` naming what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a record must be a JSON object, got {type(obj).__name__}")
    if "steer" in obj:
        return _parse_steer(obj["steer"])
    return _parse_extraction(obj)


def _parse_extraction(obj: dict[str, Any]) -> ExtractionRecord:
    text = obj.get("text", obj.get("prompt"))
    if not isinstance(text, str):
        raise InvalidRecord('an extraction record needs a string "text"')
    index = obj.get("prompt_index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise InvalidRecord('"prompt_index" must be an integer')
    record_id = obj.get("id")
    if record_id is not None and not isinstance(record_id, str):
        record_id = str(record_id)
    set_name = obj.get("set", "main")
    if set_name not in SETS:
        raise InvalidRecord(f'"set" must be one of {", ".join(SETS)}, got {set_name!r}')
    return ExtractionRecord(prompt_index=index, id=record_id, set=set_name, text=text)


def _parse_steer(raw: Any) -> SteerRecord:
    if not isinstance(raw, dict):
        raise InvalidRecord('"steer" must be an object')
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRecord('a steer record needs a non-empty string "prompt"')
    return SteerRecord(
        raw=raw,
        feature=_int(raw, "feature", None, minimum=0),
        strength=_float(raw, "strength", None),
        prompt=prompt,
        max_new_tokens=_int(
            raw, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, minimum=1, maximum=MAX_NEW_TOKENS_LIMIT
        ),
        temperature=_float(raw, "temperature", DEFAULT_TEMPERATURE, minimum=0.0),
        freq_penalty=_float(raw, "freq_penalty", DEFAULT_FREQ_PENALTY),
        seed=_int(raw, "seed", DEFAULT_SEED, minimum=0),
    )


def _int(
    raw: dict[str, Any],
    key: str,
    default: int | None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = raw.get(key, default)
    if value is None:
        raise InvalidRecord(f'steer record needs "{key}"')
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f'"{key}" must be an integer, got {value!r}')
    if minimum is not None and value < minimum:
        raise InvalidRecord(f'"{key}" must be >= {minimum}, got {value}')
    if maximum is not None and value > maximum:
        raise InvalidRecord(f'"{key}" must be <= {maximum}, got {value}')
    return value


def _float(
    raw: dict[str, Any], key: str, default: float | None, *, minimum: float | None = None
) -> float:
    value = raw.get(key, default)
    if value is None:
        raise InvalidRecord(f'steer record needs "{key}"')
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(f'"{key}" must be a finite number, got {value!r}')
    if minimum is not None and value < minimum:
        raise InvalidRecord(f'"{key}" must be >= {minimum}, got {value}')
    return float(value)


def error_line(error: SaeflowError, header: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output object for a record that failed: its header (if known) and the error."""
    out: dict[str, Any] = dict(header or {})
    out["error"] = {"error": error.name, "message": error.message}
    return out
