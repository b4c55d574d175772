"""Edge agent benchmarks, against a real Mosquitto on loopback started here.

* ``test_a_thousand_agents_in_one_process``: one process hosts 1,000 agents (one MQTT session
  each, telemetry at 1 Hz, controllers polled at 10 Hz through in-memory cabinets); its CPU
  time and memory are measured over a steady minute-long window and reported per agent, against
  a peer in the same run: 1,000 bare paho sessions publishing the same telemetry at 1 Hz with
  nothing else (what MQTT alone costs). Target: under one core.
* ``test_plan_path_latency``: plans published to an agent over the broker, from the agent's
  receipt to the cabinet's answer on the field bus (a simulated arterial), median and p99;
  peer: the same plans sent straight to the cabinet over the field bus. Target p99 <= 20 ms.

    .venv/bin/python -m pytest benchmarks/test_edge_agents.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.cloud.keys import Keyring
from citybrain.edge.agent import EdgeAgent, fake_driver, run_host
from citybrain.edge.drivers import ControllerDriver, FieldBusClient
from citybrain.edge.settings import (
    BrokerSettings,
    BufferSettings,
    ControllerSettings,
    EdgeSettings,
    TelemetrySettings,
    TrustSettings,
)
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import AckStatus, GreenWindow, SignalPlan
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Mosquitto

AGENTS = int(os.environ.get("CITYBRAIN_BENCH_AGENTS", "1000"))
WINDOW_S = float(os.environ.get("CITYBRAIN_BENCH_WINDOW_S", "60"))


def _forget(unwatch: Callable[[Any], bool], sock: Any) -> None:
    """paho wants its socket callbacks to return nothing; the loop's say whether it watched."""
    unwatch(sock)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _keyring(directory: Path) -> Keyring:
    """A new keyring of the cloud's (one per test): edges trust its store and take only plans
    it signed."""
    ring = Keyring(directory / "keys")
    ring.create()
    return ring


def _settings(
    port: int, buffer: Path, names: list[str], keys: Keyring, bus_port: int = 4710
) -> EdgeSettings:
    return EdgeSettings(
        region="bench",
        intersections=tuple(names),
        broker=BrokerSettings(host="127.0.0.1", port=port, client_id_prefix="bench"),
        controller=ControllerSettings(driver="fieldbus", port=bus_port),
        telemetry=TelemetrySettings(period_s=1.0),
        buffer=BufferSettings(path=buffer),
        trust=TrustSettings(store=keys.trust_store),
    )


async def _cpu_over(window_s: float) -> float:
    """Cores used by this process over the next ``window_s`` seconds."""
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(window_s)
    return (time.process_time() - cpu) / (time.monotonic() - wall)


async def _agents(broker: Mosquitto, tmp_path: Path) -> dict[str, float]:
    names = [f"x{i:04d}" for i in range(AGENTS)]
    settings = _settings(broker.port, tmp_path / "buffer", names, _keyring(tmp_path))
    stop = asyncio.Event()
    agents: list[EdgeAgent] = []
    rss_before = _rss_mb()
    drivers: list[ControllerDriver] = [fake_driver(name) for name in names]
    host = asyncio.create_task(run_host(settings, stop, drivers=drivers, started=agents.extend))
    await _until(lambda: len(agents) == AGENTS and all(
        a.session is not None and a.session.connected for a in agents), 120.0)  # fmt: skip
    await asyncio.sleep(5.0)  # settle: every agent in its 1 Hz rhythm
    published = sum(a.stats.published for a in agents)
    cores = await _cpu_over(WINDOW_S)
    sent = sum(a.stats.published for a in agents) - published
    rss = _rss_mb() - rss_before
    stop.set()
    await asyncio.wait_for(host, 60.0)
    return {"cores": cores, "msgs_per_s": sent / WINDOW_S, "rss_mb": rss}


async def _bare(broker: Mosquitto) -> dict[str, float]:
    """The peer: paho sessions on the same loop doing nothing but publish 1 Hz telemetry."""
    payload = msgspec.json.encode({"v": 1, "approaches": [{"queue_veh": 1.0}] * 4, "seq": 1})
    loop = asyncio.get_running_loop()
    clients = []
    rss_before = _rss_mb()
    for index in range(AGENTS):
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"bare-{index}", protocol=paho.MQTTv311)  # fmt: skip
        client.on_socket_open = lambda c, u, s: loop.add_reader(s, c.loop_read)
        client.on_socket_register_write = lambda c, u, s: loop.add_writer(s, c.loop_write)
        client.on_socket_unregister_write = lambda c, u, s: _forget(loop.remove_writer, s)
        client.on_socket_close = lambda c, u, s: _forget(loop.remove_reader, s)
        client.connect("127.0.0.1", broker.port, 60)
        clients.append(client)
    sent = 0

    async def publish() -> None:
        nonlocal sent
        while True:
            started = time.monotonic()
            for client in clients:
                client.publish("cb/v1/bare/x/t/telemetry", payload, qos=1)
                client.loop_misc()
                sent += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    task = asyncio.create_task(publish())
    await asyncio.sleep(5.0)
    before = sent
    cores = await _cpu_over(WINDOW_S)
    rate = (sent - before) / WINDOW_S
    task.cancel()
    for client in clients:
        client.disconnect()
    return {"cores": cores, "msgs_per_s": rate, "rss_mb": _rss_mb() - rss_before}


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("not ready in time")
        await asyncio.sleep(0.2)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    instance = Mosquitto(tmp_path)
    instance.start()
    yield instance
    instance.kill()


def test_a_thousand_agents_in_one_process(
    benchmark: Any, broker: Mosquitto, tmp_path: Path
) -> None:
    results: dict[str, dict[str, float]] = {}

    def measure() -> None:
        results["agents"] = asyncio.run(_agents(broker, tmp_path))
        results["bare"] = asyncio.run(_bare(broker))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    agents, bare = results["agents"], results["bare"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{AGENTS} agents, {WINDOW_S:.0f} s window")
    print(f"  citybrain agents: {agents['cores']:.3f} cores, {agents['msgs_per_s']:.0f} msg/s, "
          f"{1e6 * agents['cores'] / AGENTS:.0f} us CPU per agent-second, "
          f"{1000 * agents['rss_mb'] / AGENTS:.0f} kB per agent (RSS growth)")  # fmt: skip
    print(f"  bare paho peer:   {bare['cores']:.3f} cores, {bare['msgs_per_s']:.0f} msg/s, "
          f"{1000 * bare['rss_mb'] / AGENTS:.0f} kB per session")  # fmt: skip
    print(f"  ratio agent/bare CPU: {agents['cores'] / max(bare['cores'], 1e-9):.1f}x; "
          f"peak RSS {peak:.0f} MB")  # fmt: skip
    benchmark.extra_info.update({"agents": agents, "bare": bare})
    assert agents["msgs_per_s"] >= 0.95 * AGENTS, "telemetry fell behind 1 Hz"
    assert agents["cores"] < 1.0, "1,000 agents need more than one core"


async def _plans(broker: Mosquitto, tmp_path: Path, count: int) -> dict[str, list[float]]:
    scenario = build("arterial:3", level=Level.MODERATE, duration_s=7200, seed=1)
    run = Run(scenario.net, scenario.trips)
    run.advance(300.0)
    server = FieldBusServer(run, speed=1.0)
    bus_port = await server.start()
    keys = _keyring(tmp_path)
    signer = keys.signer()
    settings = _settings(broker.port, tmp_path / "buffer", ["a02"], keys, bus_port)
    stop = asyncio.Event()
    agents: list[EdgeAgent] = []
    host = asyncio.create_task(run_host(settings, stop, started=agents.extend))
    await _until(lambda: bool(agents) and agents[0].session is not None
                 and agents[0].session.connected, 30.0)  # fmt: skip
    agent = agents[0]
    publisher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="planner")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    for seq in range(1, count + 1):
        now = run.now
        plan = SignalPlan(
            plan_id=f"bench-{seq}", intersection="a02", seq=seq, issued_at=now, valid_from=now,
            valid_until=now + 90.0,
            windows=(GreenWindow(signal_group="4" if seq % 2 else "2", open_at=now + 20.0,
                                 close_at=now + 45.0),),
        )  # fmt: skip
        publisher.publish("cb/v1/bench/x/a02/plan", DEFAULT_CODEC.encode(signer.sign(plan)), qos=1)
        await asyncio.sleep(0.05)
    await _until(lambda: len(agent.stats.plan_latency_ms) >= count, 30.0)
    edge = list(agent.stats.plan_latency_ms)
    publisher.loop_stop()
    stop.set()
    await asyncio.wait_for(host, 30.0)
    # the peer: the same cabinet, plans sent straight over the field bus
    direct = []
    async with FieldBusClient(host="127.0.0.1", port=bus_port) as client:
        for seq in range(count + 1, 2 * count + 1):
            now = run.now
            plan = SignalPlan(
                plan_id=f"direct-{seq}", intersection="a02", seq=seq, issued_at=now,
                valid_from=now, valid_until=now + 90.0,
                windows=(GreenWindow(signal_group="4" if seq % 2 else "2", open_at=now + 20.0,
                                     close_at=now + 45.0),),
            )  # fmt: skip
            started = time.monotonic()
            outcome = await client.send_plan("a02", plan)
            direct.append((time.monotonic() - started) * 1000.0)
            assert outcome.status is AckStatus.ACCEPTED
            await asyncio.sleep(0.05)
    await server.stop()
    return {"edge": edge, "direct": direct}


def test_plan_path_latency(benchmark: Any, broker: Mosquitto, tmp_path: Path) -> None:
    count = int(os.environ.get("CITYBRAIN_BENCH_PLANS", "400"))
    results: dict[str, list[float]] = {}

    def measure() -> None:
        results.update(asyncio.run(_plans(broker, tmp_path, count)))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    edge, direct = np.array(results["edge"]), np.array(results["direct"])
    p50, p99 = np.percentile(edge, [50, 99])
    d50, d99 = np.percentile(direct, [50, 99])
    print(f"\n{count} plans: MQTT receipt -> cabinet answer median {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"  peer, straight to the cabinet: median {d50:.2f} ms, p99 {d99:.2f} ms")
    print(f"  edge cost over the cabinet alone: x{p50 / d50:.1f} median, "
          f"{statistics.median(edge) - statistics.median(direct):.2f} ms")  # fmt: skip
    benchmark.extra_info.update({"p50_ms": p50, "p99_ms": p99, "direct_p50_ms": d50})
    assert p99 <= 20.0
