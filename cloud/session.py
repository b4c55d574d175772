"""The cloud service's broker session: one aiomqtt 2.x client at a time, its subscriptions, the
receive and send loops, and the reconnect after any loss of the broker.

It knows nothing of what the messages mean: each one taken goes to ``handle`` (the service's
``Dispatcher``), and what the service says goes out through ``enqueue``, in the order it was
said. Apart so that the session's lifetime (connect, lose, drain, back off, connect again) is
read in one place, without the corridors around it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiomqtt
from aiomqtt import ProtocolVersion

from citybrain.models.errors import ValidationError
from citybrain.models.retry import Backoff
from citybrain.models.topics import TopicKind, intersection_filter, shared_filter

if TYPE_CHECKING:
    from citybrain.cloud.service import ServiceSettings

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]
"""Takes one message off the broker (topic, payload); never raises."""


class Role(enum.StrEnum):
    LEADER = "leader"
    """Keeps the city's state, runs the corridors, answers operators."""
    INGEST = "ingest"
    """Only stores telemetry taken from a shared subscription."""


class BrokerSession:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        counters: Counter[str],
        handle: Handler,
        tick: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        """``handle`` takes every message received; ``tick`` is a loop run while connected
        (the service's ticks), ended with the session."""
        self.settings = settings
        self.counters = counters
        self._handle = handle
        self._tick = tick
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.outgoing: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(
            settings.outgoing_queue
        )
        self.incoming: asyncio.Queue[aiomqtt.Message] | None = None
        """The session's incoming queue (see ``_drain``)."""
        self.connect_failures = 0
        """Broker sessions failed in a row."""

    async def run(self, stop: asyncio.Event) -> None:
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
                    self.connect_failures = 0
                self.connect_failures += 1
                self.connected.clear()
                self.client = None
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
            tls_context=settings.tls_context(),
            protocol=ProtocolVersion.V311,
            # The leader's session persists (acks and statuses wait for it across a reconnect);
            # an ingest worker's does not: Mosquitto keeps dealing a stopped member of a shared
            # subscription its turn while its session lives, and those messages wait for it
            # (then overflow); without a session the live workers take them all.
            clean_session=settings.role is Role.INGEST,
            max_queued_incoming_messages=settings.incoming_queue,
            queue_type=self.incoming_queue_type(),
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
            self.client = client
            for topic in self.subscriptions():
                await client.subscribe(topic, qos=1)
            self.connected.set()
            log.info("cloud (%s): connected, subscribed", settings.role)
            async with asyncio.TaskGroup() as tasks:
                receiving = tasks.create_task(self.receive(client))
                ticking = tasks.create_task(self._tick())
                sending = tasks.create_task(self.send(client))
                stopping = tasks.create_task(stop.wait())
                # a receive that fails (the broker went) ends the group, and this wait
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                for task in (receiving, ticking, sending, stopping):
                    task.cancel()

    def incoming_queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue, counting what it refuses when full. paho acknowledges a
        message to the broker as it reads it, so one refused here is lost: counted as
        ``incoming_dropped`` (the health turns degraded), never silent. The session keeps
        the queue the client made, to drain it when the session ends (``_drain``)."""
        session, counters = self, self.counters

        class CountingQueue(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                session.incoming = self

            def put_nowait(self, item: aiomqtt.Message) -> None:
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    counters["incoming_dropped"] += 1
                    raise

        return CountingQueue

    def subscriptions(self) -> list[str]:
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

    async def receive(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                await self._handle(message.topic.value, bytes(message.payload))
        except aiomqtt.MqttError:
            await self._drain()
            raise

    async def _drain(self) -> None:
        """Take what the incoming queue still holds when the broker goes: paho acknowledged
        it to the broker on arrival, so nobody would ever send it again."""
        queue = self.incoming
        while queue is not None and not queue.empty():
            message = queue.get_nowait()
            await self._handle(message.topic.value, bytes(message.payload))

    async def send(self, client: aiomqtt.Client) -> None:
        """Publish in the order the service decided (paho sends in call order; the PUBACK is
        awaited by many workers so a burst of plans leaves at once)."""

        async def worker() -> None:
            me = asyncio.current_task()
            while True:
                topic, payload, retain = await self.outgoing.get()
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

    def enqueue(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self.outgoing.put_nowait((topic, payload, retain))
        except asyncio.QueueFull:
            self.counters["outgoing_dropped"] += 1
            log.error("cloud: outgoing queue full, dropped a message to %s", topic)
