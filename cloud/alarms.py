"""Alarms: what an operator must see and acknowledge (an edge offline, a plan refused or not
confirmed, a corridor failed or timed out, telemetry stale, the service degraded).

``AlarmBook`` is pure: the service tells it what it observed and when (wall clock), it answers
with the alarms that changed, which the service stores and streams. One alarm is open per
(kind, subject) at a time: a flapping edge raises one alarm, not one a second. An alarm stays
listed once cleared until it is acknowledged; acknowledging keeps the first who and when.
"""

from __future__ import annotations

import datetime
import enum
from collections import OrderedDict
from collections.abc import Iterable

import msgspec

from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import MAX_TEXT

MAX_ALARMS = 10_000
"""Kept in memory (the database keeps them all); the oldest settled ones go first."""


class AlarmKind(enum.StrEnum):
    EDGE_OFFLINE = "edge_offline"
    PLAN_REFUSED = "plan_refused"
    PLAN_UNCONFIRMED = "plan_unconfirmed"
    CORRIDOR_FAILED = "corridor_failed"
    """Failed, timed out or rejected: the corridor ended without its vehicle through."""
    TELEMETRY_STALE = "telemetry_stale"
    SERVICE_DEGRADED = "service_degraded"


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY = {
    AlarmKind.EDGE_OFFLINE: Severity.CRITICAL,
    AlarmKind.PLAN_REFUSED: Severity.WARNING,
    AlarmKind.PLAN_UNCONFIRMED: Severity.WARNING,
    AlarmKind.CORRIDOR_FAILED: Severity.CRITICAL,
    AlarmKind.TELEMETRY_STALE: Severity.WARNING,
    AlarmKind.SERVICE_DEGRADED: Severity.WARNING,
}


class Alarm(msgspec.Struct, frozen=True, kw_only=True):
    """One alarm; times are wall-clock epoch seconds, ``*_time`` the same as RFC 3339."""

    alarm_id: str
    kind: AlarmKind
    severity: Severity
    subject: str
    """The intersection, the corridor, or ``service``."""
    message: str
    raised_at: float
    raised_time: str
    cleared_at: float | None = None
    """When the condition went away by itself (still to be acknowledged)."""
    acked_by: str | None = None
    acked_at: float | None = None
    acked_time: str | None = None

    def __post_init__(self) -> None:
        check_id("alarm_id", self.alarm_id)
        check_id("subject", self.subject)
        if len(self.message) > MAX_TEXT:
            raise ValidationError("message", f"longer than {MAX_TEXT} characters")
        check_number("raised_at", self.raised_at, ge=0.0)
        if (self.acked_by is None) != (self.acked_at is None):
            raise ValidationError("acked_by", "who and when go together")

    @property
    def active(self) -> bool:
        """Needs an operator: not yet acknowledged."""
        return self.acked_at is None


def rfc3339(wall_s: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (``2026-12-05T00:10:02.250Z``)."""
    moment = datetime.datetime.fromtimestamp(wall_s, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlarmBook:
    """Open alarms by (kind, subject), every alarm by id, newest last."""

    def __init__(self, *, prefix: str, max_alarms: int = MAX_ALARMS) -> None:
        check_id("prefix", prefix)
        check_count("max_alarms", max_alarms, ge=1)
        self._prefix = prefix
        """Makes ids unique across restarts (the service's start time)."""
        self._next = 1
        self._max = max_alarms
        self._by_id: OrderedDict[str, Alarm] = OrderedDict()
        self._open: dict[tuple[AlarmKind, str], str] = {}

    def raise_(self, kind: AlarmKind, subject: str, message: str, *, at: float) -> Alarm | None:
        """A new alarm, or None while one of this kind for this subject is open."""
        if (kind, subject) in self._open:
            return None
        alarm = Alarm(
            alarm_id=f"{self._prefix}-{self._next}",
            kind=kind,
            severity=SEVERITY[kind],
            subject=subject,
            message=message[:MAX_TEXT],
            raised_at=at,
            raised_time=rfc3339(at),
        )
        self._next += 1
        self._open[(kind, subject)] = alarm.alarm_id
        self._by_id[alarm.alarm_id] = alarm
        self._trim()
        return alarm

    def clear(self, kind: AlarmKind, subject: str, *, at: float) -> Alarm | None:
        """The condition is gone: the open alarm, marked cleared (None when there is none)."""
        alarm_id = self._open.pop((kind, subject), None)
        if alarm_id is None or alarm_id not in self._by_id:
            return None
        alarm = msgspec.structs.replace(self._by_id[alarm_id], cleared_at=at)
        self._by_id[alarm_id] = alarm
        return alarm

    def restore(self, alarms: Iterable[Alarm]) -> int:
        """Take back the alarms a previous process raised that nobody acknowledged (from the
        store): an operator must still see and acknowledge them. They hold no condition open:
        one that persists is raised again by this process, which watches it now. Returns how
        many were taken."""
        taken = 0
        for alarm in sorted(alarms, key=lambda a: (a.raised_at, a.alarm_id)):
            if alarm.active and alarm.alarm_id not in self._by_id:
                self._by_id[alarm.alarm_id] = alarm
                taken += 1
        self._trim()
        return taken

    def is_open(self, kind: AlarmKind, subject: str) -> bool:
        return (kind, subject) in self._open

    def open_subjects(self, kind: AlarmKind) -> list[str]:
        return [subject for k, subject in self._open if k is kind]

    def acknowledge(self, alarm_id: str, *, by: str, at: float) -> Alarm:
        """``KeyError`` for an unknown id; a second acknowledgement changes nothing."""
        alarm = self._by_id[alarm_id]
        if alarm.acked_at is not None:
            return alarm
        alarm = msgspec.structs.replace(alarm, acked_by=by, acked_at=at, acked_time=rfc3339(at))
        self._by_id[alarm_id] = alarm
        return alarm

    def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        """Newest first."""
        found = reversed(self._by_id.values())
        return [a for a in found if a.active or not active_only]

    def _trim(self) -> None:
        """Past the bound, the oldest settled (acknowledged) alarms go; open ones stay."""
        if len(self._by_id) <= self._max:
            return
        for alarm_id, alarm in list(self._by_id.items()):
            if len(self._by_id) <= self._max:
                break
            if not alarm.active:
                del self._by_id[alarm_id]
