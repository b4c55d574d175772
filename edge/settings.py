"""The edge agent's settings: one TOML file plus ``CITYBRAIN_EDGE__SECTION__KEY`` overrides.

Everything is validated once, at start, so a field engineer learns about a typo or an unsafe
value from ``citybrain-edge check-config`` and not from a misbehaving intersection. The
dataclasses below are the schema: the loader takes each key's type from their annotations and
their ``__post_init__`` checks ranges and combinations, so settings built in code are held to
the same rules as settings read from a file. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from citybrain.models.checks import check_count, check_id, check_ids, check_number, check_unique
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_file, read_secret
from citybrain.models.settings import (
    MASK,
    Schema,
    build_sections,
    check_host,
    check_not_in_clear,
    check_private_config,
    convert,
    describe_sections,
    env_key,
    flatten,
    kind,
    parse_env,
    read_toml,
    state_directory,
)
from citybrain.models.settings import (
    SettingsError as SettingsError,  # re-exported: what load_settings raises
)
from citybrain.signal_plans.validator import SafetyLimits

ENV_PREFIX: Final = "CITYBRAIN_EDGE__"
DEFAULT_STATE_DIR: Final = Path("/var/lib/citybrain-edge")
"""Where the buffer lives when neither the file nor systemd's ``STATE_DIRECTORY`` says."""
DEFAULT_TRUST_STORE: Final = Path("/etc/citybrain/trust.json")
MAX_INTERSECTIONS: Final = 10_000

Intersections = tuple[str, ...] | Literal["all"]
"""The intersection ids this process hosts, or ``"all"`` the controller link reports."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """The MQTT broker every agent of this process keeps one session with."""

    host: str = "localhost"
    port: int = 1883
    """1883, or 8883 with ``tls`` when the file does not say."""
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    """Skip the broker certificate's hostname check; refused unless ``allow_insecure``."""
    allow_insecure: bool = False
    """The one switch that accepts ``tls_insecure`` or credentials over plain TCP."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    """Read at each connection (see ``secret``), so a rotated password needs no restart."""
    keepalive_s: int = 60
    client_id_prefix: str = "cb-edge"
    """The loader defaults it to ``cb-{region}``: client ids must be unique on the broker."""
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        check_host("host", self.host)
        check_count("port", self.port, ge=1, le=65_535)
        check_count("keepalive_s", self.keepalive_s, ge=5, le=600)
        check_id("client_id_prefix", self.client_id_prefix)
        check_number("reconnect_min_s", self.reconnect_min_s, ge=0.1, le=60.0)
        check_number("reconnect_max_s", self.reconnect_max_s, ge=self.reconnect_min_s, le=600.0)
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file", "tls_insecure"):
                if getattr(self, name):
                    raise ValidationError(name, "only used with tls = true; set tls = true")
        if self.tls_insecure and not self.allow_insecure:
            raise ValidationError(
                "tls_insecure",
                "turns off the check that the certificate belongs to the broker; "
                "set allow_insecure = true as well to accept that risk",
            )
        if self.key_file is not None and self.cert_file is None:
            raise ValidationError("key_file", "needs cert_file (the client certificate)")
        for name in ("ca_file", "cert_file"):
            check_file(name, getattr(self, name), secret=False)
        check_file("key_file", self.key_file, secret=True)
        check_file("password_file", self.password_file, secret=True)
        if self.password is not None and self.password_file is not None:
            raise ValidationError("password", "give password or password_file, not both")
        if self.password == "":
            raise ValidationError("password", "is empty; leave it out for no password")
        has_password = self.password is not None or self.password_file is not None
        if has_password and self.username is None:
            raise ValidationError("username", "is required with a password (MQTT rule)")
        check_not_in_clear(
            self.host, has_password=has_password, tls=self.tls, allow_insecure=self.allow_insecure
        )

    def client_id(self, intersection: str) -> str:
        """The MQTT client id of one agent: one session per intersection."""
        return f"{self.client_id_prefix}-{check_id('intersection', intersection)}"

    def secret(self) -> str | None:
        """The password, read from ``password_file`` now if that is where it lives."""
        if self.password_file is None:
            return self.password
        return read_secret("password_file", self.password_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerSettings:
    """How the agents reach the signal controller(s) beside them."""

    driver: Literal["fieldbus", "fake"] = "fieldbus"
    """``fake`` is for bench tests: it invents detector data."""
    host: str = "127.0.0.1"
    port: int = 4710
    timeout_s: float = 2.0
    poll_hz: float = 10.0

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ValidationError("host", f"{self.host!r} is not a host name or address")
        check_count("port", self.port, ge=1, le=65_535)
        check_number("timeout_s", self.timeout_s, ge=0.1, le=30.0)
        check_number("poll_hz", self.poll_hz, ge=1.0, le=50.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    period_s: float = 1.0
    qos: Literal[1] = 1
    """Fixed: telemetry buffered over an outage is deleted only after the broker's PUBACK."""

    def __post_init__(self) -> None:
        check_number("period_s", self.period_s, ge=0.1, le=60.0)
        if self.qos != 1 or isinstance(self.qos, bool):
            raise ValidationError("qos", "is fixed at 1 (at-least-once, acknowledged publishes)")


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferSettings:
    """The on-disk telemetry buffer (``citybrain.edge.buffer``) that rides out broker outages."""

    path: Path = DEFAULT_STATE_DIR
    """A directory; created if missing."""
    max_messages: int = 86_400
    """Per agent: one day at 1 Hz."""
    max_bytes: int = 1024**3
    """For the whole process (topics and payloads): the disk budget of a small box."""

    def __post_init__(self) -> None:
        if not self.path.is_absolute():
            raise ValidationError("path", f"{self.path} must be absolute")
        if self.path.exists() and not self.path.is_dir():
            raise ValidationError("path", f"{self.path} exists and is not a directory")
        check_count("max_messages", self.max_messages, ge=10, le=10_000_000)
        check_count("max_bytes", self.max_bytes, ge=1024**2, le=1024**4)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustSettings:
    """Whose plans this box takes: the cloud's public keys (``citybrain security init``)."""

    store: Path = DEFAULT_TRUST_STORE
    """Checked when the agents start (``check-config`` and ``doctor`` say if it is wrong):
    without it every plan is refused, so the box never runs anyone's plans unchecked."""

    def __post_init__(self) -> None:
        if not self.store.is_absolute():
            raise ValidationError("store", f"{self.store} must be absolute")


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetySettings:
    """The plan limits of ``signal_plans.validator.SafetyLimits`` and the fail-safe timer."""

    max_lease_s: float = 300.0
    max_window_s: float = 120.0
    max_plan_age_s: float = 30.0
    max_clock_skew_s: float = 2.0
    failsafe_after_s: float = 30.0
    """The cloud silent this long: run the local plan in fail-safe mode."""

    def __post_init__(self) -> None:
        try:
            self.limits()
        except ValidationError as error:
            if error.field == "max_window_s" and self.max_window_s > self.max_lease_s:
                raise ValidationError(
                    "max_window_s",
                    f"{self.max_window_s} exceeds max_lease_s ({self.max_lease_s}): "
                    "a window cannot outlast its lease, lower max_window_s too",
                ) from None
            raise
        check_number("failsafe_after_s", self.failsafe_after_s, ge=5.0, le=300.0)
        if self.failsafe_after_s > self.max_lease_s:
            raise ValidationError(
                "failsafe_after_s",
                f"must not exceed max_lease_s ({self.max_lease_s}): a silent cloud must hand "
                "the intersection back no later than a lease would",
            )

    def limits(self) -> SafetyLimits:
        """The validator's limits; built here so that its own checks apply to the settings."""
        return SafetyLimits(
            max_lease_s=self.max_lease_s,
            max_window_s=self.max_window_s,
            max_plan_age_s=self.max_plan_age_s,
            max_clock_skew_s=self.max_clock_skew_s,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "text"


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeSettings:
    """Everything one ``citybrain-edge`` process needs, validated."""

    region: str
    intersections: Intersections
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    log: LogSettings = field(default_factory=LogSettings)
    source: Path | None = None
    """The file these settings were read from."""
    from_environment: frozenset[str] = frozenset()
    """Key paths (``broker.port``) whose value came from the environment."""

    def __post_init__(self) -> None:
        check_id("region", self.region)
        if self.intersections != "all":
            if not isinstance(self.intersections, tuple) or not self.intersections:
                raise ValidationError(
                    "intersections", 'expected a non-empty list of intersection ids, or "all"'
                )
            if len(self.intersections) > MAX_INTERSECTIONS:
                raise ValidationError("intersections", f"at most {MAX_INTERSECTIONS}")
            check_ids("intersections", self.intersections)
            check_unique("intersections", self.intersections)
        if self.telemetry.period_s * self.controller.poll_hz < 1.0 - 1e-9:
            raise ValidationError(
                "telemetry.period_s",
                f"{self.telemetry.period_s} s is shorter than one controller poll "
                f"(controller.poll_hz = {self.controller.poll_hz})",
            )

    def hosted(self, reported: Iterable[str]) -> tuple[str, ...]:
        """The intersections to start agents for, given those the controller link reports."""
        available = set(reported)
        if self.intersections == "all":
            return tuple(sorted(available))
        missing = [i for i in self.intersections if i not in available]
        if missing:
            raise SettingsError(
                str(self.source or "settings"),
                "intersections",
                f"not reported by the controller link: {', '.join(missing)}",
            )
        return self.intersections


_SECTIONS: Final[dict[str, type[Any]]] = {
    "broker": BrokerSettings,
    "controller": ControllerSettings,
    "telemetry": TelemetrySettings,
    "buffer": BufferSettings,
    "trust": TrustSettings,
    "safety": SafetySettings,
    "log": LogSettings,
}
_TOP_KEYS: Final = ("region", "intersections")
SCHEMA: Final = Schema(
    prefix=ENV_PREFIX, top={"region": str, "intersections": Intersections}, sections=_SECTIONS
)
_SECRET_KEYS: Final = frozenset({"broker.password"})


def load_settings(path: Path | None, environ: Mapping[str, str]) -> EdgeSettings:
    """Read ``path`` (if any), apply the ``CITYBRAIN_EDGE__*`` variables of ``environ``, check
    everything, or raise ``SettingsError`` naming the file or variable, the key and the reason.

    Relative paths are taken from the config file's directory (the working directory without
    a file), so a config and its certificates can move together.
    """
    source = str(path) if path is not None else "(no config file)"
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        for key, value in flatten(read_toml(path), source, SCHEMA).items():
            values[key] = value
            origin[key] = source
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            key = env_key(name, SCHEMA)
            values[key] = _parse_env(name, key, environ[name])
            origin[key] = f"environment {name}"
    base = (path.parent if path is not None else Path.cwd()).absolute()

    def fail(key: str, error: ValidationError) -> SettingsError:
        return SettingsError(origin.get(key, source), error.field or key, error.reason)

    for key in _TOP_KEYS:
        if values.get(key) is None:
            raise fail(key, ValidationError(key, "is required"))
    try:
        region = check_id("region", convert(values["region"], str, base))
    except ValidationError as error:
        raise fail("region", error) from None
    try:
        intersections = _intersections(values["intersections"])
    except ValidationError as error:
        raise fail("intersections", error) from None
    derived = {
        "broker.port": 8883 if values.get("broker.tls") is True else 1883,
        "broker.client_id_prefix": f"cb-{region}",
        "buffer.path": state_directory(environ, DEFAULT_STATE_DIR),
    }
    sections = build_sections(SCHEMA, values, derived, base, fail)
    if origin.get("broker.password") == source and path is not None:
        check_private_config(path, source, "broker.password", " or use broker.password_file")
    try:
        return EdgeSettings(
            region=region,
            intersections=intersections,
            source=path,
            from_environment=frozenset(k for k, o in origin.items() if o != source),
            **sections,
        )
    except ValidationError as error:
        raise fail(error.field.split("[")[0], error) from None


def describe(settings: EdgeSettings) -> str:
    """A readable summary for ``check-config``, with secrets masked and overrides marked."""
    hosted = (
        "all (every intersection the controller link reports)"
        if settings.intersections == "all"
        else f"{', '.join(settings.intersections)} ({len(settings.intersections)})"
    )
    lines = [
        f"config file: {settings.source or '(none)'}",
        f"region = {settings.region}{_note(settings, 'region')}",
        f"intersections = {hosted}{_note(settings, 'intersections')}",
    ]
    secrets = dict.fromkeys(_SECRET_KEYS, lambda _value: MASK)
    lines += describe_sections(
        settings, SCHEMA, secrets=secrets, note=lambda key: _note(settings, key)
    )
    lines.append(f"mqtt client ids: {settings.broker.client_id_prefix}-<intersection>")
    return "\n".join(lines)


def _note(settings: EdgeSettings, key: str) -> str:
    if key not in settings.from_environment:
        return ""
    return f"  (from {SCHEMA.env_name(key)})"


def _parse_env(name: str, key: str, text: str) -> Any:
    """The TOML value an environment string stands for; empty unsets an optional key."""
    if key == "intersections":
        return text.strip() if text.strip() == "all" else [p.strip() for p in text.split(",")]
    if key == "region":
        return text
    return parse_env(name, key, text, SCHEMA.hint(key))


def _intersections(value: Any) -> Intersections:
    if value == "all":
        return "all"
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(
            "intersections", f'expected a list of intersection ids or "all", got {kind(value)}'
        )
    return tuple(value)
