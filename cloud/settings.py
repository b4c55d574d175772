"""The cloud service's settings: one TOML file, ``CITYBRAIN_CLOUD__SECTION__KEY`` overrides and
``citybrain cloud serve``'s flags, validated once, at start.

The same conventions as the edge's (``edge/settings.py``, through ``models/settings.py``): the
dataclasses below are the schema, the loader takes each key's type from their annotations,
their ``__post_init__`` checks ranges and combinations (building the service's own
``ServiceSettings`` and ``CoreSettings`` so that their checks apply too), and unknown keys are
errors. Precedence, lowest first: the defaults, the file, the environment, the flags. Every
problem found is reported, one line each, naming the file, variable or flag, the key and the
reason (``citybrain cloud check-config``).

The flat keys ``citybrain security init`` wrote before it wrote sections (``broker =
"host:port"``, ``dsn``, ``keys``, ...; see ``FLAT_KEYS``) are read too, each as the sectioned
key it stands for, so that files written then still serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from citybrain.cloud.core import CoreSettings
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.service import DEFAULT_REGION, Role, ServiceSettings
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_file
from citybrain.models.settings import (
    MASK,
    Schema,
    SettingsError,
    build_sections,
    check_host,
    check_not_in_clear,
    check_private_config,
    convert,
    describe_sections,
    env_key,
    flatten,
    parse_env,
    read_toml,
    show,
    state_directory,
)

ENV_PREFIX: Final = "CITYBRAIN_CLOUD__"
LEGACY_PASSWORD_ENV: Final = "CITYBRAIN_MQTT_PASSWORD"  # noqa: S105 - a variable's name
"""The broker password, as ``cloud serve`` took it before its settings file: used when neither
``broker.password`` nor ``broker.password_file`` is set."""
DEFAULT_STATE_DIR: Final = Path("citybrain-cloud-state")
"""Under the working directory, when neither the settings nor ``$STATE_DIRECTORY`` say."""

_SERVICE: Final = ServiceSettings()
_CORE: Final = CoreSettings()
_CORRIDOR: Final = CorridorSettings()


class InvalidSettingsError(SettingsError):
    """Every problem found in one pass, each a ``SettingsError`` (one line)."""

    def __init__(self, problems: list[SettingsError]) -> None:
        first = problems[0]
        super().__init__(first.source, first.field, first.reason)
        self.problems = tuple(problems)
        self.args = ("\n".join(str(problem) for problem in problems),)


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """The MQTT session: connection, TLS, credentials, client id, shared subscription."""

    host: str = _SERVICE.broker_host
    port: int = 1883
    """1883, or 8883 with ``tls`` when not given."""
    tls: bool = _SERVICE.tls
    ca_file: Path | None = None
    """The CA that signed the broker's certificate (the system's CAs when not given)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """A client certificate and its key, for a broker that asks for one."""
    allow_insecure: bool = False
    """The one switch that accepts a password over plain TCP to another host, or a session
    with neither a user name nor a client certificate (anonymous)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Better in the environment (``CITYBRAIN_CLOUD__BROKER__PASSWORD``) or in ``password_file``;
    refused in a settings file every user can read."""
    password_file: Path | None = None
    """Read at each connection, so a rotated password needs no restart."""
    client_id: str = _SERVICE.client_id
    """Unique on the broker: give every ingest worker its own."""
    share_group: str | None = None
    """Take telemetry through ``$share/<group>/...`` (ingest workers)."""
    reconnect_min_s: float = _SERVICE.reconnect_min_s
    reconnect_max_s: float = _SERVICE.reconnect_max_s

    def __post_init__(self) -> None:
        check_host("host", self.host)
        check_count("port", self.port, ge=1, le=65_535)
        if self.password == "":
            raise ValidationError("password", "is empty; leave it out for no password")
        has_password = self.password is not None or self.password_file is not None
        check_not_in_clear(
            self.host, has_password=has_password, tls=self.tls, allow_insecure=self.allow_insecure
        )
        try:
            self.service(region=DEFAULT_REGION, role=Role.LEADER)
        except ValidationError as error:
            field = _BROKER_FIELDS.get(error.field, error.field)
            raise ValidationError(field, error.reason) from None
        if self.username is None and self.cert_file is None and not self.allow_insecure:
            raise ValidationError(
                "username",
                "is required: the broker should admit no anonymous client (give username "
                "and password_file, or a client certificate), or set allow_insecure = true "
                "to connect without one",
            )

    def service(self, *, region: str, role: Role) -> ServiceSettings:
        """The service's settings (its own checks apply: files, TLS, credentials)."""
        return ServiceSettings(
            broker_host=self.host, broker_port=self.port, username=self.username,
            password=self.password, password_file=self.password_file, tls=self.tls,
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file,
            client_id=self.client_id, region=region, role=role, share_group=self.share_group,
            reconnect_min_s=self.reconnect_min_s, reconnect_max_s=self.reconnect_max_s,
        )  # fmt: skip


_BROKER_FIELDS: Final = {"broker_host": "host", "broker_port": "port"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The operator API and console (a leader's only)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    """Its users' token hashes (``citybrain security token add``); a leader needs it."""

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ValidationError("host", f"{self.host!r} is not a host name or address")
        check_count("port", self.port, ge=0, le=65_535)
        check_file("token_file", self.token_file, secret=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningSettings:
    """A leader's plan-signing keyring and the epoch that keeps its plans newer across restarts."""

    keys: Path | None = None
    """The keyring directory (``citybrain security init``); a leader needs it."""
    state_dir: Path = DEFAULT_STATE_DIR
    """Where the epoch is kept; ``$STATE_DIRECTORY`` (systemd) when the settings do not say."""

    def __post_init__(self) -> None:
        if self.keys is not None and not self.keys.is_dir():
            raise ValidationError("keys", f"{self.keys} is not a directory (a keyring)")
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise ValidationError("state_dir", f"{self.state_dir} exists and is not a directory")


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseSettings:
    dsn: str | None = None
    """PostgreSQL connection string; no storage without one. Its password is better in the
    environment (``CITYBRAIN_CLOUD__DATABASE__DSN``) or in ``~/.pgpass``."""

    def __post_init__(self) -> None:
        if self.dsn is not None and (not self.dsn.strip() or "\n" in self.dsn):
            raise ValidationError("dsn", "is empty or spans lines; leave it out for no storage")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSettings:
    rate: float = 1.0
    """Controller seconds per wall second: 1 in the field, a simulation's pace otherwise."""

    def __post_init__(self) -> None:
        check_number("rate", self.rate, gt=0.0, le=10_000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CorridorSection:
    """The corridor settings worth tuning per city (``cloud/corridor.py``, ``cloud/core.py``)."""

    horizon_s: float = _CORRIDOR.horizon_s
    margin_s: float = _CORRIDOR.margin_s
    max_lead_s: float = _CORRIDOR.max_lead_s
    lead_budget_veh: float = _CORRIDOR.lead_budget_veh
    meeting_lead_budget_veh: float = _CORRIDOR.meeting_lead_budget_veh
    speed_advice: bool = _CORRIDOR.speed_advice
    min_advised_mps: float = _CORRIDOR.min_advised_mps
    handover_s: float = _CORRIDOR.handover_s
    takeover_lead_s: float = _CORRIDOR.takeover_lead_s
    max_window_s: float = _CORRIDOR.max_window_s
    max_lease_s: float = _CORRIDOR.max_lease_s
    max_plan_age_s: float = _CORRIDOR.max_plan_age_s
    position_timeout_s: float = _CORRIDOR.position_timeout_s
    stuck_s: float = _CORRIDOR.stuck_s
    max_corridors: int = _CORRIDOR.max_corridors
    ack_timeout_s: float = _CORE.ack_timeout_s
    send_attempts: int = _CORE.send_attempts
    stale_after_s: float = _CORE.stale_after_s
    emergency_speed_factor: float = _CORE.emergency_speed_factor

    def __post_init__(self) -> None:
        check_count("max_corridors", self.max_corridors, ge=1, le=100_000)
        self.core(epoch=0)

    def core(self, *, epoch: int) -> CoreSettings:
        """The core's settings, its own checks and the corridor manager's applied."""
        return CoreSettings(
            ack_timeout_s=self.ack_timeout_s, send_attempts=self.send_attempts,
            stale_after_s=self.stale_after_s, emergency_speed_factor=self.emergency_speed_factor,
            corridor=CorridorSettings(
                horizon_s=self.horizon_s, margin_s=self.margin_s, max_lead_s=self.max_lead_s,
                lead_budget_veh=self.lead_budget_veh,
                meeting_lead_budget_veh=self.meeting_lead_budget_veh,
                takeover_lead_s=self.takeover_lead_s,
                speed_advice=self.speed_advice, min_advised_mps=self.min_advised_mps,
                handover_s=self.handover_s, max_window_s=self.max_window_s,
                max_lease_s=self.max_lease_s, max_plan_age_s=self.max_plan_age_s,
                position_timeout_s=self.position_timeout_s,
                stuck_s=self.stuck_s, max_corridors=self.max_corridors, epoch=epoch,
            ),
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Of the ``citybrain`` loggers (``-v`` shows everything at debug)."""


Roles = Literal["leader", "ingest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudSettings:
    """Everything one ``citybrain cloud serve`` process needs, validated."""

    network: str = "arterial"
    """``arterial[:N]``, ``grid:RxC`` or a network file."""
    region: str = DEFAULT_REGION
    """The region served; ``+`` takes every region (``ServiceSettings.region``)."""
    role: Roles = "leader"
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    clock: ClockSettings = field(default_factory=ClockSettings)
    corridor: CorridorSection = field(default_factory=CorridorSection)
    log: LogSettings = field(default_factory=LogSettings)
    source: Path | None = None
    """The file these settings were read from."""
    overridden: Mapping[str, str] = field(default_factory=dict)
    """Key paths whose value came from the environment or a flag, and which one."""

    def __post_init__(self) -> None:
        for problem in _problems(self.network, self.region, self.role, self.signing, self.api):
            raise problem
        self.service()

    def service(self) -> ServiceSettings:
        return self.broker.service(region=self.region, role=Role(self.role))


def _problems(
    network: str, region: str, role: str, signing: SigningSettings | None, api: ApiSettings | None
) -> list[ValidationError]:
    """What is wrong with the top-level keys, and what a leader lacks."""
    problems = []
    if not network.strip():
        problems.append(ValidationError("network", "is empty"))
    if region != "+":
        try:
            check_id("region", region)
        except ValidationError as error:
            problems.append(error)
    if role == "leader":
        if signing is not None and signing.keys is None:
            reason = "a leader signs its plans: give its keyring (--keys DIR)"
            problems.append(ValidationError("signing.keys", reason))
        if api is not None and api.token_file is None:
            reason = "a leader's API authenticates: give it (--tokens FILE)"
            problems.append(ValidationError("api.token_file", reason))
    return problems


_SECTIONS: Final[dict[str, type[Any]]] = {
    "broker": BrokerSettings,
    "api": ApiSettings,
    "signing": SigningSettings,
    "database": DatabaseSettings,
    "clock": ClockSettings,
    "corridor": CorridorSection,
    "log": LogSettings,
}
SCHEMA: Final = Schema(
    prefix=ENV_PREFIX, top={"network": str, "region": str, "role": Roles}, sections=_SECTIONS
)
FLAT_KEYS: Final = {
    "username": "broker.username", "password_file": "broker.password_file",
    "tls": "broker.tls", "ca_file": "broker.ca_file", "cert_file": "broker.cert_file",
    "key_file": "broker.key_file", "client_id": "broker.client_id",
    "share_group": "broker.share_group", "dsn": "database.dsn", "keys": "signing.keys",
    "state_dir": "signing.state_dir", "tokens": "api.token_file", "rate": "clock.rate",
}  # fmt: skip
"""The flat keys of the older format (``citybrain security init`` wrote it until it wrote
sections) and what each sets; ``broker`` and ``api`` as ``"host:port"`` strings are read too."""
ADDRESSES: Final = ("broker", "api")
"""Keys that may be given as ``"host:port"``, setting ``<key>.host`` and ``<key>.port``."""
_DSN_PASSWORD = re.compile(r"(://[^:/@?]*:)([^@]*)(@)|(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def load_settings(
    path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> CloudSettings:
    """Read ``path`` (if any), apply the ``CITYBRAIN_CLOUD__*`` variables of ``environ``, then
    ``flags`` (key path, or an ``ADDRESSES`` key with ``"host:port"`` -> (flag, value), paths
    absolute), check everything, or raise ``InvalidSettingsError`` with one ``SettingsError``
    per problem.

    Relative paths in the file are taken from its directory, so a file and its certificates
    and keys can move together; elsewhere from the working directory.
    """
    source = str(path) if path is not None else "(no config file)"
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    overridden: dict[str, str] = {}
    problems: list[SettingsError] = []
    if path is not None:
        try:
            flat = flatten(_sectioned(read_toml(path), source), source, SCHEMA)
        except SettingsError as error:
            raise InvalidSettingsError([error]) from None
        values |= flat
        origin |= dict.fromkeys(flat, source)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            try:
                key = env_key(name, SCHEMA)
                values[key] = parse_env(name, key, environ[name], SCHEMA.hint(key))
            except SettingsError as error:
                problems.append(error)
                continue
            origin[key] = f"environment {name}"
            overridden[key] = name
    for key, (flag, value) in (flags or {}).items():
        try:
            given = _address(f"option {flag}", key, value) if key in ADDRESSES else {key: value}
        except SettingsError as error:
            problems.append(error)
            continue
        for name, item in given.items():
            values[name] = item
            origin[name] = f"option {flag}"
            overridden[name] = flag
    legacy = environ.get(LEGACY_PASSWORD_ENV)
    if legacy and values.get("broker.password") is None and not values.get("broker.password_file"):
        values["broker.password"] = legacy
        origin["broker.password"] = f"environment {LEGACY_PASSWORD_ENV}"
        overridden["broker.password"] = LEGACY_PASSWORD_ENV
    base = (path.parent if path is not None else Path.cwd()).absolute()

    def fail(key: str, error: ValidationError) -> SettingsError:
        return SettingsError(origin.get(key, source), error.field or key, error.reason)

    top: dict[str, Any] = {}
    for key, hint in SCHEMA.top.items():
        if values.get(key) is not None:
            try:
                top[key] = convert(values[key], hint, base)
            except ValidationError as error:
                problems.append(fail(key, ValidationError(key, error.reason)))
    derived = {
        "broker.port": 8883 if values.get("broker.tls") is True else 1883,
        "signing.state_dir": state_directory(environ, DEFAULT_STATE_DIR.absolute()),
    }
    sections: dict[str, Any] = {}
    for name, cls in SCHEMA.sections.items():
        one = Schema(prefix=ENV_PREFIX, top={}, sections={name: cls})
        try:
            sections |= build_sections(one, values, derived, base, fail)
        except SettingsError as error:
            problems.append(error)
    defaults = CloudSettings.__dataclass_fields__
    for problem in _problems(
        top.get("network", defaults["network"].default),
        top.get("region", defaults["region"].default),
        top.get("role", defaults["role"].default),
        sections.get("signing"),
        sections.get("api"),
    ):
        problems.append(fail(problem.field, problem))
    for key in ("broker.password", "database.dsn"):
        secret = values.get(key) if key == "broker.password" else _dsn_password(values.get(key))
        if secret and origin.get(key) == source and path is not None:
            advice = f" or set {SCHEMA.env_name(key)} in the environment"
            try:
                check_private_config(path, source, key, advice)
            except SettingsError as error:
                problems.append(error)
    if problems:
        raise InvalidSettingsError(problems)
    try:
        return CloudSettings(**top, **sections, source=path, overridden=overridden)
    except ValidationError as error:
        key = error.field
        if "." not in key and key not in SCHEMA.top:  # one of the service's broker fields
            key = f"broker.{_BROKER_FIELDS.get(key, key)}"
        raise InvalidSettingsError([fail(key, ValidationError(key, error.reason))]) from None


def describe(settings: CloudSettings) -> str:
    """A readable summary for ``check-config``, with secrets masked and overrides marked."""
    lines = [f"config file: {settings.source or '(none)'}"]
    lines += [f"{key} = {show(getattr(settings, key))}{_note(settings, key)}" for key in SCHEMA.top]
    secrets = {"broker.password": lambda _value: MASK, "database.dsn": mask_dsn}
    lines += describe_sections(
        settings, SCHEMA, secrets=secrets, note=lambda key: _note(settings, key)
    )
    broker = settings.broker
    where = f"{broker.host}:{broker.port} ({'TLS' if broker.tls else 'plain TCP'})"
    who = (
        f"as {broker.username}"
        if broker.username
        else "as its client certificate"
        if broker.cert_file
        else "anonymous (allow_insecure)"
    )
    lines.append(f"mqtt: {where} {who}, client id {broker.client_id}")
    return "\n".join(lines)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password, if any, replaced by ``MASK``."""

    def masked(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"{match.group(1)}{MASK}{match.group(3)}"
        return f"{match.group(4)}{MASK}"

    return _DSN_PASSWORD.sub(masked, dsn)


def flag_value(value: Any) -> Any:
    """A flag's value as the settings file would give it (a path as an absolute string)."""
    return str(value.absolute()) if isinstance(value, Path) else value


def _dsn_password(dsn: Any) -> bool:
    if not isinstance(dsn, str):
        return False
    return any(match.group(2) or match.group(5) for match in _DSN_PASSWORD.finditer(dsn))


def _sectioned(document: dict[str, Any], source: str) -> dict[str, Any]:
    """The older flat keys moved to their sections (``broker = "host:port"`` included)."""
    result: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    for key, value in document.items():
        if key in ADDRESSES and isinstance(value, str):
            moved |= _address(source, key, value)
        elif key in FLAT_KEYS:
            moved[FLAT_KEYS[key]] = value
        else:
            result[key] = value
    for key, value in moved.items():
        section, name = key.split(".")
        table = result.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # flatten says it should be a table
        if name in table:
            raise SettingsError(source, key, "given twice (a flat key and in its table)")
        table[name] = value
    return result


def _address(source: str, key: str, text: Any) -> dict[str, Any]:
    """``"host:port"`` as the ``<key>.host`` and ``<key>.port`` it sets."""
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(source, key, f"expected host:port, got {text!r}")
    return {f"{key}.host": host, f"{key}.port": int(port)}


def _note(settings: CloudSettings, key: str) -> str:
    where = settings.overridden.get(key)
    return f"  (from {where})" if where else ""
