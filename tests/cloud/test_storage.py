"""Storage: migrations, telemetry through COPY, the audit trail, queues per minute, and the
writer's buffering through a database restart.

Tests marked ``db`` run against a real PostgreSQL started by the ``postgres`` fixtures (one server
per session, a fresh database per test; the restart test gets a server of its own). The same
behavioural tests run on ``MemoryStore``, so the fake cannot drift from the real store. The
TimescaleDB flavor is not exercised here: the extension is not installable on this machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import psycopg
import pytest

from citybrain.cloud.alarms import AlarmBook, AlarmKind
from citybrain.cloud.migrations import MIGRATIONS, Flavor, SchemaError
from citybrain.cloud.operations import HistoryQuery, page_of
from citybrain.cloud.storage import (
    AckReceived,
    ActionKind,
    MemoryStore,
    OperatorAction,
    PlanSent,
    PostgresStore,
    QueueMinute,
    Received,
    Reservation,
    StorageError,
    StorageUnavailable,
    StoreSettings,
    TelemetryStore,
    TelemetryWriter,
    WriterSettings,
)
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import (
    AckStatus,
    ApproachState,
    CorridorIntersection,
    CorridorState,
    CorridorStatus,
    GreenWindow,
    Mode,
    PlanAck,
    PlanKind,
    SignalPlan,
    Telemetry,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a whole minute
APPROACHES = ("n", "e", "s", "w")


def telemetry(
    seq: int, t: float, *, intersection: str = "x1", queues: Sequence[float] = (1.0, 2.0, 3.0, 4.0)
) -> Telemetry:
    return Telemetry(
        intersection=intersection,
        controller_time=t,
        seq=seq,
        mode=Mode.NORMAL,
        plan_id=None,
        approaches=tuple(
            ApproachState(
                approach=f"{intersection}-{name}", queue_veh=q, occupancy=0.2, flow_vph=600.0
            )
            for name, q in zip(APPROACHES, queues, strict=False)
        ),
    )


def received(messages: Sequence[Telemetry], at: float = T0 + 0.5) -> list[Received]:
    return [(m, at) for m in messages]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.db)])
def store_dsn(request: pytest.FixtureRequest) -> str | None:
    """Runs a test on both stores: None for ``MemoryStore``, else a fresh PostgreSQL database."""
    if request.param == "memory":
        return None
    dsn: str = request.getfixturevalue("postgres").create_database()
    return dsn


@asynccontextmanager
async def opened(dsn: str | None) -> AsyncIterator[TelemetryStore]:
    store = MemoryStore() if dsn is None else await PostgresStore.open(dsn)
    try:
        yield store
    finally:
        await store.close()


async def _scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(query)
        row = await cursor.fetchone()
        assert row is not None
        return row[0]


# -- migrations --------------------------------------------------------------------------------


@pytest.mark.db
def test_migrations_apply_once_reapply_cleanly_and_survive_concurrent_starts(postgres: Any) -> None:
    dsn = postgres.create_database()

    async def scenario() -> None:
        stores = await asyncio.gather(*(PostgresStore.open(dsn) for _ in range(4)))
        try:
            assert {store.flavor for store in stores} == {Flavor.POSTGRESQL}
        finally:
            for store in stores:
                await store.close()
        again = await PostgresStore.open(dsn)
        await again.close()
        versions = await _scalar(
            dsn, "SELECT array_agg(version ORDER BY version) FROM schema_migrations"
        )
        assert versions == [m.version for m in MIGRATIONS]
        flavors = await _scalar(dsn, "SELECT array_agg(DISTINCT flavor) FROM schema_migrations")
        assert flavors == ["postgresql"]
        # plain PostgreSQL: partitioned by range of time, BRIN on time, btree for lookups
        strategy = await _scalar(
            dsn,
            "SELECT partstrat FROM pg_partitioned_table"
            " WHERE partrelid = 'approach_samples'::regclass",
        )
        assert strategy == "r"
        methods = await _scalar(
            dsn,
            "SELECT array_agg(am.amname || ':' || c.relname ORDER BY c.relname) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indrelid = 'approach_samples'::regclass",
        )
        assert methods == [
            "btree:approach_samples_by_intersection",
            "brin:approach_samples_ts_brin",
        ]

    asyncio.run(scenario())


@pytest.mark.db
def test_a_newer_schema_or_a_missing_timescaledb_is_refused(postgres: Any) -> None:
    dsn = postgres.create_database()

    async def scenario() -> None:
        with pytest.raises(SchemaError, match="timescaledb"):
            await PostgresStore.open(dsn, timescale=True)
        store = await PostgresStore.open(dsn)
        await store.close()
        with pytest.raises(SchemaError, match="created for postgresql"):
            await PostgresStore.open(dsn, timescale=True)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, flavor)"
                " VALUES (99, 'from the future', 'postgresql')"
            )
        with pytest.raises(SchemaError, match="newer than this build"):
            await PostgresStore.open(dsn)

    asyncio.run(scenario())


@pytest.mark.db
def test_an_unreachable_database_is_unavailable_not_fatal() -> None:
    async def scenario() -> None:
        dsn = "host=127.0.0.1 port=1 user=postgres dbname=postgres"  # nothing listens there
        with pytest.raises(StorageUnavailable):
            await PostgresStore.open(dsn, StoreSettings(timeout_s=1.0))

    asyncio.run(scenario())


# -- telemetry ---------------------------------------------------------------------------------


def test_telemetry_round_trip_and_redelivery_stored_once(store_dsn: str | None) -> None:
    async def scenario() -> None:
        async with opened(store_dsn) as store:
            first = [telemetry(seq, T0 + seq) for seq in range(500)]
            assert await store.write_telemetry(received(first)) == 500
            # a redelivery of some, with a repeat inside the batch, and new ones
            again = (
                first[100:200]
                + first[150:160]
                + [telemetry(seq, T0 + seq) for seq in range(500, 520)]
            )
            assert await store.write_telemetry(received(again)) == 20
            assert await store.write_telemetry([]) == 0
            assert await store.count_telemetry() == 520
            if store_dsn is not None:
                dsn = store_dsn
                assert await _scalar(dsn, "SELECT count(*) FROM approach_samples") == 520 * 4
                row = await _scalar(
                    dsn,
                    "SELECT array[extract(epoch FROM ts), seq,"
                    " extract(epoch FROM received_at)]::float8[] FROM telemetry WHERE seq = 7",
                )
                assert row == [T0 + 7, 7.0, T0 + 0.5]

    asyncio.run(scenario())


def test_queue_per_minute_averages_per_approach_and_minute(store_dsn: str | None) -> None:
    # minute 0: queues n = 0..5 (avg 2.5, max 5); minute 1: n = 10 every time; e = 2 n
    messages = [
        telemetry(seq, T0 + 10 * seq, queues=(float(seq), 2.0 * seq)) for seq in range(6)
    ] + [telemetry(seq, T0 + 60 + 10 * (seq - 6), queues=(10.0, 20.0)) for seq in range(6, 12)]
    other = [telemetry(seq, T0 + seq, intersection="x2", queues=(99.0,)) for seq in range(5)]

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            await store.write_telemetry(received(messages + other))
            rows = await store.queue_per_minute("x1", T0, T0 + 120)
            assert rows == [
                QueueMinute(T0, "x1-e", 5.0, 10.0, 6),
                QueueMinute(T0, "x1-n", 2.5, 5.0, 6),
                QueueMinute(T0 + 60, "x1-e", 20.0, 20.0, 6),
                QueueMinute(T0 + 60, "x1-n", 10.0, 10.0, 6),
            ]
            # minutes *starting* in [since, until): 30 s in skips minute 0, 61 s takes minute 1
            later = await store.queue_per_minute("x1", T0 + 30, T0 + 61)
            assert [(r.minute, r.approach) for r in later] == [(T0 + 60, "x1-e"), (T0 + 60, "x1-n")]
            assert await store.queue_per_minute("x1", T0 + 120, T0 + 600) == []
            assert await store.queue_per_minute("nowhere", T0, T0 + 600) == []

    asyncio.run(scenario())


# -- plans, acks, corridors, reservations ------------------------------------------------------


def _plan(seq: int, intersection: str = "x1", corridor: str = "c1") -> SignalPlan:
    return SignalPlan(
        plan_id=f"{corridor}-{intersection}-{seq}",
        intersection=intersection,
        seq=seq,
        issued_at=T0 + seq,
        valid_from=T0 + seq,
        valid_until=T0 + seq + 120,
        corridor_id=corridor,
        windows=(GreenWindow(signal_group="2", open_at=T0 + seq + 10, close_at=T0 + seq + 40),),
        signature=None,
    )


def _ack(plan: SignalPlan, status: AckStatus, at: float, reason: str | None = None) -> PlanAck:
    return PlanAck(
        plan_id=plan.plan_id,
        intersection=plan.intersection,
        seq=plan.seq,
        status=status,
        at=at,
        reason_code="lease_expired" if reason else None,
        reason=reason,
    )


def test_plan_audit_trail_keeps_every_plan_with_its_acks(store_dsn: str | None) -> None:
    first, second = _plan(1), _plan(2, "x2")
    release = SignalPlan(
        plan_id="c1-x1-release-3",
        intersection="x1",
        seq=3,
        issued_at=T0 + 50,
        valid_from=T0 + 50,
        valid_until=T0 + 60,
        kind=PlanKind.RELEASE,
        corridor_id="c1",
    )
    unrelated = _plan(1, "x9", corridor="c2")
    acks = [
        AckReceived(_ack(first, AckStatus.ACCEPTED, T0 + 1.2), T0 + 1.3),
        AckReceived(_ack(first, AckStatus.APPLIED, T0 + 10.0), T0 + 10.1),
        AckReceived(_ack(second, AckStatus.EXPIRED, T0 + 130.0, "lease\x00 ran out"), T0 + 130.1),
    ]

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            await store.record_plan(first, T0 + 1.0)
            await store.record_plan(second, T0 + 2.0)
            await store.record_plan(unrelated, T0 + 2.5)
            await store.record([*acks, PlanSent(release, T0 + 50.0)])
            await store.record_ack(acks[0].ack, acks[0].received_at)  # a redelivered ack
            await store.record_plan(first, T0 + 1.0)  # and a plan recorded twice
            audit = await store.plan_audit("c1")
            assert [(r.plan, r.sent_at) for r in audit] == [
                (first, T0 + 1.0),
                (second, T0 + 2.0),
                (release, T0 + 50.0),
            ]
            assert [a.ack.status for a in audit[0].acks] == [AckStatus.ACCEPTED, AckStatus.APPLIED]
            assert audit[0].acks[1] == acks[1]
            (expired,) = audit[1].acks
            # PostgreSQL text cannot hold NUL: shown as U+FFFD; the memory store keeps it
            assert expired.ack.reason in ("lease\x00 ran out", "lease\ufffd ran out")
            assert audit[2].acks == ()
            assert [r.plan for r in await store.plan_audit("c2")] == [unrelated]
            assert await store.plan_audit("nothing") == []

    asyncio.run(scenario())


def _status(state: CorridorState, updated_at: float) -> CorridorStatus:
    return CorridorStatus(
        corridor_id="c1",
        vehicle="amb-1",
        state=state,
        priority=8,
        updated_at=updated_at,
        route=("x1", "x2"),
        intersections=(
            CorridorIntersection(intersection="x1", eta=T0 + 30, eta_low=T0 + 25, eta_high=T0 + 35),
        ),
    )


def test_corridor_state_keeps_the_newest_and_reservations_are_replaced(
    store_dsn: str | None,
) -> None:
    granted, active = _status(CorridorState.GRANTED, T0 + 1), _status(CorridorState.ACTIVE, T0 + 5)
    before = [Reservation("x1", "2", T0 + 10, T0 + 40), Reservation("x2", "6", T0 + 50, T0 + 80)]
    after = [Reservation("x2", "6", T0 + 55, T0 + 85)]

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            assert await store.corridor("c1") is None
            await store.record_corridor(granted)
            await store.record_corridor(active)
            await store.record_corridor(granted)  # late and older: ignored
            assert await store.corridor("c1") == active
            await store.record_reservations("c1", reversed(before))
            assert await store.reservations("c1") == before
            await store.record_reservations("c1", after)
            assert await store.reservations("c1") == after
            await store.record_reservations("c1", [])
            assert await store.reservations("c1") == []

    asyncio.run(scenario())


def test_who_requested_and_cancelled_a_corridor_is_kept_once_in_order(
    store_dsn: str | None,
) -> None:
    def action(
        kind: ActionKind, actor: str, at: float, reason: str | None = None
    ) -> OperatorAction:
        return OperatorAction(
            at=at, actor=actor, kind=kind, corridor_id="c1", vehicle="amb-1", priority=8,
            incident="medical", reason=reason,
        )  # fmt: skip

    requested = action(ActionKind.REQUEST, "medic", T0 + 1.25)
    cancelled = action(ActionKind.CANCEL, "admin", T0 + 9.5, "false\x00 alarm")
    other = dataclasses.replace(requested, corridor_id="c2")

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            await store.record([cancelled, other, requested])
            await store.record([requested])  # written again after a lost commit answer
            got = await store.operator_actions("c1")
            assert [(a.kind, a.actor, a.at) for a in got] == [
                (ActionKind.REQUEST, "medic", T0 + 1.25),
                (ActionKind.CANCEL, "admin", T0 + 9.5),
            ]
            assert got[0] == requested
            assert got[1].reason in ("false\x00 alarm", "false\ufffd alarm")
            assert await store.operator_actions("nothing") == []

    asyncio.run(scenario())


def test_corridor_history_pages_newest_first_with_filters(store_dsn: str | None) -> None:
    """The history the console and ``GET /v1/history/corridors`` read, on both stores."""

    def status(n: int, state: CorridorState, updated_at: float) -> CorridorStatus:
        return msgspec.structs.replace(
            _status(state, updated_at), corridor_id=f"c{n}", vehicle=f"amb-{n % 3}"
        )

    rows = [
        status(n, CorridorState.CANCELLED if n % 4 == 0 else CorridorState.COMPLETED, T0 + n)
        for n in range(10)
    ]
    rows.append(status(10, CorridorState.COMPLETED, T0 + 9))  # a tie on time: id breaks it

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            await store.record(rows)
            seen: list[str] = []
            after = None
            while True:
                found = await store.corridor_history(HistoryQuery(limit=4, after=after))
                page = page_of(found, 4)
                seen += [c.corridor_id for c in page.corridors]
                if page.next is None:
                    break
                stamp, _, corridor_id = page.next.partition("~")
                after = (float(stamp), corridor_id)
            assert seen == ["c9", "c10", *(f"c{n}" for n in range(8, -1, -1))]
            cancelled = await store.corridor_history(HistoryQuery(state=CorridorState.CANCELLED))
            assert [c.corridor_id for c in cancelled] == ["c8", "c4", "c0"]
            one = await store.corridor_history(
                HistoryQuery(vehicle="amb-1", since=T0 + 2, until=T0 + 8)
            )
            assert [c.corridor_id for c in one] == ["c7", "c4"]
            assert (await store.corridor_history(HistoryQuery(limit=1)))[0] == rows[9]

    asyncio.run(scenario())


def test_alarms_are_kept_with_the_first_who_and_when_acknowledged(store_dsn: str | None) -> None:
    book = AlarmBook(prefix="A1")
    raised = book.raise_(AlarmKind.EDGE_OFFLINE, "x1", "x1 went offline", at=T0 + 1.5)
    other = book.raise_(AlarmKind.PLAN_REFUSED, "x2", "x2 rejected\x00 a plan", at=T0 + 2.0)
    assert raised is not None
    assert other is not None
    cleared = book.clear(AlarmKind.EDGE_OFFLINE, "x1", at=T0 + 3.0)
    assert cleared is not None
    acked = book.acknowledge(raised.alarm_id, by="op", at=T0 + 4.25)
    late = msgspec.structs.replace(acked, acked_by="admin", acked_at=T0 + 9.0)

    async def scenario() -> None:
        async with opened(store_dsn) as store:
            await store.record([raised, other])
            await store.record([acked])
            await store.record([cleared, late])  # out of order, and a second acknowledgement
            got = await store.alarms()
            assert [a.alarm_id for a in got] == [other.alarm_id, raised.alarm_id]
            kept = got[1]
            assert (kept.acked_by, kept.acked_at, kept.cleared_at) == ("op", T0 + 4.25, T0 + 3.0)
            assert kept.acked_time == acked.acked_time
            assert got[0].acked_by is None
            assert got[0].message in ("x2 rejected\x00 a plan", "x2 rejected\ufffd a plan")

    asyncio.run(scenario())


# -- refused before the database ---------------------------------------------------------------


def test_malformed_input_is_refused_before_it_reaches_the_store() -> None:
    good = DEFAULT_CODEC.encode(telemetry(1, T0))
    with pytest.raises(MessageError) as refused:
        DEFAULT_CODEC.decode(good.replace(b'"queue_veh":1.0', b'"queue_veh":-1.0'), Telemetry)
    assert refused.value.field == "$.approaches[0].queue_veh"
    with pytest.raises(ValidationError):
        Reservation("x1", "2", T0 + 10, T0 + 5)
    with pytest.raises(ValidationError):
        PlanSent(_plan(1), -1.0)
    # what a Struct allows but a timestamp column cannot hold is refused when the record is made
    far = msgspec.structs.replace(_plan(1), valid_until=1e300)
    with pytest.raises(ValidationError, match="valid_until"):
        PlanSent(far, T0)

    async def scenario() -> None:
        store = MemoryStore()
        async with TelemetryWriter(store) as writer:
            # the Struct accepts any finite time; a timestamp column does not
            with pytest.raises(ValidationError, match="controller_time"):
                writer.put_nowait(telemetry(2, 1e300))
            with pytest.raises(ValidationError, match="received_at"):
                await writer.put(telemetry(3, T0), received_at=math.inf)
            with pytest.raises(ValidationError, match="updated_at"):
                writer.put_record(_status(CorridorState.ACTIVE, 1e300))
            await writer.flush()
        assert await store.count_telemetry() == 0
        with pytest.raises(ValidationError):
            await store.write_telemetry([(telemetry(4, 1e300), T0)])
        with pytest.raises(ValidationError, match="updated_at"):
            await store.record_corridor(_status(CorridorState.ACTIVE, 1e300))

    asyncio.run(scenario())


# -- the writer, on the fake -------------------------------------------------------------------


class RecordingStore(MemoryStore):
    """Remembers every batch it committed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[int]] = []

    async def write_telemetry(self, batch: Sequence[Received]) -> int:
        new = await super().write_telemetry(batch)
        self.batches.append([m.seq for m, _ in batch])
        return new


def test_writer_batches_by_size_and_by_delay() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        settings = WriterSettings(batch_size=10, max_delay_s=0.05, max_pending=100)
        async with TelemetryWriter(store, settings) as writer:
            for seq in range(25):
                writer.put_nowait(telemetry(seq, T0 + seq))
            await asyncio.sleep(0.2)  # no flush: the last partial batch goes out on the delay
            assert writer.pending == 0
            assert [len(b) for b in store.batches] == [10, 10, 5]
            assert writer.written == 25

    asyncio.run(scenario())


def test_writer_buffers_an_outage_and_flushes_in_order() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        settings = WriterSettings(batch_size=50, max_delay_s=0.01, retry_max_s=0.05)
        async with TelemetryWriter(store, settings) as writer:
            store.available = False
            for seq in range(1000):
                writer.put_nowait(telemetry(seq, T0 + seq))
                if seq == 500:
                    writer.put_record(_status(CorridorState.ACTIVE, T0 + seq))
            await asyncio.sleep(0.2)
            assert not writer.available
            assert writer.retries > 0
            assert writer.pending == 1001
            store.available = True
            await writer.flush()
            assert (writer.available, writer.pending) == (True, 0)
            assert (writer.written, writer.recorded, writer.dropped) == (1000, 1, 0)
        seqs = [seq for batch in store.batches for seq in batch]
        assert seqs == list(range(1000))
        assert await store.corridor("c1") == _status(CorridorState.ACTIVE, T0 + 500)

    asyncio.run(scenario())


def test_writer_beyond_its_bound_drops_the_oldest_waiting_and_counts_them() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        settings = WriterSettings(
            batch_size=10, max_delay_s=0.01, max_pending=30, retry_min_s=0.01, retry_max_s=0.02
        )
        async with TelemetryWriter(store, settings) as writer:
            store.available = False
            writer.put_nowait(telemetry(0, T0))
            await asyncio.sleep(0.05)  # the first batch (one message) is now being retried
            for seq in range(1, 100):
                writer.put_nowait(telemetry(seq, T0 + seq))
            assert writer.pending == 30
            assert writer.dropped == 70
            store.available = True
            await writer.flush()
        # the batch in flight is kept; of the rest, the newest 29 remain
        assert sorted(m.seq for m, _ in store.telemetry.values()) == [0, *range(71, 100)]

    asyncio.run(scenario())


def test_writer_put_waits_for_room_instead_of_dropping() -> None:
    async def scenario() -> None:
        store = RecordingStore()
        settings = WriterSettings(
            batch_size=5, max_delay_s=0.01, max_pending=10, retry_min_s=0.01, retry_max_s=0.02
        )
        async with TelemetryWriter(store, settings) as writer:
            store.available = False
            for seq in range(10):
                await writer.put(telemetry(seq, T0 + seq))
            blocked = asyncio.create_task(writer.put(telemetry(10, T0 + 10)))
            await asyncio.sleep(0.1)
            assert not blocked.done()
            store.available = True
            await asyncio.wait_for(blocked, 2.0)
            await writer.flush()
            assert (writer.written, writer.dropped) == (11, 0)

    asyncio.run(scenario())


class BrokenStore(MemoryStore):
    async def write_telemetry(self, batch: Sequence[Received]) -> int:
        raise StorageError("relation telemetry does not exist")


def test_a_fatal_error_stops_the_writer_and_is_raised_to_its_users() -> None:
    async def scenario() -> None:
        writer = TelemetryWriter(BrokenStore(), WriterSettings(max_delay_s=0.01))
        writer.start()
        writer.put_nowait(telemetry(1, T0))
        with pytest.raises(StorageError, match="does not exist"):
            await writer.flush()
        with pytest.raises(StorageError, match="stopped"):
            writer.put_nowait(telemetry(2, T0))
        with pytest.raises(StorageError, match="stopped"):
            await writer.close()

    asyncio.run(scenario())


def test_closing_while_the_database_stays_away_counts_what_is_lost() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        store.available = False
        writer = TelemetryWriter(
            store, WriterSettings(max_delay_s=0.01, retry_min_s=0.01, retry_max_s=0.02)
        )
        writer.start()
        writer.put_record(_status(CorridorState.ACTIVE, T0))
        for seq in range(20):
            writer.put_nowait(telemetry(seq, T0 + seq))
        await writer.close(timeout=0.2)
        assert (writer.pending, writer.dropped, writer.written) == (0, 21, 0)
        with pytest.raises(StorageError, match="closed"):
            writer.put_nowait(telemetry(99, T0))

    asyncio.run(scenario())


def test_close_writes_what_was_queued_even_if_the_writer_never_started() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        writer = TelemetryWriter(store)
        for seq in range(5):
            writer.put_nowait(telemetry(seq, T0 + seq))
        await writer.close()
        assert (await store.count_telemetry(), writer.written, writer.pending) == (5, 5, 0)

    asyncio.run(scenario())


# -- a real database going away ----------------------------------------------------------------


@pytest.mark.db
@pytest.mark.slow
def test_a_database_restart_mid_run_loses_no_telemetry(postgres_own: Any) -> None:
    """Telemetry streams in at 2,000 messages/s while PostgreSQL is stopped (fast: every client
    cut off), kept down for 2 s and started again. Every message sent is stored exactly once,
    and the store answers queries again afterwards."""
    server = postgres_own
    rate, seconds = 2000, 6.0
    total = int(rate * seconds)

    async def produce(writer: TelemetryWriter) -> None:
        started = time.monotonic()
        for seq in range(total):
            due = started + seq / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            writer.put_nowait(telemetry(seq, T0 + seq / 10, intersection=f"x{seq % 50}"))

    def outage(done: threading.Event) -> None:
        time.sleep(1.5)
        server.stop()
        time.sleep(2.0)
        server.start()
        done.set()

    async def scenario() -> None:
        store = await PostgresStore.open(server.dsn(), StoreSettings(timeout_s=1.0))
        try:
            settings = WriterSettings(batch_size=500, max_delay_s=0.05, retry_max_s=0.5)
            async with TelemetryWriter(store, settings) as writer:
                restarted = threading.Event()
                stopper = asyncio.create_task(asyncio.to_thread(outage, restarted))
                await produce(writer)
                await stopper
                assert restarted.is_set()
                await asyncio.wait_for(writer.flush(), 30.0)
                assert writer.retries > 0, "the writer never saw the database go away"
                assert (writer.written, writer.dropped, writer.pending) == (total, 0, 0)
            assert await store.count_telemetry() == total
            minutes = await store.queue_per_minute("x0", T0, T0 + 3600)
            assert sum(row.samples for row in minutes) == (total // 50) * 4
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.db
def test_calls_during_an_outage_raise_unavailable_and_recover(postgres_own: Any) -> None:
    server = postgres_own

    async def scenario() -> None:
        store = await PostgresStore.open(server.dsn(), StoreSettings(timeout_s=1.0))
        try:
            await store.write_telemetry(received([telemetry(1, T0)]))
            await asyncio.to_thread(server.stop)
            with pytest.raises(StorageUnavailable):
                await store.count_telemetry()
            with pytest.raises(StorageUnavailable):
                await store.record_plan(_plan(1), T0)
            await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 20.0
            while True:
                try:
                    assert await store.count_telemetry() == 1
                    break
                except StorageUnavailable:
                    assert time.monotonic() < deadline, "the store did not come back"
                    await asyncio.sleep(0.2)
            await store.record_plan(_plan(1), T0)
            assert len(await store.plan_audit("c1")) == 1
        finally:
            await store.close()

    asyncio.run(scenario())


# -- day partitions (plain PostgreSQL) ---------------------------------------------------------


@pytest.mark.db
def test_day_partitions_are_made_as_rows_arrive_and_expire_with_retention(postgres: Any) -> None:
    dsn = postgres.create_database()
    day = 86_400

    async def partitions() -> list[str]:
        names = await _scalar(
            dsn,
            "SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'telemetry'::regclass",
        )
        return list(names)

    async def scenario() -> None:
        store = await PostgresStore.open(dsn, StoreSettings(retention_days=30))
        try:
            # a simulation clock near 0 and a real one: both land in their own days
            await store.write_telemetry(received([telemetry(1, 5.0), telemetry(2, T0 + 10)]))
            names = await partitions()
            assert "telemetry_19700101" in names
            assert "telemetry_20260101" in names
            await store.maintain(T0 + 10 * day)
            names = await partitions()
            assert "telemetry_19700101" not in names  # past retention
            assert {"telemetry_20260101", "telemetry_20260111", "telemetry_20260112"} <= set(names)
            assert await store.count_telemetry() == 1
            # a late message for a dropped day gets its partition back
            await store.write_telemetry(received([telemetry(3, 7.0)]))
            assert await store.count_telemetry() == 2
            # even when another instance dropped it behind this one's back
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("DROP TABLE telemetry_19700101, approach_samples_19700101")
            await store.write_telemetry(received([telemetry(4, 8.0)]))
            assert await store.count_telemetry() == 2
        finally:
            await store.close()

    asyncio.run(scenario())
