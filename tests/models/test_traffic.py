"""Saturation headway, queue discharge and travel time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.errors import ValidationError
from citybrain.models.traffic import (
    DEFAULT_LOST_TIME_S,
    queue_discharge_time_s,
    saturation_headway_s,
    travel_time_s,
)


@pytest.mark.parametrize(
    ("flow", "headway"), [(1800.0, 2.0), (3600.0, 1.0), (1900.0, 3600.0 / 1900.0), (900, 4.0)]
)
def test_saturation_headway(flow: float, headway: float) -> None:
    assert saturation_headway_s(flow) == pytest.approx(headway)


def test_saturation_headway_of_1800_is_exactly_two_seconds() -> None:
    assert saturation_headway_s(1800) == 2.0


@pytest.mark.parametrize("flow", [0.0, -1800.0, 3601.0, math.nan, math.inf, True, "1800"])
def test_saturation_headway_refuses_bad_flow(flow: float) -> None:
    with pytest.raises(ValidationError) as info:
        saturation_headway_s(flow)
    assert info.value.field == "saturation_flow_vphpl"


def test_empty_queue_needs_no_green() -> None:
    assert queue_discharge_time_s(0, lanes=2, saturation_flow_vphpl=1800) == 0.0
    assert queue_discharge_time_s(0.0, lanes=1, saturation_flow_vphpl=1800, lost_time_s=4) == 0.0


def test_queue_of_ten_over_two_lanes() -> None:
    # 5 vehicles per lane at 2 s headway plus 2 s start-up lost time.
    assert queue_discharge_time_s(10, lanes=2, saturation_flow_vphpl=1800, lost_time_s=2.0) == 12.0


def test_default_lost_time_is_two_seconds() -> None:
    assert DEFAULT_LOST_TIME_S == 2.0
    assert queue_discharge_time_s(10, lanes=2, saturation_flow_vphpl=1800) == 12.0


@pytest.mark.parametrize(
    ("queue", "lanes", "flow", "lost", "expected"),
    [
        (1, 1, 3600, 0.0, 1.0),
        (3, 1, 1800, 2.0, 8.0),
        (0.5, 1, 1800, 2.0, 3.0),
        (12, 3, 1200, 10.0, 22.0),
    ],
)
def test_queue_discharge_examples(
    queue: float, lanes: int, flow: float, lost: float, expected: float
) -> None:
    got = queue_discharge_time_s(queue, lanes=lanes, saturation_flow_vphpl=flow, lost_time_s=lost)
    assert got == pytest.approx(expected)


@settings(max_examples=200)
@given(
    queue=st.floats(min_value=0.001, max_value=2000.0),
    lanes=st.integers(min_value=1, max_value=8),
    flow=st.floats(min_value=100.0, max_value=3600.0),
)
def test_more_lanes_never_take_longer(queue: float, lanes: int, flow: float) -> None:
    fewer = queue_discharge_time_s(queue, lanes=lanes, saturation_flow_vphpl=flow)
    more = queue_discharge_time_s(queue, lanes=lanes + 1, saturation_flow_vphpl=flow)
    assert more <= fewer
    assert fewer >= DEFAULT_LOST_TIME_S


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue_veh": math.nan}, "queue_veh"),
        ({"queue_veh": -1.0}, "queue_veh"),
        ({"queue_veh": math.inf}, "queue_veh"),
        ({"lanes": 0}, "lanes"),
        ({"lanes": -2}, "lanes"),
        ({"lanes": True}, "lanes"),
        ({"lost_time_s": -0.5}, "lost_time_s"),
        ({"lost_time_s": math.nan}, "lost_time_s"),
        ({"lost_time_s": 10.5}, "lost_time_s"),
        ({"saturation_flow_vphpl": math.nan}, "saturation_flow_vphpl"),
        ({"saturation_flow_vphpl": -1800.0}, "saturation_flow_vphpl"),
        ({"saturation_flow_vphpl": 0.0}, "saturation_flow_vphpl"),
    ],
)
def test_queue_discharge_refuses_bad_input(kwargs: dict[str, float], field: str) -> None:
    arguments: dict[str, float] = {
        "queue_veh": 10.0,
        "lanes": 2,
        "saturation_flow_vphpl": 1800.0,
        "lost_time_s": 2.0,
    }
    arguments.update(kwargs)
    queue = arguments.pop("queue_veh")
    with pytest.raises(ValidationError) as info:
        queue_discharge_time_s(queue, **arguments)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("flow", [math.nan, -1800.0])
def test_empty_queue_still_validates_saturation_flow(flow: float) -> None:
    with pytest.raises(ValidationError) as info:
        queue_discharge_time_s(0.0, lanes=2, saturation_flow_vphpl=flow)
    assert info.value.field == "saturation_flow_vphpl"


def test_fractional_lane_count_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        queue_discharge_time_s(3.0, lanes=1.5, saturation_flow_vphpl=1800)  # type: ignore[arg-type]
    assert info.value.field == "lanes"


@pytest.mark.parametrize(
    ("length", "speed", "expected"), [(100.0, 10.0, 10.0), (0.0, 13.9, 0.0), (300, 15, 20.0)]
)
def test_travel_time(length: float, speed: float, expected: float) -> None:
    assert travel_time_s(length, speed) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("length", "speed", "field"),
    [
        (-1.0, 10.0, "length_m"),
        (math.nan, 10.0, "length_m"),
        (100.0, 0.0, "speed_mps"),
        (100.0, -3.0, "speed_mps"),
        (100.0, math.inf, "speed_mps"),
    ],
)
def test_travel_time_refuses_bad_input(length: float, speed: float, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        travel_time_s(length, speed)
    assert info.value.field == field
