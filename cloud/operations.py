"""What operators can ask of the cloud service, as one seam: the HTTP API and the CLI sit on
``Operations``; the service implements it, and tests put a fake behind it.

Errors: ``ValidationError`` (a bad field: HTTP 400), ``NotFound`` (an unknown corridor or
place: 404, or 400 ``unknown_intersection`` inside a request body), ``Conflict`` (a vehicle
that already has a corridor, a corridor already ended: 409), ``UnreachableError`` (no route:
422), ``ServiceUnavailable`` (the service cannot act now, say it is starting, the broker is
away or the corridor limit is reached: 503), ``LimitReached`` (a requester's own limit of live
corridors: 429).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

import msgspec

from citybrain.models.errors import CitybrainError
from citybrain.models.messages import CorridorRequest, CorridorStatus, Mode, Presence


class ServiceUnavailable(CitybrainError):  # noqa: N818 - named after the HTTP status
    """Recoverable: try again shortly."""


class NotFound(CitybrainError):  # noqa: N818 - named after the HTTP status
    """An unknown corridor or intersection id."""


class Conflict(CitybrainError):  # noqa: N818 - named after the HTTP status
    """The request clashes with the state: a vehicle that already has a corridor."""


class LimitReached(CitybrainError):  # noqa: N818 - reads as a state
    """The requester has as many live corridors as they may: one must end first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CorridorOwner:
    """Who asked for a corridor, and for what: what deciding who may cancel it needs."""

    corridor_id: str
    requester: str
    incident: str | None
    priority: int


class Health(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    """Working, with a dependency away (database buffering, broker reconnecting)."""
    DOWN = "down"


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    status: Health
    broker: bool
    database: bool
    telemetry_backlog: int
    """Messages waiting to be written to the database."""
    corridors_active: int
    intersections_online: int
    detail: dict[str, str] = {}


class IntersectionView(msgspec.Struct, frozen=True, kw_only=True):
    intersection: str
    presence: Presence | None
    """From the retained status; ``None`` when never heard of."""
    mode: Mode | None
    telemetry_age_s: float | None
    """Controller seconds since the last telemetry; ``None`` when none yet."""
    queues_veh: dict[str, float]
    """Per approach, as the cloud uses them now (telemetry, or the stale fallback)."""
    plan_id: str | None = None


class NetworkView(msgspec.Struct, frozen=True, kw_only=True):
    now: float
    """The cloud's estimate of controller time."""
    intersections: int
    online: int
    reporting: int
    """Intersections with telemetry younger than the stale limit."""
    corridors_active: int


class Operations(abc.ABC):
    @abc.abstractmethod
    async def request_corridor(
        self, request: CorridorRequest, *, max_active: int | None = None
    ) -> CorridorStatus:
        """Grant a corridor and start dispatching its plans (raises on a bad request);
        ``LimitReached`` when ``request.requester`` already has ``max_active`` live ones."""

    @abc.abstractmethod
    async def corridors(self, *, active_only: bool = False) -> list[CorridorStatus]: ...

    @abc.abstractmethod
    async def corridor(self, corridor_id: str) -> CorridorStatus:
        """Raises ``NotFound`` for an unknown id."""

    @abc.abstractmethod
    async def owner(self, corridor_id: str) -> CorridorOwner:
        """Raises ``NotFound`` for an unknown id."""

    @abc.abstractmethod
    async def cancel(self, corridor_id: str, *, reason: str, by: str) -> CorridorStatus:
        """Cancel and release every intersection (``NotFound`` for an unknown id); ``by``
        (who cancels) and ``reason`` go to the audit trail."""

    @abc.abstractmethod
    async def network(self) -> NetworkView: ...

    @abc.abstractmethod
    async def intersection(self, intersection: str) -> IntersectionView:
        """Raises ``NotFound`` for an unknown id."""

    @abc.abstractmethod
    async def health(self) -> HealthReport: ...
