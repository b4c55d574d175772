"""The least two crossing emergency vehicles could lose at the intersection they share, over
every timing of its signal, given the traffic that came to it: a yardstick for the corridors'
joint windows there that takes no window as given.

A queue model of the two conflicting approaches: each vehicle of an ambulance's queue (the
lanes its movement shares) reaches the stop line when it would have unhindered and leaves at
green, no sooner than a saturation headway after the one before it; the ambulance leaves no
sooner than it would have alone, behind the vehicles that came before it. The signal serves one
approach at a time: a green lasts at least its minimum, then its clearance (yellow and
all-red) runs before the other's green, whose first queued vehicle leaves after the start-up
lost time. Everything else at the intersection is assumed to wait (which errs low), so a
target this bound exceeds cannot be met by any timing of that signal with that traffic.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.traffic import DEFAULT_LOST_TIME_S
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import Trips, hop_metres

RESOLUTION_S = 0.05
"""How close the bound is found (a bisection on the delay)."""


@dataclass(frozen=True, slots=True)
class Approach:
    """One ambulance's approach to the crossing, as the queue model sees it."""

    arrivals_s: NDArray[np.float64]
    """When each vehicle of its queue would have reached the stop line unhindered."""
    due_s: float
    """When the ambulance would have left the stop line alone."""
    headway_s: float
    """Its queue's saturation headway, all its lanes together."""
    min_green_s: float
    clearance_s: float
    """Yellow and all-red after its green, before a conflicting one."""
    band_s: float = 0.0
    """How long before ``due_s`` its approach must be green with its queue gone: the early
    side of the ambulance's ETA that a timing not knowing its arrival to the second must
    leave it (0: known exactly). Served as vehicles at the queue's headway up to ``due_s``."""

    def __post_init__(self) -> None:
        check_number("due_s", self.due_s)
        check_number("headway_s", self.headway_s, gt=0.0, le=60.0)
        check_number("min_green_s", self.min_green_s, ge=0.0, le=120.0)
        check_number("clearance_s", self.clearance_s, ge=0.0, le=60.0)
        check_number("band_s", self.band_s, ge=0.0, le=60.0)
        if self.arrivals_s.ndim != 1 or not bool(np.all(np.isfinite(self.arrivals_s))):
            raise ValidationError("arrivals_s", "must be one finite time per vehicle")

    def ahead(self, since_s: float) -> list[float]:
        """Arrivals from ``since_s`` before the ambulance's, in order (with its band), then
        the ambulance's."""
        times = self.arrivals_s[(self.arrivals_s >= since_s) & (self.arrivals_s < self.due_s)]
        band = np.arange(self.due_s - self.band_s, self.due_s - 1e-9, self.headway_s)
        return [*np.sort(np.concatenate([times, band])).tolist(), self.due_s]


@dataclass(frozen=True, slots=True)
class Green:
    """One green of a timing of the crossing (``crossing_schedule``)."""

    approach: int
    """0: the first ``Approach`` given, 1: the second."""
    start_s: float
    """Its onset; ``-inf`` where it was green already when counting began (``since_s``)."""
    last_left_s: float
    """When the last vehicle it served left the stop line."""
    vehicles: int


def least_larger_delay(
    first: Approach,
    second: Approach,
    *,
    since_s: float,
    start_up_s: float = DEFAULT_LOST_TIME_S,
    longest_s: float = 600.0,
) -> float:
    """The least, over every timing of the crossing's signal, of the larger of the two
    ambulances' delays there (their leaving less ``due_s``), counting the vehicles that
    reach it from ``since_s`` on (the intersection empty then: that errs low too). Infinite
    where none keeps both within ``longest_s``."""
    return _Problem.of(first, second, since_s, start_up_s, longest_s).least_larger_delay()


def least_larger_delay_without_stops(
    first: Approach,
    second: Approach,
    *,
    since_s: float,
    start_up_s: float = DEFAULT_LOST_TIME_S,
    step_s: float = 0.5,
    longest_s: float = 60.0,
) -> float:
    """``least_larger_delay`` where neither ambulance may stop at the crossing: each may be
    slowed upstream to pass at any time from its due one on, but whatever would reach the
    stop line before it passes is ahead of it there (a slowed vehicle is overtaken), and it
    must come to its green on with that queue gone (at speed: no start-up of its own).
    Scanned every ``step_s`` of delay, each let through up to ``step_s`` after it comes (so
    it errs low); infinite where none within ``longest_s`` is found."""
    check_number("step_s", step_s, gt=0.0, le=10.0)
    check_number("longest_s", longest_s, gt=0.0, le=600.0)
    steps = int(longest_s / step_s) + 1
    for larger in range(steps):
        for smaller in range(larger + 1):
            for delays in {(larger, smaller), (smaller, larger)}:
                slowed = (
                    replace(first, due_s=first.due_s + delays[0] * step_s),
                    replace(second, due_s=second.due_s + delays[1] * step_s),
                )
                problem = _Problem.of(*slowed, since_s, start_up_s, longest_s, rolling=True)
                if problem.timing((step_s, step_s)) is not None:
                    return larger * step_s
    return math.inf


def crossing_schedule(
    first: Approach,
    second: Approach,
    *,
    since_s: float,
    start_up_s: float = DEFAULT_LOST_TIME_S,
    longest_s: float = 600.0,
) -> tuple[Green, ...]:
    """A timing that reaches ``least_larger_delay``, the other ambulance through as soon as
    that allows: the greens in turn from ``since_s``. Empty where none keeps both within
    ``longest_s``. What the bound's timing does, to hold the corridors' against."""
    problem = _Problem.of(first, second, since_s, start_up_s, longest_s)
    larger = problem.least_larger_delay()
    if not math.isfinite(larger):
        return ()

    def within(ambulance: int, delay: float) -> bool:
        """Ambulance ``ambulance`` within ``delay``, the other within the larger delay."""
        delays = (delay, larger) if ambulance == 0 else (larger, delay)
        return problem.timing(delays) is not None

    own = [_least(functools.partial(within, ambulance), larger) for ambulance in (0, 1)]
    delays = (own[0], larger) if own[0] <= own[1] else (larger, own[1])
    greens: list[Green] = []
    for step in problem.timing(delays) or []:
        if greens and greens[-1].approach == step.approach:
            ending = greens[-1]
            greens[-1] = Green(step.approach, ending.start_s, step.left_s, ending.vehicles + 1)
        else:
            greens.append(Green(step.approach, step.green_s, step.left_s, 1))
    return tuple(greens)


def _least(feasible: Callable[[float], bool], longest_s: float) -> float:
    """The least delay in ``[0, longest_s]`` at which ``feasible`` holds, to
    ``RESOLUTION_S`` (it holds at every larger one); infinite where it never does."""
    if feasible(0.0):
        return 0.0
    if not feasible(longest_s):
        return math.inf
    low, high = 0.0, longest_s
    while high - low > RESOLUTION_S:
        middle = 0.5 * (low + high)
        if feasible(middle):
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True, slots=True)
class _Step:
    """One vehicle served, after the one served before it (None: the first)."""

    before: _Step | None
    approach: int
    left_s: float
    green_s: float
    """The onset of the green it left in."""


_Timing = tuple[float, float, _Step | None]
"""(last departure, its green's onset, the last vehicle served: the way it was reached)."""


@dataclass(frozen=True, slots=True)
class _Problem:
    approaches: tuple[Approach, Approach]
    queues: tuple[list[float], list[float]]
    start_up_s: float
    longest_s: float
    rolling: bool
    """Whether an ambulance first in its green passes at speed (it was slowed to come then,
    not stopped): no start-up of its own."""

    @classmethod
    def of(
        cls,
        first: Approach,
        second: Approach,
        since_s: float,
        start_up_s: float,
        longest_s: float,
        *,
        rolling: bool = False,
    ) -> _Problem:
        check_number("since_s", since_s)
        check_number("start_up_s", start_up_s, ge=0.0, le=10.0)
        check_number("longest_s", longest_s, gt=0.0, le=3600.0)
        queues = (first.ahead(since_s), second.ahead(since_s))
        return cls((first, second), queues, start_up_s, longest_s, rolling)

    def least_larger_delay(self) -> float:
        """``least_larger_delay``'s answer: the least delay both ambulances can be kept
        within."""
        return _least(lambda delay: self.timing((delay, delay)) is not None, self.longest_s)

    def timing(self, delays: tuple[float, float]) -> list[_Step] | None:
        """A timing that gets each ambulance through within its ``delays`` of its due time,
        vehicle by vehicle; None where there is none.

        Dynamic programming over how many of each queue have left and which approach left
        last, keeping per state the timings no other beats on both its last departure and
        the start of its green (the sooner either is, the sooner what follows can go), each
        with the way it was reached."""
        approaches, queues = self.approaches, self.queues
        sizes = (len(queues[0]), len(queues[1]))
        deadlines = (approaches[0].due_s + delays[0], approaches[1].due_s + delays[1])
        fronts: dict[tuple[int, int, int], list[_Timing]] = {
            (0, 0, side): [(-math.inf, -math.inf, None)] for side in (0, 1)
        }
        for served_0 in range(sizes[0] + 1):
            for served_1 in range(sizes[1] + 1):
                for side in (0, 1):
                    for last, green, step in fronts.get((served_0, served_1, side), ()):
                        for turn in (0, 1):
                            served = (served_0, served_1)[turn]
                            if served == sizes[turn]:
                                continue
                            ambulance = served == sizes[turn] - 1
                            start_up = 0.0 if ambulance and self.rolling else self.start_up_s
                            leaves, starts = _leave(approaches, side, turn, last, green, start_up)
                            leaves = max(leaves, queues[turn][served])
                            if ambulance and leaves > deadlines[turn]:
                                continue  # the ambulance, too late
                            key = (served_0 + (turn == 0), served_1 + (turn == 1), turn)
                            timing = (leaves, starts, _Step(step, turn, leaves, starts))
                            _keep(fronts.setdefault(key, []), timing)
        done = fronts.get((*sizes, 0)) or fronts.get((*sizes, 1))
        if not done:
            return None
        steps: list[_Step] = []
        last_served = done[0][2]
        while last_served is not None:
            steps.append(last_served)
            last_served = last_served.before
        return steps[::-1]


def _leave(
    approaches: tuple[Approach, Approach],
    side: int,
    turn: int,
    last: float,
    green: float,
    start_up_s: float,
) -> tuple[float, float]:
    """The soonest the next vehicle of ``turn``'s queue leaves, arrivals aside, after the last
    one left ``side``'s at ``last`` under a green begun at ``green``; and its green's start."""
    if last == -math.inf:
        return -math.inf, -math.inf  # nothing served yet: its approach may be green already
    if turn == side:
        return last + approaches[turn].headway_s, green
    ending = approaches[side]
    starts = max(last, green + ending.min_green_s) + ending.clearance_s
    return starts + start_up_s, starts


def _keep(front: list[_Timing], timing: _Timing) -> None:
    if any(last <= timing[0] and green <= timing[1] for last, green, _ in front):
        return
    front[:] = [t for t in front if not (timing[0] <= t[0] and timing[1] <= t[1])]
    front.append(timing)


@dataclass(frozen=True, slots=True)
class QueueArrivals:
    """A vehicle's queue at a stop line as a run drove it (``queue_arrivals``)."""

    arrivals_s: NDArray[np.float64]
    """When each other vehicle of it would have reached the stop line unhindered, in order."""
    headway_s: float
    """The queue's saturation headway, all its lanes together."""


def queue_arrivals(
    net: CompiledNetwork, trips: Trips, hop_enter: NDArray[np.float64], vehicle: int, node: str
) -> QueueArrivals:
    """The other vehicles of ``vehicle``'s queue at ``node`` (on its approach link, turning
    there in movements that share its lanes) with when each would have reached the stop line
    unhindered (it entered the link, then drove it at its own desired speed), and that queue's
    saturation headway. ``hop_enter``: the run's per-route-entry link entry times."""
    road = net.road.network
    start, count = int(trips.route_start[vehicle]), int(trips.route_len[vehicle])
    hops = [
        h for h in range(start, start + count - 1)
        if road.link_by_id[net.link_ids[int(trips.route_links[h])]].to_node == node
    ]  # fmt: skip
    if not hops:
        raise ValidationError("node", f"{trips.names[vehicle]}'s route does not cross {node}")
    link = int(trips.route_links[hops[0]])
    queue = int(net.mv_queue[int(trips.route_moves[hops[0]])])
    entries = np.flatnonzero(trips.route_links == link)
    owners = np.searchsorted(trips.route_start, entries, side="right") - 1
    last = trips.route_start[owners] + trips.route_len[owners] - 1
    keep = (entries < last) & (owners != vehicle) & np.isfinite(hop_enter[entries])
    entries, owners = entries[keep], owners[keep]
    keep = net.mv_queue[trips.route_moves[entries]] == queue
    entries, owners = entries[keep], owners[keep]
    free = hop_metres(net, trips, entries) / (net.link_speed[link] * trips.speed_factor[owners])
    return QueueArrivals(np.sort(hop_enter[entries] + free), float(net.qu_headway[queue]))
