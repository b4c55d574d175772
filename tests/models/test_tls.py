from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from citybrain.models.tls import client_context


@pytest.fixture
def not_tls() -> Iterator[int]:
    """A port whose server answers a TLS hello with plain text."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with contextlib.suppress(OSError):
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"220 hello, this is not TLS\r\n" * 8)
                connection.recv(4096)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    thread.join(timeout=5.0)


def test_the_context_checks_the_brokers_certificate_and_name() -> None:
    context = client_context(ca_file=None)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.security
def test_a_failed_handshake_closes_its_socket_at_once(not_tls: int) -> None:
    tcp = socket.create_connection(("127.0.0.1", not_tls), timeout=5.0)
    wrapped = client_context(ca_file=None).wrap_socket(
        tcp, server_hostname="127.0.0.1", do_handshake_on_connect=False
    )
    with pytest.raises(ssl.SSLError):
        wrapped.do_handshake()
    assert wrapped.fileno() == -1, "left open for the garbage collector"
