"""How the cloud service answers operators (the ``Operations`` seam of ``cloud/operations.py``,
which the HTTP API and the CLI sit on): corridors requested, cancelled and listed, the network
and an intersection, and the console's map, states, history and alarms.

Apart from ``cloud/operations.py``, which declares what operators may ask and is imported by
the storage (its ``HistoryQuery``): this module uses the storage, so the two cannot be one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from citybrain.cloud.alarms import Alarm, AlarmBook, rfc3339
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore, IntersectionSeen
from citybrain.cloud.corridor import PREEMPTED, TERMINAL, PublishStatus
from citybrain.cloud.operations import (
    FLEET_SHOWN_S,
    ClockReading,
    Conflict,
    CorridorOwner,
    Fleet,
    HistoryPage,
    HistoryQuery,
    IntersectionStates,
    IntersectionView,
    LimitReached,
    NetworkMap,
    NetworkView,
    NotFound,
    Place,
    ServiceUnavailable,
    SignalState,
    VehicleSpot,
    history_page,
    page_of,
)
from citybrain.cloud.outbox import Outbox
from citybrain.cloud.session import Role
from citybrain.cloud.storage import (
    ActionKind,
    OperatorAction,
    StorageError,
    StorageUnavailable,
    TelemetryStore,
)
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorRequest, CorridorStatus, Mode, Presence

if TYPE_CHECKING:
    from citybrain.cloud.service import ServiceSettings


class OperatorEndpoints:
    def __init__(
        self,
        settings: ServiceSettings,
        core: CloudCore,
        *,
        clock: ControllerClock,
        lock: asyncio.Lock,
        connected: asyncio.Event,
        outbox: Outbox,
        alarm_book: AlarmBook,
        counters: Counter[str],
        history: TelemetryStore | None,
    ) -> None:
        """``lock``: held while the core changes, shared with the dispatch and the tick;
        ``connected``: the broker session's (no corridor is granted without a broker)."""
        self.settings = settings
        self.core = core
        self.clock = clock
        self._lock = lock
        self.connected = connected
        self.outbox = outbox
        self.alarm_book = alarm_book
        self.counters = counters
        self.history = history
        """Where corridor history is read from; without storage, the corridors this process
        knows."""
        self._map: NetworkMap | None = None
        self._approach_node: tuple[np.ndarray, np.ndarray] | None = None

    # ---- corridors --------------------------------------------------------------------------

    async def request_corridor(
        self, request: CorridorRequest, *, max_active: int | None = None
    ) -> CorridorStatus:
        if self.settings.role is not Role.LEADER:
            raise ServiceUnavailable("this worker only ingests telemetry")
        if not self.connected.is_set():
            raise ServiceUnavailable("not connected to the broker")
        if not self.clock.known:
            raise ServiceUnavailable("no telemetry yet: controller time unknown")
        async with self._lock:
            now = self.clock.now()
            existing = self.core.corridor_of(request.vehicle)
            if existing is not None:
                raise Conflict(f"{request.vehicle} already has corridor {existing}")
            if max_active is not None:
                self._check_limit(request.requester, max_active)
            try:
                actions = self.core.request(request, now)
            except ValidationError as error:
                raise _operator_error(error) from None
            self.outbox.apply(actions)
            corridor_id = self.core.corridor_of(request.vehicle)
            if corridor_id is None:  # the manager grants or raises: a bug, not a refusal
                raise RuntimeError(f"{request.vehicle} was granted no corridor")
            self._audit_action(ActionKind.REQUEST, request.requester, corridor_id)
            for action in actions:
                status = action.status if isinstance(action, PublishStatus) else None
                if status is not None and status.reason == PREEMPTED:
                    self.counters["corridors_preempted"] += 1
                    self._audit_action(
                        ActionKind.PREEMPT, request.requester, status.corridor_id,
                        reason=f"{PREEMPTED} by {corridor_id}",
                    )  # fmt: skip
            return self.core.status(corridor_id, now)

    def _check_limit(self, requester: str, max_active: int) -> None:
        live = self.core.active(requester)
        if live >= max_active:
            raise LimitReached(f"{requester} has {live} live corridors; {max_active} are allowed")

    def _audit_action(
        self, kind: ActionKind, actor: str, corridor_id: str, *, reason: str | None = None
    ) -> None:
        corridor = self.core.corridor(corridor_id)
        if corridor is None:  # only corridors this process runs are acted on: a bug
            raise RuntimeError(f"no corridor {corridor_id!r} to audit")
        self.outbox.audit_soon(
            OperatorAction(
                at=time.time(), actor=actor, kind=kind, corridor_id=corridor_id,
                vehicle=corridor.vehicle, priority=corridor.priority,
                incident=corridor.incident, reason=reason,
            )
        )  # fmt: skip

    async def corridors(self, *, active_only: bool = False) -> list[CorridorStatus]:
        statuses = self.core.statuses(self.clock.now())
        if active_only:
            statuses = [s for s in statuses if s.state not in TERMINAL]
        return statuses

    async def corridor(self, corridor_id: str) -> CorridorStatus:
        """A corridor this process runs or ran; else, with a store, one stored before (a
        restart does not make yesterday's corridors unknown)."""
        if self.core.corridor(corridor_id) is not None:
            return self.core.status(corridor_id, self.clock.now())
        stored = None
        if self.history is not None:
            try:
                stored = await self.history.corridor(corridor_id)
            except (StorageUnavailable, StorageError) as error:
                raise ServiceUnavailable(f"corridor history unavailable: {error}") from None
        if stored is None:
            raise NotFound(f"no corridor {corridor_id!r}")
        return stored

    async def owner(self, corridor_id: str) -> CorridorOwner:
        """Who may act on a corridor this process runs; one only the store knows ended before
        this start (this process resumes none): a conflict, not an unknown id."""
        corridor = self.core.corridor(corridor_id)
        if corridor is None:
            stored = await self.corridor(corridor_id)  # NotFound when nobody knows it
            raise Conflict(f"corridor {corridor_id} ended before this start ({stored.state})")
        return CorridorOwner(
            corridor_id=corridor_id,
            requester=corridor.requester,
            incident=corridor.incident,
            priority=corridor.priority,
        )

    async def cancel(self, corridor_id: str, *, reason: str, by: str) -> CorridorStatus:
        async with self._lock:
            corridor = self.core.corridor(corridor_id)
            if corridor is None:
                raise NotFound(f"no corridor {corridor_id!r}")
            if corridor.state in TERMINAL:
                raise Conflict(f"corridor {corridor_id} already ended ({corridor.state})")
            now = self.clock.now()
            self.outbox.apply(self.core.cancel(corridor_id, now, reason=reason))
            self._audit_action(ActionKind.CANCEL, by, corridor_id, reason=reason)
            return self.core.status(corridor_id, now)

    # ---- the city ---------------------------------------------------------------------------

    async def network(self) -> NetworkView:
        now = self.clock.now()
        seen = self.core.seen.values()
        stale = self.core.settings.stale_after_s
        return NetworkView(
            now=now,
            intersections=len(self.core.seen),
            online=self.core.online(),
            reporting=sum(
                1
                for s in seen
                if s.telemetry is not None and now - s.telemetry.controller_time <= stale
            ),
            corridors_active=self.core.active(),
        )

    async def intersection(self, intersection: str) -> IntersectionView:
        seen = self.core.seen.get(intersection)
        if seen is None:
            raise NotFound(f"no intersection {intersection!r}")
        now = self.clock.now()
        queue_veh = self.core.queue_veh(now)
        queues = {
            approach: float(queue_veh[link])
            for approach, node, link in self.core.approaches()
            if node == intersection
        }
        telemetry = seen.telemetry
        return IntersectionView(
            intersection=intersection,
            presence=seen.presence,
            mode=seen.mode,
            telemetry_age_s=None
            if telemetry is None
            else max(0.0, now - telemetry.controller_time),
            queues_veh=queues,
            plan_id=None if telemetry is None else telemetry.plan_id,
        )

    # ---- the console: map, states, history, alarms ------------------------------------------

    async def clock_reading(self) -> ClockReading:
        return ClockReading(controller_s=self.clock.now(), wall_s=time.time(), rate=self.clock.rate)

    async def network_map(self) -> NetworkMap:
        if self._map is None:
            network = self.core.network
            index = {node.id: i for i, node in enumerate(network.intersections)}
            roads = {
                tuple(sorted((index[link.from_node], index[link.to_node])))
                for link in network.links
                if link.from_node != link.to_node
            }
            self._map = NetworkMap(
                places=tuple(
                    Place(id=n.id, x_m=n.x_m, y_m=n.y_m, controlled=n.id in self.core.seen)
                    for n in network.intersections
                ),
                roads=tuple(sorted((a, b) for a, b in roads)),
            )
        return self._map

    async def intersection_states(self) -> IntersectionStates:
        """Every intersection in ``core.seen`` order, queues summed over its approaches (one
        pass over the arrays: a city of 10,000 costs a few milliseconds)."""
        now = self.clock.now()
        ids = tuple(self.core.seen)
        if self._approach_node is None:
            position = {node: i for i, node in enumerate(ids)}
            pairs = [
                (position[node], link)
                for _, node, link in self.core.approaches()
                if node in position
            ]
            self._approach_node = (
                np.array([p for p, _ in pairs], dtype=np.intp),
                np.array([link for _, link in pairs], dtype=np.intp),
            )
        nodes, links = self._approach_node
        queues = self.core.queue_veh(now)
        totals = np.bincount(nodes, weights=queues[links], minlength=len(ids))
        stale = self.core.settings.stale_after_s
        return IntersectionStates(
            now=now,
            time=rfc3339(time.time()),
            ids=ids,
            states=tuple(_signal_state(seen, now, stale) for seen in self.core.seen.values()),
            queue_veh=tuple(round(float(q), 1) for q in totals),
            rate=self.clock.rate,
        )

    async def fleet(self) -> Fleet:
        """The vehicles heard from lately, each where its last position puts it."""
        now = self.clock.now()
        spots = []
        for position in reversed(self.core.fleet.values()):
            age = now - position.time
            if age > FLEET_SHOWN_S:
                break  # the rest were heard from earlier still
            link = self.core.network.link_by_id[position.link]
            spots.append(
                VehicleSpot(
                    vehicle=position.vehicle,
                    link=position.link,
                    from_node=link.from_node,
                    to_node=link.to_node,
                    along=min(1.0, position.offset_m / link.length_m) if link.length_m else 1.0,
                    age_s=round(max(0.0, age), 1),
                    corridor_id=self.core.corridor_of(position.vehicle),
                )
            )
        return Fleet(now=now, vehicles=tuple(spots))

    async def corridor_history(self, query: HistoryQuery) -> HistoryPage:
        if self.history is None:
            return history_page(self.core.statuses(self.clock.now()), query)
        try:
            found = await self.history.corridor_history(query)
        except (StorageUnavailable, StorageError) as error:
            raise ServiceUnavailable(f"corridor history unavailable: {error}") from None
        return page_of(found, query.limit)

    async def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        return self.alarm_book.alarms(active_only=active_only)

    async def acknowledge_alarm(self, alarm_id: str, *, by: str) -> Alarm:
        try:
            alarm = self.alarm_book.acknowledge(alarm_id, by=by, at=time.time())
        except KeyError:
            raise NotFound(f"no alarm {alarm_id!r}") from None
        self.outbox.alarm_changed(alarm)
        return alarm


def _signal_state(seen: IntersectionSeen, now: float, stale_after_s: float) -> SignalState:
    if seen.presence is None:
        return SignalState.UNKNOWN
    if seen.presence is Presence.OFFLINE:
        return SignalState.OFFLINE
    telemetry = seen.telemetry
    if telemetry is None or now - telemetry.controller_time > stale_after_s:
        return SignalState.STALE
    return _MODE_STATE[seen.mode or Mode.NORMAL]


_MODE_STATE = {
    Mode.NORMAL: SignalState.NORMAL,
    Mode.PRIORITY: SignalState.PRIORITY,
    Mode.FAIL_SAFE: SignalState.FAIL_SAFE,
}


def _operator_error(error: ValidationError) -> Exception:
    """The manager's refusals, as the operator API's kinds of error."""
    if error.field in ("origin", "destination") and "unknown" in error.reason:
        return NotFound(str(error))
    if error.field == "corridor":
        return ServiceUnavailable(str(error))
    if error.field == "corridor_id":
        return Conflict(str(error))
    return error
