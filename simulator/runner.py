"""A simulation run: the engine, its emulated controllers and detectors, and what is recorded
along the way (queue samples, emergency-vehicle trajectories)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import SignalPlan
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.controllers import EmulatedController, Outcome
from citybrain.simulator.demand import Trips
from citybrain.simulator.detectors import DetectorCards
from citybrain.simulator.engine import Simulation
from citybrain.simulator.kernels import ARRIVED, PENDING


@dataclass
class Trajectory:
    """Where one tracked vehicle was at every step: time, link index, distance along it."""

    times: list[float] = field(default_factory=list)
    links: list[int] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)


class Run:
    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        *,
        start_s: float = 0.0,
        dt_s: float = 1.0,
        sample_every_s: float = 60.0,
    ) -> None:
        check_number("sample_every_s", sample_every_s, gt=0.0)
        self.net = net
        self.sim = Simulation(net, trips, start_s=start_s, dt_s=dt_s)
        self.trips = self.sim.trips
        self.detectors = DetectorCards(self.sim)
        self.controllers = {
            node: EmulatedController(net.road.plans[node], end_lag_s=self.sim.end_lag)
            for node in net.controller_ids
        }
        self.sample_every = sample_every_s
        self.sample_times: list[float] = []
        self.samples: list[NDArray[np.int32]] = []
        self.tracked = {name: index for index, name in trips.names.items()}
        self.trajectories = {name: Trajectory() for name in self.tracked}
        self._next_sample = start_s
        self._running: set[str] = set()

    @property
    def now(self) -> float:
        return self.sim.now

    def command(self, intersection: str, message: SignalPlan) -> Outcome:
        controller = self.controllers.get(intersection)
        if controller is None:
            raise ValidationError("intersection", f"no signal controller at {intersection!r}")
        outcome = controller.command(message, self.now)
        if controller.running is not None:
            self._running.add(intersection)
        return outcome

    def release(self, intersection: str) -> Outcome:
        """A local command: leave any priority plan for the normal plan (an edge's lease or
        fail-safe; it carries no sequence number, so the cloud's plans stay in order)."""
        controller = self.controllers.get(intersection)
        if controller is None:
            raise ValidationError("intersection", f"no signal controller at {intersection!r}")
        return controller.release(self.now)

    def _tracking(self) -> bool:
        state = self.sim.state
        return any(state[v] != ARRIVED for v in self.tracked.values())

    def advance(self, seconds: float, *, on_step: Callable[[float], None] | None = None) -> None:
        """Run ``seconds`` of simulated time. Single steps while a controller runs a priority
        plan or an emergency vehicle is tracked; larger strides otherwise."""
        check_number("seconds", seconds, ge=0.0)
        end = self.now + seconds - 1e-9
        while self.now < end:
            if self.now >= self._next_sample:
                self.sample_times.append(self.now)
                self.samples.append(self.sim.link_queued.copy())
                self._next_sample += self.sample_every
            fine = bool(self._running) or self._tracking()
            stride = self.sim.dt if fine else min(end - self.now, self._next_sample - self.now)
            stride = max(self.sim.dt, round(stride / self.sim.dt) * self.sim.dt)
            if fine:
                self._update_overrides()
            self.sim.advance(stride)
            if fine:
                self._record_tracks()
            if on_step is not None:
                on_step(self.now)

    def _update_overrides(self) -> None:
        for node in list(self._running):
            c = self.net.controller_index[node]
            controller = self.controllers[node]
            self.sim.set_override(c, controller.override_mask(self.now, self.net.group_bits[c]))
            if controller.running is None:
                self._running.discard(node)

    def _record_tracks(self) -> None:
        sim, trips = self.sim, self.trips
        for name, v in self.tracked.items():
            if sim.state[v] in (PENDING, ARRIVED):
                continue
            track = self.trajectories[name]
            track.times.append(self.now)
            track.links.append(int(trips.route_links[trips.route_start[v] + sim.hop[v]]))
            track.positions.append(max(0.0, float(sim.position[v])))
