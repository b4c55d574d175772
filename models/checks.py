"""Small value checks used by every constructor and decoder, raising ``ValidationError``.

They exist so that the dataclasses and wire Structs refuse bad values with the same wording,
and so that no validation is done with ``assert`` (which ``python -O`` strips).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable

from citybrain.models.errors import ValidationError

# Ids end up inside MQTT topics and file names: no '/', '+', '#', no leading '$', no spaces.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


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


def check_ids(field: str, values: Iterable[str]) -> None:
    """Check every id in ``values``; the error names the index of the first bad one."""
    for index, value in enumerate(values):
        check_id(f"{field}[{index}]", value)


def check_number(
    field: str,
    value: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> float:
    """Return ``value`` if it is a finite number within the bounds, else raise naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
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
