"""Small files: written whole or not at all (keys, trust stores, high-water marks), and the
checks every secret or TLS file and every small JSON file passes when read."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TypeVar

import msgspec

from citybrain.models.errors import ValidationError

T = TypeVar("T")


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new, never half.
    Without ``sync`` it survives the process being killed, not the machine losing power."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        if sync:
            file.flush()
            os.fsync(file.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def check_file(name: str, path: Path | None, *, secret: bool) -> None:
    """A TLS, password or key file must be a readable regular file nobody else may write (a
    swapped CA lets another broker in) and, when ``secret``, nobody else may read."""
    if path is None:
        return
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ValidationError(name, f"{path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValidationError(name, f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValidationError(name, f"{path} is not readable by this user")
    if mode & stat.S_IWOTH:
        raise ValidationError(name, f"{path} is writable by every user; chmod o-w it")
    if secret and mode & stat.S_IROTH:
        raise ValidationError(name, f"{path} is readable by every user; chmod o-r it")


def read_secret(name: str, path: Path) -> str:
    """A password kept in a file of its own, read when it is needed (so a rotated one needs
    no restart); its trailing newline is not part of it."""
    text = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not text:
        raise ValidationError(name, f"{path} is empty")
    return text


def read_struct(name: str, path: Path, kind: type[T], *, max_bytes: int) -> T:
    """A small JSON file decoded into ``kind``, refused with the reason if it is missing,
    larger than ``max_bytes`` or does not fit."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValidationError(name, f"{path}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise ValidationError(name, f"{path}: larger than {max_bytes} bytes")
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValidationError(name, f"{path}: {error}") from None


def check_private_file(path: Path) -> None:
    """A secret (private key, password) must be a regular file only its owner can read."""
    try:
        info = path.stat()
    except OSError as error:
        raise ValidationError("file", f"{path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValidationError("file", f"{path}: not a regular file")
    if info.st_mode & 0o077:
        raise ValidationError(
            "file",
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; chmod 600",
        )
