"""Configuration errors as one line per problem: where the value came from, its dotted key, and
what is allowed, e.g. ``gen4gen.toml: layout.images_per_composition: must be ≥ 1 (got -3)``."""
from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Callable, Sequence

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """An invalid configuration; ``problems`` holds one self-contained line per problem.

    The command line prints the lines and exits 2; inside Dagster a step fails with them.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


Location = tuple[str | int, ...]

# What pydantic's type errors expect, in the words of a TOML file.
EXPECTED_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
                  "list": "a list", "tuple": "a list", "dict": "a table", "model": "a table", "literal": "one of"}


def dotted(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def shown(value) -> str:
    """A value as it would be written in TOML (enough to recognise it)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_validation(error: ValidationError, model: type[BaseModel],
                             source_of: Callable[[Location], str]) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        location = tuple(item["loc"])
        if item["type"] == "missing" and location and isinstance(location[-1], int):
            # A [low, high] pair given one value: the problem is the pair, not its second element.
            location, item = location[:-1], {**item, "type": "too_short", "msg": "Tuple"}
        message = describe(item, model, location)
        # A secret is never echoed back, even when it is the wrong type.
        secret = any(isinstance(part, str) and "key" in part and "api" in part for part in location)
        got = "" if item["type"] in ("extra_forbidden", "missing") or secret else f" (got {shown(item['input'])})"
        lines.append(f"{source_of(location)}: {dotted(location)}: {message}{got}")
    return lines


def describe(item: dict, model: type[BaseModel], location: Location) -> str:
    kind, context = item["type"], item.get("ctx") or {}
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "must be " + bounds_text(field_bounds(model, location) or bounds_from_context(context))
    if kind == "extra_forbidden":
        return unknown_key(model, location)
    if kind == "literal_error":
        return f"must be {context.get('expected')}"
    if kind in ("too_short", "too_long"):
        if item["msg"].startswith("Tuple"):  # every tuple in the configuration is a [low, high] pair
            return "must be a list of two values [low, high]"
        if kind == "too_short":
            return f"must have at least {context.get('min_length')} item(s)"
        return f"must have at most {context.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "missing":
        return "is required"
    if kind in ("value_error", "assertion_error"):
        return str(context.get("error") or item["msg"]).removeprefix("Value error, ")
    family = kind.split("_")[0]
    if family in EXPECTED_TYPES and family != "literal":
        return f"expected {EXPECTED_TYPES[family]}"
    return item["msg"][:1].lower() + item["msg"][1:]


def bounds_from_context(context: dict) -> dict:
    return {name: context[name] for name in ("gt", "ge", "lt", "le") if name in context}


def bounds_text(bounds: dict) -> str:
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (bounds["lt"], ")") if "lt" in bounds else (bounds["le"], "]") if "le" in bounds else None
    if low and high:
        return f"in {low[0]}{number(low[1])}, {number(high[0])}{high[1]}"
    if low:
        return f"{'>' if low[0] == '(' else '≥'} {number(low[1])}"
    return f"{'<' if high[1] == ')' else '≤'} {number(high[0])}"


def number(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def field_bounds(model: type[BaseModel], location: Location) -> dict | None:
    """Both bounds of the value at ``location``, read from the model's annotations."""
    annotation, metadata = model, []
    for part in location:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            info = annotation.model_fields.get(part)
            if info is None:
                return None
            annotation, metadata = info.annotation, list(info.metadata)
        elif isinstance(part, int):
            args = [a for a in typing.get_args(strip_optional(annotation)) if a is not Ellipsis]
            if not args:
                return None
            annotation, metadata = unpack(args[min(part, len(args) - 1)])
        else:
            return None
        annotation = strip_optional(annotation)
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, metadata = unpack(annotation)
    bounds = {}
    for entry in metadata:
        for constraint in (entry.metadata if isinstance(entry, FieldInfo) else [entry]):
            for cls, name in ((Gt, "gt"), (Ge, "ge"), (Lt, "lt"), (Le, "le")):
                if isinstance(constraint, cls):
                    bounds[name] = getattr(constraint, name)
    return bounds or None


def unpack(annotation) -> tuple[object, list]:
    """``Annotated[T, a, b]`` -> (T, [a, b]); anything else -> (it, [])."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        inner, more = unpack(inner)
        return inner, more + metadata
    return annotation, []


def strip_optional(annotation):
    """``T | None`` -> T (the bounds of an optional value are those of the value)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def unknown_key(model: type[BaseModel], location: Location) -> str:
    parent = model
    for part in location[:-1]:
        info = parent.model_fields.get(part) if isinstance(part, str) else None
        inner = strip_optional(info.annotation) if info else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return "unknown key"
        parent = inner
    known = list(parent.model_fields)
    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; known keys here: {', '.join(known)}"
