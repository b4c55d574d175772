"""A simulation run: the engine, its emulated controllers and detectors, and what is recorded
along the way (queue samples, emergency-vehicle trajectories)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import SignalPlan
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.controllers import EmulatedController, Outcome
from citybrain.simulator.demand import Trips
from citybrain.simulator.detectors import DetectorCards
from citybrain.simulator.engine import END_LAG_S, MAX_ADVANCE_S, Simulation
from citybrain.simulator.kernels import ARRIVED, DRIVING, QUEUED


class Engine(enum.StrEnum):
    """What moves the vehicles: our mesoscopic engine, or SUMO micro (``sumo_run``)."""

    OURS = "ours"
    SUMO = "sumo"


@dataclass(frozen=True, slots=True)
class VehicleIncident:
    """Something the engine did to a vehicle that no driver does: SUMO teleports a vehicle
    jammed too long, or takes it out. A trip with one is not a real drive."""

    time_s: float
    vehicle: str
    kind: str
    """``teleport``, ``collision`` or ``removed``."""
    link: str | None
    """Our link it was on, if it had entered."""
    reason: str

    def describe(self) -> str:
        where = f" on {self.link}" if self.link else ""
        return f"{self.vehicle} {self.kind}{where} at {self.time_s:.0f} s: {self.reason}"


class EngineState(Protocol):
    """What readers of a run's state use (scoring, detectors, the closed loop): our engine's
    ``Simulation`` has it, and so has the SUMO run's mirror of SUMO's vehicles
    (``sumo_run.SumoState``). Vehicle arrays are indexed like ``trips``, link arrays like
    ``net.link_ids``; counters are cumulative since the start. ``position`` is kept for the
    tracked (named) vehicles at least: SUMO's mirror keeps it for those only."""

    @property
    def net(self) -> CompiledNetwork: ...
    @property
    def trips(self) -> Trips: ...
    @property
    def now(self) -> float: ...
    @property
    def dt(self) -> float: ...
    @property
    def vehicles_in_network(self) -> int: ...
    @property
    def state(self) -> NDArray[np.int8]: ...
    @property
    def hop(self) -> NDArray[np.int32]: ...
    @property
    def position(self) -> NDArray[np.float64]: ...
    @property
    def stops(self) -> NDArray[np.int32]: ...
    @property
    def arrived(self) -> NDArray[np.float64]: ...
    @property
    def hop_enter(self) -> NDArray[np.float64]: ...
    @property
    def active(self) -> NDArray[np.int64]: ...
    @property
    def n_waiting(self) -> NDArray[np.int64]: ...
    @property
    def link_queued(self) -> NDArray[np.int32]: ...
    @property
    def link_departures(self) -> NDArray[np.int64]: ...
    @property
    def link_delay(self) -> NDArray[np.float64]: ...
    @property
    def adv_count(self) -> NDArray[np.int64]: ...
    @property
    def adv_occupied(self) -> NDArray[Any]: ...
    @property
    def stop_count(self) -> NDArray[np.int64]: ...
    @property
    def stop_occupied(self) -> NDArray[Any]: ...


class SimulationRun(Protocol):
    """What the closed loop, scoring and the field bus drive: ``Run`` on our engine, or
    ``sumo_run.SumoRun`` with SUMO moving the vehicles under the same controllers."""

    @property
    def net(self) -> CompiledNetwork: ...
    @property
    def trips(self) -> Trips: ...
    @property
    def sim(self) -> EngineState: ...
    @property
    def detectors(self) -> DetectorCards: ...
    @property
    def controllers(self) -> dict[str, EmulatedController]: ...
    @property
    def trajectories(self) -> dict[str, Trajectory]: ...
    @property
    def sample_times(self) -> list[float]: ...
    @property
    def samples(self) -> list[NDArray[np.int32]]: ...
    @property
    def incidents(self) -> list[VehicleIncident]: ...
    @property
    def now(self) -> float: ...

    def command(self, intersection: str, message: SignalPlan) -> Outcome: ...
    def release(self, intersection: str) -> Outcome: ...
    def set_speed_cap(self, vehicle: str, speed_mps: float | None) -> None: ...
    def advance(
        self, seconds: float, *, on_step: Callable[[float], None] | None = None
    ) -> None: ...


@dataclass
class Trajectory:
    """Where one tracked vehicle was at every step: time, link index, distance along it."""

    times: list[float] = field(default_factory=list)
    links: list[int] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)


class ControlledRun:
    """What a run is on any engine besides moving vehicles: our emulated controllers and the
    commands sent to them, queue samples, and the tracked (named) vehicles' trajectories. An
    engine's run sets ``sim`` first, then calls this ``__init__``, and steps it."""

    sim: EngineState

    def __init__(
        self, net: CompiledNetwork, trips: Trips, *, start_s: float, sample_every_s: float
    ) -> None:
        check_number("sample_every_s", sample_every_s, gt=0.0)
        self.net, self.trips = net, trips
        self.controllers = {
            node: EmulatedController(net.road.plans[node], end_lag_s=END_LAG_S)
            for node in net.controller_ids
        }
        self.sample_every = sample_every_s
        self.sample_times: list[float] = []
        self.samples: list[NDArray[np.int32]] = []
        self.tracked = {name: index for index, name in trips.names.items()}
        self.trajectories = {name: Trajectory() for name in self.tracked}
        self.incidents: list[VehicleIncident] = []
        """Vehicles the engine teleported or removed (SUMO; never on ours, where a gridlock
        shows as stuck vehicles, ``scoring.STUCK_AFTER_S``)."""
        self._next_sample = start_s
        self._running: set[str] = set()
        """Intersections whose controller runs a priority plan."""

    @property
    def now(self) -> float:
        return self.sim.now

    def command(self, intersection: str, message: SignalPlan) -> Outcome:
        controller = self._controller(intersection)
        outcome = controller.command(message, self.now)
        if controller.running is not None:
            self._running.add(intersection)
        return outcome

    def release(self, intersection: str) -> Outcome:
        """A local command: leave any priority plan for the normal plan (an edge's lease or
        fail-safe; it carries no sequence number, so the cloud's plans stay in order)."""
        return self._controller(intersection).release(self.now)

    def _tracked(self, vehicle: str, speed_mps: float | None) -> int:
        """The index of tracked ``vehicle``, for a speed cap of ``speed_mps``, both checked."""
        index = self.tracked.get(vehicle)
        if index is None:
            raise ValidationError("vehicle", f"no tracked vehicle {vehicle!r}")
        if speed_mps is not None:
            check_number("speed_mps", speed_mps, gt=0.0, le=100.0)
        return index

    def _controller(self, intersection: str) -> EmulatedController:
        controller = self.controllers.get(intersection)
        if controller is None:
            raise ValidationError("intersection", f"no signal controller at {intersection!r}")
        return controller

    def _sample(self) -> None:
        """Keep every link's queue once per ``sample_every``."""
        if self.now >= self._next_sample:
            self.sample_times.append(self.now)
            self.samples.append(self.sim.link_queued.copy())
            self._next_sample += self.sample_every

    def _record_tracks(self) -> None:
        sim, trips = self.sim, self.trips
        for name, v in self.tracked.items():
            if sim.state[v] not in (DRIVING, QUEUED):
                continue
            track = self.trajectories[name]
            track.times.append(self.now)
            track.links.append(int(trips.route_links[trips.route_start[v] + sim.hop[v]]))
            track.positions.append(max(0.0, float(sim.position[v])))


class Run(ControlledRun):
    """A run on our engine."""

    sim: Simulation

    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        *,
        start_s: float = 0.0,
        dt_s: float = 1.0,
        sample_every_s: float = 60.0,
    ) -> None:
        self.sim = Simulation(net, trips, start_s=start_s, dt_s=dt_s)
        super().__init__(net, self.sim.trips, start_s=start_s, sample_every_s=sample_every_s)
        self.detectors = DetectorCards(self.sim)

    def set_speed_cap(self, vehicle: str, speed_mps: float | None) -> None:
        """From now on tracked ``vehicle`` keeps under ``speed_mps`` (its driver follows speed
        advice); ``None``: its own speed again."""
        self.sim.set_speed_cap(self._tracked(vehicle, speed_mps), speed_mps)

    def _tracking(self) -> bool:
        state = self.sim.state
        return any(state[v] != ARRIVED for v in self.tracked.values())

    def advance(self, seconds: float, *, on_step: Callable[[float], None] | None = None) -> None:
        """Run ``seconds`` of simulated time. Single steps while a controller runs a priority
        plan or an emergency vehicle is tracked; larger strides otherwise."""
        check_number("seconds", seconds, ge=0.0, le=MAX_ADVANCE_S)
        end = self.now + seconds - 1e-9
        while self.now < end:
            self._sample()
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
