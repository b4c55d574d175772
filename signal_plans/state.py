"""What a controller shows now, what it shows over time, and the normal plan's timeline.

A ``ControllerState`` is the per-group display with the time each display began: all the
validator and the transition planner need to know about the past. A sequence of
``SignalStep``s is the common currency for the future, whether it comes from the cloud, from
the transition planner or from the normal plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import IntervalStep
from citybrain.models.signal import Indication
from citybrain.signal_plans.timing import IntersectionSignals, TimingPlan


@dataclass(frozen=True, slots=True)
class GroupState:
    indication: Indication
    since_s: float
    """When the current indication began (for red: when the group's last yellow ended)."""
    walk_since_s: float | None = None
    """When the walk of the group's crossing began, if it was served in this green."""

    def __post_init__(self) -> None:
        if math.isnan(self.since_s) or self.since_s == math.inf:
            raise ValidationError("since_s", f"must be a time or -inf, got {self.since_s}")
        if self.walk_since_s is not None:
            check_number("walk_since_s", self.walk_since_s)
            if self.indication is not Indication.GREEN:
                raise ValidationError("walk_since_s", "only a green group can have a walk running")


NEVER = -math.inf
"""``since_s`` of a group that has been red for as long as anyone knows."""


@dataclass(frozen=True)
class ControllerState:
    """The displays of every signal group of one intersection at controller time ``at_s``."""

    signals: IntersectionSignals
    at_s: float
    groups: Mapping[str, GroupState]

    def __post_init__(self) -> None:
        check_number("at_s", self.at_s)
        missing = sorted(self.signals.groups - self.groups.keys())
        extra = sorted(self.groups.keys() - self.signals.groups)
        if missing or extra:
            raise ValidationError(
                "groups",
                f"state must list exactly the intersection's groups (missing {missing}, "
                f"unknown {extra})",
            )
        for group, state in self.groups.items():
            if state.since_s > self.at_s:
                raise ValidationError(f"groups[{group}].since_s", "lies after the state's time")
        clash = self.signals.first_conflict(self.showing_right_of_way)
        if clash is not None:
            raise ValidationError(
                "groups", f"conflicting groups {clash[0]!r} and {clash[1]!r} both open"
            )

    @property
    def greens(self) -> frozenset[str]:
        return self._with(Indication.GREEN)

    @property
    def yellows(self) -> frozenset[str]:
        return self._with(Indication.YELLOW)

    @property
    def showing_right_of_way(self) -> frozenset[str]:
        """Groups not red: green or yellow."""
        return frozenset(g for g, s in self.groups.items() if s.indication is not Indication.RED)

    def displays(self) -> dict[str, Indication]:
        return {group: state.indication for group, state in self.groups.items()}

    def _with(self, indication: Indication) -> frozenset[str]:
        return frozenset(g for g, s in self.groups.items() if s.indication is indication)


@dataclass(frozen=True, slots=True)
class SignalStep:
    """From ``at_s`` on: ``green`` groups green, ``yellow`` groups yellow, every other group red."""

    at_s: float
    green: frozenset[str]
    yellow: frozenset[str] = frozenset()

    def indication(self, group: str) -> Indication:
        if group in self.green:
            return Indication.GREEN
        if group in self.yellow:
            return Indication.YELLOW
        return Indication.RED

    def to_wire(self) -> IntervalStep:
        return IntervalStep(
            at=self.at_s, green=tuple(sorted(self.green)), yellow=tuple(sorted(self.yellow))
        )

    @classmethod
    def from_wire(cls, step: IntervalStep) -> SignalStep:
        return cls(step.at, frozenset(step.green), frozenset(step.yellow))


@dataclass(frozen=True, slots=True)
class Event:
    """One group changing its indication at one time."""

    at_s: float
    group: str
    indication: Indication


def steps_from_events(
    initial: Mapping[str, Indication], events: Iterable[Event]
) -> tuple[SignalStep, ...]:
    """Fold per-group events into display steps, one step per distinct event time."""
    current = dict(initial)
    steps: list[SignalStep] = []
    ordered = sorted(events, key=lambda event: event.at_s)
    index = 0
    while index < len(ordered):
        at_s = ordered[index].at_s
        while index < len(ordered) and ordered[index].at_s == at_s:
            current[ordered[index].group] = ordered[index].indication
            index += 1
        steps.append(
            SignalStep(
                at_s,
                frozenset(g for g, i in current.items() if i is Indication.GREEN),
                frozenset(g for g, i in current.items() if i is Indication.YELLOW),
            )
        )
    return tuple(steps)


def advance(state: ControllerState, steps: Sequence[SignalStep], at_s: float) -> ControllerState:
    """The state after running ``steps`` up to ``at_s`` (no checks: validate the steps first).

    Walks already running continue; no new walk starts inside a plan (see the validator).
    """
    if at_s < state.at_s:
        raise ValidationError("at_s", "cannot advance a state into its past")
    groups = dict(state.groups)
    for step in steps:
        if step.at_s > at_s:
            break
        for group, old in groups.items():
            new = step.indication(group)
            if new is not old.indication:
                groups[group] = GroupState(new, step.at_s)
    return ControllerState(state.signals, at_s, groups)


@dataclass(frozen=True, slots=True)
class Period:
    """One green period of the normal plan: phase ``phase_index`` green from start to end."""

    phase_index: int
    green_start_s: float
    green_end_s: float


def normal_periods(plan: TimingPlan, from_s: float, to_s: float) -> list[Period]:
    """The plan's green periods whose clearance-inclusive span touches [from_s, to_s].

    Each period's times are computed from its cycle number and phase alone, so the same period
    has bit-identical times whatever window it is asked for in.
    """
    check_number("from_s", from_s)
    check_number("to_s", to_s)
    if to_s < from_s:
        raise ValidationError("to_s", "must not be before from_s")
    cycle = plan.cycle_s
    template = plan.cycle_template
    periods: list[Period] = []
    number = math.floor((from_s - plan.offset_s) / cycle) - 1
    while plan.offset_s + number * cycle <= to_s:
        cycle_start = plan.offset_s + number * cycle
        for index, phase in enumerate(template):
            start = cycle_start + phase.start_s
            end = start + phase.green_s
            if end + phase.intergreen_after_s >= from_s and start <= to_s:
                periods.append(Period(index, start, end))
        number += 1
    return periods


def normal_events(plan: TimingPlan, from_s: float, to_s: float) -> list[Event]:
    """Every display change of the normal plan in [from_s, to_s], in time order."""
    template = plan.cycle_template
    events: list[Event] = []
    for period in normal_periods(plan, from_s, to_s):
        phase = template[period.phase_index]
        for group in phase.starting:
            events.append(Event(period.green_start_s, group, Indication.GREEN))
        for group, yellow_s in phase.stopping:
            events.append(Event(period.green_end_s, group, Indication.YELLOW))
            events.append(Event(period.green_end_s + yellow_s, group, Indication.RED))
    return sorted((e for e in events if from_s <= e.at_s <= to_s), key=lambda event: event.at_s)


def normal_state_at(plan: TimingPlan, at_s: float, *, before: bool = False) -> ControllerState:
    """The state a controller running ``plan`` undisturbed shows at ``at_s``.

    With ``before``, changes due exactly at ``at_s`` are left out: the state a plan starting
    at ``at_s`` is checked against. Replays two cycles of events: every group is served once a
    cycle, so by then each has a known display and start time. Crossings are on recall: every
    green of a group with a crossing starts with its walk.
    """
    signals = plan.signals
    last: dict[str, Event] = {}
    for event in normal_events(plan, at_s - 2 * plan.cycle_s, at_s):
        if before and event.at_s >= at_s:
            break
        last[event.group] = event
    groups: dict[str, GroupState] = {}
    for group in signals.groups:
        latest = last.get(group)
        if latest is None:
            # no change in two cycles: a group every phase serves is always green
            always = all(group in phase.groups for phase in plan.phases)
            groups[group] = GroupState(Indication.GREEN if always else Indication.RED, NEVER)
            continue
        walk = None
        if latest.indication is Indication.GREEN and signals.timings[group].has_crossing:
            walk = latest.at_s
        groups[group] = GroupState(latest.indication, latest.at_s, walk)
    return ControllerState(signals, at_s, groups)


class NormalTimeline:
    """``normal_state_at`` for a controller read many times a second: the displays and their
    start times change only at the plan's events, so the two-cycle replay runs once per change
    and the reads in between only restamp the time."""

    def __init__(self, plan: TimingPlan) -> None:
        self.plan = plan
        self._valid_from = math.inf
        self._valid_until = -math.inf
        self._groups: Mapping[str, GroupState] = {}

    def state_at(self, at_s: float) -> ControllerState:
        if self._valid_from <= at_s < self._valid_until:
            return ControllerState(self.plan.signals, at_s, self._groups)
        state = normal_state_at(self.plan, at_s)
        upcoming = normal_events(self.plan, at_s, at_s + self.plan.cycle_s)
        self._valid_from = at_s
        self._valid_until = next((e.at_s for e in upcoming if e.at_s > at_s), at_s)
        self._groups = state.groups
        return state
