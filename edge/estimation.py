"""Queue estimation on one intersection's approaches from its two loops per approach.

Input-output counting: the advance loop counts vehicles in, the stop-bar loop counts them out.
Each counted arrival drives on from the advance loop (a cohort at a cautious share of the speed
limit) until it reaches the back of the queue, where it joins the standing queue; departures
leave from the head of the queue, or, past an empty queue, from the cohorts still driving.
Counts drift (a missed count on either loop stays forever), so whenever the stop bar stands
clear the queue is reset to empty: a standing queue always covers the stop line, red or green.
Once every lane is queued up to the advance loop, newcomers queue beyond it uncounted: that
part is inferred from the arrival flow measured before (less what the loop still counts), and
paid off as the loop counts again while the queue discharges. The estimate stays physical
(0 to the link's storage; no more than the zone between the loops while the advance loop is
clear). Stuck loops are detected and replaced by a fallback.

Pure logic, no I/O: readings in, estimates out.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from citybrain.models.checks import check_count, check_number, check_unique
from citybrain.models.errors import ValidationError
from citybrain.models.fieldbus import (
    ApproachConfig,
    ApproachCounts,
    DetectorReading,
    SignalReading,
)
from citybrain.models.network import JAM_SPACING_M
from citybrain.models.signal import Indication
from citybrain.models.traffic import DEFAULT_LOST_TIME_S

STUCK_ON_OCCUPANCY = 0.99
"""A shorted loop reads fully occupied (so does a standing queue, but only until it moves)."""
MAX_COUNT = 1_000_000
"""The bound ``ApproachCounts`` puts on one interval's count."""
FALLBACK_CONFIDENCE = 0.3
"""Confidence kept by an estimate that replaces a stuck loop by an assumption."""


class Flag(enum.StrEnum):
    SPILLBACK = "spillback"
    """The queue covers the advance loop; once it fills every lane up to it, the part beyond
    is inferred from flow."""
    DETECTOR_FAULT = "detector_fault"
    """A loop is stuck (``QueueEstimate.faults`` says which): the estimate is a fallback."""
    STALE = "stale"
    """No fresh counts: the approach was missing from the latest reading, or never read."""


class Fault(enum.StrEnum):
    STOP_BAR_STUCK_ON = "stop_bar_stuck_on"
    STOP_BAR_STUCK_OFF = "stop_bar_stuck_off"
    ADVANCE_STUCK_ON = "advance_stuck_on"
    ADVANCE_STUCK_OFF = "advance_stuck_off"


STOP_BAR_FAULTS = frozenset({Fault.STOP_BAR_STUCK_ON, Fault.STOP_BAR_STUCK_OFF})
ADVANCE_FAULTS = frozenset({Fault.ADVANCE_STUCK_ON, Fault.ADVANCE_STUCK_OFF})


@dataclass(frozen=True, slots=True)
class EstimatorSettings:
    """Thresholds of the estimator; the defaults suit loops read every 0.5-10 s."""

    clear_occupancy: float = 0.3
    """Stop-bar occupancy at or below which the stop line stood clear most of the interval."""
    blocked_occupancy: float = 0.5
    """Advance-loop occupancy at or above which the queue reaches back over the loop."""
    full_zone_share: float = 0.9
    """Share of the zone between the loops (lanes x setback / jam spacing) that must be queued
    before newcomers are taken to queue beyond a covered advance loop: short of it, the loop
    is covered by some lanes only and the others still count what arrives."""
    silent_occupancy: float = 0.1
    """Below this occupancy and with no count, a loop registered nothing in the interval."""
    approach_speed_share: float = 0.85
    """Share of the speed limit at which counted vehicles drive from the advance loop to the
    queue. Cautious on purpose (drivers slow for a red): a vehicle that joins the estimate a
    little late costs less than one counted as standing before it is there, which a clear stop
    bar would then wipe out for good."""
    flow_window_s: float = 300.0
    """Time constant of the exponentially weighted arrival flow (about three cycles)."""
    stuck_on_s: float = 300.0
    """A loop occupied with no count for this long is stuck on (longer than any red)."""
    stuck_off_veh: float = 10.0
    """A loop is stuck off once, while it registered nothing at all, this many vehicles went
    by: counted at the advance loop (for the stop bar: none can stand ahead of a silent stop
    bar, and this covers those still driving to it), or departing unaccounted for (for the
    advance loop: no vehicle it counted was standing or driving to the stop bar)."""
    lost_time_s: float = DEFAULT_LOST_TIME_S
    """Start-up lost time of a green, for the discharge assumed when the stop bar is stuck."""
    jam_spacing_m: float = JAM_SPACING_M

    def __post_init__(self) -> None:
        for name in ("clear_occupancy", "blocked_occupancy", "silent_occupancy", "full_zone_share"):
            check_number(name, getattr(self, name), ge=0.0, le=1.0)
        check_number("approach_speed_share", self.approach_speed_share, gt=0.0, le=2.0)
        check_number("flow_window_s", self.flow_window_s, gt=0.0, le=86_400.0)
        check_number("stuck_on_s", self.stuck_on_s, gt=0.0, le=86_400.0)
        check_number("stuck_off_veh", self.stuck_off_veh, gt=0.0, le=10_000.0)
        check_number("lost_time_s", self.lost_time_s, ge=0.0, le=10.0)
        check_number("jam_spacing_m", self.jam_spacing_m, gt=0.0, le=50.0)


@dataclass(frozen=True, slots=True)
class QueueEstimate:
    """One approach at controller time ``time``: vehicles standing in queue, the stop bar's
    occupancy over the last interval, the smoothed arrival flow at the advance loop, and how
    far to trust the queue (1: counted and settled; lower when inferred; 0: unknown)."""

    approach: str
    time: float
    queue_veh: float
    occupancy: float
    flow_vph: float
    confidence: float
    flags: frozenset[Flag] = frozenset()
    faults: frozenset[Fault] = frozenset()


@dataclass(slots=True)
class _Cohort:
    """Vehicles counted at the advance loop in one interval, still driving to the queue."""

    travelled_m: float
    vehicles: float


@dataclass(slots=True)
class _Rate:
    """Vehicles per second, exponentially weighted over time (each interval by its length, so
    it is unbiased from the first reading on, whatever the read period)."""

    window_s: float
    vehicles: float = 0.0
    seconds: float = 0.0

    def add(self, vehicles: float, interval_s: float) -> None:
        decay = math.exp(-interval_s / self.window_s)
        self.vehicles = self.vehicles * decay + vehicles
        self.seconds = self.seconds * decay + interval_s

    @property
    def per_s(self) -> float:
        return self.vehicles / self.seconds if self.seconds > 0.0 else 0.0


@dataclass(slots=True)
class _LoopWatch:
    """Evidence that one loop is stuck: how long it read occupied without counting, and how
    many vehicles went by (by the other loop's account) while it registered nothing at all."""

    occupied_uncounted_s: float = 0.0
    missed_veh: float = 0.0
    silent: bool = False

    def observe(self, count: int, occupancy: float, interval_s: float, silent_below: float) -> None:
        if count == 0 and occupancy >= STUCK_ON_OCCUPANCY:
            self.occupied_uncounted_s += interval_s
        else:
            self.occupied_uncounted_s = 0.0
        self.silent = count == 0 and occupancy < silent_below
        if not self.silent:
            self.missed_veh = 0.0

    def went_by(self, vehicles: float) -> None:
        if self.silent:
            self.missed_veh += vehicles

    def fault(self, stuck_on: Fault, stuck_off: Fault, settings: EstimatorSettings) -> Fault | None:
        if self.occupied_uncounted_s >= settings.stuck_on_s:
            return stuck_on
        if self.missed_veh >= settings.stuck_off_veh:
            return stuck_off
        return None


class _ApproachEstimator:
    """The counting state of one approach; ``QueueEstimator`` validates what it is given."""

    def __init__(self, config: ApproachConfig, settings: EstimatorSettings) -> None:
        self.config = config
        self.settings = settings
        self.storage_veh = config.lanes * config.length_m / settings.jam_spacing_m
        self.zone_veh = config.lanes * config.advance_setback_m / settings.jam_spacing_m
        """Vehicles standing between the loops when every lane is queued up to the advance one."""
        self.lane_zone_veh = config.advance_setback_m / settings.jam_spacing_m
        self.speed_mps = config.speed_limit_mps * settings.approach_speed_share
        self.standing = 0.0
        """Vehicles that reached the queue (between the loops, or paid off from beyond)."""
        self.beyond = 0.0
        """Vehicles inferred to queue beyond the advance loop, not yet counted by it. While
        the queue covers the loop this is a balance that may dip below zero (the loop counted
        more than the feed predicts, which later uncounted arrivals make up first); only its
        positive part is queued."""
        self.moving: deque[_Cohort] = deque()
        self.arrivals = _Rate(settings.flow_window_s)
        """Counted at the advance loop while the queue does not cover it."""
        self.departures = _Rate(settings.flow_window_s)
        """Counted at the stop bar: in the long run, what arrives (for a broken advance loop)."""
        self.stop_bar = _LoopWatch()
        self.advance = _LoopWatch()
        self.settled = False
        """A clear stop bar has been seen since the start (or a fault): the count is anchored."""
        self.last = QueueEstimate(
            approach=config.approach,
            time=0.0,
            queue_veh=0.0,
            occupancy=0.0,
            flow_vph=0.0,
            confidence=0.0,
            flags=frozenset({Flag.STALE}),
        )

    def update(
        self, time: float, counts: ApproachCounts, signals: SignalReading | None
    ) -> QueueEstimate:
        settings = self.settings
        interval = counts.interval_s
        silent = settings.silent_occupancy
        self.stop_bar.observe(counts.stop_bar_count, counts.stop_bar_occupancy, interval, silent)
        self.stop_bar.went_by(counts.advance_count)
        self.advance.observe(counts.advance_count, counts.advance_occupancy, interval, silent)
        faults = self._faults()
        stop_bar_ok = not faults & STOP_BAR_FAULTS
        advance_ok = not faults & ADVANCE_FAULTS
        if stop_bar_ok:
            departures = float(counts.stop_bar_count)
        elif signals is not None:
            departures = self._discharge_capacity(signals, interval)
        else:  # no departures known and no signals to assume them from: hold the estimate
            self.settled = False
            return self._estimate(time, counts, faults, spillback=False, held=True)
        if advance_ok:
            arrivals = float(counts.advance_count)
        else:  # what arrived before, or in the long run what leaves
            arrivals = max(self.arrivals.per_s, self.departures.per_s) * interval
        clear = stop_bar_ok and counts.stop_bar_occupancy <= settings.clear_occupancy
        blocked = (
            advance_ok and not clear and counts.advance_occupancy >= settings.blocked_occupancy
        )
        paid_off = self._spill(arrivals, departures, blocked, counts.advance_occupancy, interval)
        if advance_ok and not blocked:
            self.arrivals.add(arrivals, interval)
        if stop_bar_ok:
            self.departures.add(departures, interval)
        recent = self._drive(arrivals - paid_off, interval, counts.stop_bar_occupancy * interval)
        self.advance.went_by(self._depart(departures, from_moving=stop_bar_ok))
        if clear:
            # nobody stands at a clear stop line: at most those who joined since it last was
            self.standing = min(self.standing, recent)
            self.beyond = 0.0
            self.settled = True
        if faults:
            self.settled = False
        self._bound(blocked=blocked, advance_ok=advance_ok)
        return self._estimate(time, counts, faults, spillback=blocked, held=False)

    def _spill(
        self, arrivals: float, departures: float, blocked: bool, occupancy: float, interval: float
    ) -> float:
        """Account for the queue beyond the advance loop; returns the counted arrivals that
        were vehicles from beyond it (they join the queue at once, not as newcomers).

        A covered loop alone says little: one lane's queue covers it while the others flow
        and are counted. Only once the zone between the loops is (nearly) full, every lane
        queued up to the loop, do arrivals queue beyond it, at the rate measured before the
        loop was covered, less what the loop still counts: the balance may dip below zero."""
        queued = self.standing + max(0.0, self.beyond)
        if blocked and queued >= self.settings.full_zone_share * self.zone_veh:
            expected = self.arrivals.per_s * occupancy * interval
        else:
            expected = 0.0
        if departures > 0.0:
            # the queue moves: what the loop counts now is first the vehicles that queued
            # beyond it (already in the estimate), then newcomers
            paid_off = min(arrivals, max(0.0, self.beyond + expected))
            self.beyond += expected - paid_off
            self.standing += paid_off
            return paid_off
        if blocked:
            self.beyond += expected - arrivals
        return 0.0

    def _bound(self, *, blocked: bool, advance_ok: bool) -> None:
        """Keep the estimate physical: never more than the link stores (never negative: the
        queue only shrinks by departures, which stop at empty); a queue covering the advance
        loop fills at least one lane up to it; one short of the loop fits between the loops."""
        self.standing = min(self.standing, self.storage_veh)
        if blocked:
            self.beyond = min(self.beyond, self.storage_veh - self.standing)
            self.standing = max(self.standing, self.lane_zone_veh - max(0.0, self.beyond))
        else:
            room = self.zone_veh if advance_ok else self.storage_veh
            self.beyond = min(max(0.0, self.beyond), max(0.0, room - self.standing))

    def stale(self) -> QueueEstimate:
        """The last estimate, flagged stale, its confidence halved for every reading missed."""
        last = self.last
        return replace(last, flags=last.flags | {Flag.STALE}, confidence=last.confidence / 2)

    def _faults(self) -> frozenset[Fault]:
        found = (
            self.stop_bar.fault(Fault.STOP_BAR_STUCK_ON, Fault.STOP_BAR_STUCK_OFF, self.settings),
            self.advance.fault(Fault.ADVANCE_STUCK_ON, Fault.ADVANCE_STUCK_OFF, self.settings),
        )
        return frozenset(fault for fault in found if fault is not None)

    def _drive(self, counted: float, interval_s: float, recent_s: float) -> float:
        """Move the cohorts on and let those reaching the back of the queue join it; returns
        how many joined within the last ``recent_s`` seconds."""
        step_m = self.speed_mps * interval_s
        for cohort in self.moving:
            cohort.travelled_m += step_m
        if counted > 0.0:
            # counted somewhere within the interval: on average half-way through it
            self.moving.append(_Cohort(step_m / 2, counted))
        queue_veh = self.standing + max(0.0, self.beyond)
        queue_m = queue_veh * self.settings.jam_spacing_m / self.config.lanes
        join_at_m = max(0.0, self.config.advance_setback_m - queue_m)
        recent = 0.0
        # cohorts all drive at one speed, so the oldest is always the furthest on
        while self.moving and self.moving[0].travelled_m >= join_at_m:
            cohort = self.moving.popleft()
            self.standing += cohort.vehicles
            if (cohort.travelled_m - join_at_m) / self.speed_mps <= recent_s:
                recent += cohort.vehicles
        return recent

    def _depart(self, departures: float, *, from_moving: bool) -> float:
        """Departures leave from the queue's head; beyond an empty queue (counted ones only)
        they are vehicles that drove through without stopping, the oldest cohorts. Returns
        the departures no counted vehicle accounts for."""
        left = departures - self.standing
        self.standing = max(0.0, self.standing - departures)
        while from_moving and left > 0.0 and self.moving:
            cohort = self.moving[0]
            taken = min(left, cohort.vehicles)
            cohort.vehicles -= taken
            left -= taken
            if cohort.vehicles <= 0.0:
                self.moving.popleft()
        return max(0.0, left) if from_moving else 0.0

    def _discharge_capacity(self, signals: SignalReading, interval_s: float) -> float:
        """What the approach discharges in the interval at saturation flow when served (after
        the start-up lost time of a green), in proportion to the share of its groups served."""
        served = 0
        service_s = 0.0
        for group in self.config.groups:
            shown = signals.groups[group]
            if shown is Indication.RED:
                continue
            served += 1
            since = signals.since[group]
            if shown is Indication.YELLOW or since is None:
                service_s = interval_s
            else:
                moving_s = signals.time - since - self.settings.lost_time_s
                service_s = max(service_s, min(interval_s, moving_s))
        config = self.config
        share = served / len(config.groups)
        return config.lanes * config.saturation_flow_vphpl / 3600.0 * share * service_s

    def _estimate(
        self,
        time: float,
        counts: ApproachCounts,
        faults: frozenset[Fault],
        *,
        spillback: bool,
        held: bool,
    ) -> QueueEstimate:
        """The estimate and how far to trust it: 0 when held blind, a fallback's confidence
        with a loop stuck, half until the count is anchored by a clear stop bar (the queue
        standing when counting began is unknown); less as more of it is beyond the loop."""
        beyond = max(0.0, self.beyond)
        queue = self.standing + beyond
        if held:
            confidence = 0.0
        elif faults:
            confidence = FALLBACK_CONFIDENCE
        else:
            confidence = 1.0 if self.settled else 0.5
        if queue > 0.0:
            confidence *= 1.0 - beyond / queue / 2
        flags: set[Flag] = set()
        if spillback:
            flags.add(Flag.SPILLBACK)
        if faults:
            flags.add(Flag.DETECTOR_FAULT)
        self.last = QueueEstimate(
            approach=self.config.approach,
            time=time,
            queue_veh=queue,
            occupancy=counts.stop_bar_occupancy,
            flow_vph=self.arrivals.per_s * 3600.0,
            confidence=confidence,
            flags=frozenset(flags),
            faults=faults,
        )
        return self.last


class QueueEstimator:
    """The queues of one intersection's approaches, updated reading by reading.

    Bad input (an unknown or repeated approach, a count that is not a non-negative integer, a
    non-finite or out-of-range number, a reading older than the last, signals missing a group
    that serves an approach) raises ``ValidationError`` before any state changes. An approach
    read over a zero interval (read twice at once) is skipped and counted in ``skipped``; one
    missing from a reading keeps its previous estimate, flagged stale.
    """

    def __init__(
        self, approaches: Sequence[ApproachConfig], settings: EstimatorSettings | None = None
    ) -> None:
        if not approaches:
            raise ValidationError("approaches", "an intersection needs at least one approach")
        check_unique("approaches", (a.approach for a in approaches))
        self.settings = settings or EstimatorSettings()
        self._approaches = {a.approach: _ApproachEstimator(a, self.settings) for a in approaches}
        self._time: float | None = None
        self.skipped = 0

    def estimates(self) -> dict[str, QueueEstimate]:
        """The latest estimate of every approach."""
        return {name: state.last for name, state in self._approaches.items()}

    def update(
        self, reading: DetectorReading, signals: SignalReading | None = None
    ) -> dict[str, QueueEstimate]:
        """Apply one reading (and the displays at that time, which only the fallback for a
        stuck stop bar needs) and return the estimate of every approach."""
        self._validate(reading, signals)
        self._time = reading.time
        fresh: set[str] = set()
        for counts in reading.approaches:
            fresh.add(counts.approach)
            if counts.interval_s == 0.0:
                self.skipped += 1
                continue
            self._approaches[counts.approach].update(reading.time, counts, signals)
        for name, state in self._approaches.items():
            if name not in fresh:
                state.last = state.stale()
        return self.estimates()

    def _validate(self, reading: DetectorReading, signals: SignalReading | None) -> None:
        """The Structs check themselves when built, but not a count's type, and a reading's
        list can be changed after: check everything this estimator relies on, up front."""
        if not isinstance(reading, DetectorReading):
            raise ValidationError("reading", f"expected a DetectorReading, got {type(reading)}")
        check_number("time", reading.time, ge=0.0)
        if self._time is not None and reading.time < self._time:
            raise ValidationError(
                "time", f"reading at {reading.time} is older than the last one ({self._time})"
            )
        seen: set[str] = set()
        for index, counts in enumerate(reading.approaches):
            where = f"approaches[{index}]"
            if not isinstance(counts, ApproachCounts):
                raise ValidationError(where, f"expected ApproachCounts, got {type(counts)}")
            if counts.approach not in self._approaches:
                raise ValidationError(f"{where}.approach", f"unknown approach {counts.approach!r}")
            if counts.approach in seen:
                raise ValidationError(f"{where}.approach", f"{counts.approach!r} read twice")
            seen.add(counts.approach)
            check_number(f"{where}.interval_s", counts.interval_s, ge=0.0, le=86_400.0)
            check_count(f"{where}.stop_bar_count", counts.stop_bar_count, le=MAX_COUNT)
            check_count(f"{where}.advance_count", counts.advance_count, le=MAX_COUNT)
            for name in ("stop_bar_occupancy", "advance_occupancy"):
                check_number(f"{where}.{name}", getattr(counts, name), ge=0.0, le=1.0)
        if signals is None:
            return
        if not isinstance(signals, SignalReading):
            raise ValidationError("signals", f"expected a SignalReading, got {type(signals)}")
        for name, state in self._approaches.items():
            for group in state.config.groups:
                if group not in signals.groups or group not in signals.since:
                    raise ValidationError(
                        "signals.groups", f"no display for group {group!r} serving {name!r}"
                    )
