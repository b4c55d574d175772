from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.models.errors import ValidationError
from citybrain.models.messages import AckStatus, GreenWindow, IntervalStep, PlanKind, SignalPlan
from citybrain.models.signal import Indication
from citybrain.signal_plans.controller import ControllerModel
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.state import (
    ControllerState,
    GroupState,
    NormalTimeline,
    SignalStep,
    advance,
    normal_events,
    normal_periods,
    normal_state_at,
)
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan
from citybrain.signal_plans.transitions import (
    PhaseRequest,
    Schedule,
    Strategy,
    Transition,
    WindowRequest,
    build_steps,
    plan_green_window,
    plan_green_windows,
    return_to_normal,
    takeover_state,
)
from citybrain.signal_plans.validator import check_steps

from .strategies import timing_plans
from .timeline import violations

GROUPS = list("12345678")
PLAN = lead_lead_plan(nema_eight_group("X"), offset_s=7.0)


def _normal_start(plan: TimingPlan, group: str, after: float) -> float:
    """The next time the normal plan turns ``group`` green after ``after``."""
    t = after
    while normal_state_at(plan, t).groups[group].indication is Indication.GREEN:
        t += 0.5
    while normal_state_at(plan, t).groups[group].indication is not Indication.GREEN:
        t += 0.5
    return normal_state_at(plan, t).groups[group].since_s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    group=st.sampled_from(GROUPS),
    lead=st.floats(-10.0, 150.0),
    length=st.floats(1.0, 90.0),
)
def test_window_plans_are_safe_and_return_to_the_normal_plan(
    plan: TimingPlan, now: float, group: str, lead: float, length: float
) -> None:
    state = normal_state_at(plan, now)
    open_at = now + lead
    close_at = max(open_at, now) + length
    move = plan_green_window(plan, state, group, open_at, close_at)
    start = takeover_state(plan, state, move)
    assert check_steps(start, move.steps).accepted
    assert violations(start, move.steps) == []
    assert move.green_until_s >= close_at - 1e-6
    back_at = max(move.resume_at_s, start.at_s)
    assert (
        advance(start, move.steps, back_at).displays() == normal_state_at(plan, back_at).displays()
    )
    # The group is green over the whole window from its opening (or its late start) to its close.
    served_from = max(move.green_from_s, open_at)
    served_until = max(close_at, move.green_from_s + plan.signals.timings[group].min_green_s)
    probes = [served_from + (served_until - served_from) * k / 10 for k in range(1, 10)]
    for t in probes:
        assert _shown(plan, start, move, t)[group] is Indication.GREEN, t


def _shown(
    plan: TimingPlan, start: ControllerState, move: Transition, at_s: float
) -> dict[str, Indication]:
    """What the controller shows at ``at_s``: its normal plan outside the transition."""
    if at_s < start.at_s or at_s >= max(move.resume_at_s, start.at_s) or not move.steps:
        return normal_state_at(plan, at_s).displays()
    return advance(start, move.steps, at_s).displays()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    first=st.sampled_from(GROUPS),
    second=st.sampled_from(GROUPS),
    cut=st.floats(0.0, 40.0),
    lead=st.floats(0.0, 120.0),
)
def test_plans_from_off_plan_states_are_safe(
    plan: TimingPlan, now: float, first: str, second: str, cut: float, lead: float
) -> None:
    """A controller interrupted part-way through another priority plan still gets safe steps."""
    state = normal_state_at(plan, now)
    earlier = plan_green_window(plan, state, first, now + 5.0, now + 40.0)
    start = takeover_state(plan, state, earlier)
    midway = advance(start, earlier.steps, start.at_s + cut)
    move = plan_green_window(plan, midway, second, midway.at_s + lead, midway.at_s + lead + 20.0)
    begin = takeover_state(plan, midway, move)
    assert check_steps(begin, move.steps).accepted
    assert violations(begin, move.steps) == []


def test_normal_plan_serving_the_window_needs_no_change() -> None:
    green_start = _normal_start(PLAN, "2", 10_000.0)
    state = normal_state_at(PLAN, green_start - 30.0)
    move = plan_green_window(PLAN, state, "2", green_start + 2.0, green_start + 20.0)
    assert move.strategy is Strategy.NONE
    assert move.steps == ()


def test_running_green_is_extended_to_the_window_close() -> None:
    green_start = _normal_start(PLAN, "2", 10_000.0)
    state = normal_state_at(PLAN, green_start + 20.0)
    normal_end = green_start + PLAN.greens_s[1]
    move = plan_green_window(PLAN, state, "2", green_start + 30.0, normal_end + 15.0)
    assert move.strategy is Strategy.EXTENSION
    assert move.green_from_s == green_start
    yellow_at = next(step.at_s for step in move.steps if "2" in step.yellow)
    assert yellow_at == pytest.approx(normal_end + 15.0)


def test_side_street_green_is_cut_after_its_minimum_not_before() -> None:
    side_start = _normal_start(PLAN, "4", 10_000.0)
    state = normal_state_at(PLAN, side_start + 1.0)
    move = plan_green_window(PLAN, state, "2", side_start + 2.0, side_start + 40.0)
    timing = PLAN.signals.timings["4"]
    walk_done = side_start + timing.walk_s + timing.ped_clearance_s
    yellow_at = next(step.at_s for step in move.steps if "4" in step.yellow)
    assert yellow_at == pytest.approx(max(side_start + timing.min_green_s, walk_done))
    assert move.late_by_s(side_start + 2.0) > 0.0
    assert move.green_from_s == pytest.approx(yellow_at + timing.yellow_s + timing.red_clearance_s)


def test_build_steps_starts_new_groups_after_the_clearance() -> None:
    state = normal_state_at(PLAN, _normal_start(PLAN, "4", 10_000.0) + 15.0)
    assert state.greens == {"4", "8"}
    built = build_steps(state, [PhaseRequest(frozenset({"2", "6"}), state.at_s + 10.0)])
    timing = PLAN.signals.timings["4"]
    assert built.green_starts_s[0] == pytest.approx(
        built.changes_s[0] + timing.yellow_s + timing.red_clearance_s
    )
    assert check_steps(state, built.steps).accepted


def test_build_steps_refuses_conflicting_requests() -> None:
    state = normal_state_at(PLAN, 10_000.0)
    with pytest.raises(ValidationError, match="conflicting"):
        build_steps(state, [PhaseRequest(frozenset({"2", "4"}), 10_010.0)])


@pytest.mark.parametrize(
    ("group", "open_at", "close_at", "message"),
    [
        ("9", 10_010.0, 10_020.0, "not served"),
        ("2", 10_020.0, 10_010.0, "close after it opens"),
        ("2", 9_000.0, 9_010.0, "already closed"),
        ("2", float("nan"), 10_010.0, "finite"),
        ("bad/id", 10_010.0, 10_020.0, "valid id"),
    ],
)
def test_window_requests_that_make_no_sense_are_refused(
    group: str, open_at: float, close_at: float, message: str
) -> None:
    state = normal_state_at(PLAN, 10_000.0)
    with pytest.raises(ValidationError, match=message):
        plan_green_window(PLAN, state, group, open_at, close_at)


def test_state_of_another_intersection_is_refused() -> None:
    other = lead_lead_plan(nema_eight_group("Y"))
    with pytest.raises(ValidationError, match="different intersections"):
        plan_green_window(PLAN, normal_state_at(other, 10_000.0), "2", 10_010.0, 10_030.0)


def test_a_yellow_in_progress_is_never_turned_back_to_green() -> None:
    state = ControllerState(
        PLAN.signals,
        100.0,
        {g: GroupState(Indication.RED, 50.0) for g in GROUPS}
        | {"2": GroupState(Indication.YELLOW, 99.0), "6": GroupState(Indication.YELLOW, 99.0)},
    )
    move = plan_green_window(PLAN, state, "2", 100.0, 130.0)
    timing = PLAN.signals.timings["2"]
    assert check_steps(state, move.steps).accepted
    assert move.green_from_s >= 99.0 + timing.yellow_s + timing.red_clearance_s - 1e-9
    assert move.steps[0] == SignalStep(100.0, frozenset(), frozenset({"2", "6"}))
    assert move.steps[1] == SignalStep(99.0 + timing.yellow_s, frozenset(), frozenset())


def test_windows_the_planner_opens_itself_open_on_time_not_early() -> None:
    """Opening early costs cross traffic; only a request made mid-clearance may open early."""
    early: list[float] = []
    for now in range(10_000, 10_200, 7):
        for group in GROUPS:
            for lead in (15.0, 35.0, 60.0, 95.0):
                state = normal_state_at(PLAN, float(now))
                move = plan_green_window(PLAN, state, group, now + lead, now + lead + 20.0)
                if move.strategy in (Strategy.INSERTION, Strategy.EARLY_GREEN):
                    early.append(now + lead - move.green_from_s)
    assert len(early) > 100
    too_early = [seconds for seconds in early if seconds > 0.5]
    assert len(too_early) <= 0.05 * len(early), sorted(too_early)[-5:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    group=st.sampled_from(GROUPS),
    cut=st.floats(0.0, 60.0),
)
def test_return_to_normal_is_safe_from_anywhere(
    plan: TimingPlan, now: float, group: str, cut: float
) -> None:
    """A release or an expired lease brings any state back onto the timeline safely."""
    state = normal_state_at(plan, now)
    priority = plan_green_window(plan, state, group, now + 5.0, now + 50.0)
    start = takeover_state(plan, state, priority)
    midway = advance(start, priority.steps, start.at_s + cut)
    back = return_to_normal(plan, midway)
    assert check_steps(midway, back.steps).accepted
    assert violations(midway, back.steps) == []
    done_at = max(back.resume_at_s, midway.at_s)
    assert (
        advance(midway, back.steps, done_at).displays() == normal_state_at(plan, done_at).displays()
    )
    assert done_at - midway.at_s <= 2 * plan.cycle_s


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    groups=st.lists(st.sampled_from(GROUPS), min_size=2, max_size=3),
    leads=st.lists(st.floats(0.0, 200.0), min_size=3, max_size=3),
    lengths=st.lists(st.floats(4.0, 40.0), min_size=3, max_size=3),
)
def test_several_windows_are_served_in_turn_safely(
    plan: TimingPlan, now: float, groups: list[str], leads: list[float], lengths: list[float]
) -> None:
    """Two corridors crossing one intersection: one plan serves both windows, each planned
    from the state the previous leaves, and every step is safe."""
    state = normal_state_at(plan, now)
    windows, opens = [], now
    for group, lead, length in zip(groups, leads, lengths, strict=False):
        opens += lead
        windows.append(WindowRequest(group, opens, opens + length))
        opens += length
    schedule = plan_green_windows(plan, state, windows)
    assert check_steps(schedule.start, schedule.steps).accepted
    assert violations(schedule.start, schedule.steps) == []
    times = [s.at_s for s in schedule.steps]
    assert times == sorted(times)
    assert len(schedule.transitions) == len(windows)
    for window, move in zip(windows, schedule.transitions, strict=True):
        served_from = max(move.green_from_s, window.open_at_s)
        for k in range(1, 10):
            t = served_from + (window.close_at_s - served_from) * k / 10
            if t < window.close_at_s:
                shown = _controller_shows(plan, schedule, t)
                assert shown[window.group] is Indication.GREEN, (window, t)
    end = max(schedule.transitions[-1].resume_at_s, schedule.start.at_s, *(times or [0.0]))
    assert _controller_shows(plan, schedule, end + 2 * plan.cycle_s) == (
        normal_state_at(plan, end + 2 * plan.cycle_s).displays()
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    pair=st.sampled_from([("1", "5"), ("2", "6"), ("3", "7"), ("4", "8")]),
    lead=st.floats(0.0, 200.0),
    lengths=st.lists(st.floats(4.0, 40.0), min_size=2, max_size=2),
    overlap=st.floats(0.05, 0.95),
    later=st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "8"]),
)
def test_overlapping_windows_of_groups_one_phase_shows_are_one_green(
    plan: TimingPlan,
    now: float,
    pair: tuple[str, str],
    lead: float,
    lengths: list[float],
    overlap: float,
    later: str,
) -> None:
    """Two vehicles on opposing throughs: their windows overlap and both are green all
    through (served in turn, the second waited for the first's to close), safely; a third
    window after them is served in turn as before."""
    first = WindowRequest(pair[0], now + lead, now + lead + lengths[0])
    opens = first.open_at_s + overlap * lengths[0]
    second = WindowRequest(pair[1], opens, opens + lengths[1])
    end = max(first.close_at_s, second.close_at_s)
    third = WindowRequest(later, end + 30.0, end + 45.0)
    assert plan.served_together(*pair)
    schedule = plan_green_windows(plan, normal_state_at(plan, now), [second, first, third])
    assert check_steps(schedule.start, schedule.steps).accepted
    assert violations(schedule.start, schedule.steps) == []
    assert len(schedule.transitions) == 2
    together = schedule.transitions[0]
    served_from = max(together.green_from_s, first.open_at_s)
    for window in (first, second):
        start = max(served_from, window.open_at_s)
        for k in range(10):
            t = start + (window.close_at_s - start) * k / 10
            if t < window.close_at_s:
                shown = _controller_shows(plan, schedule, t)
                assert shown[window.group] is Indication.GREEN, (window, t)


def test_overlapping_windows_of_groups_no_phase_shows_together_are_refused() -> None:
    plan = lead_lead_plan(nema_eight_group("X"))
    state = normal_state_at(plan, 1000.0)
    windows = [WindowRequest("2", 1020.0, 1040.0), WindowRequest("5", 1030.0, 1050.0)]
    assert not plan.served_together("2", "5")  # compatible, but shown by different phases
    with pytest.raises(ValidationError, match="shown by different phases"):
        plan_green_windows(plan, state, windows)


def _controller_shows(plan: TimingPlan, schedule: Schedule, at_s: float) -> dict[str, Indication]:
    """What a controller running ``schedule`` shows: its normal plan before the takeover, the
    steps, then after the last step its displays held until the normal plan shows the same."""
    start = schedule.start
    if at_s < start.at_s:
        return normal_state_at(plan, at_s).displays()
    last = schedule.steps[-1].at_s if schedule.steps else start.at_s
    if at_s < last:
        return advance(start, schedule.steps, at_s).displays()
    held = advance(start, schedule.steps, last).displays()
    changes = [last] + [e.at_s for e in normal_events(plan, last, at_s) if e.at_s > last]
    if any(normal_state_at(plan, t).displays() == held for t in changes):
        return normal_state_at(plan, at_s).displays()
    return held


@pytest.mark.parametrize("gap", [6.0, 15.0, 90.0])
def test_crossing_corridors_get_their_windows_in_turn(gap: float) -> None:
    """Conflicting windows separated by at least the clearance open on time, and a long gap
    between them runs the normal plan."""
    now = 10_000.0
    state = normal_state_at(PLAN, now)
    first, second = "2", "4"
    assert PLAN.signals.conflict(first, second)
    open_first = now + 30.0
    close_first = open_first + 15.0
    open_second = close_first + gap
    windows = [
        WindowRequest(second, open_second, open_second + 12.0),
        WindowRequest(first, open_first, close_first),
    ]
    schedule = plan_green_windows(PLAN, state, windows)
    assert len(schedule.transitions) == 2
    assert check_steps(schedule.start, schedule.steps).accepted
    assert violations(schedule.start, schedule.steps) == []
    for group, opened, closed in (
        (first, open_first, close_first),
        (second, open_second, open_second + 12.0),
    ):
        late = max(
            0.0,
            max(t.green_from_s for t in schedule.transitions if t.green_from_s <= closed) - opened,
        )
        for k in range(1, 10):
            t = opened + late + (closed - opened - late) * k / 10
            shown = advance(schedule.start, schedule.steps, t).groups[group].indication
            assert shown is Indication.GREEN, (group, t)
    if gap == 90.0:
        middle = close_first + 45.0
        assert (
            advance(schedule.start, schedule.steps, middle).displays()
            == normal_state_at(PLAN, middle).displays()
        )


def test_overlapping_windows_of_one_group_are_served_as_one() -> None:
    now = 10_000.0
    state = normal_state_at(PLAN, now)
    schedule = plan_green_windows(
        PLAN,
        state,
        [WindowRequest("4", now + 20.0, now + 35.0), WindowRequest("4", now + 30.0, now + 50.0)],
    )
    assert len(schedule.transitions) == 1
    assert schedule.transitions[0].green_until_s >= now + 50.0 - 1e-6


def test_windows_that_already_closed_are_dropped_and_none_left_is_refused() -> None:
    now = 10_000.0
    state = normal_state_at(PLAN, now)
    with pytest.raises(ValidationError, match="closed"):
        plan_green_windows(PLAN, state, [WindowRequest("4", now - 20.0, now - 5.0)])
    with pytest.raises(ValidationError, match="in turn"):
        plan_green_windows(
            PLAN,
            state,
            [
                WindowRequest("4", now + 20.0, now + 35.0),
                WindowRequest("2", now + 30.0, now + 50.0),
            ],
        )
    with pytest.raises(ValidationError, match="close after"):
        plan_green_windows(PLAN, state, [WindowRequest("4", now + 20.0, now + 5.0)])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=timing_plans(), start=st.floats(0.0, 5_000.0), steps=st.lists(st.floats(0.0, 7.0)))
def test_the_cached_normal_timeline_equals_the_replay(
    plan: TimingPlan, start: float, steps: list[float]
) -> None:
    timeline = NormalTimeline(plan)
    at = start
    for step in [0.0, *steps, 0.05, 0.05, 300.0, -200.0]:
        at = max(0.0, at + step)
        assert timeline.state_at(at) == normal_state_at(plan, at)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=timing_plans(),
    now=st.floats(10_000.0, 20_000.0),
    group=st.sampled_from(GROUPS),
    lead=st.floats(0.0, 600.0),
    length=st.floats(1.0, 60.0),
    later=st.floats(0.0, 1.0),
)
def test_a_window_far_ahead_is_planned_the_same_from_a_later_takeover(
    plan: TimingPlan, now: float, group: str, lead: float, length: float, later: float
) -> None:
    """On its normal plan, a controller shows the same whether the plan for a window minutes
    ahead takes over now or up to two cycles before the window: the corridor manager moves
    far plans' takeover later to keep their lease within the limit, and the planner starts
    from the normal timeline close to the window rather than replay the cycles before it."""
    open_at = now + lead
    close_at = open_at + length
    takeover = now + later * max(0.0, lead - 2 * plan.cycle_s)
    windows = [WindowRequest(group, open_at, close_at)]
    early = plan_green_windows(plan, normal_state_at(plan, now, before=True), windows)
    late = plan_green_windows(plan, normal_state_at(plan, takeover, before=True), windows)

    def shown(schedule: Schedule, at_s: float) -> dict[str, Indication]:
        if not schedule.steps or at_s < schedule.start.at_s:
            return normal_state_at(plan, at_s).displays()
        return advance(schedule.start, schedule.steps, at_s).displays()

    probes = [takeover + k * 0.5 for k in range(int((close_at + 2 * plan.cycle_s - takeover) * 2))]
    for t in probes:
        assert shown(early, t) == shown(late, t), t


@pytest.mark.parametrize("late", [0.01, 0.04])
def test_a_display_begun_just_after_the_normal_plans_is_not_cut_short(late: float) -> None:
    """A release's yellow began a hundredth of a second after the normal plan's: counting that
    as on plan let the normal plan's red end the yellow 0.01 s short, and cabinets refused the
    plan ("yellow for 3.49 s, needs 3.5 s")."""
    events = normal_events(PLAN, 10_000.0, 10_000.0 + PLAN.cycle_s)
    yellow = next(e for e in events if e.indication is Indication.YELLOW)
    at = yellow.at_s + 1.0
    normal = normal_state_at(PLAN, at)
    groups = dict(normal.groups)
    groups[yellow.group] = GroupState(Indication.YELLOW, yellow.at_s + late)
    state = ControllerState(PLAN.signals, at, groups)
    for group in GROUPS:
        move = plan_green_window(PLAN, state, group, at + 30.0, at + 40.0)
        start = takeover_state(PLAN, state, move)
        assert check_steps(start, move.steps).accepted, group
    back = return_to_normal(PLAN, state)
    assert back.steps, "not on plan: it needs a way back"
    assert check_steps(state, back.steps).accepted


def test_a_takeover_just_as_a_green_ends_follows_the_normal_plan_not_a_held_green() -> None:
    """Found by the property test above: at the instant main lefts' green ends, the state
    taken just before (green) was judged off the normal plan, and the planner held that green
    from then until a window for it 100 s later."""
    plan = lead_lead_plan(nema_eight_group("X"), offset_s=0.0)  # main lefts green 0-10 s
    now = 10_010.0
    window = WindowRequest("1", now + 100.0, now + 101.0)  # 1 s past the next lefts' green
    schedule = plan_green_windows(plan, normal_state_at(plan, now, before=True), [window])
    assert schedule.steps
    for at in (now + 1.0, now + 30.0, now + 60.0):
        shown = (
            normal_state_at(plan, at)
            if at < schedule.start.at_s
            else advance(schedule.start, schedule.steps, at)
        )
        assert shown.displays() == normal_state_at(plan, at).displays(), at
    assert advance(schedule.start, schedule.steps, now + 100.5).displays()["1"] is Indication.GREEN


def _sumo_like_plan() -> TimingPlan:
    """What imported SUMO programs look like: a group every phase serves (``free``), and a
    phase that only ends groups (``lefts`` after ``throughs+lefts``)."""
    timing = GroupTiming(min_green_s=5.0, yellow_s=3.0, red_clearance_s=0.5)
    signals = IntersectionSignals.build(
        "j", dict.fromkeys(("free", "through", "left", "cross"), timing),
        [("through", "cross"), ("left", "cross")],
    )  # fmt: skip
    phases = (
        Phase("both", frozenset({"free", "through", "left"})),
        Phase("lefts", frozenset({"free", "left"})),
        Phase("cross", frozenset({"free", "cross"})),
    )
    return TimingPlan("sumo", signals, phases, (30.0, 6.0, 30.0))


def test_a_group_every_phase_serves_is_green_under_the_normal_plan() -> None:
    plan = _sumo_like_plan()
    for at in (0.0, 17.0, 40.0, 60.0, 250.0):
        assert normal_state_at(plan, at).groups["free"].indication is Indication.GREEN


def test_a_controller_leaves_a_window_for_a_plan_with_such_groups() -> None:
    plan = _sumo_like_plan()
    controller = ControllerModel(plan)
    window = SignalPlan(
        plan_id="p1", intersection="j", seq=1, issued_at=50.0, valid_from=50.0,
        valid_until=200.0,
        windows=(GreenWindow(signal_group="through", open_at=60.0, close_at=75.0),),
    )  # fmt: skip
    assert controller.command(window, 50.0).status is AckStatus.ACCEPTED
    for now in range(50, 400):
        controller.update(float(now))
        shown = controller.state_at(float(now))
        assert shown.groups["free"].indication is Indication.GREEN
    assert controller.running is None, "back on the normal plan"
    assert _on_plan_now(plan, controller.state_at(400.0))


def _on_plan_now(plan: TimingPlan, state: ControllerState) -> bool:
    return return_to_normal(plan, state).steps == ()


def test_a_window_the_normal_plan_serves_never_freezes_the_display_on_a_yellow() -> None:
    """Accepted a moment before a yellow of the normal plan ends, a window that plan serves
    anyway took over with no steps, and the controller held the display of its takeover:
    the yellow stayed for the whole lease (SUMO showed 72 s of it). The normal plan runs on."""
    plan = lead_lead_plan(nema_eight_group("X"), offset_s=7.0)
    now = next(
        t / 10
        for t in range(10_000, 10_000 + int(10 * plan.cycle_s))
        if any(
            t / 10 - shown.since_s > plan.signals.timings[group].yellow_s - 0.5
            for group, shown in normal_state_at(plan, t / 10).groups.items()
            if shown.indication is Indication.YELLOW
        )
    )
    served = next(
        p for p in normal_periods(plan, now + 10.0, now + 3 * plan.cycle_s)
        if p.green_start_s > now + 10.0 and p.green_end_s - p.green_start_s > 4.0
    )  # fmt: skip
    group = sorted(plan.phases[served.phase_index].groups)[0]
    controller = ControllerModel(plan)
    message = SignalPlan(
        plan_id="p1", intersection="X", seq=1, issued_at=now, valid_from=now,
        valid_until=now + 120.0,
        windows=(
            GreenWindow(
                signal_group=group, open_at=served.green_start_s + 1.0,
                close_at=served.green_end_s - 1.0,
            ),
        ),
    )  # fmt: skip
    assert controller.command(message, now).status is AckStatus.ACCEPTED
    for later in range(1, 121):
        at = now + later
        controller.update(at)
        assert controller.state_at(at).displays() == normal_state_at(plan, at).displays(), at


def test_a_release_taking_over_after_the_lease_does_not_extend_it() -> None:
    """The plan it ends ran until the release's takeover, its own lease ignored."""
    controller = ControllerModel(PLAN)
    held = tuple(sorted(normal_state_at(PLAN, 0.0).greens))
    hold = SignalPlan(
        plan_id="p1", intersection="X", seq=1, issued_at=0.0, valid_from=0.0, valid_until=90.0,
        steps=(IntervalStep(at=0.0, green=held),),
    )  # fmt: skip
    assert controller.command(hold, 0.0).status is AckStatus.ACCEPTED
    for now in range(12, 66):  # from when the normal plan has moved on from what it holds
        controller.update(float(now))
    release = SignalPlan(
        plan_id="r2", intersection="X", seq=2, issued_at=65.0, valid_from=95.0,
        valid_until=120.0, kind=PlanKind.RELEASE,
    )  # fmt: skip
    assert controller.command(release, 65.0).status is AckStatus.RELEASED
    running = controller.running
    assert running is not None
    back = [step.at_s for step in running.steps if step.at_s >= 90.0]
    assert back
    assert min(back) < 95.0, "the return to normal waited for the release, past the lease"
