"""The cloud service end to end: a paced simulator on its field bus, edge agents, a real
Mosquitto, the service with its HTTP API, and a real PostgreSQL behind a ``TelemetryWriter``,
wired the way ``citybrain/live.py`` wires them. Exercised the way the field would: a corridor
driven to its end, a database restart, garbage on every topic, an edge that never answers, and
telemetry split between ingest workers.

The tests at the end pin bugs these runs found (each was a strict xfail until fixed); the last
is the pure, deterministic form of a refusal the corridor run met now and then."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from citybrain.cloud.api import serve_api
from citybrain.cloud.auth import TokenFile, UserRole, add_user
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.keys import Keyring
from citybrain.cloud.operations import Health, HealthReport
from citybrain.cloud.service import (
    CloudService,
    Role,
    ServiceSettings,
    writer_sinks,
)
from citybrain.cloud.storage import (
    MemoryStore,
    PostgresStore,
    StoreSettings,
    TelemetryStore,
    TelemetryWriter,
    WriterSettings,
)
from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.settings import (
    BrokerSettings,
    BufferSettings,
    ControllerSettings,
    EdgeSettings,
    Intersections,
    LogSettings,
    TelemetrySettings,
    TrustSettings,
)
from citybrain.live import avl_position
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import (
    AckStatus,
    ApproachState,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    GreenWindow,
    Mode,
    PlanAck,
    PlanKind,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.signing import PlanSigner
from citybrain.models.topics import (
    TopicKind,
    corridor_status_topic,
    intersection_topic,
    vehicle_position_topic,
)
from citybrain.signal_plans.controller import ControllerModel
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.networks import RoadNetwork, arterial
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

SIGNER = PlanSigner.generate()
REGION = "test"
SPEED = 8.0
"""Simulated seconds per wall second."""
AMBULANCE = "AMB-1"
DEPART_S = 300.0
"""When the ambulance leaves (simulated s); the simulator is warmed up to shortly before."""
TAKEOVER_LEAD_WALL_S = 0.1


def _road() -> RoadNetwork:
    """Three junctions 300 m apart: the ambulance's trip takes about a minute simulated."""
    return arterial(3, length_m=1200.0)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


# ---- the system ---------------------------------------------------------------------------


@dataclass
class System:
    run: Run
    core: CloudCore
    service: CloudService
    agents: list[EdgeAgent]
    api_url: str
    broker_port: int
    vehicle: int
    """The ambulance's index in the simulator."""
    route: list[str]
    """The ambulance's route, as intersections (station to the end)."""
    api_token: str
    """Dispatch's: an operator who may ask for medical corridors up to priority 8."""

    def telemetry_for(self, node: str, seq: int) -> Telemetry:
        """A well-formed telemetry message for ``node`` as its edge would send it."""
        approaches = sorted(a for a, n in self.core.state.approach_node.items() if n == node)
        return Telemetry(
            intersection=node,
            controller_time=self.run.now,
            seq=seq,
            mode=Mode.NORMAL,
            approaches=tuple(
                ApproachState(approach=a, queue_veh=0.0, occupancy=0.0, flow_vph=0.0)
                for a in approaches
            ),
        )

    def position(self) -> VehiclePosition | None:
        """What the ambulance's AVL unit reports: its link and the offset along it."""
        return avl_position(self.run, self.vehicle)

    async def request_corridor(self) -> CorridorStatus:
        """Dispatch asks for the corridor through the operators' API, with the crew's route."""
        body: dict[str, Any] = {
            "vehicle": AMBULANCE, "origin": self.route[0], "route": self.route, "priority": 8,
            "incident": "medical",
        }  # fmt: skip
        if self.run.now < DEPART_S - 2.0:
            body["depart_at"] = DEPART_S
        headers = {"Authorization": f"Bearer {self.api_token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.api_url}/v1/corridors", json=body, headers=headers) as response,
        ):
            text = await response.text()
            assert response.status == 201, text
        return DEFAULT_CODEC.decode(text.encode(), CorridorStatus)

    @contextlib.asynccontextmanager
    async def ambulance(self) -> AsyncIterator[None]:
        """Publish the ambulance's position (QoS 0) every simulated second while inside."""

        async def report() -> None:
            async with aiomqtt.Client(
                "127.0.0.1", self.broker_port, identifier="avl-amb-1",
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as avl:  # fmt: skip
                while True:
                    position = self.position()
                    if position is not None:
                        await avl.publish(
                            vehicle_position_topic(AMBULANCE), DEFAULT_CODEC.encode(position), 0
                        )
                    await asyncio.sleep(1.0 / SPEED)

        task = asyncio.create_task(report())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _core(road: RoadNetwork, speed_factor: float = 1.3) -> CloudCore:
    return CloudCore(
        road.network,
        road.plans,
        settings=CoreSettings(
            emergency_speed_factor=speed_factor,
            corridor=CorridorSettings(takeover_lead_s=TAKEOVER_LEAD_WALL_S * SPEED),
        ),
        wall_clock=time.monotonic,
    )


def _edge_settings(
    broker_port: int, bus_port: int, buffer: Path, hosted: Intersections, trust: Path
) -> EdgeSettings:
    return EdgeSettings(
        region=REGION,
        intersections=hosted,
        broker=BrokerSettings(
            host="127.0.0.1", port=broker_port, client_id_prefix="edge",
            reconnect_min_s=0.2, reconnect_max_s=1.0, keepalive_s=5,
        ),
        controller=ControllerSettings(host="127.0.0.1", port=bus_port, poll_hz=20.0),
        telemetry=TelemetrySettings(period_s=0.5),
        buffer=BufferSettings(path=buffer),
        trust=TrustSettings(store=trust),
        log=LogSettings(level="warning"),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def system(
    broker_port: int,
    tmp_path: Path,
    writer: TelemetryWriter,
    *,
    hosted: Intersections = "all",
    ready: Iterable[str] | None = None,
) -> AsyncIterator[System]:
    """The arterial live: field bus (paced), edges for ``hosted``, the leader with its sinks on
    ``writer`` and its API. Yields once every intersection in ``ready`` (default: all) has
    reported; stops everything on the way out (the writer stays open for the test to flush)."""
    road = _road()
    scenario = build(road, level=Level.MODERATE, duration_s=DEPART_S + 600.0, seed=5,
                     ambulance_at_s=DEPART_S)  # fmt: skip
    run = Run(scenario.net, scenario.trips)
    run.advance(DEPART_S - 30.0)
    vehicle = scenario.trips.count - 1
    start = int(scenario.trips.route_start[vehicle])
    links = [
        road.network.link_by_id[run.net.link_ids[int(i)]]
        for i in scenario.trips.route_links[start : start + int(scenario.trips.route_len[vehicle])]
    ]
    route = [links[0].from_node, *(link.to_node for link in links)]
    bus = FieldBusServer(run, speed=SPEED)
    bus_port = await bus.start()
    core = _core(road, float(scenario.trips.speed_factor[vehicle]))
    keys = Keyring(tmp_path / "keys")
    keys.create()
    service = CloudService(
        core,
        signer=keys.signer(),
        settings=ServiceSettings(broker_port=broker_port, client_id="cloud-leader", region=REGION),
        storage=writer,
        clock=ControllerClock(rate=SPEED),
    )
    stop = asyncio.Event()
    agents: list[EdgeAgent] = []
    edges = asyncio.create_task(
        run_host(_edge_settings(broker_port, bus_port, tmp_path / "edge-buffer", hosted,
                                keys.trust_store), stop, started=agents.extend)
    )  # fmt: skip
    cloud = asyncio.create_task(service.run(stop))
    tokens = tmp_path / "api-tokens.json"
    token = add_user(tokens, "dispatch", UserRole.OPERATOR, caps={"medical": 8})
    api = await serve_api(service, "127.0.0.1", 0, tokens=TokenFile(tokens))
    host, port = api.addresses[0][:2]
    try:
        waiting = set(core.seen) if ready is None else set(ready)
        await until(
            lambda: all(core.seen[n].telemetry is not None for n in waiting), 20.0, "telemetry"
        )
        yield System(run, core, service, agents, f"http://{host}:{port}", broker_port, vehicle,
                     route, token)  # fmt: skip
    finally:
        stop.set()
        await api.cleanup()
        await asyncio.wait_for(edges, 15.0)
        await asyncio.wait_for(cloud, 15.0)
        await bus.stop()


async def _retained(port: int, topic: str, timeout_s: float = 5.0) -> bytes:
    """What a fresh subscriber is given on ``topic`` (the retained message)."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"fresh-{time.monotonic_ns()}",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:  # fmt: skip
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                assert message.retain
                return bytes(message.payload)
    raise AssertionError(f"nothing retained on {topic}")


class Plans:
    """Collects the plans the cloud publishes to the given intersections."""

    def __init__(self, port: int, nodes: Iterable[str]) -> None:
        self.port, self.nodes = port, list(nodes)
        self.got: dict[str, list[SignalPlan]] = {n: [] for n in self.nodes}
        self.subscribed = asyncio.Event()

    async def listen(self) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, identifier="plan-listener",
            protocol=aiomqtt.ProtocolVersion.V311,
        ) as client:  # fmt: skip
            for node in self.nodes:
                await client.subscribe(intersection_topic(TopicKind.PLAN, REGION, node), qos=1)
            self.subscribed.set()
            async for message in client.messages:
                plan = DEFAULT_CODEC.decode(bytes(message.payload), SignalPlan)
                self.got[plan.intersection].append(plan)


# ---- 1. a corridor end to end ---------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.db
def test_a_corridor_end_to_end_with_every_message_stored_and_every_plan_audited(
    mosquitto: Any, postgres: Any, tmp_path: Path
) -> None:
    """A corridor requested through the API is driven to ``completed`` by the ambulance's
    positions; every plan is acked; the database holds exactly the telemetry the service took
    and the plan audit trail with the acks; a late subscriber is told the final state."""
    dsn = postgres.create_database()

    async def scenario() -> None:
        store = await PostgresStore.open(dsn)
        try:
            async with TelemetryWriter(store) as writer:
                async with system(mosquitto.port, tmp_path, writer) as s:
                    core, service = s.core, s.service
                    granted = await s.request_corridor()
                    corridor_id = granted.corridor_id
                    assert granted.state is CorridorState.GRANTED
                    assert granted.route == ("a01", "a02", "a03")
                    async with s.ambulance():
                        await until(
                            lambda: (
                                core.manager.corridors[corridor_id].state is CorridorState.COMPLETED
                            ),
                            40.0,
                            "corridor completed",
                        )
                        # the releases sent at completion are acknowledged too
                        await until(lambda: not core.pending, 10.0, "every plan acked")
                    retained = await _retained(mosquitto.port, corridor_status_topic(corridor_id))
                    final = DEFAULT_CODEC.decode(retained, CorridorStatus)
                    assert final.state is CorridorState.COMPLETED
                    assert all(i.actual_arrival is not None for i in final.intersections)
                await writer.flush()
                counted = service.counters["telemetry"]
                assert counted > 0
                assert await store.count_telemetry() == counted
                assert (writer.dropped, writer.duplicates) == (0, 0)

                plans_sent = core.counters["plans_sent"]
                assert plans_sent >= 6, "a priority plan and a release for each junction"
                assert service.counters["plans_sent"] == plans_sent
                assert core.counters["plans_resent"] == 0
                # Every plan is accepted by its edge; the cabinet behind it may still refuse one
                # that replaces a running plan (the twin/cabinet divergence pinned by
                # test_the_twin_takes_a_plan_replacing_a_running_one_as_the_cabinet_does), and
                # its `rejected` then follows the edge's `accepted`.
                refused = core.counters["acks_rejected"]
                assert core.counters["acks_expired"] == 0
                assert core.counters["acks_unmatched"] == refused
                acked = core.counters["acks_accepted"] + core.counters["acks_released"]
                assert acked >= plans_sent  # a release is acked `released`, not `accepted`
                assert service.counters["acks"] >= plans_sent

                audit = await store.plan_audit(corridor_id)
                assert len(audit) == plans_sent
                assert {r.plan.intersection for r in audit} == {"a01", "a02", "a03"}
                for record in audit:
                    statuses = [a.ack.status for a in record.acks]
                    assert statuses, f"{record.plan.plan_id} has no ack in the audit"
                    if record.plan.kind is PlanKind.RELEASE:
                        assert AckStatus.RELEASED in statuses
                    else:
                        assert statuses[0] is AckStatus.ACCEPTED
                        assert AckStatus.APPLIED in statuses or AckStatus.REJECTED in statuses
                    assert all(
                        a.ack.reason for a in record.acks if a.ack.status is AckStatus.REJECTED
                    )
                    assert all(a.ack.plan_id == record.plan.plan_id for a in record.acks)
                stored = await store.corridor(corridor_id)
                assert stored is not None
                assert stored.state is CorridorState.COMPLETED
        finally:
            await store.close()

    asyncio.run(scenario())


# ---- 2. a database restart ------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.db
def test_a_database_restart_mid_run_loses_no_telemetry_and_health_shows_it(
    mosquitto: Any, postgres_own: Any, tmp_path: Path
) -> None:
    """PostgreSQL is stopped (fast: every client cut off) for a few seconds while the edges
    stream and started again: the service reports itself degraded (database away) meanwhile
    and healthy after, and once flushed every message it took is stored, none dropped."""
    server = postgres_own

    async def scenario() -> None:
        store = await PostgresStore.open(server.dsn(), StoreSettings(timeout_s=1.0))
        reports: list[HealthReport] = []
        try:
            settings = WriterSettings(max_delay_s=0.05, retry_max_s=0.5)
            async with TelemetryWriter(store, settings) as writer:
                async with system(mosquitto.port, tmp_path, writer) as s:
                    service = s.service

                    async def watch() -> None:
                        while True:
                            reports.append(await service.health())
                            await asyncio.sleep(0.05)

                    watcher = asyncio.create_task(watch())
                    try:
                        await until(lambda: writer.written >= 10 and bool(reports), 10.0, "rows")
                        assert reports[-1].status is Health.OK
                        await asyncio.to_thread(server.stop)
                        before = service.counters["telemetry"]
                        await until(lambda: not writer.available, 5.0, "outage noticed")
                        await asyncio.sleep(2.0)
                        during = service.counters["telemetry"] - before
                        assert during >= 10, "the edges kept streaming to the service"
                        await asyncio.to_thread(server.start)
                        await until(
                            lambda: writer.available and writer.pending < 20,
                            20.0,
                            "backlog written after the restart",
                        )
                        await asyncio.sleep(0.5)  # a little more telemetry after the outage
                    finally:
                        watcher.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await watcher
                await asyncio.wait_for(writer.flush(), 20.0)
                assert writer.retries > 0, "the writer never saw the database go away"
                assert writer.dropped == 0
                assert writer.pending == 0
                received = service.counters["telemetry"]
                assert await store.count_telemetry() == received
                assert writer.written - writer.duplicates == received
        finally:
            await store.close()
        statuses = [r.status for r in reports]
        down = [i for i, r in enumerate(reports) if not r.database]
        assert down, "health never showed the database away"
        assert all(reports[i].status is Health.DEGRADED for i in down)
        assert max(reports[i].telemetry_backlog for i in down) > 0
        assert reports[-1].database, "the database not back in health"
        assert statuses[-1] is Health.OK, "not healthy again"
        assert statuses[0] is Health.OK

    asyncio.run(scenario())


# ---- 3. garbage on every topic ----------------------------------------------------------------


def _topic(kind: TopicKind, node: str) -> str:
    return f"cb/v1/{REGION}/x/{node}/{kind}"


@contextlib.asynccontextmanager
async def publisher(port: int, name: str = "test-publisher") -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=name, protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        yield client


KINDS = ("malformed", "oversized", "invalid", "unknown_intersection")
"""Reasons of refusal the garbage below meets."""


def _rejected(service: CloudService) -> dict[str, int]:
    return {kind: service.counters[f"rejected_{kind}"] for kind in KINDS}


@pytest.mark.broker
def test_malformed_oversized_and_unknown_messages_are_counted_dropped_and_survived(
    mosquitto: Any, tmp_path: Path
) -> None:
    """Garbage bytes, JSON of the wrong shape, a 100 KB body, messages from an intersection the
    network does not have and topics outside the contract, on every topic the service takes:
    each is counted by kind and dropped (nothing stored, nothing audited), and the service
    carries on: telemetry keeps arriving and a corridor can still be granted and sent."""

    async def scenario() -> None:
        store = MemoryStore()
        async with TelemetryWriter(store) as writer:
            async with system(mosquitto.port, tmp_path, writer) as s:
                service, core = s.service, s.core
                stranger = Telemetry(intersection="zz99", controller_time=s.run.now, seq=1)
                bad_topic_position = DEFAULT_CODEC.encode(
                    VehiclePosition(vehicle="AMB-9", time=s.run.now, link="a01-a02",
                                    offset_m=1.0, speed_mps=10.0)
                )  # fmt: skip
                bad: list[tuple[str, bytes, str]] = [
                    (_topic(TopicKind.TELEMETRY, "a01"), b"\xff\xfe\x00 not json", "malformed"),
                    (_topic(TopicKind.TELEMETRY, "a02"), b'{"v": 1, "seq": "one"}', "malformed"),
                    (_topic(TopicKind.STATUS, "a02"),
                     b'{"v": 1, "intersection": 7, "presence": "maybe"}', "malformed"),
                    (_topic(TopicKind.ACK, "a03"), b"[]", "malformed"),
                    (_topic(TopicKind.ACK, "a03"),
                     b'{"v": 1, "pad": "' + b"x" * 100_000 + b'"}', "oversized"),
                    (_topic(TopicKind.TELEMETRY, "a01"), b" " * 100_000, "oversized"),
                    (vehicle_position_topic("AMB-9"), b'{"vehicle": ["AMB-9"]}', "malformed"),
                    (vehicle_position_topic("AMB-9"), b"\x00" * 10, "malformed"),
                    (_topic(TopicKind.TELEMETRY, "zz99"), DEFAULT_CODEC.encode(stranger),
                     "unknown_intersection"),
                    (_topic(TopicKind.STATUS, "zz99"),
                     DEFAULT_CODEC.encode(Status(intersection="zz99", presence=Presence.ONLINE)),
                     "unknown_intersection"),
                    # topics the subscriptions match but the contract does not allow
                    ("cb/v1/test/x/no such!/telemetry", DEFAULT_CODEC.encode(stranger),
                     "malformed"),
                    ("cb/v1/vehicle/" + "V" * 100 + "/position", bad_topic_position,
                     "malformed"),
                ]  # fmt: skip
                expected = dict.fromkeys(KINDS, 0)
                for _, _, kind in bad:
                    expected[kind] += 1
                assert _rejected(service) == dict.fromkeys(KINDS, 0)
                stored_before = service.counters["telemetry"]
                async with publisher(mosquitto.port) as client:
                    for topic, payload, _ in bad:
                        await client.publish(topic, payload, qos=1)
                await until(
                    lambda: sum(_rejected(service).values()) >= len(bad), 10.0, "all counted"
                )
                # a topic outside the contract altogether, handed in directly
                await service.handle("elsewhere/x/a01/telemetry", b"{}")
                expected["malformed"] += 1
                assert _rejected(service) == expected
                assert service.counters["acks"] == 0
                assert service.connected.is_set()
                # it carries on: telemetry still arrives, a corridor is granted and sent
                await until(
                    lambda: service.counters["telemetry"] >= stored_before + 12,
                    10.0,
                    "telemetry after the garbage",
                )
                granted = await s.request_corridor()
                assert granted.state is CorridorState.GRANTED
                await until(
                    lambda: core.counters["acks_accepted"] >= 3 and not core.pending,
                    10.0,
                    "the corridor's plans acked",
                )
                assert _rejected(service) == expected
            await writer.flush()
        stored = {node for node, _ in store.telemetry}
        assert stored == {"a01", "a02", "a03"}
        assert len(store.telemetry) == service.counters["telemetry"]
        assert {a.ack.intersection for a in store.acks.values()} <= {"a01", "a02", "a03"}
        assert all(p.plan.corridor_id == granted.corridor_id for p in store.plans.values())

    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 120.0)

    asyncio.run(bounded())


# ---- 4. an edge that never acknowledges -----------------------------------------------------


@pytest.mark.broker
def test_an_edge_that_never_acks_is_resent_fresh_plans_then_planned_around(
    mosquitto: Any, tmp_path: Path
) -> None:
    """a02's "edge" is the test: it streams telemetry and never acknowledges. The cloud sends
    it the plan again as a new plan (fresh ``seq``) every ``ack_timeout_s``; after
    ``send_attempts`` it marks a02 unconfirmed and sends it nothing more but a release (its
    edge may run the plan with only its acks lost), while the corridor goes on: a01 and a03
    get their plans and acknowledge them, and the ambulance arrives."""
    silent = "a02"

    async def scenario() -> None:
        store = MemoryStore()
        async with TelemetryWriter(store) as writer:
            async with system(
                mosquitto.port, tmp_path, writer, hosted=("a01", "a03"), ready=("a01", "a03")
            ) as s:
                core, attempts = s.core, s.core.settings.send_attempts
                plans = Plans(mosquitto.port, ["a01", silent, "a03"])
                listening = asyncio.create_task(plans.listen())

                async def fake_edge() -> None:
                    async with publisher(mosquitto.port, "fake-edge-a02") as client:
                        for seq in range(1, 100_000):
                            message = s.telemetry_for(silent, seq)
                            await client.publish(
                                _topic(TopicKind.TELEMETRY, silent), DEFAULT_CODEC.encode(message),
                                qos=1,
                            )  # fmt: skip
                            await asyncio.sleep(0.5)

                faking = asyncio.create_task(fake_edge())
                try:
                    await until(lambda: core.seen[silent].telemetry is not None, 5.0, "fake")
                    await asyncio.wait_for(plans.subscribed.wait(), 5.0)
                    granted = await s.request_corridor()
                    corridor_id = granted.corridor_id
                    assert granted.route == ("a01", "a02", "a03")
                    await until(
                        lambda: silent in core.manager.unconfirmed,
                        attempts * (core.settings.ack_timeout_s + 1.0) + 2.0,
                        "a02 marked unconfirmed",
                    )
                    assert core.counters["intersections_unconfirmed"] == 1
                    assert core.counters["plans_resent"] >= attempts - 1
                    await until(lambda: len(plans.got[silent]) > attempts, 3.0, "resends seen")
                    sent = plans.got[silent][:attempts]
                    assert [p.seq for p in sent] == list(range(1, attempts + 1))
                    assert len({p.plan_id for p in sent}) == attempts
                    assert all(p.kind is PlanKind.PRIORITY for p in sent)
                    assert all(p.corridor_id == corridor_id for p in sent)
                    async with s.ambulance():
                        await until(
                            lambda: (
                                core.manager.corridors[corridor_id].state is CorridorState.COMPLETED
                            ),
                            40.0,
                            "corridor completed",
                        )
                        await until(lambda: not core.pending, 10.0, "the others' acks")
                    after = plans.got[silent][attempts:]
                    assert after, "a02 was not released"
                    assert all(p.kind is PlanKind.RELEASE for p in after), "a02 sent plans again"
                    assert silent in core.manager.unconfirmed
                    await writer.flush()
                    for node in ("a01", "a03"):
                        got = plans.got[node]
                        assert got, f"{node} got no plan"
                        assert got[-1].kind is PlanKind.RELEASE
                        acked = {
                            a.ack.plan_id for a in store.acks.values() if a.ack.intersection == node
                        }
                        assert {p.plan_id for p in got} <= acked, f"{node} not acked"
                    final = core.manager.status(corridor_id, s.service.clock.now())
                    lines = {i.intersection: i for i in final.intersections}
                    assert not lines[silent].confirmed
                    assert all(i.actual_arrival is not None for i in final.intersections)
                finally:
                    for task in (faking, listening):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await task
            await writer.flush()
        # acks in the audit trail only from the real edges
        assert {a.ack.intersection for a in store.acks.values()} == {"a01", "a03"}

    asyncio.run(scenario())


# ---- 5. ingest workers on a shared subscription ---------------------------------------------


@contextlib.asynccontextmanager
async def running(
    port: int,
    store: TelemetryStore,
    *,
    client_id: str,
    role: Role = Role.LEADER,
    share_group: str | None = None,
    region: str = REGION,
) -> AsyncIterator[tuple[CloudService, TelemetryWriter]]:
    """A service on its own (no simulator, no edges): the test plays every other part. Its
    writer is flushed before the service is handed back stopped."""
    service = CloudService(
        _core(_road()),
        signer=SIGNER,
        settings=ServiceSettings(broker_port=port, client_id=client_id, role=role,
                                 share_group=share_group, region=region),
        clock=ControllerClock(rate=1.0),
    )  # fmt: skip
    stop = asyncio.Event()
    async with TelemetryWriter(store, WriterSettings(max_delay_s=0.05)) as writer:
        service.telemetry_sink, service.audit_sink = writer_sinks(
            writer, backpressure=role is Role.INGEST
        )
        service.storage, service.history = writer, writer.store
        task = asyncio.create_task(service.run(stop))
        try:
            await asyncio.wait_for(service.connected.wait(), 10.0)
            yield service, writer
        finally:
            stop.set()
            await asyncio.wait_for(task, 15.0)
            await writer.flush()


def _known_telemetry(count: int, t0: float = 1000.0) -> list[Telemetry]:
    """``count`` messages for the arterial's junctions, each with its own (intersection, seq)."""
    nodes = ("a01", "a02", "a03")
    return [
        Telemetry(intersection=nodes[i % 3], controller_time=t0 + i * 0.1, seq=i + 1)
        for i in range(count)
    ]


@pytest.mark.broker
@pytest.mark.db
def test_two_ingest_workers_split_a_shared_subscription_with_no_loss_or_duplicate(
    mosquitto: Any, postgres: Any
) -> None:
    """Two ``ingest`` workers on ``$share/ingest/...``, each with its own writer and
    connection pool into the same database, no leader. N telemetry messages (QoS 1) are split
    between them by Mosquitto; the database ends with exactly N."""
    dsn = postgres.create_database()
    total = 600

    async def scenario() -> None:
        stores = [await PostgresStore.open(dsn), await PostgresStore.open(dsn)]
        try:
            async with (
                running(mosquitto.port, stores[0], client_id="ingest-1", role=Role.INGEST,
                        share_group="ingest", region="+") as (one, _),
                running(mosquitto.port, stores[1], client_id="ingest-2", role=Role.INGEST,
                        share_group="ingest", region="+") as (two, _),
            ):  # fmt: skip
                async with publisher(mosquitto.port) as client:
                    for message in _known_telemetry(total):
                        topic = _topic(TopicKind.TELEMETRY, message.intersection)
                        await client.publish(topic, DEFAULT_CODEC.encode(message), qos=1)
                await until(
                    lambda: one.counters["telemetry"] + two.counters["telemetry"] >= total,
                    15.0,
                    "every message taken",
                )
            counts = (one.counters["telemetry"], two.counters["telemetry"])
            assert min(counts) > 0, f"one worker took everything: {counts}"
            assert sum(counts) == total, f"{counts}: a message taken twice"
            assert await stores[0].count_telemetry() == total
            assert all(s.counters["rejected_malformed"] == 0 for s in (one, two))
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


@pytest.mark.broker
@pytest.mark.db
def test_a_stopped_ingest_worker_leaves_its_share_to_the_others(
    mosquitto: Any, postgres: Any
) -> None:
    """Found by the ingest benchmark: with persistent sessions Mosquitto kept dealing a stopped
    worker its turn of the shared subscription, and those messages never reached the
    database. A worker that stops now takes no share: the one left takes everything."""
    dsn = postgres.create_database()
    total = 400

    async def scenario() -> None:
        stores = [await PostgresStore.open(dsn), await PostgresStore.open(dsn)]
        try:
            async with running(mosquitto.port, stores[1], client_id="ingest-2", role=Role.INGEST,
                               share_group="ingest", region="+") as (two, _):  # fmt: skip
                async with running(mosquitto.port, stores[0], client_id="ingest-1",
                                   role=Role.INGEST, share_group="ingest",
                                   region="+") as (one, _):  # fmt: skip
                    assert one.connected.is_set()
                async with publisher(mosquitto.port) as client:
                    for message in _known_telemetry(total):
                        topic = _topic(TopicKind.TELEMETRY, message.intersection)
                        await client.publish(topic, DEFAULT_CODEC.encode(message), qos=1)
                await until(lambda: two.counters["telemetry"] >= total, 15.0, "all taken by two")
            assert one.counters["telemetry"] == 0
            assert await stores[1].count_telemetry() == total
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


# ---- bugs found on the way (fixed; each test keeps it fixed) --------------------------------


async def _publish(port: int, messages: Iterable[tuple[str, bytes]]) -> None:
    async with publisher(port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def _telemetry_message(node: str, seq: int, at: float, region: str = REGION) -> tuple[str, bytes]:
    message = Telemetry(intersection=node, controller_time=at, seq=seq)
    return f"cb/v1/{region}/x/{node}/telemetry", DEFAULT_CODEC.encode(message)


def _request(vehicle: str, now: float) -> CorridorRequest:
    return CorridorRequest(
        vehicle=vehicle, origin="a01s", route=("a01s", "a01", "a02", "a03", "east"),
        requester="test", requested_at=now,
    )  # fmt: skip


@pytest.mark.broker
def test_an_ack_from_an_unknown_intersection_is_refused_and_not_audited(mosquitto: Any) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with running(mosquitto.port, store, client_id="leader") as (service, _):
            ack = PlanAck(plan_id="forged", intersection="zz99", seq=1,
                          status=AckStatus.ACCEPTED, at=1000.0)  # fmt: skip
            await _publish(
                mosquitto.port, [(_topic(TopicKind.ACK, "zz99"), DEFAULT_CODEC.encode(ack))]
            )
            await until(
                lambda: (
                    service.counters["acks"] + service.counters["rejected_unknown_intersection"] > 0
                ),
                5.0,
                "the ack handled",
            )
        assert service.counters["rejected_unknown_intersection"] == 1
        assert service.counters["acks"] == 0
        assert not store.acks

    asyncio.run(scenario())


@pytest.mark.broker
def test_refused_telemetry_does_not_move_the_controller_clock(mosquitto: Any) -> None:
    """A message from an intersection the network does not have is refused, yet its time
    (an hour ahead) becomes the cloud's controller time for everyone."""

    async def scenario() -> None:
        async with running(mosquitto.port, MemoryStore(), client_id="leader") as (service, _):
            await _publish(mosquitto.port, [_telemetry_message("a01", 1, 1000.0)])
            await until(lambda: service.counters["telemetry"] == 1, 5.0, "a01 taken")
            await _publish(mosquitto.port, [_telemetry_message("zz99", 1, 1000.0 + 3600.0)])
            await until(
                lambda: service.counters["rejected_unknown_intersection"] == 1, 5.0, "zz99 refused"
            )
            assert service.clock.now() < 1000.0 + 10.0

    asyncio.run(scenario())


@pytest.mark.broker
def test_telemetry_the_database_cannot_hold_is_refused_before_it_changes_anything(
    mosquitto: Any,
) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with running(mosquitto.port, store, client_id="leader") as (service, _):
            await _publish(mosquitto.port, [_telemetry_message("a01", 1, 1000.0)])
            await until(lambda: service.counters["telemetry"] == 1, 5.0, "a01 taken")
            await _publish(mosquitto.port, [_telemetry_message("a01", 2, 1e12)])
            await until(lambda: service.counters["rejected_invalid"] == 1, 5.0, "refused")
            clock = service.clock.now()
        assert service.counters["telemetry"] == len(store.telemetry) == 1
        assert clock < 1000.0 + 10.0

    asyncio.run(scenario())


@pytest.mark.broker
def test_a_refused_message_does_not_decide_where_plans_go(mosquitto: Any) -> None:
    """Region '+' (the CLI's default): the cloud learns each edge's region from its topics.
    Garbage on ``cb/v1/evil/x/a01/telemetry`` arrives before a01's edge speaks; a01's plans
    must still go to the region its edge publishes telemetry in."""

    async def scenario() -> None:
        async with running(mosquitto.port, MemoryStore(), client_id="leader", region="+") as (
            service,
            _,
        ):
            await _publish(
                mosquitto.port,
                [
                    ("cb/v1/evil/x/a01/telemetry", b"garbage"),
                    _telemetry_message("zz99", 1, 1000.0, region="evil"),
                    *(_telemetry_message(n, 1, 1000.0) for n in ("a01", "a02", "a03")),
                ],
            )
            await until(lambda: service.counters["telemetry"] == 3, 5.0, "telemetry taken")
            assert service.regions.get("a01") == REGION
            assert "zz99" not in service.regions

    asyncio.run(scenario())


@pytest.mark.broker
def test_a_corridor_through_a_silent_intersection_does_not_stop_the_service(
    mosquitto: Any,
) -> None:
    """Region '+': a02's edge has not published anything since the cloud started. A corridor
    through it is still granted (a02 is planned around once it does not acknowledge) and the
    service keeps running."""

    async def scenario() -> None:
        async with running(mosquitto.port, MemoryStore(), client_id="leader", region="+") as (
            service,
            _,
        ):
            await _publish(
                mosquitto.port, [_telemetry_message(n, 1, 1000.0) for n in ("a01", "a03")]
            )
            await until(lambda: service.counters["telemetry"] == 2, 5.0, "telemetry taken")
            outcome: CorridorStatus | Exception
            try:
                outcome = await service.request_corridor(_request("AMB-7", service.clock.now()))
            except Exception as error:  # reported below, after the tick ran
                outcome = error
            await asyncio.sleep(1.5)  # past the ack timeout: the tick resends
            alive = service.connected.is_set()
            assert isinstance(outcome, CorridorStatus), f"request refused: {outcome!r}"
            assert outcome.state is CorridorState.GRANTED
            assert alive, "the service stopped"

    asyncio.run(scenario())


@pytest.mark.broker
@pytest.mark.db
def test_an_ingest_worker_refuses_telemetry_from_unknown_intersections(
    mosquitto: Any, postgres: Any
) -> None:
    dsn = postgres.create_database()

    async def scenario() -> None:
        store = await PostgresStore.open(dsn)
        try:
            async with running(mosquitto.port, store, client_id="ingest-1", role=Role.INGEST,
                               share_group="ingest", region="+") as (worker, _):  # fmt: skip
                await _publish(
                    mosquitto.port,
                    [_telemetry_message("a01", 1, 1000.0), _telemetry_message("zz99", 1, 1000.0)],
                )
                await until(
                    lambda: (
                        worker.counters["telemetry"]
                        + worker.counters["rejected_unknown_intersection"]
                        >= 2
                    ),
                    5.0,
                    "both handled",
                )
            assert worker.counters["rejected_unknown_intersection"] == 1
            assert await store.count_telemetry() == 1
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.broker
def test_a_message_whose_body_names_another_intersection_is_refused(mosquitto: Any) -> None:
    async def scenario() -> None:
        async with running(mosquitto.port, MemoryStore(), client_id="leader") as (service, _):
            message = Telemetry(intersection="a02", controller_time=1000.0, seq=1)
            await _publish(
                mosquitto.port,
                [(_topic(TopicKind.TELEMETRY, "a01"), DEFAULT_CODEC.encode(message))],
            )
            await until(
                lambda: (
                    service.counters["telemetry"] + service.counters["rejected_wrong_intersection"]
                    > 0
                ),
                5.0,
                "handled",
            )
            assert service.counters["rejected_wrong_intersection"] == 1
            assert service.core.seen["a02"].telemetry is None

    asyncio.run(scenario())


@pytest.mark.broker
def test_an_ack_with_an_unstorable_time_does_not_mark_the_database_away(mosquitto: Any) -> None:
    async def scenario() -> None:
        async with running(mosquitto.port, MemoryStore(), client_id="leader") as (service, _):
            ack = PlanAck(plan_id="p1", intersection="a01", seq=1, status=AckStatus.ACCEPTED,
                          at=1e12)  # fmt: skip
            await _publish(
                mosquitto.port, [(_topic(TopicKind.ACK, "a01"), DEFAULT_CODEC.encode(ack))]
            )
            await until(
                lambda: service.counters["acks"] + service.counters["rejected_invalid"] > 0,
                5.0,
                "handled",
            )
            report = await service.health()
            assert report.database, "a bad ack marked the database away"
            assert report.status is Health.OK

    asyncio.run(scenario())


def _window_plan(
    seq: int, valid_from: float, valid_until: float, opens: float, closes: float
) -> SignalPlan:
    return SignalPlan(
        plan_id=f"C1-AMB-1-a02-{seq}", intersection="a02", seq=seq, issued_at=valid_from - 0.8,
        valid_from=valid_from, valid_until=valid_until, corridor_id="C1-AMB-1",
        windows=(GreenWindow(signal_group="2", open_at=opens, close_at=closes),),
    )  # fmt: skip


def test_the_twin_takes_a_plan_replacing_a_running_one_as_the_cabinet_does() -> None:
    """Pure, the deterministic form of what the end-to-end corridor meets in about a third of
    its runs (the cabinet refuses a02's third plan). The plans are the ones the cloud sent a02
    in such a run; the cloud's twin is commanded at each plan's ``valid_from``, the cabinet
    0.8 s (the takeover lead) before, as the edge hands plans over ahead of their takeover.
    Same plans, same takeovers: both must come to the same verdicts."""
    plan = _road().plans["a02"]
    messages = [
        _window_plan(1, 274.852, 353.174, 314.329, 333.174),
        _window_plan(2, 301.800, 353.174, 320.444, 333.174),
        _window_plan(3, 311.800, 359.107, 326.713, 339.107),
    ]
    twin, cabinet = ControllerModel(plan), ControllerModel(plan)
    verdicts = []
    for message in messages:
        early = message.valid_from - 0.8
        cabinet.update(early)
        told = cabinet.command(message, early).status
        twin.update(message.valid_from)
        verdicts.append((twin.command(message, message.valid_from).status, told))
    assert verdicts == [(AckStatus.ACCEPTED, AckStatus.ACCEPTED)] * 3


def test_a_publish_that_swallows_its_cancel_does_not_keep_the_session_open() -> None:
    """aiomqtt waits for a PUBACK with asyncio.wait_for, which on Python 3.11 returns normally
    when the PUBACK lands together with a cancel: the publishers must still stop, or the
    service never shuts down (found as a hang at the end of an end-to-end test)."""

    class SwallowingClient:
        published = 0

        async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60.0)
            self.published += 1

    async def scenario() -> None:
        service = CloudService(
            _core(_road()), signer=SIGNER, settings=ServiceSettings(client_id="t", region="test")
        )
        client = SwallowingClient()
        for n in range(3):
            service._enqueue(f"t/{n}", b"x", retain=False)
        sending = asyncio.create_task(service._send(client))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        sending.cancel()
        done, _ = await asyncio.wait({sending}, timeout=2.0)
        assert done, "the publishers ignored the cancel"
        assert client.published == 3

    asyncio.run(scenario())


def test_statuses_within_a_state_are_coalesced_and_a_change_of_state_goes_out_at_once() -> None:
    """Each of a corridor's acks updates its status: the retained topic gets the latest every
    ``status_every_s`` instead of one publish (and one audit row) per ack."""
    from citybrain.cloud.corridor import PublishStatus

    def status(state: CorridorState, at: float) -> PublishStatus:
        return PublishStatus(CorridorStatus(corridor_id="C1", vehicle="AMB-1", state=state,
                                            priority=5, updated_at=at))  # fmt: skip

    async def scenario() -> None:
        settings = ServiceSettings(client_id="t", region="test", status_every_s=0.05)
        service = CloudService(_core(_road()), signer=SIGNER, settings=settings)
        sent: list[CorridorStatus] = []

        def drain() -> None:
            while not service._outgoing.empty():
                sent.append(DEFAULT_CODEC.decode(service._outgoing.get_nowait()[1], CorridorStatus))

        service._apply([status(CorridorState.GRANTED, 1.0)])
        service._apply([status(CorridorState.GRANTED, float(t)) for t in range(2, 22)])
        drain()
        assert [s.updated_at for s in sent] == [1.0], "the first of a state goes out at once"
        await asyncio.sleep(0.1)
        drain()
        assert [s.updated_at for s in sent] == [1.0, 21.0], "then only the latest"
        service._apply([status(CorridorState.GRANTED, 22.0), status(CorridorState.CANCELLED, 23.0)])
        drain()
        assert [s.state for s in sent][-1] is CorridorState.CANCELLED
        await asyncio.sleep(0.1)
        drain()
        assert [s.updated_at for s in sent] == [1.0, 21.0, 23.0], "the older update is dropped"

    asyncio.run(scenario())


def test_messages_the_incoming_queue_refuses_are_counted_and_degrade_the_health() -> None:
    """Found by the ingest benchmark: past ``incoming_queue`` aiomqtt discarded messages with
    a log line only (paho had already acknowledged them to the broker)."""

    async def scenario() -> None:
        settings = ServiceSettings(client_id="t", incoming_queue=100)
        service = CloudService(_core(_road()), signer=SIGNER, settings=settings)
        queue = service._incoming_queue_type()(maxsize=100)
        message = aiomqtt.Message("t", b"x", qos=1, retain=False, mid=1, properties=None)
        for _ in range(103):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)
        assert service.counters["incoming_dropped"] == 3
        health = await service.health()
        assert health.status is Health.DEGRADED
        assert health.detail["incoming_dropped"] == "3"

    asyncio.run(scenario())
