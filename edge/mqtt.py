"""One MQTT session (paho-mqtt 2.x) driven by the asyncio loop instead of paho's own thread,
so that one process can hold a thousand sessions without a thousand threads.

paho does the protocol; this module only tells it when its socket is readable or writable
(``loop_read`` / ``loop_write``), runs ``loop_misc`` for keepalives, and reconnects with the
shared backoff (``models.retry``). Each connection gets a fresh paho client from
``paho_client``, the one place the edge sets up credentials and TLS: messages the session had
in flight are handed back to the caller (``on_down``) rather than resent by paho, so the caller
alone decides their order (the agent's disk buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.edge.settings import BrokerSettings
from citybrain.models.retry import Backoff
from citybrain.models.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    token: object
    """The caller's handle for the message (say, its id in the disk buffer)."""


def paho_client(*, broker: BrokerSettings, client_id: str, clean_session: bool) -> paho.Client:
    """A paho client (MQTT 3.1.1, callback API 2) with the broker's credentials and TLS set:
    the agents and ``doctor`` connect the same way. The password is read now, from its file if
    it lives in one, so a rotated password needs no restart."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.secret())
    if broker.tls:
        client.tls_set_context(
            client_context(
                ca_file=broker.ca_file, cert_file=broker.cert_file, key_file=broker.key_file
            )
        )
        client.tls_insecure_set(broker.tls_insecure)
    return client


class MqttSession:
    """A persistent MQTT 3.1.1 session (clean_session off, so QoS 1 messages sent to it while
    it is away are kept by the broker) that reconnects by itself until ``stop``."""

    def __init__(
        self,
        *,
        client_id: str,
        broker: BrokerSettings,
        will: Will,
        subscriptions: tuple[str, ...],
        on_up: Callable[[], None],
        on_down: Callable[[list[Outgoing]], None],
        on_message: Callable[[str, bytes], None],
        on_acked: Callable[[Outgoing], None],
    ) -> None:
        self.client_id = client_id
        self.broker = broker
        self.will = will
        self.subscriptions = subscriptions
        self.on_up, self.on_down = on_up, on_down
        self.on_message, self.on_acked = on_message, on_acked
        self.connected = False
        self.connects = 0
        self._client: paho.Client | None = None
        self._inflight: dict[int, Outgoing] = {}
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        self._stopping = False
        self._misc: asyncio.Task[None] | None = None
        self._driving = False
        """Inside paho's loop_read / loop_write / loop_misc (and so maybe in its callbacks)."""

    def stopping(self) -> bool:
        """A call, not an attribute: ``stop`` flips it while ``run`` awaits."""
        return self._stopping

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def wait_up(self) -> None:
        await self._up.wait()

    async def run(self) -> None:
        """Connect, stay connected, reconnect after a loss, until ``stop`` is called."""
        backoff = Backoff(first_s=self.broker.reconnect_min_s, max_s=self.broker.reconnect_max_s)
        while not self.stopping():
            try:
                await self._connect()
                if await self._accepted(timeout_s=10.0):
                    backoff.reset()
                    await self._lost.wait()
                else:
                    self._drop()
            except (OSError, ssl.SSLError, ValueError) as error:
                log.warning("%s: broker unreachable: %s", self.client_id, error)
                self._drop()
            if self.stopping():
                break
            await backoff.sleep()

    async def _accepted(self, *, timeout_s: float) -> bool:
        """Whether the broker accepted the connection (CONNACK) before it was lost."""
        waits = [asyncio.ensure_future(self._up.wait()), asyncio.ensure_future(self._lost.wait())]
        _, pending = await asyncio.wait(
            waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        return self._up.is_set() and not self._lost.is_set()

    def publish(self, message: Outgoing, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to the broker; False when not connected (the caller keeps it)."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(message.topic, message.payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        if qos > 0:
            self._inflight[info.mid] = message
        if not self._driving:
            # out now rather than when the loop next polls for writing: with many agents on
            # one loop, an ack would otherwise wait for every other agent's work first
            self._write(client)
        return True

    async def stop(self, *, timeout_s: float = 2.0) -> None:
        """Wait (up to ``timeout_s``) for messages in flight, then disconnect cleanly: the
        broker drops the will, so the caller publishes its own goodbye first."""
        self._stopping = True
        client = self._client
        if client is not None and self.connected:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while self._inflight and loop.time() < deadline and self.connected:
                await asyncio.sleep(0.01)
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=1.0)
        self._drop()
        self._lost.set()

    # ---- paho driven by asyncio ---------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        broker = self.broker
        client = paho_client(broker=broker, client_id=self.client_id, clean_session=False)
        client.will_set(self.will.topic, self.will.payload, qos=1, retain=True)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_publish = self._published

        def later(call: Callable[..., None], *args: Any) -> None:
            loop.call_soon_threadsafe(call, *args)  # paho may call from the connect thread

        client.on_socket_open = lambda c, u, sock: later(self._socket_open, c, sock)
        client.on_socket_close = lambda c, u, sock: later(self._socket_close, sock)
        client.on_socket_register_write = lambda c, u, sock: later(self._want_write, c, sock, True)
        client.on_socket_unregister_write = lambda c, u, sock: later(
            self._want_write, c, sock, False
        )
        self._client = client
        self._lost.clear()
        self._up.clear()
        # the TCP (and TLS) connect blocks: off the loop, so one slow broker stalls no agent
        await loop.run_in_executor(
            None, client.connect, broker.host, broker.port, broker.keepalive_s
        )

    def _socket_open(self, client: paho.Client, sock: Any) -> None:
        if client is not self._client:
            return
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on: an ack written while the telemetry before it waits for the
            # broker's delayed ACK would wait up to 40 ms
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock, self._read, client)
        self._misc = loop.create_task(self._misc_loop(client))

    def _socket_close(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(sock)
            loop.remove_writer(sock)

    def _want_write(self, client: paho.Client, sock: Any, wanted: bool) -> None:
        if client is not self._client:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            if wanted:
                loop.add_writer(sock, self._write, client)
            else:
                loop.remove_writer(sock)

    def _drive(self, step: Callable[[], MQTTErrorCode]) -> MQTTErrorCode:
        """One of paho's loop steps, marked as such (its callbacks must not write)."""
        self._driving = True
        try:
            return step()
        finally:
            self._driving = False

    def _read(self, client: paho.Client) -> None:
        rc = self._drive(client.loop_read)
        if rc != paho.MQTT_ERR_SUCCESS and client is self._client:
            self._gone(f"read failed ({paho.error_string(rc)})")

    def _write(self, client: paho.Client) -> None:
        """paho reports a failed write to its disconnect callback itself."""
        self._drive(client.loop_write)

    async def _misc_loop(self, client: paho.Client) -> None:
        while client is self._client:
            if self._drive(client.loop_misc) != paho.MQTT_ERR_SUCCESS:
                self._gone("keepalive failed")
                return
            await asyncio.sleep(1.0)

    # ---- paho callbacks (called from loop_read / loop_misc, so on the loop) ------------------

    def _connected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.client_id, reason)
            self._gone(f"refused: {reason}")
            return
        self.connected = True
        self.connects += 1
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        log.info("%s: connected to %s:%d", self.client_id, self.broker.host, self.broker.port)
        self._up.set()
        self.on_up()

    def _disconnected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if client is self._client:
            self._gone(f"disconnected: {reason}")

    def _message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # handled just after paho's read, not inside it: what the handler publishes (an ack)
        # can then go out at once (paho's callbacks must not write)
        asyncio.get_running_loop().call_soon(self.on_message, message.topic, bytes(message.payload))

    def _published(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        message = self._inflight.pop(mid, None)
        if message is not None:
            self.on_acked(message)

    def _gone(self, why: str) -> None:
        was_connected = self.connected
        self._drop()
        if self.stopping():  # our own DISCONNECT on ``stop``: a goodbye, not a loss
            log.debug("%s: disconnected from the broker (%s)", self.client_id, why)
        elif was_connected:
            log.warning("%s: lost the broker: %s", self.client_id, why)
        self._lost.set()

    def _drop(self) -> None:
        """Forget the current client; what it had in flight goes back to the caller, in the
        order it was sent."""
        client, self._client = self._client, None
        self.connected = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                self._socket_close(sock)
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.close()
        unacked = list(self._inflight.values())
        self._inflight.clear()
        if unacked or client is not None:
            self.on_down(unacked)
