"""Emulated loop detectors against what the vehicles did."""

from __future__ import annotations

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import random_trips
from citybrain.simulator.detectors import DetectorCards, DetectorNoise, Failure
from citybrain.simulator.engine import Simulation
from citybrain.simulator.networks import arterial

from .simhelpers import vehicles

NET = compile_network(arterial(2))
APPROACHES = {a.id: NET.link_index[a.link_id] for a in NET.road.network.approaches}


def _busy_run() -> tuple[Simulation, DetectorCards]:
    trips = random_trips(NET, seed=21, duration_s=900.0, vehicles_per_hour=3000.0)
    sim = Simulation(NET, trips)
    return sim, DetectorCards(sim)


def _crossings(sim: Simulation, link: int, t0: float, t1: float) -> int:
    """Vehicles that left ``link`` over its stop line in [t0, t1), from their own records."""
    trips = sim.trips
    count = 0
    for v in range(trips.count):
        start, length = int(trips.route_start[v]), int(trips.route_len[v])
        for hop in range(min(int(sim.hop[v]), length - 1)):
            if trips.route_links[start + hop] == link:
                left = sim.hop_enter[start + hop + 1]
                count += int(t0 <= left < t1)
    return count


def test_stop_bar_counts_are_the_departures_of_each_interval() -> None:
    sim, cards = _busy_run()
    sim.advance(300.0)
    cards.read()  # discard the warm-up
    total = 0
    for t0 in (300.0, 420.0, 540.0):
        sim.advance(120.0)
        readings = cards.read()
        assert set(readings) == set(APPROACHES)
        for approach, reading in readings.items():
            assert reading.interval_s == 120.0
            expected = _crossings(sim, APPROACHES[approach], t0, t0 + 120.0)
            assert reading.stop_bar_count == expected, approach
            total += expected
            assert 0.0 <= reading.stop_bar_occupancy <= 1.0
            assert 0.0 <= reading.advance_occupancy <= 1.0
    assert total > 100


def test_a_standing_queue_occupies_the_stop_bar_and_then_the_advance_loop() -> None:
    net = compile_network(arterial(1))
    sim = Simulation(net, vehicles(net, ["west-a01", "a01-east"], [2.0 * i for i in range(30)]))
    cards = DetectorCards(sim)
    sim.set_override(0, 0)
    sim.advance(200.0)  # nobody has arrived yet (3566 m at 13.9 m/s is 257 s)
    before = cards.read()["a01:E"]
    assert (before.stop_bar_occupancy, before.advance_occupancy) == (0.0, 0.0)
    sim.advance(400.0)  # 30 cars on two lanes reach 112 m back, past the loop 60 m back
    standing = cards.read()["a01:E"]
    assert standing.stop_bar_count == 0
    assert standing.stop_bar_occupancy > 0.5
    assert 0.0 < standing.advance_occupancy < standing.stop_bar_occupancy
    assert cards.true_queues()["a01:E"] == 30


def test_a_loop_that_misses_every_vehicle_counts_nothing() -> None:
    sim, _ = _busy_run()
    cards = DetectorCards(sim, noise=DetectorNoise(miss_rate=1.0), seed=3)
    sim.advance(600.0)
    readings = cards.read()
    assert int(sim.stop_count.sum()) > 100
    for reading in readings.values():
        assert reading.stop_bar_count == 0
        assert reading.advance_count == 0


def test_half_missed_counts_are_about_half() -> None:
    sim, _ = _busy_run()
    cards = DetectorCards(sim, noise=DetectorNoise(miss_rate=0.5), seed=3)
    sim.advance(600.0)
    counted = sum(r.stop_bar_count for r in cards.read().values())
    true = int(sim.stop_count.sum())
    assert abs(counted - true / 2) < 4.0 * np.sqrt(true / 4)


def test_stuck_on_reads_occupied_and_no_count_until_repaired() -> None:
    sim, cards = _busy_run()
    cards.fail("a01:E", "stop", Failure.STUCK_ON)
    cards.fail("a01:W", "advance", Failure.STUCK_OFF)
    sim.advance(600.0)
    readings = cards.read()
    assert readings["a01:E"].stop_bar_count == 0
    assert readings["a01:E"].stop_bar_occupancy == 1.0
    assert readings["a01:W"].advance_count == 0
    assert readings["a01:W"].advance_occupancy == 0.0
    # the other loops work
    assert readings["a01:E"].advance_count > 0
    assert readings["a01:W"].stop_bar_count > 0
    assert readings["a02:E"].stop_bar_count > 0
    cards.fail("a01:E", "stop", None)
    link = APPROACHES["a01:E"]
    occupied_before = int(sim.stop_occupied[link])
    sim.advance(120.0)
    repaired = cards.read()["a01:E"]
    assert repaired.stop_bar_count == _crossings(sim, link, 600.0, 720.0)
    assert repaired.stop_bar_count > 0
    assert repaired.stop_bar_occupancy == (int(sim.stop_occupied[link]) - occupied_before) / 120


def test_true_queues_are_the_engines_standing_queues() -> None:
    sim, cards = _busy_run()
    seen = 0
    for _ in range(8):
        sim.advance(60.0)
        queues = cards.true_queues()
        for approach, link in APPROACHES.items():
            assert queues[approach] == sim.link_queued[link]
            standing = [
                v
                for v in np.flatnonzero(sim.state == 2)
                if sim.trips.route_links[sim.trips.route_start[v] + sim.hop[v]] == link
            ]
            assert queues[approach] == len(standing)
            seen += queues[approach]
    assert seen > 0


@pytest.mark.parametrize(("approach", "loop"), [("a09:E", "stop"), ("a01:E", "middle")])
def test_bad_approach_or_loop_names_raise(approach: str, loop: str) -> None:
    _, cards = _busy_run()
    with pytest.raises(ValidationError):
        cards.fail(approach, loop, Failure.STUCK_ON)


@pytest.mark.parametrize(("miss", "sd"), [(-0.1, 0.0), (1.5, 0.0), (0.0, float("nan"))])
def test_bad_noise_raises(miss: float, sd: float) -> None:
    with pytest.raises(ValidationError):
        DetectorNoise(miss_rate=miss, occupancy_sd=sd)


def test_the_advance_loop_counts_every_vehicle_that_passes_it() -> None:
    net = compile_network(arterial(1))
    sim = Simulation(net, vehicles(net, ["west-a01", "a01-east"], [3.0 * i for i in range(40)]))
    cards = DetectorCards(sim)
    sim.set_override(0, 0)
    sim.advance(500.0)  # a 40-car queue on two lanes: 150 m, the loop is 60 m back
    sim.set_override(0, None)
    sim.advance(300.0)
    reading = cards.read()["a01:E"]
    assert reading.stop_bar_count == 40  # every car crossed the stop line ...
    assert reading.advance_count == 40  # ... so every car crossed the loop 60 m before it
