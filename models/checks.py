"""Small value checks used by every constructor and decoder, raising ``ValidationError``.

They exist so that the dataclasses and wire Structs refuse bad values with the same wording,
and so that no validation is done with ``assert`` (which ``python -O`` strips).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Iterable, Sequence

from citybrain.models.errors import ValidationError

# Ids end up inside MQTT topics and file names: no '/', '+', '#', no leading '$', no spaces.
_ID = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
ID_PATTERN = re.compile(_ID)
_ID_LINES = re.compile(rf"{_ID}(?:\n{_ID})*")


def check_id(field: str, value: str) -> str:
    """Return ``value`` if it is a valid identifier, else raise naming ``field``."""
    if not isinstance(value, str):
        raise ValidationError(field, f"expected an id string, got {type(value).__name__}")
    if ID_PATTERN.fullmatch(value) is None:
        raise ValidationError(
            field,
            f"{value[:80]!r} is not a valid id (1-64 characters: letters, digits, '_', '.', ':', "
            "'-', starting with a letter or digit)",
        )
    return value


def are_ids(values: Collection[str]) -> bool:
    """Whether every value is a valid id, in one pattern match over them all: the models
    built by the million (a city's movements, five ids each) test this first and only call
    ``check_id`` on each, to name the bad one, when it fails. An id holds no newline, so
    the joined text has one line per value exactly when none of them does."""
    if not values:
        return True
    try:
        joined = "\n".join(values)
    except TypeError:  # not a string after all
        return False
    return joined.count("\n") == len(values) - 1 and _ID_LINES.fullmatch(joined) is not None


def check_id_fields(fields: Sequence[str], values: Sequence[str]) -> None:
    """``check_id`` of each value against the field in the same place."""
    if not are_ids(values):
        for field, value in zip(fields, values, strict=True):
            check_id(field, value)


MAX_ID_CHARS = 64
_DIGEST_CHARS = 16


def compose_id(*parts: str | int) -> str:
    """An id built from others (a plan's from its corridor, intersection and seq), joined by
    '-': as it reads when it fits in ``MAX_ID_CHARS``; else its start and a digest of the
    whole, so ids built from long ones (SUMO junction ids) stay valid, stable and unique."""
    text = "-".join(str(part) for part in parts)
    if len(text) <= MAX_ID_CHARS:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=_DIGEST_CHARS // 2).hexdigest()
    return f"{text[: MAX_ID_CHARS - _DIGEST_CHARS - 1]}:{digest}"


def check_ids(field: str, values: Collection[str]) -> None:
    """Check every id in ``values``; the error names the index of the first bad one."""
    if not are_ids(values):
        for index, value in enumerate(values):
            check_id(f"{field}[{index}]", value)


_NUMBER = (int, float)  # not built on every call, as ``int | float`` would be


def check_number(
    field: str,
    value: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> float:
    """Return ``value`` if it is a finite number within the bounds, else raise naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise ValidationError(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValidationError(field, f"must be a finite number, got {value}")
    if ge is not None and value < ge:
        raise ValidationError(field, f"must be >= {ge}, got {value}")
    if gt is not None and value <= gt:
        raise ValidationError(field, f"must be > {gt}, got {value}")
    if le is not None and value > le:
        raise ValidationError(field, f"must be <= {le}, got {value}")
    return value


def check_count(field: str, value: int, *, ge: int = 0, le: int | None = None) -> int:
    """Return ``value`` if it is an integer within the bounds, else raise naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"expected an integer, got {type(value).__name__}")
    if value < ge:
        raise ValidationError(field, f"must be >= {ge}, got {value}")
    if le is not None and value > le:
        raise ValidationError(field, f"must be <= {le}, got {value}")
    return value


def check_unique(field: str, values: Iterable[str]) -> None:
    """Raise naming ``field`` if any value appears twice."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValidationError(field, f"duplicate id {value!r}")
        seen.add(value)
