"""What is stored, as values every store and the writer share: the audit records (plans sent,
acks, reservations, operators' actions, with corridor states and alarms), what queries answer
(``QueueMinute``, ``PlanRecord``), and the checks that refuse a time a timestamp column cannot
hold, so a bad value is refused when it is made, before any store or writer meets it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from citybrain.cloud.alarms import Alarm
from citybrain.models.checks import check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorStatus, PlanAck, SignalPlan, Telemetry

MAX_TIMESTAMP_S: Final = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the latest time stored (a day partition needs a four-digit year)."""
MINUTE_S: Final = 60

Received = tuple[Telemetry, float]
"""A telemetry message and when the cloud received it (wall-clock epoch seconds)."""


def _check_time(field: str, value: float) -> None:
    check_number(field, value, ge=0.0, le=MAX_TIMESTAMP_S)


def check_storable(message: Telemetry, received_at: float) -> None:
    """Refuse what the Struct allows but a timestamp column cannot hold."""
    _check_time("controller_time", message.controller_time)
    _check_time("received_at", received_at)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A corridor holds ``signal_group`` at ``intersection`` green from ``open_at`` to
    ``close_at`` (controller epoch seconds)."""

    intersection: str
    signal_group: str
    open_at: float
    close_at: float

    def __post_init__(self) -> None:
        check_id("intersection", self.intersection)
        check_id("signal_group", self.signal_group)
        _check_time("open_at", self.open_at)
        _check_time("close_at", self.close_at)
        if self.close_at <= self.open_at:
            raise ValidationError("close_at", "a reservation must close after it opens")


# The audit records check the times that go into timestamp columns, which the wire Structs
# bound only from below: a record that cannot be stored is refused when it is made (a corridor
# status when it is queued or recorded), not when a writer meets it.


@dataclass(frozen=True, slots=True)
class PlanSent:
    plan: SignalPlan
    sent_at: float

    def __post_init__(self) -> None:
        _check_time("sent_at", self.sent_at)
        _check_time("valid_from", self.plan.valid_from)
        _check_time("valid_until", self.plan.valid_until)


@dataclass(frozen=True, slots=True)
class AckReceived:
    ack: PlanAck
    received_at: float

    def __post_init__(self) -> None:
        _check_time("received_at", self.received_at)
        _check_time("at", self.ack.at)


@dataclass(frozen=True, slots=True)
class ReservationsSet:
    """The corridor's reservations now: they replace whatever it held before."""

    corridor_id: str
    rows: tuple[Reservation, ...]

    def __post_init__(self) -> None:
        check_id("corridor_id", self.corridor_id)


class ActionKind(enum.StrEnum):
    REQUEST = "request"
    CANCEL = "cancel"
    PREEMPT = "preempt"
    """Cancelled to make room for the actor's higher-priority request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorAction:
    """Who did what to a corridor, and when (wall-clock epoch seconds): the corridor states
    say what happened, this says on whose word."""

    at: float
    actor: str
    """The authenticated user of the API."""
    kind: ActionKind
    corridor_id: str
    vehicle: str
    priority: int
    incident: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_time("at", self.at)
        check_id("actor", self.actor)
        check_id("corridor_id", self.corridor_id)
        check_id("vehicle", self.vehicle)
        if self.incident is not None:
            check_id("incident", self.incident)


AuditRecord = PlanSent | AckReceived | CorridorStatus | ReservationsSet | OperatorAction | Alarm


def check_records(records: Iterable[AuditRecord]) -> None:
    """The one check a record's constructor cannot make: a corridor status's time."""
    for item in records:
        if isinstance(item, CorridorStatus):
            _check_time("updated_at", item.updated_at)


@dataclass(frozen=True, slots=True)
class QueueMinute:
    """Queue statistics of one approach over the minute starting at ``minute`` (epoch s)."""

    minute: float
    approach: str
    avg_queue: float
    max_queue: float
    samples: int


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan as sent, with every ack received for it, oldest first."""

    plan: SignalPlan
    sent_at: float
    acks: tuple[AckReceived, ...]


def minute_bounds(since: float, until: float) -> tuple[float, float]:
    """The time range whose samples fall in minutes starting in [since, until): both ends
    rounded up to a whole minute, so every flavor answers for the same buckets."""
    _check_time("since", since)
    _check_time("until", until)
    return math.ceil(since / MINUTE_S) * MINUTE_S, math.ceil(until / MINUTE_S) * MINUTE_S
