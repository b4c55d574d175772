"""Settings files: one TOML file plus ``<PREFIX>SECTION__KEY`` environment overrides.

The edge (``edge/settings.py``) and the cloud (``cloud/settings.py``) read their settings the
same way: a ``Schema`` names the top-level keys with their types and the ``[sections]``, each
a frozen dataclass whose annotations give each key's type and whose ``__post_init__`` checks
ranges and combinations. What is here turns TOML and environment strings into those types and
refuses, with a ``SettingsError`` naming the file or variable, the key and the reason, what
does not fit. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import stat
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal

from citybrain.models.errors import ValidationError

MASK: Final = "********"


class SettingsError(ValidationError):
    """A setting is missing, mistyped or unsafe: ``source`` is the file or the environment
    variable it came from, ``field`` its key path (``broker.port``), ``reason`` what is wrong."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.source = source
        self.args = (f"{source}: {field}: {reason}",)


@dataclass(frozen=True, slots=True)
class Schema:
    """The shape of one settings file."""

    prefix: str
    """Of the environment overrides: ``CITYBRAIN_EDGE__`` reads ``CITYBRAIN_EDGE__BROKER__PORT``."""
    top: Mapping[str, Any]
    """Top-level keys and their types."""
    sections: Mapping[str, type[Any]]
    """``[section]`` names and the dataclass each is read into."""

    def known(self) -> list[str]:
        return [*self.top, *self.sections]

    def hint(self, key: str) -> Any:
        """The annotated type of a key path."""
        if key in self.top:
            return self.top[key]
        section, name = key.split(".")
        return typing.get_type_hints(self.sections[section])[name]

    def env_name(self, key: str) -> str:
        """The environment variable that overrides a key path."""
        return f"{self.prefix}{key.replace('.', '__').upper()}"


def read_toml(path: Path) -> dict[str, Any]:
    """A settings file's TOML document, refused if missing, unreadable, malformed or writable
    by every user (anyone could change what the service trusts)."""
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
    return document


def flatten(document: Mapping[str, Any], source: str, schema: Schema) -> dict[str, Any]:
    """A document's keys flattened to key paths, refusing unknown keys and misplaced tables."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in schema.top:
            flat[key] = value
        elif key in schema.sections:
            if not isinstance(value, dict):
                raise SettingsError(source, key, f"expected a table [{key}]")
            known = [spec.name for spec in fields(schema.sections[key])]
            for name, item in value.items():
                if name not in known:
                    raise SettingsError(source, f"{key}.{name}", unknown(name, known))
                flat[f"{key}.{name}"] = item
        else:
            raise SettingsError(source, key, unknown(key, schema.known()))
    return flat


def env_key(name: str, schema: Schema) -> str:
    """The key path a ``<PREFIX>...`` variable sets, or an error naming it."""
    parts = name[len(schema.prefix) :].lower().split("__")
    source = f"environment {name}"
    if len(parts) == 1 and parts[0] in schema.top:
        return parts[0]
    if len(parts) == 1 and parts[0] in schema.sections:
        raise SettingsError(source, parts[0], f"names a section: use {name}__<KEY>")
    if len(parts) != 2 or parts[0] not in schema.sections:
        raise SettingsError(
            source,
            ".".join(parts),
            unknown(parts[0], schema.known()) + f" (the form is {schema.prefix}SECTION__KEY)",
        )
    known = [spec.name for spec in fields(schema.sections[parts[0]])]
    if parts[1] not in known:
        raise SettingsError(source, ".".join(parts), unknown(parts[1], known))
    return ".".join(parts)


def parse_env(name: str, key: str, text: str, hint: Any) -> Any:
    """The TOML value an environment string stands for; empty unsets an optional key."""
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


def convert(value: Any, hint: Any, base: Path) -> Any:
    """``value`` (as TOML gives it) as the annotated type, or ``ValidationError``; a relative
    path is taken from ``base``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return convert(value, next(a for a in args if a is not type(None)), base)
    if typing.get_origin(hint) is Literal:
        if not any(value == arg and type(value) is type(arg) for arg in args):
            raise ValidationError("", f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValidationError("", f"expected a path, got {kind(value)}")
        return base / Path(value).expanduser()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValidationError("", f"expected {expected[hint]}, got {kind(value)}")
    return value


Fail = Callable[[str, ValidationError], SettingsError]
"""Makes the error for a key path, naming where that key's value came from."""


def build_sections(
    schema: Schema,
    values: Mapping[str, Any],
    derived: Mapping[str, Any],
    base: Path,
    fail: Fail,
) -> dict[str, Any]:
    """Each section's dataclass from the key paths given (else ``derived``, else its default)."""
    sections: dict[str, Any] = {}
    for section, cls in schema.sections.items():
        kwargs: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for spec in fields(cls):
            key = f"{section}.{spec.name}"
            if values.get(key) is not None:
                try:
                    kwargs[spec.name] = convert(values[key], hints[spec.name], base)
                except ValidationError as error:
                    raise fail(key, ValidationError(key, error.reason)) from None
            elif key in derived:
                kwargs[spec.name] = derived[key]
        try:
            sections[section] = cls(**kwargs)
        except ValidationError as error:
            key = f"{section}.{error.field}"
            raise fail(key, ValidationError(key, error.reason)) from None
    return sections


def describe_sections(
    settings: object,
    schema: Schema,
    *,
    secrets: Mapping[str, Callable[[Any], str]],
    note: Callable[[str], str],
) -> list[str]:
    """``[section]`` then ``  key = value`` lines for ``check-config``; ``secrets`` maps the
    key paths to mask to how each is shown, ``note`` says where an overridden key came from."""
    lines = []
    for section in schema.sections:
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for spec in fields(values):
            key = f"{section}.{spec.name}"
            value = getattr(values, spec.name)
            text = secrets[key](value) if key in secrets and value is not None else show(value)
            lines.append(f"  {spec.name} = {text}{note(key)}")
    return lines


def check_private_config(path: Path, source: str, key: str, advice: str) -> None:
    """Refuse a secret ``key`` kept in a settings file every user can read."""
    if path.stat().st_mode & stat.S_IROTH:
        raise SettingsError(source, key, f"is in a file every user can read; chmod o-r it{advice}")


def kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    shown = f" {value!r}" if isinstance(value, str | int | float) else ""
    return names.get(type(value), f"a {type(value).__name__}") + shown


def unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return f"unknown key {name!r}{hint}"


def check_host(field: str, host: str) -> str:
    """Return ``host`` if it can be a host name or address, else raise naming ``field``."""
    if not host or any(c.isspace() for c in host) or len(host) > 253:
        raise ValidationError(field, f"{host!r} is not a host name or address")
    return host


def check_not_in_clear(host: str, *, has_password: bool, tls: bool, allow_insecure: bool) -> None:
    """Refuse a password that would cross the network to ``host`` without TLS, unless the
    settings accept that risk (``allow_insecure``) or the host is this machine."""
    if has_password and not tls and not allow_insecure and not is_loopback(host):
        raise ValidationError(
            "password",
            f"would cross the network to {host!r} in clear text; set tls = true, "
            "or allow_insecure = true to accept that risk",
        )


def state_directory(environ: Mapping[str, str], default: Path) -> Path:
    """systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``, its first entry), else ``default``."""
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
