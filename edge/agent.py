"""The edge agent: the asyncio shell around ``EdgeCore`` for one intersection, and the host that
runs many of them in one process (one MQTT session each, one field bus connection and one
telemetry buffer shared).

Each agent polls its controller's displays at ``poll_hz`` and its detectors every telemetry
period, feeds the core, and carries out what the core returns: messages to the broker, plans
and releases to the controller. Telemetry and acks are QoS 1: sent live while the broker is up
and the disk buffer is empty; otherwise appended to the buffer (with whatever was in flight
when the broker went) and replayed in order after reconnecting, deleted only on PUBACK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from citybrain.edge.buffer import TelemetryBuffer
from citybrain.edge.core import (
    EdgeAction,
    EdgeCore,
    EdgeCoreSettings,
    Publish,
    ReleaseController,
    SendToController,
)
from citybrain.edge.drivers import (
    ControllerDriver,
    DriverError,
    FakeDriver,
    FieldBusClient,
    FieldBusDriver,
)
from citybrain.edge.mqtt import MqttSession, Outgoing, Will
from citybrain.edge.orders import PlanOrders
from citybrain.edge.settings import EdgeSettings, SettingsError
from citybrain.models.codec import DEFAULT_CODEC, Codec
from citybrain.models.errors import CitybrainError, MessageError, ValidationError
from citybrain.models.fieldbus import ApproachConfig, FieldBusError, Hello, SignalReading
from citybrain.models.retry import Backoff, retry
from citybrain.models.signing import TrustStore
from citybrain.models.topics import TopicKind, intersection_topic
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group

log = logging.getLogger(__name__)

T = TypeVar("T")

SOFTWARE_VERSION = "citybrain-edge 0.1.0"
REPLAY_BATCH = 200
REPLAY_WINDOW = 400
"""Buffered messages in flight at once during a replay (PUBACKs pace it)."""
COMMAND_QUEUE = 64
CLOCK_HOLD_S = 1.0
"""The controller clock is read at ``poll_hz``; between reads it is taken to run with the
wall clock until the last reading is this much (wall time) past the age a plan may be checked
against (``reading_max_age_s``), then held (a stepped simulator may pause). Held sooner, a
controller link gone down read as a clock standing still: every plan was refused as issued in
the future (``stale``) instead of ``controller_unavailable``."""
LIVE = "live"
STATUS = "status"


@dataclass
class AgentStats:
    published: int = 0
    buffered: int = 0
    replayed: int = 0
    driver_errors: int = 0
    plan_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    """From a plan's arrival off the broker to the controller's answer to it."""


class EdgeAgent:
    def __init__(
        self,
        *,
        settings: EdgeSettings,
        driver: ControllerDriver,
        buffer: TelemetryBuffer,
        trust: TrustStore,
        orders: PlanOrders,
        codec: Codec = DEFAULT_CODEC,
    ) -> None:
        self.settings = settings
        self.driver = driver
        self.buffer = buffer
        self.trust = trust
        self.orders = orders
        self.codec = codec
        self.intersection = driver.intersection
        self.agent_id = settings.broker.client_id(self.intersection)
        self.stats = AgentStats()
        self.core: EdgeCore | None = None
        self.session: MqttSession | None = None
        self.ready = asyncio.Event()
        """Set once the controller's configuration is read and the core exists."""
        self._reading: tuple[float, float] | None = None
        self._rate = 1.0
        """Controller seconds per wall second, smoothed over recent reads."""
        self._live = False
        self._replay = asyncio.Event()
        self._commands: asyncio.Queue[tuple[SendToController | ReleaseController, float]] = (
            asyncio.Queue(COMMAND_QUEUE)
        )

    def topic(self, kind: TopicKind) -> str:
        return intersection_topic(kind, self.settings.region, self.intersection)

    def now(self) -> float:
        """Controller time: the last reading's, advanced since at the rate the controller's
        clock has been seen to run (1 in the field; a simulation's pace), until that reading
        is too old to check a plan against and ``CLOCK_HOLD_S`` more."""
        if self._reading is None:
            return 0.0
        at, read_at = self._reading
        oldest = self.core.settings.reading_max_age_s if self.core is not None else 0.0
        ran = (time.monotonic() - read_at) * self._rate
        return at + min(ran, oldest + CLOCK_HOLD_S * self._rate)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: read the controller, stream telemetry, apply plans. On stop the
        offline status is published, in-flight messages wait for their PUBACK or go to disk."""
        config = await self._retry(self.driver.config, stop)
        if config is None:
            return
        safety = self.settings.safety
        core = EdgeCore(
            config,
            trust=self.trust,
            last_order=self.orders.get(self.intersection),
            settings=EdgeCoreSettings(
                limits=safety.limits(),
                failsafe_after_s=safety.failsafe_after_s,
                software_version=SOFTWARE_VERSION,
            ),
            first_seq=time.time_ns() // 1_000_000,  # increases across restarts
            codec=self.codec,
        )
        self.core = core
        first = await self._retry(self.driver.signals, stop)
        if first is None:
            return
        self._clock(first)
        core.on_signals(first, first.time)
        session = MqttSession(
            client_id=self.agent_id,
            broker=self.settings.broker,
            will=Will(self.topic(TopicKind.STATUS), self.codec.encode(core.will())),
            subscriptions=(self.topic(TopicKind.PLAN),),
            on_up=self._up,
            on_down=self._down,
            on_message=self._message,
            on_acked=self._acked,
        )
        self.session = session
        self.ready.set()
        log.info("%s: agent started (%d approaches)", self.intersection, len(config.approaches))
        try:
            async with asyncio.TaskGroup() as tasks:
                loops = [
                    tasks.create_task(session.run()),
                    tasks.create_task(self._poll()),
                    tasks.create_task(self._telemetry()),
                    tasks.create_task(self._command_loop()),
                    tasks.create_task(self._replay_loop()),
                ]
                await stop.wait()
                await self._goodbye(core, session)
                for task in loops:
                    task.cancel()
        finally:
            await self.driver.close()
        log.info("%s: agent stopped", self.intersection)

    # ---- controller ---------------------------------------------------------------------------

    async def _retry(self, call: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
        """Call the controller until it answers (link errors are waited out, with backoff);
        None when stopped first."""

        def recoverable(error: Exception) -> bool:
            if not isinstance(error, DriverError) or not error.recoverable:
                return False
            self.stats.driver_errors += 1
            log.warning("%s: controller not reachable yet: %s", self.intersection, error)
            return True

        backoff = Backoff(first_s=0.2, max_s=10.0)
        return await retry(call, backoff=backoff, retry_on=recoverable, stop=stop)

    def _clock(self, reading: SignalReading) -> None:
        wall = time.monotonic()
        if self._reading is not None and wall - self._reading[1] > 0.01:
            seen = (reading.time - self._reading[0]) / (wall - self._reading[1])
            self._rate += 0.2 * (min(max(seen, 0.0), 1000.0) - self._rate)
        self._reading = (reading.time, wall)

    async def _poll(self) -> None:
        core = self._core()
        period = 1.0 / self.settings.controller.poll_hz
        failing = False
        while True:
            started = time.monotonic()
            try:
                reading = await self.driver.signals()
                self._clock(reading)
                self._apply(core.on_signals(reading, self.now()))
                if failing:
                    log.info("%s: controller link back", self.intersection)
                failing = False
            except CitybrainError as error:
                self.stats.driver_errors += 1
                if not failing:
                    log.warning("%s: controller link lost: %s", self.intersection, error)
                failing = True
            self._apply(core.tick(self.now()))
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _telemetry(self) -> None:
        core = self._core()
        period = self.settings.telemetry.period_s
        next_at = time.monotonic()
        while True:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                reading = await self.driver.detectors()
            except CitybrainError as error:  # link down, or a reading that fails its checks
                self.stats.driver_errors += 1
                log.debug("%s: detectors not read: %s", self.intersection, error)
                continue
            self._apply(core.on_detectors(reading, self.now()))

    async def _command_loop(self) -> None:
        core = self._core()
        while True:
            command, received = await self._commands.get()
            if isinstance(command, ReleaseController):
                try:
                    await self.driver.release()
                except DriverError as error:
                    # the cabinet's own lease still ends the plan; say so loudly
                    log.error(
                        "%s: release (%s) failed: %s", self.intersection, command.reason, error
                    )
                continue
            plan = command.plan
            try:
                result = await self.driver.send_plan(plan)
            except DriverError as error:
                self._apply(core.on_command_failed(plan.plan_id, str(error), self.now()))
                continue
            self.stats.plan_latency_ms.append((time.monotonic() - received) * 1000.0)
            self._apply(
                core.on_command_result(
                    plan.plan_id, result.status, result.reason_code, result.reason, self.now()
                )
            )

    # ---- broker -------------------------------------------------------------------------------

    def _up(self) -> None:
        self._apply(self._core().on_broker(True, self.now()))
        self._replay.set()

    def _down(self, unacked: list[Outgoing]) -> None:
        """The broker went: what was sent live and not acked goes to disk first, in order."""
        self._live = False
        lost = [m for m in unacked if m.token == LIVE]
        if lost:
            self.buffer.append_many((self.agent_id, m.topic, m.payload, self.now()) for m in lost)
            self.stats.buffered += len(lost)
        if self.core is not None:
            self.core.on_broker(False, self.now())

    def _message(self, topic: str, payload: bytes) -> None:
        received = time.monotonic()
        if topic != self.topic(TopicKind.PLAN):
            return
        core = self._core()
        taken = core.last_order
        self._apply(core.on_plan_payload(payload, self.now()), received)
        if core.last_order is not None and core.last_order != taken:
            self.orders.put(self.intersection, core.last_order)

    def _acked(self, message: Outgoing) -> None:
        if isinstance(message.token, int):
            self.buffer.ack(self.agent_id, message.token)
            self.stats.replayed += 1
        else:
            self.stats.published += 1

    async def _replay_loop(self) -> None:
        """After each reconnect: publish what the buffer holds, oldest first, then go live."""
        while True:
            await self._replay.wait()
            self._replay.clear()
            session = self.session
            sent_up_to = 0
            while session is not None and session.connected:
                batch = self.buffer.peek(self.agent_id, REPLAY_BATCH, after_id=sent_up_to)
                if not batch:
                    if session.inflight == 0 and self.buffer.size(self.agent_id) == 0:
                        self._live = True
                        break
                    await asyncio.sleep(0.01)
                    continue
                for item in batch:
                    if not session.publish(Outgoing(item.topic, item.payload, item.id)):
                        break
                    sent_up_to = item.id
                while session.connected and session.inflight >= REPLAY_WINDOW:
                    await asyncio.sleep(0.005)

    async def _goodbye(self, core: EdgeCore, session: MqttSession) -> None:
        if session.connected:
            payload = self.codec.encode(core.goodbye(self.now()))
            session.publish(Outgoing(self.topic(TopicKind.STATUS), payload, STATUS), retain=True)
        await session.stop()

    # ---- actions ----------------------------------------------------------------------------

    def _apply(self, actions: list[EdgeAction], received: float | None = None) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self._publish(action)
                continue
            try:
                self._commands.put_nowait((action, received or time.monotonic()))
            except asyncio.QueueFull:
                log.error("%s: controller command queue full", self.intersection)
                if isinstance(action, SendToController):
                    self._apply(
                        self._core().on_command_failed(
                            action.plan.plan_id, "controller command queue full", self.now()
                        )
                    )

    def _publish(self, action: Publish) -> None:
        try:
            payload = self.codec.encode(action.message)
        except MessageError as error:
            log.error("%s: cannot encode %s: %s", self.intersection, action.kind, error)
            return
        topic = self.topic(action.kind)
        session = self.session
        if action.kind is TopicKind.STATUS:
            if session is not None:
                session.publish(Outgoing(topic, payload, STATUS), retain=True)
            return
        if self._live and session is not None and session.publish(Outgoing(topic, payload, LIVE)):
            return
        self.buffer.append(self.agent_id, topic, payload, self.now())
        self.stats.buffered += 1
        self._replay.set()

    def _core(self) -> EdgeCore:
        if self.core is None:
            raise RuntimeError("the agent has not read its controller yet")
        return self.core


async def run_host(
    settings: EdgeSettings,
    stop: asyncio.Event,
    *,
    drivers: list[ControllerDriver] | None = None,
    started: Callable[[list[EdgeAgent]], None] | None = None,
) -> None:
    """Run one agent per hosted intersection until ``stop``: one MQTT session each, the
    controller link and the telemetry buffer shared. A failing agent is logged and restarted;
    it never takes the others down."""
    trust = load_trust(settings)
    orders = PlanOrders(settings.buffer.path)
    buffer = TelemetryBuffer.open(
        settings.buffer.path,
        max_messages=settings.buffer.max_messages,
        max_bytes=settings.buffer.max_bytes,
    )
    client: FieldBusClient | None = None
    try:
        if drivers is None:
            client, drivers = await _connect_controllers(settings, stop)
        agents = [
            EdgeAgent(settings=settings, driver=d, buffer=buffer, trust=trust, orders=orders)
            for d in drivers
        ]
        if started is not None:
            started(agents)
        async with asyncio.TaskGroup() as tasks:
            for agent in agents:
                tasks.create_task(_supervise(agent, stop))
    finally:
        orders.flush()
        if client is not None:
            await client.close()
        buffer.close()


def load_trust(settings: EdgeSettings) -> TrustStore:
    """The trust store the settings name, or a ``SettingsError`` saying what is wrong."""
    try:
        return TrustStore.load(settings.trust.store)
    except ValidationError as error:
        raise SettingsError(
            str(settings.source or "settings"), "trust.store", error.reason
        ) from None


async def _connect_controllers(
    settings: EdgeSettings, stop: asyncio.Event
) -> tuple[FieldBusClient | None, list[ControllerDriver]]:
    controller = settings.controller
    if controller.driver == "fake":
        if settings.intersections == "all":
            raise SettingsError(
                str(settings.source or "settings"),
                "intersections",
                "the fake controller reports no intersections: list them",
            )
        return None, [fake_driver(name) for name in settings.intersections]
    client = FieldBusClient(
        host=controller.host, port=controller.port, timeout_s=controller.timeout_s
    )

    async def greet() -> Hello:
        await client.connect()
        return await client.hello()

    def unreachable(error: Exception) -> bool:
        if not isinstance(error, FieldBusError):
            return False
        log.warning("controller link %s:%d: %s", controller.host, controller.port, error)
        return True

    backoff = Backoff(first_s=0.5, max_s=30.0)
    hello = await retry(greet, backoff=backoff, retry_on=unreachable, stop=stop)
    if hello is None:  # stopped before the link came up: no agent to start
        return client, []
    names = settings.hosted(hello.names)
    log.info("controller link up: %d of %d cabinets hosted here", len(names), len(hello.names))
    return client, [FieldBusDriver(client, name) for name in names]


def fake_driver(intersection: str) -> FakeDriver:
    """A cabinet for trying an agent without one: the bundled eight-group plan, four
    approaches, and a clock that follows the wall clock."""
    plan = lead_lead_plan(nema_eight_group(intersection), offset_s=0.0)
    approaches = [
        ApproachConfig(
            approach=f"{intersection}:{side}", link=f"{intersection}-{side}", lanes=2,
            length_m=300.0, speed_limit_mps=13.9, saturation_flow_vphpl=1800.0,
            advance_setback_m=60.0, groups=list(groups),
        )
        for side, groups in (("W", "52"), ("E", "16"), ("S", "74"), ("N", "38"))
    ]  # fmt: skip
    return FakeDriver(intersection, plan, approaches, clock=time.time)


async def _supervise(agent: EdgeAgent, stop: asyncio.Event) -> None:
    backoff = Backoff(first_s=1.0, max_s=60.0)

    def restart(error: Exception) -> bool:
        # any error: one agent's bug must not stop a city's worth of others
        log.error(
            "%s: agent failed; restarting within %.0f s",
            agent.intersection,
            backoff.delay_s,
            exc_info=error,
        )
        return True

    await retry(lambda: agent.run(stop), backoff=backoff, retry_on=restart, stop=stop)
