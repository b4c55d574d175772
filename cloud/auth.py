"""Who may use the operators' API, and for what: users with a role, bearer tokens, priority caps
per incident type, and per-user limits.

The token file (JSON, mode 0600, refused when others may read or write it) lists the users. It
keeps only the SHA-256 of each token: a token is 256 random bits, so its plain hash can be neither
guessed nor reversed, and a copy of the file lets nobody in. ``add_user`` makes a token and
returns it, the one time it is seen. The decisions (``check_request``, ``check_cancel``,
``RateLimiter.take``) are pure: the user, what they ask and ``now`` in, a refusal out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from citybrain.cloud.operations import CorridorOwner
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.files import check_private_file, read_struct, write_atomic
from citybrain.models.messages import MAX_PRIORITY, MIN_PRIORITY, CorridorRequest

TOKEN_PREFIX = "cbt_"  # noqa: S105 - a marker, not a secret
"""Marks a citybrain token, so that secret scanners and people recognise one."""
MAX_TOKEN_CHARS = 256
MAX_FILE_BYTES = 1024 * 1024
MAX_LIMIT = 10_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class UserRole(enum.StrEnum):
    VIEWER = "viewer"
    """Reads corridors, the network, intersections and health."""
    OPERATOR = "operator"
    """Also requests and cancels corridors, within a priority cap per incident type."""
    ADMIN = "admin"
    """Everything, uncapped."""


DEFAULT_LIMITS: Mapping[UserRole, tuple[int, int]] = {
    UserRole.VIEWER: (0, 30),
    UserRole.OPERATOR: (4, 12),
    UserRole.ADMIN: (64, 60),
}
"""Per role: (corridors live at once, corridor requests and cancels per minute)."""


class User(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    """Recorded as the requester of every corridor the user asks for."""
    role: UserRole
    token_sha256: str
    caps: dict[str, int] = {}
    """Operators only: incident type -> the highest priority they may request for it."""
    max_active: int
    """Corridors the user may have live at once."""
    requests_per_minute: int
    """Corridor requests and cancels: a burst of this many, then refilled evenly."""
    created_at: float

    def __post_init__(self) -> None:
        check_id("name", self.name)
        if _SHA256_HEX.fullmatch(self.token_sha256) is None:
            raise ValidationError("token_sha256", "expected 64 lowercase hex digits")
        for incident, cap in self.caps.items():
            check_id("caps", incident)
            check_count(f"caps.{incident}", cap, ge=MIN_PRIORITY, le=MAX_PRIORITY)
        if self.role is UserRole.OPERATOR and not self.caps:
            raise ValidationError("caps", "an operator needs a cap for at least one incident type")
        if self.role is not UserRole.OPERATOR and self.caps:
            raise ValidationError("caps", f"only operators have caps, not a {self.role}")
        check_count("max_active", self.max_active, le=MAX_LIMIT)
        check_count("requests_per_minute", self.requests_per_minute, ge=1, le=MAX_LIMIT)
        check_number("created_at", self.created_at, ge=0.0)


class TokenFileBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    v: int = 1
    users: tuple[User, ...] = ()

    def __post_init__(self) -> None:
        if self.v != 1:
            raise ValidationError("v", f"unsupported token file version {self.v}")
        names = [user.name for user in self.users]
        if len(set(names)) != len(names):
            raise ValidationError("users", "a user name is listed twice")
        hashes = [user.token_sha256 for user in self.users]
        if len(set(hashes)) != len(hashes):
            raise ValidationError("users", "two users share a token")


class Forbidden(CitybrainError):  # noqa: N818 - named after the HTTP status
    """A known user asked for what they may not do; ``field`` names the part of the request
    to blame (``incident``, ``priority``) when there is one."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field


# ---- the token file ----------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_users(path: Path) -> TokenFileBody:
    """The token file, checked: private to its owner, well-formed, every user valid."""
    check_private_file(path)
    return read_struct("tokens", path, TokenFileBody, max_bytes=MAX_FILE_BYTES)


def add_user(
    path: Path,
    name: str,
    role: UserRole,
    *,
    caps: Mapping[str, int] | None = None,
    max_active: int | None = None,
    requests_per_minute: int | None = None,
) -> str:
    """Add ``name`` to the token file (made, mode 0600, when missing) and return its new token:
    shown this once, stored only as its hash. Limits left out take the role's defaults."""
    body = read_users(path) if path.exists() else TokenFileBody()
    if any(user.name == name for user in body.users):
        raise ValidationError("name", f"{name!r} already has a token; revoke it first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    default_active, default_rate = DEFAULT_LIMITS[role]
    user = User(
        name=name,
        role=role,
        token_sha256=token_hash(token),
        caps=dict(caps or {}),
        max_active=default_active if max_active is None else max_active,
        requests_per_minute=default_rate if requests_per_minute is None else requests_per_minute,
        created_at=time.time(),
    )
    _write(path, TokenFileBody(users=(*body.users, user)))
    return token


def revoke_user(path: Path, name: str) -> None:
    """Remove ``name`` and so its token: a running API refuses it from its next request."""
    body = read_users(path)
    kept = tuple(user for user in body.users if user.name != name)
    if len(kept) == len(body.users):
        raise ValidationError("name", f"no user {name!r} in {path}")
    _write(path, TokenFileBody(users=kept))


def _write(path: Path, body: TokenFileBody) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, msgspec.json.format(msgspec.json.encode(body)) + b"\n", mode=0o600)


class TokenFile:
    """The token file as the API uses it: read again whenever it changed, so that a revoked
    token stops working at once; while it is unusable every authentication fails (closed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._version: tuple[int, ...] | None = None
        self._users: tuple[User, ...] = ()
        self.users()  # a bad file stops the start, with its reason

    def users(self) -> tuple[User, ...]:
        try:
            info = self.path.stat()
        except OSError as error:
            raise ValidationError("tokens", f"{self.path}: {error.strerror}") from None
        # a new file, new content or a new mode or owner (ctime): read and check again
        version = (info.st_dev, info.st_ino, info.st_ctime_ns, info.st_mtime_ns, info.st_size)
        if version != self._version:
            self._users = read_users(self.path).users
            self._version = version
        return self._users

    def authenticate(self, token: str) -> User | None:
        """The user holding ``token``, or None. Every hash is compared, in constant time."""
        digest = token_hash(token)
        found = None
        for user in self.users():
            if hmac.compare_digest(user.token_sha256, digest):
                found = user
        return found


# ---- decisions ---------------------------------------------------------------------------------


def check_write(user: User, what: str = "request or cancel corridors") -> None:
    """Raise ``Forbidden`` unless ``user`` may act at all (change corridors, acknowledge
    alarms): viewers only read."""
    if user.role is UserRole.VIEWER:
        raise Forbidden(f"{user.name} is a viewer: viewers may not {what}")


def check_request(user: User, request: CorridorRequest) -> None:
    """Raise ``Forbidden`` unless ``user`` may request this corridor: an operator names one of
    their incident types and stays within its priority cap; an admin is not capped."""
    check_write(user)
    if user.role is UserRole.ADMIN:
        return
    allowed = ", ".join(sorted(user.caps))
    if request.incident is None:
        raise Forbidden(f"name the incident type ({allowed})", "incident")
    cap = user.caps.get(request.incident)
    if cap is None:
        raise Forbidden(
            f"{user.name} may not request corridors for {request.incident!r} incidents, "
            f"only for {allowed}",
            "incident",
        )
    if request.priority > cap:
        raise Forbidden(
            f"priority {request.priority} is above {user.name}'s cap of {cap} "
            f"for {request.incident} incidents",
            "priority",
        )


def check_cancel(user: User, corridor: CorridorOwner) -> None:
    """Raise ``Forbidden`` unless ``user`` may cancel ``corridor``: an admin any, an operator
    their own and those they could have requested themselves (a colleague's call they take
    over), a viewer none."""
    check_write(user)
    if user.role is UserRole.ADMIN or corridor.requester == user.name:
        return
    cap = None if corridor.incident is None else user.caps.get(corridor.incident)
    if cap is None or corridor.priority > cap:
        incident = corridor.incident or "no incident type"
        raise Forbidden(
            f"{corridor.corridor_id} ({incident}, priority {corridor.priority}, requested by "
            f"{corridor.requester}) is beyond what {user.name} may request"
        )


class RateLimiter:
    """Corridor requests and cancels per user: a token bucket of ``requests_per_minute``
    (a burst of that many, then refilled evenly), kept in memory for the users of the file."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        """User -> (requests left, when counted), in monotonic seconds."""

    def take(self, user: User, now: float) -> float:
        """Spend one request: 0 when allowed, else the seconds until the next one is."""
        size = float(user.requests_per_minute)
        left, at = self._buckets.get(user.name, (size, now))
        left = min(size, left + max(0.0, now - at) * size / 60.0)
        if left >= 1.0:
            self._buckets[user.name] = (left - 1.0, now)
            return 0.0
        self._buckets[user.name] = (left, now)
        return (1.0 - left) * 60.0 / size
