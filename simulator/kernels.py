"""Numba kernels of the traffic engine: plain arrays in, state arrays updated in place.

The model is a mesoscopic spatial queue with individual vehicles. A vehicle drives its link at
its desired speed until it reaches the back of its queue, joins that FIFO queue, and leaves it
at the stop line one saturation headway after the vehicle ahead, only while its signal group
may proceed (green, plus a short yellow end lag), only after the start-up lost time once a
green begins, and only if the next link has storage left (so queues spill back upstream).

Queues are lanes, not turns: movements of a link that share a lane share one queue (a lane is
one file of cars whatever their turn), discharging at the saturation flow of all its lanes
together and of each movement's own lanes. A vehicle that may not go (red, lost time, its
lanes busy with the one before it, or its next link full) holds up those behind it whose
lanes are all taken by held vehicles; the others pass it in a lane of their own. So a car
waiting to turn left on a one-lane street holds everyone behind it, and on a street with a
left-turn lane it holds only the left turners. Vehicles of one movement never overtake each
other: an emergency vehicle is faster on free road but waits behind an unflushed queue for
its own turn like everyone else; vehicles held for another turn make way for it (they pull
aside, as drivers must for blue lights).

A permitted turn (a left or U-turn whose signal lets the opposing traffic go at the same
time: SUMO's ``g``) gives way: it crosses only if the last vehicle of the movements it yields
to (``mv_yield``) crossed at least ``FOE_CLEAR_S`` before and the next (standing ready at its
stop line, or driving up to it) is at least ``CRITICAL_GAP_S - FOE_CLEAR_S`` away; waiting,
it holds those behind it in its lanes. Unsignalized junctions have no priority: all go.

A vehicle that stopped loses ``v/2a + v/2b`` (braking and accelerating) on the link after the
stop line, the travel time a car-following model would show (its position there starts that
far behind the link's start, so positions below 0 mean "still accelerating away"); the stop
line itself is crossed at the queue's saturation headway. On a link shorter than the
acceleration distance it spends only what a start from a standstill takes and pays the rest
on the links after it, so a stub between two parts of a junction is not held for seconds.
Crossing a junction to the next link takes its ``mv_junction_m`` at that link's speed (also
as a start behind the link's start). Every lane stores at least the vehicle at its stop line,
and a queue's lanes store only their share of the link: a vehicle enters a link only if the
link has room and so have the lanes of the movement it will take at its end.

Vehicle states: 0 not yet departed, 1 driving, 2 queued, 3 arrived.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from citybrain.models.network import JAM_SPACING_M

PENDING, DRIVING, QUEUED, ARRIVED = 0, 1, 2, 3
STOP_WAIT_S = 1.0
"""A vehicle that waits longer than this in a queue has stopped (counted once per queue)."""
CRITICAL_GAP_S = 4.5
"""A permitted turn needs this gap in the traffic it gives way to (HCM's critical headway for
a permitted left turn at a signal)."""
FOE_CLEAR_S = 1.0
"""Of that gap, the time the vehicle it waited for takes to clear its path."""
MAX_PASSING_SCAN = 64
"""Vehicles looked at per queue and step past held ones (bounds a step's work on long queues)."""


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
def _gap(
    m: int,
    leave: float,
    t: float,
    yield_start: np.ndarray,
    yield_to: np.ndarray,
    controller: np.ndarray,
    bit: np.ndarray,
    allowed: np.ndarray,
    mv_to: np.ndarray,
    link_count: np.ndarray,
    link_storage: np.ndarray,
    mv_queue: np.ndarray,
    q_head: np.ndarray,
    queued_move: np.ndarray,
    next_departure: np.ndarray,
    mv_next: np.ndarray,
    joined: np.ndarray,
    last_cross: np.ndarray,
    foe_eta: np.ndarray,
    foe_eta_at: np.ndarray,
) -> bool:
    """Whether movement ``m`` may cross at ``leave``: every movement it gives way to that may
    go now is clear of it, its last vehicle ``FOE_CLEAR_S`` gone and its next (standing at
    the stop line ready to go, or driving up to it) ``CRITICAL_GAP_S - FOE_CLEAR_S`` away."""
    ahead = leave + CRITICAL_GAP_S - FOE_CLEAR_S
    for k in range(yield_start[m], yield_start[m + 1]):
        f = yield_to[k]
        c = controller[f]
        if c >= 0 and ((allowed[c] >> bit[f]) & 1) == 0:
            continue
        if leave - last_cross[f] < FOE_CLEAR_S:
            return False
        if foe_eta_at[f] == t and foe_eta[f] < ahead:
            return False
        head = q_head[mv_queue[f]]
        if (
            head >= 0
            and queued_move[head] == f
            and link_count[mv_to[f]] < link_storage[mv_to[f]]
            and max(next_departure[mv_queue[f]], mv_next[f], joined[head]) < ahead
        ):
            return False
    return True


@njit(cache=True)
def run_steps(
    steps: int,
    t0: float,
    dt: float,
    lost_time: float,
    end_lag: float,
    stop_loss: float,
    acceleration: float,
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
    mv_headway: np.ndarray,
    mv_lane_mask: np.ndarray,
    mv_queue: np.ndarray,
    qu_lanes: np.ndarray,
    qu_mask: np.ndarray,
    qu_headway: np.ndarray,
    qu_storage: np.ndarray,
    qu_single: np.ndarray,
    qu_signal: np.ndarray,
    mv_yield_start: np.ndarray,
    mv_yield: np.ndarray,
    mv_is_foe: np.ndarray,
    mv_junction_m: np.ndarray,
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
    # queues (numbered like ``mv_queue``) and movements
    q_head: np.ndarray,
    q_tail: np.ndarray,
    q_len: np.ndarray,
    q_count: np.ndarray,
    q_urgent: np.ndarray,
    next_departure: np.ndarray,
    mv_next: np.ndarray,
    last_cross: np.ndarray,
    foe_eta: np.ndarray,
    foe_eta_at: np.ndarray,
    was_mask: np.ndarray,
    green_since: np.ndarray,
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
    emergency: np.ndarray,
    state: np.ndarray,
    hop: np.ndarray,
    position: np.ndarray,
    next_in_queue: np.ndarray,
    queued_move: np.ndarray,
    joined: np.ndarray,
    behind_loop: np.ndarray,
    stops: np.ndarray,
    carry: np.ndarray,
    crossed_m: np.ndarray,
    entered: np.ndarray,
    arrived: np.ndarray,
) -> float:
    """Advance ``steps`` steps of ``dt`` from ``t0``; returns the time reached."""
    t = t0
    n_links = link_length.shape[0]
    stop_busy = np.zeros(n_links, dtype=np.bool_)
    yields = mv_yield.shape[0] > 0  # any permitted turn at all
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
                        - (link_length[link] + crossed_m[v]) / link_speed[link]
                    )
                    link_departures[link] += 1
                    continue
                position[v] = after
            else:
                q = mv_queue[move]
                back = link_length[link] - q_len[q] * JAM_SPACING_M / qu_lanes[q]
                reached = min(after, max(back, before))
                if before < link_advance[link] <= reached:
                    adv_count[link] += 1
                if after >= back:
                    position[v] = max(back, before)
                    # joining the queue behind the advance loop: it passes the loop in the queue
                    behind_loop[v] = position[v] < link_advance[link]
                    joined[v] = t + max(0.0, back - before) / speed
                    state[v] = QUEUED
                    queued_move[v] = move
                    next_in_queue[v] = -1
                    if q_tail[q] >= 0:
                        next_in_queue[q_tail[q]] = v
                    else:
                        q_head[q] = v
                    q_tail[q] = v
                    q_len[q] += 1
                    if emergency[v]:
                        q_urgent[q] += 1
                    link_queued[link] += 1
                else:
                    position[v] = after
                    if yields and mv_is_foe[move]:
                        # when it will reach its stop line: turns giving way to it look ahead
                        eta = t + dt + (link_length[link] - after) / speed
                        if foe_eta_at[move] != t or eta < foe_eta[move]:
                            foe_eta[move] = eta
                            foe_eta_at[move] = t
            active[kept] = v
            kept += 1
        n_active[0] = kept
        # 2. discharge: queues send vehicles whose group may proceed over the stop line at the
        #    saturation headway of the queue's lanes and of the movement's own, after the lost
        #    time of its green, into free storage; held vehicles hold those behind them in
        #    their lanes (module docstring). First note when each group's green began.
        horizon = t + dt
        free = ctl_cycle.shape[0]
        for c in range(free + 1):
            now_mask = allowed[c] if c < free else 1
            turned = now_mask & ~was_mask[c]
            while turned != 0:
                low = turned & -turned
                bit = 0
                while bit < 63 and (low >> bit) != 1:
                    bit += 1
                green_since[c * 64 + bit] = t
                turned ^= low
            was_mask[c] = now_mask
        for q in range(mv_from.shape[0]):
            if mv_queue[q] != q or q_head[q] < 0:
                continue
            # a queue that cannot send anyone this step is passed over without reading its
            # vehicles: all its movements red, or its only movement's next link full
            shared = qu_signal[q]
            if shared >= 0:
                c = mv_controller[shared]
                if c >= 0 and ((allowed[c] >> mv_bit[shared]) & 1) == 0:
                    continue
            only = qu_single[q]
            if only >= 0 and link_count[mv_to[only]] >= link_storage[mv_to[only]]:
                continue
            if next_departure[q] < t:
                next_departure[q] = t
            source = mv_from[q]
            held = 0
            held_moves = 0  # bit (m - q) set: a vehicle of movement m is held
            scanned = 0
            previous = -1
            v = q_head[q]
            while v >= 0 and next_departure[q] < horizon and scanned < MAX_PASSING_SCAN:
                if joined[v] >= horizon:
                    break
                scanned += 1
                m = only if only >= 0 else queued_move[v]
                target = mv_to[m]
                slot = np.int64(1) << min(m - q, 62)
                # an emergency vehicle is let by those held for another turn (they make way);
                # one held ahead of it for its own turn it waits behind like anyone
                if (mv_lane_mask[m] & ~held == 0) if not emergency[v] else (held_moves & slot):
                    held_moves |= slot
                    previous = v
                    v = next_in_queue[v]
                    continue
                c = mv_controller[m]
                if c >= 0 and ((allowed[c] >> mv_bit[m]) & 1) == 0:
                    go_from = horizon  # red
                elif c >= 0:
                    go_from = max(mv_next[m], green_since[c * 64 + mv_bit[m]] + lost_time)
                else:
                    go_from = max(mv_next[m], green_since[free * 64] + lost_time)
                base = route_start[v]
                then = route_moves[base + hop[v] + 1]  # its movement on the next link
                lanes_full = then >= 0 and q_count[mv_queue[then]] >= qu_storage[mv_queue[then]]
                if go_from >= horizon or link_count[target] >= link_storage[target] or lanes_full:
                    # red, still in the lost time of its green, its own lanes busy with the
                    # vehicle before it, or no room on the next link or in the lanes it will
                    # take there: held, like those behind it in its lanes. Held only for the
                    # lanes it will take next, it waits in one of its several lanes (drivers
                    # pick their lane for the turn after): the others may pass it.
                    mask = mv_lane_mask[m]
                    if not (
                        lanes_full
                        and go_from < horizon
                        and link_count[target] < link_storage[target]
                        and mask & (mask - 1) != 0
                    ):
                        held |= mask
                    held_moves |= slot
                    if held == qu_mask[q] and q_urgent[q] == 0:
                        break
                    previous = v
                    v = next_in_queue[v]
                    continue
                leave = max(next_departure[q], joined[v], go_from)
                if leave >= horizon:
                    break
                if yields and mv_yield_start[m] < mv_yield_start[m + 1] and not _gap(
                    m, leave, t, mv_yield_start, mv_yield, mv_controller, mv_bit, allowed,
                    mv_to, link_count, link_storage, mv_queue, q_head, queued_move,
                    next_departure, mv_next, joined, last_cross, foe_eta, foe_eta_at,
                ):  # fmt: skip
                    # a permitted turn waiting for a gap in the traffic it gives way to
                    held |= mv_lane_mask[m]
                    held_moves |= slot
                    if held == qu_mask[q] and q_urgent[q] == 0:
                        break
                    previous = v
                    v = next_in_queue[v]
                    continue
                following = next_in_queue[v]
                if previous >= 0:
                    next_in_queue[previous] = following
                else:
                    q_head[q] = following
                if q_tail[q] == v:
                    q_tail[q] = previous
                q_len[q] -= 1
                if emergency[v]:
                    q_urgent[q] -= 1
                link_queued[source] -= 1
                link_count[source] -= 1
                link_count[target] += 1
                q_count[q] -= 1
                if then >= 0:
                    q_count[mv_queue[then]] += 1
                link_delay[source] += (
                    leave
                    - hop_enter[base + hop[v]]
                    - (link_length[source] + crossed_m[v]) / link_speed[source]
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
                lost = carry[v] + (stop_loss * speed if stopped else 0.0)
                carry[v] = 0.0
                if lost > 0.0 and route_moves[base + hop[v]] >= 0:
                    # on a link shorter than the acceleration distance the vehicle is gone
                    # once a start from a standstill would have crossed it: the rest of the
                    # loss is paid on the links after it, not charged as time on this one
                    length = link_length[target]
                    if length < speed * speed / (2.0 * acceleration):
                        here = np.sqrt(2.0 * length / acceleration) - length / speed
                        if lost > here:
                            carry[v] = lost - here
                            lost = here
                # and the way across the junction before the link begins
                crossed_m[v] = mv_junction_m[m]
                position[v] = min(
                    speed * (horizon - leave - lost) - mv_junction_m[m], link_length[target]
                )
                state[v] = DRIVING
                next_departure[q] = leave + qu_headway[q]
                mv_next[m] = leave + mv_headway[m]
                last_cross[m] = leave
                v = following
        # 3. departures: vehicles due now enter their first link if it has room, else wait.
        while cursor[0] < order.shape[0] and depart[order[cursor[0]]] < horizon:
            waiting[n_waiting[0]] = order[cursor[0]]
            n_waiting[0] += 1
            cursor[0] += 1
        still = 0
        for i in range(n_waiting[0]):
            v = waiting[i]
            first = route_links[route_start[v]]
            then = route_moves[route_start[v]]
            if link_count[first] < link_storage[first] and (
                then < 0 or q_count[mv_queue[then]] < qu_storage[mv_queue[then]]
            ):
                link_count[first] += 1
                if then >= 0:
                    q_count[mv_queue[then]] += 1
                crossed_m[v] = 0.0
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
        for q in range(mv_from.shape[0]):
            if q_len[q] == 0:
                continue
            source = mv_from[q]
            back = link_length[source] - q_len[q] * JAM_SPACING_M / qu_lanes[q]
            if back <= link_advance[source]:
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
