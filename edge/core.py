"""The edge agent's core for one intersection: readings, plan payloads, controller answers,
the broker's comings and goings and ``now`` go in; messages to publish and commands for the
controller come out. No I/O and no clock (the asyncio agent in ``agent.py`` does both).

What it guarantees, whatever arrives:

* a plan reaches the controller only if a key of its trust store signed it, and after the
  safety check of ``signal_plans`` (rules, expiry, order, intersection) on the controller
  state the edge last read; the cabinet checks it again on its exact state (a conflict
  monitor behind the edge);
* every plan gets an ack: ``accepted`` when it passed the edge and is scheduled, ``applied``
  when the controller took it, ``rejected``/``expired`` with a reason code otherwise,
  ``released`` when a release or the lease's end brought the normal plan back;
* a lease that runs out brings the intersection back to normal without the cloud, and a broker
  gone for ``failsafe_after_s`` puts the intersection on its local plan (fail-safe);
* nothing malformed stops it: bad payloads and readings are counted, logged and dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from citybrain.edge.estimation import QueueEstimator
from citybrain.models.checks import ID_PATTERN, check_number
from citybrain.models.codec import DEFAULT_CODEC, Codec
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.fieldbus import DetectorReading, SignalReading
from citybrain.models.messages import (
    MAX_FLOW_VPH,
    MAX_QUEUE_VEH,
    MAX_SEQ,
    AckStatus,
    ApproachState,
    Mode,
    PlanAck,
    PlanKind,
    PlanOrder,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
)
from citybrain.models.signing import TrustStore
from citybrain.models.topics import TopicKind
from citybrain.signal_plans.config import IntersectionConfig, state_from_reading
from citybrain.signal_plans.state import ControllerState, advance, normal_state_at
from citybrain.signal_plans.transitions import WindowRequest, plan_green_windows
from citybrain.signal_plans.validator import (
    RejectCode,
    SafetyLimits,
    Verdict,
    check_plan,
    check_steps,
)

log = logging.getLogger(__name__)

CONTROLLER_UNAVAILABLE = "controller_unavailable"
MALFORMED = "malformed"
LEASE_EXPIRED = "lease_expired"
FAIL_SAFE = "fail_safe"


@dataclass(frozen=True, slots=True)
class Publish:
    kind: TopicKind
    message: Telemetry | Status | PlanAck


@dataclass(frozen=True, slots=True)
class SendToController:
    plan: SignalPlan


@dataclass(frozen=True, slots=True)
class ReleaseController:
    """Bring the controller back to its normal plan (the edge's own command)."""

    reason: str


EdgeAction = Publish | SendToController | ReleaseController
"""What the core asks its shell to do (the cloud's corridor manager has actions of its own)."""


@dataclass(frozen=True, slots=True)
class EdgeCoreSettings:
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    failsafe_after_s: float = 30.0
    """The broker (so the cloud) gone this long: leave any priority plan, run the local plan."""
    reading_max_age_s: float = 2.0
    """A plan is checked against a signal reading no older than this, else refused."""
    apply_lead_s: float = 1.0
    """A plan starting later is handed to the controller this long before its start."""
    software_version: str = ""

    def __post_init__(self) -> None:
        check_number("failsafe_after_s", self.failsafe_after_s, ge=1.0, le=self.limits.max_lease_s)
        check_number("reading_max_age_s", self.reading_max_age_s, gt=0.0, le=10.0)
        check_number("apply_lead_s", self.apply_lead_s, ge=0.0, le=10.0)


class EdgeCore:
    def __init__(
        self,
        config: IntersectionConfig,
        *,
        trust: TrustStore,
        settings: EdgeCoreSettings | None = None,
        first_seq: int = 1,
        last_order: PlanOrder | None = None,
        codec: Codec = DEFAULT_CODEC,
    ) -> None:
        self.config = config
        self.trust = trust
        """Whose plans it takes: a plan not signed by a key trusted here goes no further."""
        self.intersection = config.intersection
        self.settings = settings or EdgeCoreSettings()
        self.codec = codec
        self.estimator = QueueEstimator(config.approaches)
        self.counters: Counter[str] = Counter()
        self.reading: SignalReading | None = None
        self.last_order = last_order
        """``(epoch, seq)`` of the newest plan taken; kept on disk across restarts."""
        self.pending: SignalPlan | None = None
        """Passed the edge, waiting for its start to be handed to the controller."""
        self.commanded: dict[str, SignalPlan] = {}
        """Handed to the controller, answer awaited."""
        self.active: SignalPlan | None = None
        """Taken by the controller; its lease is watched here."""
        self.broker_lost_at: float | None = None
        self.fail_safe = False
        self.telemetry_seq = first_seq

    # ---- messages of its own --------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        if self.fail_safe:
            return Mode.FAIL_SAFE
        if self.reading is not None and self.reading.mode == Mode.PRIORITY.value:
            return Mode.PRIORITY
        return Mode.NORMAL

    def birth(self, now_s: float) -> Status:
        return Status(
            intersection=self.intersection,
            presence=Presence.ONLINE,
            mode=self.mode,
            software_version=self.settings.software_version,
            at=now_s,
        )

    def will(self) -> Status:
        """The Last Will the broker publishes for this agent when it vanishes."""
        return Status(
            intersection=self.intersection,
            presence=Presence.OFFLINE,
            mode=self.mode,
            software_version=self.settings.software_version,
        )

    def goodbye(self, now_s: float) -> Status:
        """The status a clean shutdown publishes itself (the will is not sent then)."""
        return Status(
            intersection=self.intersection,
            presence=Presence.OFFLINE,
            mode=self.mode,
            software_version=self.settings.software_version,
            at=now_s,
        )

    # ---- readings -------------------------------------------------------------------------

    def on_signals(self, reading: SignalReading, now_s: float) -> list[EdgeAction]:
        """The controller's displays (polled at 10 Hz)."""
        if self.reading is not None and reading.time < self.reading.time:
            self.counters["signals_out_of_order"] += 1
            return []
        if set(reading.groups) != set(self.config.signals.groups):
            self.counters["signals_rejected"] += 1
            log.warning("%s: signal reading does not list the cabinet's groups", self.intersection)
            return []
        self.reading = reading
        active = self.active
        started = active is not None and reading.time > active.valid_from + 1.0
        if started and reading.mode == Mode.NORMAL.value:
            self.active = None  # its steps are done and the normal plan runs again
        return []

    def on_detectors(self, reading: DetectorReading, now_s: float) -> list[EdgeAction]:
        """A telemetry period's detector counts: estimate the queues, publish telemetry."""
        try:
            estimates = self.estimator.update(reading, self.reading)
        except ValidationError as error:
            self.counters["detectors_rejected"] += 1
            log.warning("%s: detector reading refused: %s", self.intersection, error)
            return []
        shown = self.reading
        approaches = tuple(
            ApproachState(
                approach=name,
                queue_veh=min(estimate.queue_veh, MAX_QUEUE_VEH),
                occupancy=estimate.occupancy,
                flow_vph=min(estimate.flow_vph, MAX_FLOW_VPH),
            )
            for name, estimate in sorted(estimates.items())
        )
        telemetry = Telemetry(
            intersection=self.intersection,
            controller_time=reading.time,
            seq=self.telemetry_seq,
            signals=dict(shown.groups) if shown is not None else {},
            approaches=approaches,
            plan_id=shown.plan_id if shown is not None else None,
            mode=self.mode,
        )
        self.telemetry_seq = min(self.telemetry_seq + 1, MAX_SEQ)
        self.counters["telemetry"] += 1
        return [Publish(TopicKind.TELEMETRY, telemetry)]

    # ---- plans ----------------------------------------------------------------------------

    def on_plan_payload(self, payload: bytes, now_s: float) -> list[EdgeAction]:
        """A message on the plan topic: decoded, checked, scheduled, acked; never trusted."""
        try:
            plan = self.codec.decode(payload, SignalPlan)
        except MessageError as error:
            self.counters["plans_malformed"] += 1
            log.warning("%s: malformed plan refused: %s", self.intersection, error)
            salvaged = self._salvage(payload)
            if salvaged is None:
                return []
            plan_id, seq = salvaged
            return [self._ack(plan_id, seq, AckStatus.REJECTED, now_s, MALFORMED, str(error))]
        return self.on_plan(plan, now_s)

    def on_plan(self, plan: SignalPlan, now_s: float) -> list[EdgeAction]:
        refusal = self.trust.verify(plan)
        if refusal is not None:
            self.counters[f"plans_rejected_{refusal.problem}"] += 1
            log.warning("%s: plan %s refused: %s", self.intersection, plan.plan_id, refusal.reason)
            return [
                self._ack(
                    plan.plan_id, plan.seq, AckStatus.REJECTED, now_s, refusal.problem.value,
                    refusal.reason,
                )
            ]  # fmt: skip
        verdict = self._check(plan, now_s)
        if not verdict.accepted:
            code = verdict.code.value if verdict.code is not None else CONTROLLER_UNAVAILABLE
            self.counters[f"plans_rejected_{code}"] += 1
            log.warning(
                "%s: plan %s refused: %s (%s)",
                self.intersection,
                plan.plan_id,
                verdict.reason,
                code,
            )
            status = AckStatus.EXPIRED if verdict.code is RejectCode.EXPIRED else AckStatus.REJECTED
            return [self._ack(plan.plan_id, plan.seq, status, now_s, code, verdict.reason)]
        self.last_order = plan.order
        self.counters["plans_accepted"] += 1
        if plan.kind is PlanKind.RELEASE:
            self.pending = None
            return [self._command(plan)]
        self.pending = plan
        actions: list[EdgeAction] = [self._ack(plan.plan_id, plan.seq, AckStatus.ACCEPTED, now_s)]
        return actions + self._due(now_s)

    def _check(self, plan: SignalPlan, now_s: float) -> Verdict:
        reading = self.reading
        if reading is None or now_s - reading.time > self.settings.reading_max_age_s:
            return Verdict(False, None, "no recent reading of the controller's signals")
        takeover = max(now_s, plan.valid_from)
        try:
            state = self._state_at(reading, takeover, now_s)
        except ValidationError as error:  # a reading no safe plan starts from (conflicting greens)
            return Verdict.reject(RejectCode.CONFLICTING_GREENS, f"the controller reads {error}")
        limits = self.settings.limits
        verdict = check_plan(plan, state, now_s=now_s, last_order=self.last_order, limits=limits)
        if not verdict.accepted or not plan.windows:
            return verdict
        windows = [WindowRequest(w.signal_group, w.open_at, w.close_at) for w in plan.windows]
        try:
            schedule = plan_green_windows(self.config.plan, state, windows)
        except ValidationError as error:
            return Verdict.reject(RejectCode.UNSUPPORTED, str(error))
        return check_steps(schedule.start, schedule.steps)

    def _state_at(self, reading: SignalReading, at_s: float, now_s: float) -> ControllerState:
        """The controller's state at ``at_s`` as the edge knows it: on its normal plan, the
        plan's timeline; inside a priority plan, the displays last read, held."""
        if reading.mode == Mode.NORMAL.value:
            return normal_state_at(self.config.plan, at_s, before=at_s > now_s)
        state = state_from_reading(self.config.signals, reading)
        return advance(state, (), max(at_s, state.at_s))

    def on_command_result(
        self, plan_id: str, status: AckStatus, reason_code: str | None, reason: str | None,
        now_s: float,
    ) -> list[EdgeAction]:  # fmt: skip
        """The controller's answer to a plan handed to it."""
        plan = self.commanded.pop(plan_id, None)
        if plan is None:
            return []
        if status is AckStatus.ACCEPTED:
            self.active = plan
            self.counters["plans_applied"] += 1
            return [self._ack(plan.plan_id, plan.seq, AckStatus.APPLIED, now_s)]
        if status is AckStatus.RELEASED:
            if plan.valid_from <= now_s:  # else the lease watch goes on until it takes over
                self.active = None
            return [self._ack(plan.plan_id, plan.seq, AckStatus.RELEASED, now_s)]
        self.counters["plans_refused_by_controller"] += 1
        log.warning("%s: controller refused %s: %s", self.intersection, plan_id, reason)
        code, why = reason_code or "refused", reason or "refused"
        if ID_PATTERN.fullmatch(code) is None:  # a cabinet's own words: kept in the reason
            code, why = "refused", f"{code[:80]}: {why}"
        return [self._ack(plan.plan_id, plan.seq, status, now_s, code, why)]

    def on_command_failed(self, plan_id: str, reason: str, now_s: float) -> list[EdgeAction]:
        """The controller could not be reached with a plan: refused, with the reason."""
        plan = self.commanded.pop(plan_id, None)
        if plan is None:
            return []
        self.counters["plans_undelivered"] += 1
        return [
            self._ack(
                plan.plan_id, plan.seq, AckStatus.REJECTED, now_s, CONTROLLER_UNAVAILABLE, reason
            )
        ]

    # ---- time and the broker ----------------------------------------------------------------

    def on_broker(self, connected: bool, now_s: float) -> list[EdgeAction]:
        if not connected:
            if self.broker_lost_at is None:
                self.broker_lost_at = now_s
            return []
        self.broker_lost_at = None
        if self.fail_safe:
            log.info("%s: cloud reachable again, leaving fail-safe", self.intersection)
            self.fail_safe = False
        return [Publish(TopicKind.STATUS, self.birth(now_s))]

    def tick(self, now_s: float) -> list[EdgeAction]:
        """Time passing: start plans that are due, end leases, enter fail-safe."""
        actions = self._due(now_s)
        active = self.active
        if active is not None and now_s >= active.valid_until and not self._renewing():
            log.info("%s: lease of %s ran out, back to normal", self.intersection, active.plan_id)
            self.active = None
            self.counters["leases_expired"] += 1
            actions.append(ReleaseController(LEASE_EXPIRED))
            actions.append(
                self._ack(
                    active.plan_id, active.seq, AckStatus.RELEASED, now_s, LEASE_EXPIRED,
                    "the lease ran out without renewal",
                )
            )  # fmt: skip
        lost = self.broker_lost_at
        if (
            lost is not None
            and not self.fail_safe
            and now_s - lost >= self.settings.failsafe_after_s
        ):
            log.warning(
                "%s: no broker for %.0f s: fail-safe on the local plan",
                self.intersection,
                now_s - lost,
            )
            self.fail_safe = True
            self.counters["fail_safe_entered"] += 1
            if self.active is not None or self.pending is not None:
                actions.append(ReleaseController("cloud unreachable"))
                actions += self._fail_safe_acks(now_s)
        return actions

    def _renewing(self) -> bool:
        """A plan handed to the controller and not answered yet replaces the one running once
        taken: a lease-end release now would reach the controller after it and undo it (a
        cabinet slow to answer lost the renewal that way). Refused or undelivered, it leaves
        the running plan's lease expired, and the next tick releases it."""
        return any(plan.kind is not PlanKind.RELEASE for plan in self.commanded.values())

    def _fail_safe_acks(self, now_s: float) -> list[EdgeAction]:
        """What fail-safe did to the plans it dropped, said (published once the broker is
        back, from the buffer): the cloud believed the one running applied and the one
        waiting accepted."""
        why = "fail-safe: no broker, the local plan runs"
        acks: list[EdgeAction] = []
        if self.active is not None:
            plan, self.active = self.active, None
            acks.append(
                self._ack(plan.plan_id, plan.seq, AckStatus.RELEASED, now_s, FAIL_SAFE, why)
            )
        if self.pending is not None:
            plan, self.pending = self.pending, None
            acks.append(
                self._ack(plan.plan_id, plan.seq, AckStatus.REJECTED, now_s, FAIL_SAFE, why)
            )
        return acks

    def _due(self, now_s: float) -> list[EdgeAction]:
        plan = self.pending
        if plan is None or plan.valid_from - self.settings.apply_lead_s > now_s:
            return []
        self.pending = None
        if now_s >= plan.valid_until:
            self.counters["plans_expired_waiting"] += 1
            return [
                self._ack(
                    plan.plan_id, plan.seq, AckStatus.EXPIRED, now_s, RejectCode.EXPIRED.value,
                    "expired before it could start",
                )
            ]  # fmt: skip
        return [self._command(plan)]

    def _command(self, plan: SignalPlan) -> SendToController:
        self.commanded[plan.plan_id] = plan
        return SendToController(plan)

    def _ack(
        self,
        plan_id: str,
        seq: int,
        status: AckStatus,
        now_s: float,
        reason_code: str | None = None,
        reason: str | None = None,
    ) -> Publish:
        ack = PlanAck(
            plan_id=plan_id,
            intersection=self.intersection,
            seq=seq,
            status=status,
            at=max(0.0, now_s),
            reason_code=reason_code,
            reason=reason[:500] if reason else None,
        )
        return Publish(TopicKind.ACK, ack)

    def _salvage(self, payload: bytes) -> tuple[str, int] | None:
        """The plan id and seq of a plan that failed to decode, when they are readable, so
        that the refusal can still be acked to its sender."""
        if len(payload) > self.codec.max_payload_bytes:
            return None
        try:
            raw = msgspec.json.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(raw, dict):
            return None
        plan_id, seq = raw.get("plan_id"), raw.get("seq")
        if not isinstance(plan_id, str) or ID_PATTERN.fullmatch(plan_id) is None:
            return None
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            return None
        return plan_id, seq
