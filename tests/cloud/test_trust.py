"""The cloud treats every input as possibly hostile, even from a party the broker let in: one
message cannot move its clock, a seq cannot leap, a position counts only for a vehicle with a
corridor, an intersection stays in its region, and no tick fails. Each attack below passed on
the code before (issue 11); every refusal is counted by its reason, and the health says when
the cloud is in trouble. Against a real Mosquitto with what ``citybrain security init``
writes (TLS, a password per identity, the ACL): the test plays edges, vehicles and attackers,
each with the identity the broker would let it have (an attacker here holds an edge box's or
a vehicle's credentials; strangers are the broker's to refuse: tests/citybrain/test_security.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore
from citybrain.cloud.operations import Health, ServiceUnavailable
from citybrain.cloud.service import CloudService, ServiceSettings
from citybrain.cloud_cli import SERVE_DEFAULTS
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import (
    MAX_SEQ,
    MAX_WINDOWS,
    AckStatus,
    ApproachState,
    CorridorRequest,
    CorridorState,
    Message,
    PlanAck,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.signing import PlanSigner
from citybrain.models.topics import vehicle_position_topic
from citybrain.security import LEADER, deployment, vehicle_user
from citybrain.simulator.networks import arterial

pytestmark = [pytest.mark.broker, pytest.mark.security]

ROAD = arterial(3, length_m=1200.0)
REGION = "test"
SIGNER = PlanSigner.generate()
T0 = 1000.0
"""Controller time of the genuine edges."""
DEPLOYMENT = deployment(
    "arterial:3", ["a01", "a02", "a03"], region=REGION, vehicles=("AMB-1", "AMB-9")
)
"""What the ``secure_mosquitto`` fixture deploys here: one box per intersection."""


async def until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


def _owner(where: str) -> str:
    """The identity that may publish on ``where``: the vehicle, or the intersection's box."""
    parts = where.split("/")
    return vehicle_user(parts[3]) if parts[2] == "vehicle" else f"edge-{parts[4]}"


@contextlib.asynccontextmanager
async def serving(broker: Any, **settings: Any) -> AsyncIterator[CloudService]:
    """A leader on its own: no storage, no edges (the test plays them)."""
    core = CloudCore(ROAD.network, ROAD.plans, wall_clock=time.monotonic)
    cloud = broker.layout.cloud
    options: dict[str, Any] = {
        "broker_port": broker.port, "client_id": "leader", "region": REGION, "tls": True,
        "ca_file": cloud / "ca.crt", "username": LEADER, "password_file": cloud / "leader.pass",
    }  # fmt: skip
    service = CloudService(
        core,
        signer=SIGNER,
        settings=ServiceSettings(**(options | settings)),
        clock=ControllerClock(rate=1.0),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.connected.wait(), 10.0)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15.0)


async def publish(broker: Any, messages: Iterable[tuple[str, Message | bytes]]) -> None:
    """Each message as the identity that may publish on its topic, in order."""
    for where, message in messages:
        async with broker.client(_owner(where)) as client:
            payload = message if isinstance(message, bytes) else DEFAULT_CODEC.encode(message)
            await client.publish(where, payload, qos=1)


def topic(node: str, kind: str, region: str = REGION) -> str:
    return f"cb/v1/{region}/x/{node}/{kind}"


def telemetry(node: str, seq: int, at: float = T0, queue: float = 1.0) -> tuple[str, Telemetry]:
    approaches = sorted(a.id for a in ROAD.network.approaches if a.intersection_id == node)
    message = Telemetry(
        intersection=node, controller_time=at, seq=seq,
        approaches=tuple(
            ApproachState(approach=a, queue_veh=queue, occupancy=0.1, flow_vph=100.0)
            for a in approaches
        ),
    )  # fmt: skip
    return topic(node, "telemetry"), message


async def every_edge_reports(service: CloudService, broker: Any, seq: int = 1) -> None:
    await publish(broker, [telemetry(node, seq) for node in ("a01", "a02", "a03")])
    await until(lambda: service.counters["telemetry"] >= 3, what="the edges' telemetry")


def request(vehicle: str = "AMB-1") -> CorridorRequest:
    return CorridorRequest(
        vehicle=vehicle, origin="west", route=("west", "a01", "a02", "a03", "east"),
        priority=5, requester="dispatch", requested_at=T0,
    )  # fmt: skip


def refused(service: CloudService, reason: str) -> int:
    return service.counters[f"rejected_{reason}"]


class Plans:
    """Every plan the cloud publishes, with its topic, as each box reads its own: no identity
    may read every intersection's plans."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.got: list[tuple[str, SignalPlan]] = []
        self.ready = 0

    async def listen(self, node: str) -> None:
        async with self.broker.client(f"edge-{node}") as client:
            await client.subscribe("cb/v1/+/x/+/plan", qos=1)
            self.ready += 1
            async for message in client.messages:
                plan = DEFAULT_CODEC.decode(bytes(message.payload), SignalPlan)
                self.got.append((message.topic.value, plan))


@contextlib.asynccontextmanager
async def listening(broker: Any) -> AsyncIterator[Plans]:
    plans = Plans(broker)
    tasks = [asyncio.create_task(plans.listen(node)) for node in ("a01", "a02", "a03")]
    try:
        await until(lambda: plans.ready == len(tasks), what="the boxes listening")
        yield plans
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- the clock ------------------------------------------------------------------------------


def test_one_telemetry_from_the_far_future_does_not_move_the_clock(secure_mosquitto: Any) -> None:
    """Before, a time of 2,000,000,000 became the cloud's clock for good: every plan after it
    was stale to the controllers, ``reporting`` fell to 0, and corridors still said granted."""

    async def scenario() -> None:
        async with serving(secure_mosquitto) as service, listening(secure_mosquitto) as plans:
            await every_edge_reports(service, secure_mosquitto)
            await publish(secure_mosquitto, [telemetry("a02", 2, at=2_000_000_000.0)])
            await until(lambda: service.counters["clock_disagreed"] == 1, what="disagreement")
            assert service.clock.now() < T0 + 2.0
            assert (await service.network()).reporting == 3
            granted = await service.request_corridor(request())
            assert granted.state is CorridorState.GRANTED
            await until(lambda: len(plans.got) >= 3, what="the corridor's plans")
            # an edge refuses a plan issued more than 30 s from its own clock (T0 and on)
            assert all(abs(plan.issued_at - T0) < 10.0 for _, plan in plans.got)
            assert all(plan.valid_from < T0 + 300.0 for _, plan in plans.got)

    asyncio.run(scenario())


def test_a_position_never_moves_the_clock_and_moves_only_its_own_corridor(
    secure_mosquitto: Any,
) -> None:
    """Before, anyone's position moved the clock (the first attack of issue 11), and forged
    positions drove another vehicle's corridor."""

    def position(vehicle: str, at: float) -> tuple[str, VehiclePosition]:
        body = VehiclePosition(
            vehicle=vehicle, time=at, link="west-a01", offset_m=10.0, speed_mps=15.0
        )
        return vehicle_position_topic(vehicle), body

    async def scenario() -> None:
        async with serving(secure_mosquitto) as service:
            await every_edge_reports(service, secure_mosquitto)
            granted = await service.request_corridor(request("AMB-1"))
            await publish(
                secure_mosquitto,
                [position("AMB-9", 2_000_000_000.0), position("AMB-1", 2_000_000_000.0)],
            )
            await until(lambda: refused(service, "position_time") == 1, what="refused")
            await until(lambda: refused(service, "fleet_position_time") == 1, what="quiet")
            assert service.clock.now() < T0 + 2.0
            corridor = service.core.manager.corridors[granted.corridor_id]
            assert corridor.state is CorridorState.GRANTED
            # another vehicle's true position is where it is, and moves nobody's corridor
            await publish(secure_mosquitto, [position("AMB-9", service.clock.now())])
            await until(lambda: "AMB-9" in service.core.fleet, what="AMB-9 placed")
            assert corridor.state is CorridorState.GRANTED
            true = position("AMB-1", service.clock.now())
            await publish(secure_mosquitto, [true])
            await until(lambda: corridor.state is CorridorState.ACTIVE, what="a true position")
            # recorded and sent again: it would have re-timed the corridor from where it was
            seen = corridor.seen
            await publish(secure_mosquitto, [true])
            await until(lambda: refused(service, "position_stale") == 1, what="replay refused")
            assert corridor.seen == seen

    asyncio.run(scenario())


# ---- telemetry seq ----------------------------------------------------------------------------


@pytest.mark.parametrize("forged", [MAX_SEQ, 1 + 1000], ids=["2**53-1", "a leap of 1000"])
def test_a_forged_seq_leap_is_refused_and_does_not_silence_the_intersection(
    secure_mosquitto: Any, forged: int
) -> None:
    """Before, seq 2**53-1 made every genuine message after it "old" (never stored, never
    planned with); a smaller leap injected fake queues."""

    async def scenario() -> None:
        async with serving(secure_mosquitto) as service:
            await every_edge_reports(service, secure_mosquitto)
            await publish(secure_mosquitto, [telemetry("a02", forged, queue=500.0)])
            await until(lambda: refused(service, "seq_jump") == 1, what="the leap refused")
            await publish(secure_mosquitto, [telemetry("a02", 2, queue=7.0)])
            await until(lambda: service.counters["telemetry"] == 4, what="a02 heard again")
            seen = service.core.seen["a02"].telemetry
            assert seen is not None
            assert seen.seq == 2
            assert max(a.queue_veh for a in seen.approaches) == 7.0

    asyncio.run(scenario())


# ---- regions ----------------------------------------------------------------------------------


def test_the_region_is_configured_by_default_the_one_the_demo_edges_use() -> None:
    assert ServiceSettings().region == SERVE_DEFAULTS["region"] == "live"


def test_a_status_from_another_region_does_not_re_home_an_intersection(
    secure_mosquitto: Any,
) -> None:
    """With ``+`` (before, the default) ``cb/v1/evil/x/a03/status`` re-homed a03: its plans
    went to the attacker's topic. Now a03 keeps the region of its first accepted message."""

    async def scenario() -> None:
        async with (
            serving(secure_mosquitto, region="+") as service,
            listening(secure_mosquitto) as plans,
        ):
            await every_edge_reports(service, secure_mosquitto)
            hijack = Status(intersection="a03", presence=Presence.ONLINE, at=T0)
            evil = topic("a03", "status", region="evil")
            # a03's own box may not write outside its region: the broker drops it (the
            # genuine status after it, on the same session's path, arrives)
            genuine = Status(intersection="a03", presence=Presence.ONLINE, at=T0)
            await publish(secure_mosquitto, [(evil, hijack), (topic("a03", "status"), genuine)])
            await until(lambda: service.core.seen["a03"].presence is Presence.ONLINE)
            assert refused(service, "region_mismatch") == 0
            # and if a broker let it through, the cloud refuses it itself
            await service.handle(evil, DEFAULT_CODEC.encode(hijack))
            assert refused(service, "region_mismatch") == 1
            assert service.regions["a03"] == REGION
            await service.request_corridor(request())
            await until(lambda: {p.intersection for _, p in plans.got} >= {"a01", "a02", "a03"})
            assert {where.split("/")[2] for where, _ in plans.got} == {REGION}

    asyncio.run(scenario())


def test_a_configured_region_refuses_any_other(secure_mosquitto: Any) -> None:
    async def scenario() -> None:
        async with serving(secure_mosquitto) as service:
            _, message = telemetry("a01", 1)
            await service.handle(
                topic("a01", "telemetry", region="evil"), DEFAULT_CODEC.encode(message)
            )
            assert refused(service, "region_mismatch") == 1
            assert service.core.seen["a01"].telemetry is None

    asyncio.run(scenario())


# ---- the window limit -------------------------------------------------------------------------


def test_a_corridor_past_the_window_limit_is_refused_and_no_tick_fails(
    secure_mosquitto: Any,
) -> None:
    """Before, the 33rd corridor over one intersection made a plan of 33 windows: every tick
    that dispatched failed (27 tracebacks), while the health said ``ok``."""

    async def scenario() -> None:
        async with serving(secure_mosquitto) as service:
            await every_edge_reports(service, secure_mosquitto)
            for n in range(MAX_WINDOWS):
                await service.request_corridor(request(f"V{n}"))
            with pytest.raises(ServiceUnavailable, match="windows"):
                await service.request_corridor(request("V-late"))
            # past the ack timeout the silent "edges" are sent their plans again
            await asyncio.sleep(1.5)
            assert service.core.counters["plans_resent"] > 0
            assert service.counters["tick_failed"] == 0
            assert (await service.health()).detail["recent_failures"] == "0"

    asyncio.run(scenario())


# ---- health -----------------------------------------------------------------------------------


def test_a_failing_tick_degrades_the_health_until_the_window_passes(secure_mosquitto: Any) -> None:
    async def scenario() -> None:
        async with serving(secure_mosquitto, trouble_window_s=1.0) as service:
            assert (await service.health()).status is Health.OK
            tick, failures = service.core.tick, iter([True])

            def failing(now_s: float) -> Any:
                if next(failures, False):
                    raise RuntimeError("a bug")
                return tick(now_s)

            service.core.tick = failing  # type: ignore[method-assign]
            await until(lambda: service.counters["tick_failed"] == 1, what="a tick failed")
            report = await service.health()
            assert report.status is Health.DEGRADED
            assert report.detail["recent_failures"] == "1"
            await asyncio.sleep(1.1)
            assert (await service.health()).status is Health.OK

    asyncio.run(scenario())


def test_a_burst_of_refusals_and_unmatched_acks_degrade_the_health(secure_mosquitto: Any) -> None:
    """Refusals of what changes nothing (redeliveries) are counted but make no burst."""

    async def scenario() -> None:
        async with serving(secure_mosquitto, trouble_window_s=1.0, rejection_burst=5) as service:
            await every_edge_reports(service, secure_mosquitto)
            await publish(secure_mosquitto, [telemetry("a01", 1)] * 10)
            await until(lambda: refused(service, "seq_old") == 10, what="redeliveries")
            assert (await service.health()).status is Health.OK
            await publish(secure_mosquitto, [(topic("a01", "telemetry"), b"garbage")] * 6)
            await until(lambda: refused(service, "malformed") == 6, what="garbage refused")
            assert (await service.health()).status is Health.DEGRADED
            await asyncio.sleep(1.1)
            assert (await service.health()).status is Health.OK
            forged = PlanAck(
                plan_id="nobody-sent-this", intersection="a01", seq=1,
                status=AckStatus.ACCEPTED, at=T0,
            )  # fmt: skip
            await publish(secure_mosquitto, [(topic("a01", "ack"), forged)])
            await until(lambda: service.core.counters["acks_unmatched"] == 1, what="the ack")
            report = await service.health()
            assert report.status is Health.DEGRADED
            assert report.detail["recent_acks_unmatched"] == "1"
            await asyncio.sleep(1.1)
            assert (await service.health()).status is Health.OK

    asyncio.run(scenario())


def test_the_health_counts_each_telemetry_message_once(secure_mosquitto: Any) -> None:
    async def scenario() -> None:
        async with serving(secure_mosquitto) as service:
            await every_edge_reports(service, secure_mosquitto)
            assert (await service.health()).detail["telemetry"] == "3"

    asyncio.run(scenario())
