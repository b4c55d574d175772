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

from citybrain.cloud.alarms import Alarm
from citybrain.cloud.events import EventHub
from citybrain.models.checks import check_count, check_id
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.messages import (
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    Mode,
    Presence,
)

MAX_PAGE = 500


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


class ClockReading(msgspec.Struct, frozen=True, kw_only=True):
    """Controller time and wall time at one instant, and the controllers' pace: what turns a
    controller time into a wall-clock one (``wall_of``)."""

    controller_s: float
    wall_s: float
    """Epoch seconds (UTC)."""
    rate: float
    """Controller seconds per wall second (1 in the field; a simulation's pace)."""

    def wall_of(self, controller_s: float) -> float:
        return self.wall_s + (controller_s - self.controller_s) / self.rate


class Place(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """An intersection on the map: ``[id, x_m, y_m, controlled]`` (compact: a city has
    10,000)."""

    id: str
    x_m: float
    y_m: float
    controlled: bool
    """Has a signal the cloud runs (telemetry, states, plans); other nodes are road ends."""


class NetworkMap(msgspec.Struct, frozen=True, kw_only=True):
    """The network's own geometry, for drawing it: no map tiles needed."""

    places: tuple[Place, ...]
    roads: tuple[tuple[int, int], ...]
    """Index pairs into ``places``, one per connected pair of nodes (either direction)."""


class SignalState(enum.StrEnum):
    """What the console colours an intersection by: presence first, then mode."""

    UNKNOWN = "unknown"
    """Never heard of."""
    OFFLINE = "offline"
    NORMAL = "normal"
    PRIORITY = "priority"
    FAIL_SAFE = "fail-safe"
    STALE = "stale"
    """Online, but its telemetry is older than the stale limit."""


class IntersectionStates(msgspec.Struct, frozen=True, kw_only=True):
    """Every controlled intersection's state, aligned with ``ids``: one message a second for
    the whole city."""

    now: float
    """Controller time."""
    time: str
    """The same instant, RFC 3339 wall clock."""
    ids: tuple[str, ...]
    states: tuple[SignalState, ...]
    queue_veh: tuple[float, ...]
    """The sum over the intersection's approaches."""
    rate: float = 1.0
    """Controller seconds per wall second, for moving things between two messages."""


class VehicleSpot(msgspec.Struct, frozen=True, kw_only=True):
    """A vehicle where its AVL unit last said it was: ``along`` (0 to 1) of the way along
    ``link`` from ``from_node`` to ``to_node``."""

    vehicle: str
    link: str
    from_node: str
    to_node: str
    along: float
    age_s: float
    """Controller seconds since that position."""
    corridor_id: str | None = None
    """Its live corridor, if it has one."""


class Fleet(msgspec.Struct, frozen=True, kw_only=True):
    """Every vehicle heard from within ``FLEET_SHOWN_S``: what a corridor can be asked for by
    vehicle and destination alone."""

    now: float
    vehicles: tuple[VehicleSpot, ...]


FLEET_SHOWN_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryQuery:
    """Which corridors, newest first (by their last update, then id): filters, a page size,
    and where the last page ended (``after``, the ``next`` of that page)."""

    state: CorridorState | None = None
    vehicle: str | None = None
    since: float | None = None
    """Controller time: corridors updated at or after it."""
    until: float | None = None
    """Controller time: corridors updated before it."""
    limit: int = 100
    after: tuple[float, str] | None = None
    """(updated_at, corridor_id) of the last corridor already seen."""

    def __post_init__(self) -> None:
        check_count("limit", self.limit, ge=1, le=MAX_PAGE)
        if self.vehicle is not None:
            check_id("vehicle", self.vehicle)
        if self.since is not None and self.until is not None and self.until < self.since:
            raise ValidationError("until", "must not be before since")

    def admits(self, status: CorridorStatus) -> bool:
        """Whether ``status`` belongs on a page of this query (for stores in memory)."""
        return (
            (self.state is None or status.state is self.state)
            and (self.vehicle is None or status.vehicle == self.vehicle)
            and (self.since is None or status.updated_at >= self.since)
            and (self.until is None or status.updated_at < self.until)
            and (self.after is None or (status.updated_at, status.corridor_id) < self.after)
        )


def history_page(statuses: list[CorridorStatus], query: HistoryQuery) -> HistoryPage:
    """One page of ``statuses`` (any order) for ``query``: what a store in memory serves."""
    found = sorted(
        (s for s in statuses if query.admits(s)),
        key=lambda s: (s.updated_at, s.corridor_id),
        reverse=True,
    )
    return page_of(found, query.limit)


def page_of(newest_first: list[CorridorStatus], limit: int) -> HistoryPage:
    """A page from up to ``limit + 1`` corridors: the extra one says there is a next page."""
    page = newest_first[:limit]
    more = len(newest_first) > limit
    last = page[-1] if page else None
    return HistoryPage(
        corridors=page,
        next=f"{last.updated_at!r}~{last.corridor_id}" if more and last is not None else None,
    )


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    corridors: list[CorridorStatus]
    next: str | None
    """Pass as ``after`` for the next page; ``null`` on the last one."""


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

    @abc.abstractmethod
    async def clock_reading(self) -> ClockReading: ...

    @abc.abstractmethod
    async def network_map(self) -> NetworkMap: ...

    @abc.abstractmethod
    async def intersection_states(self) -> IntersectionStates: ...

    @abc.abstractmethod
    async def fleet(self) -> Fleet: ...

    @abc.abstractmethod
    async def corridor_history(self, query: HistoryQuery) -> HistoryPage:
        """Corridors from the store (every one ever recorded), newest first; the live ones
        when there is no store."""

    @abc.abstractmethod
    async def alarms(self, *, active_only: bool = False) -> list[Alarm]: ...

    @abc.abstractmethod
    async def acknowledge_alarm(self, alarm_id: str, *, by: str) -> Alarm:
        """``NotFound`` for an unknown id; acknowledging twice keeps the first who and when."""

    @abc.abstractmethod
    async def metrics(self) -> bytes:
        """Prometheus' text format (``cloud/metrics.py``)."""

    @property
    @abc.abstractmethod
    def events(self) -> EventHub:
        """Where the live stream's events are published (``cloud/events.py``)."""
