"""``citybrain cloud serve``: the cloud service as its own process.

    citybrain cloud serve --network arterial --broker 127.0.0.1:1883 --dsn postgresql://...
    citybrain cloud serve --network city.json --role ingest --share-group ingest --dsn ...

A leader keeps the city's state, runs the corridors and answers operators on its HTTP API;
ingest workers only store telemetry taken through a shared subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import time
from typing import Any

from citybrain.models.errors import CitybrainError, ValidationError

log = logging.getLogger("citybrain.cloud")


def add_commands(commands: Any) -> None:
    cloud = commands.add_parser("cloud", help="the cloud service")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)
    serve = sub.add_parser("serve", help="run the cloud service until SIGTERM")
    serve.add_argument(
        "--network", default="arterial", help="arterial[:N], grid:RxC or a network file"
    )
    serve.add_argument("--broker", default="127.0.0.1:1883", help="host:port of the broker")
    serve.add_argument(
        "--username", help="broker user name (password from CITYBRAIN_MQTT_PASSWORD)"
    )
    serve.add_argument("--region", default="+", help="the region served ('+': every region)")
    serve.add_argument("--role", choices=["leader", "ingest"], default="leader")
    serve.add_argument("--share-group", help="take telemetry through $share/<group>/...")
    serve.add_argument("--client-id", default="citybrain-cloud", help="MQTT client id (unique)")
    serve.add_argument("--dsn", help="PostgreSQL connection string (no storage without one)")
    serve.add_argument("--api", default="127.0.0.1:8080", help="host:port of the operator API")
    serve.add_argument(
        "--rate", type=float, default=1.0, help="controller seconds per wall second (1 in the "
        "field; a simulation's pace)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args))
    except CitybrainError as error:
        log.error("stopped: %s", error)
        return 2


def _host_port(text: str, name: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValidationError(name, f"expected host:port, got {text!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> int:
    import os

    from citybrain.cloud.api import serve_api
    from citybrain.cloud.core import CloudCore
    from citybrain.cloud.service import (
        CloudService,
        ControllerClock,
        Role,
        ServiceSettings,
        writer_sinks,
    )
    from citybrain.cloud.storage import PostgresStore, TelemetryWriter
    from citybrain.simulator.scenarios import load_network

    broker_host, broker_port = _host_port(args.broker, "broker")
    api_host, api_port = _host_port(args.api, "api")
    road = load_network(args.network)
    role = Role(args.role)
    core = CloudCore(road.network, road.plans, wall_clock=time.monotonic)
    settings = ServiceSettings(
        broker_host=broker_host, broker_port=broker_port, username=args.username,
        password=os.environ.get("CITYBRAIN_MQTT_PASSWORD"), client_id=args.client_id,
        region=args.region, role=role, share_group=args.share_group,
    )  # fmt: skip
    store = await PostgresStore.open(args.dsn) if args.dsn else None
    writer = TelemetryWriter(store) if store is not None else None
    sinks = writer_sinks(writer, backpressure=role is Role.INGEST) if writer else (None, None)
    service = CloudService(
        core, settings=settings, telemetry_sink=sinks[0], audit_sink=sinks[1],
        clock=ControllerClock(rate=args.rate),
    )  # fmt: skip
    if writer is not None:
        writer.start()
        service.backlog = lambda: writer.pending
        service.database_up = lambda: writer.available
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = await serve_api(service, api_host, api_port) if role is Role.LEADER else None
    log.info(
        "cloud %s: %d intersections, broker %s, storage %s, API %s",
        role, len(core.seen), args.broker, store.flavor if store else "none",
        args.api if api else "off",
    )  # fmt: skip
    # What start-up built (the network, the core, numba, the libraries) lives as long as the
    # process: out of the collector's sight, a full collection takes ~1 ms instead of ~57 ms,
    # which otherwise lands in some corridor request's latency.
    gc.freeze()
    try:
        await service.run(stop)
    finally:
        if api is not None:
            await api.cleanup()
        if writer is not None:
            await writer.close()
        if store is not None:
            await store.close()
    return 0
