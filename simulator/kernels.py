"""Numba kernels of the traffic engine: plain arrays in, state arrays updated in place.

The model is a mesoscopic spatial queue with individual vehicles. A vehicle drives its link at
its desired speed (the link's times its factor, kept under any advised speed it follows, less
what its driver dawdles: ``ModelParameters.dawdle``) until it reaches the back of its queue,
joins that FIFO queue, and leaves it at the stop line one saturation headway after the vehicle
ahead, only while its signal group may proceed (green, plus a short yellow end lag), only after
the start-up lost time once a green begins, and only if the next link has storage left (so
queues spill back upstream).

Queues are lanes, not turns: movements of a link that share a lane share one queue (a lane is
one file of cars whatever their turn), discharging at the saturation flow of all its lanes
together and of each movement's own lanes; a turn the junction slows (``mv_slower``) leaves a
longer headway behind it. A vehicle that may not go (red, lost time, its
lanes busy with the one before it, or its next link full) holds up those behind it whose
lanes are all taken by held vehicles; the others pass it in a lane of their own. So a car
waiting to turn left on a one-lane street holds everyone behind it, and on a street with a
left-turn lane it holds only the left turners. Vehicles of one movement never overtake each
other: an emergency vehicle is faster on free road but waits behind an unflushed queue for
its own turn like everyone else; vehicles held for another turn make way for it (they pull
aside, as drivers must for blue lights).

Driving vehicles pass one another freely, but for emergency vehicles, which are faster than
everyone: one that has at least as many vehicles as its link has lanes driving within
``FOLLOW_M`` ahead finds every lane taken (one by each of the nearest) and follows the fastest
of those (nobody makes way on a moving road; in SUMO an ambulance lost 110-155 s a trip this
way against the green wave). Who is ahead is read as each step begins.

A permitted turn (a left or U-turn whose signal lets the opposing traffic go at the same time:
SUMO's ``g``) gives way: it crosses only if the last vehicle of the movements it yields to
(``mv_yield``) crossed at least ``FOE_CLEAR_S`` before and the next (standing ready at its stop
line, or driving up to it) is at least ``CRITICAL_GAP_S - FOE_CLEAR_S`` away (one standing at
its line whose next lanes are full is not coming). The first to wait waits inside the junction
(``Queues.mv_inside``: it has crossed its stop line, taking its lanes' headway, and holds no
lane), and turns once the gap comes or the streams it waits for stop (their last vehicle
``FOE_CLEAR_S`` gone), whatever its own signal shows by then; the next waits at the line,
holding those behind it in its lanes. Unsignalized junctions have no priority: all go.

A vehicle that stopped loses ``v/2a`` (accelerating) on the link after the stop line, plus the
part of its braking ``v/2b`` that its wait did not absorb (a braking vehicle reaches its place
in the queue later and waits that much less: a wait at red longer than the braking costs no
more than the wait), the travel time a car-following model would show (its position there
starts that far behind the link's start, so positions below 0 mean "still accelerating
away"); the stop line itself is crossed at the queue's saturation headway. A vehicle that
starts from a standstill (``Demand.standing``: SUMO's route files' default) loses ``v/2a`` on
its first link, and enters it only once the one that started there before it has cleared a
car length (``start_clear``; SUMO inserts them one after another in the edge's first lane).
On a link shorter than the acceleration distance a start spends only what a start from a
standstill takes and pays the rest on the links after it, so a stub between two parts of a
junction is not held for seconds.
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
from citybrain.simulator.engine_state import (
    Demand,
    Links,
    ModelParameters,
    Plans,
    Queues,
    Road,
    Signals,
    Vehicles,
)

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
FOLLOW_M = 70.0
"""An emergency vehicle that has a vehicle in every lane of its link within this distance
ahead cannot pass them: a lane change at 1.3x traffic's speed needs a safe gap of about 40 m
to the car ahead in the other lane, and room to close on it (about 4 s at its speed; against
SUMO's ambulance on the arterial, 50 m and 70 m: ``benchmarks/README.md``)."""


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
def _desired_speed(
    link: int, v: int, road: Road, demand: Demand, vehicles: Vehicles, model: ModelParameters
) -> float:
    """The speed vehicle ``v`` drives ``link`` at: the link's times its factor, under any
    speed cap it keeps to (advice its driver follows), less what its driver dawdles (never
    more than half of it)."""
    desired = min(road.link_speed[link] * demand.speed_factor[v], vehicles.speed_cap[v])
    return float(max(desired - model.dawdle, 0.5 * desired))


@njit(cache=True)
def _followed_speed(
    v: int, road: Road, demand: Demand, vehicles: Vehicles, model: ModelParameters
) -> float:
    """The speed driving emergency vehicle ``v`` is held to by traffic it cannot pass: with
    at least as many vehicles as its link has lanes driving within ``FOLLOW_M`` ahead of it,
    every lane is taken (one by each of the nearest), and it follows the fastest of those
    nearest; ``inf`` where it is free."""
    link = demand.route_links[demand.route_start[v] + vehicles.hop[v]]
    here = vehicles.position[v]
    lanes = road.link_lanes[link]
    gaps = np.full(lanes, np.inf)  # the nearest ``lanes`` vehicles ahead, and their speeds
    speeds = np.zeros(lanes)
    for i in range(vehicles.n_active[0]):
        u = vehicles.active[i]
        if u == v or vehicles.state[u] != DRIVING:
            continue
        if demand.route_links[demand.route_start[u] + vehicles.hop[u]] != link:
            continue
        gap = vehicles.position[u] - here
        farthest = np.argmax(gaps)
        if 0.0 < gap <= FOLLOW_M and gap < gaps[farthest]:
            gaps[farthest] = gap
            speeds[farthest] = _desired_speed(link, u, road, demand, vehicles, model)
    return speeds.max() if np.isfinite(gaps).all() else np.inf


@njit(cache=True)
def _stop_loss(speed: float, waited: float, model: ModelParameters) -> float:
    """What a stop costs on the link after it: pulling away to ``speed``, and the braking
    the wait did not absorb (braking, a vehicle reaches its place in the queue that much
    later, and a wait at least that long only gets shorter)."""
    braking = speed / (2.0 * model.deceleration)
    return speed / (2.0 * model.acceleration) + max(0.0, braking - waited)


@njit(cache=True)
def _paid_here(lost: float, length: float, speed: float, model: ModelParameters) -> float:
    """Of the ``lost`` time a start costs, what a link of ``length`` takes: all of it, but
    on a link shorter than the acceleration distance only what a standing start takes to
    cross it (the rest is paid on the links after it)."""
    if length < speed * speed / (2.0 * model.acceleration):
        return min(lost, float(np.sqrt(2.0 * length / model.acceleration)) - length / speed)
    return lost


@njit(cache=True)
def _room_ahead(v: int, road: Road, demand: Demand, queues: Queues, vehicles: Vehicles) -> bool:
    """Whether the lanes queued vehicle ``v`` takes on its next link have room for it (its
    movement there; none at the end of its route)."""
    then = demand.route_moves[demand.route_start[v] + vehicles.hop[v] + 1]
    return bool(
        then < 0 or queues.q_count[road.mv_queue[then]] < road.qu_storage[road.mv_queue[then]]
    )


@njit(cache=True)
def _gap(
    m: int,
    leave: float,
    t: float,
    road: Road,
    demand: Demand,
    signals: Signals,
    queues: Queues,
    links: Links,
    vehicles: Vehicles,
) -> bool:
    """Whether movement ``m`` may cross at ``leave``: every movement it gives way to is clear
    of it, its last vehicle ``FOE_CLEAR_S`` gone (also one whose signal has just ended) and,
    where it may go now, its next (standing at the stop line ready to go, or driving up to
    it) ``CRITICAL_GAP_S - FOE_CLEAR_S`` away. A foe held at its line because the lanes it
    takes next are full is not coming: counted as coming, two permitted turns on short links
    each waited for the other's stuck head for good."""
    ahead = leave + CRITICAL_GAP_S - FOE_CLEAR_S
    for k in range(road.mv_yield_start[m], road.mv_yield_start[m + 1]):
        f = road.mv_yield[k]
        if leave - queues.last_cross[f] < FOE_CLEAR_S:
            return False
        c = road.mv_controller[f]
        if c >= 0 and ((signals.allowed[c] >> road.mv_bit[f]) & 1) == 0:
            continue
        if queues.foe_eta_at[f] == t and queues.foe_eta[f] < ahead:
            return False
        head = queues.q_head[road.mv_queue[f]]
        target = road.mv_to[f]
        if (
            head >= 0
            and vehicles.queued_move[head] == f
            and links.link_count[target] < road.link_storage[target]
            and _room_ahead(head, road, demand, queues, vehicles)
            and max(
                queues.next_departure[road.mv_queue[f]], queues.mv_next[f], vehicles.joined[head]
            )
            < ahead
        ):
            return False
    return True


@njit(cache=True)
def run_steps(
    steps: int,
    t0: float,
    model: ModelParameters,
    road: Road,
    plans: Plans,
    signals: Signals,
    queues: Queues,
    links: Links,
    demand: Demand,
    vehicles: Vehicles,
) -> float:
    """Advance ``steps`` steps of ``model.dt`` from ``t0``; returns the time reached.

    Each structure may come as a plain tuple of its fields in order (``tuple(road)``): Numba
    types a plain tuple of arrays in its C dispatcher but a named one in Python, which
    doubled the cost of a call (measured: 24 against 12 us, about what a one-step call costs
    on the arterial); naming them again here costs about 3 us a call. The four stages stay in
    this one loop: as functions of their own, each taking the structures, they cost 1.8 us a
    step in calls alone (measured on an empty network: 0.16 against 1.9 us a step)."""
    model = ModelParameters(*model)
    road = Road(*road)
    plans = Plans(*plans)
    signals = Signals(*signals)
    queues = Queues(*queues)
    links = Links(*links)
    demand = Demand(*demand)
    vehicles = Vehicles(*vehicles)
    t = t0
    n_links = road.link_length.shape[0]
    stop_busy = np.zeros(n_links, dtype=np.bool_)
    yields = road.mv_yield.shape[0] > 0  # any permitted turn at all
    followed = np.full(demand.urgent.shape[0], np.inf)
    for _ in range(steps):
        # emergency vehicles held behind traffic filling every lane, as the step begins
        for e in range(demand.urgent.shape[0]):
            v = demand.urgent[e]
            driving = vehicles.state[v] == DRIVING
            followed[e] = _followed_speed(v, road, demand, vehicles, model) if driving else np.inf
        signal_masks(
            t,
            plans.ctl_cycle,
            plans.ctl_offset,
            plans.ctl_phase_start,
            plans.ph_begin,
            plans.ph_green,
            plans.ph_mask,
            plans.ph_clear,
            plans.ph_keep,
            model.end_lag,
            signals.override,
            signals.allowed,
        )
        stop_busy[:] = False
        # 1. drive: every active vehicle that is not queued moves; reaching the back of its
        #    movement's queue it joins it, reaching the end of its last link it arrives.
        kept = 0
        for i in range(vehicles.n_active[0]):
            v = vehicles.active[i]
            link = demand.route_links[demand.route_start[v] + vehicles.hop[v]]
            if vehicles.state[v] == QUEUED:
                vehicles.active[kept] = v
                kept += 1
                continue
            move = demand.route_moves[demand.route_start[v] + vehicles.hop[v]]
            speed = _desired_speed(link, v, road, demand, vehicles, model)
            if demand.emergency[v]:
                for e in range(demand.urgent.shape[0]):
                    if demand.urgent[e] == v:
                        speed = min(speed, followed[e])
            before = vehicles.position[v]
            after = before + speed * model.dt
            if move < 0:
                if before < road.link_advance[link] <= after:
                    links.adv_count[link] += 1
                if after >= road.link_length[link]:
                    vehicles.state[v] = ARRIVED
                    vehicles.arrived[v] = t + (road.link_length[link] - before) / speed
                    links.link_count[link] -= 1
                    links.link_delay[link] += (
                        vehicles.arrived[v]
                        - vehicles.hop_enter[demand.route_start[v] + vehicles.hop[v]]
                        - (road.link_length[link] + vehicles.crossed_m[v]) / road.link_speed[link]
                    )
                    links.link_departures[link] += 1
                    continue
                vehicles.position[v] = after
            else:
                q = road.mv_queue[move]
                back = road.link_length[link] - queues.q_len[q] * JAM_SPACING_M / road.qu_lanes[q]
                reached = min(after, max(back, before))
                if before < road.link_advance[link] <= reached:
                    links.adv_count[link] += 1
                if after >= back:
                    vehicles.position[v] = max(back, before)
                    # joining the queue behind the advance loop: it passes the loop in the queue
                    vehicles.behind_loop[v] = vehicles.position[v] < road.link_advance[link]
                    vehicles.joined[v] = t + max(0.0, back - before) / speed
                    vehicles.state[v] = QUEUED
                    vehicles.queued_move[v] = move
                    vehicles.next_in_queue[v] = -1
                    if queues.q_tail[q] >= 0:
                        vehicles.next_in_queue[queues.q_tail[q]] = v
                    else:
                        queues.q_head[q] = v
                    queues.q_tail[q] = v
                    queues.q_len[q] += 1
                    if demand.emergency[v]:
                        queues.q_urgent[q] += 1
                    links.link_queued[link] += 1
                else:
                    vehicles.position[v] = after
                    if yields and road.mv_is_foe[move]:
                        # when it will reach its stop line: turns giving way to it look ahead
                        eta = t + model.dt + (road.link_length[link] - after) / speed
                        if queues.foe_eta_at[move] != t or eta < queues.foe_eta[move]:
                            queues.foe_eta[move] = eta
                            queues.foe_eta_at[move] = t
            vehicles.active[kept] = v
            kept += 1
        vehicles.n_active[0] = kept
        # 2. discharge: queues send vehicles whose group may proceed over the stop line at the
        #    saturation headway of the queue's lanes and of the movement's own, after the lost
        #    time of its green, into free storage; held vehicles hold those behind them in
        #    their lanes (module docstring). First note when each group's green began.
        horizon = t + model.dt
        free = plans.ctl_cycle.shape[0]
        for c in range(free + 1):
            now_mask = signals.allowed[c] if c < free else 1
            turned = now_mask & ~signals.was_mask[c]
            while turned != 0:
                low = turned & -turned
                bit = 0
                while bit < 63 and (low >> bit) != 1:
                    bit += 1
                signals.green_since[c * 64 + bit] = t
                turned ^= low
            signals.was_mask[c] = now_mask
        for q in range(road.mv_from.shape[0]):
            if road.mv_queue[q] != q or queues.q_head[q] < 0:
                continue
            # a queue that cannot send anyone this step is passed over without reading its
            # vehicles: all its movements red, or its only movement's next link full
            shared = road.qu_signal[q]
            if shared >= 0 and queues.q_inside[q] == 0:
                c = road.mv_controller[shared]
                if c >= 0 and ((signals.allowed[c] >> road.mv_bit[shared]) & 1) == 0:
                    continue
            only = road.qu_single[q]
            if (
                only >= 0
                and links.link_count[road.mv_to[only]] >= road.link_storage[road.mv_to[only]]
            ):
                continue
            if queues.next_departure[q] < t:
                queues.next_departure[q] = t
            source = road.mv_from[q]
            held = 0
            held_moves = 0  # bit (m - q) set: a vehicle of movement m is held
            scanned = 0
            previous = -1
            v = queues.q_head[q]
            while v >= 0 and queues.next_departure[q] < horizon and scanned < MAX_PASSING_SCAN:
                if vehicles.joined[v] >= horizon:
                    break
                scanned += 1
                m = only if only >= 0 else vehicles.queued_move[v]
                target = road.mv_to[m]
                slot = np.int64(1) << min(m - q, 62)
                inside = queues.mv_inside[m] == v
                # an emergency vehicle is let by those held for another turn (they make way);
                # one held ahead of it for its own turn it waits behind like anyone
                if not inside and (
                    (road.mv_lane_mask[m] & ~held == 0)
                    if not demand.emergency[v]
                    else (held_moves & slot)
                ):
                    held_moves |= slot
                    previous = v
                    v = vehicles.next_in_queue[v]
                    continue
                c = road.mv_controller[m]
                if inside:
                    go_from = max(queues.mv_next[m], t)  # past its stop line: red or green
                elif c >= 0 and ((signals.allowed[c] >> road.mv_bit[m]) & 1) == 0:
                    go_from = horizon  # red
                elif c >= 0:
                    go_from = max(
                        queues.mv_next[m],
                        signals.green_since[c * 64 + road.mv_bit[m]] + model.lost_time,
                    )
                else:
                    go_from = max(
                        queues.mv_next[m], signals.green_since[free * 64] + model.lost_time
                    )
                base = demand.route_start[v]
                then = demand.route_moves[
                    base + vehicles.hop[v] + 1
                ]  # its movement on the next link
                # ``_room_ahead`` spelled out: called here it cost the 100 x 100 benchmark 40 %
                lanes_full = (
                    then >= 0
                    and queues.q_count[road.mv_queue[then]] >= road.qu_storage[road.mv_queue[then]]
                )
                if (
                    go_from >= horizon
                    or links.link_count[target] >= road.link_storage[target]
                    or lanes_full
                ):
                    # red, still in the lost time of its green, its own lanes busy with the
                    # vehicle before it, or no room on the next link or in the lanes it will
                    # take there: held, like those behind it in its lanes. Held only for the
                    # lanes it will take next, it waits in one of its several lanes (drivers
                    # pick their lane for the turn after): the others may pass it.
                    mask = road.mv_lane_mask[m]
                    if not inside and not (
                        lanes_full
                        and go_from < horizon
                        and links.link_count[target] < road.link_storage[target]
                        and mask & (mask - 1) != 0
                    ):
                        held |= mask
                    held_moves |= slot
                    if held == road.qu_mask[q] and queues.q_urgent[q] == 0:
                        break
                    previous = v
                    v = vehicles.next_in_queue[v]
                    continue
                leave = (
                    go_from
                    if inside
                    else max(queues.next_departure[q], vehicles.joined[v], go_from)
                )
                if leave >= horizon:
                    break
                if (
                    yields
                    and road.mv_yield_start[m] < road.mv_yield_start[m + 1]
                    and (
                        (queues.mv_inside[m] >= 0 and not inside)
                        or not _gap(m, leave, t, road, demand, signals, queues, links, vehicles)
                    )
                ):
                    # a permitted turn waiting for a gap in the traffic it gives way to: the
                    # first waits inside the junction, past its stop line, holding no lane
                    # (its crossing of the line takes its lanes' headway); the next at the
                    # line, holding its lanes
                    if queues.mv_inside[m] < 0:
                        queues.mv_inside[m] = v
                        queues.q_inside[q] += 1
                        queues.next_departure[q] = leave + road.qu_headway[q] * road.mv_slower[m]
                    elif not inside:
                        held |= road.mv_lane_mask[m]
                    held_moves |= slot
                    if held == road.qu_mask[q] and queues.q_urgent[q] == 0:
                        break
                    previous = v
                    v = vehicles.next_in_queue[v]
                    continue
                following = vehicles.next_in_queue[v]
                if previous >= 0:
                    vehicles.next_in_queue[previous] = following
                else:
                    queues.q_head[q] = following
                if queues.q_tail[q] == v:
                    queues.q_tail[q] = previous
                queues.q_len[q] -= 1
                if demand.emergency[v]:
                    queues.q_urgent[q] -= 1
                links.link_queued[source] -= 1
                links.link_count[source] -= 1
                links.link_count[target] += 1
                queues.q_count[q] -= 1
                if then >= 0:
                    queues.q_count[road.mv_queue[then]] += 1
                links.link_delay[source] += (
                    leave
                    - vehicles.hop_enter[base + vehicles.hop[v]]
                    - (road.link_length[source] + vehicles.crossed_m[v]) / road.link_speed[source]
                )
                links.link_departures[source] += 1
                links.stop_count[source] += 1
                stop_busy[source] = True
                stopped = leave - vehicles.joined[v] > STOP_WAIT_S
                if stopped:
                    vehicles.stops[v] += 1
                if vehicles.behind_loop[v]:
                    links.adv_count[source] += 1
                    vehicles.behind_loop[v] = False
                vehicles.hop[v] += 1
                vehicles.hop_enter[base + vehicles.hop[v]] = leave
                # the rest of the step is driven on the new link, less the time a stopped
                # vehicle loses pulling away and braking beyond its wait (``_stop_loss``)
                speed = _desired_speed(target, v, road, demand, vehicles, model)
                lost = vehicles.carry[v]
                if stopped:
                    lost += _stop_loss(speed, leave - vehicles.joined[v], model)
                vehicles.carry[v] = 0.0
                if lost > 0.0 and demand.route_moves[base + vehicles.hop[v]] >= 0:
                    here = _paid_here(lost, road.link_length[target], speed, model)
                    vehicles.carry[v] = lost - here
                    lost = here
                # and the way across the junction before the link begins
                vehicles.crossed_m[v] = road.mv_junction_m[m]
                vehicles.position[v] = min(
                    speed * (horizon - leave - lost) - road.mv_junction_m[m],
                    road.link_length[target],
                )
                vehicles.state[v] = DRIVING
                if inside:  # it crossed its stop line when it went in
                    queues.mv_inside[m] = -1
                    queues.q_inside[q] -= 1
                else:
                    queues.next_departure[q] = leave + road.qu_headway[q] * road.mv_slower[m]
                queues.mv_next[m] = leave + road.mv_headway[m] * road.mv_slower[m]
                queues.last_cross[m] = leave
                v = following
        # 3. departures: vehicles due now enter their first link if it has room, else wait;
        #    one from a standstill also for the one that started there before it.
        while (
            vehicles.cursor[0] < demand.order.shape[0]
            and demand.depart[demand.order[vehicles.cursor[0]]] < horizon
        ):
            vehicles.waiting[vehicles.n_waiting[0]] = demand.order[vehicles.cursor[0]]
            vehicles.n_waiting[0] += 1
            vehicles.cursor[0] += 1
        still = 0
        for i in range(vehicles.n_waiting[0]):
            v = vehicles.waiting[i]
            first = demand.route_links[demand.route_start[v]]
            then = demand.route_moves[demand.route_start[v]]
            standing = demand.standing[v]
            if (
                links.link_count[first] < road.link_storage[first]
                and (
                    then < 0
                    or queues.q_count[road.mv_queue[then]] < road.qu_storage[road.mv_queue[then]]
                )
                and not (standing and links.next_start[first] >= horizon)
            ):
                links.link_count[first] += 1
                if then >= 0:
                    queues.q_count[road.mv_queue[then]] += 1
                vehicles.crossed_m[v] = 0.0
                vehicles.state[v] = DRIVING
                vehicles.hop[v] = 0
                vehicles.entered[v] = max(demand.depart[v], t)
                speed = _desired_speed(first, v, road, demand, vehicles, model)
                lost = 0.0
                if standing:
                    vehicles.entered[v] = max(vehicles.entered[v], links.next_start[first])
                    links.next_start[first] = vehicles.entered[v] + model.start_clear
                    lost = speed / (2.0 * model.acceleration)
                    if then >= 0:
                        here = _paid_here(lost, road.link_length[first], speed, model)
                        vehicles.carry[v] = lost - here
                        lost = here
                vehicles.position[v] = min(
                    speed * (horizon - vehicles.entered[v] - lost), road.link_length[first]
                )
                vehicles.hop_enter[demand.route_start[v]] = vehicles.entered[v]
                vehicles.active[vehicles.n_active[0]] = v
                vehicles.n_active[0] += 1
            else:
                vehicles.waiting[still] = v
                still += 1
        vehicles.n_waiting[0] = still
        # 4. detectors: the stop bar is occupied while a queue stands or a vehicle crosses;
        #    the advance loop while the queue reaches back over it.
        for link in range(n_links):
            if links.link_queued[link] > 0 or stop_busy[link]:
                links.stop_occupied[link] += 1
        for q in range(road.mv_from.shape[0]):
            if queues.q_len[q] == 0:
                continue
            source = road.mv_from[q]
            back = road.link_length[source] - queues.q_len[q] * JAM_SPACING_M / road.qu_lanes[q]
            if back <= road.link_advance[source]:
                links.adv_occupied[source] += 1
        t += model.dt
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
