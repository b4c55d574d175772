"""Every attack of issue 11, fired at the system as ``citybrain security init`` deploys it, from
where an attacker would stand; a table of who refused each one and with which reason.

Deployed in this process: Mosquitto with the generated configuration (TLS only, a password per
identity, the ACL; ``log_type all`` added so that its refusals can be read in its log), the
simulator's cabinets of ``arterial:4`` on the field bus (paced, ``SPEED``), the three edge boxes
(``run_host`` with each box's ``edge.toml`` and trust store), the cloud leader (``CloudCore`` +
``CloudService``, signing with the deployment's keyring) and its operator API. Before anything
starts the signing key is rotated (``Keyring.add/use/revoke``), so the edges' trust store names
the old key as revoked, and the old private key is kept as an attacker who stole it would.

Proof of refusal, by who refuses: the broker's by non-delivery against a positive control (the
same path carrying an allowed message, which arrives, after which the forbidden one must not
have) and its log; the edges' by the ack they publish (read with the cloud leader's stolen
password) and the cabinets' record of every plan handed to them; the cloud's by its counters
(``service.counters + core.counters``) before and after; the API's by status and error code.

    .venv/bin/python -m pytest benchmarks/test_attacks.py --benchmark-only -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import msgspec
import pytest

from citybrain import security
from citybrain.cloud.api import serve_api
from citybrain.cloud.auth import TokenFile, UserRole, add_user
from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.epoch import next_epoch
from citybrain.cloud.keys import Keyring
from citybrain.cloud.service import CloudService, ControllerClock, ServiceSettings
from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.settings import EdgeSettings, load_settings
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import (
    MAX_SEQ,
    AckStatus,
    Message,
    PlanAck,
    PlanKind,
    PlanOrder,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.signing import PlanSigner
from citybrain.models.tls import client_context
from citybrain.models.topics import TopicKind, intersection_topic, vehicle_position_topic
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.controllers import Outcome
from citybrain.simulator.demand import Trips
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build, load_network

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import MOSQUITTO, SecureMosquitto

SPEED = 4.0
"""Simulated seconds per wall second (a release plan's 30 s lease runs out in 7.5 s)."""
WAIT_S = 10.0
"""The longest any one wait lasts: a control message, an ack, a counter."""
READY_S = 60.0
WEST, LEADER = "edge-west", security.LEADER
"""``edge-west`` hosts a01 and a02; a03 and a04 have boxes of their own (``edge-a03``)."""
FORGED_TIME = 2_000_000_000.0
FLOOD_ACCOUNTS = 16
"""Bogus operator accounts (4 live corridors each, the operators' limit): 64, the table."""
ARTERIAL = ("west", "a01", "a02", "a03", "a04", "east")
REFUSED_STATUSES = (AckStatus.REJECTED, AckStatus.EXPIRED)


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One attack: who refused it, the reason as observed, and whether it was refused."""

    attack: str
    by: str
    reason: str
    refused: bool
    expected: tuple[str, ...] = ()
    """The reasons it must be refused with; empty where the proof is non-delivery."""

    @property
    def as_expected(self) -> bool:
        return self.refused and (not self.expected or self.reason in self.expected)

    def verdict(self) -> str:
        if not self.refused:
            return "**no**"
        return "yes" if self.as_expected else f"yes, but not as {' / '.join(self.expected)}"


def table(results: list[Result]) -> str:
    """The Markdown table and the verdict line the README carries."""
    lines = [
        "| # | attack | refused by | reason (ack code, counter, status) | refused |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {r.attack} | {r.by} | `{r.reason}` | {r.verdict()} |"
        for n, r in enumerate(results, 1)
    ]
    good = sum(r.as_expected for r in results)
    lines.append(f"\n{good} of {len(results)} attacks refused, each with its reason")
    return "\n".join(lines)


# ---- the deployment -------------------------------------------------------------------------


class WatchedRun(Run):
    """The simulator's run, whose cabinets remember every plan an edge handed them."""

    def __init__(self, net: CompiledNetwork, trips: Trips) -> None:
        super().__init__(net, trips)
        self.handed: list[tuple[str, PlanOrder]] = []

    def command(self, intersection: str, message: SignalPlan) -> Outcome:
        self.handed.append((message.plan_id, message.order))
        return super().command(intersection, message)

    def ran(self, plan: SignalPlan) -> int:
        """How often this very plan (id and order) reached a cabinet."""
        return self.handed.count((plan.plan_id, plan.order))


@dataclass
class City:
    broker: SecureMosquitto
    run: WatchedRun
    service: CloudService
    agents: list[EdgeAgent]
    api: str
    revoked: PlanSigner
    """The rotated-out signing key, as stolen."""
    flooders: list[str]
    """Tokens of the bogus operator accounts."""

    @property
    def region(self) -> str:
        return self.broker.plan.region

    def counters(self) -> Counter[str]:
        return self.service.counters + self.service.core.counters

    def token(self, name: str) -> str:
        return (self.broker.layout.root / "operators" / f"{name}.token").read_text().strip()

    def topic(self, kind: TopicKind, intersection: str) -> str:
        return intersection_topic(kind, self.region, intersection)

    def telemetry(self, intersection: str) -> Telemetry:
        """The latest telemetry the cloud took from ``intersection``."""
        seen = self.service.core.seen[intersection].telemetry
        assert seen is not None
        return seen

    def ready(self) -> bool:
        seen = self.service.core.seen.values()
        return (
            self.service.connected.is_set()
            and self.service.clock.known
            and len(self.agents) == len(seen)
            and all(agent.ready.is_set() for agent in self.agents)
            and all(s.telemetry is not None for s in seen)
        )

    def denied(self, client: str, topic: str) -> bool:
        """Whether the broker's log tells it refused ``client``'s publish to ``topic``."""
        lines = self.broker.log.read_text(errors="replace").splitlines()
        return any(f"Denied PUBLISH from {client} " in n and f"'{topic}'" in n for n in lines)


def _rotate_keys(layout: security.Layout, boxes: list[str]) -> PlanSigner:
    """Rotate the signing key as an operator would, before the edges start: the old key is
    revoked in every box's trust store; it is returned, as an attacker who stole it has it."""
    keys = Keyring(layout.cloud / "keys")
    old = keys.active_id()
    stolen = PlanSigner.load(keys.directory / f"{old}.pem")
    keys.use(keys.add(note="rotated"))
    keys.revoke(old)
    for box in boxes:
        (layout.edge(box) / "trust.json").write_bytes(keys.trust_store.read_bytes())
    return stolen


def _flood_accounts(layout: security.Layout) -> list[str]:
    """Operator accounts an attacker controls, each capped at priority 1 for medical calls."""
    tokens = layout.cloud / "tokens.json"
    return [
        add_user(tokens, f"flood-{n:02}", UserRole.OPERATOR, caps={"medical": 1})
        for n in range(FLOOD_ACCOUNTS)
    ]


def _edge_settings(broker: SecureMosquitto, box: str, bus_port: int, state: Path) -> EdgeSettings:
    return load_settings(
        broker.layout.edge(box) / "edge.toml",
        {
            "CITYBRAIN_EDGE__BROKER__PORT": str(broker.port),
            "CITYBRAIN_EDGE__CONTROLLER__PORT": str(bus_port),
            "CITYBRAIN_EDGE__BUFFER__PATH": str(state / f"state-{box}"),
        },
    )


def _cloud(broker: SecureMosquitto) -> CloudService:
    """The leader as ``cloud serve --config cloud/leader.toml`` makes it, in this process."""
    layout, plan = broker.layout, broker.plan
    road = load_network("arterial:4")
    epoch = next_epoch(layout.cloud / "state" / "epoch", wall_s=time.time())
    core = CloudCore(
        road.network, road.plans, wall_clock=time.monotonic,
        settings=CoreSettings(corridor=CorridorSettings(epoch=epoch)),
    )  # fmt: skip
    settings = ServiceSettings(
        broker_host="localhost", broker_port=broker.port, tls=True,
        ca_file=layout.cloud / "ca.crt", username=LEADER,
        password_file=layout.cloud / "leader.pass", region=plan.region,
    )  # fmt: skip
    signer = Keyring(layout.cloud / "keys").signer()
    return CloudService(core, signer=signer, settings=settings, clock=ControllerClock(rate=SPEED))


@contextlib.asynccontextmanager
async def deployed(directory: Path) -> AsyncIterator[City]:
    """The whole system up with every intersection reporting; all of it stopped on the way out."""
    broker = SecureMosquitto(directory)
    revoked = _rotate_keys(broker.layout, list(broker.plan.boxes))
    flooders = _flood_accounts(broker.layout)
    broker.config.write_text(broker.config.read_text() + "log_type all\n")
    broker.start()
    try:
        async with _running(broker, directory) as (run, service, agents, api):
            city = City(broker, run, service, agents, api, revoked, flooders)
            if not await _until(city.ready, READY_S):
                raise RuntimeError(f"the system did not come up within {READY_S} s")
            yield city
    finally:
        broker.kill()


@contextlib.asynccontextmanager
async def _running(
    broker: SecureMosquitto, directory: Path
) -> AsyncIterator[tuple[WatchedRun, CloudService, list[EdgeAgent], str]]:
    scenario = build("arterial:4", level=Level.MODERATE, duration_s=3600, seed=5)
    run = WatchedRun(scenario.net, scenario.trips)
    run.advance(120.0)
    bus = FieldBusServer(run, speed=SPEED)
    bus_port = await bus.start()
    stop, service = asyncio.Event(), _cloud(broker)
    agents: list[EdgeAgent] = []
    tasks = [
        asyncio.create_task(
            run_host(_edge_settings(broker, box, bus_port, directory), stop, started=agents.extend)
        )
        for box in broker.plan.boxes
    ]
    tasks.append(asyncio.create_task(service.run(stop)))
    tokens = TokenFile(broker.layout.cloud / "tokens.json")
    api = await serve_api(service, "127.0.0.1", 0, tokens=tokens)
    host, port = api.addresses[0][:2]
    try:
        yield run, service, agents, f"http://{host}:{port}"
    finally:
        stop.set()
        await api.cleanup()
        ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30.0)
        await bus.stop()
        failures = [error for error in ended if isinstance(error, BaseException)]
        if failures:
            raise failures[0]


async def _until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# ---- MQTT parties ---------------------------------------------------------------------------


@dataclass
class Peer:
    """A party on the broker where an attacker (or a witness) stands: one identity over TLS,
    and what it received, in order."""

    client: aiomqtt.Client
    identifier: str
    received: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, once the broker acknowledged it: by then it has routed (or dropped) it."""
        await asyncio.wait_for(self.client.publish(topic, payload, qos=1), WAIT_S)

    async def read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.received.append((message.topic.value, payload))
            self.arrived.set()

    async def until(self, found: Callable[[str, bytes], bool]) -> list[tuple[str, bytes]] | None:
        """What arrived up to and including the first message ``found``; None if it did not
        arrive within ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        while True:
            hit = next((i for i, (t, p) in enumerate(self.received) if found(t, p)), None)
            if hit is not None:
                return self.received[: hit + 1]
            if time.monotonic() > deadline:
                return None
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())


@contextlib.asynccontextmanager
async def peer(
    city: City, user: str | None, *filters: str, password: str | None = None
) -> AsyncIterator[Peer]:
    """Connected as ``user`` (its own password unless one is given; none: anonymous)."""
    identifier = f"attack-{user}-{time.monotonic_ns()}"
    secret = password if password is not None or user is None else city.broker.password(user)
    client = aiomqtt.Client(
        "localhost", city.broker.port, identifier=identifier, username=user, password=secret,
        tls_context=client_context(ca_file=city.broker.layout.ca_cert),
        protocol=aiomqtt.ProtocolVersion.V311, timeout=WAIT_S,
    )  # fmt: skip
    async with client:
        for topic in filters:
            await client.subscribe(topic, qos=1)
        party = Peer(client, identifier)
        reader = asyncio.create_task(party.read())
        try:
            yield party
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _encode(message: Message) -> bytes:
    return DEFAULT_CODEC.encode(message)


# ---- the broker -----------------------------------------------------------------------------


async def _connack(city: City, user: str | None, password: str | None = None) -> str:
    """The broker's answer to a connection: ``accepted`` or the refusal's return code."""
    try:
        async with peer(city, user, password=password):
            return "accepted"
    except aiomqtt.MqttCodeError as error:
        return f"CONNACK {error.rc}"


def _mqtt(kind: int, body: bytes) -> bytes:
    """An MQTT control packet: its first byte, the remaining length (varint), the body."""
    size, length = len(body), b""
    while True:
        size, digit = divmod(size, 128)
        length += bytes([digit | (0x80 if size else 0)])
        if not size:
            return bytes([kind]) + length + body


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _connect_packet(user: str, password: str) -> bytes:
    body = _text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    return _mqtt(0x10, body + _text(f"raw-{time.monotonic_ns()}") + _text(user) + _text(password))


async def _raw_reply(city: City, packets: list[bytes], *, tls: bool) -> bytes:
    """Send ``packets`` on a bare connection (TLS or not); the broker's next bytes (b"" when
    it closed the connection or said nothing within ``WAIT_S``)."""
    context = ssl.create_default_context(cafile=str(city.broker.layout.ca_cert)) if tls else None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", city.broker.port, ssl=context, server_hostname="localhost" if tls else None
    )
    try:
        for packet in packets[:-1]:
            writer.write(packet)
            await asyncio.wait_for(reader.readexactly(4), WAIT_S)  # CONNACK
        writer.write(packets[-1])
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), WAIT_S)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def connections(city: City) -> list[Result]:
    """Who may connect at all: TLS and a password of a known identity only."""
    leader = city.broker.password(LEADER)
    control = await _connack(city, LEADER)
    anonymous = await _connack(city, None)
    wrong = await _connack(city, LEADER, password=city.broker.password(WEST))
    packet = _connect_packet(LEADER, leader)
    over_tls = await _raw_reply(city, [packet], tls=True)
    plain = await _raw_reply(city, [packet], tls=False)
    tls_only = over_tls == bytes([0x20, 2, 0, 0]) and not plain.startswith(b"\x20")
    genuine = control == "accepted"
    return [
        Result("anonymous connection", "broker", anonymous, genuine and anonymous != control),
        Result("wrong password (the leader's name, a box's password)", "broker", wrong,
               genuine and wrong != control),
        Result("plain TCP to the TLS port (the leader's genuine CONNECT)", "broker",
               "no CONNACK: TLS only" if tls_only else f"answered {plain!r}", tls_only),
    ]  # fmt: skip


async def oversized(city: City) -> Result:
    """10 MB from a vehicle on its own position topic: the broker cuts the connection before
    routing it; the largest payload the codec takes, on the same path, is delivered."""
    user, vehicle = security.vehicle_user("AMB-3"), "AMB-3"
    topic = vehicle_position_topic(vehicle)
    largest = b"y" * security.MAX_PAYLOAD_BYTES
    async with peer(city, LEADER, "cb/v1/vehicle/+/position") as witness:
        connect = _connect_packet(user, city.broker.password(user))
        publish = _mqtt(0x32, _text(topic) + struct.pack("!H", 1) + b"x" * 10_000_000)
        reply = await _raw_reply(city, [connect, publish], tls=True)
        async with peer(city, user) as sender:
            await sender.publish(topic, largest)
            before = await witness.until(lambda t, p: p == largest)
    cut = "disconnected due to oversize packet" in city.broker.log.read_text(errors="replace")
    kept = before is not None and all(len(p) < 10_000_000 for _, p in before)
    reason = "message_size_limit: connection cut" if cut else f"answered {reply!r}"
    return Result(
        "10 MB payload (vehicle, own topic)", "broker", reason, cut and kept and not reply
    )


async def _acl(
    city: City, attack: str, user: str, forged: tuple[str, bytes], control: tuple[str, bytes],
    *, witness: str, sender: str | None = None,
) -> Result:  # fmt: skip
    """``user`` publishes ``forged`` (its ACL forbids the topic), then ``control`` goes on an
    allowed path (from ``user`` itself, or from ``sender`` where ``user`` may publish nothing
    that ``witness`` reads); once ``witness`` has the control, the forged message must not
    have come before it."""
    async with (
        peer(city, witness, forged[0], control[0]) as seen,
        peer(city, user) as attacker,
        peer(city, sender or user) as controller,
    ):
        await attacker.publish(*forged)
        await controller.publish(*control)
        before = await seen.until(lambda t, p: (t, p) == control)
        denied = await _until(lambda: city.denied(attacker.identifier, forged[0]), 2.0)
    refused = before is not None and forged not in before and denied
    reason = "ACL: Denied PUBLISH, not delivered" if refused else f"delivered: {before}"[:80]
    return Result(attack, "broker", reason, refused)


async def identities(city: City) -> list[Result]:
    """An edge box's and a vehicle's credentials used beyond their own topics."""
    a03 = city.telemetry("a03")
    position = VehiclePosition(
        vehicle="AMB-2", time=city.service.clock.now(), link="a02-a03", offset_m=5.0,
        speed_mps=12.0,
    )  # fmt: skip
    own_telemetry = (city.topic(TopicKind.TELEMETRY, "a02"), b"control")
    own_position = (vehicle_position_topic("AMB-1"), b"control")
    return [
        await _acl(city, "edge box publishes another intersection's telemetry (a03)", WEST,
                   (city.topic(TopicKind.TELEMETRY, "a03"), _encode(a03)), own_telemetry,
                   witness=LEADER),
        await _acl(city, "edge box publishes a plan (to its own a01)", WEST,
                   (city.topic(TopicKind.PLAN, "a01"), b"forged plan"),
                   (city.topic(TopicKind.PLAN, "a01"), b"control"), witness=WEST, sender=LEADER),
        await _other_plans(city),
        await _acl(city, "vehicle AMB-1 publishes AMB-2's position", security.vehicle_user("AMB-1"),
                   (vehicle_position_topic("AMB-2"), _encode(position)), own_position,
                   witness=LEADER),
        await _cloud_refusal(city, "edge box: a03's telemetry on its own a02 topic",
                             "rejected_wrong_intersection", WEST,
                             (own_telemetry[0], _encode(a03))),
        await _cloud_refusal(city, "vehicle AMB-1: AMB-2's position on its own topic",
                             "rejected_wrong_vehicle", security.vehicle_user("AMB-1"),
                             (own_position[0], _encode(position))),
        await _region_hijack(city),
    ]  # fmt: skip


async def _other_plans(city: City) -> Result:
    """An edge box subscribes to another intersection's plans: Mosquitto grants the
    subscription and checks each delivery; the leader's plan to the box's own a01 (the
    control) arrives, the one to a03 must not have."""
    mine, theirs = city.topic(TopicKind.PLAN, "a01"), city.topic(TopicKind.PLAN, "a03")
    async with peer(city, WEST, theirs, "cb/v1/+/x/+/plan") as box, peer(city, LEADER) as cloud:
        await cloud.publish(theirs, b"not yours")
        await cloud.publish(mine, b"yours")
        before = await box.until(lambda t, p: (t, p) == (mine, b"yours"))
    refused = before is not None and (theirs, b"not yours") not in before
    reason = "ACL: not delivered" if refused else f"delivered: {before}"[:80]
    return Result("edge box subscribes to another intersection's plans (a03)", "broker",
                  reason, refused)  # fmt: skip


async def _region_hijack(city: City) -> Result:
    """a03's box announces a03 in region ``evil``: no identity may write (or read) outside
    the deployment's region, and the cloud, whose region is configured, refuses it too when
    the message is handed to it past the broker (as a misconfigured ACL would)."""
    topic = "cb/v1/evil/x/a03/status"
    status = Status(intersection="a03", presence=Presence.ONLINE, at=city.service.clock.now())
    async with peer(city, "edge-a03") as box:
        await box.publish(topic, _encode(status))
        denied = await _until(lambda: city.denied(box.identifier, topic), 2.0)
    before = city.counters()["rejected_region_mismatch"]
    await city.service.handle(topic, _encode(status))
    counted = city.counters()["rejected_region_mismatch"] - before
    reason = f"{'Denied PUBLISH' if denied else 'published'}; rejected_region_mismatch +{counted}"
    return Result("region hijack: a03's status on cb/v1/evil/x/a03/status", "broker, cloud",
                  reason, denied and counted == 1 and not city.service.regions)  # fmt: skip


# ---- the cloud ------------------------------------------------------------------------------


async def _counted(city: City, counter: str, send: Callable[[], Awaitable[None]]) -> bool:
    """Whether ``counter`` went up once ``send`` was done (within ``WAIT_S``)."""
    before = city.counters()[counter]
    await send()
    return await _until(lambda: city.counters()[counter] > before)


async def _published_and_counted(
    city: City, counter: str, user: str, message: tuple[str, bytes]
) -> bool:
    """``user`` publishes what its ACL allows; whether the cloud counted it as ``counter``."""
    async with peer(city, user) as attacker:
        return await _counted(city, counter, lambda: attacker.publish(*message))


async def _cloud_refusal(
    city: City, attack: str, counter: str, user: str, message: tuple[str, bytes]
) -> Result:
    counted = await _published_and_counted(city, counter, user, message)
    return Result(attack, "cloud", counter if counted else "not counted", counted, (counter,))


async def compromised_box(city: City) -> list[Result]:
    """edge-a03's credentials on its own intersection: a time far ahead (the cloud's clock must
    stay), a seq at the top (refused, and a03's genuine telemetry still taken after it). The
    forged seqs leave room for the one genuine message that may be on its way."""
    clock, topic = city.service.clock, city.topic(TopicKind.TELEMETRY, "a03")
    latest = city.telemetry("a03")
    ahead = msgspec.structs.replace(latest, controller_time=FORGED_TIME, seq=latest.seq + 2)
    before = clock.now()
    disagreed = await _published_and_counted(
        city, "clock_disagreed", "edge-a03", (topic, _encode(ahead))
    )
    moved = clock.now() - before
    top = msgspec.structs.replace(latest, seq=MAX_SEQ)
    jumped = await _published_and_counted(
        city, "rejected_seq_jump", "edge-a03", (topic, _encode(top))
    )
    genuine = await _until(
        lambda: (
            ahead.seq < city.telemetry("a03").seq < MAX_SEQ
            and city.telemetry("a03").controller_time < FORGED_TIME
        )
    )
    return [
        Result(f"compromised box: a03 telemetry at controller time {FORGED_TIME:.0f} (clock "
               f"moved {moved:+.1f} s)", "cloud", "clock_disagreed" if disagreed else "not counted",
               disagreed and abs(moved) <= clock.tolerance, ("clock_disagreed",)),
        Result("compromised box: a03 telemetry with seq 2^53-1 (a03's genuine telemetry "
               f"{'accepted' if genuine else 'NOT accepted'} after it)", "cloud",
               "rejected_seq_jump" if jumped else "not counted", jumped and genuine,
               ("rejected_seq_jump",)),
    ]  # fmt: skip


async def off_the_network(city: City) -> Result:
    position = VehiclePosition(
        vehicle="AMB-3", time=city.service.clock.now(), link="nowhere-a03", offset_m=5.0,
        speed_mps=12.0,
    )  # fmt: skip
    return await _cloud_refusal(
        city, "position of a vehicle on a link the network has not (AMB-3, own identity)",
        "rejected_fleet_position_link", security.vehicle_user("AMB-3"),
        (vehicle_position_topic("AMB-3"), _encode(position)),
    )  # fmt: skip


async def two_intersection_box(city: City) -> Result:
    """edge-west hosts a01 and a02: both report a time far ahead. The clock steps when two
    intersections agree, and one box's credentials speak for two. Run last: it may move the
    cloud's clock (then how long until the genuine reports bring it back is told)."""
    clock, before = city.service.clock, city.service.clock.now()
    forged = [
        msgspec.structs.replace(city.telemetry(node), controller_time=FORGED_TIME,
                                seq=city.telemetry(node).seq + 2)
        for node in ("a01", "a02")
    ]  # fmt: skip
    counts = city.counters()
    async with peer(city, WEST) as box:
        for message in forged:
            await box.publish(city.topic(TopicKind.TELEMETRY, message.intersection),
                              _encode(message))  # fmt: skip
    verdicts = ("clock_disagreed", "clock_stepped")
    await _until(lambda: sum(city.counters()[v] - counts[v] for v in verdicts) >= 2)
    stepped = city.counters()["clock_stepped"] > counts["clock_stepped"]
    moved, at = clock.now() - before, time.monotonic()
    back = await _until(lambda: clock.now() < FORGED_TIME / 2, 20.0)
    after = f"back in {time.monotonic() - at:.1f} s" if back else "not back within 20 s"
    return Result(
        f"compromised box hosting a01 and a02: both at time {FORGED_TIME:.0f} (clock moved "
        f"{moved:+.0f} s; {after})", "cloud", "clock_stepped" if stepped else "clock_disagreed",
        abs(moved) <= clock.tolerance, ("clock_disagreed",),
    )  # fmt: skip


# ---- the edges, with the cloud leader's broker password stolen (not its signing key) ---------


async def _ack(attacker: Peer, plan: SignalPlan, statuses: tuple[AckStatus, ...]) -> PlanAck | None:
    """The first ack of ``plan`` (its id and seq) with one of ``statuses``."""

    def matches(topic: str, payload: bytes) -> bool:
        if not topic.endswith("/ack"):
            return False
        ack = DEFAULT_CODEC.decode(payload, PlanAck)
        return (ack.plan_id, ack.seq, ack.status) in {(plan.plan_id, plan.seq, s) for s in statuses}

    seen = await attacker.until(matches)
    return None if seen is None else DEFAULT_CODEC.decode(seen[-1][1], PlanAck)


async def _forged_plan(
    city: City, attacker: Peer, attack: str, plan: SignalPlan, expected: tuple[str, ...]
) -> Result:
    """Publish ``plan`` as the cloud leader; the edge's ack must refuse it, and the cabinet
    must not have been handed it."""
    handed = city.run.ran(plan)
    await attacker.publish(city.topic(TopicKind.PLAN, plan.intersection), _encode(plan))
    ack = await _ack(attacker, plan, REFUSED_STATUSES)
    await asyncio.sleep(0.2)  # a plan taken would be handed on at once (it starts now)
    kept = city.run.ran(plan) == handed
    reason = (ack.reason_code or "refused") if ack else "no refusal acked"
    return Result(attack, "edge", reason, ack is not None and kept, expected)


async def _request(
    city: City, token: str | None, body: dict[str, Any], path: str = "/v1/corridors"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(f"{city.api}{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def _captured(tap: Peer, kind: PlanKind) -> SignalPlan:
    """The first plan of ``kind`` to a01 the tap caught on the wire."""

    def caught(topic: str, payload: bytes) -> bool:
        return topic.endswith("/plan") and DEFAULT_CODEC.decode(payload, SignalPlan).kind is kind

    seen = await tap.until(caught)
    if seen is None:
        raise RuntimeError(f"no {kind} plan for a01 within {WAIT_S} s")
    return DEFAULT_CODEC.decode(seen[-1][1], SignalPlan)


async def stolen_leader_password(city: City) -> list[Result]:
    """Plans published with the leader's broker identity: a genuine corridor's plan for a01 is
    caught on the wire (the a01 box's read rights), then forged, tampered and replayed."""
    plan_topic, acks = city.topic(TopicKind.PLAN, "a01"), "cb/v1/+/x/+/ack"
    async with peer(city, WEST, plan_topic) as tap, peer(city, LEADER, acks) as attacker:
        corridor_id = await _genuine_corridor(city)
        genuine = await _captured(tap, PlanKind.PRIORITY)
        taken = await _ack(attacker, genuine, (AckStatus.ACCEPTED,))
        if taken is None or not await _until(lambda: _confirmed(city, corridor_id)):
            raise RuntimeError("the genuine plan was not accepted and confirmed")
        results = await _signatures(city, attacker, genuine)
        results.append(_cloud_view(city, corridor_id))
        cancel = f"/v1/corridors/{corridor_id}/cancel"
        await _request(city, city.token("dispatch"), {}, cancel)
        release = await _captured(tap, PlanKind.RELEASE)
        results += await _expired(city, attacker, release)
    return results


async def _genuine_corridor(city: City) -> str:
    """Dispatch's ambulance from a01's side street to the east end, leaving in a minute."""
    body = {"vehicle": "AMB-1", "origin": "a01s", "destination": "east", "priority": 8,
            "incident": "medical", "depart_at": city.service.clock.now() + 60.0}  # fmt: skip
    status, corridor = await _request(city, city.token("dispatch"), body)
    if status != 201:
        raise RuntimeError(f"the genuine corridor was refused: {corridor}")
    return str(corridor["corridor_id"])


def _confirmed(city: City, corridor_id: str) -> bool:
    """Whether the cloud holds the corridor's a01 window as confirmed by a01's edge."""
    corridor = city.service.core.corridor(corridor_id)
    if corridor is None:
        raise AssertionError(f"the cloud does not know {corridor_id}")
    return all(line.confirmed for line in corridor.stop_lines if line.intersection == "a01")


def _cloud_view(city: City, corridor_id: str) -> Result:
    """The edge acked its refusals of the tampered copy and of the replay under the genuine
    plan's id (and, for the replay, its seq); a01 runs the genuine plan, so the cloud must not
    take those acks for its refusal."""
    kept = _confirmed(city, corridor_id)
    return Result(
        "leader password: make the cloud think a01 refused its genuine plan (the edge acks "
        "rows 14-15's refusals under that plan's id)",
        "cloud", "a01 still confirmed" if kept else "a01 marked unconfirmed", kept,
        ("a01 still confirmed",),
    )  # fmt: skip


async def _signatures(city: City, attacker: Peer, genuine: SignalPlan) -> list[Result]:
    """Each forgery is the genuine plan as the next in order (taken, were it not for the
    signature), but the tampered copy and the replay."""
    following = msgspec.structs.replace(genuine, seq=genuine.seq + 1, key_id=None, signature=None)

    def named(plan_id: str) -> SignalPlan:
        return msgspec.structs.replace(following, plan_id=plan_id)

    attacks = [
        ("unsigned plan", named("forged-unsigned"), "unsigned"),
        ("plan signed by an unknown key",
         PlanSigner.generate().sign(named("forged-unknown")), "unknown_key"),
        ("genuine plan tampered (seq 2^53-1)",
         msgspec.structs.replace(genuine, seq=MAX_SEQ), "bad_signature"),
        ("genuine plan replayed", genuine, "out_of_sequence"),
        ("plan re-signed with the revoked (rotated-out) key",
         city.revoked.sign(named("forged-revoked")), "revoked_key"),
    ]  # fmt: skip
    return [
        await _forged_plan(city, attacker, f"leader password: {attack}", plan, (code,))
        for attack, plan, code in attacks
    ]


async def _expired(city: City, attacker: Peer, release: SignalPlan) -> list[Result]:
    """Replays after expiry: the captured release (which the edge took, so its order already
    refuses it), and a plan the cloud signed that never reached the edge (as if withheld in
    transit: signed here with the cloud's own key), next in order and expired."""
    now = city.service.clock.now()
    withheld = Keyring(city.broker.layout.cloud / "keys").signer().sign(
        msgspec.structs.replace(
            release, plan_id="withheld-release", seq=release.seq + 1, issued_at=now - 40.0,
            valid_from=now - 40.0, valid_until=now - 10.0, key_id=None, signature=None,
        )
    )  # fmt: skip
    results = [
        await _forged_plan(city, attacker, "leader password: a cloud-signed plan withheld from "
                           "the edge, replayed after it expired", withheld, ("expired",)),
    ]  # fmt: skip
    if not await _until(lambda: city.service.clock.now() > release.valid_until + 1.0, 15.0):
        raise RuntimeError("the captured release did not expire in time")
    results.append(
        await _forged_plan(city, attacker, "leader password: captured plan (a01's release) "
                           "replayed after it expired",
                           release, ("out_of_sequence", "expired", "stale"))
    )  # fmt: skip
    return results


# ---- the operators' API ---------------------------------------------------------------------


def _corridor(vehicle: str, route: tuple[str, ...], priority: int, incident: str,
              depart_at: float) -> dict[str, Any]:  # fmt: skip
    return {"vehicle": vehicle, "origin": route[0], "route": list(route), "priority": priority,
            "incident": incident, "depart_at": depart_at}  # fmt: skip


def _code(status: int, body: dict[str, Any]) -> str:
    error = body.get("error")
    return f"{status} {error['code']}" if isinstance(error, dict) else str(status)


async def _api_refusal(
    city: City, attack: str, token: str | None, body: dict[str, Any], expected: str
) -> Result:
    status, answer = await _request(city, token, body)
    return Result(attack, "API", _code(status, answer), status >= 400, (expected,))


async def api_access(city: City) -> list[Result]:
    """Who may request what: no token, a viewer's, an operator above their cap, an operator
    past their limit of live corridors."""
    ambulance = _corridor("AMB-4", ARTERIAL, 8, "medical", city.service.clock.now() + 100.0)
    dispatch = city.token("dispatch")
    results = [
        await _api_refusal(city, "API without a token", None, ambulance, "401 unauthorized"),
        await _api_refusal(city, "API: viewer token requests a corridor", city.token("watch"),
                           ambulance, "403 forbidden"),
        await _api_refusal(city, "API: operator above their cap (medical 9, cap 8)", dispatch,
                           {**ambulance, "priority": 9}, "403 forbidden"),
    ]  # fmt: skip
    granted = [
        (await _request(city, dispatch, {**ambulance, "vehicle": f"OP-{n}"}))[0] for n in range(4)
    ]
    attack = f"API: one operator floods ({granted.count(201)} granted, limit 4 live), a fifth"
    fifth = await _api_refusal(
        city, attack, dispatch, {**ambulance, "vehicle": "OP-4"}, "429 too_many_corridors"
    )
    await _cancel_all(city)
    return [*results, fifth]


async def _cancel_all(city: City) -> None:
    """Clean up between floods (not an attack): every live corridor cancelled in process."""
    for status in await city.service.corridors(active_only=True):
        await city.service.cancel(status.corridor_id, reason="attack suite", by="bench")


async def _flood(city: City, routes: Sequence[tuple[str, ...]], accounts: int) -> int:
    """Each bogus account requests its limit (4) of priority-1 corridors; how many granted."""
    later = city.service.clock.now() + 100.0
    granted = 0
    for n in range(accounts * 4):
        body = _corridor(f"BOGUS-{n}", routes[n % len(routes)], 1, "medical", later)
        status, _ = await _request(city, city.flooders[n // 4], body)
        granted += status == 201
    return granted


async def _preempting(city: City, attack: str) -> Result:
    """The genuine priority-9 call (dispatch, a fire) along the arterial after a flood."""
    before = city.counters()["corridors_preempted"]
    body = _corridor("FIRE-1", ARTERIAL, 9, "fire", city.service.clock.now() + 100.0)
    status, answer = await _request(city, city.token("dispatch"), body)
    preempted = city.counters()["corridors_preempted"] > before
    message = str(answer.get("error", {}).get("message", ""))[:60]
    reason = "corridors_preempted" if status == 201 and preempted else _code(status, answer)
    reason += f": {message}" if message else ""
    await _cancel_all(city)
    return Result(attack, "cloud", reason, status == 201, ("corridors_preempted",))


async def floods(city: City) -> list[Result]:
    """Bogus operator accounts fill the corridor table (side streets, spread over the four
    intersections), then fill the windows along the arterial; a priority-9 call each time."""
    side_streets = [(f"{node}n", node, f"{node}s") for node in ARTERIAL[1:-1]]
    table_full = await _flood(city, side_streets, FLOOD_ACCOUNTS)
    first = await _preempting(
        city, f"{table_full} priority-1 corridors fill the table, then a priority-9 request"
    )
    windows_full = await _flood(city, [ARTERIAL], FLOOD_ACCOUNTS // 2)
    second = await _preempting(
        city, f"{windows_full} priority-1 corridors on the arterial (its 32 windows), then "
        "a priority-9 request on it",
    )  # fmt: skip
    return [first, second]


# ---- the run --------------------------------------------------------------------------------


async def attack_all(directory: Path) -> list[Result]:
    async with deployed(directory) as city:
        results = await connections(city)
        results.append(await oversized(city))
        results += await identities(city)
        results += await stolen_leader_password(city)
        results += await compromised_box(city)
        results.append(await off_the_network(city))
        results += await api_access(city)
        results += await floods(city)
        results.append(await two_intersection_box(city))
    return results


def test_every_attack_is_refused_with_its_reason(benchmark: Any) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.fail("Mosquitto is not installed (apt-get install mosquitto)")
    results: list[Result] = []

    def attack() -> None:
        with tempfile.TemporaryDirectory(prefix="citybrain-attacks-") as directory:
            results.extend(asyncio.run(attack_all(Path(directory))))

    benchmark.pedantic(attack, rounds=1, iterations=1)
    print("\n" + table(results))
    benchmark.extra_info["attacks"] = [
        {"attack": r.attack, "by": r.by, "reason": r.reason, "refused": r.as_expected}
        for r in results
    ]
    failed = [r.attack for r in results if not r.as_expected]
    assert not failed, f"not refused as expected: {failed}"
