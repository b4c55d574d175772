"""The cloud service's health: the report operators and load balancers read, the metrics'
gauges, and the once-a-second survey that turns stale telemetry and a degraded service into
alarms.

Apart from the session and the dispatch so that what "healthy" means is decided in one
place: the others only record trouble (``Trouble``) as it happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from citybrain.cloud.alarms import AlarmBook, AlarmKind
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore
from citybrain.cloud.events import EventHub, EventKind
from citybrain.cloud.operations import (
    FLEET_SHOWN_S,
    Fleet,
    Health,
    HealthReport,
    IntersectionStates,
)
from citybrain.cloud.session import BrokerSession, Role
from citybrain.cloud.storage import TelemetryWriter
from citybrain.models.messages import Presence

if TYPE_CHECKING:
    from citybrain.cloud.outbox import Outbox
    from citybrain.cloud.service import ServiceSettings

log = logging.getLogger(__name__)


class RecentEvents:
    """How many events happened in the last ``window_s`` (wall seconds), kept in 60 buckets:
    constant time to record at any rate (a flood of garbage included), 60 sums to count."""

    BUCKETS = 60

    def __init__(self, window_s: float) -> None:
        self._width = window_s / self.BUCKETS
        self._buckets: deque[list[int]] = deque()
        """[bucket number, events in it], oldest first."""

    def add(self) -> None:
        bucket = int(time.monotonic() / self._width)
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1] += 1
            return
        self._buckets.append([bucket, 1])
        self._expire(bucket)

    def count(self) -> int:
        self._expire(int(time.monotonic() / self._width))
        return sum(events for _, events in self._buckets)

    def _expire(self, bucket: int) -> None:
        while self._buckets and self._buckets[0][0] <= bucket - self.BUCKETS:
            self._buckets.popleft()


class Trouble:
    """What the dispatch, the tick and the audit report as it happens, for the health: within
    the trouble window, ticks and handlers failed, acks that matched no plan sent, and
    refusals (``QUIET_REFUSALS`` aside); and whether the last write to storage went through."""

    def __init__(self, window_s: float) -> None:
        self.failures = RecentEvents(window_s)
        self.unmatched = RecentEvents(window_s)
        self.rejections = RecentEvents(window_s)
        self.storage_ok = True

    def recent(self) -> dict[str, int]:
        return {
            "recent_failures": self.failures.count(),
            "recent_acks_unmatched": self.unmatched.count(),
            "recent_rejected": self.rejections.count(),
        }


class HealthMonitor:
    def __init__(
        self,
        settings: ServiceSettings,
        core: CloudCore,
        *,
        session: BrokerSession,
        counters: Counter[str],
        trouble: Trouble,
        outbox: Outbox,
        alarm_book: AlarmBook,
        events: EventHub,
        clock: ControllerClock,
        states: Callable[[], Awaitable[IntersectionStates]],
        fleet: Callable[[], Awaitable[Fleet]],
        storage: TelemetryWriter | None,
    ) -> None:
        """``states`` and ``fleet``: the city's states and its vehicles, published to the
        live stream by each survey (the vehicles while there are any)."""
        self.settings = settings
        self.core = core
        self.session = session
        self.counters = counters
        self.trouble = trouble
        self.outbox = outbox
        self.alarm_book = alarm_book
        self.events = events
        self.clock = clock
        self._states = states
        self._fleet = fleet
        self.storage = storage

    def backlog(self) -> int:
        """Telemetry and audit records waiting for the database."""
        return self.storage.pending if self.storage is not None else 0

    async def health(self) -> HealthReport:
        """``degraded`` with a dependency away, a message lost, or trouble within the last
        ``trouble_window_s`` (see ``Trouble``); ``down`` after four broker sessions failed."""
        broker = self.session.connected.is_set()
        database = self.trouble.storage_ok and (self.storage is None or self.storage.available)
        lossless = self.counters["incoming_dropped"] == 0
        recent = self.trouble.recent()
        calm = (
            recent["recent_failures"] == 0
            and recent["recent_acks_unmatched"] == 0
            and recent["recent_rejected"] <= self.settings.rejection_burst
        )
        status = Health.OK if broker and database and lossless and calm else Health.DEGRADED
        if not broker and self.session.connect_failures > 3:
            status = Health.DOWN
        counters = {**(self.counters + self.core.counters), **recent}
        return HealthReport(
            status=status,
            broker=broker,
            database=database,
            telemetry_backlog=self.backlog(),
            corridors_active=self.core.active(),
            intersections_online=self.core.online(),
            detail={k: str(v) for k, v in sorted(counters.items())},
        )

    def metric_counters(self) -> Counter[str]:
        return self.counters + self.core.counters

    def metric_gauges(self) -> dict[str, float]:
        incoming = self.session.incoming
        return {
            "ingest_lag_messages": 0 if incoming is None else incoming.qsize(),
            "database_backlog": self.backlog(),
            "corridors_active": self.core.active(),
            "intersections_online": self.core.online(),
            "alarms_active": len(self.alarm_book.alarms(active_only=True)),
            "event_subscribers": self.events.subscribers,
        }

    async def monitor(self) -> None:
        """Once a second: stale telemetry and the service's health as alarms, and the city's
        states to the live stream when someone listens. A failure is counted, never fatal."""
        while True:
            await asyncio.sleep(self.settings.monitor_every_s)
            try:
                await self.survey()
            except Exception:
                self.counters["monitor_failed"] += 1
                self.trouble.failures.add()
                log.exception("cloud: monitoring failed")

    def _fleet_changing(self, now: float) -> bool:
        """Whether some vehicle was heard from within the fleet's window, and a little longer,
        so that the last event, once they have all gone quiet, lists none."""
        if not self.core.fleet:
            return False
        newest = next(reversed(self.core.fleet.values()))
        surveys = 2 * self.settings.monitor_every_s * self.clock.rate  # two, in controller s
        return now - newest.time <= FLEET_SHOWN_S + surveys

    async def survey(self) -> None:
        """One look at the city (``monitor`` makes one a second)."""
        if self.settings.role is not Role.LEADER:
            return
        now = self.clock.now()
        stale_after = self.core.settings.stale_after_s
        for node, seen in self.core.seen.items():
            telemetry = seen.telemetry
            stale = (
                seen.presence is Presence.ONLINE
                and telemetry is not None
                and now - telemetry.controller_time > stale_after
            )
            if stale and telemetry is not None:
                age = now - telemetry.controller_time
                self.outbox.raise_(
                    AlarmKind.TELEMETRY_STALE, node, f"no telemetry from {node} for {age:.0f} s"
                )
            elif not stale and self.alarm_book.is_open(AlarmKind.TELEMETRY_STALE, node):
                self.outbox.clear(AlarmKind.TELEMETRY_STALE, node)
        report = await self.health()
        if report.status is Health.OK:
            self.outbox.clear(AlarmKind.SERVICE_DEGRADED, "service")
        else:
            away = [
                name
                for name, up in (("broker", report.broker), ("database", report.database))
                if not up
            ]
            why = f"{', '.join(away)} away" if away else "messages lost or refused, or failures"
            self.outbox.raise_(
                AlarmKind.SERVICE_DEGRADED, "service", f"service {report.status}: {why}"
            )
        if self.events.subscribers:
            self.events.publish(EventKind.INTERSECTIONS, await self._states())
            if self._fleet_changing(now):
                self.events.publish(EventKind.VEHICLES, await self._fleet())
