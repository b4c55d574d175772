"""Emulated loop detectors: per approach a stop-bar loop and an advance loop, read over an
interval like a cabinet's detector card, with optional noise and failures. Ground truth (the
true standing queue) is read separately, for scoring queue estimators."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError

if TYPE_CHECKING:  # the runner builds detector cards: its module imports this one
    from citybrain.simulator.runner import EngineState


class Failure(enum.StrEnum):
    STUCK_ON = "stuck_on"
    """Reports occupied all the time and no counts (a shorted loop)."""
    STUCK_OFF = "stuck_off"
    """Reports nothing (a broken lead-in)."""


@dataclass(frozen=True, slots=True)
class DetectorNoise:
    miss_rate: float = 0.0
    """Share of vehicles a count loop fails to count."""
    occupancy_sd: float = 0.0
    """Standard deviation of additive occupancy noise (clipped to 0..1)."""

    def __post_init__(self) -> None:
        check_number("miss_rate", self.miss_rate, ge=0.0, le=1.0)
        check_number("occupancy_sd", self.occupancy_sd, ge=0.0, le=1.0)


@dataclass(frozen=True, slots=True)
class ApproachReading:
    approach: str
    interval_s: float
    stop_bar_count: int
    stop_bar_occupancy: float
    advance_count: int
    advance_occupancy: float


class DetectorCards:
    """Reads every approach's loops since the previous read."""

    def __init__(
        self, sim: EngineState, *, noise: DetectorNoise | None = None, seed: int = 0
    ) -> None:
        self.sim = sim
        self.noise = noise or DetectorNoise()
        self.rng = np.random.default_rng(seed)
        net = sim.net.road.network
        self.approaches = {a.id: sim.net.link_index[a.link_id] for a in net.approaches}
        self.by_intersection: dict[str, list[tuple[str, int]]] = {}
        for a in net.approaches:
            self.by_intersection.setdefault(a.intersection_id, []).append(
                (a.id, self.approaches[a.id])
            )
        self.failures: dict[tuple[str, str], Failure] = {}
        self._start = sim.now
        self._last: dict[str, tuple[float, tuple[int, float, int, float]]] = {}

    def fail(self, approach: str, loop: str, failure: Failure | None) -> None:
        """Break (or with ``None`` repair) the ``loop`` ("stop" or "advance") of ``approach``."""
        if approach not in self.approaches:
            raise ValidationError("approach", f"unknown approach {approach!r}")
        if loop not in ("stop", "advance"):
            raise ValidationError("loop", f"expected 'stop' or 'advance', got {loop!r}")
        if failure is None:
            self.failures.pop((approach, loop), None)
        else:
            self.failures[(approach, loop)] = failure

    def read(self, intersection: str | None = None) -> dict[str, ApproachReading]:
        """Readings since this approach was last read (each cabinet reads its own loops)."""
        sim = self.sim
        now = sim.now
        out: dict[str, ApproachReading] = {}
        for approach, link in self._approaches_at(intersection):
            # occupancy in steps occupied: whole steps on our engine, a loop's time-weighted
            # share in SUMO
            current = (
                int(sim.stop_count[link]),
                float(sim.stop_occupied[link]),
                int(sim.adv_count[link]),
                float(sim.adv_occupied[link]),
            )
            since, last = self._last.get(approach, (self._start, (0, 0.0, 0, 0.0)))
            self._last[approach] = (now, current)
            interval = now - since
            steps = max(1.0, interval / sim.dt)
            sc, so = self._loop(
                approach, "stop", current[0] - last[0], (current[1] - last[1]) / steps
            )
            ac, ao = self._loop(
                approach, "advance", current[2] - last[2], (current[3] - last[3]) / steps
            )
            out[approach] = ApproachReading(approach, interval, sc, so, ac, ao)
        return out

    def _loop(self, approach: str, loop: str, count: int, share: float) -> tuple[int, float]:
        counted = int(self.rng.binomial(count, 1.0 - self.noise.miss_rate)) if count else 0
        if self.noise.occupancy_sd:
            share += float(self.rng.normal(0.0, self.noise.occupancy_sd))
        share = min(1.0, max(0.0, share))
        failure = self.failures.get((approach, loop))
        if failure is Failure.STUCK_ON:
            return 0, 1.0
        if failure is Failure.STUCK_OFF:
            return 0, 0.0
        return counted, share

    def _approaches_at(self, intersection: str | None) -> list[tuple[str, int]]:
        if intersection is None:
            return list(self.approaches.items())
        if intersection not in self.by_intersection:
            raise ValidationError("intersection", f"no detectors at {intersection!r}")
        return self.by_intersection[intersection]

    def true_queues(self, intersection: str | None = None) -> dict[str, int]:
        """Ground truth: vehicles standing in queue on each approach now."""
        queued = self.sim.link_queued
        return {a: int(queued[link]) for a, link in self._approaches_at(intersection)}
