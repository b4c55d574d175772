"""The Numba engine against numbers derived by hand from its model (kernels' docstring)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M
from citybrain.simulator import kernels
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import Trips, fixed_route, free_flow_time_s, random_trips
from citybrain.simulator.engine import LOST_TIME_S, Simulation
from citybrain.simulator.networks import RoadNetwork, arterial, grid

from .simhelpers import all_groups_mask, check_conservation, group_mask, vehicles

SPEED = 13.9
"""The generators' default speed limit (m/s)."""

ARTERIAL_1 = compile_network(arterial(1))
EAST = ["west-a01", "a01-east"]


def _all_green(sim: Simulation) -> None:
    for c in range(len(sim.net.controller_ids)):
        sim.set_override(c, all_groups_mask(sim.net, c))


@pytest.mark.parametrize(
    ("road", "route", "length"),
    [
        # the arterial's sections sum to its 7 km length
        (arterial(3), ["west-a01", "a01-a02", "a02-a03", "a03-east"], 7000.0),
        # two 150 m feeders through one grid junction
        (grid(1, 1), ["bW0-g0_0", "g0_0-bE0"], 300.0),
        # a left turn onto the cross street: 200 m
        (grid(1, 1, feeder_m=200.0), ["bW0-g0_0", "g0_0-bN0"], 400.0),
    ],
)
@pytest.mark.parametrize(("speed_factor", "depart"), [(1.0, 0.0), (0.95, 0.3), (1.3, 17.75)])
def test_a_lone_vehicle_on_green_travels_in_free_flow_time(
    road: RoadNetwork, route: list[str], length: float, speed_factor: float, depart: float
) -> None:
    net = compile_network(road)
    trips = fixed_route(net, route, depart_s=depart, name="V", speed_factor=speed_factor)
    sim = Simulation(net, trips)
    _all_green(sim)
    speed = SPEED * speed_factor
    sim.advance(depart + length / speed + 5.0)
    assert sim.state[0] == kernels.ARRIVED
    assert sim.entered[0] == depart
    assert abs(sim.arrived[0] - (depart + length / speed)) < 1e-6
    assert abs(sim.arrived[0] - depart - free_flow_time_s(net, trips, 0)) < 1e-6
    assert sim.stops[0] == 0
    # each stop line is passed after the links before it, at the desired speed
    passed = depart
    for hop, link in enumerate(route):
        assert abs(sim.hop_enter[hop] - passed) < 1e-6
        passed += net.link_length[net.link_index[link]] / speed
    assert sim.vehicles_in_network == 0
    assert int(sim.link_count.sum()) == 0


@pytest.mark.parametrize(
    ("target", "group", "lanes", "saturation"),
    [
        ("a01-east", "2", 2, 1800.0),  # through: lanes 0 and 1
        ("a01-east", "2", 2, 1500.0),  # a headway (1.2 s) off the 1 s step grid
        ("a01-a01s", "2", 1, 1800.0),  # right: kerb lane only, runs with the through
        ("a01-a01n", "5", 1, 1700.0),  # left: its own lane and group
    ],
)
def test_a_standing_queue_discharges_at_the_saturation_headway(
    target: str, group: str, lanes: int, saturation: float
) -> None:
    net = compile_network(arterial(1, saturation_flow_vphpl=saturation))
    headway = 3600.0 / (saturation * lanes)
    count = 60
    trips = vehicles(net, ["west-a01", target], [0.0] * count)
    sim = Simulation(net, trips)
    sim.set_override(0, 0)
    sim.advance(400.0)  # the queue has formed: 3.6 km at 13.9 m/s takes 257 s
    m = net.movement_between(net.link_index["west-a01"], net.link_index[target])
    assert sim.q_len[m] == count
    assert (sim.state == kernels.QUEUED).all()
    assert net.mv_headway[m] == pytest.approx(headway)
    green_at = sim.now
    sim.set_override(0, group_mask(net, 0, [group]))
    sim.advance(LOST_TIME_S + count * headway + 3.0)
    assert (sim.hop == 1).all()
    leave = np.sort(sim.hop_enter[trips.route_start + 1])
    expected = green_at + LOST_TIME_S + headway * np.arange(count)
    np.testing.assert_allclose(leave, expected, rtol=0.0, atol=1e-9)
    # every one of them stopped once (waited far longer than a second)
    assert (sim.stops == 1).all()


def test_a_queue_keeps_its_order_and_a_faster_vehicle_behind_it_waits() -> None:
    """An ambulance reaching a standing queue joins its back and leaves after all of it."""
    net = ARTERIAL_1
    ahead = 20
    cars = vehicles(net, EAST, [2.0 * i for i in range(ahead)])
    ambulance = fixed_route(net, EAST, depart_s=300.0, name="AMB-1", speed_factor=1.3)
    trips = Trips.concat([cars, ambulance])
    amb = ahead
    sim = Simulation(net, trips)
    sim.set_override(0, 0)
    # the cars queue by 300 s; the ambulance needs 3566 m / 18.07 m/s = 197 s to reach them
    sim.advance(560.0)
    m = net.movement_between(net.link_index["west-a01"], net.link_index["a01-east"])
    assert sim.q_len[m] == ahead + 1
    assert sim.q_tail[m] == amb
    assert sim.state[amb] == kernels.QUEUED
    back = net.link_length[0] - ahead * JAM_SPACING_M / 2  # 20 cars on the two through lanes
    assert sim.position[amb] == pytest.approx(back)
    assert sim.joined[amb] == pytest.approx(300.0 + back / (SPEED * 1.3))
    green_at = sim.now
    sim.set_override(0, group_mask(net, 0, ["2"]))
    sim.advance(60.0)
    leave = sim.hop_enter[trips.route_start + 1]
    assert (np.diff(leave[:ahead]) > 0).all(), "cars left out of their arrival order"
    assert leave[amb] > leave[:ahead].max()
    assert leave[amb] == pytest.approx(green_at + LOST_TIME_S + ahead * 1.0)
    assert sim.stops[amb] == 1


def test_no_vehicle_crosses_a_red_stop_line() -> None:
    net = compile_network(arterial(2))
    trips = random_trips(net, seed=4, duration_s=500.0, vehicles_per_hour=3000.0)
    sim = Simulation(net, trips)
    for c in range(len(net.controller_ids)):
        sim.set_override(c, 0)
    sim.advance(700.0)
    # every route starts on a boundary link, whose end is a signalized stop line
    assert trips.count > 200
    assert int(sim.stop_count.sum()) == 0
    assert (sim.hop == 0).all()
    assert not (sim.state == kernels.ARRIVED).any()
    assert np.isnan(sim.arrived).all()


def test_only_the_green_groups_movements_cross() -> None:
    net = ARTERIAL_1
    trips = random_trips(net, seed=8, duration_s=600.0, vehicles_per_hour=3000.0)
    sim = Simulation(net, trips)
    allowed = {"4", "8"}  # side-street throughs (and their rights)
    sim.set_override(0, group_mask(net, 0, allowed))
    sim.advance(800.0)
    road = net.road.network
    crossed = np.flatnonzero(sim.hop >= 1)
    used = {net.movement_ids[trips.route_moves[trips.route_start[v]]] for v in crossed}
    assert used, "nothing crossed on green"
    assert {road.movement_by_id[m].signal_group for m in used} == allowed
    # and the other movements' vehicles are all still waiting at the stop line
    stuck = np.flatnonzero((sim.hop == 0) & (sim.state == kernels.QUEUED))
    for v in stuck:
        move = net.movement_ids[trips.route_moves[trips.route_start[v]]]
        assert road.movement_by_id[move].signal_group not in allowed


def test_storage_is_never_exceeded_and_no_vehicle_is_lost() -> None:
    """A saturated grid with short links: queues spill back to the entries, every step."""
    net = compile_network(grid(2, 2, spacing_m=40.0, feeder_m=40.0))
    trips = random_trips(net, seed=2, duration_s=400.0, vehicles_per_hour=12_000.0)
    sim = Simulation(net, trips)
    full_links = 0
    blocked_entries = 0
    for _ in range(500):
        sim.advance(1.0)
        assert (sim.link_count <= net.link_storage).all(), "a link holds more than fits"
        check_conservation(sim)
        full_links = max(full_links, int((sim.link_count == net.link_storage).sum()))
        blocked_entries = max(blocked_entries, int(sim.n_waiting[0]))
    assert full_links > 0, "the run never filled a link: not a spillback test"
    assert blocked_entries > 0, "no entry was ever blocked: not a spillback test"
    assert int((sim.state == kernels.ARRIVED).sum()) > 0


def _summary(sim: Simulation) -> dict[str, NDArray[np.generic]]:
    return {
        "arrived": sim.arrived,
        "entered": sim.entered,
        "stops": sim.stops,
        "hop_enter": sim.hop_enter,
        "link_delay": sim.link_delay,
        "stop_count": sim.stop_count,
    }


def _run_random(net: CompiledNetwork, seed: int) -> tuple[Trips, Simulation]:
    trips = random_trips(net, seed=seed, duration_s=600.0, vehicles_per_hour=2500.0)
    sim = Simulation(net, trips)
    sim.advance(900.0)
    return trips, sim


def test_same_seed_same_run_different_seed_different_run() -> None:
    net = compile_network(arterial(2))
    trips_a, a = _run_random(net, 11)
    trips_b, b = _run_random(net, 11)
    _, c = _run_random(net, 12)
    assert np.array_equal(trips_a.depart, trips_b.depart)
    assert np.array_equal(trips_a.route_links, trips_b.route_links)
    for key, value in _summary(a).items():
        assert np.array_equal(value, _summary(b)[key], equal_nan=True), key
    assert (a.state == kernels.ARRIVED).sum() > 50
    other = _summary(c)
    assert any(
        value.shape != other[key].shape or not np.array_equal(value, other[key], equal_nan=True)
        for key, value in _summary(a).items()
    )
    assert not np.array_equal(a.stop_count, c.stop_count)


def _kernel_arguments(sim: Simulation, steps: int) -> tuple[Any, ...]:
    return sim.kernel_args(steps)


def test_the_compiled_kernel_and_its_python_source_agree_exactly() -> None:
    net = compile_network(grid(1, 2, spacing_m=60.0, feeder_m=50.0))
    trips = random_trips(net, seed=3, duration_s=300.0, vehicles_per_hour=5000.0)
    compiled, python = Simulation(net, trips), Simulation(net, trips)
    assert len(_kernel_arguments(compiled, 1)) == kernels.run_steps.py_func.__code__.co_argcount
    for phase in range(3):
        if phase == 1:  # part of the run on an override, to cover that path too
            for sim in (compiled, python):
                sim.set_override(0, group_mask(net, 0, ["4", "8"]))
        if phase == 2:
            for sim in (compiled, python):
                sim.set_override(0, None)
        compiled.advance(100.0)
        python.now = float(kernels.run_steps.py_func(*_kernel_arguments(python, 100)))
        assert python.now == compiled.now
    arrays = {k: v for k, v in vars(compiled).items() if isinstance(v, np.ndarray)}
    assert len(arrays) > 25
    for name, value in arrays.items():
        other = getattr(python, name)
        assert value.dtype == other.dtype, name
        assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), name
    # the scenario exercised queues, stops and arrivals
    assert (compiled.stops > 0).any()
    assert (compiled.state == kernels.ARRIVED).sum() > 50


def test_simulation_refuses_bad_input() -> None:
    net = ARTERIAL_1
    good = vehicles(net, EAST, [0.0])
    with pytest.raises(ValidationError, match="dt_s"):
        Simulation(net, good, dt_s=0.0)
    with pytest.raises(ValidationError, match="start_s"):
        Simulation(net, good, start_s=float("nan"))
    bad_time = Trips(
        np.array([float("nan")]),
        good.route_start,
        good.route_len,
        good.route_links,
        good.route_moves,
        good.speed_factor,
        good.emergency,
        {},
    )
    with pytest.raises(ValidationError, match="depart"):
        Simulation(net, bad_time)
    bad_link = Trips(
        good.depart,
        good.route_start,
        good.route_len,
        np.array([0, net.links], dtype=np.int32),
        good.route_moves,
        good.speed_factor,
        good.emergency,
        {},
    )
    with pytest.raises(ValidationError, match="route_links"):
        Simulation(net, bad_link)
    sim = Simulation(net, good)
    with pytest.raises(ValidationError, match="seconds"):
        sim.advance(-1.0)


def test_a_group_green_in_two_consecutive_phases_keeps_moving_through_the_change() -> None:
    from citybrain.signal_plans.timing import Phase, TimingPlan
    from citybrain.simulator.networks import RoadNetwork

    from .simhelpers import normal_masks

    road = arterial(1)
    signals = road.plans["a01"].signals
    phases = (
        Phase("lefts", frozenset({"1", "5"})),
        Phase("west_lead", frozenset({"1", "6"})),  # 1 overlaps from the previous phase
        Phase("main", frozenset({"2", "6"})),
        Phase("side_lefts", frozenset({"3", "7"})),
        Phase("side", frozenset({"4", "8"})),
    )
    plan = TimingPlan("normal", signals, phases, (10.0, 22.0, 30.0, 8.0, 22.0), 0.0)
    net = compile_network(RoadNetwork("overlap", road.network, {"a01": plan}))
    bits = net.group_bits[0]
    change = plan.greens_s[0] + plan.intergreen_after_s(0) - 0.5  # last moment before phase 2
    through_change = normal_masks(net, change, 2.0)[0]
    assert through_change >> bits["1"] & 1  # the overlap keeps going
    assert not through_change >> bits["5"] & 1  # the ending group stopped after its end lag


def test_routes_end_where_every_way_on_has_zero_weight() -> None:
    from citybrain.simulator import kernels

    net = compile_network(arterial(2))
    origins = np.arange(net.links, dtype=np.int32)
    links = np.zeros((net.links, 10), dtype=np.int32)
    moves = np.zeros((net.links, 10), dtype=np.int32)
    lengths = np.zeros(net.links, dtype=np.int32)
    kernels.random_walk_routes(
        1,
        origins,
        10,
        np.zeros(4),
        net.link_out_start,
        net.mv_to,
        net.mv_turn,
        links,
        moves,
        lengths,
    )
    assert np.all(lengths == 1)
    assert np.all(moves[:, 0] == -1)
