from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.errors import ValidationError
from citybrain.models.messages import GreenWindow, PlanKind, SignalPlan
from citybrain.models.signal import Indication
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.priority import plan_message
from citybrain.signal_plans.state import ControllerState, GroupState, SignalStep, normal_state_at
from citybrain.signal_plans.transitions import Transition, plan_green_window, takeover_state
from citybrain.signal_plans.validator import (
    YELLOW_OVERRUN_S,
    RejectCode,
    SafetyLimits,
    check_plan,
    check_steps,
)

PLAN = lead_lead_plan(nema_eight_group("X"), offset_s=7.0)
NOW = 10_000.0


def _move(now: float = NOW, group: str = "4") -> tuple[ControllerState, Transition]:
    state = normal_state_at(PLAN, now)
    move = plan_green_window(PLAN, state, group, now + 20.0, now + 45.0)
    return takeover_state(PLAN, state, move), move


def _first(steps: tuple[SignalStep, ...], test: str) -> int | None:
    for index in range(1, len(steps)):
        before, after = steps[index - 1], steps[index]
        if test == "yellow_ends" and before.yellow - after.yellow:
            return index
        if test == "yellow_starts" and after.yellow - before.yellow:
            return index
        if test == "green_starts" and after.green - before.green:
            return index
    return None


@settings(max_examples=150, deadline=None)
@given(now=st.floats(10_000.0, 11_000.0), group=st.sampled_from(list("12345678")))
def test_each_kind_of_tampering_is_caught_with_its_own_code(now: float, group: str) -> None:
    start, move = _move(now, group)
    steps = move.steps
    assert check_steps(start, steps).accepted
    if len(steps) < 3:
        return
    index = _first(steps, "yellow_ends")
    if index is not None and steps[index].at_s - 0.5 > steps[index - 1].at_s:
        shorter = list(steps)
        shorter[index] = SignalStep(
            steps[index].at_s - 0.5, steps[index].green, steps[index].yellow
        )
        assert check_steps(start, shorter).code is RejectCode.SHORT_YELLOW

    index = _first(steps, "yellow_starts")
    if index is not None:
        skipped = list(steps)
        skipped[index] = SignalStep(steps[index].at_s, steps[index].green, frozenset())
        assert check_steps(start, skipped).code is RejectCode.NO_YELLOW


@pytest.mark.parametrize("held_on_s", [0.9, 1.5, 200.0])
def test_a_yellow_held_on_is_refused(held_on_s: float) -> None:
    """A yellow that does not end tells drivers neither to stop nor to go: at most its
    group's yellow and a tick more (the field bus once took 200 s of it)."""
    start, move = _move()
    steps = list(move.steps)
    index = _first(move.steps, "yellow_ends")
    assert index is not None
    ended = steps[index]
    steps[index] = SignalStep(ended.at_s + held_on_s, ended.green, ended.yellow)
    for later in range(index + 1, len(steps)):
        step = steps[later]
        steps[later] = SignalStep(step.at_s + held_on_s, step.green, step.yellow)
    verdict = check_steps(start, steps)
    if held_on_s <= YELLOW_OVERRUN_S:
        assert verdict.accepted, verdict
    else:
        assert verdict.code is RejectCode.LONG_YELLOW
        assert "at most" in verdict.reason


def test_conflicting_greens_are_refused() -> None:
    state = normal_state_at(PLAN, NOW)
    greens = state.greens or frozenset({"2", "6"})
    intruder = min(g for g in PLAN.signals.groups - greens if PLAN.signals.conflicts_of[g] & greens)
    verdict = check_steps(state, [SignalStep(NOW + 1.0, greens | {intruder})])
    assert verdict.code is RejectCode.CONFLICTING_GREENS


def test_min_green_and_running_walk_are_kept() -> None:
    def side_green_for(seconds: float, walk: bool) -> ControllerState:
        groups = {g: GroupState(Indication.RED, NOW - 60.0) for g in PLAN.signals.groups}
        for g in ("4", "8"):
            groups[g] = GroupState(Indication.GREEN, NOW - seconds, NOW - seconds if walk else None)
        return ControllerState(PLAN.signals, NOW, groups)

    end_side = [
        SignalStep(NOW, frozenset(), frozenset({"4", "8"})),
        SignalStep(NOW + 4.0, frozenset()),
    ]
    # min green 10 s kept; walk 7 s + clearance 15 s kept when the walk ran
    assert (
        check_steps(side_green_for(11.0, walk=True), end_side).code is RejectCode.PED_CLEARANCE_CUT
    )
    assert check_steps(side_green_for(11.0, walk=False), end_side).accepted
    assert check_steps(side_green_for(9.0, walk=False), end_side).code is RejectCode.MIN_GREEN_CUT
    assert check_steps(side_green_for(22.0, walk=True), end_side).accepted


def test_backwards_moves_are_refused() -> None:
    state = normal_state_at(PLAN, NOW)
    red = min(state.signals.groups - state.showing_right_of_way)
    assert (
        check_steps(state, [SignalStep(NOW + 1.0, state.greens, frozenset({red}))]).code
        is RejectCode.RED_TO_YELLOW
    )
    assert (
        check_steps(state, [SignalStep(NOW - 5.0, state.greens, state.yellows)]).code
        is RejectCode.STEP_IN_PAST
    )
    assert (
        check_steps(state, [SignalStep(NOW + 1.0, frozenset({"99"}))]).code
        is RejectCode.UNKNOWN_GROUP
    )


def _message(**changes: object) -> SignalPlan:
    _start, move = _move()
    fields = {
        "plan_id": "p1",
        "intersection": "X",
        "seq": 5,
        "issued_at": NOW,
        "valid_from": move.starts_at_s,
        "valid_until": move.resume_at_s + 10.0,
        "steps": tuple(step.to_wire() for step in move.steps),
    }
    fields.update(changes)
    return SignalPlan(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "last_order", "code"),
    [
        ({"intersection": "Y"}, None, RejectCode.WRONG_INTERSECTION),
        ({}, (0, 5), RejectCode.OUT_OF_SEQUENCE),
        ({}, (0, 9), RejectCode.OUT_OF_SEQUENCE),
        ({"epoch": 1, "seq": 99}, (2, 1), RejectCode.OUT_OF_SEQUENCE),
        ({"issued_at": NOW - 31.0}, None, RejectCode.STALE),
        ({"issued_at": NOW + 5.0}, None, RejectCode.STALE),
    ],
)
def test_plan_level_rules(
    changes: dict[str, object], last_order: tuple[int, int] | None, code: RejectCode
) -> None:
    start, _ = _move()
    verdict = check_plan(_message(**changes), start, now_s=NOW, last_order=last_order)
    assert verdict.code is code
    assert verdict.reason


def test_a_good_plan_is_accepted_and_an_expired_one_is_not() -> None:
    start, move = _move()
    good = plan_message(move, plan_id="p1", intersection="X", seq=1, issued_at_s=NOW)
    assert check_plan(good, start, now_s=NOW, last_order=(0, 0)).accepted
    late = check_plan(good, start, now_s=good.valid_until + 1.0, last_order=(0, 0))
    assert late.code is RejectCode.EXPIRED


@pytest.mark.parametrize(("lead_s", "accepted"), [(30.0, True), (31.0, False)])
def test_a_plan_taking_over_after_it_would_be_stale_is_refused(
    lead_s: float, accepted: bool
) -> None:
    """Its edge hands it to the cabinet at its takeover, which would find it stale then: the
    edge acked it accepted and the cabinet refused it a minute later."""
    plan = SignalPlan(
        plan_id="w", intersection="X", seq=1, issued_at=NOW, valid_from=NOW + lead_s,
        valid_until=NOW + lead_s + 60.0,
        windows=(GreenWindow(signal_group="2", open_at=NOW + lead_s + 10, close_at=NOW + 80),),
    )  # fmt: skip
    state = normal_state_at(PLAN, NOW + lead_s, before=True)
    verdict = check_plan(plan, state, now_s=NOW, last_order=None)
    assert verdict.accepted is accepted
    if not accepted:
        assert verdict.code is RejectCode.TAKEOVER_TOO_LATE
        assert "31.0 s after it was issued" in verdict.reason


def test_windows_too_long_unknown_or_conflicting_are_refused() -> None:
    state = normal_state_at(PLAN, NOW)

    def windows(*items: GreenWindow) -> SignalPlan:
        return SignalPlan(
            plan_id="w",
            intersection="X",
            seq=1,
            issued_at=NOW,
            valid_from=NOW,
            valid_until=NOW + 290.0,
            windows=items,
        )

    cases = [
        (
            windows(GreenWindow(signal_group="2", open_at=NOW, close_at=NOW + 200.0)),
            RejectCode.WINDOW_TOO_LONG,
        ),
        (
            windows(GreenWindow(signal_group="9", open_at=NOW, close_at=NOW + 20.0)),
            RejectCode.UNKNOWN_GROUP,
        ),
        (
            windows(
                GreenWindow(signal_group="2", open_at=NOW, close_at=NOW + 20.0),
                GreenWindow(signal_group="4", open_at=NOW + 10.0, close_at=NOW + 30.0),
            ),
            RejectCode.CONFLICTING_GREENS,
        ),
    ]
    for plan, code in cases:
        assert check_plan(plan, state, now_s=NOW, last_order=None).code is code
    long_lease = SignalPlan(
        plan_id="w",
        intersection="X",
        seq=1,
        issued_at=NOW,
        valid_from=NOW,
        valid_until=NOW + 400.0,
        windows=(GreenWindow(signal_group="2", open_at=NOW, close_at=NOW + 20.0),),
    )
    assert (
        check_plan(long_lease, state, now_s=NOW, last_order=None).code is RejectCode.LEASE_TOO_LONG
    )
    release = SignalPlan(
        plan_id="r",
        intersection="X",
        seq=2,
        issued_at=NOW,
        valid_from=NOW,
        valid_until=NOW + 1.0,
        kind=PlanKind.RELEASE,
    )
    assert check_plan(release, state, now_s=NOW, last_order=(0, 1)).accepted


@pytest.mark.security
def test_absurd_times_are_refused_in_one_short_line() -> None:
    """A hostile plan's 1e300 s lease, or one issued 1e299 s ago, is said in scientific
    notation, not in 300 digits that would swamp the ack and the log."""
    state = normal_state_at(PLAN, NOW)
    window = GreenWindow(signal_group="2", open_at=NOW, close_at=NOW + 9.0)
    for issued, now, code in (
        (NOW, NOW, RejectCode.LEASE_TOO_LONG),
        (0.0, 1e299, RejectCode.STALE),
    ):
        plan = SignalPlan(
            plan_id="w", intersection="X", seq=1, issued_at=issued, valid_from=issued,
            valid_until=1e300, windows=(window,),
        )  # fmt: skip
        verdict = check_plan(plan, state, now_s=now, last_order=None)
        assert verdict.code is code
        assert "e+" in verdict.reason
        assert len(verdict.reason) < 80, verdict.reason


@pytest.mark.parametrize(
    "changes",
    [
        {"max_lease_s": 0.0},
        {"max_lease_s": float("nan")},
        {"max_window_s": 200.0, "max_lease_s": 100.0},
    ],
)
def test_unsafe_limits_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SafetyLimits(**changes)


def test_a_plan_that_finds_a_yellow_held_on_must_end_it_at_once_and_may() -> None:
    """The yellow was shown too long before the plan took over (not the plan's doing): the
    plan that ends it within the overrun is accepted, one that holds it on is not."""
    state = normal_state_at(PLAN, NOW)
    greens = sorted(state.greens)
    group = greens[0]
    held = ControllerState(
        state.signals,
        NOW,
        {**state.groups, group: GroupState(Indication.YELLOW, NOW - 60.0)},
    )
    rest = frozenset(greens[1:])
    assert check_steps(held, [SignalStep(NOW + 0.5, rest)]).accepted
    late = check_steps(held, [SignalStep(NOW + YELLOW_OVERRUN_S + 0.5, rest)])
    assert late.code is RejectCode.LONG_YELLOW
