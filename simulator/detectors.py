"""Emulated loop detectors: per approach a stop-bar loop and an advance loop, read over an
interval like a cabinet's detector card, with optional noise and failures. Ground truth (the
true standing queue) is read separately, for scoring queue estimators."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.simulator.engine import Simulation


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
        self, sim: Simulation, *, noise: DetectorNoise | None = None, seed: int = 0
    ) -> None:
        self.sim = sim
        self.noise = noise or DetectorNoise()
        self.rng = np.random.default_rng(seed)
        net = sim.net.road.network
        self.approaches = {a.id: sim.net.link_index[a.link_id] for a in net.approaches}
        self.failures: dict[tuple[str, str], Failure] = {}
        self._last_time = sim.now
        self._last = self._snapshot()

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

    def _snapshot(self) -> tuple[np.ndarray, ...]:
        s = self.sim
        return (
            s.stop_count.copy(),
            s.stop_occupied.copy(),
            s.adv_count.copy(),
            s.adv_occupied.copy(),
        )

    def read(self) -> dict[str, ApproachReading]:
        now = self.sim.now
        interval = now - self._last_time
        current = self._snapshot()
        stop_n, stop_occ, adv_n, adv_occ = (c - p for c, p in zip(current, self._last, strict=True))
        self._last, self._last_time = current, now
        steps = max(1.0, interval / self.sim.dt)
        out: dict[str, ApproachReading] = {}
        for approach, link in self.approaches.items():
            readings = []
            for loop, count, occupied in (
                ("stop", stop_n[link], stop_occ[link]),
                ("advance", adv_n[link], adv_occ[link]),
            ):
                counted = (
                    int(self.rng.binomial(int(count), 1.0 - self.noise.miss_rate)) if count else 0
                )
                share = float(occupied) / steps
                if self.noise.occupancy_sd:
                    share += float(self.rng.normal(0.0, self.noise.occupancy_sd))
                share = min(1.0, max(0.0, share))
                failure = self.failures.get((approach, loop))
                if failure is Failure.STUCK_ON:
                    counted, share = 0, 1.0
                elif failure is Failure.STUCK_OFF:
                    counted, share = 0, 0.0
                readings.append((counted, share))
            (sc, so), (ac, ao) = readings
            out[approach] = ApproachReading(approach, interval, sc, so, ac, ao)
        return out

    def true_queues(self) -> dict[str, int]:
        """Ground truth: vehicles standing in queue on each approach now."""
        queued = self.sim.link_queued
        return {approach: int(queued[link]) for approach, link in self.approaches.items()}
