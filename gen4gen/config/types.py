"""Building blocks of the configuration model: the section base class and the value types whose
ranges every section shares (a fraction lies in [0, 1], a size in pixels is positive, ...).

The bounds live in the types, so a value out of range is refused when the configuration is
loaded, before any work starts, rather than deep inside a stage (or not at all).
"""
from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


# Model backends (the `paper` profile): where they run and in which precision.
# `cuda:N` pins one GPU of several; `auto` and `cuda` take the current one (CUDA_VISIBLE_DEVICES decides).
def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
        raise ValueError("must be auto, cpu, cuda or cuda:N (N: the index of a GPU this process sees)")
    return value


Device = Annotated[str, AfterValidator(_device)]
DType = Literal["bf16", "fp16", "fp32"]

# A share of something: 0 is none of it, 1 all of it.
Fraction = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
# A share that must leave something: a size relative to the canvas or to the largest object.
PositiveFraction = Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
# At least one: images, rounds, attempts, items in a batch, grid columns.
Count = Annotated[StrictInt, Field(ge=1)]
# Zero is meaningful (no examples, no thumbnails, no extra compositions).
NonNegativeCount = Annotated[StrictInt, Field(ge=0)]
# A side or a size in pixels.
Pixels = Annotated[StrictInt, Field(ge=1)]
# A duration or a scale that may be zero (no wait, no padding).
NonNegativeFloat = Annotated[StrictFloat, Field(ge=0.0)]
PositiveFloat = Annotated[StrictFloat, Field(gt=0.0)]
# A cosine similarity (CLIP, DINO).
Cosine = Annotated[StrictFloat, Field(ge=-1.0, le=1.0)]


def ordered_pair(pair: tuple[float, float]) -> tuple[float, float]:
    low, high = pair
    if low > high:
        raise ValueError(f"the lower bound {low} is above the upper bound {high}; write [low, high]")
    return pair


# [low, high] with low <= high, both fractions.
FractionRange = Annotated[tuple[Fraction, Fraction], AfterValidator(ordered_pair)]
PositiveFractionRange = Annotated[tuple[PositiveFraction, PositiveFraction], AfterValidator(ordered_pair)]


def template(*, required: tuple[str, ...] = (), allowed: tuple[str, ...] = ()):
    """A format string that may only use ``allowed`` placeholders and must use ``required`` ones."""
    names = set(required) | set(allowed)

    def check(value: str) -> str:
        try:
            used = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
        except ValueError as exc:  # an unmatched brace
            raise ValueError(f"is not a valid template ({exc})") from None
        unknown = sorted(used - names)
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; available: "
                             + ", ".join(f"{{{n}}}" for n in sorted(names)))
        missing = [n for n in required if n not in used]
        if missing:
            raise ValueError(f"must contain the placeholder {{{missing[0]}}}")
        return value

    return AfterValidator(check)
