"""One cloud ingest worker for the ingest benchmark, in its own process (its CPU is its own, as
in a deployment): ``CloudService(role=INGEST)`` on an MQTT shared subscription, writing through
``writer_sinks`` into a ``TelemetryWriter`` on PostgreSQL.

    .venv/bin/python benchmarks/ingest_worker.py --port 1883 --dsn ... --stats /tmp/w1.json

Every ``--every`` seconds it replaces ``--stats`` with one JSON object (messages received,
committed, waiting in aiomqtt's queue and in the writer, counters, CPU seconds), so the
benchmark can watch progress without a pipe; on SIGTERM it stops taking messages, commits what
it holds, and writes a last object with ``"final": true``.

The ingest role does not use the ``CloudCore``'s state (telemetry goes straight to the sink),
but ``CloudService`` requires one and refuses telemetry from intersections missing from its
``seen``, so the worker builds the whole city's core (``--network``, default the 10,000
intersections of grid:100x100: about 4 s and 350 MB per worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from telemetry_load import REGION

from citybrain.cloud.core import CloudCore
from citybrain.cloud.service import CloudService, Role, ServiceSettings
from citybrain.cloud.storage import PostgresStore, TelemetryWriter
from citybrain.simulator.scenarios import load_network


def _stats(service: CloudService, writer: TelemetryWriter, cpu0: float) -> dict[str, Any]:
    client = service._client  # how much sits in aiomqtt's queue, for the report
    queued = len(client.messages) if client is not None else 0
    return {
        "pid": os.getpid(),
        "at": time.monotonic(),
        "connected": service.connected.is_set(),
        "received": service.counters["telemetry"],
        "written": writer.written,
        "duplicates": writer.duplicates,
        "dropped": writer.dropped,
        "writer_pending": writer.pending,
        "mqtt_queued": queued,
        "counters": dict(service.counters),
        "cpu_s": time.process_time() - cpu0,
        "batches": len(writer.latencies),
    }


def _dump(path: Path, value: dict[str, Any]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(value))
    partial.replace(path)


async def run(args: argparse.Namespace) -> None:
    cpu0 = time.process_time()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    road = load_network(args.network)
    core = CloudCore(road.network, road.plans, wall_clock=time.monotonic)
    if not args.no_gc_freeze:
        gc.freeze()  # as `citybrain cloud serve`: the city model lives as long as the process
    store = await PostgresStore.open(args.dsn)
    stats = Path(args.stats)
    try:
        async with TelemetryWriter(store) as writer:
            service = CloudService(
                core,
                settings=ServiceSettings(
                    broker_port=args.port,
                    client_id=args.client_id,
                    role=Role.INGEST,
                    region=REGION,  # the load's; the default is the live demo's
                    share_group=args.group,
                ),
                storage=writer,  # with backpressure, as an ingest worker of `cloud serve`
                signer=None,  # an ingest worker sends no plans
            )
            running = asyncio.create_task(service.run(stop))
            while not stop.is_set():
                _dump(stats, _stats(service, writer, cpu0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.every)
            await running
            await writer.flush()
            final = _stats(service, writer, cpu0)
    finally:
        await store.close()
    final["final"] = True
    _dump(stats, final)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stats", required=True, help="file to keep the latest figures in")
    parser.add_argument("--client-id", default="ingest-1")
    parser.add_argument("--group", default="ingest")
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--network", default="grid:100x100", help="the city the core knows")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="leave the start-up objects to the collector"
    )
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
