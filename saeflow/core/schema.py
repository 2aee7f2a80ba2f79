"""Pydantic building blocks shared by run options and the worker contract.

- :class:`Schema`: frozen, unknown keys rejected, field docstrings become the JSON Schema's
  descriptions. :meth:`Schema.parse` is the way in for data from outside (a named error);
  keyword construction is for values the code already trusts.
- JSON kinds without coercion: :data:`Int` (an integral float such as ``2e5`` is accepted,
  ``"3"``, ``true`` and ``0.5`` are not), :data:`Float` (finite), :data:`Bool`, :data:`Text`.
- :func:`one_line`: a pydantic ``ValidationError`` as ONE line naming the option by its
  dotted path (``train.k: must be in 1..4096, got 0``), the way users spell options.

Union alternatives are tagged with names starting ``~`` (see :data:`TAG`); they never
reach a message.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

from saeflow.core.errors import InvalidRunOptions

TAG = "~"


def _integral(value: Any) -> Any:
    # JSON has one number type: 2e5 is a fine integer, 0.5 is not (Strict rejects it).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


class Schema(BaseModel):
    """Base of every validated settings type."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=False
    )

    @classmethod
    def parse(cls, data: Any, *, name: Callable[[str], str] | None = None) -> Any:
        """Validate ``data``; a problem raises :class:`InvalidRunOptions` in one line."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRunOptions(one_line(exc, cls, name=name)) from exc


# --- messages ---------------------------------------------------------------------------


def dotted(loc: tuple[Any, ...]) -> str:
    """``("steer", "~list", 0, "strengths", 1)`` -> ``steer[0].strengths[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(TAG):
            text += f".{part}" if text else str(part)
    return text


def _as_option(path: str) -> str:
    return f"{path}:"


def one_line(
    exc: ValidationError, root: type[BaseModel], *, name: Callable[[str], str] | None = None
) -> str:
    """The first problem of ``exc`` as ``<name(path)> <what it must be>``."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    label = name or _as_option
    if error["type"] == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        where = dotted(loc[:-1])
        known = ", ".join(parent.model_fields) if parent else ""
        return (
            f"unknown option {dotted(loc)}; known options{' of ' + where if where else ''}: {known}"
        )
    path, message = dotted(loc), _message(error, root, loc)
    if error["type"] == "value_error" and ": " in message:
        # Model validators name the field they are about: "max_l0: must be >= min_l0".
        field, message = message.split(": ", 1)
        path = f"{path}.{field}" if path else field
    return f"{label(path) if path else 'options:'} {message}"


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value!r:.60}"


def _message(error: Any, root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "required"
    if kind.startswith("int_"):
        return f"must be an integer, got {_shown(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_shown(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_shown(value)}"
    if kind.startswith("bool_"):
        return f"must be true or false, got {_shown(value)}"
    if kind.startswith("string_type"):
        return f"must be a string, got {_shown(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be an object, got {_shown(value) if value is None else type(value).__name__}"
    if kind == "list_type":
        return f"must be a list, got {type(value).__name__ if value is not None else 'null'}"
    if kind == "literal_error":
        expected = str(error["ctx"]["expected"]).replace("'", "")
        return f"must be one of {expected.replace(' or ', ', ')}, got {_shown(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be {_range(root, loc)}, got {_shown(value)}"
    if kind in ("too_short", "too_long"):
        return f"must hold {_length(root, loc)} items"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"])


def _range(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    low = high = None
    closed_low = closed_high = True
    for item in _constraints(root, loc):
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Gt):
            low, closed_low = item.gt, False
        elif isinstance(item, annotated_types.Le):
            high = item.le
        elif isinstance(item, annotated_types.Lt):
            high, closed_high = item.lt, False
    if low is not None and high is not None:
        if closed_low and closed_high and isinstance(low, int) and isinstance(high, int):
            return f"in {low}..{high}"
        return f"in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
    if low is not None:
        return f"{'>=' if closed_low else '>'} {low}"
    return f"{'<=' if closed_high else '<'} {high}"


def _length(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    low, high = 0, None
    for item in _constraints(root, loc):
        if isinstance(item, annotated_types.MinLen):
            low = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            high = item.max_length
    return f"{low}..{high}" if high is not None else f"at least {low}"


def _constraints(root: type[BaseModel], loc: tuple[Any, ...]) -> list[Any]:
    """The annotated-types constraints of the field (or list item) at ``loc``."""
    field_loc = loc
    while field_loc and not isinstance(field_loc[-1], str):
        field_loc = field_loc[:-1]  # a list item: the constraints of the list's items
    model = _model_at(root, field_loc[:-1])
    if model is None or not field_loc or field_loc[-1] not in model.model_fields:
        return []
    info = model.model_fields[field_loc[-1]]
    found = list(info.metadata)
    if len(field_loc) < len(loc):  # constraints on the item type of a list
        found = []
        for arg in typing.get_args(info.annotation):
            found += _annotated_metadata(arg)
    return found


def _annotated_metadata(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Annotated:
        found: list[Any] = []
        for meta in typing.get_args(tp)[1:]:
            found += list(getattr(meta, "metadata", [meta]))
        return found
    return []


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the fields at ``loc`` (tags and list indexes skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if not isinstance(part, str) or part.startswith(TAG):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _inner_model(model.model_fields[part].annotation)
    return model


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin is Annotated or origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
