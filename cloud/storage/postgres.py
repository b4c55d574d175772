"""The real store, on PostgreSQL or TimescaleDB (psycopg 3, async, pooled): the SQL, the
connection pool and its errors mapped to ours, day partitions on plain PostgreSQL (created ahead
of the rows and expired by retention) and TimescaleDB's compression, retention and aggregate
policies, kept together because they all follow from the schema in ``migrations``.

Delivery is at least once all the way (MQTT QoS 1, the edge's buffer, the writer's retries after
a commit whose answer was lost), so a message is stored once per (intersection, seq): telemetry
is copied into per-connection staging tables and moved with ``INSERT ... ON CONFLICT DO
NOTHING``, and an approach row goes in only with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from citybrain.cloud.alarms import Alarm, AlarmKind, Severity, rfc3339
from citybrain.cloud.migrations import Flavor, migrate
from citybrain.cloud.operations import HistoryQuery
from citybrain.cloud.storage.errors import StorageError, StorageUnavailable
from citybrain.cloud.storage.records import (
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
from citybrain.models.checks import check_count, check_number
from citybrain.models.messages import AckStatus, CorridorStatus, PlanAck, SignalPlan

log = logging.getLogger(__name__)

DAY_S: Final = 86_400
PARTITION_LOCK: Final = 0x6369_7479_6272_6E02
"""``pg_advisory_xact_lock`` key taken while creating or dropping day partitions."""
PARTITIONED: Final = ("telemetry", "approach_samples")

Connection = psycopg.AsyncConnection[TupleRow]


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
