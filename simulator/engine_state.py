"""The engine's state as the named structures ``kernels.run_steps`` takes by field.

Each structure is a ``NamedTuple`` of plain arrays: Numba types it as a typed tuple, so a
field read in the kernel is a static offset (as fast as a positional argument), the kernel's
compiled code stays cacheable, and the engine's Python side reads the same arrays by name.
Arrays are shared, never copied: the kernel updates them in place. The engine hands them over
as plain tuples, which Numba types faster (``kernels.run_steps``). Field names keep their
index space in their prefix: ``link_`` per link, ``mv_`` per movement, ``q_``/``qu_`` per
queue (numbered like ``mv_queue``), ``ctl_`` per controller, ``ph_`` per phase; the vehicle
arrays are per vehicle, ``hop_enter`` and the ``route_`` arrays per route entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # demand imports the kernels, which import this module
    from citybrain.simulator.compiled import CompiledNetwork
    from citybrain.simulator.demand import Trips


class ModelParameters(NamedTuple):
    """The model's constants for a run (``engine.Simulation`` validates them)."""

    dt: float
    lost_time: float
    """Start-up lost time after a green begins (s)."""
    end_lag: float
    """Vehicles keep crossing this long into the yellow (s)."""
    acceleration: float
    deceleration: float
    start_clear: float
    """How long a vehicle starting from a standstill takes to clear a car length."""
    dawdle: float
    """The speed a driver loses to imperfection on average (m/s), below its desired speed."""


class Road(NamedTuple):
    """The network's layout (read only; ``CompiledNetwork`` documents each array)."""

    link_length: NDArray[np.float64]
    link_lanes: NDArray[np.int32]
    link_speed: NDArray[np.float64]
    link_storage: NDArray[np.int32]
    link_advance: NDArray[np.float64]
    mv_from: NDArray[np.int32]
    mv_to: NDArray[np.int32]
    mv_controller: NDArray[np.int32]
    mv_bit: NDArray[np.int32]
    mv_headway: NDArray[np.float64]
    mv_slower: NDArray[np.float64]
    mv_lane_mask: NDArray[np.int64]
    mv_queue: NDArray[np.int64]
    mv_yield_start: NDArray[np.int64]
    mv_yield: NDArray[np.int32]
    mv_is_foe: NDArray[np.bool_]
    mv_junction_m: NDArray[np.float64]
    qu_lanes: NDArray[np.int32]
    qu_mask: NDArray[np.int64]
    qu_headway: NDArray[np.float64]
    qu_storage: NDArray[np.int32]
    qu_single: NDArray[np.int64]
    qu_signal: NDArray[np.int64]


class Plans(NamedTuple):
    """The controllers' normal timing plans (read only), as ``kernels.signal_masks`` reads them."""

    ctl_cycle: NDArray[np.float64]
    ctl_offset: NDArray[np.float64]
    ctl_phase_start: NDArray[np.int64]
    ph_begin: NDArray[np.float64]
    ph_green: NDArray[np.float64]
    ph_mask: NDArray[np.int64]
    ph_clear: NDArray[np.float64]
    ph_keep: NDArray[np.int64]


class Signals(NamedTuple):
    """What the signals let through. Per controller, and one more entry (the last) standing
    for all unsignalized movements in ``was_mask`` and ``green_since``."""

    override: NDArray[np.int64]
    """A priority plan's mask of groups that may proceed, or -1: follow the normal plan."""
    allowed: NDArray[np.int64]
    """Groups that may proceed in the current step."""
    was_mask: NDArray[np.int64]
    """Groups that could go in the last step, to see a green begin."""
    green_since: NDArray[np.float64]
    """Per controller and group bit (``c * 64 + bit``): when its green began."""


class Queues(NamedTuple):
    """The FIFO queues at the stop lines (linked lists through ``Vehicles.next_in_queue``)
    and what each movement's last crossings leave behind."""

    q_head: NDArray[np.int64]
    q_tail: NDArray[np.int64]
    q_len: NDArray[np.int32]
    q_count: NDArray[np.int32]
    """Vehicles on each queue's link that will take its lanes (driving or queued)."""
    q_urgent: NDArray[np.int32]
    """Emergency vehicles in each queue."""
    next_departure: NDArray[np.float64]
    """Per queue: the earliest its next vehicle may cross (its lanes' saturation headway)."""
    mv_next: NDArray[np.float64]
    """Per movement: the same for the movement's own lanes."""
    last_cross: NDArray[np.float64]
    """When each movement's last vehicle crossed its stop line."""
    foe_eta: NDArray[np.float64]
    """For movements others give way to: when the first vehicle driving up to the stop line
    reaches it, as seen at ``foe_eta_at`` (a step start)."""
    foe_eta_at: NDArray[np.float64]
    mv_inside: NDArray[np.int64]
    """Per permitted movement: the vehicle waiting for its gap inside the junction, past its
    stop line (-1: none). It holds no lane: those behind it go on."""
    q_inside: NDArray[np.int32]
    """Per queue: its vehicles waiting inside the junction."""


class Links(NamedTuple):
    """Per link: occupancy, the delay tally and the detectors' cumulative counters."""

    link_count: NDArray[np.int32]
    link_queued: NDArray[np.int32]
    link_delay: NDArray[np.float64]
    link_departures: NDArray[np.int64]
    adv_count: NDArray[np.int64]
    adv_occupied: NDArray[np.int64]
    stop_count: NDArray[np.int64]
    stop_occupied: NDArray[np.int64]
    next_start: NDArray[np.float64]
    """When a vehicle may next start from a standstill on the link (``Trips.standing``)."""


class Demand(NamedTuple):
    """The trips (their routes are rewritten in place by ``demand.DepartureRouter``) and the
    order in which they become due."""

    depart: NDArray[np.float64]
    order: NDArray[np.int64]
    route_start: NDArray[np.int64]
    route_links: NDArray[np.int32]
    route_moves: NDArray[np.int32]
    speed_factor: NDArray[np.float64]
    emergency: NDArray[np.bool_]
    urgent: NDArray[np.int64]
    """The emergency vehicles' indices."""
    standing: NDArray[np.bool_]


class Vehicles(NamedTuple):
    """Where every vehicle is, and the lists of those waiting to enter and on the road."""

    cursor: NDArray[np.int64]
    """Next entry of ``Demand.order`` not yet due (one element)."""
    waiting: NDArray[np.int64]
    n_waiting: NDArray[np.int64]
    active: NDArray[np.int64]
    n_active: NDArray[np.int64]
    hop_enter: NDArray[np.float64]
    """Per route entry: when the vehicle entered that link."""
    state: NDArray[np.int8]
    hop: NDArray[np.int32]
    position: NDArray[np.float64]
    next_in_queue: NDArray[np.int64]
    queued_move: NDArray[np.int64]
    """The movement a queued vehicle waits for (read without its route)."""
    joined: NDArray[np.float64]
    behind_loop: NDArray[np.bool_]
    stops: NDArray[np.int32]
    carry: NDArray[np.float64]
    """Stop loss still to be paid on the links ahead (it left a short link unpaid)."""
    crossed_m: NDArray[np.float64]
    """Junction distance driven to reach the link a vehicle is on (not a delay there)."""
    entered: NDArray[np.float64]
    arrived: NDArray[np.float64]
    speed_cap: NDArray[np.float64]
    """The speed a vehicle keeps under whatever the link allows (its driver follows speed
    advice); ``inf``: none."""


KernelState = tuple[ModelParameters, Road, Plans, Signals, Queues, Links, Demand, Vehicles]
"""``kernels.run_steps``'s arguments after its step count and start time, in order."""


def road_of(net: CompiledNetwork) -> Road:
    return Road(**{name: getattr(net, name) for name in Road._fields})


def plans_of(net: CompiledNetwork) -> Plans:
    return Plans(**{name: getattr(net, name) for name in Plans._fields})


def demand_of(trips: Trips) -> Demand:
    order = np.argsort(trips.depart, kind="stable").astype(np.int64)
    as_given = ("route_start", "route_links", "route_moves", "speed_factor", "emergency")
    urgent = np.flatnonzero(trips.emergency).astype(np.int64)
    standing = np.zeros(trips.count, dtype=np.bool_) if trips.standing is None else trips.standing
    fields = {name: getattr(trips, name) for name in as_given}
    return Demand(trips.depart, order, **fields, urgent=urgent, standing=standing)


def idle_signals(controllers: int) -> Signals:
    return Signals(
        override=np.full(controllers, -1, dtype=np.int64),
        allowed=np.zeros(controllers, dtype=np.int64),
        was_mask=np.zeros(controllers + 1, dtype=np.int64),
        green_since=np.zeros((controllers + 1) * 64, dtype=np.float64),
    )


def empty_queues(movements: int) -> Queues:
    return Queues(
        q_head=np.full(movements, -1, dtype=np.int64),
        q_tail=np.full(movements, -1, dtype=np.int64),
        q_len=np.zeros(movements, dtype=np.int32),
        q_count=np.zeros(movements, dtype=np.int32),
        q_urgent=np.zeros(movements, dtype=np.int32),
        next_departure=np.zeros(movements, dtype=np.float64),
        mv_next=np.zeros(movements, dtype=np.float64),
        last_cross=np.full(movements, -np.inf),
        foe_eta=np.zeros(movements, dtype=np.float64),
        foe_eta_at=np.full(movements, -np.inf),
        mv_inside=np.full(movements, -1, dtype=np.int64),
        q_inside=np.zeros(movements, dtype=np.int32),
    )


def empty_links(links: int) -> Links:
    return Links(
        link_count=np.zeros(links, dtype=np.int32),
        link_queued=np.zeros(links, dtype=np.int32),
        link_delay=np.zeros(links, dtype=np.float64),
        link_departures=np.zeros(links, dtype=np.int64),
        adv_count=np.zeros(links, dtype=np.int64),
        adv_occupied=np.zeros(links, dtype=np.int64),
        stop_count=np.zeros(links, dtype=np.int64),
        stop_occupied=np.zeros(links, dtype=np.int64),
        next_start=np.zeros(links, dtype=np.float64),
    )


def pending_vehicles(trips: Trips) -> Vehicles:
    """Every vehicle not yet departed."""
    n = trips.count
    return Vehicles(
        cursor=np.zeros(1, dtype=np.int64),
        waiting=np.zeros(n, dtype=np.int64),
        n_waiting=np.zeros(1, dtype=np.int64),
        active=np.zeros(n, dtype=np.int64),
        n_active=np.zeros(1, dtype=np.int64),
        hop_enter=np.full(trips.route_links.shape[0], np.nan),
        state=np.zeros(n, dtype=np.int8),
        hop=np.zeros(n, dtype=np.int32),
        position=np.zeros(n, dtype=np.float64),
        next_in_queue=np.full(n, -1, dtype=np.int64),
        queued_move=np.full(n, -1, dtype=np.int64),
        joined=np.zeros(n, dtype=np.float64),
        behind_loop=np.zeros(n, dtype=np.bool_),
        stops=np.zeros(n, dtype=np.int32),
        carry=np.zeros(n, dtype=np.float64),
        crossed_m=np.zeros(n, dtype=np.float64),
        entered=np.full(n, np.nan),
        arrived=np.full(n, np.nan),
        speed_cap=np.full(n, np.inf),
    )
