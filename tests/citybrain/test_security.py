"""``citybrain security init`` and the broker it configures, attacked: a real Mosquitto with the
generated configuration (TLS only, a password per identity, the least-privilege ACL).

Mosquitto drops a 3.1.1 client's unauthorized publish silently (it even acknowledges it), and
grants every subscription while checking each delivery. So a refusal shows as a message that
never arrives; every such test sends the forbidden message first and then an allowed one on
the same path (the positive control), and asserts, once the control arrived, that the
forbidden one did not arrive before it."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citybrain import cli, security
from citybrain.cloud.auth import read_users, token_hash
from citybrain.cloud.core import CloudCore
from citybrain.cloud.keys import Keyring
from citybrain.cloud.service import CloudService, Role, ServiceSettings
from citybrain.cloud.settings import load_settings as load_cloud_settings
from citybrain.edge.cli import _check_broker
from citybrain.edge.settings import load_settings
from citybrain.live import UNSECURED, LiveOptions, broker, run_live
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.errors import ValidationError
from citybrain.models.messages import PlanKind, SignalPlan, Telemetry
from citybrain.models.signing import TrustStore
from citybrain.simulator.scenarios import load_network

pytestmark = pytest.mark.security

WAIT_S = 5.0
LEADER, INGEST, VIEWER, WEST = "cloud-leader", "cloud-ingest", "viewer", "edge-west"


class Client:
    """A paho client with its own loop thread: what it received, in order."""

    def __init__(self, broker: Any, user: str | None, *, password: str | None = None) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-{user}-{time.monotonic_ns()}",
            protocol=paho.MQTTv311,
        )
        if user is not None:
            secret = password if password is not None else broker.password(user)
            self.client.username_pw_set(user, secret)
        self.client.tls_set(ca_certs=str(broker.layout.ca_cert))
        self.received: list[tuple[str, bytes]] = []
        self.reason: Any = None
        self._connack = threading.Event()
        self._arrived = threading.Condition()
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        self._connack.wait(WAIT_S)

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self._connack.set()

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._arrived:
            self.received.append((message.topic, bytes(message.payload)))
            self._arrived.notify_all()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe([(topic, 1) for topic in topics])
        assert done.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, waiting for the broker's PUBACK: by then it has routed (or dropped) it."""
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received up to and including (``topic``, ``payload``)."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: (topic, payload) in self.received, WAIT_S)
        assert arrived, f"the control message on {topic} never arrived"
        return self.received[: self.received.index((topic, payload)) + 1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(secure_mosquitto: Any) -> Iterator[Any]:
    opened: list[Client] = []

    def connect(user: str | None, *, password: str | None = None) -> Client:
        client = Client(secure_mosquitto, user, password=password)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def _plan(intersection: str) -> str:
    return f"cb/v1/r1/x/{intersection}/plan"


def _telemetry(intersection: str) -> str:
    return f"cb/v1/r1/x/{intersection}/telemetry"


# ---- who may connect ----------------------------------------------------------------------


def test_every_identity_connects_with_its_own_password(clients: Any, secure_mosquitto: Any) -> None:
    for identity in secure_mosquitto.plan.identities():
        assert clients(identity.user).accepted, identity.user


def test_an_anonymous_client_is_refused(clients: Any) -> None:
    client = clients(None)
    assert client.reason is not None
    assert client.reason.is_failure


def test_a_wrong_password_is_refused(clients: Any, secure_mosquitto: Any) -> None:
    assert clients(LEADER).accepted
    client = clients(LEADER, password=secure_mosquitto.password(WEST))
    assert client.reason is not None
    assert client.reason.is_failure


def _connect_packet(user: str, password: str) -> bytes:
    def text(value: str) -> bytes:
        data = value.encode()
        return struct.pack("!H", len(data)) + data

    body = text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)
    body += text("raw-client") + text(user) + text(password)
    return bytes([0x10, len(body)]) + body


def _first_reply(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT_S)
    try:
        return sock.recv(4)
    except (ConnectionError, TimeoutError):
        return b""


def test_plain_tcp_to_the_tls_port_gets_no_connack(secure_mosquitto: Any) -> None:
    packet = _connect_packet(LEADER, secure_mosquitto.password(LEADER))
    context = ssl.create_default_context(cafile=str(secure_mosquitto.layout.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", secure_mosquitto.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(packet)
        assert _first_reply(tls) == bytes([0x20, 2, 0, 0])  # control: CONNACK accepted
    with socket.create_connection(("127.0.0.1", secure_mosquitto.port)) as plain:
        plain.sendall(packet)
        assert not _first_reply(plain).startswith(b"\x20")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_broker_certificate_is_verified_for_every_host_name(
    secure_mosquitto: Any, host: str
) -> None:
    context = ssl.create_default_context(cafile=str(secure_mosquitto.layout.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", secure_mosquitto.port)) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (
        socket.create_connection(("127.0.0.1", secure_mosquitto.port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="broker.example.org")


# ---- what each may publish and read -------------------------------------------------------


def test_an_edge_box_cannot_publish_another_intersections_telemetry(clients: Any) -> None:
    leader = clients(LEADER)
    leader.subscribe(_telemetry("+"))
    west = clients(WEST)
    west.publish(_telemetry("a03"), b"forged")
    west.publish(_telemetry("a02"), b"own")
    assert leader.wait_for(_telemetry("a02"), b"own") == [(_telemetry("a02"), b"own")]


def test_an_edge_box_cannot_read_another_intersections_plans(clients: Any) -> None:
    west = clients(WEST)
    west.subscribe(_plan("a03"), _plan("+"), "#")
    leader = clients(LEADER)
    leader.publish(_plan("a03"), b"not yours")
    leader.publish(_plan("a01"), b"yours")
    assert west.wait_for(_plan("a01"), b"yours") == [(_plan("a01"), b"yours")]


def test_a_vehicle_cannot_publish_another_vehicles_position(clients: Any) -> None:
    leader = clients(LEADER)
    leader.subscribe("cb/v1/vehicle/+/position")
    ambulance = clients("vehicle-AMB-1")
    ambulance.publish("cb/v1/vehicle/AMB-2/position", b"forged")
    ambulance.publish("cb/v1/vehicle/AMB-1/position", b"own")
    own = ("cb/v1/vehicle/AMB-1/position", b"own")
    assert leader.wait_for(*own) == [own]


@pytest.mark.parametrize("user", [INGEST, WEST, "edge-a03", "vehicle-AMB-1", VIEWER])
def test_only_the_cloud_leader_publishes_plans_and_corridor_statuses(
    clients: Any, user: str
) -> None:
    edge, viewer = clients(WEST), clients(VIEWER)
    edge.subscribe(_plan("a01"))
    viewer.subscribe("cb/v1/corridor/+/status")
    status = "cb/v1/corridor/C1/status"
    attacker = clients(user)
    attacker.publish(_plan("a01"), b"forged")
    attacker.publish(status, b"forged")
    leader = clients(LEADER)
    leader.publish(_plan("a01"), b"genuine")
    leader.publish(status, b"genuine")
    assert edge.wait_for(_plan("a01"), b"genuine") == [(_plan("a01"), b"genuine")]
    assert viewer.wait_for(status, b"genuine") == [(status, b"genuine")]


def test_a_10_mb_payload_is_not_delivered_and_a_64_kib_one_is(clients: Any) -> None:
    viewer = clients(VIEWER)
    viewer.subscribe("cb/v1/corridor/+/status")
    status = "cb/v1/corridor/C1/status"
    clients(LEADER).client.publish(status, b"x" * 10_000_000, qos=1)
    largest = b"y" * security.MAX_PAYLOAD_BYTES
    clients(LEADER).publish(status, largest)
    assert viewer.wait_for(status, largest) == [(status, largest)]


def test_the_ingest_identity_takes_telemetry_through_a_shared_subscription_only(
    clients: Any,
) -> None:
    ingest = clients(INGEST)
    ingest.subscribe("$share/ingest/cb/v1/r1/x/+/plan", "$share/ingest/cb/v1/r1/x/+/telemetry")
    clients(LEADER).publish(_plan("a01"), b"plan")
    clients(WEST).publish(_telemetry("a01"), b"telemetry")
    sent = (_telemetry("a01"), b"telemetry")
    assert ingest.wait_for(*sent) == [sent]


def test_edge_doctor_round_trip_passes_with_the_generated_settings(
    secure_mosquitto: Any,
) -> None:
    config = secure_mosquitto.layout.edge(WEST) / "edge.toml"
    settings = load_settings(config, {"CITYBRAIN_EDGE__BROKER__PORT": str(secure_mosquitto.port)})
    assert settings.broker.tls
    assert settings.broker.username == WEST
    assert _check_broker(settings) is None


def test_the_cloud_connects_with_tls_and_its_password_file(secure_mosquitto: Any) -> None:
    ingest = load_cloud_settings(
        secure_mosquitto.layout.cloud / "ingest.toml",
        {"CITYBRAIN_CLOUD__BROKER__HOST": "localhost",
         "CITYBRAIN_CLOUD__BROKER__PORT": str(secure_mosquitto.port),
         "CITYBRAIN_CLOUD__BROKER__CLIENT_ID": "test-ingest"},
    )  # fmt: skip
    settings = ingest.service()
    assert (settings.role, settings.share_group, settings.tls) == (Role.INGEST, "ingest", True)
    road = load_network("arterial:4")
    stored: list[Telemetry] = []

    async def sink(message: Telemetry, at: float) -> None:
        stored.append(message)

    async def scenario() -> None:
        service = CloudService(
            CloudCore(road.network, road.plans, wall_clock=time.monotonic), signer=None,
            settings=settings,
            telemetry_sink=sink,
        )  # fmt: skip
        stop = asyncio.Event()
        running = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.connected.wait(), WAIT_S)
        message = Telemetry(intersection="a01", controller_time=1000.0, seq=1)
        await asyncio.to_thread(
            _publish_as, secure_mosquitto, WEST, _telemetry("a01"), DEFAULT_CODEC.encode(message)
        )
        deadline = time.monotonic() + WAIT_S
        while not stored and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await running

    asyncio.run(scenario())
    assert [m.intersection for m in stored] == ["a01"]


def _publish_as(broker: Any, user: str, topic: str, payload: bytes) -> None:
    client = Client(broker, user)
    try:
        client.publish(topic, payload)
    finally:
        client.close()


def test_the_cloud_refuses_a_password_file_every_user_can_read(secure_mosquitto: Any) -> None:
    secret = secure_mosquitto.layout.cloud / "leader.pass"
    secret.chmod(0o644)
    with pytest.raises(ValidationError, match="readable by every user"):
        ServiceSettings(username=LEADER, password_file=secret, tls=True)


# ---- the live demo ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.broker
def test_the_live_demo_runs_on_mosquitto_with_tls_and_an_identity_per_party(postgres: Any) -> None:
    options = LiveOptions(
        network="arterial:4", warmup_s=300.0, after_s=420.0, speed=10.0, broker="mosquitto",
        dsn=postgres.create_database(),
    )  # fmt: skip
    live = asyncio.run(run_live(options)).summary()
    assert live["broker"] == "mosquitto (TLS, passwords, ACL)"
    assert live["edges"] == 4
    assert live["telemetry_rows"] == live["telemetry_messages"] > 4 * 40
    assert live["plans_acked"] >= 0.9 * live["plans_sent"] > 0
    assert live["rejected_messages"] == 0


def test_the_embedded_broker_says_it_runs_without_authentication(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = security.deployment("arterial:4", ["a01"])

    async def scenario() -> str:
        async with broker("amqtt", security.init(tmp_path / "deploy", plan)) as embedded:
            return embedded.name

    assert asyncio.run(scenario()) == "amqtt (embedded)"
    assert UNSECURED in caplog.text
    assert "WITHOUT authentication, ACL or TLS" in UNSECURED


# ---- the files ----------------------------------------------------------------------------


def test_password_hashes_are_the_ones_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (the broker tests check the hashes)")
    target = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(target), "alice", "s3cret"], check=True)  # noqa: S603
    line = target.read_text().strip()
    salt = base64.b64decode(line.split("$")[3])
    assert f"alice:{security.password_hash('s3cret', salt=salt)}" == line
    assert security.password_hash("s3cret", salt=salt) != security.password_hash(
        "s3cret!", salt=salt
    )


RELEASE = SignalPlan(
    plan_id="p1", intersection="a01", seq=1, issued_at=1.0, valid_from=1.0, valid_until=9.0,
    kind=PlanKind.RELEASE,
)  # fmt: skip


@pytest.fixture
def written(tmp_path: Path) -> Path:
    directory = tmp_path / "deploy"
    code = cli.main(
        ["security", "init", str(directory), "--network", "arterial:4", "--edge-box",
         "west=a01,a02", "--vehicle", "AMB-7"]
    )  # fmt: skip
    assert code == 0
    return directory


def test_init_writes_each_partys_folder_with_private_secrets(written: Path) -> None:
    files = {
        str(p.relative_to(written)): stat.S_IMODE(p.lstat().st_mode) for p in written.rglob("*")
    }
    secrets = {name for name, mode in files.items() if mode == 0o600}
    assert secrets == {
        "ca/ca.key", "broker/server.key", "broker/passwd", "broker/acl", "cloud/leader.pass",
        "cloud/ingest.pass", "edge/west/broker.pass", "edge/edge-a03/broker.pass",
        "edge/edge-a04/broker.pass", "vehicles/AMB-7.pass", "viewer/broker.pass",
        "cloud/keys/active", f"cloud/keys/{Keyring(written / 'cloud/keys').active_id()}.pem",
        "cloud/tokens.json", "operators/admin.token", "operators/dispatch.token",
        "operators/watch.token",
    }  # fmt: skip
    trust = (written / "cloud/keys/trust.json").read_bytes()
    for box in ("west", "edge-a03", "edge-a04"):
        assert (written / "edge" / box / "trust.json").read_bytes() == trust
        assert load_settings(written / "edge" / box / "edge.toml", {}).trust.store == (
            written / "edge" / box / "trust.json"
        )
    assert (
        TrustStore.load(written / "edge/west/trust.json").verify(
            Keyring(written / "cloud/keys").signer().sign(RELEASE)
        )
        is None
    )  # the edges trust the key the cloud signs with
    token = (written / "operators/dispatch.token").read_text().strip()
    (dispatch,) = [
        u for u in read_users(written / "cloud/tokens.json").users if u.name == "dispatch"
    ]
    assert dispatch.token_sha256 == token_hash(token)
    for folder in ("broker", "cloud", "edge/west", "edge/edge-a03", "vehicles", "viewer"):
        assert (written / folder / "ca.crt").read_bytes() == (written / "ca/ca.crt").read_bytes()
    assert all(mode & 0o077 == 0 for name, mode in files.items() if (written / name).is_dir())
    users = [line.split(":")[0] for line in (written / "broker/passwd").read_text().splitlines()]
    assert users == [
        LEADER, INGEST, "west", "edge-a03", "edge-a04", "vehicle-AMB-7", VIEWER
    ]  # fmt: skip


def test_init_writes_settings_the_edge_and_the_cloud_accept(written: Path) -> None:
    edge = load_settings(written / "edge/west/edge.toml", {})
    assert edge.intersections == ("a01", "a02")
    assert edge.region == "r1"
    assert edge.broker.tls
    assert edge.broker.port == 8883
    assert edge.broker.username == "west"
    assert edge.broker.secret() == (written / "edge/west/broker.pass").read_text().strip()
    leader = load_cloud_settings(written / "cloud/leader.toml", {})
    assert leader.service().secret() == (written / "cloud/leader.pass").read_text().strip()
    assert (leader.role, leader.network, leader.region) == ("leader", "arterial:4", "r1")
    assert (leader.broker.host, leader.broker.port, leader.broker.tls) == ("localhost", 8883, True)
    assert leader.api.token_file == written / "cloud/tokens.json"
    assert leader.signing.keys == written / "cloud/keys"


def test_init_refuses_a_non_empty_directory_unless_forced(
    written: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = (written / "ca/ca.key").read_bytes()
    assert cli.main(["security", "init", str(written), "--network", "arterial:4"]) == 2
    assert "is not empty; give --force" in capsys.readouterr().err
    assert (written / "ca/ca.key").read_bytes() == key
    assert cli.main(["security", "init", str(written), "--network", "arterial:4", "--force"]) == 0
    assert (written / "ca/ca.key").read_bytes() != key
    assert not (written / "edge/west").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--network", "nowhere"], "network: 'nowhere' is neither"),
        (["--network", "arterial:4", "--edge-box", "w=a01,a09"], "'a09' is not a signalized"),
        (["--network", "arterial:4", "--edge-box", "w"], "expected NAME=I1,I2"),
        (["--network", "arterial:4", "--edge-box", "w=a01", "--edge-box", "v=a01"], "'a01'"),
        (["--network", "arterial:4", "--edge-box", "viewer=a01"], "duplicate id 'viewer'"),
        (["--network", "arterial:4", "--vehicle", "AMB:1"], "':' cannot appear"),
        (["--network", "arterial:4", "--hosts", "bad host"], "neither a host name"),
        (["--network", "arterial:4", "--port", "0"], "port"),
    ],
)
def test_bad_input_gets_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert cli.main(["security", "init", str(tmp_path / "deploy"), *extra]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1
    assert not (tmp_path / "deploy").exists()
