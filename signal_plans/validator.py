"""The safety check every plan passes before a controller may run it, whoever wrote it.

Pure: given the intersection's signals, its current state and a proposed plan, answer accept or
reject with a reason code and a sentence. The rules (DESIGN, "Safety rules"):

* never two conflicting groups green or yellow at once;
* green ends only through a full yellow, and a conflicting group starts only after the
  ending group's red clearance;
* a green keeps its minimum green, and a running walk gets its full pedestrian clearance;
* a priority plan is a lease: it has an expiry, no longer than the limit, and is not stale.

No new walk starts inside a priority plan (pedestrian calls wait for normal operation), so the
only pedestrian clearances a plan can cut are those of walks already running when it begins.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import PlanKind, PlanOrder, SignalPlan
from citybrain.models.signal import Indication
from citybrain.signal_plans.state import ControllerState, GroupState, SignalStep
from citybrain.signal_plans.timing import IntersectionSignals

EPS_S = 1e-6
"""Float tolerance on durations; far below any controller's 0.1 s resolution."""

_PLAIN_UP_TO_S = 1e9
"""Times and durations up to this are said in plain digits in a refusal; beyond (a hostile
plan's 1e300 s lease), in scientific notation, so the reason stays one readable line."""


def _seconds(value: float, decimals: int = 1) -> str:
    if abs(value) < _PLAIN_UP_TO_S:
        return f"{value:.{decimals}f}"
    return f"{value:.3e}"


YELLOW_OVERRUN_S = 1.0
"""How much longer than its group's yellow a yellow may show (a step's timing to the tick):
a yellow held on tells drivers neither to stop nor to go."""


class RejectCode(enum.StrEnum):
    """Why a plan was refused; sent as ``reason_code`` in the ack."""

    WRONG_INTERSECTION = "wrong_intersection"
    OUT_OF_SEQUENCE = "out_of_sequence"
    EXPIRED = "expired"
    STALE = "stale"
    LEASE_TOO_LONG = "lease_too_long"
    UNKNOWN_GROUP = "unknown_group"
    WINDOW_TOO_LONG = "window_too_long"
    STEP_IN_PAST = "step_in_past"
    CONFLICTING_GREENS = "conflicting_greens"
    NO_YELLOW = "no_yellow"
    SHORT_YELLOW = "short_yellow"
    LONG_YELLOW = "long_yellow"
    YELLOW_TO_GREEN = "yellow_to_green"
    RED_TO_YELLOW = "red_to_yellow"
    RED_CLEARANCE_CUT = "red_clearance_cut"
    MIN_GREEN_CUT = "min_green_cut"
    PED_CLEARANCE_CUT = "ped_clearance_cut"
    ENDS_IN_YELLOW = "ends_in_yellow"
    UNSUPPORTED = "unsupported"
    RELEASE_TOO_LATE = "release_too_late"
    TAKEOVER_TOO_LATE = "takeover_too_late"


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    code: RejectCode | None = None
    reason: str = ""

    @classmethod
    def accept(cls) -> Verdict:
        return cls(True)

    @classmethod
    def reject(cls, code: RejectCode, reason: str) -> Verdict:
        return cls(False, code, reason)


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """Limits on priority plans, in one place; unsafe values are refused at construction."""

    max_lease_s: float = 300.0
    """A plan never holds an intersection longer than this without renewal."""
    max_window_s: float = 120.0
    """Longest green window one plan may ask for (cross streets wait at most about this)."""
    max_plan_age_s: float = 30.0
    """A plan issued longer ago than this (for example queued while the edge was away) is stale."""
    max_clock_skew_s: float = 2.0
    """How far in the future a plan's issue time may lie before it is refused as stale."""
    max_release_lead_s: float = 30.0
    """How far ahead a release may take over: the plan it ends runs until then, whatever its
    lease says (the cloud's releases take over at most 10 s ahead)."""

    def __post_init__(self) -> None:
        check_number("max_lease_s", self.max_lease_s, gt=0.0, le=900.0)
        check_number("max_window_s", self.max_window_s, gt=0.0, le=300.0)
        check_number("max_plan_age_s", self.max_plan_age_s, gt=0.0, le=300.0)
        check_number("max_clock_skew_s", self.max_clock_skew_s, ge=0.0, le=10.0)
        check_number("max_release_lead_s", self.max_release_lead_s, ge=0.0, le=self.max_lease_s)
        if self.max_window_s > self.max_lease_s:
            raise ValidationError("max_window_s", "cannot exceed max_lease_s")


def check_steps(state: ControllerState, steps: Sequence[SignalStep]) -> Verdict:
    """Check that running ``steps`` from ``state`` keeps every safety rule."""
    signals = state.signals
    groups = _yellows_from_takeover(state)
    previous_at = state.at_s
    for number, step in enumerate(steps):
        where = f"step {number} at {step.at_s:.3f}"
        unknown = sorted((step.green | step.yellow) - signals.groups)
        if unknown:
            return Verdict.reject(RejectCode.UNKNOWN_GROUP, f"{where}: unknown groups {unknown}")
        if step.at_s < previous_at - EPS_S:
            return Verdict.reject(
                RejectCode.STEP_IN_PAST, f"{where}: starts before {previous_at:.3f}"
            )
        previous_at = step.at_s
        changed: dict[str, GroupState] = {}
        for group, old in groups.items():
            new = step.indication(group)
            if new is old.indication:
                continue
            verdict = _check_change(signals, group, old, new, step.at_s, where)
            if not verdict.accepted:
                return verdict
            changed[group] = GroupState(new, step.at_s)
        groups.update(changed)
        clash = signals.first_conflict(
            g for g, s in groups.items() if s.indication is not Indication.RED
        )
        if clash is not None:
            return Verdict.reject(
                RejectCode.CONFLICTING_GREENS,
                f"{where}: conflicting {clash[0]!r} and {clash[1]!r} both open",
            )
        for group in changed:
            if changed[group].indication is not Indication.GREEN:
                continue
            for other in signals.conflicts_of[group]:
                ready_at = groups[other].since_s + signals.timings[other].red_clearance_s
                if step.at_s < ready_at - EPS_S:
                    return Verdict.reject(
                        RejectCode.RED_CLEARANCE_CUT,
                        f"{where}: {group!r} starts {ready_at - step.at_s:.2f} s before the red "
                        f"clearance of conflicting {other!r} ends",
                    )
    if steps and steps[-1].yellow:
        return Verdict.reject(
            RejectCode.ENDS_IN_YELLOW, f"plan ends with {sorted(steps[-1].yellow)} still yellow"
        )
    return Verdict.accept()


def _yellows_from_takeover(state: ControllerState) -> dict[str, GroupState]:
    """The groups as the steps find them, a yellow that had already run its length before
    the takeover counted as just done: a plan must end it at once (``YELLOW_OVERRUN_S``),
    and is not refused for a yellow it found held on."""
    groups = dict(state.groups)
    for group, shown in groups.items():
        if shown.indication is Indication.YELLOW:
            done = state.at_s - state.signals.timings[group].yellow_s
            groups[group] = GroupState(Indication.YELLOW, max(shown.since_s, done))
    return groups


def _check_change(
    signals: IntersectionSignals,
    group: str,
    old: GroupState,
    new: Indication,
    at_s: float,
    where: str,
) -> Verdict:
    timing = signals.timings[group]
    held = at_s - old.since_s
    match old.indication, new:
        case Indication.GREEN, Indication.RED:
            return Verdict.reject(
                RejectCode.NO_YELLOW, f"{where}: {group!r} goes from green to red"
            )
        case Indication.GREEN, Indication.YELLOW:
            if held < timing.min_green_s - EPS_S:
                return Verdict.reject(
                    RejectCode.MIN_GREEN_CUT,
                    f"{where}: {group!r} green for {held:.2f} s, minimum {timing.min_green_s} s",
                )
            if old.walk_since_s is not None:
                walked = at_s - old.walk_since_s
                needed = timing.walk_s + timing.ped_clearance_s
                if walked < needed - EPS_S:
                    return Verdict.reject(
                        RejectCode.PED_CLEARANCE_CUT,
                        f"{where}: {group!r} crossing needs {needed} s of walk and clearance, "
                        f"had {walked:.2f} s",
                    )
        case Indication.YELLOW, Indication.RED:
            if held < timing.yellow_s - EPS_S:
                return Verdict.reject(
                    RejectCode.SHORT_YELLOW,
                    f"{where}: {group!r} yellow for {held:.2f} s, needs {timing.yellow_s} s",
                )
            if held > timing.yellow_s + YELLOW_OVERRUN_S + EPS_S:
                return Verdict.reject(
                    RejectCode.LONG_YELLOW,
                    f"{where}: {group!r} yellow for {held:.2f} s, at most "
                    f"{timing.yellow_s + YELLOW_OVERRUN_S:g} s",
                )
        case Indication.YELLOW, Indication.GREEN:
            return Verdict.reject(
                RejectCode.YELLOW_TO_GREEN, f"{where}: {group!r} goes from yellow to green"
            )
        case Indication.RED, Indication.YELLOW:
            return Verdict.reject(
                RejectCode.RED_TO_YELLOW, f"{where}: {group!r} goes from red to yellow"
            )
    return Verdict.accept()


def check_plan(
    plan: SignalPlan,
    state: ControllerState,
    *,
    now_s: float,
    last_order: PlanOrder | None,
    limits: SafetyLimits | None = None,
) -> Verdict:
    """Check a decoded plan message against this intersection, its state and the limits.

    ``state`` is the controller's state when the plan takes over (at ``valid_from``, or now if
    that has passed): the steps are checked against it. ``now_s`` is the controller time the
    plan is received at. Green-window plans are checked for what can be checked before the
    transition planner turns them into steps (then check those steps too).
    """
    limits = limits or SafetyLimits()
    signals = state.signals
    now = now_s
    if plan.intersection != signals.intersection_id:
        return Verdict.reject(
            RejectCode.WRONG_INTERSECTION,
            f"plan is for {plan.intersection!r}, this is {signals.intersection_id!r}",
        )
    if last_order is not None and plan.order <= last_order:
        return Verdict.reject(
            RejectCode.OUT_OF_SEQUENCE,
            f"(epoch, seq) {plan.order} is not newer than {last_order}",
        )
    if plan.valid_until <= now:
        return Verdict.reject(
            RejectCode.EXPIRED,
            f"expired at {_seconds(plan.valid_until, 3)}, now {_seconds(now, 3)}",
        )
    if now - plan.issued_at > limits.max_plan_age_s:
        return Verdict.reject(
            RejectCode.STALE,
            f"issued {_seconds(now - plan.issued_at)} s ago (limit {limits.max_plan_age_s} s)",
        )
    if plan.issued_at - now > limits.max_clock_skew_s:
        return Verdict.reject(
            RejectCode.STALE,
            f"issued {_seconds(plan.issued_at - now)} s in the future: clocks disagree",
        )
    if plan.kind is PlanKind.RELEASE:
        if plan.valid_from - now > limits.max_release_lead_s:
            return Verdict.reject(
                RejectCode.RELEASE_TOO_LATE,
                f"takes over {_seconds(plan.valid_from - now)} s from now "
                f"(limit {limits.max_release_lead_s} s): the plan it ends would run until then",
            )
        return Verdict.accept()
    if plan.valid_from - plan.issued_at > limits.max_plan_age_s:
        return Verdict.reject(
            RejectCode.TAKEOVER_TOO_LATE,
            f"takes over {_seconds(plan.valid_from - plan.issued_at)} s after it was issued "
            f"(limit {limits.max_plan_age_s} s): it would be stale when handed over",
        )
    lease = plan.valid_until - plan.valid_from
    if lease > limits.max_lease_s:
        return Verdict.reject(
            RejectCode.LEASE_TOO_LONG,
            f"lease of {_seconds(lease)} s exceeds {limits.max_lease_s} s",
        )
    for index, window in enumerate(plan.windows):
        if window.signal_group not in signals.groups:
            return Verdict.reject(
                RejectCode.UNKNOWN_GROUP, f"windows[{index}]: unknown group {window.signal_group!r}"
            )
        length = window.close_at - window.open_at
        if length > limits.max_window_s:
            return Verdict.reject(
                RejectCode.WINDOW_TOO_LONG,
                f"windows[{index}]: {_seconds(length)} s exceeds {limits.max_window_s} s",
            )
        for other in plan.windows[index + 1 :]:
            overlap = min(window.close_at, other.close_at) > max(window.open_at, other.open_at)
            if overlap and signals.conflict(window.signal_group, other.signal_group):
                return Verdict.reject(
                    RejectCode.CONFLICTING_GREENS,
                    f"windows for conflicting {window.signal_group!r} and "
                    f"{other.signal_group!r} overlap",
                )
    return check_steps(state, tuple(SignalStep.from_wire(step) for step in plan.steps))
