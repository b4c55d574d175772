"""An independent reference for the engine: the same model, in plain Python, event by event.

The kernel (``kernels.run_steps``) advances fixed steps and settles within each step who moves;
this model keeps one clock and jumps from event to event in continuous time: a vehicle due,
a vehicle reaching the back of its queue or the end of its trip, a queue's next crossing, a
signal change. It is written from the model's rules as ``kernels`` and ``docs/architecture.md``
state them, not from the kernel's code, and it reads the network as compiled (lengths, speeds,
lanes, storage, which movements share a queue, saturation headways) and the signals from the
``TimingPlan`` itself. So where the two agree they agree on the rules, and where they differ
the difference is the kernel's step (a decision taken at a step's start holds for the step)
or a bug. Tests compare trips, delays and queues (``tests/simulator/test_reference.py``).

Rules: a vehicle enters its first link when due, if the link and the lanes of its first
movement have room, else waits (all waiting vehicles are tried at every change, in the order
they became due). It drives at link speed x its factor (under its ``SpeedCap`` once one is
set), less the driver's dawdling (``dawdle_mps``, at most half of that), through others, to the
back of its movement's queue (``length - vehicles x 7.5 m / lanes``) or to the end of its last
link; an emergency vehicle with at least as many vehicles driving within 70 m ahead of it on
its link as the link has lanes follows the fastest of the nearest of them, one a lane (it
cannot pass). A queue is FIFO over the lanes its movements share; its first vehicle not held
crosses at the latest of: the queue's last crossing + its lanes' headway, its movement's last
crossing + the movement's headway (both stretched by the movement's ``mv_slower`` after a turn
the junction slows), its joining, its group's green start + the lost time; only while its group
may proceed (green, the yellow end lag, an overlap through the change interval) and while the
next link and the lanes it takes there have room. A vehicle that may not go holds those behind
it whose lanes are all held (one held only for full lanes ahead, on several lanes of its own,
holds none); an emergency vehicle waits only behind one of its own movement. A wait over 1 s is
a stop, which costs ``speed/2a`` plus what of ``speed/2b`` the wait was shorter than on the
next link (on a link shorter than the distance to reach speed, only what a standing start takes
there; the rest on the links after). A vehicle that starts from a standstill
(``Trips.standing``) pays ``speed/2a`` the same way on its first link, and enters it no sooner
than ``sqrt(2 x 7.5 m / a)`` after the last one that started there. Crossing the junction takes
its distance at the new link's speed. Unsignalized movements go from the start, after the lost
time.

Not modelled (refused): permitted turns that give way (``mv_yield``). Not kept: detectors.
It is slow (every event looks at every vehicle on the road): for small networks only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from numpy.typing import NDArray

from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M
from citybrain.signal_plans.timing import TimingPlan
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import Trips, standing_mask
from citybrain.simulator.engine import (
    ACCELERATION_MPS2,
    DAWDLE_MPS,
    DECELERATION_MPS2,
    END_LAG_S,
    LOST_TIME_S,
)

STOP_WAIT_S = 1.0
READ_AFTER_S = 1e-6
"""Signals are read this long after a change (changes are at least 0.5 s apart)."""
NEVER = math.inf

FOLLOW_M = 70.0
"""How far ahead an emergency vehicle looks for a lane free of traffic to pass in."""

# Ties at one instant are settled in the kernel's stage order: who follows whom, signals,
# driving, crossing, entering.
FOLLOW, SIGNAL, DRIVE, CROSS, ENTER = -1, 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Override:
    """From ``at_s`` on, ``controller`` lets ``groups`` proceed (``None``: its plan again)."""

    at_s: float
    controller: str
    groups: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class SpeedCap:
    """From ``at_s`` on, vehicle ``vehicle`` keeps under ``speed_mps`` (``None``: its own
    speed again), as a driver following speed advice does."""

    at_s: float
    vehicle: int
    speed_mps: float | None


@dataclass
class ReferenceResult:
    """Per vehicle: entry, arrival, stops and when it entered each link of its route (indexed
    like ``trips.route_links``); per link: delay and departures; queues at ``sample_times``."""

    entered: NDArray[np.float64]
    arrived: NDArray[np.float64]
    stops: NDArray[np.int32]
    hop_enter: NDArray[np.float64]
    link_delay: NDArray[np.float64]
    link_departures: NDArray[np.int64]
    sample_times: list[float]
    queues: list[NDArray[np.int32]]
    """Vehicles standing in queues on each link at each sample time."""


@dataclass
class _Vehicle:
    index: int
    hop: int = 0
    x: float = 0.0
    """Position on its link at time ``since`` (negative: still crossing the junction or
    accelerating away)."""
    since: float = 0.0
    joined: float = 0.0
    carry: float = 0.0
    crossed_m: float = 0.0


@dataclass
class _Queue:
    vehicles: list[_Vehicle] = field(default_factory=list)
    next_departure: float = -NEVER
    on_link: int = 0
    """Vehicles on its link that will take its lanes (driving or queued)."""


class ReferenceModel:
    """Runs ``trips`` on ``net`` from time 0 (see the module docstring)."""

    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        *,
        overrides: Sequence[Override] = (),
        speed_caps: Sequence[SpeedCap] = (),
        lost_time_s: float = LOST_TIME_S,
        end_lag_s: float = END_LAG_S,
        acceleration_mps2: float = ACCELERATION_MPS2,
        deceleration_mps2: float = DECELERATION_MPS2,
        dawdle_mps: float = DAWDLE_MPS,
    ) -> None:
        if net.mv_yield.size:
            raise ValidationError("net", "the reference does not model permitted turns")
        if trips.rerouted:
            raise ValidationError("trips", "the reference runs fixed routes only")
        if trips.standing is not None and trips.standing.shape != (trips.count,):
            raise ValidationError("trips.standing", "needs one flag per vehicle")
        self.net, self.trips = net, trips
        self.lost_time, self.end_lag = lost_time_s, end_lag_s
        self.acceleration, self.deceleration = acceleration_mps2, deceleration_mps2
        self.dawdle = dawdle_mps
        self.standing = standing_mask(trips)
        self.start_clear = math.sqrt(2.0 * JAM_SPACING_M / acceleration_mps2)
        self.next_start = [-NEVER] * net.links
        self.plans: Mapping[str, TimingPlan] = net.road.plans
        self.overrides = sorted(overrides, key=lambda o: o.at_s)
        self.speed_caps = sorted(speed_caps, key=lambda c: c.at_s)
        self.cap = [math.inf] * trips.count
        self.held: dict[int, float] = {}
        """Emergency vehicles held behind traffic they cannot pass: the speed they follow."""
        movements = net.road.network.movement_by_id
        self.signal_of = [
            (movements[m].intersection_id, movements[m].signal_group) for m in net.movement_ids
        ]
        self.now = 0.0
        n = trips.count
        self.due = sorted(range(n), key=lambda v: trips.depart[v])
        self.next_due = 0
        self.waiting: list[int] = []
        self.driving: list[_Vehicle] = []
        self.queues = {q: _Queue() for q in set(net.mv_queue.tolist())}
        self.link_count = [0] * net.links
        self.mv_next = [-NEVER] * net.movements
        self.green_start: dict[tuple[str, str], float] = {}
        self.may_go: dict[str, frozenset[str]] = {}
        self.forced: dict[str, frozenset[str] | None] = dict.fromkeys(self.plans)
        self.result = ReferenceResult(
            np.full(n, np.nan),
            np.full(n, np.nan),
            np.zeros(n, dtype=np.int32),
            np.full(trips.route_links.shape[0], np.nan),
            np.zeros(net.links),
            np.zeros(net.links, dtype=np.int64),
            [],
            [],
        )
        self._apply_due()  # those of time 0 hold from the start, as in the kernel
        self._update_signals()

    # --- the route and the network -------------------------------------------------------

    def _link(self, v: _Vehicle) -> int:
        return int(self.trips.route_links[self.trips.route_start[v.index] + v.hop])

    def _move(self, v: _Vehicle, ahead: int = 0) -> int:
        """Its movement at the end of its current link (``ahead`` links on); -1 at the end."""
        return int(self.trips.route_moves[self.trips.route_start[v.index] + v.hop + ahead])

    def _own_speed(self, v: _Vehicle) -> float:
        own = float(self.net.link_speed[self._link(v)] * self.trips.speed_factor[v.index])
        desired = min(own, self.cap[v.index])
        return max(desired - self.dawdle, 0.5 * desired)

    def _speed(self, v: _Vehicle) -> float:
        return min(self._own_speed(v), self.held.get(v.index, NEVER))

    def _x(self, v: _Vehicle) -> float:
        return v.x + self._speed(v) * (self.now - v.since)

    def _has_room(self, link: int, move: int) -> bool:
        net = self.net
        if self.link_count[link] >= net.link_storage[link]:
            return False
        if move < 0:
            return True
        q = int(net.mv_queue[move])
        return self.queues[q].on_link < int(net.qu_storage[q])

    def _back(self, move: int) -> float:
        """Where the queue of ``move`` ends (from its link's start)."""
        net = self.net
        q = int(net.mv_queue[move])
        standing = len(self.queues[q].vehicles) * JAM_SPACING_M / net.qu_lanes[q]
        return float(net.link_length[net.mv_from[move]] - standing)

    # --- signals -------------------------------------------------------------------------

    def _plan_groups(self, plan: TimingPlan, t: float) -> frozenset[str]:
        """Groups ``plan`` lets proceed at ``t``: a phase's during its green and the end lag,
        those green in the next phase too through the change interval."""
        position = (t - plan.offset_s) % plan.cycle_s
        groups: set[str] = set()
        for k, phase in enumerate(plan.phases):
            since = (position - plan.phase_starts_s[k]) % plan.cycle_s
            green = plan.greens_s[k]
            if since < green + self.end_lag:
                groups |= phase.groups
            elif since < green + plan.intergreen_after_s(k):
                following = plan.phases[(k + 1) % len(plan.phases)]
                groups |= phase.groups & following.groups
        return frozenset(groups)

    def _update_signals(self) -> None:
        for node, plan in self.plans.items():
            forced = self.forced[node]
            # read just after now: offset + start in floating point may land a hair short
            # of the change it schedules, and every display holds from its change on
            later = self.now + READ_AFTER_S
            now = forced if forced is not None else self._plan_groups(plan, later)
            for group in now - self.may_go.get(node, frozenset()):
                self.green_start[node, group] = self.now
            self.may_go[node] = now

    def _next_signal_change(self) -> float:
        soonest = NEVER
        for plan in self.plans.values():
            for k in range(len(plan.phases)):
                green = plan.greens_s[k]
                for edge in (0.0, green + self.end_lag, green + plan.intergreen_after_s(k)):
                    at = plan.offset_s + plan.phase_starts_s[k] + edge
                    at += plan.cycle_s * math.floor((self.now - at) / plan.cycle_s)
                    while at <= self.now:  # strictly later, whatever the rounding
                        at += plan.cycle_s
                    soonest = min(soonest, at)
        pending = [o.at_s for o in self.overrides if o.at_s > self.now]
        pending += [c.at_s for c in self.speed_caps if c.at_s > self.now]
        return min([soonest, *pending])

    def _apply_due(self) -> None:
        """The overrides and speed caps due by now."""
        for o in self.overrides:
            if o.at_s <= self.now:
                self.forced[o.controller] = o.groups
        self.overrides = [o for o in self.overrides if o.at_s > self.now]
        driving = {v.index: v for v in self.driving}
        for cap in [c for c in self.speed_caps if c.at_s <= self.now]:
            v = driving.get(cap.vehicle)
            if v is not None:  # it drives on from where it is at the new speed
                v.x, v.since = self._x(v), self.now
            self.cap[cap.vehicle] = math.inf if cap.speed_mps is None else cap.speed_mps
        self.speed_caps = [c for c in self.speed_caps if c.at_s > self.now]

    def _may_go_from(self, move: int) -> float:
        """When ``move``'s group may start crossing (its green's start + the lost time), or
        ``NEVER`` while it may not proceed."""
        node, group = self.signal_of[move]
        if node not in self.plans:
            return self.lost_time  # unsignalized: all go, from the start
        if group not in self.may_go[node]:
            return NEVER
        return self.green_start[node, group] + self.lost_time

    # --- events --------------------------------------------------------------------------

    def _reach(self, v: _Vehicle) -> float:
        """When driving ``v`` reaches the back of its queue (or its trip's end)."""
        move = self._move(v)
        target = float(self.net.link_length[self._link(v)]) if move < 0 else self._back(move)
        x_now = self._x(v)
        if x_now >= target:
            return self.now
        return v.since + (target - v.x) / self._speed(v)

    def _crossing(self, q: int) -> tuple[float, _Vehicle | None]:
        """The next crossing of queue ``q``: when, and who (module docstring's holding rule),
        as things stand now (a change of signal or room makes it computed again)."""
        queue = self.queues[q]
        at = max(self.now, queue.next_departure)
        while True:
            held_lanes, held_moves, later = 0, set(), NEVER
            for v in queue.vehicles:
                move = self._move(v)
                lanes = int(self.net.mv_lane_mask[move])
                if self.trips.emergency[v.index]:
                    if move in held_moves:
                        continue
                elif lanes & ~held_lanes == 0:
                    held_moves.add(move)
                    continue
                go = max(self._may_go_from(move), self.mv_next[move], v.joined)
                target = int(self.net.mv_to[move])
                link_full = self.link_count[target] >= self.net.link_storage[target]
                then = self._move(v, 1)
                lanes_full = then >= 0 and not self._has_room(target, then) and not link_full
                if go <= at and not link_full and not lanes_full:
                    return at, v
                if go > at and go < NEVER and not link_full and not lanes_full:
                    later = min(later, go)
                if not (lanes_full and go <= at and lanes & (lanes - 1)):
                    held_lanes |= lanes
                held_moves.add(move)
            if later == NEVER:
                return NEVER, None
            at = later

    def _next_event(self) -> tuple[float, int, Callable[[], None]]:
        """The earliest thing to happen: when, its kind (for ties), and doing it."""
        events: list[tuple[float, int, Callable[[], None]]] = [
            (self._next_signal_change(), SIGNAL, self._change_signals),
            (self._next_overtaking(), FOLLOW, self._follow),
        ]
        for v in self.driving:
            events.append((self._reach(v), DRIVE, partial(self._arrive_or_join, v)))
        for q in self.queues:
            at, first = self._crossing(q)
            if first is not None:
                events.append((at, CROSS, partial(self._cross, q, first)))
        if self.next_due < len(self.due):
            due = float(self.trips.depart[self.due[self.next_due]])
            events.append((max(due, self.now), ENTER, self._release_due))
        events.append((self._next_start(), ENTER, self._release_due))
        return min(events, key=lambda event: event[:2])

    def run(self, until_s: float, *, sample_every_s: float | None = None) -> ReferenceResult:
        """Run to ``until_s``; sample the queues every ``sample_every_s`` from 0 (before the
        events of the same instant)."""
        next_sample = 0.0 if sample_every_s else NEVER
        while True:
            self._enter_waiting()
            self._follow()
            at, _, happen = self._next_event()
            while sample_every_s and next_sample <= min(at, until_s):
                self.now = next_sample
                self._sample()
                next_sample += sample_every_s
            if at > until_s:
                self.now = until_s
                return self.result
            self.now = at
            happen()

    # --- emergency vehicles behind traffic ---------------------------------------------

    def _urgent_and_ahead(self) -> list[tuple[_Vehicle, list[_Vehicle]]]:
        """Each driving emergency vehicle with the others driving on its link."""
        urgent = [v for v in self.driving if self.trips.emergency[v.index]]
        return [
            (e, [u for u in self.driving if u is not e and self._link(u) == self._link(e)])
            for e in urgent
        ]

    def _follow(self) -> None:
        """Hold each driving emergency vehicle to the fastest of the nearest vehicles ahead,
        as many as its link has lanes, when they are all within ``FOLLOW_M``; free it
        otherwise. It drives on from where it is."""
        for e, others in self._urgent_and_ahead():
            here = self._x(e)
            gaps = [(self._x(u) - here, self._own_speed(u)) for u in others]
            ahead = sorted((gap, speed) for gap, speed in gaps if 0.0 < gap <= FOLLOW_M)
            lanes = int(self.net.link_lanes[self._link(e)])
            held = max(speed for _, speed in ahead[:lanes]) if len(ahead) >= lanes else NEVER
            if held != self.held.get(e.index, NEVER):
                e.x, e.since = here, self.now
                self.held[e.index] = held

    def _next_overtaking(self) -> float:
        """When a vehicle next comes within ``FOLLOW_M`` of a driving emergency vehicle's
        front or drops out of that reach (passed, or left behind), or two within it pass
        each other (which are the nearest may change)."""
        soonest = NEVER
        for e, others in self._urgent_and_ahead():
            here, speed = self._x(e), self._speed(e)
            within = []
            for u in others:
                gap = self._x(u) - here
                soonest = min(soonest, self._meets(gap, self._speed(u) - speed, (0.0, FOLLOW_M)))
                if 0.0 < gap <= FOLLOW_M:
                    within.append(u)
            for u, w in itertools.combinations(within, 2):
                gap = self._x(u) - self._x(w)
                soonest = min(soonest, self._meets(gap, self._speed(u) - self._speed(w), (0.0,)))
        return soonest

    def _meets(self, gap: float, closing: float, edges: tuple[float, ...]) -> float:
        """When a gap changing at ``closing`` m/s next reaches one of ``edges``."""
        if closing == 0.0:
            return NEVER
        later = [self.now + (edge - gap) / closing for edge in edges]
        return min((at for at in later if at > self.now), default=NEVER)

    def _change_signals(self) -> None:
        self._apply_due()
        self._update_signals()

    def _sample(self) -> None:
        queued = np.zeros(self.net.links, dtype=np.int32)
        for queue in self.queues.values():
            for v in queue.vehicles:
                queued[self._link(v)] += 1
        self.result.sample_times.append(self.now)
        self.result.queues.append(queued)

    def _release_due(self) -> None:
        while (
            self.next_due < len(self.due) and self.trips.depart[self.due[self.next_due]] <= self.now
        ):
            self.waiting.append(self.due[self.next_due])
            self.next_due += 1

    def _enter_waiting(self) -> None:
        still = []
        for index in self.waiting:
            v = _Vehicle(index, x=0.0, since=self.now)
            link, move = self._link(v), self._move(v)
            standing = bool(self.standing[index])
            if not self._has_room(link, move) or (standing and self.next_start[link] > self.now):
                still.append(index)
                continue
            self.link_count[link] += 1
            if move >= 0:
                self.queues[int(self.net.mv_queue[move])].on_link += 1
            self.result.entered[index] = self.now
            self.result.hop_enter[self.trips.route_start[index]] = self.now
            if standing:  # it pulls away, and the next may start once it cleared a car length
                self.next_start[link] = self.now + self.start_clear
                self._pull_away(v, self._speed(v) / (2.0 * self.acceleration), move >= 0)
            self.driving.append(v)
        self.waiting = still

    def _next_start(self) -> float:
        """When a vehicle waiting to start from a standstill may next start."""
        trips = self.trips
        later = [
            self.next_start[int(trips.route_links[trips.route_start[index]])]
            for index in self.waiting
            if self.standing[index]
        ]
        return min((at for at in later if at > self.now), default=NEVER)

    def _pull_away(self, v: _Vehicle, lost: float, more_links: bool) -> None:
        """Charge ``v`` the ``lost`` time of a start on its link from now (on a link shorter
        than the distance to reach speed, only what a standing start takes to cross it; the
        rest on the links after), behind the junction it crosses."""
        speed, length = self._speed(v), float(self.net.link_length[self._link(v)])
        if lost > 0.0 and more_links and length < speed * speed / (2.0 * self.acceleration):
            standing_start = math.sqrt(2.0 * length / self.acceleration) - length / speed
            if lost > standing_start:
                v.carry, lost = v.carry + lost - standing_start, standing_start
        v.x, v.since = -v.crossed_m - speed * lost, self.now

    def _left_link(self, v: _Vehicle, at: float) -> None:
        """Book ``v``'s time on its link as it leaves it at ``at``."""
        link = self._link(v)
        enter = self.result.hop_enter[self.trips.route_start[v.index] + v.hop]
        free = (self.net.link_length[link] + v.crossed_m) / self.net.link_speed[link]
        self.result.link_delay[link] += at - enter - free
        self.result.link_departures[link] += 1
        self.link_count[link] -= 1

    def _arrive_or_join(self, v: _Vehicle) -> None:
        self.driving.remove(v)
        self.held.pop(v.index, None)
        move = self._move(v)
        if move < 0:
            self.result.arrived[v.index] = self.now
            self._left_link(v, self.now)
            return
        v.joined = self.now
        self.queues[int(self.net.mv_queue[move])].vehicles.append(v)

    def _cross(self, q: int, v: _Vehicle) -> None:
        net, queue = self.net, self.queues[q]
        move, then = self._move(v), self._move(v, 1)
        queue.vehicles.remove(v)
        queue.on_link -= 1
        self._left_link(v, self.now)
        stopped = self.now - v.joined > STOP_WAIT_S
        if stopped:
            self.result.stops[v.index] += 1
        slower = float(net.mv_slower[move])  # a turn the junction slows
        queue.next_departure = self.now + float(net.qu_headway[q]) * slower
        self.mv_next[move] = self.now + float(net.mv_headway[move]) * slower
        v.hop += 1
        self.result.hop_enter[self.trips.route_start[v.index] + v.hop] = self.now
        target = self._link(v)
        self.link_count[target] += 1
        if then >= 0:
            self.queues[int(net.mv_queue[then])].on_link += 1
        speed = self._speed(v)
        lost = v.carry
        if stopped:  # pulling away, and the braking its wait did not absorb
            braking = speed / (2.0 * self.deceleration)
            lost += speed / (2.0 * self.acceleration) + max(0.0, braking - (self.now - v.joined))
        v.carry = 0.0
        # it drives on from the junction's far side once the loss is paid
        v.crossed_m = float(net.mv_junction_m[move])
        self._pull_away(v, lost, then >= 0)
        self.driving.append(v)
