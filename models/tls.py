"""The TLS every MQTT client of ours uses toward the broker (edges, cloud, the live demo's
ambulance): the broker's certificate and host name checked, a client certificate when given.

paho wraps the connection in TLS and, when the handshake fails (a server that is not the
broker, a certificate refused), raises without closing the socket; it stays open until a
garbage collection, since a connect run in a thread pool keeps it in a reference cycle. A
client retrying against a broker that is away then holds ports and file descriptors; on the
same host its local port may even be the broker's own (Linux connects a socket to itself), so
the broker cannot come back. Sockets from ``client_context`` close themselves on a failed
handshake. Only the standard library.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class _ClosedWhenRefused(ssl.SSLSocket):
    """An ``SSLSocket`` that closes itself when its handshake fails."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # a non-blocking handshake under way, not a failure
        except BaseException:
            self.close()
            raise


def client_context(
    *, ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Certificate and host name required (``ca_file``, else the system's authorities)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    context.sslsocket_class = _ClosedWhenRefused
    return context
