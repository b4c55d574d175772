from __future__ import annotations

import numpy as np
import pytest

from citybrain.cloud.impact import (
    RECOVERY_LIMIT_S,
    ImpactMeter,
    Leg,
    normal_trip_s,
    normal_wait_s,
)
from citybrain.models.traffic import DEFAULT_LOST_TIME_S as LOST
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group

PLAN = lead_lead_plan(nema_eight_group("X"))
"""Cycle 100 s; group 2 green 15-54 s in every cycle (red from 54 s to 115 s)."""


def _leg(passed_s: float = 0.0, *, arrivals: float = 0.0, level: float = 0.0) -> Leg:
    return Leg(
        passed_s=passed_s,
        plan=PLAN,
        group="2",
        arrivals_veh_per_s=arrivals,
        queue_level_veh=level,
        discharge_s_per_veh=2.0,
    )


@pytest.mark.parametrize(
    ("at_s", "arrivals", "level", "wait_s"),
    [
        (30.0, 0.0, 0.0, 0.0),  # green and nobody ahead
        (100.0, 0.0, 0.0, 15.0 + LOST),  # red: until green and its start-up
        (100.0, 0.1, 0.0, 15.0 + LOST + 0.1 * (100.0 - 54.0) * 2.0),  # what came since 54 s
        (20.0, 0.1, 0.0, 15.0 + LOST + 0.1 * (15.0 + 46.0) * 2.0 - 20.0),  # the red's queue
        (100.0, 0.1, 8.0, 15.0 + LOST + 8.0 * 2.0),  # a standing queue longer than that
        # 30 queued: the green at 115 s serves (39 - LOST) / 2 of them, the next the rest
        (100.0, 0.0, 30.0, 215.0 + LOST + (30.0 - (39.0 - LOST) / 2.0) * 2.0 - 100.0),
    ],
)
def test_the_normal_plan_wait_is_the_red_then_the_queue_ahead(
    at_s: float, arrivals: float, level: float, wait_s: float
) -> None:
    assert normal_wait_s(_leg(arrivals=arrivals, level=level), at_s) == pytest.approx(wait_s)


def test_a_queue_no_green_clears_waits_at_most_ten_cycles() -> None:
    assert normal_wait_s(_leg(level=1000.0), 100.0) == pytest.approx(1000.0)


def test_the_normal_trip_keeps_the_driving_and_adds_each_stop_lines_wait() -> None:
    legs = [_leg(30.0), _leg(100.0, arrivals=0.1)]
    # on green at 30 s; then the 70 s it drove brings it to 100 s, red
    assert normal_trip_s(0.0, 200.0, legs) == pytest.approx(200.0 + 15.0 + LOST + 9.2)
    # a red at the first stop line shifts the rest: it reaches the second at 147 s, on green
    late = normal_trip_s(60.0, 190.0, [_leg(60.0), _leg(90.0)])
    assert late == pytest.approx(130.0 + (115.0 + LOST - 60.0))
    # and a little later there, on red: that wait too (until 215 s)
    later = normal_trip_s(60.0, 230.0, [_leg(60.0), _leg(130.0)])
    assert later == pytest.approx(170.0 + (115.0 + LOST - 60.0) + (215.0 + LOST - 187.0))


def _meter() -> ImpactMeter:
    return ImpactMeter(links_into={"n": [0, 1, 2]}, cycles_s={"n": 60.0}, link_count=3)


def _observe(meter: ImpactMeter, queue: list[float], start: float, end: float) -> list[str]:
    settled = []
    for now in np.arange(start, end, 1.0):
        settled += meter.observe(np.array(queue), float(now))
    return settled


def test_the_cross_streets_cost_is_their_queue_above_its_level_until_they_recover() -> None:
    meter = _meter()
    meter.start("C1")
    _observe(meter, [5.0, 2.0, 1.0], 0.0, 2000.0)  # the level settles at 2 + 1 across
    assert not meter.measures("C1", "n")
    meter.opened("C1", "n", 0, 0.2, 2000.0)
    assert meter.measures("C1", "n")
    seen = meter.approach_at("C1", "n")
    assert seen is not None
    assert seen[0] == 0.2
    assert seen[1] == pytest.approx(5.0)
    _observe(meter, [5.0, 6.0, 1.0], 2000.0, 2030.0)  # 4 more for 30 s while its window is open
    meter.passed("C1", "n", 2030.0)
    meter.ended("C1", 2030.0, (100.0, 160.0))
    during = meter.report("C1")
    assert during is not None
    assert during.recovering == 1
    assert during.recovery_s is None
    settled = _observe(meter, [5.0, 2.5, 1.0], 2030.0, 2200.0)  # back within the slack
    assert settled == ["C1"]
    impact = meter.report("C1")
    assert impact is not None
    assert impact.cross_delay_veh_s == pytest.approx(4.0 * 30.0 + 0.5 * 60.0, rel=0.05)
    assert impact.recovery_s == pytest.approx(60.0, abs=1.0)  # one whole cycle
    assert (impact.trip_s, impact.normal_trip_s, impact.time_saved_s) == (100.0, 160.0, 60.0)
    assert (impact.intersections, impact.recovering, impact.unrecovered) == (1, 0, 0)


def test_cross_streets_that_never_recover_are_given_up_on_and_said_so() -> None:
    meter = _meter()
    meter.start("C1")
    _observe(meter, [0.0, 2.0, 0.0], 0.0, 1000.0)
    meter.opened("C1", "n", 0, 0.0, 1000.0)
    meter.ended("C1", 1000.0)
    settled = _observe(meter, [0.0, 9.0, 0.0], 1000.0, 1000.0 + RECOVERY_LIMIT_S + 2.0)
    assert settled == ["C1"]
    impact = meter.report("C1")
    assert impact is not None
    assert (impact.unrecovered, impact.recovery_s, impact.time_saved_s) == (1, None, None)


def test_a_corridor_nothing_opened_for_costs_nothing_and_forgotten_ones_report_nothing() -> None:
    meter = _meter()
    meter.start("C1")
    _observe(meter, [3.0, 3.0, 3.0], 0.0, 100.0)
    impact = meter.report("C1")
    assert impact is not None
    assert impact.cross_delay_veh_s == 0.0
    assert impact.intersections == 0
    meter.forget("C1")
    assert meter.report("C1") is None
    meter.opened("C1", "n", 0, 0.0, 100.0)  # late news of a forgotten corridor changes nothing
    assert meter.report("C1") is None


def test_recovery_is_judged_over_a_cycle_of_time_however_often_the_service_ticks() -> None:
    """Five calls a second (the service's tick in the field): one observation a second is
    taken, and the cycle's average is over 60 s of them."""
    meter = _meter()
    meter.start("C1")
    for now in np.arange(0.0, 1000.0, 0.2):
        meter.observe(np.array([0.0, 2.0, 0.0]), float(now))
    meter.opened("C1", "n", 0, 0.0, 1000.0)
    meter.ended("C1", 1000.0)
    settled: list[str] = []
    for now in np.arange(1000.0, 1200.0, 0.2):
        late = now < 1030.0  # its queues stay long for 30 s after the vehicle passed
        settled += meter.observe(np.array([0.0, 9.0 if late else 2.0, 0.0]), float(now))
    assert settled == ["C1"]
    impact = meter.report("C1")
    assert impact is not None
    assert impact.recovery_s is not None
    # back within 2 of the level 2 when the last 60 s hold at most 120 / 7 observations of
    # the 9 (7 too many): those of 1,013-1,029 s, at t = 1,072 s
    assert impact.recovery_s == pytest.approx(72.0, abs=0.5)


def test_a_stalled_or_stepped_clock_neither_inflates_the_cost_nor_counts_backwards() -> None:
    meter = _meter()
    meter.start("C1")
    _observe(meter, [0.0, 2.0, 0.0], 0.0, 1000.0)
    meter.opened("C1", "n", 0, 0.0, 1000.0)
    meter.observe(np.array([0.0, 12.0, 0.0]), 1000.0 + 3600.0)  # an hour without a look
    meter.observe(np.array([0.0, 12.0, 0.0]), 1000.0 + 10.0)  # the clock stepped back
    impact = meter.report("C1")
    assert impact is not None
    assert impact.cross_delay_veh_s == pytest.approx(10.0 * 10.0)  # one step, at most 10 s


def test_a_re_route_that_drops_an_intersection_lets_it_recover_from_then() -> None:
    meter = _meter()
    meter.start("C1")
    _observe(meter, [0.0, 2.0, 0.0], 0.0, 1000.0)
    meter.opened("C1", "n", 0, 0.0, 1000.0)
    meter.held_only("C1", {"other"}, 1010.0)
    settled = _observe(meter, [0.0, 2.0, 0.0], 1010.0, 1100.0)
    assert settled == []  # the corridor goes on: its figures are not final
    impact = meter.report("C1")
    assert impact is not None
    assert (impact.recovering, impact.intersections) == (0, 1)


@pytest.mark.parametrize("watched_s", [60.0, 120.0, 180.0])
def test_a_meter_just_started_takes_the_average_it_saw_as_the_level_not_its_first_sample(
    watched_s: float,
) -> None:
    """A cloud's restart (or a run's start) begins at one phase of the cross streets' cycle:
    8 queued for half of each 60 s cycle, none the other half, first seen at 8. One, two or
    three whole cycles later, the level is the average of what was seen, not that first
    sample (5.9 after two cycles, when it was held until the memory forgot it)."""
    meter = _meter()
    for now in np.arange(0.0, watched_s, 1.0):
        queued = 8.0 if now % 60.0 < 30.0 else 0.0
        meter.observe(np.array([0.0, queued, 3.0]), float(now))
    assert meter.level_of(1) == pytest.approx(4.0, abs=0.5)
    assert meter.level_of(2) == pytest.approx(3.0)  # a steady queue is its level from the start
