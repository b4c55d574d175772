"""The edge's MQTT session against a server that is not a broker."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from citybrain.edge.mqtt import MqttSession, Will
from citybrain.edge.settings import BrokerSettings


class NotTls:
    """A TCP server that answers TLS with junk, then waits for each client to close."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.write(b"this is not TLS\r\n" * 8)
        await writer.drain()
        with contextlib.suppress(ConnectionError):  # an alert, then a reset: closed too
            while await reader.read(4096):
                pass
        self.closed += 1
        writer.close()


@pytest.mark.security
def test_a_failed_tls_handshake_closes_its_connection_before_the_next_attempt() -> None:
    """paho leaves the socket of a failed handshake to the garbage collector: a retrying edge
    held it open (a port, a file descriptor) until a collection, here never."""
    server = NotTls()

    async def scenario() -> None:
        listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        broker = BrokerSettings(
            host="127.0.0.1", port=port, tls=True, reconnect_min_s=0.1, reconnect_max_s=0.2
        )
        session = MqttSession(
            client_id="edge-test",
            broker=broker,
            will=Will("citybrain/v1/status/x", b"gone"),
            subscriptions=(),
            on_up=lambda: None,
            on_down=lambda _: None,
            on_message=lambda _topic, _payload: None,
            on_acked=lambda _: None,
        )
        running = asyncio.create_task(session.run())
        while server.accepted < 3:
            await asyncio.sleep(0.05)
        await session.stop()
        await running
        await asyncio.sleep(0.5)
        listening.close()

    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()
    assert server.accepted >= 3
    assert server.closed >= server.accepted - 1, "failed handshakes' sockets left open"
