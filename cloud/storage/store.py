"""The seam between storage and the rest of the cloud: ``TelemetryStore`` is what the service,
its API and the writer talk to, so the real store (``postgres``) and the fake beside it for other
components' tests (``memory``) answer the same calls with the same semantics.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

from citybrain.cloud.alarms import Alarm
from citybrain.cloud.operations import HistoryQuery
from citybrain.cloud.storage.records import (
    AckReceived,
    AuditRecord,
    OperatorAction,
    PlanRecord,
    PlanSent,
    QueueMinute,
    Received,
    Reservation,
    ReservationsSet,
)
from citybrain.models.messages import CorridorStatus, PlanAck, SignalPlan


class TelemetryStore(abc.ABC):
    """What the cloud service and its API need from storage. All times are epoch seconds."""

    flavor: str

    @abc.abstractmethod
    async def write_telemetry(self, batch: Sequence[Received]) -> int:
        """Store the messages; return how many were new (a redelivered one is stored once)."""

    @abc.abstractmethod
    async def record(self, records: Sequence[AuditRecord]) -> None:
        """Store plans sent, acks, corridor states, reservations and operators' actions, all or
        none, idempotently: a plan, an ack or an action stored twice is kept once; an older
        corridor state does not replace a newer one."""

    async def record_plan(self, plan: SignalPlan, sent_at: float) -> None:
        await self.record((PlanSent(plan, sent_at),))

    async def record_ack(self, ack: PlanAck, received_at: float) -> None:
        await self.record((AckReceived(ack, received_at),))

    async def record_corridor(self, status: CorridorStatus) -> None:
        await self.record((status,))

    async def record_reservations(self, corridor_id: str, rows: Iterable[Reservation]) -> None:
        await self.record((ReservationsSet(corridor_id, tuple(rows)),))

    @abc.abstractmethod
    async def count_telemetry(self) -> int:
        """Messages stored (not approach rows)."""

    @abc.abstractmethod
    async def queue_per_minute(
        self, intersection: str, since: float, until: float
    ) -> list[QueueMinute]:
        """Per approach and minute, for the minutes starting in [since, until), by minute then
        approach."""

    @abc.abstractmethod
    async def plan_audit(self, corridor_id: str) -> list[PlanRecord]:
        """Every plan sent for the corridor, in the order sent, each with its acks."""

    @abc.abstractmethod
    async def corridor(self, corridor_id: str) -> CorridorStatus | None:
        """The corridor's latest state, or None if it was never recorded."""

    @abc.abstractmethod
    async def corridor_history(self, query: HistoryQuery) -> list[CorridorStatus]:
        """Up to ``query.limit + 1`` corridors, newest first (the extra one says a next page
        exists)."""

    @abc.abstractmethod
    async def alarms(self) -> list[Alarm]:
        """Every alarm stored, newest first."""

    @abc.abstractmethod
    async def operator_actions(self, corridor_id: str) -> list[OperatorAction]:
        """Who requested, cancelled or pre-empted the corridor, oldest first."""

    @abc.abstractmethod
    async def reservations(self, corridor_id: str) -> list[Reservation]:
        """The corridor's current reservations, by opening time."""

    @abc.abstractmethod
    async def close(self) -> None: ...
