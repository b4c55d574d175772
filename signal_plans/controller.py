"""A signal controller as ``signal_plans`` sees one: its normal plan, the priority plan it
runs (checked, compiled into display steps), leases and releases. Pure: commands and ``now``
in, states out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from citybrain.models.errors import ValidationError
from citybrain.models.messages import AckStatus, PlanKind, PlanOrder, SignalPlan
from citybrain.signal_plans.state import (
    ControllerState,
    NormalTimeline,
    SignalStep,
    advance,
    normal_state_at,
)
from citybrain.signal_plans.timing import TimingPlan
from citybrain.signal_plans.transitions import (
    WindowRequest,
    followed_to,
    plan_green_windows,
    return_to_normal,
)
from citybrain.signal_plans.validator import (
    RejectCode,
    SafetyLimits,
    Verdict,
    check_plan,
    check_steps,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a command: the ack an edge would send for it."""

    status: AckStatus
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class _Running:
    plan_id: str
    start: ControllerState
    steps: tuple[SignalStep, ...]
    valid_until: float


class ControllerModel:
    """A signal controller that runs its normal plan and, when told, priority plans, checking
    every command with the safety rules. The simulator's cabinets are this plus their signal
    masks; the cloud keeps one per intersection as a twin of what it told the field."""

    def __init__(self, plan: TimingPlan, *, limits: SafetyLimits | None = None) -> None:
        self.plan = plan
        self.normal = NormalTimeline(plan)
        self.limits = limits or SafetyLimits()
        self.last_order: PlanOrder | None = None
        self.running: _Running | None = None
        self.refused = 0

    @property
    def intersection(self) -> str:
        return self.plan.signals.intersection_id

    def state_at(self, at_s: float) -> ControllerState:
        """What the controller shows at ``at_s`` (now or later), as things stand."""
        running = self.running
        if running is None or at_s < running.start.at_s:
            # before a plan takes over, the normal plan runs
            return self.normal.state_at(at_s)
        return advance(running.start, running.steps, at_s)

    def command(self, message: SignalPlan, now_s: float) -> Outcome:
        """Accept and schedule a plan, or refuse it with the reason; an unsafe plan never runs."""
        takeover = max(now_s, message.valid_from)
        current = self.state_at(takeover)
        if self.running is None and takeover > now_s:
            current = normal_state_at(self.plan, takeover, before=True)
        verdict = check_plan(
            message, current, now_s=now_s, last_order=self.last_order, limits=self.limits
        )
        if not verdict.accepted:
            return self._refuse(message, verdict)
        self.last_order = message.order
        if message.kind is PlanKind.RELEASE:
            self._release(takeover, now_s)
            return Outcome(AckStatus.RELEASED, verdict)
        if message.windows:
            # A newer plan replaces a running one: it is planned from the state the running
            # plan leaves at the takeover, so the change is as safe as any other. Several
            # windows (corridors crossing here) are served in turn.
            requests = [
                WindowRequest(w.signal_group, w.open_at, w.close_at) for w in message.windows
            ]
            try:
                schedule = plan_green_windows(self.plan, current, requests)
            except ValidationError as error:
                return self._refuse(message, Verdict.reject(RejectCode.UNSUPPORTED, str(error)))
            if not schedule.steps:
                # the normal plan serves every window: run it (back onto it safely from a
                # plan running here), never a display frozen at the takeover's
                self._release(takeover, now_s)
                return Outcome(AckStatus.ACCEPTED, verdict)
            steps = schedule.steps
            start = schedule.start
        else:
            steps = tuple(SignalStep.from_wire(step) for step in message.steps)
            start = current
        replacement = self._replacing(
            message.plan_id, start, steps, message.valid_until, now_s, takeover
        )
        final = check_steps(replacement.start, replacement.steps)
        if not final.accepted:
            return self._refuse(message, final)
        self.running = replacement
        return Outcome(AckStatus.ACCEPTED, verdict)

    def _replacing(
        self,
        plan_id: str,
        start: ControllerState,
        steps: tuple[SignalStep, ...],
        valid_until: float,
        now_s: float,
        takeover_s: float | None = None,
    ) -> _Running:
        """A plan taking over later than now: whatever runs keeps running until the takeover,
        then the normal plan (which the new plan was planned to leave) until its first step.
        Never a jump back to the normal plan while another plan runs."""
        old = self.running
        takeover = start.at_s if takeover_s is None else takeover_s
        if old is None or takeover <= now_s or old.start.at_s >= takeover:
            return _Running(plan_id, start, steps, valid_until)
        kept = [step for step in old.steps if step.at_s < takeover]
        bridged = [
            s for s in followed_to(self.plan, kept, takeover, start.at_s) if s.at_s < start.at_s
        ]
        return _Running(plan_id, old.start, (*bridged, *steps), valid_until)

    def update(self, now_s: float) -> None:
        """Time passing: end a plan whose steps are done once the normal plan shows the same,
        and bring an expired lease back to normal through a safe transition."""
        running = self.running
        if running is None or now_s < running.start.at_s:
            return
        last = running.steps[-1].at_s if running.steps else running.start.at_s
        if now_s >= last and (
            self.normal.state_at(now_s).displays() == self.state_at(now_s).displays()
        ):
            self.running = None
            return
        if now_s >= running.valid_until:
            log.info(
                "%s: lease of plan %s expired, returning to normal",
                self.intersection,
                running.plan_id,
            )
            self._release(now_s)

    def release(self, now_s: float) -> Outcome:
        """Back to the normal plan through a safe transition, whatever runs (a local command)."""
        self._release(now_s)
        return Outcome(AckStatus.RELEASED, Verdict.accept())

    def _release(self, at_s: float, now_s: float | None = None) -> None:
        """Back to the normal plan from ``at_s`` on (now, or a release's later takeover, but
        never after the running plan's own lease: a release does not extend it)."""
        if self.running is None:
            return
        at_s = min(at_s, self.running.valid_until)
        state = self.state_at(at_s)
        back = return_to_normal(self.plan, state)
        if not back.steps:
            if now_s is None or at_s <= now_s:
                self.running = None
            return
        valid_until = at_s + self.limits.max_lease_s
        self.running = self._replacing("release", state, back.steps, valid_until, now_s or at_s)

    def _refuse(self, message: SignalPlan, verdict: Verdict) -> Outcome:
        self.refused += 1
        log.warning(
            "%s refused plan %s: %s (%s)",
            self.intersection,
            message.plan_id,
            verdict.reason,
            verdict.code,
        )
        status = AckStatus.EXPIRED if verdict.code is RejectCode.EXPIRED else AckStatus.REJECTED
        return Outcome(status, verdict)
