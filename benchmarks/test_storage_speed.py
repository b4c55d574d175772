"""Telemetry storage throughput, against a real PostgreSQL started here (fsync on).

* ``test_sustained_telemetry_writes``: realistic telemetry (1,000 intersections, 8 signal groups
  and 4 approaches each) decoded from its JSON wire form and handed to a ``TelemetryWriter``
  as fast as it takes them (``put`` waits when the backlog is full), for a steady window
  (default 60 s) after a warm-up: messages/s and rows/s committed, p50/p99 batch commit
  latency, the client's CPU. Peer in the same run, same server, same schema and batch size: the
  same rows with psycopg's ``executemany`` INSERT (pipelined), into a database of its own.
  Target >= 10,000 messages/s.
* ``test_backlog_memory_per_message``: what one message held in the writer's backlog costs, so
  the bound (``max_pending``) can be sized in bytes.

    .venv/bin/python -m pytest benchmarks/test_storage_speed.py --benchmark-only -s

The MQTT leg (broker to the service's callback) is not in these figures; decoding is.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citybrain.cloud.storage import (
    MemoryStore,
    PostgresStore,
    TelemetryWriter,
    WriterSettings,
)
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import Telemetry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import PostgreSQL

WINDOW_S = float(os.environ.get("CITYBRAIN_BENCH_WINDOW_S", "60"))
WARMUP_S = 3.0
INTERSECTIONS = 1000
BATCH = 2000
ROWS_PER_MESSAGE = 5  # one telemetry row and four approach rows
TARGET_MSGS_PER_S = 10_000

_SIGNALS = ",".join(f'"{g}":"{"green" if g in (2, 6) else "red"}"' for g in range(1, 9))
_TEMPLATE = (
    '{"v":1,"intersection":"x%04d","controller_time":%d.0,"seq":%d,"phase":"p2-6",'
    '"interval":"green","signals":{' + _SIGNALS + '},"approaches":[%s],"plan_id":null,'
    '"mode":"normal"}'
)
_APPROACHES = [
    ",".join(
        f'{{"approach":"a{d}","queue_veh":{(k * 7 + i * 3) % 23 + 0.5},'
        f'"occupancy":{((k + i) % 10) / 10},"flow_vph":{600 + 40 * ((k * i) % 17)}}}'
        for i, d in enumerate("nesw")
    )
    for k in range(64)
]


def _messages(t0: float) -> Iterator[Telemetry]:
    """Telemetry as the service gets it: decoded from the wire, one per intersection per
    second of controller time."""
    n = 0
    while True:
        second, node = divmod(n, INTERSECTIONS)
        payload = _TEMPLATE % (node, t0 + second, second, _APPROACHES[n % 64])
        yield DEFAULT_CODEC.decode(payload.encode(), Telemetry)
        n += 1


def _figures(
    committed: int, seconds: float, cpu: float, latencies: list[float]
) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "msgs_per_s": committed / seconds,
        "rows_per_s": committed * ROWS_PER_MESSAGE / seconds,
        "batch_p50_ms": 1000 * statistics.median(ordered),
        "batch_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "batches": float(len(ordered)),
        "client_cores": cpu / seconds,
    }


async def _through_writer(dsn: str, t0: float) -> dict[str, float]:
    store = await PostgresStore.open(dsn)
    messages = _messages(t0)
    settings = WriterSettings(batch_size=BATCH, max_pending=100_000)
    try:
        async with TelemetryWriter(store, settings) as writer:
            stop = time.monotonic() + WARMUP_S + WINDOW_S
            window: dict[str, float] = {}
            pending: list[int] = []

            async def produce() -> None:
                n = 0
                while time.monotonic() < stop:
                    await writer.put(next(messages))
                    n += 1
                    if n % 500 == 0:  # a socket read's worth of messages, then the loop turns
                        await asyncio.sleep(0)

            async def watch() -> None:
                await asyncio.sleep(WARMUP_S)
                window.update(
                    written=writer.written,
                    batches=len(writer.latencies),
                    wall=time.monotonic(),
                    cpu=time.process_time(),
                )
                while time.monotonic() < stop:
                    await asyncio.sleep(1.0)
                    pending.append(writer.pending)
                window.update(
                    written=writer.written - window["written"],
                    batches=len(writer.latencies) - window["batches"],
                    wall=time.monotonic() - window["wall"],
                    cpu=time.process_time() - window["cpu"],
                )

            await asyncio.gather(produce(), watch())
            latencies = list(writer.latencies)[-int(window["batches"]) :]
            figures = _figures(int(window["written"]), window["wall"], window["cpu"], latencies)
            figures["mean_pending"] = statistics.mean(pending)
            figures["duplicates"] = float(writer.duplicates)
            figures["dropped"] = float(writer.dropped)
        figures["stored"] = float(await store.count_telemetry())
        figures["written"] = float(writer.written)
    finally:
        await store.close()
    return figures


_INSERT_TELEMETRY = (
    "INSERT INTO telemetry (ts, intersection, seq, mode, plan_id, received_at)"
    " VALUES (to_timestamp(%s), %s, %s, %s, %s, to_timestamp(%s))"
)
_INSERT_APPROACH = (
    "INSERT INTO approach_samples (ts, intersection, approach, queue_veh, occupancy, flow_vph)"
    " VALUES (to_timestamp(%s), %s, %s, %s, %s, %s)"
)


async def _through_executemany(dsn: str, t0: float) -> dict[str, float]:
    """The peer: plain INSERTs (no redelivery check, so it does less than the store)."""
    store = await PostgresStore.open(dsn)  # the same schema and today's partitions
    await store.close()
    messages = _messages(t0)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

        async def insert_batch() -> float:
            batch = [next(messages) for _ in range(BATCH)]
            now = time.time()
            telemetry = [
                (m.controller_time, m.intersection, m.seq, m.mode.value, m.plan_id, now)
                for m in batch
            ]
            approaches = [
                (
                    m.controller_time,
                    m.intersection,
                    a.approach,
                    a.queue_veh,
                    a.occupancy,
                    a.flow_vph,
                )
                for m in batch
                for a in m.approaches
            ]
            begun = time.perf_counter()
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(_INSERT_TELEMETRY, telemetry)
                await cursor.executemany(_INSERT_APPROACH, approaches)
            return time.perf_counter() - begun

        warm_until = time.monotonic() + WARMUP_S
        while time.monotonic() < warm_until:
            await insert_batch()
        latencies: list[float] = []
        started, cpu = time.monotonic(), time.process_time()
        while time.monotonic() < started + WINDOW_S:
            latencies.append(await insert_batch())
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    return _figures(len(latencies) * BATCH, seconds, cpu, latencies)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgreSQL]:
    server = PostgreSQL(durable=True)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def _report(name: str, figures: dict[str, float]) -> None:
    print(
        f"  {name}: {figures['msgs_per_s']:,.0f} msg/s, {figures['rows_per_s']:,.0f} rows/s, "
        f"batch of {BATCH} commits p50 {figures['batch_p50_ms']:.1f} ms, "
        f"p99 {figures['batch_p99_ms']:.1f} ms, client {figures['client_cores']:.2f} cores"
    )


def test_sustained_telemetry_writes(benchmark: Any, server: PostgreSQL) -> None:
    t0 = float(int(time.time()) // 60 * 60)  # today: the store made its day partition at open
    results: dict[str, dict[str, float]] = {}

    def measure() -> None:
        results["writer"] = asyncio.run(_through_writer(server.create_database(), t0))
        results["executemany"] = asyncio.run(_through_executemany(server.create_database(), t0))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    writer, peer = results["writer"], results["executemany"]
    print(f"\n{WINDOW_S:.0f} s steady window, PostgreSQL {server.bindir.parent.name}, fsync on")
    _report("TelemetryWriter (COPY)", writer)
    _report("executemany peer      ", peer)
    print(
        f"  writer / peer: x{writer['msgs_per_s'] / peer['msgs_per_s']:.2f} throughput; "
        f"mean backlog {writer['mean_pending']:,.0f} messages, dropped {writer['dropped']:.0f}, "
        f"stored {writer['stored']:,.0f} of {writer['written']:,.0f} written"
    )
    benchmark.extra_info.update({"writer": writer, "executemany": peer})
    assert writer["dropped"] == 0
    assert writer["stored"] == writer["written"]
    assert writer["msgs_per_s"] >= TARGET_MSGS_PER_S


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_backlog_memory_per_message(benchmark: Any) -> None:
    count = 200_000
    figures: dict[str, float] = {}

    async def fill() -> None:
        store = MemoryStore()
        store.available = False  # the database is away: everything stays in the backlog
        writer = TelemetryWriter(store, WriterSettings(max_pending=count))
        writer.start()
        messages = _messages(1_767_225_600.0)
        gc.collect()
        before = _rss_bytes()
        for _ in range(count):
            writer.put_nowait(next(messages))
        gc.collect()
        figures["bytes_per_message"] = (_rss_bytes() - before) / count
        figures["pending"] = float(writer.pending)
        await writer.close(timeout=0.1)

    def measure() -> None:
        asyncio.run(fill())

    benchmark.pedantic(measure, rounds=1, iterations=1)
    per = figures["bytes_per_message"]
    print(
        f"\nbacklog: {per:,.0f} bytes per message held; the default bound of 500,000 "
        f"messages is {per * 500_000 / 1e6:,.0f} MB"
    )
    benchmark.extra_info.update(figures)
    assert figures["pending"] == count
