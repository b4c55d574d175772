"""The small value checks every constructor and decoder relies on."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.checks import (
    are_ids,
    check_count,
    check_id,
    check_id_fields,
    check_ids,
    check_number,
    check_unique,
    compose_id,
)
from citybrain.models.errors import CitybrainError, ValidationError

# The documented id contract, written out independently of the implementation.
VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


# --- ValidationError ------------------------------------------------------------------------


def test_validation_error_carries_field_and_reason() -> None:
    error = ValidationError("approaches[2].queue_veh", "must be >= 0")
    assert error.field == "approaches[2].queue_veh"
    assert error.reason == "must be >= 0"
    assert str(error) == "approaches[2].queue_veh: must be >= 0"
    assert isinstance(error, ValueError)
    assert isinstance(error, CitybrainError)


# --- check_number ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_check_number_refuses_bool(value: bool) -> None:
    with pytest.raises(ValidationError) as info:
        check_number("speed", value)
    assert info.value.field == "speed"


@pytest.mark.parametrize("value", ["1", None, b"1", [1.0], 1j])
def test_check_number_refuses_non_numbers(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_number("speed", value)  # type: ignore[arg-type]
    assert info.value.field == "speed"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_number_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValidationError) as info:
        check_number("queue_veh", value)
    assert info.value.field == "queue_veh"
    assert "finite" in info.value.reason


@pytest.mark.parametrize(
    ("value", "bounds"),
    [
        (-0.001, {"ge": 0.0}),
        (0.0, {"gt": 0.0}),
        (-1, {"gt": 0.0}),
        (1.0001, {"le": 1.0}),
        (2001, {"ge": 0.0, "le": 2000.0}),
    ],
)
def test_check_number_refuses_out_of_bounds(value: float, bounds: dict[str, float]) -> None:
    with pytest.raises(ValidationError) as info:
        check_number("x", value, **bounds)
    assert info.value.field == "x"


@pytest.mark.parametrize(
    ("value", "bounds"),
    [
        (0.0, {"ge": 0.0}),
        (1.0, {"le": 1.0}),
        (1e-300, {"gt": 0.0}),
        (5, {"ge": 0.0, "le": 10.0}),
        (-1e308, {}),
    ],
)
def test_check_number_accepts_values_within_bounds(value: float, bounds: dict[str, float]) -> None:
    assert check_number("x", value, **bounds) == value


# --- check_count ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_check_count_refuses_non_integers(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_count("seq", value)  # type: ignore[arg-type]
    assert info.value.field == "seq"


def test_check_count_bounds() -> None:
    assert check_count("priority", 1, ge=1, le=10) == 1
    assert check_count("priority", 10, ge=1, le=10) == 10
    for bad in (0, 11):
        with pytest.raises(ValidationError) as info:
            check_count("priority", bad, ge=1, le=10)
        assert info.value.field == "priority"
    with pytest.raises(ValidationError):
        check_count("seq", -1)


# --- check_id -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, None, b"abc", ["abc"], 1.5])
def test_check_id_refuses_non_str(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_id("intersection", value)  # type: ignore[arg-type]
    assert info.value.field == "intersection"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a/b",
        "a+b",
        "a#",
        "+",
        "#",
        "$SYS",
        "_lead",
        "-lead",
        ".lead",
        "has space",
        "tab\there",
        "trailing\n",
        "x" * 65,
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits are digits, but not ASCII ones
    ],
)
def test_check_id_refuses_invalid_ids(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_id("intersection", value)
    assert info.value.field == "intersection"


@pytest.mark.parametrize("value", ["a", "0", "I-12", "r1.north:3_b", "x" * 64, "A-b_c.d:e"])
def test_check_id_accepts_valid_ids(value: str) -> None:
    assert check_id("intersection", value) == value


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=70), st.from_regex(VALID_ID, fullmatch=True)))
def test_check_id_accepts_exactly_the_documented_pattern(value: str) -> None:
    if VALID_ID.fullmatch(value):
        assert check_id("id", value) == value
    else:
        with pytest.raises(ValidationError):
            check_id("id", value)


def test_check_ids_names_the_index_of_the_first_bad_id() -> None:
    check_ids("route", ["a", "b", "c"])
    with pytest.raises(ValidationError) as info:
        check_ids("route", ["a", "b", "c/d", "#"])
    assert info.value.field == "route[2]"


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.from_regex(VALID_ID, fullmatch=True),
            st.text(alphabet="ab\n:_/ ", max_size=8),
            st.text(max_size=70),
        ),
        max_size=6,
    )
)
def test_are_ids_and_check_id_fields_agree_with_check_id(values: list[str]) -> None:
    """The one-match fast path: newlines inside a value must not pass for a separator."""
    valid = all(VALID_ID.fullmatch(value) for value in values)
    assert are_ids(values) == valid
    fields = [f"f{i}" for i in range(len(values))]
    if valid:
        check_id_fields(fields, values)
    else:
        with pytest.raises(ValidationError) as info:
            check_id_fields(fields, values)
        first_bad = next(i for i, v in enumerate(values) if not VALID_ID.fullmatch(v))
        assert info.value.field == f"f{first_bad}"


def test_are_ids_refuses_what_is_not_a_string() -> None:
    assert not are_ids(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValidationError) as info:
        check_id_fields(("a", "b"), ("x", None))  # type: ignore[arg-type]
    assert info.value.field == "b"


def test_check_unique_names_the_field_and_the_duplicate() -> None:
    check_unique("approaches", ["n", "s", "e"])
    with pytest.raises(ValidationError) as info:
        check_unique("approaches", ["n", "s", "n"])
    assert info.value.field == "approaches"
    assert "'n'" in info.value.reason


def test_ids_built_from_long_ones_stay_valid_stable_and_unique() -> None:
    """Issue 12: SUMO junction ids such as ``cluster_1041665625_...`` pushed plan ids
    (corridor-intersection-seq) past 64 characters and the manager crashed."""
    junction = "cluster_1041665625_1041665633_1041665644_1041665652_25245678"
    assert compose_id("C1", "a01", 7) == "C1-a01-7"
    long_ids = [compose_id("C1-AMB-1", junction, seq) for seq in range(1000)]
    for made in long_ids:
        assert check_id("plan_id", made) == made
        assert len(made) == 64
        assert made.startswith("C1-AMB-1-cluster_1041665625")
    assert len(set(long_ids)) == 1000
    assert compose_id("C1-AMB-1", junction, 3) == long_ids[3]
