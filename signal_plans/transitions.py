"""The transition planner: the earliest safe way to give one group a green window, and back.

Two layers. ``build_steps`` turns phase requests ("these groups green, at least until then")
into display steps and enforces minimum greens, running walks, yellows and clearances itself,
so whatever it is asked it emits only safe sequences. ``plan_green_window`` decides what to ask
for: nothing (the normal plan already serves the window), a green extension, an early green
(the running phase cut after its minimum so the next phase starts early) or a phase insertion,
then the way back onto the normal plan's timeline.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.models.checks import check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.signal import Indication
from citybrain.signal_plans.state import (
    NEVER,
    ControllerState,
    Event,
    Period,
    SignalStep,
    advance,
    normal_events,
    normal_periods,
    normal_state_at,
    steps_from_events,
)
from citybrain.signal_plans.timing import GroupTiming, TimingPlan

SKIP_RATHER_THAN_LATE_S = 2.0
"""A phase too short to fit before the window is still served at its minimum if that makes the
window at most this late (less than the window's own safety margin); skipping it would cost its
traffic a whole cycle."""

ON_PLAN_TOLERANCE_S = 0.05
"""How far a reported display start may drift from the normal plan's and still count as on plan.
Only earlier: a display begun even 0.01 s later than the normal plan's (a yellow a release
started just after the normal one) would be cut short by the normal plan's next change (found
as cabinets refusing "yellow for 3.49 s, needs 3.5 s" after a cancel and a new request)."""
SAME_INSTANT_S = 1e-6


@dataclass(frozen=True, slots=True)
class PhaseRequest:
    """Show ``groups`` green (every other group red), holding them at least until ``until_s``."""

    groups: frozenset[str]
    until_s: float


@dataclass(frozen=True, slots=True)
class BuiltSequence:
    steps: tuple[SignalStep, ...]
    changes_s: tuple[float, ...]
    """When each request's change began (groups that stop turned yellow)."""
    green_starts_s: tuple[float, ...]
    """When each request's groups were all green."""
    releases_s: tuple[float, ...]
    """Earliest time every group of each request may stop (hold, minimum green, walks)."""


def _earliest_end(timing: GroupTiming, since_s: float, walk_since_s: float | None) -> float:
    end = since_s + timing.min_green_s
    if walk_since_s is not None:
        end = max(end, walk_since_s + timing.walk_s + timing.ped_clearance_s)
    return end


def build_steps(state: ControllerState, requests: Sequence[PhaseRequest]) -> BuiltSequence:
    """Emit the display steps that serve ``requests`` in order, as early as safety allows.

    All groups that stop at a change stop together, once the last of them has had its minimum
    green and its running crossing's clearance; new groups start together once every stopping
    group has had its yellow and red clearance, and every conflicting group already red its own.
    No walk starts inside a plan.
    """
    signals = state.signals
    timings = signals.timings
    shown = {group: s.indication for group, s in state.groups.items()}
    since = {group: s.since_s for group, s in state.groups.items()}
    walks = {group: s.walk_since_s for group, s in state.groups.items()}
    events: list[Event] = []
    for group in state.yellows:
        # A yellow reported past its nominal end turns red now, and its clearance counts from now.
        red_at = max(since[group] + timings[group].yellow_s, state.at_s)
        events.append(Event(red_at, group, Indication.RED))
        shown[group], since[group] = Indication.RED, red_at
    current = state.greens
    cursor = state.at_s
    changes: list[float] = []
    starts: list[float] = []
    releases: list[float] = []
    for number, request in enumerate(requests):
        check_number(f"requests[{number}].until_s", request.until_s)
        signals.require_known(f"requests[{number}].groups", request.groups)
        clash = signals.first_conflict(request.groups)
        if clash is not None:
            raise ValidationError(f"requests[{number}].groups", f"conflicting groups {clash}")
        ending = current - request.groups
        starting = request.groups - current
        change_at = max([cursor, *(_earliest_end(timings[g], since[g], walks[g]) for g in ending)])
        for group in ending:
            red_at = change_at + timings[group].yellow_s
            events.append(Event(change_at, group, Indication.YELLOW))
            events.append(Event(red_at, group, Indication.RED))
            shown[group], since[group], walks[group] = Indication.RED, red_at, None
        green_at = change_at
        if starting:
            green_at = max(
                [
                    change_at + signals.intergreen_s(ending),
                    *(
                        since[other] + timings[other].red_clearance_s
                        for group in starting
                        for other in signals.conflicts_of[group] | {group}
                    ),
                ]
            )
            for group in starting:
                events.append(Event(green_at, group, Indication.GREEN))
                shown[group], since[group], walks[group] = Indication.GREEN, green_at, None
        cursor = max(green_at, request.until_s)
        changes.append(change_at)
        starts.append(green_at)
        releases.append(
            max([cursor, *(_earliest_end(timings[g], since[g], walks[g]) for g in request.groups)])
        )
        current = request.groups
    return BuiltSequence(
        steps_from_events(state.displays(), events), tuple(changes), tuple(starts), tuple(releases)
    )


class Strategy(enum.StrEnum):
    NONE = "none"
    """The normal plan already shows the group green over the whole window."""
    EXTENSION = "extension"
    """The green that covers the window's opening is held until it closes."""
    EARLY_GREEN = "early_green"
    """The running phase is cut after its minimum so the next phase, the group's, starts early."""
    INSERTION = "insertion"
    """The group's phase is served out of turn, then the normal sequence resumes."""


@dataclass(frozen=True, slots=True)
class Transition:
    strategy: Strategy
    steps: tuple[SignalStep, ...]
    """From the takeover on (the first step is at ``starts_at_s``). After the last step the
    controller keeps its displays until its normal plan shows the same (``resume_at_s``), then
    follows the normal plan again."""
    starts_at_s: float
    """When the controller leaves its normal plan: from then on it holds its displays until
    the first step. The steps are checked against its state at this time."""
    green_from_s: float
    """When the group is green: at or before the window opens unless safety made it late."""
    green_until_s: float
    resume_at_s: float
    """From here on the controller shows what the normal plan shows."""

    def late_by_s(self, open_at_s: float) -> float:
        return max(0.0, self.green_from_s - open_at_s)


def plan_green_window(
    plan: TimingPlan, state: ControllerState, group: str, open_at_s: float, close_at_s: float
) -> Transition:
    """Serve ``group`` green from ``open_at_s`` to ``close_at_s`` as closely as safety allows.

    The group turns green late only when minimum greens and clearances leave no earlier choice;
    they are never shortened.
    """
    check_id("group", group)
    return _window(plan, state, frozenset({group}), open_at_s, close_at_s)


def _window(
    plan: TimingPlan,
    state: ControllerState,
    needed: frozenset[str],
    open_at_s: float,
    close_at_s: float,
) -> Transition:
    """``plan_green_window`` for every group of ``needed`` at once (groups served together:
    the window shows the phase they share)."""
    check_number("open_at_s", open_at_s)
    check_number("close_at_s", close_at_s)
    if close_at_s <= open_at_s:
        raise ValidationError("close_at_s", "a window must close after it opens")
    if close_at_s <= state.at_s:
        raise ValidationError("close_at_s", "the window has already closed")
    if state.signals != plan.signals:
        raise ValidationError("state", "state and plan belong to different intersections")
    target = plan.window_groups(min(needed))
    if target is None or not needed <= target:
        names = " with ".join(repr(group) for group in sorted(needed))
        raise ValidationError("group", f"{names} is not served by plan {plan.plan_id!r}")
    open_at_s = max(open_at_s, state.at_s)
    periods = [
        p
        for p in normal_periods(plan, state.at_s, close_at_s + 4 * plan.cycle_s)
        if p.green_end_s > state.at_s
    ]
    # a state taken just before a green ends (a takeover at that instant) is on plan too:
    # treated as off plan, its green was held until the window, up to minutes ahead
    if _on_plan(plan, state) or _on_plan(plan, state, before=True):
        for period in periods:
            groups = plan.phases[period.phase_index].groups
            covers = period.green_start_s <= open_at_s and period.green_end_s >= close_at_s
            if needed <= groups and covers:
                return Transition(
                    Strategy.NONE,
                    (),
                    state.at_s,
                    period.green_start_s,
                    period.green_end_s,
                    state.at_s,
                )
        strategy, requests, starts_at, decided = _requests_on_plan(
            plan, state, target, needed, open_at_s, close_at_s, periods
        )
        if decided >= 2 and periods[decided - 1].green_start_s > state.at_s:
            # Up to the period before the one cut or extended, the plan only replays the normal
            # timeline, and its steps before the takeover are dropped: start from the normal
            # state there (a window minutes ahead costs what one a cycle ahead does).
            state = normal_state_at(plan, periods[decided - 1].green_start_s, before=True)
            requests = requests[decided - 1 :]
    else:
        strategy, requests = _requests_off_plan(state, target, needed, open_at_s, close_at_s)
        starts_at = state.at_s
    return _with_way_back(plan, state, strategy, needed, requests, periods, starts_at)


def _on_plan(plan: TimingPlan, state: ControllerState, *, before: bool = False) -> bool:
    """Whether the controller is where its normal plan puts it: same displays, begun at the same
    times (after a priority plan the colours can match while clearance timers do not). With
    ``before``, compared with the normal plan just before the instant (where an interval
    ends then, the displays it is ending)."""
    normal = normal_state_at(plan, state.at_s, before=before).groups
    return all(
        shown.indication is normal[group].indication
        and (
            normal[group].since_s == NEVER  # a group the plan never changes: any start will do
            or -ON_PLAN_TOLERANCE_S <= shown.since_s - normal[group].since_s <= SAME_INSTANT_S
        )
        for group, shown in state.groups.items()
    )


def _requests_on_plan(
    plan: TimingPlan,
    state: ControllerState,
    target: frozenset[str],
    needed: frozenset[str],
    open_at_s: float,
    close_at_s: float,
    periods: list[Period],
) -> tuple[Strategy, list[PhaseRequest], float, int]:
    """Follow the normal timeline until the latest cut that still opens the window in time.

    Also returns when the plan must take over: at the cut itself when the phase it cuts has
    had its normal green (walk included), else at that phase's start, so that it starts
    inside the plan, without a walk, and may end after its minimum green; and the index of
    the period cut or extended (one request per period before it).
    """
    requests: list[PhaseRequest] = []
    timings = plan.signals.timings
    for number, period in enumerate(periods):
        groups = plan.phases[period.phase_index].groups
        started = period.green_start_s <= state.at_s
        if needed <= groups and (
            period.green_end_s >= open_at_s or _gap_too_short(plan, period, open_at_s)
        ):
            takeover = max(state.at_s, min(period.green_end_s, close_at_s))
            extended = [*requests, PhaseRequest(groups, close_at_s)]
            return Strategy.EXTENSION, extended, takeover, number
        cut_at = open_at_s - plan.signals.intergreen_s(groups - target)
        if cut_at > period.green_end_s:
            requests.append(PhaseRequest(groups, period.green_end_s))
            continue
        strategy = Strategy.INSERTION
        takeover = state.at_s
        starting = plan.starting_groups(period.phase_index)
        in_plan_minimum = max((timings[g].min_green_s for g in starting), default=0.0)
        if started or cut_at + SKIP_RATHER_THAN_LATE_S >= period.green_start_s + in_plan_minimum:
            requests.append(PhaseRequest(groups, max(cut_at, period.green_start_s)))
            if not started:
                normal_minimum = plan.shortest_green_s(period.phase_index)
                walked = cut_at >= period.green_start_s + normal_minimum
                takeover = max(takeover, cut_at if walked else period.green_start_s)
            following = periods[number + 1] if number + 1 < len(periods) else None
            if following is not None and plan.phases[following.phase_index].groups == target:
                strategy = Strategy.EARLY_GREEN
        elif requests:
            # Too little room to start this phase at all: skip it, and hold the previous green
            # until the window is due rather than open the window early.
            previous = requests[-1]
            due = open_at_s - plan.signals.intergreen_s(previous.groups - target)
            takeover = max(takeover, previous.until_s)
            requests[-1] = PhaseRequest(previous.groups, max(previous.until_s, due))
        return strategy, [*requests, PhaseRequest(target, close_at_s)], takeover, number
    raise ValidationError("close_at_s", "window lies beyond the planning horizon")


def _requests_off_plan(
    state: ControllerState,
    target: frozenset[str],
    needed: frozenset[str],
    open_at_s: float,
    close_at_s: float,
) -> tuple[Strategy, list[PhaseRequest]]:
    """The controller is not on its normal timeline (say, leaving another priority plan)."""
    current = state.greens
    if needed <= current:
        groups = target if current <= target else current
        return Strategy.EXTENSION, [PhaseRequest(groups, close_at_s)]
    if not current:
        return Strategy.INSERTION, [PhaseRequest(target, close_at_s)]
    cut_at = open_at_s - state.signals.intergreen_s(current - target)
    return Strategy.INSERTION, [PhaseRequest(current, cut_at), PhaseRequest(target, close_at_s)]


def _with_way_back(
    plan: TimingPlan,
    state: ControllerState,
    strategy: Strategy,
    needed: frozenset[str],
    requests: list[PhaseRequest],
    periods: list[Period],
    starts_at_s: float,
) -> Transition:
    """Append the way back onto the normal timeline after the window.

    Each following normal period is joined if its new groups still get their minimum green
    before its normal end; one that is too far gone is served at its minimum instead, and the
    next one tried, so no phase is skipped and the controller catches up within a cycle.
    """
    signals = plan.signals
    built = build_steps(state, requests)
    green_from = max(
        _green_run_start(state, built.steps, group, built.green_starts_s[-1]) for group in needed
    )
    release_at = built.releases_s[-1]
    green_until: float | None = None
    for period in periods:
        if period.green_end_s <= release_at:
            continue
        groups = plan.phases[period.phase_index].groups
        holding = requests[-1].groups
        if groups == holding:
            requests[-1] = PhaseRequest(groups, period.green_end_s)
            built = build_steps(state, requests)
            resume_at = max(built.green_starts_s[-1], period.green_start_s)
            if green_until is None:
                green_until = period.green_end_s
            return _transition(
                state, strategy, built.steps, starts_at_s, green_from, green_until, resume_at
            )
        ready_at = release_at + signals.intergreen_s(holding - groups)
        if ready_at <= period.green_start_s:
            # Early for this period: hold what runs so that it starts on time.
            requests[-1] = PhaseRequest(
                holding, period.green_start_s - signals.intergreen_s(holding - groups)
            )
        attempt = build_steps(state, [*requests, PhaseRequest(groups, period.green_end_s)])
        if green_until is None:
            green_until = period.green_end_s if needed <= groups else attempt.changes_s[-1]
        shortest = max((signals.timings[g].min_green_s for g in groups - holding), default=0.0)
        if period.green_end_s - attempt.green_starts_s[-1] >= shortest:
            resume_at = max(attempt.green_starts_s[-1], period.green_start_s)
            return _transition(
                state, strategy, attempt.steps, starts_at_s, green_from, green_until, resume_at
            )
        minimal = build_steps(state, [*requests, PhaseRequest(groups, 0.0)])
        requests.append(PhaseRequest(groups, minimal.releases_s[-1]))
        release_at = minimal.releases_s[-1]
    raise ValidationError("close_at_s", "no normal period to return to within the planning horizon")


def _transition(
    state: ControllerState,
    strategy: Strategy,
    steps: tuple[SignalStep, ...],
    starts_at_s: float,
    green_from_s: float,
    green_until_s: float,
    resume_at_s: float,
) -> Transition:
    """A transition carrying only the steps from the takeover on (before it runs the normal
    plan), opening with a step at the takeover itself so that a held display is explicit."""
    kept = tuple(step for step in steps if step.at_s >= starts_at_s)
    if not kept or kept[0].at_s > starts_at_s:
        shown = [step for step in steps if step.at_s < starts_at_s]
        hold = (
            SignalStep(starts_at_s, shown[-1].green, shown[-1].yellow)
            if shown
            else SignalStep(starts_at_s, state.greens, state.yellows)
        )
        kept = (hold, *kept)
    if resume_at_s > kept[-1].at_s:
        # The controller holds its last displays until here: said with a last step, so that a
        # normal phase showing the same colours earlier does not end the plan before its time.
        kept = (*kept, SignalStep(resume_at_s, kept[-1].green, kept[-1].yellow))
    return Transition(strategy, kept, starts_at_s, green_from_s, green_until_s, resume_at_s)


def _green_run_start(
    state: ControllerState, steps: Sequence[SignalStep], group: str, at_s: float
) -> float:
    """When the green that ``group`` shows at ``at_s`` began."""
    shown, since = state.groups[group].indication, state.groups[group].since_s
    for step in steps:
        if step.at_s > at_s:
            break
        if step.indication(group) is not shown:
            shown, since = step.indication(group), step.at_s
    return since


def _gap_too_short(plan: TimingPlan, period: Period, open_at_s: float) -> bool:
    """Whether clearing, serving the next phase minimally and returning would outlast the gap
    between this green's normal end and the window, so holding the green is kinder."""
    index = period.phase_index
    following = (index + 1) % len(plan.phases)
    detour = (
        plan.intergreen_after_s(index)
        + plan.shortest_green_s(following)
        + plan.signals.intergreen_s(plan.phases[following].groups - plan.phases[index].groups)
    )
    return period.green_end_s <= open_at_s < period.green_end_s + detour


def takeover_state(
    plan: TimingPlan, state: ControllerState, transition: Transition
) -> ControllerState:
    """The controller's state when ``transition`` takes over, which its steps are checked against.

    Before the takeover the controller runs its normal plan, so that state is the normal plan's
    (``state`` itself when the takeover is now).
    """
    if transition.starts_at_s <= state.at_s:
        return state
    return normal_state_at(plan, transition.starts_at_s, before=True)


@dataclass(frozen=True, slots=True)
class WindowRequest:
    group: str
    open_at_s: float
    close_at_s: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """Several green windows served one after another by one plan."""

    start: ControllerState
    """The state at the takeover, which ``steps`` are checked against."""
    steps: tuple[SignalStep, ...]
    transitions: tuple[Transition, ...]
    """One per window served (windows of one group that overlap are served as one)."""


def plan_green_windows(
    plan: TimingPlan, state: ControllerState, windows: Sequence[WindowRequest]
) -> Schedule:
    """Serve every window in order of opening, each planned from the state the one before
    leaves (two corridors crossing one intersection share its plan).

    After a window, the next is planned either from its close or, when the way back onto the
    normal plan is complete before the next window opens, from there (the controller runs its
    normal plan in between): whichever opens the next window sooner, the later takeover on a
    tie, since it leaves normal operation alone longer. Windows already closed are dropped.
    """
    ordered = _merged(plan, windows, state.at_s)
    if not ordered:
        raise ValidationError("windows", "every window has already closed")
    first = _window(plan, state, *ordered[0])
    start = takeover_state(plan, state, first)
    steps = list(first.steps)
    transitions = [first]
    previous_close = ordered[0][2]
    for needed, open_at_s, close_at_s in ordered[1:]:
        last = transitions[-1]
        best: tuple[float, float, list[SignalStep], Transition] | None = None
        earliest = max(start.at_s, last.starts_at_s, previous_close)
        for takeover in sorted({earliest, max(last.resume_at_s, earliest)}):
            if takeover >= close_at_s:
                continue
            chain = followed_to(plan, steps, last.resume_at_s, takeover)
            here = advance(start, chain, takeover)
            move = _window(plan, here, needed, open_at_s, close_at_s)
            rank = (round(move.late_by_s(open_at_s), 1), -takeover)
            if best is None or rank < best[:2]:
                # until the move takes over, the controller runs its normal plan
                kept = [s for s in chain if s.at_s <= takeover]
                if not move.steps:
                    # on its normal plan there, which serves this window: run that plan until
                    # the next green after the window's (never stop on a yellow)
                    until = next(
                        p.green_start_s
                        for p in normal_periods(
                            plan, move.green_until_s, move.green_until_s + 2 * plan.cycle_s
                        )
                        if p.green_start_s > move.green_until_s
                    )
                    best = (*rank, followed_to(plan, kept, takeover, until), move)
                    continue
                joined = followed_to(plan, kept, takeover, move.starts_at_s)
                best = (*rank, [s for s in joined if s.at_s < move.starts_at_s], move)
        if best is None:
            raise ValidationError("windows", f"the window of {sorted(needed)} cannot be served")
        steps = [*best[2], *best[3].steps]
        transitions.append(best[3])
        previous_close = close_at_s
    if not steps:
        # the normal plan serves every window: nothing to take over
        return Schedule(state, (), tuple(transitions))
    return Schedule(start, tuple(steps), tuple(transitions))


def _merged(
    plan: TimingPlan, windows: Sequence[WindowRequest], now_s: float
) -> list[tuple[frozenset[str], float, float]]:
    """Open windows in order of opening; overlapping windows of one group, or of groups served
    together (``TimingPlan.served_together``), become one, and other windows must not overlap
    (the corridor manager serves them in turn)."""
    merged: list[tuple[frozenset[str], float, float]] = []
    for window in sorted(windows, key=lambda w: (w.open_at_s, w.close_at_s)):
        check_id("group", window.group)
        check_number("open_at_s", window.open_at_s)
        check_number("close_at_s", window.close_at_s)
        if window.close_at_s <= window.open_at_s:
            raise ValidationError("close_at_s", "a window must close after it opens")
        if window.close_at_s <= now_s:
            continue
        if merged and merged[-1][2] > window.open_at_s:
            needed, opened, closed = merged[-1]
            if window.group not in needed and not plan.served_together(min(needed), window.group):
                raise ValidationError(
                    "windows",
                    f"windows of groups {sorted(needed)} and {window.group!r} overlap: "
                    "windows of groups shown by different phases are served in turn",
                )
            merged[-1] = (needed | {window.group}, opened, max(closed, window.close_at_s))
        else:
            merged.append((frozenset({window.group}), window.open_at_s, window.close_at_s))
    return merged


def followed_to(
    plan: TimingPlan, steps: list[SignalStep], on_plan_from_s: float, until_s: float
) -> list[SignalStep]:
    """``steps``, then the normal plan's changes from ``on_plan_from_s`` (where the steps have
    rejoined it) up to ``until_s``: the controller runs its normal plan between two windows.
    Steps already there past ``on_plan_from_s`` are that plan's too: it resumes after them."""
    begin = max(on_plan_from_s, steps[-1].at_s) if steps else on_plan_from_s
    if until_s <= begin:
        return steps
    shown = normal_state_at(plan, begin).displays()
    events = [e for e in normal_events(plan, begin, until_s) if e.at_s > begin]
    return [*steps, *steps_from_events(shown, events)]


def return_to_normal(plan: TimingPlan, state: ControllerState) -> Transition:
    """The earliest safe way from any state back onto the normal timeline (a release, or a
    lease that ran out): hold what shows no longer than its minimums, then rejoin."""
    if state.signals != plan.signals:
        raise ValidationError("state", "state and plan belong to different intersections")
    if _on_plan(plan, state):
        return Transition(Strategy.NONE, (), state.at_s, state.at_s, state.at_s, state.at_s)
    periods = [
        p
        for p in normal_periods(plan, state.at_s, state.at_s + 4 * plan.cycle_s)
        if p.green_end_s > state.at_s
    ]
    holding = [PhaseRequest(state.greens, state.at_s)]
    group = min(state.greens) if state.greens else min(plan.phases[0].groups)
    return _with_way_back(
        plan, state, Strategy.NONE, frozenset({group}), holding, periods, state.at_s
    )
