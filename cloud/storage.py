"""The cloud's storage: telemetry, corridors, every plan sent with its acks, reservations,
who asked for or cancelled each corridor, and alarms with who acknowledged them.

``TelemetryStore`` is the seam the service and the API talk to; ``PostgresStore`` is the real one
(psycopg 3, async, pooled) and ``MemoryStore`` the fake beside it for other components' tests.
``TelemetryWriter`` sits between the service and a store: it batches telemetry, writes it with
COPY, and while the database is away keeps a bounded backlog in memory and flushes it in order
when the database is back, so a restart of the database loses nothing within the bound.

Errors: ``StorageUnavailable`` is recoverable (the database is unreachable, restarting or
failing over; try again later); ``StorageError`` is not (the database refused what was asked: a
bug or a broken schema), nor is ``migrations.SchemaError`` at open. Bad values are refused with
``ValidationError`` before they reach the database.

Delivery is at least once all the way (MQTT QoS 1, the edge's buffer, retries here after a
commit whose answer was lost), so a message is stored once per (intersection, seq): telemetry is
copied into per-connection staging tables and moved with ``INSERT ... ON CONFLICT DO NOTHING``,
and an approach row goes in only with its message.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime
import enum
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from citybrain.cloud.alarms import Alarm, AlarmKind, Severity, rfc3339
from citybrain.cloud.migrations import Flavor, migrate
from citybrain.cloud.operations import HistoryQuery
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.messages import (
    AckStatus,
    CorridorStatus,
    PlanAck,
    SignalPlan,
    Telemetry,
)
from citybrain.models.retry import Backoff

log = logging.getLogger(__name__)

MAX_TIMESTAMP_S: Final = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the latest time stored (a day partition needs a four-digit year)."""
DAY_S: Final = 86_400
MINUTE_S: Final = 60
PARTITION_LOCK: Final = 0x6369_7479_6272_6E02
"""``pg_advisory_xact_lock`` key taken while creating or dropping day partitions."""
PARTITIONED: Final = ("telemetry", "approach_samples")

Connection = psycopg.AsyncConnection[TupleRow]
Received = tuple[Telemetry, float]
"""A telemetry message and when the cloud received it (wall-clock epoch seconds)."""


class StorageUnavailable(CitybrainError, ConnectionError):  # noqa: N818 - reads as a state
    """The database cannot be reached now (down, restarting, failing over): retry later."""


class StorageError(CitybrainError, RuntimeError):
    """The database refused what was asked, or the writer stopped on such a refusal: retrying
    the same thing will not help."""


def _check_time(field: str, value: float) -> None:
    check_number(field, value, ge=0.0, le=MAX_TIMESTAMP_S)


def check_storable(message: Telemetry, received_at: float) -> None:
    """Refuse what the Struct allows but a timestamp column cannot hold."""
    _check_time("controller_time", message.controller_time)
    _check_time("received_at", received_at)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A corridor holds ``signal_group`` at ``intersection`` green from ``open_at`` to
    ``close_at`` (controller epoch seconds)."""

    intersection: str
    signal_group: str
    open_at: float
    close_at: float

    def __post_init__(self) -> None:
        check_id("intersection", self.intersection)
        check_id("signal_group", self.signal_group)
        _check_time("open_at", self.open_at)
        _check_time("close_at", self.close_at)
        if self.close_at <= self.open_at:
            raise ValidationError("close_at", "a reservation must close after it opens")


# The audit records check the times that go into timestamp columns, which the wire Structs
# bound only from below: a record that cannot be stored is refused when it is made (a corridor
# status when it is queued or recorded), not when a writer meets it.


@dataclass(frozen=True, slots=True)
class PlanSent:
    plan: SignalPlan
    sent_at: float

    def __post_init__(self) -> None:
        _check_time("sent_at", self.sent_at)
        _check_time("valid_from", self.plan.valid_from)
        _check_time("valid_until", self.plan.valid_until)


@dataclass(frozen=True, slots=True)
class AckReceived:
    ack: PlanAck
    received_at: float

    def __post_init__(self) -> None:
        _check_time("received_at", self.received_at)
        _check_time("at", self.ack.at)


@dataclass(frozen=True, slots=True)
class ReservationsSet:
    """The corridor's reservations now: they replace whatever it held before."""

    corridor_id: str
    rows: tuple[Reservation, ...]

    def __post_init__(self) -> None:
        check_id("corridor_id", self.corridor_id)


class ActionKind(enum.StrEnum):
    REQUEST = "request"
    CANCEL = "cancel"
    PREEMPT = "preempt"
    """Cancelled to make room for the actor's higher-priority request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorAction:
    """Who did what to a corridor, and when (wall-clock epoch seconds): the corridor states
    say what happened, this says on whose word."""

    at: float
    actor: str
    """The authenticated user of the API."""
    kind: ActionKind
    corridor_id: str
    vehicle: str
    priority: int
    incident: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_time("at", self.at)
        check_id("actor", self.actor)
        check_id("corridor_id", self.corridor_id)
        check_id("vehicle", self.vehicle)
        if self.incident is not None:
            check_id("incident", self.incident)


AuditRecord = PlanSent | AckReceived | CorridorStatus | ReservationsSet | OperatorAction | Alarm


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


def check_records(records: Iterable[AuditRecord]) -> None:
    """The one check a record's constructor cannot make: a corridor status's time."""
    for item in records:
        if isinstance(item, CorridorStatus):
            _check_time("updated_at", item.updated_at)


@dataclass(frozen=True, slots=True)
class QueueMinute:
    """Queue statistics of one approach over the minute starting at ``minute`` (epoch s)."""

    minute: float
    approach: str
    avg_queue: float
    max_queue: float
    samples: int


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan as sent, with every ack received for it, oldest first."""

    plan: SignalPlan
    sent_at: float
    acks: tuple[AckReceived, ...]


def minute_bounds(since: float, until: float) -> tuple[float, float]:
    """The time range whose samples fall in minutes starting in [since, until): both ends
    rounded up to a whole minute, so every flavor answers for the same buckets."""
    _check_time("since", since)
    _check_time("until", until)
    return math.ceil(since / MINUTE_S) * MINUTE_S, math.ceil(until / MINUTE_S) * MINUTE_S


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


# -- the fake ----------------------------------------------------------------------------------


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


# -- PostgreSQL --------------------------------------------------------------------------------

# Staging tables live per connection (created when the pool opens it) and empty themselves at
# commit. COPY into them is binary; the move into the real tables converts epoch seconds with
# to_timestamp and routes rows to partitions or chunks.
_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (
    ts float8, intersection text, seq int8, mode text, plan_id text, received_at float8
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_approach (
    intersection text, seq int8, approach text, queue_veh float4, occupancy float4, flow_vph float4
) ON COMMIT DELETE ROWS;
"""
_COPY_TELEMETRY = "COPY stage_telemetry FROM STDIN (FORMAT BINARY)"
_TELEMETRY_TYPES: Final = ["float8", "text", "int8", "text", "text", "float8"]
_COPY_APPROACH = "COPY stage_approach FROM STDIN (FORMAT BINARY)"
_APPROACH_TYPES: Final = ["text", "int8", "text", "float4", "float4", "float4"]
_MOVE = """
WITH new AS (
    INSERT INTO telemetry (ts, intersection, seq, mode, plan_id, received_at)
    SELECT to_timestamp(ts), intersection, seq, mode, plan_id, to_timestamp(received_at)
    FROM stage_telemetry
    ON CONFLICT DO NOTHING
    RETURNING ts, intersection, seq
), samples AS (
    INSERT INTO approach_samples (ts, intersection, approach, queue_veh, occupancy, flow_vph)
    SELECT new.ts, a.intersection, a.approach, a.queue_veh, a.occupancy, a.flow_vph
    FROM stage_approach a JOIN new USING (intersection, seq)
)
SELECT count(*) FROM new
"""
_QUEUES_POSTGRESQL = """
SELECT extract(epoch FROM date_bin('1 minute', ts, TIMESTAMPTZ 'epoch'))::float8 AS minute,
       approach, avg(queue_veh)::float8, max(queue_veh)::float8, count(*)
FROM approach_samples
WHERE intersection = %s AND ts >= to_timestamp(%s) AND ts < to_timestamp(%s)
GROUP BY minute, approach
ORDER BY minute, approach
"""
_QUEUES_TIMESCALEDB = """
SELECT extract(epoch FROM minute)::float8, approach, avg_queue::float8, max_queue::float8,
       samples
FROM approach_queue_1m
WHERE intersection = %s AND minute >= to_timestamp(%s) AND minute < to_timestamp(%s)
ORDER BY minute, approach
"""
_INSERT_PLAN = """
INSERT INTO plans (intersection, plan_id, seq, corridor_id, kind, valid_from, valid_until,
                   sent_at, body)
VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), to_timestamp(%s), %s::json)
ON CONFLICT DO NOTHING
"""
_INSERT_ACK = """
INSERT INTO plan_acks (intersection, plan_id, seq, status, at, reason_code, reason, received_at)
VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s, to_timestamp(%s))
ON CONFLICT DO NOTHING
"""
_UPSERT_CORRIDOR = """
INSERT INTO corridors (corridor_id, vehicle, state, priority, updated_at, status)
VALUES (%s, %s, %s, %s, to_timestamp(%s), %s::json)
ON CONFLICT (corridor_id) DO UPDATE
SET vehicle = EXCLUDED.vehicle, state = EXCLUDED.state, priority = EXCLUDED.priority,
    updated_at = EXCLUDED.updated_at, status = EXCLUDED.status
WHERE corridors.updated_at <= EXCLUDED.updated_at
"""
_UPSERT_ALARM = """
INSERT INTO alarms (alarm_id, kind, severity, subject, message, raised_at, cleared_at,
                    acked_by, acked_at)
VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, to_timestamp(%s))
ON CONFLICT (alarm_id) DO UPDATE
SET cleared_at = coalesce(alarms.cleared_at, EXCLUDED.cleared_at),
    acked_by = coalesce(alarms.acked_by, EXCLUDED.acked_by),
    acked_at = coalesce(alarms.acked_at, EXCLUDED.acked_at)
"""
_INSERT_ACTION = """
INSERT INTO operator_actions (at, actor, kind, corridor_id, vehicle, priority, incident, reason)
VALUES (to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
_INSERT_RESERVATION = """
INSERT INTO reservations (corridor_id, intersection, signal_group, open_at, close_at)
VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s))
"""
_ENCODER = msgspec.json.Encoder()
_PLAN_DECODER = msgspec.json.Decoder(SignalPlan)
_CORRIDOR_DECODER = msgspec.json.Decoder(CorridorStatus)


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL, which free-text wire fields allow: shown as U+FFFD."""
    return None if value is None else value.replace("\x00", "\ufffd")


def _day_name(table: str, day: int) -> str:
    date = datetime.datetime.fromtimestamp(day * DAY_S, datetime.UTC)
    return f"{table}_{date:%Y%m%d}"


def _staged(
    batch: Sequence[Received],
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], set[int]]:
    """Rows for the two staging tables and the UTC days they fall on; a message repeated
    within the batch is kept once, so its approaches are not joined twice."""
    messages: list[tuple[object, ...]] = []
    approaches: list[tuple[object, ...]] = []
    days: set[int] = set()
    seen: set[tuple[str, int]] = set()
    for message, received_at in batch:
        check_storable(message, received_at)
        key = (message.intersection, message.seq)
        if key in seen:
            continue
        seen.add(key)
        t = message.controller_time
        days.add(int(t // DAY_S))
        messages.append((t, key[0], key[1], message.mode.value, message.plan_id, received_at))
        for a in message.approaches:
            approaches.append((key[0], key[1], a.approach, a.queue_veh, a.occupancy, a.flow_vph))
    return messages, approaches, days


@dataclass(frozen=True, slots=True)
class StoreSettings:
    min_connections: int = 1
    max_connections: int = 4
    timeout_s: float = 5.0
    """How long a call waits for a connection before it raises ``StorageUnavailable``."""
    retention_days: int | None = None
    """Drop telemetry older than this (by the server's clock); None keeps everything. Leave it
    None for simulations whose clock starts at 0, or their data would expire at once."""
    compress_after_days: int = 7
    """TimescaleDB only: compress chunks older than this."""
    maintain_every_s: float = 3600.0
    """Plain PostgreSQL only: how often day partitions are created ahead and expired."""

    def __post_init__(self) -> None:
        check_count("min_connections", self.min_connections, ge=1, le=100)
        check_count("max_connections", self.max_connections, ge=self.min_connections, le=100)
        check_number("timeout_s", self.timeout_s, gt=0.0, le=300.0)
        if self.retention_days is not None:
            check_count("retention_days", self.retention_days, ge=1, le=100_000)
        check_count("compress_after_days", self.compress_after_days, ge=1, le=100_000)
        check_number("maintain_every_s", self.maintain_every_s, gt=0.0)


async def _configure(conn: Connection) -> None:
    await conn.execute(_STAGING)


class PostgresStore(TelemetryStore):
    """The store on PostgreSQL or TimescaleDB (``flavor``); create it with ``open``."""

    def __init__(
        self, pool: AsyncConnectionPool[Connection], flavor: Flavor, settings: StoreSettings
    ) -> None:
        self.flavor: Flavor = flavor
        self.settings = settings
        self._pool = pool
        self._days: set[int] = set()
        """UTC days (epoch s // 86400) known to have partitions, plain PostgreSQL only."""
        self._maintenance: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, dsn: str, settings: StoreSettings | None = None, *, timescale: bool | None = None
    ) -> PostgresStore:
        """Connect, apply migrations and policies, and start maintenance. ``timescale``: None
        uses TimescaleDB when the server has it, True requires it, False never uses it."""
        settings = settings or StoreSettings()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn,
            min_size=settings.min_connections,
            max_size=settings.max_connections,
            timeout=settings.timeout_s,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, math.ceil(settings.timeout_s)),
                "application_name": "citybrain-cloud",
            },
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
            name="citybrain-storage",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=settings.timeout_s)
            async with pool.connection() as conn:
                flavor = await migrate(conn, timescale=timescale)
                if flavor is Flavor.TIMESCALEDB:
                    await _timescale_policies(conn, settings)
        except psycopg.OperationalError as error:
            await pool.close()
            raise StorageUnavailable(f"cannot open the database: {error}") from error
        except psycopg.Error as error:
            await pool.close()
            raise StorageError(f"cannot set up the database: {error}") from error
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, flavor, settings)
        if flavor is Flavor.POSTGRESQL:
            try:
                await store.maintain(time.time())
            except BaseException:
                await pool.close()
                raise
            store._maintenance = asyncio.create_task(store._maintain_forever())
        log.info("storage open: %s", flavor)
        return store

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; psycopg's errors become ours, recoverable or not."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as error:
            raise StorageUnavailable(str(error)) from error
        except psycopg.Error as error:
            raise StorageError(str(error)) from error

    async def write_telemetry(self, batch: Sequence[Received]) -> int:
        messages, approaches, days = _staged(batch)
        if not messages:
            return 0
        if self.flavor is Flavor.POSTGRESQL:
            await self._ensure_partitions(days)
        try:
            return await self._copy(messages, approaches)
        except StorageError as error:
            # a partition dropped behind our back (retention run by another instance)
            if not isinstance(error.__cause__, psycopg.errors.CheckViolation):
                raise
        self._days = await self._existing_days()
        await self._ensure_partitions(days)
        return await self._copy(messages, approaches)

    async def _copy(
        self, messages: list[tuple[object, ...]], approaches: list[tuple[object, ...]]
    ) -> int:
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            async with cursor.copy(_COPY_TELEMETRY) as copy:
                copy.set_types(_TELEMETRY_TYPES)
                for row in messages:
                    await copy.write_row(row)
            if approaches:
                async with cursor.copy(_COPY_APPROACH) as copy:
                    copy.set_types(_APPROACH_TYPES)
                    for row in approaches:
                        await copy.write_row(row)
            await cursor.execute(_MOVE)
            stored = await cursor.fetchone()
        return 0 if stored is None else int(stored[0])

    async def record(self, records: Sequence[AuditRecord]) -> None:
        check_records(records)
        if not records:
            return
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for item in records:
                if isinstance(item, PlanSent):
                    plan = item.plan
                    await cursor.execute(
                        _INSERT_PLAN,
                        (
                            plan.intersection,
                            plan.plan_id,
                            plan.seq,
                            plan.corridor_id,
                            plan.kind.value,
                            plan.valid_from,
                            plan.valid_until,
                            item.sent_at,
                            _ENCODER.encode(plan).decode(),
                        ),
                    )
                elif isinstance(item, AckReceived):
                    ack = item.ack
                    await cursor.execute(
                        _INSERT_ACK,
                        (
                            ack.intersection,
                            ack.plan_id,
                            ack.seq,
                            ack.status.value,
                            ack.at,
                            ack.reason_code,
                            _text(ack.reason),
                            item.received_at,
                        ),
                    )
                elif isinstance(item, ReservationsSet):
                    await cursor.execute(
                        "DELETE FROM reservations WHERE corridor_id = %s", (item.corridor_id,)
                    )
                    if item.rows:
                        await cursor.executemany(
                            _INSERT_RESERVATION,
                            [
                                (
                                    item.corridor_id,
                                    r.intersection,
                                    r.signal_group,
                                    r.open_at,
                                    r.close_at,
                                )
                                for r in item.rows
                            ],
                        )
                elif isinstance(item, Alarm):
                    await cursor.execute(
                        _UPSERT_ALARM,
                        (
                            item.alarm_id,
                            item.kind.value,
                            item.severity.value,
                            item.subject,
                            _text(item.message),
                            item.raised_at,
                            item.cleared_at,
                            item.acked_by,
                            item.acked_at,
                        ),
                    )
                elif isinstance(item, OperatorAction):
                    await cursor.execute(
                        _INSERT_ACTION,
                        (
                            item.at,
                            item.actor,
                            item.kind.value,
                            item.corridor_id,
                            item.vehicle,
                            item.priority,
                            item.incident,
                            _text(item.reason),
                        ),
                    )
                else:
                    await cursor.execute(
                        _UPSERT_CORRIDOR,
                        (
                            item.corridor_id,
                            item.vehicle,
                            item.state.value,
                            item.priority,
                            item.updated_at,
                            _ENCODER.encode(item).decode(),
                        ),
                    )

    async def _fetch(self, query: str, params: Sequence[object] = ()) -> list[TupleRow]:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def count_telemetry(self) -> int:
        rows = await self._fetch("SELECT count(*) FROM telemetry")
        return int(rows[0][0])

    async def queue_per_minute(
        self, intersection: str, since: float, until: float
    ) -> list[QueueMinute]:
        start, end = minute_bounds(since, until)
        query = _QUEUES_TIMESCALEDB if self.flavor is Flavor.TIMESCALEDB else _QUEUES_POSTGRESQL
        rows = await self._fetch(query, (intersection, start, end))
        return [
            QueueMinute(float(m), str(a), float(av), float(mx), int(n)) for m, a, av, mx, n in rows
        ]

    async def plan_audit(self, corridor_id: str) -> list[PlanRecord]:
        plans = await self._fetch(
            "SELECT body::text, extract(epoch FROM sent_at)::float8 FROM plans"
            " WHERE corridor_id = %s ORDER BY sent_at, intersection, seq",
            (corridor_id,),
        )
        acks = await self._fetch(
            "SELECT a.intersection, a.plan_id, a.seq, a.status, extract(epoch FROM a.at)::float8,"
            " a.reason_code, a.reason, extract(epoch FROM a.received_at)::float8"
            " FROM plan_acks a JOIN plans p USING (intersection, plan_id)"
            " WHERE p.corridor_id = %s ORDER BY a.received_at, a.at",
            (corridor_id,),
        )
        by_plan: dict[tuple[str, str], list[AckReceived]] = {}
        for node, plan_id, seq, status, at, code, reason, received in acks:
            ack = PlanAck(
                plan_id=plan_id,
                intersection=node,
                seq=seq,
                status=AckStatus(status),
                at=at,
                reason_code=code,
                reason=reason,
            )
            by_plan.setdefault((node, plan_id), []).append(AckReceived(ack, received))
        records = []
        for body, sent_at in plans:
            plan = _PLAN_DECODER.decode(body)
            acks_of = by_plan.get((plan.intersection, plan.plan_id), [])
            records.append(PlanRecord(plan, float(sent_at), tuple(acks_of)))
        return records

    async def corridor(self, corridor_id: str) -> CorridorStatus | None:
        rows = await self._fetch(
            "SELECT status::text FROM corridors WHERE corridor_id = %s", (corridor_id,)
        )
        return _CORRIDOR_DECODER.decode(rows[0][0]) if rows else None

    async def corridor_history(self, query: HistoryQuery) -> list[CorridorStatus]:
        where: list[sql.Composable] = []
        params: list[object] = []
        if query.state is not None:
            where.append(sql.SQL("state = %s"))
            params.append(query.state.value)
        if query.vehicle is not None:
            where.append(sql.SQL("vehicle = %s"))
            params.append(query.vehicle)
        if query.since is not None:
            where.append(sql.SQL("updated_at >= to_timestamp(%s)"))
            params.append(query.since)
        if query.until is not None:
            where.append(sql.SQL("updated_at < to_timestamp(%s)"))
            params.append(query.until)
        if query.after is not None:
            where.append(sql.SQL("(updated_at, corridor_id) < (to_timestamp(%s), %s)"))
            params.extend(query.after)
        condition = sql.SQL(" AND ").join(where) if where else sql.SQL("true")
        statement = sql.SQL(
            "SELECT status::text FROM corridors WHERE {} "
            "ORDER BY updated_at DESC, corridor_id DESC LIMIT %s"
        ).format(condition)
        params.append(query.limit + 1)
        async with self._connection() as conn:
            cursor = await conn.execute(statement, params)
            rows = await cursor.fetchall()
        return [_CORRIDOR_DECODER.decode(row[0]) for row in rows]

    async def alarms(self) -> list[Alarm]:
        rows = await self._fetch(
            "SELECT alarm_id, kind, severity, subject, message,"
            " extract(epoch FROM raised_at)::float8, extract(epoch FROM cleared_at)::float8,"
            " acked_by, extract(epoch FROM acked_at)::float8"
            " FROM alarms ORDER BY raised_at DESC, alarm_id DESC"
        )
        return [
            Alarm(
                alarm_id=alarm_id, kind=AlarmKind(kind), severity=Severity(severity),
                subject=subject, message=message, raised_at=raised, raised_time=rfc3339(raised),
                cleared_at=cleared, acked_by=by, acked_at=acked,
                acked_time=None if acked is None else rfc3339(acked),
            )
            for alarm_id, kind, severity, subject, message, raised, cleared, by, acked in rows
        ]  # fmt: skip

    async def operator_actions(self, corridor_id: str) -> list[OperatorAction]:
        rows = await self._fetch(
            "SELECT extract(epoch FROM at)::float8, actor, kind, vehicle, priority, incident,"
            " reason FROM operator_actions WHERE corridor_id = %s ORDER BY at",
            (corridor_id,),
        )
        return [
            OperatorAction(
                at=at,
                actor=actor,
                kind=ActionKind(kind),
                corridor_id=corridor_id,
                vehicle=vehicle,
                priority=priority,
                incident=incident,
                reason=reason,
            )
            for at, actor, kind, vehicle, priority, incident, reason in rows
        ]

    async def reservations(self, corridor_id: str) -> list[Reservation]:
        rows = await self._fetch(
            "SELECT intersection, signal_group, extract(epoch FROM open_at)::float8,"
            " extract(epoch FROM close_at)::float8 FROM reservations WHERE corridor_id = %s"
            " ORDER BY open_at, intersection, signal_group",
            (corridor_id,),
        )
        return [Reservation(str(n), str(g), float(o), float(c)) for n, g, o, c in rows]

    # -- day partitions (plain PostgreSQL) --

    async def _existing_days(self) -> set[int]:
        """Days for which both tables have a partition, from the catalog."""
        rows = await self._fetch(
            "SELECT p.relname, c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE p.relname = ANY(%s)",
            (list(PARTITIONED),),
        )
        found: dict[str, set[int]] = {table: set() for table in PARTITIONED}
        for parent, child in rows:
            stamp = str(child).removeprefix(f"{parent}_")
            with contextlib.suppress(ValueError):
                date = datetime.datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=datetime.UTC)
                found[str(parent)].add(int(date.timestamp()) // DAY_S)
        return set.intersection(*found.values())

    async def _ensure_partitions(self, days: set[int]) -> None:
        missing = days - self._days
        if not missing:
            return
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for day in sorted(missing):
                start = datetime.datetime.fromtimestamp(day * DAY_S, datetime.UTC)
                end = start + datetime.timedelta(days=1)
                for table in PARTITIONED:
                    await conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {}"
                            " FOR VALUES FROM ({}) TO ({})"
                        ).format(
                            sql.Identifier(_day_name(table, day)),
                            sql.Identifier(table),
                            sql.Literal(start),
                            sql.Literal(end),
                        )
                    )
        self._days |= missing

    async def maintain(self, now: float) -> None:
        """Plain PostgreSQL: create today's and tomorrow's partitions ahead of the rows, and
        drop days wholly older than the retention. (TimescaleDB's own jobs do both.)"""
        if self.flavor is not Flavor.POSTGRESQL:
            return
        self._days = await self._existing_days()
        today = int(now // DAY_S)
        await self._ensure_partitions({today, today + 1})
        if self.settings.retention_days is None:
            return
        cutoff = now - self.settings.retention_days * DAY_S
        expired = sorted(day for day in self._days if (day + 1) * DAY_S <= cutoff)
        if not expired:
            return
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for day in expired:
                for table in PARTITIONED:
                    await conn.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(
                            sql.Identifier(_day_name(table, day))
                        )
                    )
        self._days -= set(expired)
        log.info("dropped %d expired day partitions", len(expired))

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintain_every_s)
            try:
                await self.maintain(time.time())
            except (StorageUnavailable, StorageError) as error:
                log.warning(
                    "partition maintenance failed, next try in %.0f s: %s",
                    self.settings.maintain_every_s,
                    error,
                )

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        await self._pool.close()


async def _timescale_policies(conn: Connection, settings: StoreSettings) -> None:
    """Compression, retention and aggregate refresh, set anew at every start so a changed
    setting takes effect (TimescaleDB keeps an existing policy rather than update it)."""
    async with conn.transaction():
        for table in PARTITIONED:
            await conn.execute(
                "SELECT remove_compression_policy(%s::regclass, if_exists => true)", (table,)
            )
            await conn.execute(
                "SELECT add_compression_policy(%s::regclass,"
                " compress_after => make_interval(days => %s::integer))",
                (table, settings.compress_after_days),
            )
            await conn.execute(
                "SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,)
            )
            if settings.retention_days is not None:
                await conn.execute(
                    "SELECT add_retention_policy(%s::regclass,"
                    " drop_after => make_interval(days => %s::integer))",
                    (table, settings.retention_days),
                )
        # two hours back covers a database outage that long: buffered telemetry flushed late
        # still lands in re-materialized minutes; newer minutes are aggregated at query time
        await conn.execute(
            "SELECT remove_continuous_aggregate_policy('approach_queue_1m', if_exists => true)"
        )
        await conn.execute(
            "SELECT add_continuous_aggregate_policy('approach_queue_1m',"
            " start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute',"
            " schedule_interval => INTERVAL '1 minute')"
        )


# -- the writer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_size: int = 2000
    """Messages per COPY transaction."""
    max_delay_s: float = 0.1
    """A partial batch is written once its oldest message has waited this long."""
    max_pending: int = 500_000
    """Messages and records held at most (waiting and being written); beyond it the oldest
    waiting ones are dropped and counted. At 1,000 intersections x 1 Hz, over 8 minutes."""
    retry_min_s: float = 0.05
    retry_max_s: float = 2.0

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size, ge=1, le=1_000_000)
        check_number("max_delay_s", self.max_delay_s, gt=0.0, le=60.0)
        check_count("max_pending", self.max_pending, ge=self.batch_size)
        check_number("retry_min_s", self.retry_min_s, gt=0.0, le=60.0)
        check_number("retry_max_s", self.retry_max_s, ge=self.retry_min_s, le=600.0)


Pending = Received | AuditRecord


class TelemetryWriter:
    """Batches telemetry (and audit records) into a store, in order, through outages.

    ``put_nowait`` never waits: past ``max_pending`` the oldest waiting item is dropped and
    counted, so a service loop that must keep serving corridors is never held up by the
    database. ``put`` waits for room instead (backpressure), for a producer that can slow down.
    A recoverable failure (``StorageUnavailable``) is retried with jittered exponential backoff
    while new items queue behind the batch; anything else stops the writer, and the next
    ``put``, ``flush`` or ``close`` raises ``StorageError``.
    """

    def __init__(
        self,
        store: TelemetryStore,
        settings: WriterSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or WriterSettings()
        self._store = store
        self._clock = clock
        self._queue: deque[Pending] = deque()
        self._since = 0.0
        """When the oldest waiting item arrived, or the last batch left (monotonic s)."""
        self._in_flight = 0
        self._shedding = 0
        """Items dropped since the last commit (one warning per episode, not per item)."""
        self._accepted = 0
        self._settled = 0
        """Items accepted so far, and of them those committed or dropped."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        """Telemetry messages committed (duplicates included)."""
        self.duplicates = 0
        """Of those, messages the database already had (redeliveries)."""
        self.recorded = 0
        """Audit records committed."""
        self.dropped = 0
        self.retries = 0
        """Writes that found the database away and were tried again."""
        self.available = True
        """False while the last attempt to write found the database away."""
        self.latencies: deque[float] = deque(maxlen=8192)
        """Seconds each recent batch took to commit, for health reports and benchmarks."""

    @property
    def store(self) -> TelemetryStore:
        """Where the writer writes: also where corridor history and alarms are read."""
        return self._store

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def __aenter__(self) -> TelemetryWriter:
        self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _usable(self) -> None:
        if self._failure is not None:
            raise StorageError(f"the writer stopped: {self._failure}") from self._failure
        if self._closing:
            raise StorageError("the writer is closed")

    def put_nowait(self, message: Telemetry, received_at: float | None = None) -> None:
        """Queue a message (received now unless told); never waits, may drop the oldest."""
        self._usable()
        received = self._clock() if received_at is None else received_at
        check_storable(message, received)
        self._append((message, received))

    async def put(self, message: Telemetry, received_at: float | None = None) -> None:
        """Queue a message, waiting first while ``max_pending`` items are held."""
        self._usable()
        received = self._clock() if received_at is None else received_at
        check_storable(message, received)
        while self.pending >= self.settings.max_pending:
            await self._settled_to(self._settled + 1)
            self._usable()
        self._append((message, received))

    def put_record(self, record: AuditRecord) -> None:
        """Queue a plan sent, an ack, a corridor state, reservations or an operator's action;
        never waits."""
        self._usable()
        check_records((record,))
        self._append(record)

    def _append(self, item: Pending) -> None:
        self._queue.append(item)
        self._accepted += 1
        if len(self._queue) == 1:
            self._since = time.monotonic()
            self._kick.set()
        elif len(self._queue) >= self.settings.batch_size:
            self._kick.set()
        if self.pending > self.settings.max_pending:
            self._queue.popleft()
            if not self._shedding:
                log.warning("storage backlog full (%d): dropping the oldest", self.pending)
            self._shedding += 1
            self.dropped += 1
            self._settled += 1
            self._release()

    async def flush(self) -> None:
        """Return once everything queued before the call is committed (or was dropped)."""
        self._usable()
        self._kick.set()
        await self._settled_to(self._accepted)

    async def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then stop. If the database stays away past ``timeout``, the
        rest is lost: counted as dropped and logged."""
        if self.pending:
            self.start()  # never started: what was queued is still written
        task, self._task = self._task, None
        self._closing = True
        self._kick.set()
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                lost = self.pending
                self._queue.clear()
                self._in_flight = 0
                self.dropped += lost
                self._settled += lost
                log.error("storage writer closed with %d items unwritten (database away)", lost)
                self._fail_waiters(StorageUnavailable("the writer closed before writing these"))
        if self._failure is not None:
            raise StorageError(f"the writer stopped: {self._failure}") from self._failure

    # -- waiting on progress --

    async def _settled_to(self, target: int) -> None:
        if self._settled >= target:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    def _release(self) -> None:
        if not self._waiters:
            return
        keep = []
        for target, future in self._waiters:
            if future.done():
                continue
            if self._settled >= target:
                future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def _fail_waiters(self, error: BaseException) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []

    # -- the loop --

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                await self._commit(*batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("storage writer stopped on an error that retrying cannot fix")
            self._failure = error
            self._fail_waiters(StorageError(f"the writer stopped: {error}"))

    async def _next_batch(self) -> tuple[list[Received], list[AuditRecord]] | None:
        """The oldest items of one kind, once a batch is full, the oldest waited
        ``max_delay_s``, or someone flushes; None when closing with nothing left."""
        while not self._queue:
            if self._closing:
                return None
            self._kick.clear()
            await self._kick.wait()
        urgent = self._closing or self._waiters
        wait = self._since + self.settings.max_delay_s - time.monotonic()
        if len(self._queue) < self.settings.batch_size and not urgent and wait > 0:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._kick.wait()
        queue, size = self._queue, self.settings.batch_size
        of_telemetry = isinstance(queue[0], tuple)
        telemetry: list[Received] = []
        records: list[AuditRecord] = []
        while queue and len(telemetry) + len(records) < size:
            item = queue[0]
            if isinstance(item, tuple) != of_telemetry:
                break
            if isinstance(item, tuple):
                telemetry.append(item)
            else:
                records.append(item)
            queue.popleft()
        self._in_flight = len(telemetry) + len(records)
        self._since = time.monotonic()
        return telemetry, records

    async def _commit(self, telemetry: list[Received], records: list[AuditRecord]) -> None:
        backoff = Backoff(first_s=self.settings.retry_min_s, max_s=self.settings.retry_max_s)
        down_since: float | None = None
        while True:
            started = time.perf_counter()
            try:
                if telemetry:
                    new = await self._store.write_telemetry(telemetry)
                    self.written += len(telemetry)
                    self.duplicates += len(telemetry) - new
                else:
                    await self._store.record(records)
                    self.recorded += len(records)
            except StorageUnavailable as error:
                if down_since is None:
                    down_since = time.monotonic()
                    if self.available:
                        log.warning("database unavailable, buffering: %s", error)
                self.available = False
                self.retries += 1
                await backoff.sleep()
                continue
            break
        self.latencies.append(time.perf_counter() - started)
        if self._shedding:
            log.warning("storage backlog: %d items dropped before this commit", self._shedding)
            self._shedding = 0
        self._in_flight = 0
        self._settled += len(telemetry) + len(records)
        if not self.available:
            log.info(
                "database back after %.1f s; %d items still queued",
                time.monotonic() - (down_since or time.monotonic()),
                len(self._queue),
            )
        self.available = True
        self._release()
