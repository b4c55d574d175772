"""The field bus (docs/fieldbus.md): what a signal cabinet reports (detector counts, signal
displays, approach configuration) and the request/response protocol that carries it. Shared by
the simulator's cabinets (the server) and the edge's controller drivers (the client), which
never import each other."""

from __future__ import annotations

import enum

import msgspec

from citybrain.models.checks import check_id, check_number
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.messages import AckStatus, SignalPlan
from citybrain.models.signal import Indication

MAX_APPROACHES = 64
MAX_GROUPS = 64


class ApproachCounts(msgspec.Struct, frozen=True, kw_only=True):
    """One approach's two loops over ``interval_s`` (since the previous read): vehicles
    counted and the share of the interval each loop was occupied (0..1)."""

    approach: str
    interval_s: float
    stop_bar_count: int
    stop_bar_occupancy: float
    advance_count: int
    advance_occupancy: float

    def __post_init__(self) -> None:
        check_id("approach", self.approach)
        check_number("interval_s", self.interval_s, ge=0.0, le=86_400.0)
        for name in ("stop_bar_count", "advance_count"):
            value = getattr(self, name)
            if not 0 <= value <= 1_000_000:
                raise ValidationError(name, f"must be a count between 0 and 1e6, got {value}")
        check_number("stop_bar_occupancy", self.stop_bar_occupancy, ge=0.0, le=1.0)
        check_number("advance_occupancy", self.advance_occupancy, ge=0.0, le=1.0)


class DetectorReading(msgspec.Struct, frozen=True, kw_only=True):
    """Every approach of one intersection, read at controller time ``time``."""

    time: float
    approaches: list[ApproachCounts]

    def __post_init__(self) -> None:
        check_number("time", self.time, ge=0.0)
        if len(self.approaches) > MAX_APPROACHES:
            raise ValidationError("approaches", f"at most {MAX_APPROACHES}")


class SignalReading(msgspec.Struct, frozen=True, kw_only=True):
    """The displays of one intersection at controller time ``time``: per signal group its
    indication, when it began (``None``: red for as long as the cabinet knows), and when its
    walk began if one runs in this green."""

    time: float
    groups: dict[str, Indication]
    since: dict[str, float | None]
    walk_since: dict[str, float] = {}
    plan_id: str | None = None
    mode: str = "normal"

    def __post_init__(self) -> None:
        check_number("time", self.time, ge=0.0)
        if len(self.groups) > MAX_GROUPS:
            raise ValidationError("groups", f"at most {MAX_GROUPS}")
        if self.since.keys() != self.groups.keys():
            raise ValidationError("since", "must list exactly the groups")
        for group, since in self.since.items():
            if since is not None and since > self.time:
                raise ValidationError(f"since.{group}", "lies after the reading's time")
        for group in self.walk_since:
            if self.groups.get(group) is not Indication.GREEN:
                raise ValidationError(f"walk_since.{group}", "a walk runs only in a green")
        if self.mode not in ("normal", "priority"):
            raise ValidationError("mode", f"expected normal or priority, got {self.mode!r}")


class ApproachConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What an edge needs to know about one approach to estimate its queue: the road it
    measures (lanes, length to the upstream intersection, speed limit, saturation flow per
    lane), the signal groups that serve it, and how far upstream the advance loop sits."""

    approach: str
    link: str
    lanes: int
    length_m: float
    speed_limit_mps: float
    saturation_flow_vphpl: float
    advance_setback_m: float
    groups: list[str]

    def __post_init__(self) -> None:
        check_id("approach", self.approach)
        check_id("link", self.link)
        if not 1 <= self.lanes <= 16:
            raise ValidationError("lanes", f"must be 1-16, got {self.lanes}")
        check_number("length_m", self.length_m, gt=0.0, le=100_000.0)
        check_number("speed_limit_mps", self.speed_limit_mps, gt=0.0, le=70.0)
        check_number("saturation_flow_vphpl", self.saturation_flow_vphpl, gt=0.0, le=3600.0)
        check_number("advance_setback_m", self.advance_setback_m, gt=0.0, le=self.length_m)
        if not 1 <= len(self.groups) <= MAX_GROUPS:
            raise ValidationError("groups", f"an approach is served by 1-{MAX_GROUPS} groups")
        for index, group in enumerate(self.groups):
            check_id(f"groups[{index}]", group)


# --- The protocol (docs/fieldbus.md): the simulator serves it, the edge's driver speaks it. ---

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 256 * 1024
"""Longest request line a cabinet reads; anything longer is refused and the link closed."""

LINK_CODES = frozenset({"disconnected", "timeout", "internal"})
"""Error codes that say nothing about the request itself: asking again later may succeed."""


class Op(enum.StrEnum):
    HELLO = "hello"
    SIGNALS = "signals"
    DETECTORS = "detectors"
    CONFIG = "config"
    PLAN = "plan"
    RELEASE = "release"
    GROUND_TRUTH = "ground_truth"
    ADVANCE = "advance"


class Request(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: int
    op: Op
    intersection: str | None = None
    plan: SignalPlan | None = None
    seconds: float | None = None


class Failure(msgspec.Struct, frozen=True):
    code: str
    message: str


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``result`` stays raw JSON so one envelope serves every op: the reader of a connection
    matches it to its request by ``id`` and the requester decodes it into the op's type."""

    id: int
    ok: bool
    result: msgspec.Raw = msgspec.Raw()
    error: Failure | None = None


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    protocol: int
    time: float
    paced: bool
    intersections: int
    names: list[str] = []
    """The cabinets on this bus (an edge process configured for "all" hosts each)."""


class Clock(msgspec.Struct, frozen=True, kw_only=True):
    time: float


class PlanOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the cabinet made of a plan: the ack an edge reports for it."""

    time: float
    status: AckStatus
    reason_code: str | None = None
    reason: str | None = None


class GroundTruth(msgspec.Struct, frozen=True, kw_only=True):
    """True standing queue per approach (simulation only, for scoring estimators)."""

    time: float
    queues: dict[str, int]


class FieldBusError(CitybrainError):
    """A request failed: ``code`` says why; ``recoverable`` when the link, not the request,
    was at fault (asking again once the link is back may succeed)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    @property
    def recoverable(self) -> bool:
        return self.code in LINK_CODES
