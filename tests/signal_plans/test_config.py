from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.errors import ValidationError
from citybrain.models.fieldbus import ApproachConfig, SignalReading
from citybrain.models.signal import Indication
from citybrain.signal_plans.config import (
    CabinetConfig,
    IntersectionConfig,
    PhaseConfig,
    TimingConfig,
    from_wire,
    reading_from_state,
    state_from_reading,
    to_wire,
)
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.state import NEVER, ControllerState, GroupState, normal_state_at
from citybrain.signal_plans.timing import TimingPlan
from citybrain.simulator.networks import RoadNetwork, arterial, grid

from .strategies import timing_plans

PLAN = lead_lead_plan(nema_eight_group("X"), offset_s=7.0)


def _through_json(plan: TimingPlan) -> TimingPlan:
    """The plan after a trip through JSON bytes, as an edge receives it."""
    data = msgspec.json.encode(to_wire(plan))
    return from_wire(msgspec.json.decode(data, type=TimingConfig))


def _approach(**changes: object) -> ApproachConfig:
    fields: dict[str, object] = {
        "approach": "X:E",
        "link": "w-X",
        "lanes": 3,
        "length_m": 200.0,
        "speed_limit_mps": 13.9,
        "saturation_flow_vphpl": 1800.0,
        "advance_setback_m": 60.0,
        "groups": ["2", "5"],
    }
    fields.update(changes)
    return ApproachConfig(**fields)  # type: ignore[arg-type]


def test_library_plan_round_trips_to_an_equal_plan() -> None:
    back = _through_json(PLAN)
    assert back == PLAN
    assert back.cycle_s == PLAN.cycle_s
    assert back.phase_starts_s == PLAN.phase_starts_s


@settings(max_examples=200, deadline=None)
@given(plan=timing_plans())
def test_drawn_plans_round_trip(plan: TimingPlan) -> None:
    assert _through_json(plan) == plan


@pytest.mark.parametrize("road", [arterial(5), grid(3, 4)], ids=["arterial", "grid"])
def test_simulator_network_plans_round_trip(road: RoadNetwork) -> None:
    for plan in road.plans.values():
        assert _through_json(plan) == plan


def test_wire_form_is_ordered_and_readable() -> None:
    wire = to_wire(PLAN)
    assert [g.group for g in wire.groups] == sorted(PLAN.signals.groups)
    assert list(wire.conflicts) == sorted(wire.conflicts)
    assert all(a < b for a, b in wire.conflicts)
    assert wire.cycle_s == 100.0
    text = msgspec.json.decode(msgspec.json.encode(wire))
    assert text["phases"][0] == {"id": "main_lefts", "groups": ["1", "5"]}


def _tampered(**changes: object) -> TimingConfig:
    return msgspec.structs.replace(to_wire(PLAN), **changes)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (_tampered(cycle_s=90.0), "cycle_s"),
        (_tampered(groups=(*to_wire(PLAN).groups, to_wire(PLAN).groups[0])), "groups"),
        (_tampered(phases=(PhaseConfig(id="a", groups=("1", "2")),)), "phases"),
        (_tampered(phases=(PhaseConfig(id="a", groups=("1", "1")),)), "phases[0].groups"),
        (_tampered(greens_s=(10.0, 39.0, 8.0, 2.0)), "greens_s[3]"),
        (_tampered(offset_s=100.0), "offset_s"),
        (_tampered(conflicts=(("1", "9"),)), "conflict_pairs"),
    ],
)
def test_configurations_that_break_the_rules_are_refused(config: TimingConfig, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        from_wire(config)
    assert error.value.field.startswith(field)


def test_a_yellow_below_the_safety_floor_is_refused() -> None:
    groups = list(to_wire(PLAN).groups)
    groups[0] = msgspec.structs.replace(groups[0], yellow_s=2.0)
    with pytest.raises(ValidationError) as error:
        from_wire(_tampered(groups=tuple(groups)))
    assert error.value.field == "yellow_s"


def test_intersection_config_round_trips_and_checks_its_approaches() -> None:
    config = IntersectionConfig(PLAN, (_approach(), _approach(approach="X:W", groups=["6", "1"])))
    data = msgspec.json.encode(config.to_wire())
    back = IntersectionConfig.from_wire(msgspec.json.decode(data, type=CabinetConfig))
    assert back == config
    assert back.intersection == "X"
    with pytest.raises(ValidationError, match="unknown signal groups"):
        IntersectionConfig(PLAN, (_approach(groups=["2", "9"]),))
    with pytest.raises(ValidationError, match="duplicate"):
        IntersectionConfig(PLAN, (_approach(), _approach()))


@settings(max_examples=200, deadline=None)
@given(plan=timing_plans(), at=st.floats(0.0, 50_000.0))
def test_readings_and_states_convert_both_ways(plan: TimingPlan, at: float) -> None:
    state = normal_state_at(plan, at)
    reading = reading_from_state(state)
    data = msgspec.json.encode(reading)
    assert state_from_reading(plan.signals, msgspec.json.decode(data, type=SignalReading)) == state
    walking = {g for g, s in state.groups.items() if s.walk_since_s is not None}
    assert set(reading.walk_since) == walking


def test_a_group_red_for_as_long_as_known_travels_as_null() -> None:
    groups = {g: GroupState(Indication.RED, NEVER) for g in PLAN.signals.groups}
    groups["2"] = GroupState(Indication.GREEN, 5.0, walk_since_s=5.0)
    state = ControllerState(PLAN.signals, 10.0, groups)
    reading = reading_from_state(state, plan_id="p1", mode="priority")
    text = msgspec.json.decode(msgspec.json.encode(reading))
    assert text["since"]["1"] is None
    assert text["walk_since"] == {"2": 5.0}
    back = state_from_reading(PLAN.signals, reading)
    assert back.groups["1"].since_s == -math.inf
    assert back == state


def test_a_reading_that_does_not_fit_the_intersection_is_refused() -> None:
    reading = reading_from_state(normal_state_at(PLAN, 50.0))
    other = lead_lead_plan(nema_eight_group("Y")).signals
    assert state_from_reading(other, reading).signals == other  # same groups: it fits
    fewer = msgspec.structs.replace(
        reading,
        groups={g: i for g, i in reading.groups.items() if g != "8"},
        since={g: s for g, s in reading.since.items() if g != "8"},
        walk_since={g: s for g, s in reading.walk_since.items() if g != "8"},
    )
    with pytest.raises(ValidationError, match="missing"):
        state_from_reading(PLAN.signals, fewer)
    clash = dict.fromkeys(reading.groups, Indication.RED) | {"2": Indication.GREEN}
    clash["4"] = Indication.GREEN
    both = SignalReading(time=50.0, groups=clash, since=dict.fromkeys(clash, 1.0))
    with pytest.raises(ValidationError, match="conflicting"):
        state_from_reading(PLAN.signals, both)
