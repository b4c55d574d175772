"""The simulation: owns the engine's state arrays and advances them with the Numba kernels.

It does no I/O and knows no wall clock: callers (the scenario runner, the field-bus server,
the paced clock) decide when to advance it. Signal controllers that run priority plans set an
override mask per intersection; all others follow their normal timing plan inside the kernel.
Vehicles flagged ``Trips.reroute`` (SUMO's trips) are routed as they become due, between
kernel calls every ``ROUTING_INTERVAL_S``, on a copy of the routes (``demand.DepartureRouter``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.simulator import kernels
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import ROUTING_INTERVAL_S, DepartureRouter, Trips

DEFAULT_DT_S = 1.0
LOST_TIME_S = 2.0
ACCELERATION_MPS2 = 2.0
DECELERATION_MPS2 = 3.0
END_LAG_S = 2.0
"""Vehicles keep crossing for this long into the yellow (HCM's extension of effective green)."""


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
    ) -> None:
        check_number("dt_s", dt_s, ge=0.1, le=2.0)
        check_number("start_s", start_s, ge=0.0)
        check_number("lost_time_s", lost_time_s, ge=0.0, le=6.0)
        check_number("end_lag_s", end_lag_s, ge=0.0, le=6.0)
        check_number("acceleration_mps2", acceleration_mps2, gt=0.0, le=10.0)
        check_number("deceleration_mps2", deceleration_mps2, gt=0.0, le=10.0)
        if trips.count and (not np.all(np.isfinite(trips.depart)) or trips.depart.min() < 0):
            raise ValidationError("trips.depart", "departure times must be finite and >= 0")
        if trips.count and (trips.route_links.min() < 0 or trips.route_links.max() >= net.links):
            raise ValidationError("trips.route_links", "a route names a link outside the network")
        if trips.reroute is not None and trips.reroute.shape != (trips.count,):
            raise ValidationError("trips.reroute", "needs one flag per vehicle")
        self.net = net
        self.router = DepartureRouter(net, trips) if trips.rerouted else None
        self.trips = trips if self.router is None else self.router.trips
        """The vehicles this run moves: ``trips`` itself, or a copy whose routes the departure
        router rewrites (so the same ``trips`` can be run again)."""
        trips = self.trips
        self.now = start_s
        self.dt = dt_s
        self.lost_time = lost_time_s
        self.end_lag = end_lag_s
        # time lost per stop = speed x (1/2a + 1/2b)
        self.stop_loss = 0.5 / acceleration_mps2 + 0.5 / deceleration_mps2
        self.acceleration = acceleration_mps2
        n_ctl, n_mv, n_links, n_veh = len(net.controller_ids), net.movements, net.links, trips.count
        self.override = np.full(n_ctl, -1, dtype=np.int64)
        self.allowed = np.zeros(n_ctl, dtype=np.int64)
        self.q_head = np.full(n_mv, -1, dtype=np.int64)
        self.q_tail = np.full(n_mv, -1, dtype=np.int64)
        self.q_len = np.zeros(n_mv, dtype=np.int32)
        self.q_count = np.zeros(n_mv, dtype=np.int32)
        """Vehicles on each queue's link that will take its lanes (driving or queued)."""
        self.q_urgent = np.zeros(n_mv, dtype=np.int32)
        """Emergency vehicles in each queue."""
        self.next_departure = np.zeros(n_mv, dtype=np.float64)
        self.mv_next = np.zeros(n_mv, dtype=np.float64)
        self.last_cross = np.full(n_mv, -np.inf)
        """When each movement's last vehicle crossed its stop line."""
        self.foe_eta = np.zeros(n_mv, dtype=np.float64)
        """For movements others give way to: when the first vehicle driving up to the stop
        line reaches it, as seen at ``foe_eta_at`` (a step start)."""
        self.foe_eta_at = np.full(n_mv, -np.inf)
        self.was_mask = np.zeros(n_ctl + 1, dtype=np.int64)
        """Per controller (and one more for the unsignalized movements): groups that could
        go in the last step, to see a green begin."""
        self.green_since = np.zeros((n_ctl + 1) * 64, dtype=np.float64)
        """Per controller and group bit: when its green began (its lost time runs from it)."""
        self.link_count = np.zeros(n_links, dtype=np.int32)
        self.link_queued = np.zeros(n_links, dtype=np.int32)
        self.link_delay = np.zeros(n_links, dtype=np.float64)
        self.link_departures = np.zeros(n_links, dtype=np.int64)
        self.adv_count = np.zeros(n_links, dtype=np.int64)
        self.adv_occupied = np.zeros(n_links, dtype=np.int64)
        self.stop_count = np.zeros(n_links, dtype=np.int64)
        self.stop_occupied = np.zeros(n_links, dtype=np.int64)
        self.order = np.argsort(trips.depart, kind="stable").astype(np.int64)
        self.cursor = np.zeros(1, dtype=np.int64)
        self.waiting = np.zeros(n_veh, dtype=np.int64)
        self.n_waiting = np.zeros(1, dtype=np.int64)
        self.active = np.zeros(n_veh, dtype=np.int64)
        self.n_active = np.zeros(1, dtype=np.int64)
        self.hop_enter = np.full(trips.route_links.shape[0], np.nan)
        self.state = np.zeros(n_veh, dtype=np.int8)
        self.hop = np.zeros(n_veh, dtype=np.int32)
        self.position = np.zeros(n_veh, dtype=np.float64)
        self.next_in_queue = np.full(n_veh, -1, dtype=np.int64)
        self.queued_move = np.full(n_veh, -1, dtype=np.int64)
        """The movement a queued vehicle waits for (read without its route)."""
        self.joined = np.zeros(n_veh, dtype=np.float64)
        self.behind_loop = np.zeros(n_veh, dtype=np.bool_)
        self.stops = np.zeros(n_veh, dtype=np.int32)
        self.carry = np.zeros(n_veh, dtype=np.float64)
        """Stop loss still to be paid on the links ahead (it left a short link unpaid)."""
        self.crossed_m = np.zeros(n_veh, dtype=np.float64)
        """Junction distance driven to reach the link a vehicle is on (not a delay there)."""
        self.entered = np.full(n_veh, np.nan)
        self.arrived = np.full(n_veh, np.nan)

    def advance(self, seconds: float) -> None:
        """Run whole steps covering ``seconds`` of simulated time; while vehicles remain to be
        routed at departure, in chunks of ``ROUTING_INTERVAL_S`` with routing between."""
        check_number("seconds", seconds, ge=0.0)
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
        return float(kernels.run_steps(*self.kernel_args(steps)))

    def kernel_args(self, steps: int) -> tuple[Any, ...]:
        """The arguments of ``kernels.run_steps`` for ``steps`` steps from now (state in place)."""
        n, t = self.net, self.trips
        return (
            steps, self.now, self.dt, self.lost_time, self.end_lag, self.stop_loss,
            self.acceleration,
            n.link_length, n.link_lanes, n.link_speed, n.link_storage, n.link_advance,
            n.mv_from, n.mv_to, n.mv_controller, n.mv_bit, n.mv_headway, n.mv_lane_mask,
            n.mv_queue, n.qu_lanes, n.qu_mask, n.qu_headway, n.qu_storage, n.qu_single,
            n.qu_signal, n.mv_yield_start, n.mv_yield, n.mv_is_foe, n.mv_junction_m,
            n.ctl_cycle, n.ctl_offset, n.ctl_phase_start, n.ph_begin, n.ph_green, n.ph_mask,
            n.ph_clear, n.ph_keep,
            self.override, self.allowed,
            self.q_head, self.q_tail, self.q_len, self.q_count, self.q_urgent,
            self.next_departure, self.mv_next, self.last_cross, self.foe_eta, self.foe_eta_at,
            self.was_mask, self.green_since,
            self.link_count, self.link_queued, self.link_delay, self.link_departures,
            self.adv_count, self.adv_occupied, self.stop_count, self.stop_occupied,
            t.depart, self.order, self.cursor, self.waiting, self.n_waiting,
            self.active, self.n_active,
            t.route_start, t.route_len, t.route_links, t.route_moves, self.hop_enter,
            t.speed_factor, t.emergency, self.state, self.hop, self.position, self.next_in_queue,
            self.queued_move, self.joined, self.behind_loop, self.stops, self.carry,
            self.crossed_m, self.entered, self.arrived,
        )  # fmt: skip

    @property
    def vehicles_in_network(self) -> int:
        return int(self.n_active[0])

    def queue_on_link(self) -> NDArray[np.int32]:
        """Ground truth: vehicles standing in queues on each link (all its movements)."""
        return self.link_queued.copy()

    def set_override(self, controller: int, mask: int | None) -> None:
        """Make ``controller`` follow ``mask`` (groups that may proceed) instead of its plan."""
        self.override[controller] = -1 if mask is None else mask
