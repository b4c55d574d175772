"""The cloud service: one asyncio process (aiomqtt 2.x), its parts composed here.

* the broker session (``cloud/session.py``): connect, subscribe, receive, send, reconnect;
* the dispatch (``cloud/dispatch.py``): telemetry, statuses, acks and vehicle positions,
  decoded and checked, to the core; whatever does not fit is refused and counted by reason;
* the tick (here): timeouts and plan retries of ``CloudCore``;
* the outbox (``cloud/outbox.py``): plans (QoS 1) and retained corridor statuses, in the order
  the core made them, the audit trail, alarms and the live stream;
* the operator endpoints (``cloud/endpoints.py``) and the health (``cloud/health.py``).

Queues are bounded: a full store queue makes the receive loop wait (backpressure to the broker
connection) rather than grow. Scaling out: telemetry can be taken through an MQTT shared
subscription (``share_group``): several workers with ``role="ingest"`` split the stream and
write it, while one ``role="leader"`` keeps the city's state (it subscribes to all telemetry,
not shared) and runs the corridors. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from citybrain.cloud.alarms import Alarm, AlarmBook, AlarmKind
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore
from citybrain.cloud.corridor import Action
from citybrain.cloud.dispatch import Dispatcher, TelemetrySink
from citybrain.cloud.endpoints import OperatorEndpoints
from citybrain.cloud.events import EventHub
from citybrain.cloud.health import HealthMonitor, RecentEvents, Trouble
from citybrain.cloud.metrics import ServiceMetrics
from citybrain.cloud.operations import (
    ClockReading,
    CorridorOwner,
    Fleet,
    HealthReport,
    HistoryPage,
    HistoryQuery,
    IntersectionStates,
    IntersectionView,
    NetworkMap,
    NetworkView,
    Operations,
)
from citybrain.cloud.outbox import AuditSink, Outbox
from citybrain.cloud.session import BrokerSession, Role
from citybrain.cloud.storage import (
    AckReceived,
    OperatorAction,
    PlanSent,
    StorageError,
    StorageUnavailable,
    TelemetryStore,
    TelemetryWriter,
)
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.codec import DEFAULT_CODEC, Codec
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_file, read_secret
from citybrain.models.messages import (
    CorridorRequest,
    CorridorStatus,
    PlanAck,
    SignalPlan,
    Telemetry,
)
from citybrain.models.signing import PlanSigner
from citybrain.models.tls import client_context

__all__ = [
    "DEFAULT_REGION",
    "AuditSink",
    "CloudService",
    "ControllerClock",
    "RecentEvents",
    "Role",
    "ServiceSettings",
    "TelemetrySink",
    "writer_sinks",
]

log = logging.getLogger(__name__)

DEFAULT_REGION = "live"
"""The region the demo's edges publish in (``citybrain/live.py``)."""


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
    """The twins take the plans sent this long after, past the acks' p99 (see
    ``Outbox._settle``)."""
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

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS with the broker's certificate and host name checked, or ``None`` (plain TCP)."""
        if not self.tls:
            return None
        return client_context(
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )


class CloudService(Operations):
    """The parts wired together, each given what it uses at construction; the names callers
    use (the HTTP API, the CLI, the demo, tests and benchmarks) stay here."""

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
        self.settings = settings = settings or ServiceSettings()
        if storage is not None:
            backpressure = settings.role is Role.INGEST
            sinks = writer_sinks(storage, backpressure=backpressure)
            telemetry_sink = telemetry_sink or sinks[0]
            audit_sink = audit_sink or sinks[1]
        if signer is None and settings.role is Role.LEADER:
            raise ValidationError("signer", "a leader signs its plans: give it the signing key")
        self.codec = codec
        self.clock = clock = clock or ControllerClock()
        self.counters: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        """Operator calls, incoming messages and ticks change the core one at a time."""
        self._events = EventHub()
        self.alarm_book = AlarmBook(prefix=f"A{int(time.time() * 1000):x}")
        self._trouble = trouble = Trouble(settings.trouble_window_s)
        regions: dict[str, str] = {}
        """With region ``+``: intersection -> the region of its first accepted message."""
        self.session = BrokerSession(
            settings, counters=self.counters, handle=self.handle, tick=self._tick
        )
        self.outbox = Outbox(
            settings, core, signer=signer, codec=codec, counters=self.counters,
            enqueue=self.session.enqueue, regions=regions, events=self._events,
            alarm_book=self.alarm_book, trouble=trouble, audit_sink=audit_sink,
        )  # fmt: skip
        self.dispatcher = Dispatcher(
            settings, core, codec=codec, clock=clock, counters=self.counters, lock=self._lock,
            outbox=self.outbox, trouble=trouble, regions=regions, telemetry_sink=telemetry_sink,
        )  # fmt: skip
        self.endpoints = OperatorEndpoints(
            settings, core, clock=clock, lock=self._lock, connected=self.session.connected,
            outbox=self.outbox, alarm_book=self.alarm_book, counters=self.counters,
            history=storage.store if storage is not None else None,
        )  # fmt: skip
        self.monitor = HealthMonitor(
            settings, core, session=self.session, counters=self.counters, trouble=trouble,
            outbox=self.outbox, alarm_book=self.alarm_book, events=self._events, clock=clock,
            states=self.endpoints.intersection_states, fleet=self.endpoints.fleet,
            storage=storage,
        )  # fmt: skip
        self._metrics = ServiceMetrics(self.monitor.metric_counters, self.monitor.metric_gauges)
        core.on_latency = lambda ms: self._metrics.request_to_ack.observe(ms / 1000.0)

    # ---- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the broker until ``stop`` (see ``BrokerSession.run``), watching
        the city meanwhile, connected or not (``HealthMonitor.monitor``): an alarm matters most
        when the broker is away."""
        await self.restore_alarms()
        monitor = asyncio.get_running_loop().create_task(self.monitor.monitor())
        try:
            await self.session.run(stop)
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def restore_alarms(self) -> None:
        """Alarms nobody acknowledged before a restart are still the operators' to see."""
        if self.history is None:
            return
        try:
            taken = self.alarm_book.restore(await self.history.alarms())
        except (StorageError, StorageUnavailable) as error:
            log.warning("cloud: alarms from before this start not read back: %s", error)
            return
        if taken:
            log.info("cloud: %d unacknowledged alarms from before this start", taken)

    async def handle(self, topic: str, payload: bytes) -> None:
        """One message off the broker (``Dispatcher.handle``): never raises."""
        await self.dispatcher.handle(topic, payload)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            if self.settings.role is not Role.LEADER:
                continue
            try:
                await self.tick_once()
            except Exception:  # one bad tick must not end the session (and every corridor)
                self.counters["tick_failed"] += 1
                self._trouble.failures.add()
                log.exception("cloud: tick failed")

    async def tick_once(self) -> None:
        """One tick: timeouts and plan retries, and an alarm for each intersection that
        stayed silent through every attempt."""
        with self._metrics.tick.time():
            async with self._lock:
                self.outbox.apply(self.core.tick(self.clock.now()))
        while self.core.unconfirmed:
            node = self.core.unconfirmed.popleft()
            self.outbox.raise_(
                AlarmKind.PLAN_UNCONFIRMED, node,
                f"{node} did not acknowledge its plan after "
                f"{self.core.settings.send_attempts} attempts: planned around it",
            )  # fmt: skip

    async def survey(self) -> None:
        """One look at the city (``HealthMonitor.survey``; the monitor makes one a second)."""
        await self.monitor.survey()

    # ---- what callers set after construction, and what tests reach ---------------------------

    @property
    def connected(self) -> asyncio.Event:
        return self.session.connected

    @property
    def regions(self) -> dict[str, str]:
        return self.dispatcher.regions

    @property
    def storage(self) -> TelemetryWriter | None:
        return self.monitor.storage

    @storage.setter
    def storage(self, storage: TelemetryWriter | None) -> None:
        self.monitor.storage = storage

    @property
    def history(self) -> TelemetryStore | None:
        return self.endpoints.history

    @history.setter
    def history(self, history: TelemetryStore | None) -> None:
        self.endpoints.history = history

    @property
    def telemetry_sink(self) -> TelemetrySink | None:
        return self.dispatcher.telemetry_sink

    @telemetry_sink.setter
    def telemetry_sink(self, sink: TelemetrySink | None) -> None:
        self.dispatcher.telemetry_sink = sink

    @property
    def audit_sink(self) -> AuditSink | None:
        return self.outbox.audit_sink

    @audit_sink.setter
    def audit_sink(self, sink: AuditSink | None) -> None:
        self.outbox.audit_sink = sink

    @property
    def _client(self) -> aiomqtt.Client | None:
        return self.session.client

    @property
    def _outgoing(self) -> asyncio.Queue[tuple[str, bytes, bool]]:
        return self.session.outgoing

    def _enqueue(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.session.enqueue(topic, payload, retain=retain)

    async def _send(self, client: aiomqtt.Client) -> None:
        await self.session.send(client)

    async def _receive(self, client: aiomqtt.Client) -> None:
        await self.session.receive(client)

    def _incoming_queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        return self.session.incoming_queue_type()

    def _apply(self, actions: list[Action]) -> None:
        self.outbox.apply(actions)

    def _raise(self, kind: AlarmKind, subject: str, message: str) -> None:
        self.outbox.raise_(kind, subject, message)

    # ---- operators (``OperatorEndpoints``) --------------------------------------------------

    async def request_corridor(
        self, request: CorridorRequest, *, max_active: int | None = None
    ) -> CorridorStatus:
        return await self.endpoints.request_corridor(request, max_active=max_active)

    async def corridors(self, *, active_only: bool = False) -> list[CorridorStatus]:
        return await self.endpoints.corridors(active_only=active_only)

    async def corridor(self, corridor_id: str) -> CorridorStatus:
        return await self.endpoints.corridor(corridor_id)

    async def owner(self, corridor_id: str) -> CorridorOwner:
        return await self.endpoints.owner(corridor_id)

    async def cancel(self, corridor_id: str, *, reason: str, by: str) -> CorridorStatus:
        return await self.endpoints.cancel(corridor_id, reason=reason, by=by)

    async def network(self) -> NetworkView:
        return await self.endpoints.network()

    async def intersection(self, intersection: str) -> IntersectionView:
        return await self.endpoints.intersection(intersection)

    async def clock_reading(self) -> ClockReading:
        return await self.endpoints.clock_reading()

    async def network_map(self) -> NetworkMap:
        return await self.endpoints.network_map()

    async def intersection_states(self) -> IntersectionStates:
        return await self.endpoints.intersection_states()

    async def fleet(self) -> Fleet:
        return await self.endpoints.fleet()

    async def corridor_history(self, query: HistoryQuery) -> HistoryPage:
        return await self.endpoints.corridor_history(query)

    async def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        return await self.endpoints.alarms(active_only=active_only)

    async def acknowledge_alarm(self, alarm_id: str, *, by: str) -> Alarm:
        return await self.endpoints.acknowledge_alarm(alarm_id, by=by)

    # ---- health and metrics (``HealthMonitor``) ---------------------------------------------

    async def health(self) -> HealthReport:
        return await self.monitor.health()

    async def metrics(self) -> bytes:
        return self._metrics.exposition()

    @property
    def events(self) -> EventHub:
        return self._events


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
