"""The simulation: owns the engine's state and advances it with the Numba kernels.

The state is a handful of named structures of plain arrays (``engine_state``) that
``kernels.run_steps`` takes and updates in place; the arrays others read are offered here by
name as well (``runner.EngineState``).

It does no I/O and knows no wall clock: callers (the scenario runner, the field-bus server,
the paced clock) decide when to advance it. Signal controllers that run priority plans set an
override mask per intersection; all others follow their normal timing plan inside the kernel.
Vehicles flagged ``Trips.reroute`` (SUMO's trips) are routed as they become due, between
kernel calls every ``ROUTING_INTERVAL_S``, on a copy of the routes (``demand.DepartureRouter``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M
from citybrain.simulator import engine_state, kernels
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import ROUTING_INTERVAL_S, DepartureRouter, Trips
from citybrain.simulator.engine_state import KernelState

DEFAULT_DT_S = 1.0
MAX_ADVANCE_S = 31 * 86400.0
"""The most one ``advance`` runs: a month, over the longest run any entry point builds (30
days). A larger figure is a caller's mistake that would run for ever."""
LOST_TIME_S = 2.0
ACCELERATION_MPS2 = 2.0
DECELERATION_MPS2 = 3.0
END_LAG_S = 2.0
"""Vehicles keep crossing for this long into the yellow (HCM's extension of effective green)."""
DAWDLE_MPS = 0.65
"""The speed a driver loses to imperfection on average: SUMO's default driver (Krauss, sigma
0.5, acceleration 2.6 m/s2) slows at random by up to sigma x acceleration each 1 s step, so it
drives 0.65 m/s under its desired speed, and whoever follows it no faster. Without it a
platoon here ran 1.1-1.3 m/s faster than SUMO's, enough to decide whether an ambulance
reached a green timed for its free speed (``docs/architecture.md``, "Driver imperfection")."""


class Simulation:
    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        *,
        start_s: float = 0.0,
        dt_s: float = DEFAULT_DT_S,
        lost_time_s: float = LOST_TIME_S,
        end_lag_s: float = END_LAG_S,
        acceleration_mps2: float = ACCELERATION_MPS2,
        deceleration_mps2: float = DECELERATION_MPS2,
        dawdle_mps: float = DAWDLE_MPS,
    ) -> None:
        check_number("dt_s", dt_s, ge=0.1, le=2.0)
        check_number("start_s", start_s, ge=0.0)
        check_number("lost_time_s", lost_time_s, ge=0.0, le=6.0)
        check_number("end_lag_s", end_lag_s, ge=0.0, le=6.0)
        check_number("acceleration_mps2", acceleration_mps2, gt=0.0, le=10.0)
        check_number("deceleration_mps2", deceleration_mps2, gt=0.0, le=10.0)
        check_number("dawdle_mps", dawdle_mps, ge=0.0, le=3.0)
        trips.check_on(net.links)
        if trips.reroute is not None and trips.reroute.shape != (trips.count,):
            raise ValidationError("trips.reroute", "needs one flag per vehicle")
        if trips.standing is not None and trips.standing.shape != (trips.count,):
            raise ValidationError("trips.standing", "needs one flag per vehicle")
        self.net = net
        self.router = DepartureRouter(net, trips) if trips.rerouted else None
        self.trips = trips if self.router is None else self.router.trips
        """The vehicles this run moves: ``trips`` itself, or a copy whose routes the departure
        router rewrites (so the same ``trips`` can be run again)."""
        self.now = start_s
        self.dt = dt_s
        self.model = engine_state.ModelParameters(
            dt=dt_s,
            lost_time=lost_time_s,
            end_lag=end_lag_s,
            acceleration=acceleration_mps2,
            deceleration=deceleration_mps2,
            start_clear=math.sqrt(2.0 * JAM_SPACING_M / acceleration_mps2),
            dawdle=dawdle_mps,
        )
        self.road = engine_state.road_of(net)
        self.plans = engine_state.plans_of(net)
        self.demand = engine_state.demand_of(self.trips)
        self.signals = engine_state.idle_signals(len(net.controller_ids))
        self.queues = engine_state.empty_queues(net.movements)
        self.links = engine_state.empty_links(net.links)
        self.vehicles = engine_state.pending_vehicles(self.trips)
        self._plain_state: tuple[Any, ...] = tuple(tuple(part) for part in self.kernel_state())
        """The same structures as plain tuples: the fast call (``kernels.run_steps``)."""

    def advance(self, seconds: float) -> None:
        """Run whole steps covering ``seconds`` of simulated time; while vehicles remain to be
        routed at departure, in chunks of ``ROUTING_INTERVAL_S`` with routing between."""
        check_number("seconds", seconds, ge=0.0, le=MAX_ADVANCE_S)
        steps = round(seconds / self.dt)
        chunk = max(1, round(ROUTING_INTERVAL_S / self.dt))
        while steps:
            router = self.router
            if router is None or router.done:
                self.now = self._run(steps)
                return
            run = min(steps, chunk)
            router.sample(self.state, self.hop, self.active[: self.n_active[0]])
            router.route(self.now + run * self.dt)
            self.now = self._run(run)
            steps -= run

    def _run(self, steps: int) -> float:
        return float(kernels.run_steps(steps, self.now, *self._plain_state))

    def kernel_state(self) -> KernelState:
        """What ``kernels.run_steps`` takes after its step count and start time (the arrays
        themselves: the kernel updates them in place)."""
        return (
            self.model,
            self.road,
            self.plans,
            self.signals,
            self.queues,
            self.links,
            self.demand,
            self.vehicles,
        )

    # The arrays readers use (``runner.EngineState``), read where the kernel keeps them.

    @property
    def state(self) -> NDArray[np.int8]:
        return self.vehicles.state

    @property
    def hop(self) -> NDArray[np.int32]:
        return self.vehicles.hop

    @property
    def position(self) -> NDArray[np.float64]:
        return self.vehicles.position

    @property
    def stops(self) -> NDArray[np.int32]:
        return self.vehicles.stops

    @property
    def arrived(self) -> NDArray[np.float64]:
        return self.vehicles.arrived

    @property
    def hop_enter(self) -> NDArray[np.float64]:
        return self.vehicles.hop_enter

    @property
    def active(self) -> NDArray[np.int64]:
        return self.vehicles.active

    @property
    def n_active(self) -> NDArray[np.int64]:
        return self.vehicles.n_active

    @property
    def n_waiting(self) -> NDArray[np.int64]:
        return self.vehicles.n_waiting

    @property
    def cursor(self) -> NDArray[np.int64]:
        return self.vehicles.cursor

    @property
    def link_count(self) -> NDArray[np.int32]:
        return self.links.link_count

    @property
    def link_queued(self) -> NDArray[np.int32]:
        return self.links.link_queued

    @property
    def link_departures(self) -> NDArray[np.int64]:
        return self.links.link_departures

    @property
    def link_delay(self) -> NDArray[np.float64]:
        return self.links.link_delay

    @property
    def adv_count(self) -> NDArray[np.int64]:
        return self.links.adv_count

    @property
    def adv_occupied(self) -> NDArray[np.int64]:
        return self.links.adv_occupied

    @property
    def stop_count(self) -> NDArray[np.int64]:
        return self.links.stop_count

    @property
    def stop_occupied(self) -> NDArray[np.int64]:
        return self.links.stop_occupied

    @property
    def q_len(self) -> NDArray[np.int32]:
        return self.queues.q_len

    @property
    def q_count(self) -> NDArray[np.int32]:
        return self.queues.q_count

    @property
    def override(self) -> NDArray[np.int64]:
        return self.signals.override

    @property
    def allowed(self) -> NDArray[np.int64]:
        return self.signals.allowed

    @property
    def vehicles_in_network(self) -> int:
        return int(self.n_active[0])

    def queue_on_link(self) -> NDArray[np.int32]:
        """Ground truth: vehicles standing in queues on each link (all its movements)."""
        return self.link_queued.copy()

    def set_override(self, controller: int, mask: int | None) -> None:
        """Make ``controller`` follow ``mask`` (groups that may proceed) instead of its plan."""
        self.override[controller] = -1 if mask is None else mask

    def set_speed_cap(self, vehicle: int, speed_mps: float | None) -> None:
        """From now on ``vehicle`` keeps under ``speed_mps`` (its driver follows speed advice)
        wherever its link would let it go faster; ``None``: its own speed again."""
        check_count("vehicle", vehicle, le=self.trips.count - 1)
        if speed_mps is not None:
            check_number("speed_mps", speed_mps, gt=0.0, le=100.0)
        self.vehicles.speed_cap[vehicle] = math.inf if speed_mps is None else speed_mps
