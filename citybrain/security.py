"""``citybrain security init``: the broker identities, TLS and least-privilege ACL of a
deployment, written once into one directory and then handed out piece by piece.

Every party has its own Mosquitto user and reaches only its own topics (DESIGN, "Trust model"):
the cloud leader alone publishes plans and corridor statuses, an ingest worker only reads
telemetry, an edge box writes its own intersections' telemetry, statuses and acks and reads
their plans, a vehicle writes its own position, a viewer reads statuses. ``README.txt`` in the
directory says which file goes to whom. Passwords are hashed here in Mosquitto's own ``$7$``
format (PBKDF2-SHA512), so ``mosquitto_passwd`` need not be installed where this runs.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from citybrain import keys_cli, token_cli
from citybrain.cloud.auth import UserRole, add_user
from citybrain.cloud.keys import Keyring
from citybrain.models.checks import check_count, check_id, check_unique
from citybrain.models.codec import DEFAULT_MAX_PAYLOAD_BYTES
from citybrain.models.errors import ValidationError
from citybrain.models.topics import ROOT, TopicKind, intersection_filter, vehicle_position_topic

DEFAULT_REGION: Final = "r1"
DEFAULT_VEHICLES: Final = ("AMB-1", "AMB-2", "AMB-3", "AMB-4")
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1")
DEFAULT_PORT: Final = 8883
OPERATORS: Final = (
    ("admin", UserRole.ADMIN, None),
    ("dispatch", UserRole.OPERATOR, {"medical": 8, "fire": 9}),
    ("watch", UserRole.VIEWER, None),
)
"""The API users ``init`` starts with (more: ``citybrain security token add``)."""
LEADER: Final = "cloud-leader"
INGEST: Final = "cloud-ingest"
VIEWER: Final = "viewer"
MAX_QUEUED_MESSAGES: Final = 1_000_000
"""Per client: the leader's persistent session keeps all telemetry queued while it is away."""
MAX_PAYLOAD_BYTES: Final = DEFAULT_MAX_PAYLOAD_BYTES
MAX_PACKET_BYTES: Final = MAX_PAYLOAD_BYTES + 1024
"""A largest payload the codec takes, plus its topic (at most 512 bytes) and headers."""
PBKDF2_ITERATIONS: Final = 101
"""What ``mosquitto_passwd`` 2.0 writes (``$7$101$...``)."""
_CA_DAYS, _SERVER_DAYS = 3650, 825
_MANAGED = ("README.txt", "ca", "broker", "cloud", "edge", "vehicles", "viewer", "operators")
"""What ``init`` writes in its directory, and so what ``--force`` replaces."""

Access = Literal["read", "write", "readwrite"]


@dataclass(frozen=True, slots=True)
class Grant:
    """One ACL line: ``topic <access> <topic filter>``."""

    access: Access
    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A broker user and the topics it may reach."""

    user: str
    credential: str
    """The file holding its password, relative to the directory."""
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Who is on the broker: the region served, the edge boxes (name -> intersections), the
    vehicles, and the broker's host names (certificate SANs; the first is the one parties
    dial) and port."""

    network: str
    """As ``cloud serve --network`` takes it (``arterial``, ``grid:RxC``, a file)."""
    boxes: Mapping[str, tuple[str, ...]]
    region: str = DEFAULT_REGION
    vehicles: tuple[str, ...] = DEFAULT_VEHICLES
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        check_id("region", self.region)
        check_count("port", self.port, ge=1, le=65_535)
        if not self.boxes:
            raise ValidationError("edge_boxes", "a deployment needs at least one edge box")
        if not self.hosts:
            raise ValidationError("hosts", "give at least one broker host name or address")
        for host in self.hosts:
            _check_host(host)
        for name, intersections in self.boxes.items():
            _check_user("edge_box", name)
            if not intersections:
                raise ValidationError("edge_box", f"{name} hosts no intersection")
        check_unique("intersections", (i for box in self.boxes.values() for i in box))
        for vehicle in self.vehicles:
            _check_user("vehicle", vehicle)
        check_unique("vehicles", self.vehicles)
        check_unique("users", (identity.user for identity in self.identities()))

    def identities(self) -> tuple[Identity, ...]:
        """Every broker user with the least it needs (see the module's docstring)."""
        region = self.region

        def at(kind: TopicKind, intersection: str = "+") -> str:
            return intersection_filter(kind, region=region, intersection=intersection)

        corridors, positions = f"{ROOT}/corridor/+/status", f"{ROOT}/vehicle/+/position"
        telemetry = at(TopicKind.TELEMETRY)
        leader = Identity(
            user=LEADER,
            credential="cloud/leader.pass",
            grants=(
                Grant("read", telemetry),
                Grant("read", at(TopicKind.STATUS)),
                Grant("read", at(TopicKind.ACK)),
                Grant("write", at(TopicKind.PLAN)),
                Grant("readwrite", corridors),
                Grant("read", positions),
            ),
        )
        # Mosquitto 2.0 grants every SUBSCRIBE and checks each delivery against the message's
        # own topic, a `$share/<group>/...` subscription's too (tested): so `read` on the
        # telemetry topics is what lets an ingest worker take its share, and all it needs.
        ingest = Identity(
            user=INGEST, credential="cloud/ingest.pass", grants=(Grant("read", telemetry),)
        )
        viewer = Identity(
            user=VIEWER,
            credential="viewer/broker.pass",
            grants=(Grant("read", corridors), Grant("read", at(TopicKind.STATUS))),
        )
        return (leader, ingest, *self._edges(at), *self._vehicles(), viewer)

    def identity(self, user: str) -> Identity:
        """The identity named ``user``, or ``ValidationError``."""
        for identity in self.identities():
            if identity.user == user:
                return identity
        raise ValidationError("user", f"no broker user {user!r} in this deployment")

    def _edges(self, at: Callable[[TopicKind, str], str]) -> Iterable[Identity]:
        own = (TopicKind.TELEMETRY, TopicKind.STATUS, TopicKind.ACK)
        # `citybrain-edge doctor` sends itself a message on cb/v1/<region>/doctor/<pid>; what
        # goes there reaches no cloud, no controller and no other topic.
        doctor = Grant("readwrite", f"{ROOT}/{self.region}/doctor/+")
        for name, intersections in self.boxes.items():
            grants = [Grant("write", at(kind, i)) for i in intersections for kind in own]
            grants += [Grant("read", at(TopicKind.PLAN, i)) for i in intersections]
            grants.append(doctor)
            yield Identity(user=name, credential=f"edge/{name}/broker.pass", grants=tuple(grants))

    def _vehicles(self) -> Iterable[Identity]:
        for vehicle in self.vehicles:
            yield Identity(
                user=vehicle_user(vehicle),
                credential=_vehicle_credential(vehicle),
                grants=(Grant("write", vehicle_position_topic(vehicle)),),
            )


def vehicle_user(vehicle: str) -> str:
    return f"vehicle-{vehicle}"


def _vehicle_credential(vehicle: str) -> str:
    return f"vehicles/{vehicle}.pass"


def signalized(network: str) -> list[str]:
    """The intersections of ``network`` (as ``cloud serve --network`` takes it) that have a
    controller, so an edge box; in the network's order."""
    from citybrain.simulator.scenarios import load_network

    road = load_network(network)
    return [i.id for i in road.network.intersections if i.id in road.plans]


def deployment(
    network: str,
    intersections: Sequence[str],
    *,
    region: str = DEFAULT_REGION,
    vehicles: Sequence[str] = DEFAULT_VEHICLES,
    edge_boxes: Sequence[str] = (),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    port: int = DEFAULT_PORT,
) -> Deployment:
    """The deployment of ``network`` (whose signalized ``intersections`` are given): the boxes
    named by ``edge_boxes`` (``NAME=I1,I2``), and one box ``edge-<id>`` for every other."""
    boxes: dict[str, tuple[str, ...]] = {}
    for text in edge_boxes:
        name, members = _edge_box(text, network, set(intersections))
        if name in boxes:
            raise ValidationError("edge_box", f"box {name!r} is given twice")
        boxes[name] = members
    hosted = {i for members in boxes.values() for i in members}
    boxes |= {f"edge-{i}": (i,) for i in intersections if i not in hosted}
    return Deployment(
        network=network, boxes=boxes, region=region, vehicles=tuple(vehicles),
        hosts=tuple(hosts), port=port,
    )  # fmt: skip


def _edge_box(text: str, network: str, known: set[str]) -> tuple[str, tuple[str, ...]]:
    """``NAME=I1,I2``: the box's name and its intersections, all of them in ``known``."""
    name, _, listed = (part.strip() for part in text.partition("="))
    members = tuple(part.strip() for part in listed.split(",") if part.strip())
    if not name or not members:
        raise ValidationError("edge_box", f"expected NAME=I1,I2,..., got {text!r}")
    for intersection in members:
        if intersection not in known:
            reason = f"{intersection!r} is not a signalized intersection of {network}"
            raise ValidationError("edge_box", f"{name}: {reason}")
    return name, members


@dataclass(frozen=True, slots=True)
class Layout:
    """Where ``init`` puts each file, under ``root``."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def broker_config(self) -> Path:
        return self.broker / "mosquitto.conf"

    @property
    def cloud(self) -> Path:
        return self.root / "cloud"

    def edge(self, box: str) -> Path:
        """The box's folder: ``edge.toml``, ``broker.pass`` and ``ca.crt``."""
        return self.root / "edge" / box

    def password(self, identity: Identity) -> Path:
        return self.root / identity.credential

    def vehicle_password(self, vehicle: str) -> Path:
        """The vehicle device's password file; ``ca.crt`` sits beside it."""
        return self.root / _vehicle_credential(vehicle)


# ---- writing the directory ------------------------------------------------------------------


def init(directory: Path, plan: Deployment, *, force: bool = False) -> Layout:
    """Write everything ``plan`` needs into ``directory`` (see ``README.txt`` there); refuse a
    non-empty ``directory`` unless ``force``, which replaces what an earlier ``init`` wrote."""
    layout = Layout(directory.absolute())
    _prepare(layout.root, force=force)
    ca_key, ca_cert = _certificate_authority()
    _write(layout.ca_key, _key_pem(ca_key), mode=0o600)
    _write(layout.ca_cert, _cert_pem(ca_cert), mode=0o644)
    identities = plan.identities()
    passwords = {identity.user: secrets.token_urlsafe(32) for identity in identities}
    for identity in identities:
        _write(layout.password(identity), passwords[identity.user] + "\n", mode=0o600)
    holders = {layout.broker, *(layout.password(identity).parent for identity in identities)}
    for folder in sorted(holders):
        _write(folder / "ca.crt", _cert_pem(ca_cert), mode=0o644)
    server_key, server_cert = _server_certificate(ca_key, ca_cert, plan.hosts)
    _write(layout.broker / "server.key", _key_pem(server_key), mode=0o600)
    _write(layout.broker / "server.crt", _cert_pem(server_cert), mode=0o644)
    _write(layout.broker / "passwd", password_file(passwords), mode=0o600)
    _write(layout.broker / "acl", acl_file(identities), mode=0o600)
    _write(layout.broker_config, broker_config(layout, port=plan.port), mode=0o644)
    (layout.broker / "data").mkdir(mode=0o700)
    _write_settings(layout, plan)
    _write_signing_keys(layout, plan)
    _write(layout.root / "README.txt", readme(layout, plan), mode=0o644)
    return layout


def _prepare(root: Path, *, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ValidationError("directory", f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise ValidationError(
                "directory", f"{root} is not empty; give --force to replace what init wrote there"
            )
        for name in _MANAGED:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)


def _write(path: Path, content: str | bytes, *, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a secret is never readable by others,
    not even for a moment); parent folders are private until copied out."""
    for folder in reversed((path.parent, *path.parent.parents)):
        if not folder.exists():
            folder.mkdir(mode=0o700)
    data = content.encode("utf-8") if isinstance(content, str) else content
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _write_settings(layout: Layout, plan: Deployment) -> None:
    for role, user, client_id in (
        ("leader", LEADER, "citybrain-cloud"),
        ("ingest", INGEST, "citybrain-ingest-1"),
    ):
        text = cloud_config(plan, role=role, user=user, client_id=client_id)
        _write(layout.cloud / f"{role}.toml", text, mode=0o644)
    for box, intersections in plan.boxes.items():
        _write(layout.edge(box) / "edge.toml", edge_config(plan, box, intersections), mode=0o644)


def _write_signing_keys(layout: Layout, plan: Deployment) -> None:
    """The cloud's plan-signing keyring (``cloud/keys``), its trust store in every edge box's
    folder, and the operator API's token file with one user per role; each token goes to a
    file of its own (``operators/<name>.token``), for that person only."""
    keyring = Keyring(layout.cloud / "keys")
    keyring.create()
    for box in plan.boxes:
        _write(layout.edge(box) / "trust.json", keyring.trust_store.read_bytes(), mode=0o644)
    for name, role, caps in OPERATORS:
        token = add_user(layout.cloud / "tokens.json", name, role, caps=caps)
        _write(layout.root / "operators" / f"{name}.token", token + "\n", mode=0o600)


# ---- what the files say -------------------------------------------------------------------


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """Mosquitto 2's ``$7$`` hash: PBKDF2-HMAC-SHA512, ``PBKDF2_ITERATIONS``, a 12-byte salt,
    both base64 (as ``mosquitto_passwd`` writes them)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    encoded = (base64.b64encode(part).decode("ascii") for part in (salt, digest))
    return f"$7${PBKDF2_ITERATIONS}${'$'.join(encoded)}"


def password_file(passwords: Mapping[str, str]) -> str:
    return "".join(f"{user}:{password_hash(secret)}\n" for user, secret in passwords.items())


def acl_file(identities: Iterable[Identity]) -> str:
    """Mosquitto's ACL: each user only its grants; no ``pattern`` lines, nothing anonymous."""
    lines = ["# written by `citybrain security init`: each user may reach only these topics"]
    for identity in identities:
        lines += ["", f"user {identity.user}"]
        lines += [f"topic {grant.access} {grant.topic}" for grant in identity.grants]
    return "\n".join(lines) + "\n"


def broker_config(layout: Layout, *, port: int, bind: str | None = None) -> str:
    """Mosquitto 2's configuration for the files of ``layout``, listening on ``port`` (on
    ``bind`` only, when given). Started as root, Mosquitto switches to the user named here:
    the owner of these files, who ran ``init``."""
    check_count("port", port, ge=1, le=65_535)
    broker = layout.broker
    paths = [str(p) for p in (broker, layout.root)]
    if any(c in path for path in paths for c in "\r\n"):
        raise ValidationError("directory", "a path with a line break cannot go in mosquitto.conf")
    listener = f"listener {port}" + (f" {bind}" if bind else "")
    return "\n".join(
        [
            "# Mosquitto 2, written by `citybrain security init` (see ../README.txt).",
            listener,
            f"cafile {broker / 'ca.crt'}",
            f"certfile {broker / 'server.crt'}",
            f"keyfile {broker / 'server.key'}",
            "allow_anonymous false",
            f"password_file {broker / 'passwd'}",
            f"acl_file {broker / 'acl'}",
            "persistence true",
            f"persistence_location {broker / 'data'}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"message_size_limit {MAX_PAYLOAD_BYTES}",
            f"max_packet_size {MAX_PACKET_BYTES}",
            "set_tcp_nodelay true",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "",
        ]
    )


def edge_config(plan: Deployment, box: str, intersections: Sequence[str]) -> str:
    """The box's ``citybrain-edge`` settings; paths are relative to the file's folder."""
    return "\n".join(
        [
            f"# citybrain-edge settings of box {box}, written by `citybrain security init`.",
            "# Check with: citybrain-edge check-config --config edge.toml",
            f"region = {_toml(plan.region)}",
            f"intersections = [{', '.join(_toml(i) for i in intersections)}]",
            "",
            "[broker]",
            f"host = {_toml(plan.hosts[0])}",
            f"port = {plan.port}",
            "tls = true",
            'ca_file = "ca.crt"',
            f"username = {_toml(box)}",
            'password_file = "broker.pass"',
            "",
            "[trust]",
            'store = "trust.json"  # plans not signed by a key listed here are refused',
            "",
        ]
    )


def cloud_config(plan: Deployment, *, role: str, user: str, client_id: str) -> str:
    """``citybrain cloud serve --config`` settings, in the sections ``cloud/settings.py``
    reads (``cloud/deploy/cloud.example.toml`` shows every key); paths relative to the file's
    folder."""
    network = Path(plan.network)
    spec = str(network.absolute()) if network.is_file() else plan.network
    client = f"client_id = {_toml(client_id)}"
    if role == "ingest":
        client += "  # unique per worker: give each its own --client-id"
    lines = [
        f"# citybrain cloud serve --config {role}.toml (flags given as well win over this file);",
        f"# check it with: citybrain cloud check-config --config {role}.toml",
        f"network = {_toml(spec)}",
        f"region = {_toml(plan.region)}",
        f"role = {_toml(role)}",
        "",
        "[broker]",
        f"host = {_toml(plan.hosts[0])}",
        f"port = {plan.port}",
        "tls = true",
        'ca_file = "ca.crt"',
        f"username = {_toml(user)}",
        f'password_file = "{role}.pass"',
        client,
    ]
    if role == "ingest":
        lines.append('share_group = "ingest"')
    else:
        lines += [
            "",
            "[api]",
            'token_file = "tokens.json"',
            '# host = "127.0.0.1"',
            "# port = 8080",
            "",
            "[signing]",
            'keys = "keys"',
            'state_dir = "state"',
        ]
    lines += ["", "[database]", '# dsn = "postgresql://citybrain@db.example.org/citybrain"']
    return "\n".join([*lines, ""])


def readme(layout: Layout, plan: Deployment) -> str:
    boxes, vehicles = (
        textwrap.fill(", ".join(names) or "none", 92, initial_indent=" " * 17,
                      subsequent_indent=" " * 17)
        for names in (plan.boxes, [vehicle_user(v) for v in plan.vehicles])
    )  # fmt: skip
    owner = pwd.getpwuid(os.geteuid()).pw_name
    return f"""\
Written by `citybrain security init` for network {plan.network}, region {plan.region}.
Broker: Mosquitto 2 on port {plan.port} (TLS only), for host names {", ".join(plan.hosts)}.

Broker users (each reaches only its own topics; see broker/acl):
  {LEADER}   the cloud leader: reads telemetry, statuses, acks and vehicle positions,
                 the only one that publishes plans and corridor statuses
  {INGEST}   cloud ingest workers: read telemetry (through $share/<group>/... too)
  edge boxes     each writes only its intersections' telemetry, statuses and acks, and
                 reads only their plans:
{boxes}
  vehicles       each writes only its own position:
{vehicles}
  {VIEWER}         reads corridor statuses and intersection statuses

Files (mode 0600: private keys and passwords; 0644: the rest; folders 0700):
  ca/ca.key          the CA's private key: given to nobody, keep it offline; it signs
                     the broker's certificate (a new one: run init again and redistribute)
  ca/ca.crt          the CA certificate; a copy sits in every party's folder
  broker/            for the broker host only: mosquitto.conf (absolute paths to this
                     folder), server.crt and server.key (its TLS identity), passwd (the
                     users' $7$ hashes), acl, data/ (persistence: queued messages survive
                     a broker restart); start it with
                     mosquitto -c {layout.broker_config}
  cloud/             for the cloud: leader.toml + leader.pass (`citybrain cloud serve
                     --config cloud/leader.toml`), ingest.toml + ingest.pass (one worker each,
                     with its own --client-id), ca.crt
  cloud/keys/        the leader's plan-signing keyring: private keys (0600), `active`, and
                     trust.json, the public keys every edge trusts (rotate: `citybrain
                     security keys add|use|revoke cloud/keys`, then deploy trust.json)
  cloud/tokens.json  the operator API's users, token hashes only (`citybrain security token`)
  cloud/state/       the leader's epoch (made at its first start): keep it with the cloud
  operators/         one bearer token per API user (admin, dispatch: medical <= 8 and
                     fire <= 9, watch: viewer), each for that person only
  edge/<box>/        for that edge box only: edge.toml (`citybrain-edge run --config
                     edge.toml`), broker.pass, ca.crt, trust.json
  vehicles/<id>.pass for that vehicle's device only (user vehicle-<id>), with ca.crt
  viewer/            broker.pass and ca.crt for dashboards that only watch

Copy each folder to its party over a trusted channel and keep the modes (install -m 0600 for
the .pass and .key files); the .toml files name their files relative to their own folder.
Started as root, Mosquitto switches to the user named in mosquitto.conf ({owner}, the owner of
these files); to run it as another user, chown broker/ to that user and change the line.
"""


# ---- certificates -------------------------------------------------------------------------


def _certificate_authority() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citybrain broker CA")])
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        _builder(name, name, key.public_key(), _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    names = [_general_name(host) for host in hosts]
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        _builder(name, ca_cert.subject, key.public_key(), _SERVER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---- checks and small helpers -------------------------------------------------------------


def _check_user(field: str, name: str) -> None:
    """A Mosquitto user name: an id without ':' (the password file's separator)."""
    check_id(field, name)
    if ":" in name:
        raise ValidationError(field, f"{name!r}: ':' cannot appear in a broker user name")


def _check_host(host: str) -> None:
    labels = host.rstrip(".").split(".")
    if 0 < len(host) <= 253 and all(_is_label(label) for label in labels):
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValidationError(
            "hosts", f"{host!r} is neither a host name nor an IP address"
        ) from None


def _is_label(label: str) -> bool:
    return 0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


# ---- the command --------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    security = commands.add_parser(
        "security", help="broker identities, TLS and ACL, plan-signing keys, API tokens"
    )
    sub = security.add_subparsers(dest="security_command", required=True)
    init_ = sub.add_parser(
        "init",
        help="write a CA, the broker's TLS certificate, configuration, passwords and ACL, and "
        "the cloud's, edges' and vehicles' credentials into DIR",
    )
    init_.add_argument("directory", type=Path, metavar="DIR")
    init_.add_argument("--network", required=True, help="arterial[:N], grid:RxC or a network file")
    init_.add_argument("--region", default=DEFAULT_REGION, help="the region served")
    init_.add_argument(
        "--vehicle", action="append", dest="vehicles", metavar="ID",
        help=f"a vehicle with a broker identity (repeat; default {', '.join(DEFAULT_VEHICLES)})",
    )  # fmt: skip
    init_.add_argument(
        "--edge-box", action="append", dest="edge_boxes", default=[], metavar="NAME=I1,I2",
        help="an edge box hosting several intersections (repeat); every other intersection "
        "gets a box of its own, edge-<intersection>",
    )  # fmt: skip
    init_.add_argument(
        "--hosts", default=",".join(DEFAULT_HOSTS),
        help="the broker's host names and addresses, comma-separated (the first is dialled)",
    )  # fmt: skip
    init_.add_argument("--port", type=int, default=DEFAULT_PORT, help="the broker's TLS port")
    init_.add_argument("--force", action="store_true", help="replace an earlier init's files")
    token_cli.add_commands(sub)
    keys_cli.add_commands(sub)


def main(args: argparse.Namespace) -> int:
    if args.security_command == "token":
        return token_cli.main(args)
    if args.security_command == "keys":
        return keys_cli.main(args)

    plan = deployment(
        args.network, signalized(args.network), region=args.region,
        vehicles=args.vehicles or DEFAULT_VEHICLES, edge_boxes=args.edge_boxes,
        hosts=[h.strip() for h in args.hosts.split(",") if h.strip()], port=args.port,
    )  # fmt: skip
    layout = init(args.directory, plan, force=args.force)
    print(
        f"wrote {layout.root}: a CA, the broker on port {plan.port} with "
        f"{len(plan.identities())} users ({len(plan.boxes)} edge boxes, "
        f"{len(plan.vehicles)} vehicle devices); read {layout.root / 'README.txt'}"
    )
    return 0
