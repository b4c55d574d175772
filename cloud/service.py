"""The cloud service: one asyncio process (aiomqtt 2.x), its tasks in one TaskGroup.

* receive: telemetry, statuses, acks and vehicle positions, decoded by the codec; whatever
  does not fit (malformed, oversized, from an unknown intersection or another region, a seq
  that leaps, a position without a corridor) is refused and counted by its reason;
* tick: timeouts and plan retries of ``CloudCore``;
* publish: plans (QoS 1) and retained corridor statuses, in the order the core made them;
* store: telemetry to the database in batches, plans, acks and corridors to the audit trail.

Queues are bounded: a full store queue makes the receive loop wait (backpressure to the broker
connection) rather than grow. Scaling out: telemetry can be taken through an MQTT shared
subscription (``share_group``): several workers with ``role="ingest"`` split the stream and
write it, while one ``role="leader"`` keeps the city's state (it subscribes to all telemetry,
not shared) and runs the corridors. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import numpy as np
from aiomqtt import ProtocolVersion

from citybrain.cloud.alarms import Alarm, AlarmBook, AlarmKind, rfc3339
from citybrain.cloud.clock import ClockVerdict, ControllerClock
from citybrain.cloud.core import CloudCore, IntersectionSeen
from citybrain.cloud.corridor import PREEMPTED, TERMINAL, Action, PublishStatus, SendPlan
from citybrain.cloud.events import EventHub, EventKind
from citybrain.cloud.metrics import ServiceMetrics
from citybrain.cloud.operations import (
    ClockReading,
    Conflict,
    CorridorOwner,
    Health,
    HealthReport,
    HistoryPage,
    HistoryQuery,
    IntersectionStates,
    IntersectionView,
    LimitReached,
    NetworkMap,
    NetworkView,
    NotFound,
    Operations,
    Place,
    ServiceUnavailable,
    SignalState,
    history_page,
    page_of,
)
from citybrain.cloud.state import RefusedError
from citybrain.cloud.storage import (
    AckReceived,
    ActionKind,
    OperatorAction,
    PlanSent,
    StorageError,
    StorageUnavailable,
    TelemetryStore,
    TelemetryWriter,
    check_storable,
)
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.codec import DEFAULT_CODEC, Codec
from citybrain.models.errors import MessageError, TopicError, ValidationError
from citybrain.models.files import check_file, read_secret
from citybrain.models.messages import (
    AckStatus,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    Mode,
    PlanAck,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.retry import Backoff
from citybrain.models.signing import PlanSigner
from citybrain.models.topics import (
    Topic,
    TopicKind,
    corridor_status_topic,
    intersection_filter,
    intersection_topic,
    parse_topic,
    shared_filter,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "live"
"""The region the demo's edges publish in (``citybrain/live.py``)."""
MAX_TIME_S = 253_402_300_799.0
"""9999-12-31T23:59:59Z: later times are not times any clock or database here can hold."""

ENDED_BADLY = frozenset({CorridorState.FAILED, CorridorState.TIMED_OUT, CorridorState.REJECTED})
"""Corridor states that raise an alarm: the vehicle did not get its corridor through."""
QUIET_REFUSALS = frozenset({"seq_old", "position_no_corridor"})
"""Refusals of what changes nothing and comes in normal operation (a QoS 1 redelivery, the
AVL unit of a vehicle without a corridor): counted by reason, but never a burst."""

TelemetrySink = Callable[[Telemetry, float], Awaitable[None]]
"""Where telemetry goes to be stored (awaits when the writer's queue is full)."""
AuditSink = Callable[[object, float], Awaitable[None]]
"""Where plans, acks and corridor statuses go for the audit trail."""


class Role(enum.StrEnum):
    LEADER = "leader"
    """Keeps the city's state, runs the corridors, answers operators."""
    INGEST = "ingest"
    """Only stores telemetry taken from a shared subscription."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    """Read at each connection (``secret``), so a rotated password needs no restart."""
    tls: bool = False
    ca_file: Path | None = None
    """The CA that signed the broker's certificate (the system's CAs when not given)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """A client certificate and its key, for a broker that asks for one."""
    client_id: str = "citybrain-cloud"
    region: str = DEFAULT_REGION
    """The region served. ``+`` takes every region and learns each intersection's from its
    first accepted message; a message from another region for it is refused after that."""
    role: Role = Role.LEADER
    share_group: str | None = None
    """Take telemetry for storage through ``$share/<group>/...`` (needs MQTT 5 or a broker
    that accepts the shared form on 3.1.1, as Mosquitto does)."""
    tick_s: float = 0.2
    incoming_queue: int = 200_000
    outgoing_queue: int = 10_000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    settle_after_s: float = 0.2
    """The twins take the plans sent this long after, past the acks' p99 (see ``_settle``)."""
    status_every_s: float = 0.05
    """A corridor's retained status goes out at most this often, the latest one winning: each
    of 21 acks changes it, and publishing (and auditing) each would delay the acks behind."""
    trouble_window_s: float = 60.0
    """The health is degraded while, within this window, a tick or a handler failed, an ack
    matched no plan, or more than ``rejection_burst`` messages were refused."""
    rejection_burst: int = 60
    monitor_every_s: float = 1.0
    """How often the whole city's states go to the live stream, and stale telemetry and the
    service's health are checked for alarms."""

    def __post_init__(self) -> None:
        check_count("broker_port", self.broker_port, ge=1, le=65_535)
        check_id("client_id", self.client_id)
        if self.region != "+":
            check_id("region", self.region)
        if self.share_group is not None:
            check_id("share_group", self.share_group)
        check_number("tick_s", self.tick_s, gt=0.0, le=10.0)
        check_count("incoming_queue", self.incoming_queue, ge=100)
        check_count("outgoing_queue", self.outgoing_queue, ge=100)
        check_number("reconnect_min_s", self.reconnect_min_s, gt=0.0, le=60.0)
        check_number("reconnect_max_s", self.reconnect_max_s, ge=self.reconnect_min_s, le=600.0)
        check_number("status_every_s", self.status_every_s, ge=0.0, le=5.0)
        check_number("settle_after_s", self.settle_after_s, ge=0.0, le=5.0)
        check_number("trouble_window_s", self.trouble_window_s, gt=0.0, le=86_400.0)
        check_count("rejection_burst", self.rejection_burst)
        check_number("monitor_every_s", self.monitor_every_s, gt=0.0, le=60.0)
        self._check_credentials()

    def _check_credentials(self) -> None:
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is not None:
                    raise ValidationError(name, "only used with tls; turn tls on")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValidationError("key_file", "cert_file and key_file go together")
        if self.password is not None and self.password_file is not None:
            raise ValidationError("password_file", "give a password or a password file, not both")
        if (self.password or self.password_file) and self.username is None:
            raise ValidationError("username", "is required with a password (MQTT rule)")
        for name in ("ca_file", "cert_file", "key_file", "password_file"):
            check_file(name, getattr(self, name), secret=name in ("key_file", "password_file"))

    def secret(self) -> str | None:
        """The password, read from ``password_file`` now if that is where it lives."""
        if self.password_file is None:
            return self.password
        return read_secret("password_file", self.password_file)

    def tls_parameters(self) -> aiomqtt.TLSParameters | None:
        """TLS with the broker's certificate and host name checked, or ``None`` (plain TCP)."""
        if not self.tls:
            return None
        ca, cert, key = (
            str(p) if p else None for p in (self.ca_file, self.cert_file, self.key_file)
        )
        return aiomqtt.TLSParameters(ca_certs=ca, certfile=cert, keyfile=key)


class RecentEvents:
    """How many events happened in the last ``window_s`` (wall seconds), kept in 60 buckets:
    constant time to record at any rate (a flood of garbage included), 60 sums to count."""

    BUCKETS = 60

    def __init__(self, window_s: float) -> None:
        self._width = window_s / self.BUCKETS
        self._buckets: deque[list[int]] = deque()
        """[bucket number, events in it], oldest first."""

    def add(self) -> None:
        bucket = int(time.monotonic() / self._width)
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1] += 1
            return
        self._buckets.append([bucket, 1])
        self._expire(bucket)

    def count(self) -> int:
        self._expire(int(time.monotonic() / self._width))
        return sum(events for _, events in self._buckets)

    def _expire(self, bucket: int) -> None:
        while self._buckets and self._buckets[0][0] <= bucket - self.BUCKETS:
            self._buckets.popleft()


class CloudService(Operations):
    def __init__(
        self,
        core: CloudCore,
        *,
        signer: PlanSigner | None,
        settings: ServiceSettings | None = None,
        telemetry_sink: TelemetrySink | None = None,
        audit_sink: AuditSink | None = None,
        storage: TelemetryWriter | None = None,
        codec: Codec = DEFAULT_CODEC,
        clock: ControllerClock | None = None,
    ) -> None:
        """``storage``: the database writer telemetry and the audit go to (through
        ``writer_sinks`` unless sinks are given), whose backlog and health the service reports
        and where corridor history is read; without it, nothing is kept."""
        self.core = core
        self.settings = settings or ServiceSettings()
        if storage is not None:
            backpressure = self.settings.role is Role.INGEST
            sinks = writer_sinks(storage, backpressure=backpressure)
            telemetry_sink = telemetry_sink or sinks[0]
            audit_sink = audit_sink or sinks[1]
        self.storage = storage
        if signer is None and self.settings.role is Role.LEADER:
            raise ValidationError("signer", "a leader signs its plans: give it the signing key")
        self.signer = signer
        """Signs every plan as it leaves: edges refuse plans no trusted key signed."""
        self.telemetry_sink = telemetry_sink
        self.audit_sink = audit_sink
        self.codec = codec
        self.clock = clock or ControllerClock()
        self.counters: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._outgoing: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(
            self.settings.outgoing_queue
        )
        self._lock = asyncio.Lock()
        """Operator calls and incoming messages change the core one at a time."""
        self._storage_ok = True
        self._background: set[asyncio.Task[None]] = set()
        self._statuses_due: dict[str, CorridorStatus] = {}
        """Corridor statuses waiting for the next status publish, the latest per corridor."""
        self._states_published: dict[str, CorridorState] = {}
        self._settling: asyncio.Task[None] | None = None
        self.regions: dict[str, str] = {}
        """With region ``+``: intersection -> the region of its first accepted message."""
        self._incoming: asyncio.Queue[aiomqtt.Message] | None = None
        """The session's incoming queue (see ``_drain``)."""
        window = self.settings.trouble_window_s
        self._failures = RecentEvents(window)
        self._unmatched = RecentEvents(window)
        self._rejections = RecentEvents(window)
        self._connect_failures = 0
        """Broker sessions failed in a row."""
        self.history: TelemetryStore | None = storage.store if storage is not None else None
        """Where corridor history is read from; without storage, the corridors this process
        knows."""
        self._events = EventHub()
        self.alarm_book = AlarmBook(prefix=f"A{int(time.time() * 1000):x}")
        self._metrics = ServiceMetrics(self._metric_counters, self._metric_gauges)
        core.on_latency = lambda ms: self._metrics.request_to_ack.observe(ms / 1000.0)
        self._map: NetworkMap | None = None
        self._approach_node: tuple[np.ndarray, np.ndarray] | None = None

    def _backlog(self) -> int:
        """Telemetry and audit records waiting for the database."""
        return self.storage.pending if self.storage is not None else 0

    # ---- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the broker until ``stop`` (see ``_connected``), watching the city
        meanwhile, connected or not (``_monitor``): an alarm matters most when the broker is
        away."""
        monitor = asyncio.get_running_loop().create_task(self._monitor())
        try:
            await self._connected(stop)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _connected(self, stop: asyncio.Event) -> None:
        """Reconnect with jittered backoff after any loss of the broker. A loss mid-session
        comes out of the session's TaskGroup wrapped in an ExceptionGroup (hence
        ``except*``); anything else in it is a bug and stops."""
        backoff = Backoff(
            first_s=self.settings.reconnect_min_s, max_s=self.settings.reconnect_max_s
        )
        while not stop.is_set():
            try:
                await self._session(stop)
            except* aiomqtt.MqttError as errors:
                self.counters["broker_errors"] += 1
                log.warning("cloud: broker connection lost: %s", errors.exceptions[0])
            finally:
                if self.connected.is_set():  # a session ran: back off from the start again
                    backoff.reset()
                    self._connect_failures = 0
                self._connect_failures += 1
                self.connected.clear()
                self._client = None
            if stop.is_set():
                break
            await backoff.sleep(stop)

    async def _session(self, stop: asyncio.Event) -> None:
        settings = self.settings
        try:
            password = settings.secret()
        except (OSError, ValidationError) as error:  # a rotation under way: try again later
            raise aiomqtt.MqttError(f"cannot read the broker password: {error}") from error
        async with aiomqtt.Client(
            settings.broker_host,
            settings.broker_port,
            identifier=settings.client_id,
            username=settings.username,
            password=password,
            tls_params=settings.tls_parameters(),
            protocol=ProtocolVersion.V311,
            # The leader's session persists (acks and statuses wait for it across a reconnect);
            # an ingest worker's does not: Mosquitto keeps dealing a stopped member of a shared
            # subscription its turn while its session lives, and those messages wait for it
            # (then overflow); without a session the live workers take them all.
            clean_session=settings.role is Role.INGEST,
            max_queued_incoming_messages=settings.incoming_queue,
            queue_type=self._incoming_queue_type(),
            # paho leaves Nagle on: a plan written while the previous segment waits for the
            # broker's delayed ACK would wait up to 40 ms (measured: most of a request's time).
            # An ingest worker keeps it: its thousands of PUBACKs a second coalesce (without,
            # its CPU per message rose by a quarter and the broker's too).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
            if settings.role is Role.LEADER
            else (),
            max_inflight_messages=1000,
            timeout=10.0,
        ) as client:
            self._client = client
            for topic in self._subscriptions():
                await client.subscribe(topic, qos=1)
            self.connected.set()
            log.info("cloud (%s): connected, subscribed", settings.role)
            async with asyncio.TaskGroup() as tasks:
                receiving = tasks.create_task(self._receive(client))
                ticking = tasks.create_task(self._tick())
                sending = tasks.create_task(self._send(client))
                stopping = tasks.create_task(stop.wait())
                # a receive that fails (the broker went) ends the group, and this wait
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (receiving, ticking, sending, stopping):
                    task.cancel()

    def _incoming_queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue, counting what it refuses when full. paho acknowledges a
        message to the broker as it reads it, so one refused here is lost: counted as
        ``incoming_dropped`` (the health turns degraded), never silent. The service keeps
        the queue the client made, to drain it when the session ends (``_drain``)."""
        service, counters = self, self.counters

        class CountingQueue(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                service._incoming = self

            def put_nowait(self, item: aiomqtt.Message) -> None:
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    counters["incoming_dropped"] += 1
                    raise

        return CountingQueue

    def _subscriptions(self) -> list[str]:
        settings = self.settings
        telemetry = intersection_filter(TopicKind.TELEMETRY, region=settings.region)
        if settings.role is Role.INGEST:
            group = settings.share_group or "ingest"
            return [shared_filter(telemetry, group)]
        return [
            telemetry,
            intersection_filter(TopicKind.STATUS, region=settings.region),
            intersection_filter(TopicKind.ACK, region=settings.region),
            "cb/v1/vehicle/+/position",
        ]

    async def _receive(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                await self.handle(message.topic.value, bytes(message.payload))
        except aiomqtt.MqttError:
            await self._drain()
            raise

    async def _drain(self) -> None:
        """Take what the incoming queue still holds when the broker goes: paho acknowledged
        it to the broker on arrival, so nobody would ever send it again."""
        queue = self._incoming
        while queue is not None and not queue.empty():
            message = queue.get_nowait()
            await self.handle(message.topic.value, bytes(message.payload))

    async def handle(self, topic: str, payload: bytes) -> None:
        """One message off the broker. Never raises: every refusal is counted by its reason
        (``rejected_<reason>``), and a message that makes a handler fail is counted too."""
        try:
            await self._take(topic, payload)
        except RefusedError as error:
            self._refused(error.code, topic, error)
        except (MessageError, TopicError) as error:
            kind = "oversized" if error.field == "$" and "bytes" in error.reason else "malformed"
            self._refused(kind, topic, error)
        except ValidationError as error:
            self._refused("invalid", topic, error)
        except StorageError as error:  # the writer stopped: keep serving corridors
            self._storage_ok = False
            self.counters["storage_failed"] += 1
            log.error("cloud: telemetry not stored: %s", error)
        except Exception:  # one message must not end the session (and every corridor)
            self.counters["handle_failed"] += 1
            self._failures.add()
            log.exception("cloud: handling a message on %s failed", topic[:120])

    async def _take(self, topic: str, payload: bytes) -> None:
        where = parse_topic(topic)
        if where.kind is not TopicKind.TELEMETRY and self.settings.role is Role.INGEST:
            self.counters["ignored"] += 1
            return
        if where.kind is TopicKind.TELEMETRY:
            telemetry = self.codec.decode(payload, Telemetry)
            self._addressed(where, telemetry.intersection)
            await self._telemetry(telemetry)
        elif where.kind is TopicKind.STATUS:
            status = self.codec.decode(payload, Status)
            self._addressed(where, status.intersection)
            await self._status(status)
        elif where.kind is TopicKind.ACK:
            ack = self.codec.decode(payload, PlanAck)
            self._addressed(where, ack.intersection)
            await self._ack(ack)
        elif where.kind is TopicKind.VEHICLE_POSITION:
            position = self.codec.decode(payload, VehiclePosition)
            if where.vehicle != position.vehicle:
                raise RefusedError("wrong_vehicle", "vehicle", "the body names another vehicle")
            await self._position(position)
        else:
            self.counters["ignored"] += 1
            return
        self._learn_region(where)

    def _learn_region(self, where: Topic) -> None:
        """With region ``+``, an intersection's plans go to its first accepted message's."""
        node, region = where.intersection, where.region
        if self.settings.region == "+" and node is not None and region is not None:
            self.regions.setdefault(node, region)

    def _refused(self, reason: str, topic: str, error: ValidationError) -> None:
        self.counters[f"rejected_{reason}"] += 1
        if reason not in QUIET_REFUSALS:
            self._rejections.add()
        log.debug("cloud: refused a message on %s (%s): %s", topic[:120], reason, error)

    def _addressed(self, where: Topic, body_intersection: str) -> None:
        """A message speaks for the intersection of its topic, which the city must have, in
        its region: one edge's broker rights do not let it speak for another, nor move an
        intersection's plans to another region (with ``+``, its first accepted message's)."""
        node = where.intersection
        if node != body_intersection:
            raise RefusedError("wrong_intersection", "intersection", "the body names another")
        if node not in self.core.seen:
            raise RefusedError("unknown_intersection", "intersection", f"unknown {node!r}")
        home = self.regions.get(node) if self.settings.region == "+" else self.settings.region
        if home is not None and where.region != home:
            raise RefusedError("region_mismatch", "region", f"{node} is in region {home!r}")

    async def _telemetry(self, message: Telemetry) -> None:
        received = time.time()
        check_storable(message, received)  # an absurd time is refused before anything moves
        if self.settings.role is Role.LEADER:
            async with self._lock:
                self.core.on_telemetry(message, self.clock.now())
            verdict = self.clock.seen(message.intersection, message.controller_time)
            if verdict is not ClockVerdict.FOLLOWED:
                self.counters[f"clock_{verdict}"] += 1
        self.counters["telemetry"] += 1
        if self.telemetry_sink is not None:
            await self.telemetry_sink(message, received)

    async def _status(self, status: Status) -> None:
        async with self._lock:
            self._apply(self.core.on_status(status, self.clock.now()))
        node = status.intersection
        if status.presence is Presence.OFFLINE:
            self._raise(AlarmKind.EDGE_OFFLINE, node, f"the edge of {node} went offline")
        else:
            self._clear(AlarmKind.EDGE_OFFLINE, node)

    async def _ack(self, ack: PlanAck) -> None:
        check_number("at", ack.at, le=MAX_TIME_S)
        self.counters["acks"] += 1
        unmatched = self.core.counters["acks_unmatched"]
        copies = self.core.counters["acks_of_copies"]
        async with self._lock:
            self._apply(self.core.on_ack(ack, self.clock.now()))
        if self.core.counters["acks_unmatched"] > unmatched:
            self._unmatched.add()
        elif self.core.counters["acks_of_copies"] == copies:  # about a plan this cloud sent
            node = ack.intersection
            if ack.status in (AckStatus.REJECTED, AckStatus.EXPIRED):
                why = ack.reason or ack.reason_code or "no reason given"
                self._raise(AlarmKind.PLAN_REFUSED, node, f"{node} {ack.status} a plan: {why}")
            else:
                self._clear(AlarmKind.PLAN_REFUSED, node)
                self._clear(AlarmKind.PLAN_UNCONFIRMED, node)
        await self._audit(ack)

    async def _position(self, position: VehiclePosition) -> None:
        """Positions never move the clock: anyone with a GPS unit could send one."""
        async with self._lock:
            now = self.clock.now()
            self._apply(self.core.on_position(position, now, tolerance_s=self.clock.tolerance))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            if self.settings.role is not Role.LEADER:
                continue
            try:
                await self.tick_once()
            except Exception:  # one bad tick must not end the session (and every corridor)
                self.counters["tick_failed"] += 1
                self._failures.add()
                log.exception("cloud: tick failed")

    async def tick_once(self) -> None:
        """One tick: timeouts and plan retries, and an alarm for each intersection that
        stayed silent through every attempt."""
        with self._metrics.tick.time():
            async with self._lock:
                self._apply(self.core.tick(self.clock.now()))
        while self.core.unconfirmed:
            node = self.core.unconfirmed.popleft()
            self._raise(
                AlarmKind.PLAN_UNCONFIRMED, node,
                f"{node} did not acknowledge its plan after "
                f"{self.core.settings.send_attempts} attempts: planned around it",
            )  # fmt: skip

    async def _send(self, client: aiomqtt.Client) -> None:
        """Publish in the order the core decided (paho sends in call order; the PUBACK is
        awaited by many workers so a burst of plans leaves at once)."""

        async def worker() -> None:
            me = asyncio.current_task()
            while True:
                topic, payload, retain = await self._outgoing.get()
                try:
                    await client.publish(topic, payload, qos=1, retain=retain)
                    self.counters["published"] += 1
                except aiomqtt.MqttError as error:
                    self.counters["publish_failed"] += 1
                    log.warning("cloud: publish to %s failed: %s", topic, error)
                if me is not None and me.cancelling():
                    # aiomqtt waits for the PUBACK with asyncio.wait_for, which on Python 3.11
                    # loses a cancel that lands as the PUBACK does: the session would never end
                    raise asyncio.CancelledError

        async with asyncio.TaskGroup() as workers:
            for _ in range(64):
                workers.create_task(worker())

    def _apply(self, actions: list[Action]) -> None:
        region = self.settings.region if self.settings.region != "+" else None
        for action in actions:
            if isinstance(action, SendPlan):
                self._settle_soon()
                where = region or self.regions.get(action.intersection)
                if where is None:
                    # never heard from: nothing to send to; its ack timeout plans around it
                    self.counters["plans_unroutable"] += 1
                    continue
                topic = intersection_topic(TopicKind.PLAN, where, action.intersection)
                signed = self._signer().sign(action.plan)
                self._enqueue(topic, self.codec.encode(signed), retain=False)
                self.counters["plans_sent"] += 1
                self._audit_soon(signed)
            elif isinstance(action, PublishStatus):
                status = action.status
                if self._states_published.get(status.corridor_id) is not status.state:
                    # a change of state goes out at once; updates within a state are coalesced
                    self._statuses_due.pop(status.corridor_id, None)
                    self._publish_status(status)
                    continue
                if not self._statuses_due:
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.settings.status_every_s, self._publish_statuses)
                self._statuses_due[status.corridor_id] = status

    def _signer(self) -> PlanSigner:
        if self.signer is None:
            raise RuntimeError("only a leader sends plans")
        return self.signer

    def _settle_soon(self) -> None:
        if self._settling is None or self._settling.done():
            self._settling = asyncio.get_running_loop().create_task(self._settle())

    async def _settle(self) -> None:
        """The twins take the plans just sent one intersection at a time, once their acks are
        in (``settle_after_s``) and between other work (each step is synchronous, so never
        inside another handler). Whoever reads a twin before then brings it up to date."""
        await asyncio.sleep(self.settings.settle_after_s)
        while self.core.settle_one():
            await asyncio.sleep(0)

    def _publish_statuses(self) -> None:
        due, self._statuses_due = self._statuses_due, {}
        for status in due.values():
            self._publish_status(status)

    def _publish_status(self, status: CorridorStatus) -> None:
        if status.state in TERMINAL:
            self._states_published.pop(status.corridor_id, None)  # nothing follows: forget it
        else:
            self._states_published[status.corridor_id] = status.state
        topic = corridor_status_topic(status.corridor_id)
        self._enqueue(topic, self.codec.encode(status), retain=True)
        self._audit_soon(status)
        self._events.publish(EventKind.CORRIDOR, status)
        if status.state in ENDED_BADLY:
            why = f": {status.reason}" if status.reason else ""
            self._raise(
                AlarmKind.CORRIDOR_FAILED, status.corridor_id,
                f"corridor {status.corridor_id} ({status.vehicle}) {status.state}{why}",
            )  # fmt: skip

    def _enqueue(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._outgoing.put_nowait((topic, payload, retain))
        except asyncio.QueueFull:
            self.counters["outgoing_dropped"] += 1
            log.error("cloud: outgoing queue full, dropped a message to %s", topic)

    def _audit_soon(self, record: SignalPlan | CorridorStatus | OperatorAction | Alarm) -> None:
        if self.audit_sink is not None:
            task = asyncio.get_running_loop().create_task(self._audit(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _audit(self, record: object) -> None:
        if self.audit_sink is None:
            return
        try:
            await self.audit_sink(record, time.time())
            self._storage_ok = True
        except ValidationError as error:
            self.counters["audit_invalid"] += 1
            log.warning("cloud: audit record refused: %s", error)
        except Exception as error:  # the audit trail must never stop a corridor
            self._storage_ok = False
            self.counters["audit_failed"] += 1
            log.warning("cloud: audit record not written: %s", error)

    # ---- operators --------------------------------------------------------------------------

    async def request_corridor(
        self, request: CorridorRequest, *, max_active: int | None = None
    ) -> CorridorStatus:
        if self.settings.role is not Role.LEADER:
            raise ServiceUnavailable("this worker only ingests telemetry")
        if not self.connected.is_set():
            raise ServiceUnavailable("not connected to the broker")
        if not self.clock.known:
            raise ServiceUnavailable("no telemetry yet: controller time unknown")
        async with self._lock:
            now = self.clock.now()
            if request.vehicle in self.core.manager.by_vehicle:
                existing = self.core.manager.by_vehicle[request.vehicle]
                raise Conflict(f"{request.vehicle} already has corridor {existing}")
            if max_active is not None:
                self._check_limit(request.requester, max_active)
            try:
                actions = self.core.request(request, now)
            except ValidationError as error:
                raise _operator_error(error) from None
            self._apply(actions)
            corridor_id = self.core.manager.by_vehicle[request.vehicle]
            self._audit_action(ActionKind.REQUEST, request.requester, corridor_id)
            for action in actions:
                status = action.status if isinstance(action, PublishStatus) else None
                if status is not None and status.reason == PREEMPTED:
                    self.counters["corridors_preempted"] += 1
                    self._audit_action(
                        ActionKind.PREEMPT, request.requester, status.corridor_id,
                        reason=f"{PREEMPTED} by {corridor_id}",
                    )  # fmt: skip
            return self.core.manager.status(corridor_id, now)

    def _check_limit(self, requester: str, max_active: int) -> None:
        live = sum(
            1
            for c in self.core.manager.corridors.values()
            if c.requester == requester and c.state not in TERMINAL
        )
        if live >= max_active:
            raise LimitReached(f"{requester} has {live} live corridors; {max_active} are allowed")

    def _audit_action(
        self, kind: ActionKind, actor: str, corridor_id: str, *, reason: str | None = None
    ) -> None:
        corridor = self.core.manager.corridors[corridor_id]
        self._audit_soon(
            OperatorAction(
                at=time.time(), actor=actor, kind=kind, corridor_id=corridor_id,
                vehicle=corridor.vehicle, priority=corridor.priority,
                incident=corridor.incident, reason=reason,
            )
        )  # fmt: skip

    async def corridors(self, *, active_only: bool = False) -> list[CorridorStatus]:
        statuses = self.core.statuses(self.clock.now())
        if active_only:
            statuses = [s for s in statuses if s.state not in TERMINAL]
        return statuses

    async def corridor(self, corridor_id: str) -> CorridorStatus:
        """A corridor this process runs or ran; else, with a store, one stored before (a
        restart does not make yesterday's corridors unknown)."""
        if corridor_id in self.core.manager.corridors:
            return self.core.manager.status(corridor_id, self.clock.now())
        stored = None
        if self.history is not None:
            try:
                stored = await self.history.corridor(corridor_id)
            except (StorageUnavailable, StorageError) as error:
                raise ServiceUnavailable(f"corridor history unavailable: {error}") from None
        if stored is None:
            raise NotFound(f"no corridor {corridor_id!r}")
        return stored

    async def owner(self, corridor_id: str) -> CorridorOwner:
        corridor = self.core.manager.corridors.get(corridor_id)
        if corridor is None:
            raise NotFound(f"no corridor {corridor_id!r}")
        return CorridorOwner(
            corridor_id=corridor_id,
            requester=corridor.requester,
            incident=corridor.incident,
            priority=corridor.priority,
        )

    async def cancel(self, corridor_id: str, *, reason: str, by: str) -> CorridorStatus:
        async with self._lock:
            corridor = self.core.manager.corridors.get(corridor_id)
            if corridor is None:
                raise NotFound(f"no corridor {corridor_id!r}")
            if corridor.state in TERMINAL:
                raise Conflict(f"corridor {corridor_id} already ended ({corridor.state})")
            now = self.clock.now()
            self._apply(self.core.cancel(corridor_id, now, reason=reason))
            self._audit_action(ActionKind.CANCEL, by, corridor_id, reason=reason)
            return self.core.manager.status(corridor_id, now)

    async def network(self) -> NetworkView:
        now = self.clock.now()
        seen = self.core.seen.values()
        stale = self.core.settings.stale_after_s
        return NetworkView(
            now=now,
            intersections=len(self.core.seen),
            online=sum(1 for s in seen if s.presence is Presence.ONLINE),
            reporting=sum(
                1
                for s in seen
                if s.telemetry is not None and now - s.telemetry.controller_time <= stale
            ),
            corridors_active=self._active(),
        )

    async def intersection(self, intersection: str) -> IntersectionView:
        seen = self.core.seen.get(intersection)
        if seen is None:
            raise NotFound(f"no intersection {intersection!r}")
        now = self.clock.now()
        view = self.core.state.queues(now)
        queues = {
            approach: float(view.queue_veh[link])
            for approach, link in self.core.state.approach_link.items()
            if self.core.state.approach_node[approach] == intersection
        }
        telemetry = seen.telemetry
        return IntersectionView(
            intersection=intersection,
            presence=seen.presence,
            mode=seen.mode,
            telemetry_age_s=None
            if telemetry is None
            else max(0.0, now - telemetry.controller_time),
            queues_veh=queues,
            plan_id=None if telemetry is None else telemetry.plan_id,
        )

    async def health(self) -> HealthReport:
        """``degraded`` with a dependency away, a message lost, or trouble within the last
        ``trouble_window_s`` (see ``_recent``); ``down`` after four broker sessions failed."""
        broker = self.connected.is_set()
        database = self._storage_ok and (self.storage is None or self.storage.available)
        lossless = self.counters["incoming_dropped"] == 0
        recent = self._recent()
        calm = (
            recent["recent_failures"] == 0
            and recent["recent_acks_unmatched"] == 0
            and recent["recent_rejected"] <= self.settings.rejection_burst
        )
        status = Health.OK if broker and database and lossless and calm else Health.DEGRADED
        if not broker and self._connect_failures > 3:
            status = Health.DOWN
        counters = {**(self.counters + self.core.counters), **recent}
        return HealthReport(
            status=status,
            broker=broker,
            database=database,
            telemetry_backlog=self._backlog(),
            corridors_active=self._active(),
            intersections_online=sum(
                1 for s in self.core.seen.values() if s.presence is Presence.ONLINE
            ),
            detail={k: str(v) for k, v in sorted(counters.items())},
        )

    # ---- the console: map, states, history, alarms, stream, metrics ---------------------------

    @property
    def events(self) -> EventHub:
        return self._events

    async def clock_reading(self) -> ClockReading:
        return ClockReading(controller_s=self.clock.now(), wall_s=time.time(), rate=self.clock.rate)

    async def network_map(self) -> NetworkMap:
        if self._map is None:
            network = self.core.network
            index = {node.id: i for i, node in enumerate(network.intersections)}
            roads = {
                tuple(sorted((index[link.from_node], index[link.to_node])))
                for link in network.links
                if link.from_node != link.to_node
            }
            self._map = NetworkMap(
                places=tuple(
                    Place(id=n.id, x_m=n.x_m, y_m=n.y_m, controlled=n.id in self.core.seen)
                    for n in network.intersections
                ),
                roads=tuple(sorted((a, b) for a, b in roads)),
            )
        return self._map

    async def intersection_states(self) -> IntersectionStates:
        """Every intersection in ``core.seen`` order, queues summed over its approaches (one
        pass over the arrays: a city of 10,000 costs a few milliseconds)."""
        now = self.clock.now()
        ids = tuple(self.core.seen)
        if self._approach_node is None:
            position = {node: i for i, node in enumerate(ids)}
            state = self.core.state
            pairs = [
                (position[state.approach_node[a]], link)
                for a, link in state.approach_link.items()
                if state.approach_node[a] in position
            ]
            self._approach_node = (
                np.array([p for p, _ in pairs], dtype=np.intp),
                np.array([link for _, link in pairs], dtype=np.intp),
            )
        nodes, links = self._approach_node
        queues = self.core.state.queues(now).queue_veh
        totals = np.bincount(nodes, weights=queues[links], minlength=len(ids))
        stale = self.core.settings.stale_after_s
        return IntersectionStates(
            now=now,
            time=rfc3339(time.time()),
            ids=ids,
            states=tuple(_signal_state(seen, now, stale) for seen in self.core.seen.values()),
            queue_veh=tuple(round(float(q), 1) for q in totals),
            rate=self.clock.rate,
        )

    async def corridor_history(self, query: HistoryQuery) -> HistoryPage:
        if self.history is None:
            return history_page(self.core.statuses(self.clock.now()), query)
        try:
            found = await self.history.corridor_history(query)
        except (StorageUnavailable, StorageError) as error:
            raise ServiceUnavailable(f"corridor history unavailable: {error}") from None
        return page_of(found, query.limit)

    async def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        return self.alarm_book.alarms(active_only=active_only)

    async def acknowledge_alarm(self, alarm_id: str, *, by: str) -> Alarm:
        try:
            alarm = self.alarm_book.acknowledge(alarm_id, by=by, at=time.time())
        except KeyError:
            raise NotFound(f"no alarm {alarm_id!r}") from None
        self._alarm_changed(alarm)
        return alarm

    async def metrics(self) -> bytes:
        return self._metrics.exposition()

    def _metric_counters(self) -> Counter[str]:
        return self.counters + self.core.counters

    def _metric_gauges(self) -> dict[str, float]:
        incoming = self._incoming
        return {
            "ingest_lag_messages": 0 if incoming is None else incoming.qsize(),
            "database_backlog": self._backlog(),
            "corridors_active": self._active(),
            "intersections_online": sum(
                1 for s in self.core.seen.values() if s.presence is Presence.ONLINE
            ),
            "alarms_active": len(self.alarm_book.alarms(active_only=True)),
            "event_subscribers": self._events.subscribers,
        }

    async def _monitor(self) -> None:
        """Once a second: stale telemetry and the service's health as alarms, and the city's
        states to the live stream when someone listens. A failure is counted, never fatal."""
        while True:
            await asyncio.sleep(self.settings.monitor_every_s)
            try:
                await self.survey()
            except Exception:
                self.counters["monitor_failed"] += 1
                self._failures.add()
                log.exception("cloud: monitoring failed")

    async def survey(self) -> None:
        """One look at the city (``_monitor`` makes one a second)."""
        if self.settings.role is not Role.LEADER:
            return
        now = self.clock.now()
        stale_after = self.core.settings.stale_after_s
        for node, seen in self.core.seen.items():
            telemetry = seen.telemetry
            stale = (
                seen.presence is Presence.ONLINE
                and telemetry is not None
                and now - telemetry.controller_time > stale_after
            )
            if stale and telemetry is not None:
                age = now - telemetry.controller_time
                self._raise(
                    AlarmKind.TELEMETRY_STALE, node, f"no telemetry from {node} for {age:.0f} s"
                )
            elif not stale and self.alarm_book.is_open(AlarmKind.TELEMETRY_STALE, node):
                self._clear(AlarmKind.TELEMETRY_STALE, node)
        report = await self.health()
        if report.status is Health.OK:
            self._clear(AlarmKind.SERVICE_DEGRADED, "service")
        else:
            away = [
                name
                for name, up in (("broker", report.broker), ("database", report.database))
                if not up
            ]
            why = f"{', '.join(away)} away" if away else "messages lost or refused, or failures"
            self._raise(AlarmKind.SERVICE_DEGRADED, "service", f"service {report.status}: {why}")
        if self._events.subscribers:
            self._events.publish(EventKind.INTERSECTIONS, await self.intersection_states())

    def _raise(self, kind: AlarmKind, subject: str, message: str) -> None:
        alarm = self.alarm_book.raise_(kind, subject, message, at=time.time())
        if alarm is not None:
            log.warning("cloud: alarm %s: %s", alarm.alarm_id, message)
            self._alarm_changed(alarm)

    def _clear(self, kind: AlarmKind, subject: str) -> None:
        alarm = self.alarm_book.clear(kind, subject, at=time.time())
        if alarm is not None:
            self._alarm_changed(alarm)

    def _alarm_changed(self, alarm: Alarm) -> None:
        self._events.publish(EventKind.ALARM, alarm)
        self._audit_soon(alarm)

    def _recent(self) -> dict[str, int]:
        """Within the trouble window: ticks and handlers failed, acks that matched no plan
        sent, and refusals (``QUIET_REFUSALS`` aside)."""
        return {
            "recent_failures": self._failures.count(),
            "recent_acks_unmatched": self._unmatched.count(),
            "recent_rejected": self._rejections.count(),
        }

    def _active(self) -> int:
        return sum(1 for c in self.core.manager.corridors.values() if c.state not in TERMINAL)


def writer_sinks(
    writer: TelemetryWriter, *, backpressure: bool = False
) -> tuple[TelemetrySink, AuditSink]:
    """The service's sinks on a storage writer. With ``backpressure`` (an ingest worker)
    telemetry waits for room, so a slow database slows the broker connection down; without
    (the leader, whose receive loop also serves corridors) it never waits, and past the
    writer's bound the oldest messages are dropped and counted. Audit records never wait."""

    async def telemetry(message: Telemetry, received_at: float) -> None:
        if backpressure:
            await writer.put(message, received_at)
        else:
            writer.put_nowait(message, received_at)

    async def audit(record: object, at: float) -> None:
        if isinstance(record, SignalPlan):
            writer.put_record(PlanSent(record, at))
        elif isinstance(record, PlanAck):
            writer.put_record(AckReceived(record, at))
        elif isinstance(record, CorridorStatus | OperatorAction | Alarm):
            writer.put_record(record)

    return telemetry, audit


def _signal_state(seen: IntersectionSeen, now: float, stale_after_s: float) -> SignalState:
    if seen.presence is None:
        return SignalState.UNKNOWN
    if seen.presence is Presence.OFFLINE:
        return SignalState.OFFLINE
    telemetry = seen.telemetry
    if telemetry is None or now - telemetry.controller_time > stale_after_s:
        return SignalState.STALE
    return _MODE_STATE[seen.mode or Mode.NORMAL]


_MODE_STATE = {
    Mode.NORMAL: SignalState.NORMAL,
    Mode.PRIORITY: SignalState.PRIORITY,
    Mode.FAIL_SAFE: SignalState.FAIL_SAFE,
}


def _operator_error(error: ValidationError) -> Exception:
    """The manager's refusals, as the operator API's kinds of error."""
    if error.field in ("origin", "destination") and "unknown" in error.reason:
        return NotFound(str(error))
    if error.field == "corridor":
        return ServiceUnavailable(str(error))
    if error.field == "corridor_id":
        return Conflict(str(error))
    return error
