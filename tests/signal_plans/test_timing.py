from __future__ import annotations

import pytest

from citybrain.models.errors import ValidationError
from citybrain.signal_plans.library import (
    LEFT_TIMING,
    THROUGH_TIMING,
    lead_lead_plan,
    nema_eight_group,
    progression_offset_s,
)
from citybrain.signal_plans.state import normal_periods, normal_state_at
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan


def test_default_plan_cycle_and_phase_starts() -> None:
    plan = lead_lead_plan(nema_eight_group("X"))
    assert plan.cycle_s == pytest.approx(100.0)
    assert plan.phase_starts_s == pytest.approx((0.0, 15.0, 59.5, 72.5))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"yellow_s": 2.5}, "yellow_s"),
        ({"yellow_s": 7.0}, "yellow_s"),
        ({"red_clearance_s": 0.0}, "red_clearance_s"),
        ({"min_green_s": 1.0}, "min_green_s"),
        ({"min_green_s": float("nan")}, "min_green_s"),
        ({"walk_s": 2.0, "ped_clearance_s": 10.0}, "walk_s"),
        ({"walk_s": 5.0}, "ped_clearance_s"),
    ],
)
def test_unsafe_timings_are_refused(fields: dict[str, float], field: str) -> None:
    base = {"min_green_s": 5.0, "yellow_s": 4.0, "red_clearance_s": 1.0} | fields
    with pytest.raises(ValidationError) as error:
        GroupTiming(**base)
    assert error.value.field == field


def test_plans_that_break_the_rules_are_refused() -> None:
    signals = nema_eight_group("X")
    with pytest.raises(ValidationError, match="conflicting"):
        TimingPlan(
            "p",
            signals,
            (Phase("a", frozenset({"2", "4"})), Phase("b", frozenset({"6"}))),
            (20, 20),
        )
    with pytest.raises(ValidationError, match="never served"):
        TimingPlan(
            "p",
            signals,
            (Phase("a", frozenset({"2", "6"})), Phase("b", frozenset({"4", "8"}))),
            (30, 30),
        )
    with pytest.raises(ValidationError, match="needs at least 22"):
        lead_lead_plan(signals, main_through_s=15.0)
    with pytest.raises(ValidationError, match="below the cycle"):
        lead_lead_plan(signals, offset_s=100.0)
    with pytest.raises(ValidationError, match="itself"):
        IntersectionSignals.build("X", {"a": LEFT_TIMING}, [("a", "a")])
    with pytest.raises(ValidationError, match="unknown"):
        IntersectionSignals.build("X", {"a": LEFT_TIMING}, [("a", "b")])


def test_a_plan_moved_to_another_intersection_is_the_plan_built_there() -> None:
    plan = lead_lead_plan(nema_eight_group("X"), offset_s=30.0)
    assert plan.signals.conflict("2", "4")  # worked out here, shared by the twin
    moved = plan.at("Y")
    assert moved.signals.intersection_id == "Y"
    assert plan.signals.intersection_id == "X"
    assert moved == lead_lead_plan(nema_eight_group("Y"), offset_s=30.0)
    assert moved.cycle_template is plan.cycle_template
    assert moved.phase_starts_s == plan.phase_starts_s
    assert moved.signals.conflicts_of is plan.signals.conflicts_of
    with pytest.raises(ValidationError) as error:
        plan.at("Y/1")
    assert error.value.field == "intersection_id"


def test_conflicts_are_symmetric() -> None:
    signals = nema_eight_group("X")
    for a in signals.groups:
        for b in signals.groups:
            assert signals.conflict(a, b) == signals.conflict(b, a)
    assert signals.conflict("1", "2")
    assert not signals.conflict("2", "6")
    assert signals.intergreen_s({"2", "1"}) == THROUGH_TIMING.clearance_s


def test_normal_state_follows_the_timeline() -> None:
    plan = lead_lead_plan(nema_eight_group("X"), offset_s=30.0)
    for period in normal_periods(plan, 10_000.0, 10_300.0):
        middle = (period.green_start_s + period.green_end_s) / 2
        assert normal_state_at(plan, middle).greens == plan.phases[period.phase_index].groups
        after = normal_state_at(plan, period.green_end_s + 0.1)
        ending = (
            plan.phases[period.phase_index].groups
            - plan.phases[(period.phase_index + 1) % 4].groups
        )
        assert ending <= after.yellows
    assert normal_periods(plan, 10_000.0, 10_000.0)


def test_progression_offset() -> None:
    assert progression_offset_s(700.0, 14.0, 100.0) == pytest.approx(50.0)
    with pytest.raises(ValidationError):
        progression_offset_s(-1.0, 14.0, 100.0)
