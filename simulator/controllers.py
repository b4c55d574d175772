"""Emulated signal controllers: each runs its normal plan and, when told, a priority plan,
checking every command the way a cabinet's conflict monitor would.

Pure logic: given plans, acks and ``now``, no I/O. A controller on its normal plan costs
nothing here (the kernel runs the plan); one running a priority plan sets its intersection's
override mask every step until it is back on its normal timeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from citybrain.models.errors import ValidationError
from citybrain.models.messages import AckStatus, PlanKind, SignalPlan
from citybrain.models.signal import Indication
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


class EmulatedController:
    def __init__(
        self, plan: TimingPlan, *, end_lag_s: float, limits: SafetyLimits | None = None
    ) -> None:
        self.plan = plan
        self.normal = NormalTimeline(plan)
        self.end_lag = end_lag_s
        self.limits = limits or SafetyLimits()
        self.last_seq: int | None = None
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
            message, current, now_s=now_s, last_seq=self.last_seq, limits=self.limits
        )
        if not verdict.accepted:
            return self._refuse(message, verdict)
        self.last_seq = message.seq
        if message.kind is PlanKind.RELEASE:
            self._release(now_s)
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
            steps = schedule.steps
            start = schedule.start
        else:
            steps = tuple(SignalStep.from_wire(step) for step in message.steps)
            start = current
        final = check_steps(start, steps)
        if not final.accepted:
            return self._refuse(message, final)
        self.running = _Running(message.plan_id, start, steps, message.valid_until)
        return Outcome(AckStatus.ACCEPTED, verdict)

    def override_mask(self, now_s: float, bits: dict[str, int]) -> int | None:
        """The groups that may proceed now, or ``None`` when the normal plan rules.

        Ends a plan whose steps are done once the normal plan shows the same, and brings an
        expired lease back to normal through a safe transition.
        """
        running = self.running
        if running is None or now_s < running.start.at_s:
            return None
        shown = self.state_at(now_s)
        last = running.steps[-1].at_s if running.steps else running.start.at_s
        if now_s >= last and self.normal.state_at(now_s).displays() == shown.displays():
            self.running = None
            return None
        if now_s >= running.valid_until:
            log.info(
                "%s: lease of plan %s expired, returning to normal",
                self.intersection,
                running.plan_id,
            )
            self._release(now_s)
            if self.running is None:
                return None
            shown = self.state_at(now_s)
        mask = 0
        for group, state in shown.groups.items():
            lagging = state.indication is Indication.YELLOW and now_s - state.since_s < self.end_lag
            if state.indication is Indication.GREEN or lagging:
                mask |= 1 << bits[group]
        return mask

    def release(self, now_s: float) -> Outcome:
        """Back to the normal plan through a safe transition, whatever runs (a local command)."""
        self._release(now_s)
        return Outcome(AckStatus.RELEASED, Verdict.accept())

    def _release(self, now_s: float) -> None:
        if self.running is None:
            return
        state = self.state_at(now_s)
        back = return_to_normal(self.plan, state)
        self.running = (
            _Running("release", state, back.steps, now_s + self.limits.max_lease_s)
            if back.steps
            else None
        )

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
