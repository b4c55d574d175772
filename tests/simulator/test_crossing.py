"""The least two crossing ambulances could lose at their crossing, over every timing of it:
checked against a plain search over every order the two queues could be served in."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator import kernels
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.crossing import (
    Approach,
    crossing_schedule,
    least_larger_delay,
    least_larger_delay_without_stops,
    queue_arrivals,
)
from citybrain.simulator.demand import Trips, fixed_route
from citybrain.simulator.engine import Simulation
from citybrain.simulator.networks import arterial

from .simhelpers import all_groups_mask, vehicles

START_UP_S = 2.0


def _approach(arrivals: list[float], due: float, headway: float = 1.0) -> Approach:
    return Approach(np.array(arrivals), due, headway, min_green_s=5.0, clearance_s=5.0)


def _by_every_order(first: Approach, second: Approach, since: float) -> float:
    """The reference: every interleaving of the two queues, each served as soon as it can."""
    return min(max(delays) for delays, _ in _every_order(first, second, since))


def _every_order(
    first: Approach, second: Approach, since: float
) -> Iterator[tuple[tuple[float, float], list[int]]]:
    """Per interleaving of the two queues: the ambulances' delays, and the order."""
    sizes = (len(first.ahead(since)), len(second.ahead(since)))
    for firsts in itertools.combinations(range(sum(sizes)), sizes[0]):
        order = [0 if i in firsts else 1 for i in range(sum(sizes))]
        yield _served_in(order, first, second, since), order


def _served_in(
    order: list[int], first: Approach, second: Approach, since: float, *, rolling: bool = False
) -> tuple[float, float]:
    """The ambulances' delays with the queues served in ``order``, each vehicle as soon as it
    can (``rolling``: an ambulance first in its green without a start-up of its own)."""
    queues = (first.ahead(since), second.ahead(since))
    approaches = (first, second)
    served, delays = [0, 0], [0.0, 0.0]
    last = green = -math.inf
    side: int | None = None
    for turn in order:
        arrival = queues[turn][served[turn]]
        if side is None:
            leaves = arrival
        elif side == turn:
            leaves = max(arrival, last + approaches[turn].headway_s)
        else:
            ending = approaches[side]
            green = max(last, green + ending.min_green_s) + ending.clearance_s
            ambulance = served[turn] == len(queues[turn]) - 1
            leaves = max(arrival, green + (0.0 if ambulance and rolling else START_UP_S))
        if served[turn] == len(queues[turn]) - 1:
            delays[turn] = leaves - approaches[turn].due_s
        served[turn] += 1
        last, side = leaves, turn
    return delays[0], delays[1]


def _random_pair(case: int) -> tuple[Approach, Approach]:
    rng = np.random.default_rng(case)
    due = rng.uniform(20.0, 50.0, size=2)
    first, second = (
        _approach(
            sorted(rng.uniform(0.0, 45.0, size=rng.integers(0, 6)).tolist()),
            float(due[k]),
            float(rng.choice([0.7, 1.0, 2.0])),
        )
        for k in range(2)
    )
    return first, second


@pytest.mark.parametrize("case", range(150))
def test_the_bound_is_the_best_of_every_order(case: int) -> None:
    first, second = _random_pair(case)
    found = least_larger_delay(first, second, since_s=0.0, start_up_s=START_UP_S)
    assert found == pytest.approx(_by_every_order(first, second, 0.0), abs=0.06)


@pytest.mark.parametrize("case", range(100))
def test_the_bounds_timing_reaches_it_and_lets_the_other_through_soonest(case: int) -> None:
    """Served in the order its greens give, the queues cost the larger delay the bound says,
    and the other ambulance the least any order keeping that larger delay could."""
    first, second = _random_pair(case)
    greens = crossing_schedule(first, second, since_s=0.0, start_up_s=START_UP_S)
    order = [green.approach for green in greens for _ in range(green.vehicles)]
    delays = _served_in(order, first, second, 0.0)
    larger = least_larger_delay(first, second, since_s=0.0, start_up_s=START_UP_S)
    assert max(0.0, *delays) == pytest.approx(larger, abs=0.06)
    smaller = min(
        min(found) for found, _ in _every_order(first, second, 0.0) if max(found) <= larger
    )
    assert min(delays) == pytest.approx(smaller, abs=0.11)
    assert all(a.approach != b.approach for a, b in itertools.pairwise(greens))
    assert all(a.last_left_s < b.start_s for a, b in itertools.pairwise(greens))


def _without_stops_by_every_order(first: Approach, second: Approach, step: float) -> float:
    """The reference: every slowing of each on the ``step`` grid (up to 20 s) and every
    interleaving of the queues then ahead of them, each let through within ``step`` of when
    it comes."""
    for larger in range(int(20.0 / step) + 1):
        for smaller in range(larger + 1):
            for d in {(larger, smaller), (smaller, larger)}:
                slowed = [
                    Approach(a.arrivals_s, a.due_s + k * step, a.headway_s, 5.0, 5.0)
                    for a, k in zip((first, second), d, strict=True)
                ]
                sizes = (len(slowed[0].ahead(0.0)), len(slowed[1].ahead(0.0)))
                for firsts in itertools.combinations(range(sum(sizes)), sizes[0]):
                    order = [0 if i in firsts else 1 for i in range(sum(sizes))]
                    if (
                        max(_served_in(order, slowed[0], slowed[1], 0.0, rolling=True))
                        <= step + 1e-9
                    ):
                        return larger * step
    return math.inf


@pytest.mark.parametrize("case", range(60))
def test_without_stops_the_bound_is_the_best_slowing_and_order(case: int) -> None:
    first, second = _random_pair(case)
    found = least_larger_delay_without_stops(
        first, second, since_s=0.0, start_up_s=START_UP_S, step_s=1.0, longest_s=20.0
    )
    assert found == _without_stops_by_every_order(first, second, 1.0)


def test_two_alone_due_together_neither_stopping_cost_one_the_clearance_only() -> None:
    """Slowed to come as its green begins, the second passes at speed: no start-up (to the
    scan's step, 0.5 s, low)."""
    found = least_larger_delay_without_stops(
        _approach([], 0.0), _approach([], 0.0), since_s=-100.0, start_up_s=START_UP_S
    )
    assert 5.0 - 0.5 <= found <= 5.0


def test_a_slowed_ambulance_finds_ahead_of_it_what_overtook_it() -> None:
    """A stream behind each ambulance (one every 2 s): stopping, each keeps its stream
    behind it; slowed to pass without a stop, the one slowed finds ahead of it the stream it
    let by."""
    stream = [0.5 + 2.0 * i for i in range(30)]
    pair = (_approach(stream, 0.0), _approach(stream, 0.0))
    stopping = least_larger_delay(*pair, since_s=-100.0)
    rolling = least_larger_delay_without_stops(*pair, since_s=-100.0)
    assert stopping == pytest.approx(5.0 + START_UP_S, abs=0.06)
    assert rolling > stopping + 2.0


def test_the_bounds_timing_of_two_due_together_serves_one_then_the_other() -> None:
    greens = crossing_schedule(_approach([], 0.0), _approach([], 0.0), since_s=-100.0)
    assert [(g.approach, g.vehicles) for g in greens] in ([(0, 1), (1, 1)], [(1, 1), (0, 1)])
    assert greens[0].start_s == -math.inf  # green already when counting began
    assert greens[1].start_s == pytest.approx(greens[0].last_left_s + 5.0)


def test_two_alone_far_enough_apart_lose_nothing() -> None:
    assert least_larger_delay(_approach([], 0.0), _approach([], 20.0), since_s=-100.0) == 0.0


def test_two_alone_due_together_cost_one_a_clearance_and_the_start_up() -> None:
    found = least_larger_delay(_approach([], 0.0), _approach([], 0.0), since_s=-100.0)
    assert found == pytest.approx(5.0 + START_UP_S, abs=0.06)


def test_an_eta_band_holds_each_green_that_long_before_its_ambulance() -> None:
    """Due together, each green held 3 s before its ambulance (its queue gone by then): the
    second's green follows the first's passing by the clearance and the start-up as before,
    then runs the 3 s of its band before the second passes."""
    banded = [
        Approach(np.array([]), 0.0, 1.0, min_green_s=5.0, clearance_s=5.0, band_s=3.0)
        for _ in range(2)
    ]
    found = least_larger_delay(*banded, since_s=-100.0)
    assert found == pytest.approx(5.0 + START_UP_S + 3.0, abs=0.06)
    exact = least_larger_delay(_approach([], 0.0), _approach([], 0.0), since_s=-100.0)
    assert exact == pytest.approx(5.0 + START_UP_S, abs=0.06)
    with pytest.raises(ValidationError):
        Approach(np.array([]), 0.0, 1.0, min_green_s=5.0, clearance_s=5.0, band_s=-1.0)


def test_a_queue_served_ahead_of_time_costs_nothing_and_one_served_late_costs() -> None:
    """Ten vehicles ahead of the second, long before either: the crossing serves them early
    (the two still lose their clearance, due 10 s apart). The same ten just before the
    second: it waits for them, or the first waits for it."""
    alone = least_larger_delay(_approach([], 0.0), _approach([], 5.0), since_s=-200.0)
    assert alone == pytest.approx(5.0 + START_UP_S - 5.0, abs=0.06)
    early = [-100.0 + i for i in range(10)]
    assert least_larger_delay(_approach([], 0.0), _approach(early, 5.0), since_s=-200.0) == alone
    late = [-1.0 + 0.5 * i for i in range(10)]
    assert least_larger_delay(_approach([], 0.0), _approach(late, 5.0), since_s=-200.0) > 5.0


def test_vehicles_before_since_or_behind_the_ambulance_do_not_count() -> None:
    alone = least_larger_delay(_approach([], 0.0), _approach([], 1.0), since_s=-50.0)
    others = _approach([-80.0, -79.0, 2.0, 3.0], 1.0)
    assert least_larger_delay(_approach([], 0.0), others, since_s=-50.0) == alone


@pytest.mark.parametrize(
    ("arrivals", "due", "headway"),
    [([math.nan], 0.0, 1.0), ([0.0], math.inf, 1.0), ([0.0], 0.0, 0.0), ([0.0], 0.0, -1.0)],
)
def test_an_approach_with_nonsense_is_refused(
    arrivals: list[float], due: float, headway: float
) -> None:
    with pytest.raises(ValidationError):
        _approach(arrivals, due, headway)


def test_the_queue_is_the_vehicles_sharing_the_ambulances_lanes_as_they_would_have_come() -> None:
    """On the arterial's one signal, all green: the through and right-turning vehicles share
    the ambulance's lanes (one queue), the left-turners have their own; unhindered, each
    leaves the link when it reaches the stop line."""
    net = compile_network(arterial(1))
    ambulance = fixed_route(net, ["west-a01", "a01-east"], depart_s=30.0, name="AMB")
    through = vehicles(net, ["west-a01", "a01-east"], [0.0, 10.0, 50.0])
    right = vehicles(net, ["west-a01", "a01-a01s"], [5.0])
    left = vehicles(net, ["west-a01", "a01-a01n"], [7.0])
    trips = Trips.concat([ambulance, through, right, left])
    sim = Simulation(net, trips, dawdle_mps=0.0)
    for controller in range(len(net.controller_ids)):
        sim.set_override(controller, all_groups_mask(net, controller))
    sim.advance(600.0)
    assert (sim.state == kernels.ARRIVED).all()
    queue = queue_arrivals(net, trips, sim.hop_enter, 0, "a01")
    left_link = np.sort(sim.hop_enter[trips.route_start[1:5] + 1])  # through and right
    np.testing.assert_allclose(queue.arrivals_s, left_link, atol=1e-6)
    shared = net.mv_queue[trips.route_moves[trips.route_start[0]]]
    assert queue.headway_s == pytest.approx(net.qu_headway[shared])
    with pytest.raises(ValidationError, match="does not cross"):
        queue_arrivals(net, trips, sim.hop_enter, 0, "nowhere")
