"""Small builders and invariant checks shared by the simulator tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from citybrain.simulator import kernels
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import Trips, fixed_route
from citybrain.simulator.engine import Simulation


def vehicles(
    net: CompiledNetwork,
    route: Sequence[str],
    departs: Iterable[float],
    *,
    speed_factor: float = 1.0,
) -> Trips:
    """Ordinary (unnamed, untracked) vehicles on one route, one per departure time."""
    parts = [
        fixed_route(net, route, depart_s=t, name="v", emergency=False, speed_factor=speed_factor)
        for t in departs
    ]
    return dataclasses.replace(Trips.concat(parts), names={})


def group_mask(net: CompiledNetwork, controller: int, groups: Iterable[str]) -> int:
    bits = net.group_bits[controller]
    return sum(1 << bits[g] for g in groups)


def all_groups_mask(net: CompiledNetwork, controller: int) -> int:
    return group_mask(net, controller, net.group_bits[controller])


def groups_in(net: CompiledNetwork, controller: int, mask: int) -> set[str]:
    return {g for g, bit in net.group_bits[controller].items() if (mask >> bit) & 1}


def normal_masks(net: CompiledNetwork, t: float, end_lag_s: float) -> NDArray[np.int64]:
    """What the kernel lets through at ``t`` when every controller runs its normal plan."""
    out = np.zeros(len(net.controller_ids), dtype=np.int64)
    kernels.signal_masks(
        t,
        net.ctl_cycle,
        net.ctl_offset,
        net.ctl_phase_start,
        net.ph_begin,
        net.ph_green,
        net.ph_mask,
        net.ph_clear,
        net.ph_keep,
        end_lag_s,
        np.full(len(net.controller_ids), -1, dtype=np.int64),
        out,
    )
    return out


def check_conservation(sim: Simulation) -> None:
    """Every vehicle is in exactly one place, and the per-link and per-queue tallies agree."""
    state = sim.state
    on_road = np.flatnonzero((state == kernels.DRIVING) | (state == kernels.QUEUED))
    n_active = int(sim.n_active[0])
    active = sim.active[:n_active]
    assert n_active == on_road.size
    assert np.unique(active).size == n_active, "a vehicle is listed twice as active"
    assert set(active.tolist()) == set(on_road.tolist())
    departed = int((state != kernels.PENDING).sum())
    arrived = int((state == kernels.ARRIVED).sum())
    assert departed == arrived + n_active
    assert int(sim.link_count.sum()) == n_active
    assert (sim.link_count >= 0).all()
    queued = int((state == kernels.QUEUED).sum())
    assert int(sim.q_len.sum()) == queued == int(sim.link_queued.sum())
    # released by the clock = waiting at their origin + in the network or arrived
    assert int(sim.cursor[0]) == int(sim.n_waiting[0]) + departed
    # each vehicle is counted on the link its route puts it on
    trips = sim.trips
    where = trips.route_links[trips.route_start[on_road] + sim.hop[on_road]]
    per_link = np.bincount(where, minlength=sim.net.links)
    assert np.array_equal(per_link, sim.link_count)
    # and on the queue of the movement it will take at the link's end (if any)
    moves = trips.route_moves[trips.route_start[on_road] + sim.hop[on_road]]
    queues = sim.net.mv_queue[moves[moves >= 0]]
    per_queue = np.bincount(queues, minlength=sim.net.movements)
    assert np.array_equal(per_queue, sim.q_count)
    assert (sim.q_count <= sim.net.qu_storage).all()
