"""The store in dictionaries, for tests of other components (the service, the API, alarms):
they get the real store's semantics (a redelivery kept once, an older corridor state not
replacing a newer one, an alarm's first clearing and acknowledgement kept) and an outage at the
flip of a flag, without a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from citybrain.cloud.alarms import Alarm
from citybrain.cloud.operations import HistoryQuery
from citybrain.cloud.storage.errors import StorageUnavailable
from citybrain.cloud.storage.records import (
    MINUTE_S,
    AckReceived,
    ActionKind,
    AuditRecord,
    OperatorAction,
    PlanRecord,
    PlanSent,
    QueueMinute,
    Received,
    Reservation,
    ReservationsSet,
    check_records,
    check_storable,
    minute_bounds,
)
from citybrain.cloud.storage.store import TelemetryStore
from citybrain.models.messages import CorridorStatus


def _merged(known: Alarm | None, update: Alarm) -> Alarm:
    """An alarm's latest record, keeping the first clearing and the first acknowledgement
    (records may arrive out of order): what the database's upsert does too."""
    if known is None:
        return update
    return msgspec.structs.replace(
        update,
        cleared_at=known.cleared_at if known.cleared_at is not None else update.cleared_at,
        acked_by=known.acked_by if known.acked_by is not None else update.acked_by,
        acked_at=known.acked_at if known.acked_at is not None else update.acked_at,
        acked_time=known.acked_time if known.acked_time is not None else update.acked_time,
    )


class MemoryStore(TelemetryStore):
    """The store in dictionaries, with the same semantics, for tests of other components.
    Set ``available`` to False to make every call raise ``StorageUnavailable`` (an outage)."""

    flavor = "memory"

    def __init__(self) -> None:
        self.available = True
        self.telemetry: dict[tuple[str, int], Received] = {}
        self.plans: dict[tuple[str, str], PlanSent] = {}
        self.acks: dict[tuple[str, str, str, float], AckReceived] = {}
        self.corridors: dict[str, CorridorStatus] = {}
        self._reservations: dict[str, tuple[Reservation, ...]] = {}
        self.actions: dict[tuple[str, ActionKind, float], OperatorAction] = {}
        self._alarms: dict[str, Alarm] = {}

    def _up(self) -> None:
        if not self.available:
            raise StorageUnavailable("the memory store is set unavailable")

    async def write_telemetry(self, batch: Sequence[Received]) -> int:
        self._up()
        for message, received_at in batch:
            check_storable(message, received_at)
        before = len(self.telemetry)
        for message, received_at in batch:
            self.telemetry.setdefault((message.intersection, message.seq), (message, received_at))
        return len(self.telemetry) - before

    async def record(self, records: Sequence[AuditRecord]) -> None:
        self._up()
        check_records(records)
        for item in records:
            if isinstance(item, PlanSent):
                self.plans.setdefault((item.plan.intersection, item.plan.plan_id), item)
            elif isinstance(item, AckReceived):
                ack = item.ack
                self.acks.setdefault((ack.intersection, ack.plan_id, ack.status, ack.at), item)
            elif isinstance(item, ReservationsSet):
                self._reservations[item.corridor_id] = item.rows
            elif isinstance(item, OperatorAction):
                self.actions.setdefault((item.corridor_id, item.kind, item.at), item)
            elif isinstance(item, Alarm):
                self._alarms[item.alarm_id] = _merged(self._alarms.get(item.alarm_id), item)
            else:
                known = self.corridors.get(item.corridor_id)
                if known is None or known.updated_at <= item.updated_at:
                    self.corridors[item.corridor_id] = item

    async def count_telemetry(self) -> int:
        self._up()
        return len(self.telemetry)

    async def queue_per_minute(
        self, intersection: str, since: float, until: float
    ) -> list[QueueMinute]:
        self._up()
        start, end = minute_bounds(since, until)
        buckets: dict[tuple[float, str], list[float]] = {}
        for message, _ in self.telemetry.values():
            if message.intersection == intersection and start <= message.controller_time < end:
                minute = math.floor(message.controller_time / MINUTE_S) * MINUTE_S
                for state in message.approaches:
                    buckets.setdefault((minute, state.approach), []).append(state.queue_veh)
        return [
            QueueMinute(minute, approach, sum(q) / len(q), max(q), len(q))
            for (minute, approach), q in sorted(buckets.items())
        ]

    async def plan_audit(self, corridor_id: str) -> list[PlanRecord]:
        self._up()
        acks: dict[tuple[str, str], list[AckReceived]] = {}
        for item in sorted(self.acks.values(), key=lambda a: (a.received_at, a.ack.at)):
            acks.setdefault((item.ack.intersection, item.ack.plan_id), []).append(item)
        sent = sorted(
            (p for p in self.plans.values() if p.plan.corridor_id == corridor_id),
            key=lambda p: (p.sent_at, p.plan.intersection, p.plan.seq),
        )
        return [
            PlanRecord(
                p.plan, p.sent_at, tuple(acks.get((p.plan.intersection, p.plan.plan_id), []))
            )
            for p in sent
        ]

    async def corridor(self, corridor_id: str) -> CorridorStatus | None:
        self._up()
        return self.corridors.get(corridor_id)

    async def corridor_history(self, query: HistoryQuery) -> list[CorridorStatus]:
        self._up()
        found = sorted(
            (s for s in self.corridors.values() if query.admits(s)),
            key=lambda s: (s.updated_at, s.corridor_id),
            reverse=True,
        )
        return found[: query.limit + 1]

    async def alarms(self) -> list[Alarm]:
        self._up()
        return sorted(self._alarms.values(), key=lambda a: (a.raised_at, a.alarm_id), reverse=True)

    async def operator_actions(self, corridor_id: str) -> list[OperatorAction]:
        self._up()
        found = (a for a in self.actions.values() if a.corridor_id == corridor_id)
        return sorted(found, key=lambda a: a.at)

    async def reservations(self, corridor_id: str) -> list[Reservation]:
        self._up()
        rows = self._reservations.get(corridor_id, ())
        return sorted(rows, key=lambda r: (r.open_at, r.intersection, r.signal_group))

    async def close(self) -> None:
        return None
