"""The edge agent's settings: one TOML file plus ``CITYBRAIN_EDGE__SECTION__KEY`` overrides.

Everything is validated once, at start, so a field engineer learns about a typo or an unsafe
value from ``citybrain-edge check-config`` and not from a misbehaving intersection. The
dataclasses below are the schema: the loader takes each key's type from their annotations and
their ``__post_init__`` checks ranges and combinations, so settings built in code are held to
the same rules as settings read from a file. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import stat
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

from citybrain.models.checks import check_count, check_id, check_ids, check_number, check_unique
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_file, read_secret
from citybrain.signal_plans.validator import SafetyLimits

ENV_PREFIX: Final = "CITYBRAIN_EDGE__"
DEFAULT_STATE_DIR: Final = Path("/var/lib/citybrain-edge")
"""Where the buffer lives when neither the file nor systemd's ``STATE_DIRECTORY`` says."""
DEFAULT_TRUST_STORE: Final = Path("/etc/citybrain/trust.json")
MAX_INTERSECTIONS: Final = 10_000
MASK: Final = "********"

Intersections = tuple[str, ...] | Literal["all"]
"""The intersection ids this process hosts, or ``"all"`` the controller link reports."""


class SettingsError(ValidationError):
    """A setting is missing, mistyped or unsafe: ``source`` is the file or the environment
    variable it came from, ``field`` its key path (``broker.port``), ``reason`` what is wrong."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.source = source
        self.args = (f"{source}: {field}: {reason}",)


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
        if not self.host or any(c.isspace() for c in self.host) or len(self.host) > 253:
            raise ValidationError("host", f"{self.host!r} is not a host name or address")
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
        in_clear = not self.tls and not self.allow_insecure and not _is_loopback(self.host)
        if has_password and in_clear:
            raise ValidationError(
                "password",
                f"would cross the network to {self.host!r} in clear text; set tls = true, "
                "or allow_insecure = true to accept that risk",
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
        for key, value in _read_file(path).items():
            values[key] = value
            origin[key] = source
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            key = _env_key(name)
            values[key] = _parse_env(name, key, environ[name])
            origin[key] = f"environment {name}"
    base = (path.parent if path is not None else Path.cwd()).absolute()

    def fail(key: str, error: ValidationError) -> SettingsError:
        return SettingsError(origin.get(key, source), error.field or key, error.reason)

    for key in _TOP_KEYS:
        if values.get(key) is None:
            raise fail(key, ValidationError(key, "is required"))
    try:
        region = check_id("region", _convert(values["region"], str, base))
    except ValidationError as error:
        raise fail("region", error) from None
    try:
        intersections = _intersections(values["intersections"])
    except ValidationError as error:
        raise fail("intersections", error) from None
    derived = {
        "broker.port": 8883 if values.get("broker.tls") is True else 1883,
        "broker.client_id_prefix": f"cb-{region}",
        "buffer.path": _state_directory(environ),
    }
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        kwargs: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for spec in fields(cls):
            key = f"{section}.{spec.name}"
            if values.get(key) is not None:
                try:
                    kwargs[spec.name] = _convert(values[key], hints[spec.name], base)
                except ValidationError as error:
                    raise fail(key, ValidationError(key, error.reason)) from None
            elif key in derived:
                kwargs[spec.name] = derived[key]
        try:
            sections[section] = cls(**kwargs)
        except ValidationError as error:
            key = f"{section}.{error.field}"
            raise fail(key, ValidationError(key, error.reason)) from None
    if origin.get("broker.password") == source and path is not None:
        _check_private_config(path, source)
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
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for spec in fields(values):
            key = f"{section}.{spec.name}"
            value = getattr(values, spec.name)
            text = MASK if key in _SECRET_KEYS and value is not None else _show(value)
            lines.append(f"  {spec.name} = {text}{_note(settings, key)}")
    lines.append(f"mqtt client ids: {settings.broker.client_id_prefix}-<intersection>")
    return "\n".join(lines)


def _read_file(path: Path) -> dict[str, Any]:
    """The file's keys flattened to key paths, refusing unknown keys and misplaced tables."""
    source = str(path)
    try:
        mode = path.stat().st_mode
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(source, "(file)", "not found") from None
    except OSError as error:
        raise SettingsError(source, "(file)", f"cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(source, "(syntax)", str(error)) from None
    if mode & stat.S_IWOTH:
        raise SettingsError(source, "(file)", "is writable by every user; chmod o-w it")
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in _TOP_KEYS:
            flat[key] = value
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(source, key, f"expected a table [{key}]")
            known = [spec.name for spec in fields(_SECTIONS[key])]
            for name, item in value.items():
                if name not in known:
                    raise SettingsError(source, f"{key}.{name}", _unknown(name, known))
                flat[f"{key}.{name}"] = item
        else:
            raise SettingsError(source, key, _unknown(key, [*_TOP_KEYS, *_SECTIONS]))
    return flat


def _check_private_config(path: Path, source: str) -> None:
    if path.stat().st_mode & stat.S_IROTH:
        raise SettingsError(
            source,
            "broker.password",
            "is in a file every user can read; chmod o-r it or use broker.password_file",
        )


def _env_key(name: str) -> str:
    """The key path a ``CITYBRAIN_EDGE__...`` variable sets, or an error naming it."""
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    source = f"environment {name}"
    if len(parts) == 1 and parts[0] in _TOP_KEYS:
        return parts[0]
    if len(parts) == 1 and parts[0] in _SECTIONS:
        raise SettingsError(source, parts[0], f"names a section: use {name}__<KEY>")
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise SettingsError(
            source,
            ".".join(parts),
            _unknown(parts[0], [*_TOP_KEYS, *_SECTIONS])
            + f" (the form is {ENV_PREFIX}SECTION__KEY)",
        )
    known = [spec.name for spec in fields(_SECTIONS[parts[0]])]
    if parts[1] not in known:
        raise SettingsError(source, ".".join(parts), _unknown(parts[1], known))
    return ".".join(parts)


def _note(settings: EdgeSettings, key: str) -> str:
    if key not in settings.from_environment:
        return ""
    return f"  (from {ENV_PREFIX}{key.replace('.', '__').upper()})"


def _parse_env(name: str, key: str, text: str) -> Any:
    """The TOML value an environment string stands for; empty unsets an optional key."""
    if key == "intersections":
        return text.strip() if text.strip() == "all" else [p.strip() for p in text.split(",")]
    if key == "region":
        return text
    section, attr = key.split(".")
    hint = typing.get_type_hints(_SECTIONS[section])[attr]
    kind = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if text == "":
            return None
        kind = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(kind) is Literal:
        kind = type(typing.get_args(kind)[0])
    try:
        if kind is bool:
            word = text.strip().lower()
            if word in ("true", "1", "yes", "on"):
                return True
            if word in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise SettingsError(
            f"environment {name}", key, f"expected {expected}, got {text!r}"
        ) from None
    return text


def _convert(value: Any, hint: Any, base: Path) -> Any:
    """``value`` (as TOML gives it) as the annotated type, or ``ValidationError``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _convert(value, next(a for a in args if a is not type(None)), base)
    if typing.get_origin(hint) is Literal:
        if not any(value == arg and type(value) is type(arg) for arg in args):
            raise ValidationError("", f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValidationError("", f"expected a path, got {_kind(value)}")
        return base / Path(value).expanduser()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValidationError("", f"expected {expected[hint]}, got {_kind(value)}")
    return value


def _intersections(value: Any) -> Intersections:
    if value == "all":
        return "all"
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(
            "intersections", f'expected a list of intersection ids or "all", got {_kind(value)}'
        )
    return tuple(value)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    shown = f" {value!r}" if isinstance(value, str | int | float) else ""
    return names.get(type(value), f"a {type(value).__name__}") + shown


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return f"unknown key {name!r}{hint}"


def _state_directory(environ: Mapping[str, str]) -> Path:
    """systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``), else ``DEFAULT_STATE_DIR``."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else DEFAULT_STATE_DIR


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
