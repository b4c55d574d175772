"""A corridor's impact, measured while it happens from what the cloud sees (no I/O): what it
saved its vehicle, what it cost the cross streets, and when they recovered.

There is no second run without the corridor to compare with, so each figure is an estimate
with a stated model (``CorridorImpact``):

* time saved: the trip the vehicle would have had through the normal plans, replayed stop
  line by stop line from its own driving between them (``normal_trip_s``), less the trip it had
  (never negative: a wait the corridor itself caused counts as driving in the replay too);
* cost to cross traffic: at each intersection whose window opened for it, the queues on the
  other approaches above where they were heading before (their level, an average over
  ``BASELINE_MEMORY_S``, and its trend: on a network filling up they grow by themselves),
  summed over time from the first window until they are back to it, for at most
  ``COST_AFTER_S`` after the vehicle passed;
* recovery: after the vehicle passed, the first moment those queues, averaged over a whole
  cycle, are back within ``RECOVERED_SLACK_VEH`` (or ``RECOVERED_SHARE``) of that level.

``citybrain demo`` and ``citybrain evaluate`` set these estimates against what their runs
measure with the same seed without priority (``impact`` in their JSON).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from citybrain.models.messages import CorridorImpact
from citybrain.models.traffic import DEFAULT_LOST_TIME_S
from citybrain.signal_plans.state import normal_periods
from citybrain.signal_plans.timing import TimingPlan

BASELINE_MEMORY_S = 180.0
"""Time constant of each approach's running queue level, the 'before' a corridor is measured
against: two cycles or so, so that it is a level, not the phase of the cycle it was read in."""
TREND_MEMORY_S = 2 * BASELINE_MEMORY_S
"""A slower level beside it: for a queue growing steadily, the two lag it by their time
constants, so their difference over ``TREND_MEMORY_S - BASELINE_MEMORY_S`` is its growth."""
LONGEST_WAIT_CYCLES = 10
"""The longest wait ``normal_wait_s`` replays, in cycles (a queue no green would clear)."""
COST_AFTER_S = 240.0
"""How long after its vehicle passed an intersection its cross streets' queues still count
as the corridor's cost (about two cycles); recovery is watched for longer."""
RECOVERY_LIMIT_S = 900.0
"""How long after its vehicle passed an intersection is watched for its recovery."""
OBSERVED_EVERY_S = 1.0
"""Observations closer together than this are skipped (the service ticks five times a second;
telemetry comes once a second): the levels of every link are updated at most once a second."""
LONGEST_STEP_S = 10.0
"""A longer gap between observations (a stalled service, a clock that stepped) counts as this
long: the queues seen then were not there all that time."""
RECOVERED_SLACK_VEH = 2.0
RECOVERED_SHARE = 0.2
"""Back to the level, give or take this many vehicles or this share of it (the larger): the
queues' own swing from cycle to cycle."""


@dataclass(frozen=True, slots=True)
class Leg:
    """A stop line the vehicle passed, with what the normal plan there would have made of it."""

    passed_s: float
    plan: TimingPlan
    group: str
    """The signal group of the vehicle's own movement."""
    arrivals_veh_per_s: float
    """The approach's arrival flow: the queue ahead of the vehicle grows with it on red."""
    queue_level_veh: float
    """The approach's running queue level, taken as the least queue ahead on every approach:
    it is what stands on an oversaturated one, where no green clears the queue (on one that
    empties each cycle it overstates the queue just after a green; measured, the time saved
    still errs low: ``benchmarks/README.md``)."""
    discharge_s_per_veh: float
    """Saturation headway over the approach's lanes."""


def normal_wait_s(leg: Leg, at_s: float) -> float:
    """How long a vehicle reaching the stop line at ``at_s`` waits under the normal plan: the
    queue ahead of it (what arrived since the last green ended, or the approach's standing
    level if more) leaves first, after the start-up lost time; what a green cannot serve of it
    waits with the vehicle for the next one."""
    plan = leg.plan
    red_from = at_s - plan.cycle_s
    ahead_veh: float | None = None
    horizon = at_s + LONGEST_WAIT_CYCLES * plan.cycle_s
    for period in normal_periods(plan, at_s - plan.cycle_s, horizon):
        if leg.group not in plan.phases[period.phase_index].groups:
            continue
        if period.green_end_s <= at_s:
            red_from = period.green_end_s
            continue
        if ahead_veh is None:
            formed = leg.arrivals_veh_per_s * (min(at_s, period.green_start_s) - red_from)
            ahead_veh = max(formed, leg.queue_level_veh)
        start = period.green_start_s + DEFAULT_LOST_TIME_S
        leave = max(at_s, start + ahead_veh * leg.discharge_s_per_veh)
        if leave < period.green_end_s:
            return leave - at_s
        ahead_veh -= max(0.0, period.green_end_s - start) / leg.discharge_s_per_veh
    return horizon - at_s


def normal_trip_s(start_s: float, end_s: float, legs: Iterable[Leg]) -> float:
    """The trip from ``start_s`` to ``end_s`` replayed through the normal plans: between stop
    lines the vehicle takes the time it took, and waits at each as ``normal_wait_s`` says. A
    wait the corridor's vehicle had is counted as driving (nothing tells it apart), so where
    the corridor made it wait the replay is that much too long."""
    at, last = start_s, start_s
    for leg in legs:
        at += leg.passed_s - last
        last = leg.passed_s
        at += normal_wait_s(leg, at)
    return at + (end_s - last) - start_s


@dataclass
class _Crossing:
    """One intersection a corridor's window opened at: its other approaches' queues since."""

    cross: NDArray[np.int64]
    opened_s: float
    baseline_veh: float
    """The other approaches' queue level when the first window opened; it goes on growing by
    ``trend_veh_per_s`` (``expected_veh``)."""
    trend_veh_per_s: float
    cycle_s: float
    arrivals_veh_per_s: float
    queue_level_veh: float
    """The vehicle's approach's arrival flow and queue level when its window first opened,
    before the corridor acted there (``Leg``)."""
    released_s: float | None = None
    recovered_s: float | None = None
    gave_up: bool = False
    cost_veh_s: float = 0.0
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, the other approaches' queue) of each observation in the last cycle since the
    vehicle passed (observations come at the service's tick, several a second or one)."""

    @property
    def done(self) -> bool:
        return self.recovered_s is not None or self.gave_up

    def expected_veh(self, at_s: float) -> float:
        """Where the other approaches' queues were heading, without the corridor."""
        return max(0.0, self.baseline_veh + self.trend_veh_per_s * (at_s - self.opened_s))


@dataclass
class _Measured:
    crossings: dict[str, _Crossing] = field(default_factory=dict)
    trip_s: float | None = None
    normal_trip_s: float | None = None
    ended: bool = False


class ImpactMeter:
    """Told each observation of the queues and which windows are open; keeps every corridor's
    figures until the corridor is forgotten."""

    def __init__(
        self,
        *,
        links_into: Mapping[str, Sequence[int]],
        cycles_s: Mapping[str, float],
        link_count: int,
    ) -> None:
        self.links_into = links_into
        self.cycles_s = cycles_s
        self.level_veh = np.zeros(link_count)
        """Each link's running queue level (``BASELINE_MEMORY_S``)."""
        self._slow_level_veh = np.zeros(link_count)
        """The same over ``TREND_MEMORY_S``."""
        self._running = (np.zeros(link_count), np.zeros(link_count))
        """The two levels' running averages from zero, before ``_levels`` corrects them."""
        self._watching_s = 0.0
        """Time observed since the meter started."""
        self._observed_s: float | None = None
        self.measured: dict[str, _Measured] = {}
        self._watched: dict[str, _Measured] = {}
        """Those not settled yet: the only ones an observation updates."""

    def start(self, corridor_id: str) -> None:
        self.measured[corridor_id] = self._watched[corridor_id] = _Measured()

    def forget(self, corridor_id: str) -> None:
        self.measured.pop(corridor_id, None)
        self._watched.pop(corridor_id, None)

    def due(self, now_s: float) -> bool:
        """Whether an observation at ``now_s`` would be taken (``OBSERVED_EVERY_S``)."""
        return self._observed_s is None or now_s - self._observed_s >= OBSERVED_EVERY_S

    def observe(self, queue_veh: NDArray[np.float64], now_s: float) -> list[str]:
        """Take the queues seen at ``now_s``; the corridors whose every intersection recovered
        (or was given up on) since they ended, whose figures are now final."""
        if not self.due(now_s):
            return []
        gap = 0.0 if self._observed_s is None else now_s - self._observed_s
        dt = min(gap, LONGEST_STEP_S)
        settled = []
        for corridor_id, measured in self._watched.items():
            for crossing in measured.crossings.values():
                if not crossing.done:
                    self._measure(crossing, float(queue_veh[crossing.cross].sum()), dt, now_s)
            if measured.ended and all(c.done for c in measured.crossings.values()):
                settled.append(corridor_id)
        for corridor_id in settled:
            del self._watched[corridor_id]
        self._levels(queue_veh, dt if self._observed_s is not None else OBSERVED_EVERY_S)
        self._observed_s = now_s
        return settled

    def _levels(self, queue_veh: NDArray[np.float64], dt: float) -> None:
        """Move the two running levels by one observation standing for ``dt``. Each is an
        average from zero divided by the weight it has gathered, so that until its memory is
        full it is the average of what was seen (a meter just started, by a cloud's restart or
        a run's, would otherwise hold its first sample, one phase of a cycle, as the level
        for minutes, and the two levels' gap from it as a trend: demo arterial, 10 seeds, the
        cross streets' cost +46 % against the runs, recovered on 1 seed)."""
        self._watching_s += dt
        levels = (self.level_veh, self._slow_level_veh)
        memories = (BASELINE_MEMORY_S, TREND_MEMORY_S)
        for running, level, memory in zip(self._running, levels, memories, strict=True):
            running += -math.expm1(-dt / memory) * (queue_veh - running)
            level[:] = running / -math.expm1(-self._watching_s / memory)

    def _measure(self, crossing: _Crossing, queue: float, dt: float, now_s: float) -> None:
        level = crossing.expected_veh(now_s)
        if crossing.released_s is None or now_s - crossing.released_s <= COST_AFTER_S:
            crossing.cost_veh_s += (queue - level) * dt
        if crossing.released_s is None:
            return
        samples = crossing.samples
        samples.append((now_s, queue))
        while samples[0][0] <= now_s - crossing.cycle_s:
            samples.popleft()
        tolerance = max(RECOVERED_SLACK_VEH, RECOVERED_SHARE * level)
        after = now_s - crossing.released_s
        mean = sum(q for _, q in samples) / len(samples)
        if after >= crossing.cycle_s and mean <= level + tolerance:
            crossing.recovered_s = now_s
        elif after >= RECOVERY_LIMIT_S:
            crossing.gave_up = True

    def opened(
        self,
        corridor_id: str,
        node: str,
        approach: int,
        arrivals_veh_per_s: float,
        now_s: float,
    ) -> None:
        """A window for the corridor is open at ``node``, its vehicle coming from ``approach``:
        measured from now on (nothing new if it is already)."""
        measured = self.measured.get(corridor_id)
        if measured is None or node in measured.crossings:
            return
        cross = np.array([link for link in self.links_into[node] if link != approach], np.int64)
        level = float(self.level_veh[cross].sum())
        lag = TREND_MEMORY_S - BASELINE_MEMORY_S
        trend = (level - float(self._slow_level_veh[cross].sum())) / lag
        measured.crossings[node] = _Crossing(
            cross,
            now_s,
            level + trend * BASELINE_MEMORY_S,  # the level lags a growing queue by its memory
            trend,
            self.cycles_s[node],
            arrivals_veh_per_s,
            float(self.level_veh[approach]),
        )

    def measures(self, corridor_id: str, node: str) -> bool:
        """Whether ``node`` is measured for the corridor (a window opened there for it)."""
        return self._crossing(corridor_id, node) is not None

    def approach_at(self, corridor_id: str, node: str) -> tuple[float, float] | None:
        """(arrival flow, queue level) of the vehicle's approach to ``node`` when the window
        there first opened; ``None`` where none did."""
        crossing = self._crossing(corridor_id, node)
        if crossing is None:
            return None
        return crossing.arrivals_veh_per_s, crossing.queue_level_veh

    def level_of(self, link: int) -> float:
        return float(self.level_veh[link])

    def passed(self, corridor_id: str, node: str, at_s: float) -> None:
        crossing = self._crossing(corridor_id, node)
        if crossing is not None and crossing.released_s is None:
            crossing.released_s = at_s

    def _crossing(self, corridor_id: str, node: str) -> _Crossing | None:
        measured = self.measured.get(corridor_id)
        return measured.crossings.get(node) if measured is not None else None

    def held_only(self, corridor_id: str, nodes: set[str], now_s: float) -> None:
        """The corridor holds only ``nodes`` now: any other it was measured at recovers from
        ``now_s`` (a re-route dropped it without the vehicle passing)."""
        measured = self.measured.get(corridor_id)
        for node, crossing in measured.crossings.items() if measured is not None else ():
            if node not in nodes and crossing.released_s is None:
                crossing.released_s = now_s

    def ended(
        self, corridor_id: str, now_s: float, trip: tuple[float, float] | None = None
    ) -> None:
        """The corridor ended at ``now_s``: every intersection it still held recovers from
        now; ``trip`` is (trip, normal_trip) for a vehicle that completed it."""
        measured = self.measured.get(corridor_id)
        if measured is None:
            return
        for crossing in measured.crossings.values():
            if crossing.released_s is None:
                crossing.released_s = now_s
        measured.ended = True
        if trip is not None:
            measured.trip_s, measured.normal_trip_s = trip

    def report(self, corridor_id: str) -> CorridorImpact | None:
        measured = self.measured.get(corridor_id)
        if measured is None:
            return None
        crossings = list(measured.crossings.values())
        recovering = sum(1 for c in crossings if c.released_s is not None and not c.done)
        unrecovered = sum(1 for c in crossings if c.gave_up)
        recoveries = [
            c.recovered_s - c.released_s
            for c in crossings
            if c.recovered_s is not None and c.released_s is not None
        ]
        all_back = measured.ended and recovering == 0 and unrecovered == 0 and recoveries
        saved = (
            measured.normal_trip_s - measured.trip_s
            if measured.trip_s is not None and measured.normal_trip_s is not None
            else None
        )
        return CorridorImpact(
            trip_s=measured.trip_s,
            normal_trip_s=measured.normal_trip_s,
            time_saved_s=saved,
            cross_delay_veh_s=sum(c.cost_veh_s for c in crossings),
            intersections=len(crossings),
            recovering=recovering,
            unrecovered=unrecovered,
            recovery_s=max(recoveries) if all_back else None,
        )
