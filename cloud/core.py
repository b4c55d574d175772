"""The cloud service's logic, with no I/O: telemetry, statuses, acks, vehicle positions,
operator requests and ``now`` go in; plans and corridor statuses to publish come out.

It keeps the city's state (``NetworkState``: queues and flows per approach; each
intersection's presence, mode and last displays), drives the ``CorridorManager``, and tracks
every plan until its ack: a plan not acknowledged within ``ack_timeout_s`` is sent again as a
new plan (a fresh ``seq``: the edge may have taken the first and only the ack was lost); after
``send_attempts`` the intersection is marked not confirmed and the corridor is re-planned
around it (its normal plan decides when the vehicle passes).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from citybrain.cloud.corridor import (
    TERMINAL,
    Action,
    Corridor,
    CorridorManager,
    SendPlan,
    Settings,
)
from citybrain.cloud.graph import CorridorGraph
from citybrain.cloud.routing import Router
from citybrain.cloud.state import NetworkState, RefusedError
from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    AckStatus,
    CorridorRequest,
    CorridorStatus,
    Mode,
    PlanAck,
    PlanKind,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.network import Network
from citybrain.models.signing import SignatureProblem
from citybrain.signal_plans.controller import ControllerModel
from citybrain.signal_plans.state import ControllerState
from citybrain.signal_plans.timing import TimingPlan
from citybrain.signal_plans.validator import RejectCode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreSettings:
    ack_timeout_s: float = 1.0
    """Wall-clock seconds."""
    send_attempts: int = 3
    stale_after_s: float = 10.0
    corridor: Settings = field(default_factory=Settings)
    emergency_speed_factor: float = 1.3
    twin_slack_s: float = 3.0
    """How long after a plan's takeover the field may still report its normal plan."""
    max_seq_jump: int = 300
    """How far an intersection's telemetry seq may leap (``NetworkState``): five minutes of
    messages lost at 1 Hz; an edge that restarts announces itself and may leap further."""

    def __post_init__(self) -> None:
        check_number("ack_timeout_s", self.ack_timeout_s, gt=0.0, le=60.0)
        check_count("send_attempts", self.send_attempts, ge=1, le=10)
        check_count("max_seq_jump", self.max_seq_jump, ge=1)
        check_number("stale_after_s", self.stale_after_s, gt=0.0, le=3600.0)
        check_number("emergency_speed_factor", self.emergency_speed_factor, ge=1.0, le=3.0)


@dataclass
class _Pending:
    plan: SignalPlan
    sent_at: float
    """Wall clock: an ack's round trip does not scale with a simulation's pace."""
    attempts: int


@dataclass
class _SentPlan:
    """What an ack must match to speak for a plan this cloud sent."""

    seq: int
    taken: bool = False
    """The edge accepted or applied it: a later refusal is of a copy (see ``_refuses``)."""


FLEET_KEPT = 10_000
"""Vehicles whose last position is kept (the least recently heard from go first)."""
SENT_PLANS_KEPT = 100_000
"""Plans remembered for their acks (a corridor's plans are acked within seconds)."""
SIGNATURE_REFUSALS = frozenset(problem.value for problem in SignatureProblem)


def _refuses(ack: PlanAck, sent: _SentPlan) -> bool:
    """Whether a refusal ack is about the plan this cloud sent. The cloud signed it, so a
    signature refusal is of someone else's copy; once the edge took it, ``out_of_sequence``
    is a second copy's (a replay or a redelivery). The cabinet may still refuse a plan the
    edge accepted, and a plan that waited too long expires: those are the plan's own."""
    if ack.reason_code in SIGNATURE_REFUSALS:
        return False
    return not (sent.taken and ack.reason_code == RejectCode.OUT_OF_SEQUENCE)


@dataclass
class _Dispatch:
    """A corridor's first plans, to time a request until every intersection acknowledged."""

    started: float
    waiting: set[tuple[str, str]]


@dataclass
class IntersectionSeen:
    presence: Presence | None = None
    mode: Mode | None = None
    telemetry: Telemetry | None = None
    received_at: float | None = None


class CloudCore:
    def __init__(
        self,
        network: Network,
        plans: Mapping[str, TimingPlan],
        *,
        settings: CoreSettings | None = None,
        wall_clock: Callable[[], float],
    ) -> None:
        self.settings = settings or CoreSettings()
        self.network = network
        self.plans = plans
        self.graph = CorridorGraph.from_network(
            network, emergency_speed_factor=self.settings.emergency_speed_factor
        )
        self.state = NetworkState(
            network,
            stale_after_s=self.settings.stale_after_s,
            max_seq_jump=self.settings.max_seq_jump,
        )
        self.manager = CorridorManager(
            self.graph,
            Router(self.graph),
            self.state,
            plans,
            self.signal_state,
            settings=self.settings.corridor,
        )
        self.wall_clock = wall_clock
        self.seen: dict[str, IntersectionSeen] = {
            node.id: IntersectionSeen() for node in network.intersections if node.id in plans
        }
        self.twins = {node: ControllerModel(plan) for node, plan in plans.items()}
        self._twin_backlog: dict[str, list[SignalPlan]] = {}
        self.pending: dict[tuple[str, str], _Pending] = {}
        self.sent_plans: OrderedDict[tuple[str, str], _SentPlan] = OrderedDict()
        """(intersection, plan id) of the plans sent lately, oldest first."""
        self.dispatches: dict[str, _Dispatch] = {}
        self.counters: Counter[str] = Counter()
        self.plan_latency_ms: deque[float] = deque(maxlen=10_000)
        """Request to the last acknowledgement of a corridor's first plans, wall clock."""
        self.on_latency: Callable[[float], None] | None = None
        """Told each new ``plan_latency_ms`` sample (the service's metrics histogram)."""
        self.fleet: OrderedDict[str, VehiclePosition] = OrderedDict()
        """Each vehicle's last position from its AVL unit, least recently heard from first: a
        corridor can be asked for a vehicle and a destination alone (``request``)."""
        self.unconfirmed: deque[str] = deque(maxlen=10_000)
        """Intersections just marked not confirmed (their plan went unacknowledged), for the
        service's alarms; whoever reads them clears them."""

    # ---- the city's state -------------------------------------------------------------------

    def on_telemetry(self, message: Telemetry, now_s: float) -> None:
        """Raises ``RefusedError`` for an unknown intersection or approach, or a sequence number
        already seen (a redelivery) or leaping (see ``NetworkState.ingest``)."""
        self.state.ingest(message, now_s)
        self._sync(message)
        seen = self.seen.get(message.intersection)
        if seen is not None:
            seen.telemetry = message
            seen.mode = message.mode
            seen.received_at = now_s

    def on_status(self, status: Status, now_s: float) -> list[Action]:
        """An edge's birth (online) lets its telemetry seq start over; its Last Will (offline
        with no ``at``) was written when it connected, so its mode is stale: the mode known
        from telemetry since stands."""
        node = status.intersection
        seen = self.seen.get(node)
        if seen is None:
            raise RefusedError(
                "unknown_intersection", "intersection", f"unknown intersection {node!r}"
            )
        will = status.presence is Presence.OFFLINE and status.at is None
        seen.presence = status.presence
        if not will or seen.mode is None:
            seen.mode = status.mode
        if status.presence is Presence.ONLINE:
            self.state.born(node)
            return self.manager.set_confirmed(node, True, now_s)
        return []

    def signal_state(self, node: str, at_s: float) -> ControllerState:
        """The cloud's view of a controller: its twin, which has run every plan the cloud sent
        there the way the controller runs it (same code, same takeover instant)."""
        twin = self._twin(node)
        twin.update(at_s)
        return twin.state_at(at_s)

    def _twin(self, node: str) -> ControllerModel:
        """The intersection's twin, given the plans sent since it was last looked at, each as
        the field takes it: before its takeover when there is a lead."""
        twin = self.twins[node]
        for plan in self._twin_backlog.pop(node, ()):
            if twin.command(plan, plan.issued_at).status not in (
                AckStatus.ACCEPTED,
                AckStatus.RELEASED,
            ):
                self.counters["twin_refused"] += 1
        return twin

    def settle(self) -> None:
        """Bring every twin up to date (after the plans of a burst have gone out)."""
        while self.settle_one():
            pass

    def settle_one(self) -> bool:
        """Bring one twin up to date; whether any is still behind. The service calls it
        between other work, so the twins' replay is neither on a request's path nor in its
        acks' way (the next request would otherwise pay for the last one's releases)."""
        if self._twin_backlog:
            self._twin(next(iter(self._twin_backlog)))
        return bool(self._twin_backlog)

    def _sync(self, message: Telemetry) -> None:
        """A controller reporting its normal plan long after the twin took a plan over is not
        running it (refused, released locally, fail-safe): the twin follows the field."""
        twin = self._twin(message.intersection) if message.intersection in self.twins else None
        running = twin.running if twin is not None else None
        if twin is None or running is None or message.mode is not Mode.NORMAL:
            return
        if message.controller_time > running.start.at_s + self.settings.twin_slack_s:
            self.counters["twin_resynced"] += 1
            twin.running = None

    # ---- corridors --------------------------------------------------------------------------

    def request(self, request: CorridorRequest, now_s: float) -> list[Action]:
        """A request without an origin (or route) starts where the vehicle last reported, if
        it did within the corridors' position timeout."""
        started = self.wall_clock()  # the latency an operator sees includes the routing
        start = None
        if request.origin is None and not request.route:
            start = self._where(request.vehicle, now_s)
        actions = self.manager.request(request, now_s, start=start)
        corridor_id = self.manager.by_vehicle[request.vehicle]
        first = {(a.intersection, a.plan.plan_id) for a in actions if isinstance(a, SendPlan)}
        if first:  # none: every window lies beyond reach for now, no latency to time
            self.dispatches[corridor_id] = _Dispatch(started, first)
        self.counters["corridors_requested"] += 1
        return self._track(actions, now_s)

    def _where(self, vehicle: str, now_s: float) -> tuple[str, float]:
        position = self.fleet.get(vehicle)
        limit = self.settings.corridor.position_timeout_s
        if position is None or now_s - position.time > limit:
            raise ValidationError(
                "origin",
                f"no position from {vehicle} in the last {limit:.0f} s: give an origin",
            )
        length = float(self.graph.link_length[self.graph.link_index[position.link]])
        return position.link, min(position.offset_m, length)

    def cancel(self, corridor_id: str, now_s: float, *, reason: str) -> list[Action]:
        return self._track(self.manager.cancel(corridor_id, now_s, reason=reason), now_s)

    def on_position(
        self, position: VehiclePosition, now_s: float, *, tolerance_s: float
    ) -> list[Action]:
        """A position counts at a time within ``tolerance_s`` of ``now_s`` and on a link of
        the network: it is the vehicle's last known place (``fleet``, unless an older report
        came late), and for a vehicle with a corridor it re-times the corridor's plans. The
        refusals of a vehicle without one are ``fleet_``-prefixed: a unit at a depot off the
        network, or with its clock off, matters only once it has a corridor."""
        idle = position.vehicle not in self.manager.by_vehicle
        kind = "fleet_position" if idle else "position"
        if abs(position.time - now_s) > tolerance_s:
            raise RefusedError(
                f"{kind}_time", "time", f"{position.time:.1f} is far from now ({now_s:.1f})"
            )
        link = self.graph.link_index.get(position.link)
        if link is None:
            raise RefusedError(f"{kind}_link", "link", f"unknown link {position.link!r}")
        if position.offset_m > self.graph.link_length[link] + 1.0:
            raise RefusedError(f"{kind}_link", "offset_m", f"beyond the end of {position.link}")
        known = self.fleet.get(position.vehicle)
        if known is None or position.time >= known.time:
            self.fleet[position.vehicle] = position
            self.fleet.move_to_end(position.vehicle)
            if len(self.fleet) > FLEET_KEPT:
                self.fleet.popitem(last=False)
        if idle:
            self.counters["positions_without_corridor"] += 1
            return []
        return self._track(self.manager.on_position(position, now_s), now_s)

    def on_ack(self, ack: PlanAck, now_s: float) -> list[Action]:
        self.counters[f"acks_{ack.status}"] += 1
        refused = ack.status in (AckStatus.REJECTED, AckStatus.EXPIRED)
        sent = self.sent_plans.get((ack.intersection, ack.plan_id))
        if sent is None or sent.seq != ack.seq:
            # not a plan this cloud sent (a forged copy under another seq, a previous process)
            self.counters["acks_unmatched"] += 1
            return []
        if refused and not _refuses(ack, sent):
            # a copy of the plan refused, not the plan: a replay or a forged copy under its
            # id, or a QoS 1 redelivery of a plan taken already; the plan itself stands
            self.counters["acks_of_copies"] += 1
            return []
        sent.taken = sent.taken or ack.status in (AckStatus.ACCEPTED, AckStatus.APPLIED)
        self.pending.pop((ack.intersection, ack.plan_id), None)
        if refused and ack.intersection in self.twins:
            # (an accepted plan leaves the twin alone: it takes its plans when next looked at)
            twin = self._twin(ack.intersection)
            if twin.running is not None and twin.running.plan_id == ack.plan_id:
                twin.running = None  # the field did not take it: it runs what it ran before
        actions = self.manager.set_confirmed(ack.intersection, True, now_s)
        actions += self.manager.on_ack(ack, now_s)
        if ack.status in (AckStatus.ACCEPTED, AckStatus.APPLIED, AckStatus.RELEASED):
            self._acknowledged(ack.intersection, ack.plan_id)
        elif refused:
            self._abandon(ack.intersection, ack.plan_id, "dispatches_refused")
        return self._track(actions, now_s)

    def tick(self, now_s: float) -> list[Action]:
        """Time out silent vehicles; send unacknowledged plans again, then plan around."""
        actions = self.manager.tick(now_s)
        settings = self.settings
        wall = self.wall_clock()
        for key, pending in list(self.pending.items()):
            if wall - pending.sent_at < settings.ack_timeout_s or key not in self.pending:
                continue
            node = key[0]
            del self.pending[key]
            if pending.attempts >= settings.send_attempts:
                self.counters["intersections_unconfirmed"] += 1
                self.unconfirmed.append(node)
                self._abandon(node, pending.plan.plan_id, "dispatches_unconfirmed")
                actions += self.manager.set_confirmed(node, False, now_s)
                continue
            self.counters["plans_resent"] += 1
            if pending.plan.kind is PlanKind.RELEASE:
                resent: list[Action] = [SendPlan(node, pending.plan)]
            else:
                resent = self.manager.resend(node, now_s)
            again = [a.plan for a in resent if isinstance(a, SendPlan) and a.intersection == node]
            for plan in again:
                self.pending[(node, plan.plan_id)] = _Pending(plan, wall, pending.attempts + 1)
            self._replace(node, pending.plan.plan_id, again[0].plan_id if again else None)
            actions += resent
        return self._track(actions, now_s)

    def _track(self, actions: list[Action], now_s: float) -> list[Action]:
        """Every plan going out waits for its ack (a resent one keeps its attempt count)."""
        for action in actions:
            if isinstance(action, SendPlan):
                self.counters["plans_sent"] += 1
                self.sent_plans[(action.intersection, action.plan.plan_id)] = _SentPlan(
                    action.plan.seq
                )
                if len(self.sent_plans) > SENT_PLANS_KEPT:
                    self.sent_plans.popitem(last=False)
                # the twin takes it once it is on its way (see _twin): not on the send path
                self._twin_backlog.setdefault(action.intersection, []).append(action.plan)
                key = (action.intersection, action.plan.plan_id)
                self.pending.setdefault(key, _Pending(action.plan, self.wall_clock(), 1))
        return actions

    def _acknowledged(self, node: str, plan_id: str) -> None:
        for corridor_id, dispatch in list(self.dispatches.items()):
            dispatch.waiting.discard((node, plan_id))
            if not dispatch.waiting:
                latency_ms = (self.wall_clock() - dispatch.started) * 1000.0
                self.plan_latency_ms.append(latency_ms)
                if self.on_latency is not None:
                    self.on_latency(latency_ms)
                del self.dispatches[corridor_id]

    def _abandon(self, node: str, plan_id: str, counter: str) -> None:
        """A first plan refused or given up on: that request will never be acknowledged all
        through, so it gives no latency sample (counted instead)."""
        for corridor_id, dispatch in list(self.dispatches.items()):
            if (node, plan_id) in dispatch.waiting:
                self.counters[counter] += 1
                del self.dispatches[corridor_id]

    def _replace(self, node: str, plan_id: str, new_id: str | None) -> None:
        """A first plan sent again under a new id is acknowledged under that one; one not
        sent again (its corridor ended meanwhile) never will be, so its request ends."""
        if new_id is None:
            self._abandon(node, plan_id, "dispatches_superseded")
            return
        for dispatch in self.dispatches.values():
            if (node, plan_id) in dispatch.waiting:
                dispatch.waiting.discard((node, plan_id))
                dispatch.waiting.add((node, new_id))

    # ---- views ------------------------------------------------------------------------------

    def statuses(self, now_s: float) -> list[CorridorStatus]:
        return [self.manager.status(c, now_s) for c in self.manager.corridors]

    def status(self, corridor_id: str, now_s: float) -> CorridorStatus:
        return self.manager.status(corridor_id, now_s)

    def corridor(self, corridor_id: str) -> Corridor | None:
        """A corridor this process runs or ran (``None`` for any other id)."""
        return self.manager.corridors.get(corridor_id)

    def corridor_of(self, vehicle: str) -> str | None:
        """The id of ``vehicle``'s corridor, ``None`` when it has none."""
        return self.manager.by_vehicle.get(vehicle)

    def active(self, requester: str | None = None) -> int:
        """Corridors not ended yet, all or only ``requester``'s (whose limit it counts)."""
        return sum(
            1
            for c in self.manager.corridors.values()
            if c.state not in TERMINAL and (requester is None or c.requester == requester)
        )

    def online(self) -> int:
        """Intersections whose edge said it is online (its retained status)."""
        return sum(1 for s in self.seen.values() if s.presence is Presence.ONLINE)

    def approaches(self) -> list[tuple[str, str, int]]:
        """(approach, intersection, link) of every approach: where in ``queue_veh`` its
        queue is."""
        state = self.state
        return [(a, state.approach_node[a], link) for a, link in state.approach_link.items()]

    def queue_veh(self, now_s: float) -> NDArray[np.float64]:
        """Every link's queue now, as the corridors use them (telemetry, or the stale
        fallback)."""
        return self.state.queues(now_s).queue_veh
