"""The edge agents end to end: a simulated city on the field bus, a real Mosquitto, and the
agents between them, exercised the way the field would (outages, bad plans, garbage)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.cloud.keys import Keyring
from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.cli import main
from citybrain.edge.settings import (
    BrokerSettings,
    BufferSettings,
    ControllerSettings,
    EdgeSettings,
    TelemetrySettings,
    TrustSettings,
)
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import (
    AckStatus,
    GreenWindow,
    IntervalStep,
    PlanAck,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
)
from citybrain.models.signing import PlanSigner
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

pytestmark = pytest.mark.broker

REGION = "test"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class Listener:
    """A test's own MQTT client (persistent session, QoS 1) collecting what the agents send."""

    def __init__(self, port: int) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"listener-{os.getpid()}-{port}",
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"cb/v1/{REGION}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: Any) -> None:
        with self.lock:
            self.messages[message.topic].append(bytes(message.payload))

    def of(self, node: str, kind: str) -> list[bytes]:
        with self.lock:
            return list(self.messages[f"cb/v1/{REGION}/x/{node}/{kind}"])

    def acks(self, node: str) -> list[PlanAck]:
        return [DEFAULT_CODEC.decode(p, PlanAck) for p in self.of(node, "ack")]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class City:
    def __init__(
        self,
        run: Run,
        agents: list[EdgeAgent],
        listener: Listener,
        signer: PlanSigner,
        bus: FieldBusServer,
    ) -> None:
        self.run, self.agents, self.listener, self.signer = run, agents, listener, signer
        self.bus = bus
        """The cabinets' field bus: stopped, every controller link is down."""

    def agent(self, node: str) -> EdgeAgent:
        return next(a for a in self.agents if a.intersection == node)

    def plan(self, node: str, **fields: Any) -> SignalPlan:
        now = self.run.now
        values: dict[str, Any] = {
            "plan_id": f"p-{node}-{fields.get('seq', 1)}", "intersection": node, "seq": 1,
            "issued_at": now, "valid_from": now, "valid_until": now + 90.0,
            "windows": (GreenWindow(signal_group="4", open_at=now + 15, close_at=now + 40),),
        }  # fmt: skip
        values.update(fields)
        return self.signer.sign(SignalPlan(**values))

    def send(self, plan: SignalPlan, node: str | None = None) -> None:
        topic = f"cb/v1/{REGION}/x/{node or plan.intersection}/plan"
        self.listener.publish(topic, msgspec.json.encode(plan))


def _publish_once(port: int, topic: str, payload: bytes) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="once")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _keyring(directory: Path) -> Keyring:
    ring = Keyring(directory / "keys")
    if not ring.trust_store.exists():
        ring.create()
    return ring


def _settings(broker_port: int, bus_port: int, buffer: Path, keys: Keyring) -> EdgeSettings:
    return EdgeSettings(
        region=REGION,
        intersections="all",
        broker=BrokerSettings(
            host="127.0.0.1", port=broker_port, client_id_prefix="edge",
            reconnect_min_s=0.5, reconnect_max_s=2.0, keepalive_s=5,
        ),
        controller=ControllerSettings(host="127.0.0.1", port=bus_port, poll_hz=10.0),
        telemetry=TelemetrySettings(period_s=0.5),
        buffer=BufferSettings(path=buffer),
        trust=TrustSettings(store=keys.trust_store),
    )  # fmt: skip


def _scenario() -> tuple[Any, Any]:
    scenario = build("arterial:3", level=Level.MODERATE, duration_s=3600, seed=3)
    return scenario.net, scenario.trips


@contextlib.asynccontextmanager
async def city(
    mosquitto: Any, tmp_path: Path, *, run: Run | None = None, cloud: Path | None = None
) -> AsyncIterator[City]:
    """Three edges on their cabinets; ``cloud`` is where the keyring they trust lives."""
    keys = _keyring(cloud or tmp_path)
    if run is None:
        run = Run(*_scenario())
        run.advance(300.0)
    server = FieldBusServer(run, speed=1.0)
    bus_port = await server.start()
    listener = Listener(mosquitto.port)
    stop = asyncio.Event()
    started: list[EdgeAgent] = []
    host = asyncio.create_task(
        run_host(_settings(mosquitto.port, bus_port, tmp_path / "buffer", keys), stop,
                 started=started.extend)
    )  # fmt: skip
    try:
        await until(lambda: len(started) == 3 and all(a.ready.is_set() for a in started))
        await until(lambda: all(a.session is not None and a.session.connected for a in started))
        yield City(run, started, listener, keys.signer(), server)
    finally:
        stop.set()
        await asyncio.wait_for(host, 15.0)
        listener.close()
        await server.stop()


def test_telemetry_arrives_decodes_and_status_is_online(mosquitto: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            await until(
                lambda: all(len(c.listener.of(n, "telemetry")) >= 4 for n in c.run.controllers)
            )
            for node in c.run.controllers:
                telemetry = [
                    DEFAULT_CODEC.decode(p, Telemetry) for p in c.listener.of(node, "telemetry")
                ]
                seqs = [t.seq for t in telemetry]
                assert seqs == sorted(seqs)
                assert len(set(seqs)) == len(seqs)
                assert {a.approach for a in telemetry[-1].approaches}
                assert set(telemetry[-1].signals) == set(
                    c.run.controllers[node].plan.signals.groups
                )
                (status, *_) = c.listener.of(node, "status")
                assert DEFAULT_CODEC.decode(status, Status).presence is Presence.ONLINE
        # a clean stop says offline itself (the will is only for a vanished agent)
        last = c.listener.of("a01", "status")[-1]
        assert DEFAULT_CODEC.decode(last, Status).presence is Presence.OFFLINE

    asyncio.run(scenario())


def test_a_clean_stop_is_a_goodbye_not_a_lost_broker(
    mosquitto: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path):
            pass

    with caplog.at_level(logging.DEBUG, logger="citybrain.edge"):
        asyncio.run(scenario())
    said = [r for r in caplog.records if r.name == "citybrain.edge.mqtt"]
    assert [r for r in said if "disconnected from the broker" in r.getMessage()]
    assert not [r for r in said if r.levelno >= logging.WARNING], [r.getMessage() for r in said]


def test_a_plan_is_checked_applied_in_the_simulator_and_acked(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            plan = c.plan("a02")
            c.send(plan)
            await until(
                lambda: (
                    [a.status for a in c.listener.acks("a02")]
                    == [AckStatus.ACCEPTED, AckStatus.APPLIED]
                )
            )
            running = c.run.controllers["a02"].running
            assert running is not None
            assert running.plan_id == plan.plan_id
            latency = c.agent("a02").stats.plan_latency_ms
            assert len(latency) == 1
            assert latency[0] < 500.0

    asyncio.run(scenario())


def test_bad_plans_are_refused_with_their_reason_and_never_reach_the_cabinet(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            cabinet = c.run.controllers["a01"]
            now = c.run.now
            c.send(c.plan("a01", seq=5, plan_id="good"))
            await until(lambda: len(c.listener.acks("a01")) == 2)
            cabinet.running = None
            refused_before = cabinet.refused
            shown = cabinet.state_at(now)
            clash = next(
                g
                for g in sorted(shown.signals.groups)
                if shown.signals.conflict(g, min(shown.greens))
            )
            clashing = tuple(sorted(shown.greens | {clash}))
            bad = {
                "conflicting_greens": c.plan("a01", seq=6, plan_id="unsafe", windows=(), steps=(
                    IntervalStep(at=c.run.now + 0.5, green=clashing),)),
                "expired": c.plan("a01", seq=7, plan_id="old", issued_at=now - 200,
                                  valid_from=now - 200, valid_until=now - 100, windows=(
                    GreenWindow(signal_group="4", open_at=now - 190, close_at=now - 150),)),
                "out_of_sequence": c.plan("a01", seq=5, plan_id="replayed"),
                "wrong_intersection": c.plan("a02", seq=8, plan_id="elsewhere"),
            }  # fmt: skip
            for plan in bad.values():
                c.send(plan, "a01")
            await until(lambda: len(c.listener.acks("a01")) == 2 + len(bad))
            codes = {a.plan_id: a.reason_code for a in c.listener.acks("a01")[2:]}
            assert codes == {plan.plan_id: code for code, plan in bad.items()}
            assert cabinet.running is None
            assert cabinet.refused == refused_before

    asyncio.run(scenario())


def test_a_plan_met_by_a_controller_link_gone_down_is_refused_for_that(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The agent's clock stood still 1 s after the last reading, so a plan the cloud made 3 s
    later looked issued in the future and was refused ``stale``: the cloud was told to fix
    its clock, not that the cabinet was unreachable."""

    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            await c.bus.stop()
            down = c.run.now
            await asyncio.sleep(3.5)
            c.send(c.plan("a03", issued_at=down + 3.5, valid_from=down + 3.5))
            await until(lambda: len(c.listener.acks("a03")) == 1)
            (ack,) = c.listener.acks("a03")
            assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "controller_unavailable")

    asyncio.run(scenario())


def test_every_telemetry_message_of_a_broker_outage_arrives_afterwards_in_order(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        mosquitto.config.write_text(
            mosquitto.config.read_text()
            .replace("persistence false", f"persistence true\npersistence_location {tmp_path}/")
        )  # fmt: skip
        mosquitto.kill()
        mosquitto.start()
        async with city(mosquitto, tmp_path) as c:
            await until(lambda: len(c.listener.of("a03", "telemetry")) >= 3)
            assert mosquitto.process is not None
            mosquitto.process.send_signal(signal.SIGTERM)  # saves the listener's session
            mosquitto.process.wait(5.0)
            await asyncio.sleep(4.0)
            agent = c.agent("a03")
            assert agent.stats.buffered >= 6
            mosquitto.start()
            await until(lambda: agent.buffer.size(agent.agent_id) == 0 and agent.session is not None
                        and agent.session.connected, timeout_s=20.0)  # fmt: skip
            await asyncio.sleep(1.5)
            for node in c.run.controllers:
                seqs = [
                    DEFAULT_CODEC.decode(p, Telemetry).seq for p in c.listener.of(node, "telemetry")
                ]
                first_seen = list(dict.fromkeys(seqs))
                assert first_seen == sorted(first_seen), node
                missing = sorted(set(range(first_seen[0], first_seen[-1] + 1)) - set(first_seen))
                assert not missing, (node, missing)

    asyncio.run(scenario())


def test_a_lease_that_runs_out_brings_the_intersection_back_by_itself(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            now = c.run.now
            plan = c.plan("a03", valid_until=now + 8.0, windows=(
                GreenWindow(signal_group="4", open_at=now + 1.0, close_at=now + 6.0),))  # fmt: skip
            c.send(plan)
            await until(
                lambda: any(a.reason_code == "lease_expired" for a in c.listener.acks("a03")), 15.0
            )
            assert c.agent("a03").core is not None
            assert c.agent("a03").core.counters["leases_expired"] == 1  # type: ignore[union-attr]
            await until(lambda: c.run.controllers["a03"].running is None, 120.0)

    asyncio.run(scenario())


def test_garbage_on_the_plan_topic_is_counted_and_telemetry_goes_on(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            rng = random.Random(7)
            garbage = [rng.randbytes(rng.randint(0, 2000)) for _ in range(150)]
            garbage += [b"{}", b"null", b'{"v": 1}', b"[" * 5000, b"x" * 200_000]
            garbage += [msgspec.json.encode({"plan_id": "p", "seq": -1, "windows": "no"})]
            for payload in garbage:
                c.listener.client.publish(f"cb/v1/{REGION}/x/a01/plan", payload, qos=1)
            before = len(c.listener.of("a01", "telemetry"))
            core = c.agent("a01").core
            assert core is not None
            await until(lambda: core.counters["plans_malformed"] == len(garbage), 15.0)
            await until(lambda: len(c.listener.of("a01", "telemetry")) >= before + 3)
            assert c.run.controllers["a01"].running is None
            assert c.run.controllers["a01"].refused == 0

    asyncio.run(scenario())


def test_plans_sent_while_an_agent_was_away_arrive_and_stale_ones_are_refused(
    mosquitto: Any, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            now = c.run.now
            fresh = c.plan("a01", seq=1, plan_id="while-away")
            stale = c.plan("a01", seq=2, plan_id="too-old", issued_at=max(0.0, now - 100.0))
        # every agent has stopped; its session (and subscription) stays on the broker
        for plan in (fresh, stale):
            _publish_once(mosquitto.port, f"cb/v1/{REGION}/x/a01/plan", msgspec.json.encode(plan))
        async with city(mosquitto, tmp_path / "again", run=c.run, cloud=tmp_path) as again:
            await until(lambda: len(again.listener.acks("a01")) >= 3, 15.0)
            statuses = {a.plan_id: (a.status, a.reason_code) for a in again.listener.acks("a01")}
            assert statuses["while-away"] == (AckStatus.APPLIED, None)
            assert statuses["too-old"][1] in ("stale", "expired")

    asyncio.run(scenario())


def test_check_config_and_doctor_say_what_is_wrong(
    mosquitto: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> None:
        run = Run(*_scenario())
        server = FieldBusServer(run, speed=1.0)
        bus_port = await server.start()
        config = tmp_path / "edge.toml"
        trust = tmp_path / "trust.json"
        config.write_text(
            f'region = "{REGION}"\nintersections = "all"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
            f'[controller]\nport = {bus_port}\n[buffer]\npath = "{tmp_path / "buffer"}"\n'
            f'[trust]\nstore = "{trust}"\n'
        )
        assert await asyncio.to_thread(main, ["check-config", "--config", str(config)]) == 0
        assert await asyncio.to_thread(main, ["doctor", "--config", str(config)]) == 1
        assert "FAIL trust store of the cloud's keys: " in capsys.readouterr().out
        trust.write_bytes(_keyring(tmp_path).trust_store.read_bytes())
        assert await asyncio.to_thread(main, ["doctor", "--config", str(config)]) == 0
        report = capsys.readouterr().out
        assert "3 cabinets answer" in report
        assert "5 of 5 checks passed" in report
        mosquitto.kill()
        await server.stop()
        assert await asyncio.to_thread(main, ["doctor", "--config", str(config)]) == 1
        report = capsys.readouterr().out
        assert "FAIL broker round trip" in report
        assert "FAIL controller link" in report
        config.write_text(config.read_text().replace("[broker]", "[broker]\nprot = 1"))
        assert await asyncio.to_thread(main, ["check-config", "--config", str(config)]) == 2
        assert "broker.prot" in capsys.readouterr().err

    asyncio.run(scenario())


def test_agents_log_in_with_a_password_and_a_wrong_one_is_refused(
    mosquitto: Any, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(  # noqa: S603 - fixed command line
        [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "edge", "s3cret"], check=True
    )
    passwords.chmod(0o600)
    mosquitto.config.write_text(
        mosquitto.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    mosquitto.kill()
    mosquitto.start()
    secret = tmp_path / "edge.pass"

    async def connects(password: str) -> bool:
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        run = Run(*_scenario())
        server = FieldBusServer(run, speed=1.0)
        bus_port = await server.start()
        settings = _settings(
            mosquitto.port, bus_port, tmp_path / f"buffer-{password}", _keyring(tmp_path)
        )
        broker = dataclasses.replace(settings.broker, username="edge", password_file=secret)
        settings = dataclasses.replace(settings, broker=broker)
        stop = asyncio.Event()
        agents: list[EdgeAgent] = []
        host = asyncio.create_task(run_host(settings, stop, started=agents.extend))
        try:
            await until(lambda: len(agents) == 3 and all(a.session for a in agents))
            with contextlib.suppress(AssertionError):
                await until(lambda: all(a.session and a.session.connected for a in agents), 4.0)
            return all(a.session is not None and a.session.connected for a in agents)
        finally:
            stop.set()
            await asyncio.wait_for(host, 15.0)
            await server.stop()

    assert asyncio.run(connects("s3cret"))
    assert not asyncio.run(connects("wrong"))


@pytest.mark.security
def test_a_restarted_edge_refuses_a_plan_it_took_before_the_restart(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The high-water mark is on disk: a recorded plan played back after a restart, still
    within its validity, is refused."""

    def ack_of(c: City) -> tuple[AckStatus, str | None] | None:
        acks = [a for a in c.listener.acks("a01") if a.plan_id == "taken"]
        return (acks[0].status, acks[0].reason_code) if acks else None

    async def scenario() -> None:
        async with city(mosquitto, tmp_path) as c:
            plan = c.plan("a01", seq=3, plan_id="taken")
            c.send(plan)
            await until(lambda: ack_of(c) is not None)
            assert ack_of(c) == (AckStatus.ACCEPTED, None)
        async with city(mosquitto, tmp_path, run=c.run) as again:
            again.send(plan)
            await until(lambda: ack_of(again) is not None)
            assert ack_of(again) == (AckStatus.REJECTED, "out_of_sequence")

    asyncio.run(scenario())
