"""The cloud survives faults: a broker that goes away mid-run (before, the receive task's
``MqttError`` reached ``CloudService.run`` wrapped in an ExceptionGroup and the cloud exited;
19.5 % of the telemetry sent during a 60 s outage never reached the cloud restarted by hand).

Mosquitto as ``citybrain security init`` configures it (TLS, an identity per party, the ACL,
persistence on); real edge agents (``edge/agent.py``, with their fake cabinets) of one box
stream telemetry at QoS 1 from persistent sessions and buffer it on disk while the broker is
away; the broker keeps the cloud's persistent session on disk. Nothing sent is lost, counted
by seq."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore
from citybrain.cloud.keys import Keyring
from citybrain.cloud.service import CloudService, Role, ServiceSettings
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
from citybrain.models.messages import CorridorRequest, SignalPlan, Telemetry
from citybrain.security import LEADER, deployment
from citybrain.simulator.networks import arterial

ROAD = arterial(3, length_m=1200.0)
NODES = ("a01", "a02", "a03")
REGION = "test"
BOX = "edge-all"
DEPLOYMENT = deployment("arterial:3", NODES, region=REGION, edge_boxes=[f"{BOX}={','.join(NODES)}"])
"""What the ``secure_mosquitto`` fixture deploys here: the three intersections on one box."""


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


def _edges(broker: Any, tmp_path: Path) -> EdgeSettings:
    box = broker.layout.edge(BOX)
    return EdgeSettings(
        region=REGION,
        intersections=NODES,
        broker=BrokerSettings(
            host="127.0.0.1", port=broker.port, client_id_prefix="edge", reconnect_min_s=0.2,
            reconnect_max_s=1.0, keepalive_s=5, tls=True, ca_file=box / "ca.crt",
            username=BOX, password_file=box / "broker.pass",
        ),
        controller=ControllerSettings(driver="fake", poll_hz=10.0),
        telemetry=TelemetrySettings(period_s=0.1),
        buffer=BufferSettings(path=tmp_path / "edge-buffer"),
        trust=TrustSettings(store=box / "trust.json"),
        log=LogSettings(level="warning"),
    )  # fmt: skip


class Received:
    """The telemetry the cloud took, by intersection (its storage sink)."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)

    async def __call__(self, message: Telemetry, received_at: float) -> None:
        self.seqs[message.intersection].append(message.seq)

    def newest(self, node: str) -> int:
        return max(self.seqs[node], default=0)


@contextlib.asynccontextmanager
async def city(broker: Any, tmp_path: Path) -> AsyncIterator[tuple[CloudService, list[EdgeAgent]]]:
    cloud = broker.layout.cloud
    service = CloudService(
        CloudCore(ROAD.network, ROAD.plans, wall_clock=time.monotonic),
        signer=Keyring(cloud / "keys").signer(),
        settings=ServiceSettings(
            broker_port=broker.port,
            client_id="cloud-leader",
            region=REGION,
            reconnect_max_s=2.0,
            tls=True,
            ca_file=cloud / "ca.crt",
            username=LEADER,
            password_file=cloud / "leader.pass",
        ),
        telemetry_sink=Received(),
        clock=ControllerClock(rate=1.0),
    )
    stop = asyncio.Event()
    cloud = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.connected.wait(), 10.0)
    agents: list[EdgeAgent] = []
    edges = asyncio.create_task(run_host(_edges(broker, tmp_path), stop, started=agents.extend))
    try:
        yield service, agents
    finally:
        stop.set()
        await asyncio.wait_for(edges, 20.0)
        await asyncio.wait_for(cloud, 20.0)


def _sent(agent: EdgeAgent) -> int:
    """The newest seq the agent's telemetry has used."""
    assert agent.core is not None
    return agent.core.telemetry_seq - 1


async def _plans_published(broker: Any, service: CloudService) -> list[SignalPlan]:
    """Request a corridor and collect the plans it sends (as the box, which may read them)."""
    plans: list[SignalPlan] = []
    async with broker.client(BOX) as client:
        await client.subscribe(f"cb/v1/{REGION}/x/+/plan", qos=1)
        request = CorridorRequest(
            vehicle="AMB-1", origin="west", route=("west", *NODES, "east"), priority=5,
            requester="dispatch", requested_at=service.clock.now(),
        )  # fmt: skip
        await service.request_corridor(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                async for message in client.messages:
                    plans.append(DEFAULT_CODEC.decode(bytes(message.payload), SignalPlan))
                    if len(plans) == len(NODES):
                        break
    return plans


@pytest.mark.broker
@pytest.mark.parametrize(
    "outage_s", [5.0, pytest.param(60.0, marks=pytest.mark.slow)], ids=["5s", "60s"]
)
def test_a_broker_outage_loses_no_telemetry_and_the_cloud_plans_after_it(
    secure_mosquitto: Any, tmp_path: Path, outage_s: float
) -> None:
    broker = secure_mosquitto

    async def scenario() -> None:
        async with city(broker, tmp_path) as (service, agents):
            received = service.telemetry_sink
            assert isinstance(received, Received)
            await until(lambda: all(received.seqs[n] for n in NODES), 20.0, "edges reporting")
            await asyncio.to_thread(broker.stop)
            await until(lambda: not service.connected.is_set(), 5.0, "the loss noticed")
            await asyncio.sleep(outage_s)
            during = {a.intersection: _sent(a) for a in agents}
            await asyncio.to_thread(broker.start)
            await until(service.connected.is_set, 30.0, "the cloud reconnected")
            await until(
                lambda: all(received.newest(n) >= during[n] for n in NODES),
                60.0,
                "what the edges buffered arrived",
            )
            assert service.counters["broker_errors"] >= 1
            plans = await _plans_published(broker, service)
            assert {p.intersection for p in plans} == set(NODES), "no plans after the outage"
        for node in NODES:
            seqs = received.seqs[node]
            assert seqs == sorted(set(seqs)), f"{node}: a message taken twice or out of order"
            lost = set(range(seqs[0], seqs[-1] + 1)) - set(seqs)
            assert not lost, f"{node}: {len(lost)} messages lost"
            assert seqs[-1] - seqs[0] >= 10 * outage_s * 0.8, f"{node}: the outage not covered"

    asyncio.run(scenario())


class _Gone:
    """A client whose broker is gone: its message iterator fails at once."""

    @property
    def messages(self) -> Any:
        return self

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> aiomqtt.Message:
        raise aiomqtt.MqttError("Disconnected during message iteration")


def test_what_the_incoming_queue_holds_when_the_broker_goes_is_still_taken() -> None:
    """paho acknowledged these to the broker on arrival: nobody would send them again."""

    async def scenario() -> None:
        service = CloudService(
            CloudCore(ROAD.network, ROAD.plans, wall_clock=time.monotonic),
            signer=None,
            settings=ServiceSettings(client_id="t", role=Role.INGEST, region=REGION),
        )
        queue = service._incoming_queue_type()(maxsize=100)
        for seq in (1, 2, 3):
            body = DEFAULT_CODEC.encode(Telemetry(intersection="a01", controller_time=1.0, seq=seq))
            message = aiomqtt.Message(
                f"cb/v1/{REGION}/x/a01/telemetry", body, qos=1, retain=False, mid=seq,
                properties=None,
            )  # fmt: skip
            queue.put_nowait(message)
        with pytest.raises(aiomqtt.MqttError):
            await service._receive(_Gone())  # type: ignore[arg-type]
        assert service.counters["telemetry"] == 3
        assert queue.empty()

    asyncio.run(scenario())
