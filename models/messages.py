"""The wire contract: every message that crosses a process boundary, as msgspec Structs.

Each message carries ``v`` (schema version). ``__post_init__`` runs both when a message is built
in Python and when it is decoded, so a malformed message is refused the same way wherever it
comes from, with the field that was wrong. Lists are bounded so a huge payload cannot make a
process allocate without limit. Unknown fields are ignored, so a newer sender can add optional
fields without breaking older receivers; anything else new bumps ``v``.
"""

from __future__ import annotations

import enum
import itertools

import msgspec

from citybrain.models.checks import check_count, check_id, check_ids, check_number, check_unique
from citybrain.models.errors import ValidationError
from citybrain.models.signal import Indication, Interval

SCHEMA_VERSION = 1

MAX_APPROACHES = 64
MAX_SIGNAL_GROUPS = 32
MAX_STEPS = 256
MAX_WINDOWS = 32
MAX_ROUTE = 4096
MAX_TEXT = 512
MAX_QUEUE_VEH = 2000.0
"""A queue longer than this on one approach is a broken estimator, not traffic."""
MAX_FLOW_VPH = 20_000.0
MAX_SPEED_MPS = 70.0
MAX_SEQ = 2**53 - 1
"""Largest sequence number every JSON reader (JavaScript included) holds exactly."""
MIN_PRIORITY = 1
MAX_PRIORITY = 10


PlanOrder = tuple[int, int]
"""``(epoch, seq)`` of a signal plan."""


class Mode(enum.StrEnum):
    NORMAL = "normal"
    PRIORITY = "priority"
    FAIL_SAFE = "fail-safe"


class Presence(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class PlanKind(enum.StrEnum):
    PRIORITY = "priority"
    """Serve the given windows or steps until ``valid_until`` (a lease)."""
    RELEASE = "release"
    """The vehicle has passed: return to the normal plan now."""


class AckStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    APPLIED = "applied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    RELEASED = "released"


class CorridorState(enum.StrEnum):
    """Request states after NTCIP 1211 / SAE J2735 SSM, plus ``failed`` for a lost vehicle."""

    REQUESTED = "requested"
    PROCESSING = "processing"
    GRANTED = "granted"
    REJECTED = "rejected"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


def _check_version(version: int) -> None:
    if version != SCHEMA_VERSION:
        raise ValidationError(
            "v", f"unsupported schema version {version}; this build speaks v{SCHEMA_VERSION}"
        )


def _check_time(field: str, value: float) -> None:
    check_number(field, value, ge=0.0)


def _check_text(field: str, value: str | None) -> None:
    if value is None:
        return
    if len(value) > MAX_TEXT:
        raise ValidationError(field, f"longer than {MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "contains characters that cannot be sent as UTF-8") from None


def _check_enum(field: str, value: object, kind: type[enum.Enum]) -> None:
    """Python callers must pass the enum member: a plain string would slip past ``is`` tests."""
    if not isinstance(value, kind):
        allowed = ", ".join(repr(member.value) for member in kind)
        raise ValidationError(field, f"expected a {kind.__name__} ({allowed}), got {value!r}")


def _check_seq(value: int) -> None:
    check_count("seq", value, le=MAX_SEQ)


def _check_length(field: str, items: tuple[object, ...], limit: int) -> None:
    if len(items) > limit:
        raise ValidationError(field, f"{len(items)} items, at most {limit} allowed")


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire message."""

    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)


class ApproachState(msgspec.Struct, frozen=True, kw_only=True):
    approach: str
    queue_veh: float
    occupancy: float
    """Share of the last interval the stop-bar detector was occupied, 0..1."""
    flow_vph: float

    def __post_init__(self) -> None:
        check_id("approach", self.approach)
        check_number("queue_veh", self.queue_veh, ge=0.0, le=MAX_QUEUE_VEH)
        check_number("occupancy", self.occupancy, ge=0.0, le=1.0)
        check_number("flow_vph", self.flow_vph, ge=0.0, le=MAX_FLOW_VPH)


class Telemetry(Message, frozen=True, kw_only=True):
    """Edge -> cloud, once a second: what the intersection is doing and how long its queues are."""

    intersection: str
    controller_time: float
    seq: int
    phase: str | None = None
    interval: Interval | None = None
    signals: dict[str, Indication] = msgspec.field(default_factory=dict)
    approaches: tuple[ApproachState, ...] = ()
    plan_id: str | None = None
    mode: Mode = Mode.NORMAL

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("intersection", self.intersection)
        _check_time("controller_time", self.controller_time)
        _check_seq(self.seq)
        if self.phase is not None:
            check_id("phase", self.phase)
        if self.interval is not None:
            _check_enum("interval", self.interval, Interval)
        _check_enum("mode", self.mode, Mode)
        if len(self.signals) > MAX_SIGNAL_GROUPS:
            raise ValidationError("signals", f"more than {MAX_SIGNAL_GROUPS} signal groups")
        check_ids("signals", self.signals)
        for group, shown in self.signals.items():
            _check_enum(f"signals[{group}]", shown, Indication)
        _check_length("approaches", self.approaches, MAX_APPROACHES)
        check_unique("approaches", (a.approach for a in self.approaches))
        if self.plan_id is not None:
            check_id("plan_id", self.plan_id)


class Status(Message, frozen=True, kw_only=True):
    """Edge -> all, retained: online or offline (the Last Will), mode and software version."""

    intersection: str
    presence: Presence
    mode: Mode = Mode.NORMAL
    software_version: str = ""
    at: float | None = None
    """Controller time of the change; absent in a Last Will, which is written at connect time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("intersection", self.intersection)
        _check_enum("presence", self.presence, Presence)
        _check_enum("mode", self.mode, Mode)
        _check_text("software_version", self.software_version)
        if self.at is not None:
            _check_time("at", self.at)


class GreenWindow(msgspec.Struct, frozen=True, kw_only=True):
    """The cloud asks for ``signal_group`` to be green from ``open_at`` to ``close_at``."""

    signal_group: str
    open_at: float
    close_at: float

    def __post_init__(self) -> None:
        check_id("signal_group", self.signal_group)
        _check_time("open_at", self.open_at)
        _check_time("close_at", self.close_at)
        if self.close_at <= self.open_at:
            raise ValidationError("close_at", "a window must close after it opens")


class IntervalStep(msgspec.Struct, frozen=True, kw_only=True):
    """From ``at`` on, these groups are green, these yellow, and every other group red."""

    at: float
    green: tuple[str, ...] = ()
    yellow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_time("at", self.at)
        for name, groups in (("green", self.green), ("yellow", self.yellow)):
            _check_length(name, groups, MAX_SIGNAL_GROUPS)
            check_ids(name, groups)
            check_unique(name, groups)
        both = set(self.green) & set(self.yellow)
        if both:
            raise ValidationError("yellow", f"groups both green and yellow: {sorted(both)}")


class SignalPlan(Message, frozen=True, kw_only=True):
    """Cloud -> edge: a priority plan (a lease that ends at ``valid_until``) or a release."""

    plan_id: str
    intersection: str
    seq: int
    """Monotonic per intersection within an ``epoch``."""
    epoch: int = 0
    """The cloud process that issued it (durable, larger after every restart): plans are
    ordered by ``(epoch, seq)``, so a restarted cloud's plans are newer than all before."""
    issued_at: float
    valid_from: float
    valid_until: float
    kind: PlanKind = PlanKind.PRIORITY
    corridor_id: str | None = None
    windows: tuple[GreenWindow, ...] = ()
    steps: tuple[IntervalStep, ...] = ()
    key_id: str | None = None
    """The cloud key that signed it (see ``models/signing.py``)."""
    signature: str | None = None
    """Ed25519 over the canonical encoding of every other field, base64url."""

    @property
    def order(self) -> PlanOrder:
        """Newer plans compare greater; an edge takes only plans newer than the last."""
        return (self.epoch, self.seq)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("plan_id", self.plan_id)
        check_id("intersection", self.intersection)
        _check_seq(self.seq)
        check_count("epoch", self.epoch, le=MAX_SEQ)
        if self.key_id is not None:
            check_id("key_id", self.key_id)
        for name in ("issued_at", "valid_from", "valid_until"):
            _check_time(name, getattr(self, name))
        if self.valid_until <= self.valid_from:
            raise ValidationError("valid_until", "a plan must expire after it becomes valid")
        _check_enum("kind", self.kind, PlanKind)
        if self.corridor_id is not None:
            check_id("corridor_id", self.corridor_id)
        _check_length("windows", self.windows, MAX_WINDOWS)
        _check_length("steps", self.steps, MAX_STEPS)
        _check_text("signature", self.signature)
        if self.kind is PlanKind.RELEASE:
            if self.windows or self.steps:
                raise ValidationError("kind", "a release plan carries no windows or steps")
            return
        if bool(self.windows) == bool(self.steps):
            raise ValidationError("windows", "a priority plan carries either windows or steps")
        for index, window in enumerate(self.windows):
            if window.open_at < self.valid_from or window.close_at > self.valid_until:
                raise ValidationError(
                    f"windows[{index}]", "window lies outside valid_from..valid_until"
                )
        times = [step.at for step in self.steps]
        if any(later <= earlier for earlier, later in itertools.pairwise(times)):
            raise ValidationError("steps", "step times must strictly increase")
        if times and (times[0] < self.valid_from or times[-1] >= self.valid_until):
            raise ValidationError("steps", "steps lie outside valid_from..valid_until")


class PlanAck(Message, frozen=True, kw_only=True):
    """Edge -> cloud: what became of a plan, with the reason when it was refused."""

    plan_id: str
    intersection: str
    seq: int
    status: AckStatus
    at: float
    reason_code: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("plan_id", self.plan_id)
        check_id("intersection", self.intersection)
        _check_seq(self.seq)
        _check_time("at", self.at)
        _check_enum("status", self.status, AckStatus)
        if self.reason_code is not None:
            check_id("reason_code", self.reason_code)
        _check_text("reason", self.reason)
        if self.status in (AckStatus.REJECTED, AckStatus.EXPIRED) and not self.reason:
            raise ValidationError("reason", f"a {self.status} ack must say why")


class VehiclePosition(Message, frozen=True, kw_only=True):
    """Vehicle -> cloud: where an emergency vehicle is on the network."""

    vehicle: str
    time: float
    link: str
    offset_m: float
    """Distance travelled along ``link`` from its upstream end."""
    speed_mps: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("vehicle", self.vehicle)
        _check_time("time", self.time)
        check_id("link", self.link)
        check_number("offset_m", self.offset_m, ge=0.0, le=100_000.0)
        check_number("speed_mps", self.speed_mps, ge=0.0, le=MAX_SPEED_MPS)


class CorridorRequest(Message, frozen=True, kw_only=True):
    """Operator or dispatch -> cloud: open a green corridor for ``vehicle``."""

    vehicle: str
    origin: str | None = None
    """An intersection or link; none: where the vehicle's AVL unit last said it was."""
    destination: str | None = None
    route: tuple[str, ...] | None = None
    """Intersections to pass, in order, when the route is fixed by the requester."""
    priority: int = 5
    """1 (lowest) to 10 (highest); a higher level wins a shared intersection."""
    requester: str
    requested_at: float
    corridor_id: str | None = None
    depart_at: float | None = None
    """When the vehicle will leave (a request made at dispatch, before turnout); default now."""
    incident: str | None = None
    """The incident type (``medical``, ``fire``, ...): an operator's priority cap depends on it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("vehicle", self.vehicle)
        if self.origin is not None:
            check_id("origin", self.origin)
        check_id("requester", self.requester)
        if self.incident is not None:
            check_id("incident", self.incident)
        _check_time("requested_at", self.requested_at)
        if self.depart_at is not None:
            _check_time("depart_at", self.depart_at)
        check_count("priority", self.priority, ge=MIN_PRIORITY, le=MAX_PRIORITY)
        if self.corridor_id is not None:
            check_id("corridor_id", self.corridor_id)
        if self.destination is None and not self.route:
            raise ValidationError("destination", "give a destination or a route")
        if self.destination is not None:
            check_id("destination", self.destination)
        if self.route is not None:
            _check_length("route", self.route, MAX_ROUTE)
            check_ids("route", self.route)


class CorridorIntersection(msgspec.Struct, frozen=True, kw_only=True):
    intersection: str
    eta: float
    eta_low: float
    eta_high: float
    window_open: float | None = None
    window_close: float | None = None
    actual_arrival: float | None = None
    confirmed: bool = False

    def __post_init__(self) -> None:
        check_id("intersection", self.intersection)
        for name in ("eta", "eta_low", "eta_high"):
            _check_time(name, getattr(self, name))
        if not self.eta_low <= self.eta <= self.eta_high:
            raise ValidationError("eta", "expected eta_low <= eta <= eta_high")
        if (self.window_open is None) != (self.window_close is None):
            raise ValidationError("window_close", "a window needs both ends")
        if self.window_open is not None and self.window_close is not None:
            _check_time("window_open", self.window_open)
            _check_time("window_close", self.window_close)
            if self.window_close <= self.window_open:
                raise ValidationError("window_close", "a window must close after it opens")
        if self.actual_arrival is not None:
            _check_time("actual_arrival", self.actual_arrival)


class CorridorImpact(msgspec.Struct, frozen=True, kw_only=True):
    """What a corridor did to its vehicle's trip and to everybody else, estimated from what
    the cloud saw (``cloud/impact.py``): there is no run without the corridor to compare with.

    ``time_saved_s`` is the trip the vehicle would have had through the normal plans (its own
    driving between stop lines, plus at each a wait for the normal plan's green and the queue
    ahead) less the trip it had; only once it completed. ``cross_delay_veh_s`` is the queueing
    the corridor's intersections' other approaches had above their level before it (vehicle-
    seconds, negative when they did better), from each one's first window until it recovered
    (back to that level over a whole cycle after the vehicle passed), at most 240 s after the
    vehicle passed. ``recovery_s`` is the
    longest of those recoveries, once all are done (``recovering`` counts those still going;
    ``unrecovered`` those not back within ``cloud.impact.RECOVERY_LIMIT_S``)."""

    trip_s: float | None = None
    normal_trip_s: float | None = None
    time_saved_s: float | None = None
    cross_delay_veh_s: float = 0.0
    intersections: int = 0
    """Intersections whose windows opened for the corridor (those measured)."""
    recovering: int = 0
    unrecovered: int = 0
    recovery_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("trip_s", "normal_trip_s", "recovery_s"):
            value = getattr(self, name)
            if value is not None:
                _check_time(name, value)
        if self.time_saved_s is not None:
            check_number("time_saved_s", self.time_saved_s)
        check_number("cross_delay_veh_s", self.cross_delay_veh_s)
        for name in ("intersections", "recovering", "unrecovered"):
            check_count(name, getattr(self, name), le=MAX_ROUTE)
        if self.recovering + self.unrecovered > self.intersections:
            raise ValidationError("recovering", "more than the intersections measured")


class CorridorStatus(Message, frozen=True, kw_only=True):
    """Cloud -> all, retained: where a corridor stands, intersection by intersection."""

    corridor_id: str
    vehicle: str
    state: CorridorState
    priority: int
    updated_at: float
    route: tuple[str, ...] = ()
    intersections: tuple[CorridorIntersection, ...] = ()
    reason: str | None = None
    impact: CorridorImpact | None = None
    advised_speed_mps: float | None = None
    """The speed advised to the vehicle's crew now: it reaches the window ahead as the queue
    there has flushed, slowed upstream rather than stopped in it; none: its own speed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_id("corridor_id", self.corridor_id)
        check_id("vehicle", self.vehicle)
        _check_enum("state", self.state, CorridorState)
        check_count("priority", self.priority, ge=MIN_PRIORITY, le=MAX_PRIORITY)
        _check_time("updated_at", self.updated_at)
        _check_length("route", self.route, MAX_ROUTE)
        check_ids("route", self.route)
        _check_length("intersections", self.intersections, MAX_ROUTE)
        _check_text("reason", self.reason)
        if self.advised_speed_mps is not None:
            check_number("advised_speed_mps", self.advised_speed_mps, gt=0.0, le=MAX_SPEED_MPS)
