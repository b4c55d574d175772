"""Numba kernels of the traffic engine: plain arrays in, state arrays updated in place.

The model is a mesoscopic spatial queue with individual vehicles. A vehicle drives its link at
its desired speed until it reaches the back of its movement's queue, joins that FIFO queue,
and leaves it at the stop line one saturation headway after the vehicle ahead, only while its
signal group may proceed (green, plus a short yellow end lag), only after the start-up lost
time once a green begins, and only if the next link has storage left (so queues spill back
upstream). Vehicles never overtake inside a queue: an emergency vehicle is faster on free road
but waits behind an unflushed queue like everyone else.

A vehicle that stopped loses ``v/2a + v/2b`` (braking and accelerating) on the link after the
stop line, the travel time a car-following model would show (its position there starts that
far behind the link's start, so positions below 0 mean "still accelerating away"); the stop
line itself is crossed at the queue's saturation headway.

Vehicle states: 0 not yet departed, 1 driving, 2 queued, 3 arrived.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from citybrain.models.network import JAM_SPACING_M

PENDING, DRIVING, QUEUED, ARRIVED = 0, 1, 2, 3
STOP_WAIT_S = 1.0
"""A vehicle that waits longer than this in a queue has stopped (counted once per queue)."""


@njit(cache=True)
def signal_masks(
    t: float,
    cycle: np.ndarray,
    offset: np.ndarray,
    phase_start: np.ndarray,
    begin: np.ndarray,
    green: np.ndarray,
    mask: np.ndarray,
    clear: np.ndarray,
    keep: np.ndarray,
    end_lag: float,
    override: np.ndarray,
    out: np.ndarray,
) -> None:
    """Per controller, the bit mask of groups whose vehicles may cross the stop line at ``t``:
    a phase's groups during its green and the yellow end lag, and groups green in the next
    phase too (overlaps, ``keep``) through the whole change interval ``clear``."""
    for c in range(cycle.shape[0]):
        if override[c] >= 0:
            out[c] = override[c]
            continue
        position = (t - offset[c]) % cycle[c]
        allowed = 0
        for k in range(phase_start[c], phase_start[c + 1]):
            since = position - begin[k]
            if since < 0.0:
                since += cycle[c]
            if since < green[k] + end_lag:
                allowed |= mask[k]
            elif since < green[k] + clear[k]:
                allowed |= keep[k]
        out[c] = allowed


@njit(cache=True)
def run_steps(
    steps: int,
    t0: float,
    dt: float,
    lost_time: float,
    end_lag: float,
    stop_loss: float,
    # network
    link_length: np.ndarray,
    link_lanes: np.ndarray,
    link_speed: np.ndarray,
    link_storage: np.ndarray,
    link_advance: np.ndarray,
    mv_from: np.ndarray,
    mv_to: np.ndarray,
    mv_controller: np.ndarray,
    mv_bit: np.ndarray,
    mv_lanes: np.ndarray,
    mv_headway: np.ndarray,
    ctl_cycle: np.ndarray,
    ctl_offset: np.ndarray,
    ctl_phase_start: np.ndarray,
    ph_begin: np.ndarray,
    ph_green: np.ndarray,
    ph_mask: np.ndarray,
    ph_clear: np.ndarray,
    ph_keep: np.ndarray,
    override: np.ndarray,
    allowed: np.ndarray,
    # movement queues
    q_head: np.ndarray,
    q_tail: np.ndarray,
    q_len: np.ndarray,
    next_departure: np.ndarray,
    was_allowed: np.ndarray,
    # link state and detectors
    link_count: np.ndarray,
    link_queued: np.ndarray,
    link_delay: np.ndarray,
    link_departures: np.ndarray,
    adv_count: np.ndarray,
    adv_occupied: np.ndarray,
    stop_count: np.ndarray,
    stop_occupied: np.ndarray,
    # vehicles
    depart: np.ndarray,
    order: np.ndarray,
    cursor: np.ndarray,
    waiting: np.ndarray,
    n_waiting: np.ndarray,
    active: np.ndarray,
    n_active: np.ndarray,
    route_start: np.ndarray,
    route_len: np.ndarray,
    route_links: np.ndarray,
    route_moves: np.ndarray,
    hop_enter: np.ndarray,
    speed_factor: np.ndarray,
    state: np.ndarray,
    hop: np.ndarray,
    position: np.ndarray,
    next_in_queue: np.ndarray,
    joined: np.ndarray,
    behind_loop: np.ndarray,
    stops: np.ndarray,
    entered: np.ndarray,
    arrived: np.ndarray,
) -> float:
    """Advance ``steps`` steps of ``dt`` from ``t0``; returns the time reached."""
    t = t0
    n_links = link_length.shape[0]
    stop_busy = np.zeros(n_links, dtype=np.bool_)
    for _ in range(steps):
        signal_masks(
            t,
            ctl_cycle,
            ctl_offset,
            ctl_phase_start,
            ph_begin,
            ph_green,
            ph_mask,
            ph_clear,
            ph_keep,
            end_lag,
            override,
            allowed,
        )
        stop_busy[:] = False
        # 1. drive: every active vehicle that is not queued moves; reaching the back of its
        #    movement's queue it joins it, reaching the end of its last link it arrives.
        kept = 0
        for i in range(n_active[0]):
            v = active[i]
            link = route_links[route_start[v] + hop[v]]
            if state[v] == QUEUED:
                active[kept] = v
                kept += 1
                continue
            move = route_moves[route_start[v] + hop[v]]
            speed = link_speed[link] * speed_factor[v]
            before = position[v]
            after = before + speed * dt
            if move < 0:
                if before < link_advance[link] <= after:
                    adv_count[link] += 1
                if after >= link_length[link]:
                    state[v] = ARRIVED
                    arrived[v] = t + (link_length[link] - before) / speed
                    link_count[link] -= 1
                    link_delay[link] += (
                        arrived[v]
                        - hop_enter[route_start[v] + hop[v]]
                        - (link_length[link] / link_speed[link])
                    )
                    link_departures[link] += 1
                    continue
                position[v] = after
            else:
                back = link_length[link] - q_len[move] * JAM_SPACING_M / mv_lanes[move]
                reached = min(after, max(back, before))
                if before < link_advance[link] <= reached:
                    adv_count[link] += 1
                if after >= back:
                    position[v] = max(back, before)
                    # joining the queue behind the advance loop: it passes the loop in the queue
                    behind_loop[v] = position[v] < link_advance[link]
                    joined[v] = t + max(0.0, back - before) / speed
                    state[v] = QUEUED
                    next_in_queue[v] = -1
                    if q_tail[move] >= 0:
                        next_in_queue[q_tail[move]] = v
                    else:
                        q_head[move] = v
                    q_tail[move] = v
                    q_len[move] += 1
                    link_queued[link] += 1
                else:
                    position[v] = after
            active[kept] = v
            kept += 1
        n_active[0] = kept
        # 2. discharge: queues whose group may proceed send vehicles over the stop line at
        #    the saturation headway, after the lost time of a new green, into free storage.
        horizon = t + dt
        for m in range(mv_from.shape[0]):
            c = mv_controller[m]
            go = True if c < 0 else ((allowed[c] >> mv_bit[m]) & 1) == 1
            if not go:
                was_allowed[m] = False
                continue
            if not was_allowed[m]:
                was_allowed[m] = True
                next_departure[m] = max(next_departure[m], t + lost_time)
            source = mv_from[m]
            target = mv_to[m]
            while q_head[m] >= 0 and next_departure[m] < horizon:
                if link_count[target] >= link_storage[target]:
                    break
                v = q_head[m]
                leave = max(next_departure[m], joined[v])
                if leave >= horizon:
                    break
                q_head[m] = next_in_queue[v]
                if q_head[m] < 0:
                    q_tail[m] = -1
                q_len[m] -= 1
                link_queued[source] -= 1
                link_count[source] -= 1
                link_count[target] += 1
                base = route_start[v]
                link_delay[source] += (
                    leave - hop_enter[base + hop[v]] - (link_length[source] / link_speed[source])
                )
                link_departures[source] += 1
                stop_count[source] += 1
                stop_busy[source] = True
                stopped = leave - joined[v] > STOP_WAIT_S
                if stopped:
                    stops[v] += 1
                if behind_loop[v]:
                    adv_count[source] += 1
                    behind_loop[v] = False
                hop[v] += 1
                hop_enter[base + hop[v]] = leave
                # the rest of the step is driven on the new link, less the time a stopped
                # vehicle loses braking to a stop and accelerating back to its speed
                speed = link_speed[target] * speed_factor[v]
                lost = stop_loss * speed if stopped else 0.0
                position[v] = min(speed * (horizon - leave - lost), link_length[target])
                state[v] = DRIVING
                next_departure[m] = leave + mv_headway[m]
            if next_departure[m] < t:
                next_departure[m] = t
        # 3. departures: vehicles due now enter their first link if it has room, else wait.
        while cursor[0] < order.shape[0] and depart[order[cursor[0]]] < horizon:
            waiting[n_waiting[0]] = order[cursor[0]]
            n_waiting[0] += 1
            cursor[0] += 1
        still = 0
        for i in range(n_waiting[0]):
            v = waiting[i]
            first = route_links[route_start[v]]
            if link_count[first] < link_storage[first]:
                link_count[first] += 1
                state[v] = DRIVING
                hop[v] = 0
                entered[v] = max(depart[v], t)
                position[v] = min(
                    link_speed[first] * speed_factor[v] * (horizon - entered[v]), link_length[first]
                )
                hop_enter[route_start[v]] = entered[v]
                active[n_active[0]] = v
                n_active[0] += 1
            else:
                waiting[still] = v
                still += 1
        n_waiting[0] = still
        # 4. detectors: the stop bar is occupied while a queue stands or a vehicle crosses;
        #    the advance loop while the queue reaches back over it.
        for link in range(n_links):
            if link_queued[link] > 0 or stop_busy[link]:
                stop_occupied[link] += 1
        for m in range(mv_from.shape[0]):
            source = mv_from[m]
            back = link_length[source] - q_len[m] * JAM_SPACING_M / mv_lanes[m]
            if q_len[m] > 0 and back <= link_advance[source]:
                adv_occupied[source] += 1
        t += dt
    return t


@njit(cache=True)
def random_walk_routes(
    seed: int,
    origins: np.ndarray,
    max_hops: int,
    turn_weights: np.ndarray,
    out_start: np.ndarray,
    mv_to: np.ndarray,
    mv_turn: np.ndarray,
    route_links: np.ndarray,
    route_moves: np.ndarray,
    route_len: np.ndarray,
) -> None:
    """Routes by turning ratios: from each origin link, pick a movement at every intersection
    with probability proportional to ``turn_weights[turn]`` until a link with no way on (the
    network's edge) or ``max_hops`` links. ``route_links`` rows are ``max_hops`` wide."""
    np.random.seed(seed)
    for r in range(origins.shape[0]):
        link = origins[r]
        length = 0
        while True:
            route_links[r, length] = link
            length += 1
            first, last = out_start[link], out_start[link + 1]
            if length == max_hops or first == last:
                route_moves[r, length - 1] = -1
                break
            total = 0.0
            for m in range(first, last):
                total += turn_weights[mv_turn[m]]
            if total <= 0.0:
                route_moves[r, length - 1] = -1
                break
            pick = np.random.random() * total
            chosen = last - 1
            for m in range(first, last):
                pick -= turn_weights[mv_turn[m]]
                if pick < 0.0:
                    chosen = m
                    break
            route_moves[r, length - 1] = chosen
            link = mv_to[chosen]
        route_len[r] = length
