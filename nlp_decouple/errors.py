"""User-facing errors: one clear line, exit code 2, no traceback; pydantic's complaints about user data
(a recipe, overrides) as such a line."""
from __future__ import annotations

import difflib
import functools
import re
import sys
import typing
from typing import Any, Callable

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and how to fix it."""


def did_you_mean(value: Any, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string when none is close."""
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_TYPES = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "a list", "none": "null",
          "dict": "a mapping of keys", "model": "a mapping of keys"}


def one_line(err: ValidationError, root: type[BaseModel]) -> str:
    """The first complaint of validating data into ``root`` as one line naming the dotted key, the value and
    the fix: "did you mean" for an unknown key or choice, the limit broken, and the field's ``description``
    as the hint ("...; null: X" says what null means)."""
    errors = err.errors()
    if errors[0]["type"] in ("extra_forbidden", "invalid_key"):
        loc = errors[0]["loc"]
        where, section = _locate(loc[:-1], root)
        prefix, names = f"{where}." if where else "", list(section.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(names)}"
        return f"unknown key {prefix + str(loc[-1])!r}: {hint}"
    base = _locate(errors[0]["loc"], root)[0].split("[")[0]
    same = [e for e in errors if _locate(e["loc"], root)[0].split("[")[0] == base]
    depth = [sum(isinstance(p, int) for p in e["loc"]) for e in same]
    if max(depth) == 0 and len(same) > 1:  # a union (bool | Literal[...]) complains once per member
        return f"{base}: expected {' or '.join(map(_expected, same))}, got {same[0]['input']!r}"
    error = same[depth.index(max(depth))]  # int | list[int] given a list: its bad item says the most
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    key, field = _locate(error["loc"], root)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx["expected"])
        return f"{key}: {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}: {value} must be {_limit(field, ctx)}{_hint(field, key)}"
    if kind in ("too_short", "too_long"):
        count = f"at least {ctx['min_length']}" if kind == "too_short" else f"at most {ctx['max_length']}"
        return f"{key}: {value} must have {count} items{_hint(field, key)}"
    return f"{key or 'recipe'}: expected {_expected(error)}{' or null' if _nullable(field, key) else ''}, got {value!r}"


def _locate(loc: tuple, root: type[BaseModel]) -> tuple[str, Any]:
    """An error location's dotted key (list items as [i], a union's member tags skipped) and the field (or
    model class) it ends on."""
    key, node = "", root
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif isinstance(node, type) and part in node.model_fields:
            key, node = f"{key}.{part}" if key else part, node.model_fields[part]
            if isinstance(node.annotation, type) and issubclass(node.annotation, BaseModel):
                node = node.annotation
    return key, node


def _expected(error: dict) -> str:
    if error["type"] == "literal_error":
        return error["ctx"]["expected"]
    return _TYPES.get(error["type"].split("_")[0], error["msg"].lower())


def _limit(field: Any, ctx: dict) -> str:
    """'> 0', '>= 2' or 'in [0, 1)': the field's own bounds, else the one broken inside its type."""
    bounds = {op: getattr(m, op) for m in getattr(field, "metadata", ()) for op in _OPS
              if getattr(m, op, None) is not None} or {op: ctx[op] for op in _OPS if op in ctx}
    if len(bounds) == 1:
        ((op, bound),) = bounds.items()
        return f"{_OPS[op]} {bound:g}"
    low, high = ("gt" if "gt" in bounds else "ge"), ("lt" if "lt" in bounds else "le")
    return f"in {'(' if low == 'gt' else '['}{bounds[low]:g}, {bounds[high]:g}{')' if high == 'lt' else ']'}"


def _nullable(field: Any, key: str) -> bool:
    return "[" not in key and isinstance(field, FieldInfo) and type(None) in typing.get_args(field.annotation)


def _hint(field: Any, key: str) -> str:
    """The field's description in brackets, and " or null" (with what null means) for an optional field."""
    why, _, if_null = (getattr(field, "description", None) or "").partition("null: ")
    text = f" ({why.rstrip('; ')})" if why else ""
    return text + (" or null" + (f" ({if_null})" if if_null else "") if _nullable(field, key) else "")
