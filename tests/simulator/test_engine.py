"""The Numba engine against numbers derived by hand from its model (kernels' docstring)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import pytest
from numpy.typing import NDArray

from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M, Lane, Turn
from citybrain.simulator import kernels
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import (
    Trips,
    fixed_route,
    free_flow_time_s,
    random_trips,
    route_lengths_m,
)
from citybrain.simulator.engine import (
    ACCELERATION_MPS2,
    DAWDLE_MPS,
    DECELERATION_MPS2,
    LOST_TIME_S,
    Simulation,
)
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
@pytest.mark.parametrize("dawdle", [0.0, DAWDLE_MPS])
def test_a_lone_vehicle_on_green_travels_at_its_speed_less_its_dawdling(
    road: RoadNetwork,
    route: list[str],
    length: float,
    speed_factor: float,
    depart: float,
    dawdle: float,
) -> None:
    """Free flow (the limit times its factor) only for a driver who does not dawdle."""
    net = compile_network(road)
    trips = fixed_route(net, route, depart_s=depart, name="V", speed_factor=speed_factor)
    sim = Simulation(net, trips, dawdle_mps=dawdle)
    _all_green(sim)
    speed = SPEED * speed_factor - dawdle
    sim.advance(depart + length / speed + 5.0)
    assert sim.state[0] == kernels.ARRIVED
    assert sim.vehicles.entered[0] == depart
    assert abs(sim.arrived[0] - (depart + length / speed)) < 1e-6
    free_flow = free_flow_time_s(net, trips, 0)
    assert sim.arrived[0] - depart - free_flow == pytest.approx(
        free_flow * dawdle / speed, abs=1e-6
    )
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
    assert sim.q_len[net.mv_queue[m]] == count
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
    # the cars queue by 300 s; the ambulance needs 3566 m / 17.42 m/s = 205 s to reach them
    sim.advance(560.0)
    m = net.movement_between(net.link_index["west-a01"], net.link_index["a01-east"])
    queue = net.mv_queue[m]
    assert sim.q_len[queue] == ahead + 1
    assert sim.queues.q_tail[queue] == amb
    assert sim.state[amb] == kernels.QUEUED
    back = net.link_length[0] - ahead * JAM_SPACING_M / 2  # 20 cars on the two through lanes
    assert sim.position[amb] == pytest.approx(back)
    assert sim.vehicles.joined[amb] == pytest.approx(300.0 + back / (SPEED * 1.3 - DAWDLE_MPS))
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
        # a link, or the lanes of one of its turns, holds all it can
        full = (sim.link_count == net.link_storage).sum() + (
            (sim.q_count == net.qu_storage) & (net.qu_storage > 0)
        ).sum()
        full_links = max(full_links, int(full))
        blocked_entries = max(blocked_entries, int(sim.n_waiting[0]))
    assert full_links > 0, "the run never filled a link's lanes: not a spillback test"
    assert blocked_entries > 0, "no entry was ever blocked: not a spillback test"
    assert int((sim.state == kernels.ARRIVED).sum()) > 0


def _summary(sim: Simulation) -> dict[str, NDArray[np.generic]]:
    return {
        "arrived": sim.arrived,
        "entered": sim.vehicles.entered,
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


def _advance_in_python(sim: Simulation, steps: int) -> None:
    """Advance ``sim`` by ``steps`` with the kernel's Python source, on the named structures
    (the engine passes them to the compiled kernel as plain tuples)."""
    sim.now = float(kernels.run_steps.py_func(steps, sim.now, *sim.kernel_state()))


def _state_arrays(sim: Simulation) -> dict[str, NDArray[np.generic]]:
    """Every array the kernel updates, by structure and field."""
    structures = (sim.signals, sim.queues, sim.links, sim.vehicles)
    return {
        f"{type(structure).__name__}.{name}": value
        for structure in structures
        for name, value in structure._asdict().items()
    }


def test_the_compiled_kernel_and_its_python_source_agree_exactly() -> None:
    net = compile_network(grid(1, 2, spacing_m=60.0, feeder_m=50.0))
    trips = random_trips(net, seed=3, duration_s=300.0, vehicles_per_hour=5000.0)
    compiled, python = Simulation(net, trips), Simulation(net, trips)
    assert 2 + len(compiled.kernel_state()) == kernels.run_steps.py_func.__code__.co_argcount
    for phase in range(3):
        if phase == 1:  # part of the run on an override, to cover that path too
            for sim in (compiled, python):
                sim.set_override(0, group_mask(net, 0, ["4", "8"]))
        if phase == 2:
            for sim in (compiled, python):
                sim.set_override(0, None)
        compiled.advance(100.0)
        _advance_in_python(python, 100)
        assert python.now == compiled.now
    arrays = _state_arrays(compiled)
    assert len(arrays) > 25
    for name, value in arrays.items():
        other = _state_arrays(python)[name]
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
    for absurd in (-1.0, math.inf, math.nan, 1e12):  # 1e12 s: a caller's slip, run for ever
        with pytest.raises(ValidationError, match="seconds"):
            sim.advance(absurd)


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


# --- lanes, short links, junctions (what real city networks need) ------------------------


def _reshaped(
    road: RoadNetwork,
    *,
    lengths: Mapping[str, float] | None = None,
    lanes: Mapping[str, tuple[Lane, ...]] | None = None,
) -> CompiledNetwork:
    """``road`` with some links' lengths or lanes changed (the nodes stay where they are)."""
    links = tuple(
        dataclasses.replace(
            link,
            length_m=(lengths or {}).get(link.id, link.length_m),
            lanes=(lanes or {}).get(link.id, link.lanes),
        )
        for link in road.network.links
    )
    length = {link.id: link.length_m for link in links}
    detectors = tuple(
        dataclasses.replace(
            d, distance_from_stop_line_m=min(d.distance_from_stop_line_m, length[d.link_id])
        )
        for d in road.network.detectors
    )
    network = dataclasses.replace(road.network, links=links, detectors=detectors)
    return compile_network(dataclasses.replace(road, network=network))


ONE_LANE: tuple[Lane, ...] = (Lane(0, frozenset({Turn.LEFT, Turn.THROUGH, Turn.RIGHT})),)
EAST_LEFT = ["west-a01", "a01-a01n"]


def _order(net: CompiledNetwork, routes: list[list[str]], *, ambulance: int = -1) -> Trips:
    """One vehicle per route, leaving a second apart in this order; ``ambulance`` is the index
    of an emergency vehicle among them."""
    parts = [
        fixed_route(
            net, route, depart_s=float(i), name=f"V{i}", emergency=i == ambulance, speed_factor=1.0
        )
        for i, route in enumerate(routes)
    ]
    return Trips.concat(parts)


@pytest.mark.parametrize(("lanes", "throughs_cross"), [(ONE_LANE, False), (None, True)])
def test_a_car_waiting_to_turn_holds_those_behind_it_only_where_they_share_its_lane(
    lanes: tuple[Lane, ...] | None, throughs_cross: bool
) -> None:
    """On a one-lane street a left turner waiting for its arrow holds the throughs behind it;
    with a left-turn lane of its own (the standard layout) they drive past it."""
    net = _reshaped(arterial(1), lanes={"west-a01": lanes} if lanes else None)
    trips = _order(net, [EAST_LEFT, EAST, EAST, EAST])
    sim = Simulation(net, trips)
    sim.set_override(0, group_mask(net, 0, ["2"]))  # throughs and rights go, lefts wait
    sim.advance(400.0)
    check_conservation(sim)
    assert sim.hop[0] == 0
    assert sim.state[0] == kernels.QUEUED
    assert bool((sim.hop[1:] >= 1).all()) is throughs_cross
    one = net.movement_between(net.link_index["west-a01"], net.link_index["a01-east"])
    left = net.movement_between(net.link_index["west-a01"], net.link_index["a01-a01n"])
    assert (net.mv_queue[one] == net.mv_queue[left]) is not throughs_cross


def test_movements_sharing_lanes_discharge_at_those_lanes_saturation_flow() -> None:
    """Through and right share the kerb lane: the two lanes send one vehicle a second (1,800
    veh/h/lane), not the throughs' two lanes plus the rights' one lane at once."""
    net = ARTERIAL_1
    right = ["west-a01", "a01-a01s"]
    trips = _order(net, [right] * 20 + [EAST] * 20)
    sim = Simulation(net, trips)
    sim.set_override(0, 0)
    sim.advance(400.0)
    green_at = sim.now
    sim.set_override(0, group_mask(net, 0, ["2"]))
    sim.advance(60.0)
    leave = np.sort(sim.hop_enter[trips.route_start + 1])
    assert np.isfinite(leave).all()
    gaps = np.diff(leave)
    assert gaps.min() == pytest.approx(1.0)  # never faster than the two lanes together
    assert leave[-1] == pytest.approx(green_at + LOST_TIME_S + 39.0)
    # the rights keep to the kerb lane's own 2 s, the throughs fill the other lane meanwhile
    rights = np.sort(sim.hop_enter[trips.route_start[:20] + 1])
    assert np.diff(rights).min() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("routes", "crosses"),
    [
        ([EAST_LEFT, EAST], True),  # held for another turn: it makes way
        ([EAST_LEFT, EAST, EAST], False),  # a car ahead of it for its own turn: it waits
    ],
)
def test_an_emergency_vehicle_is_let_by_only_cars_held_for_another_turn(
    routes: list[list[str]], crosses: bool
) -> None:
    net = _reshaped(arterial(1), lanes={"west-a01": ONE_LANE})
    ambulance = len(routes) - 1
    trips = _order(net, routes, ambulance=ambulance)
    sim = Simulation(net, trips)
    sim.set_override(0, group_mask(net, 0, ["2"]))
    sim.advance(400.0)
    check_conservation(sim)
    assert sim.hop[0] == 0, "the left turner still waits for its arrow"
    assert bool(sim.hop[ambulance] >= 1) is crosses
    assert (sim.hop[1:ambulance] == 0).all(), "the car held ahead of it stays held"
    assert int(sim.queues.q_urgent.sum()) == (0 if crosses else 1)


def test_a_queue_reaches_back_over_the_junction_behind_its_link() -> None:
    """A 0.2 m stub between junctions 20 m apart: its queue stands on it and on the half of
    the 19.8 m uncovered that belongs to the junction behind (3 lanes x 10.1 m: 4 cars), each
    of its turns' lanes their share; a generated link (node to node) stores its own length."""
    net = _reshaped(grid(1, 2, spacing_m=20.0), lengths={"g0_0-g0_1": 0.2})
    stub = net.link_index["g0_0-g0_1"]
    assert net.link_storage[stub] == 4
    turns = range(net.link_out_start[stub], net.link_out_start[stub + 1])
    shares = {int(net.mv_queue[m]): int(net.qu_storage[net.mv_queue[m]]) for m in turns}
    assert sorted(shares.values()) == [1, 2]  # left lane, through-and-right lanes
    assert net.link_storage[net.link_index["bW0-g0_0"]] == 3 * 150 // JAM_SPACING_M
    # junctions 5 m apart: the stub still stores the car at each lane's stop line
    road = grid(1, 2, spacing_m=20.0)
    nodes = tuple(
        dataclasses.replace(n, x_m=5.0) if n.id == "g0_1" else n for n in road.network.intersections
    )
    close = dataclasses.replace(
        road, network=dataclasses.replace(road.network, intersections=nodes)
    )
    tiny = _reshaped(close, lengths={"g0_0-g0_1": 0.2})
    assert tiny.link_storage[stub] == 3


def test_a_stopped_vehicle_crosses_a_stub_in_the_time_a_standing_start_takes() -> None:
    """The stop loss it cannot pay on a 4 m link it pays on the next one: the stub is free
    again after a standing start (2 s at 2 m/s2), the trip takes as long as anywhere."""
    net = _reshaped(grid(1, 2, spacing_m=20.0), lengths={"g0_0-g0_1": 4.0})
    route = ["bW0-g0_0", "g0_0-g0_1", "g0_1-bE0"]
    trips = _order(net, [route])
    sim = Simulation(net, trips)
    sim.set_override(0, 0)
    sim.set_override(1, all_groups_mask(net, 1))
    sim.advance(60.0)
    assert sim.state[0] == kernels.QUEUED
    sim.set_override(0, all_groups_mask(net, 0))
    sim.advance(60.0)
    assert sim.state[0] == kernels.ARRIVED
    start = trips.route_start[0]
    left_stop, left_stub = sim.hop_enter[start + 1], sim.hop_enter[start + 2]
    junctions = [net.mv_junction_m[m] for m in trips.route_moves[start : start + 2]]
    assert junctions == [pytest.approx(8.0), pytest.approx(8.0)]  # 16 m uncovered by the stub
    standing = math.sqrt(2.0 * 4.0 / ACCELERATION_MPS2) + junctions[0] / SPEED
    assert standing - 1e-9 <= left_stub - left_stop < standing + 1.0  # next step at the latest
    loss = SPEED * 0.5 / ACCELERATION_MPS2  # pulling away: its wait at red absorbed its braking
    free = (4.0 + 150.0 + sum(junctions)) / SPEED
    assert free + loss - 1e-9 <= sim.arrived[0] - left_stop < free + loss + 1.0
    assert sim.stops[0] == 1


@pytest.mark.parametrize(
    ("waited", "braking_paid"),
    [(0.0, 1.0), (1.5, 1.0 - 1.5 / (SPEED / (2.0 * DECELERATION_MPS2))), (30.0, 0.0)],
)
def test_a_stop_costs_pulling_away_and_the_braking_its_wait_did_not_absorb(
    waited: float, braking_paid: float
) -> None:
    """Braking, a vehicle reaches its place in the queue later and waits that much less: a
    wait longer than the braking leaves only the pulling away to pay."""
    net = compile_network(arterial(1))
    model = Simulation(net, fixed_route(net, EAST, depart_s=0.0, name="V")).model
    pulling_away, braking = SPEED / (2.0 * ACCELERATION_MPS2), SPEED / (2.0 * DECELERATION_MPS2)
    lost = kernels._stop_loss(SPEED, waited, model)
    assert lost == pytest.approx(pulling_away + braking_paid * braking)


def test_crossing_a_junction_takes_its_distance_at_the_speed_limit() -> None:
    """Links 20 m shorter than the distance between their junctions (lanes ending at the
    junction's edge, as SUMO's do) leave 20 m of junction to cross between them."""
    road = arterial(1)
    shorter = {link.id: link.length_m - 20.0 for link in road.network.links}
    net = _reshaped(road, lengths=shorter)
    trips = fixed_route(net, EAST, depart_s=0.0, name="V", speed_factor=1.0)
    assert net.mv_junction_m[trips.route_moves[0]] == pytest.approx(20.0)
    sim = Simulation(net, trips, dawdle_mps=0.0)  # at the limit itself
    _all_green(sim)
    sim.advance(600.0)
    length = sum(net.link_length[net.link_index[link]] for link in EAST) + 20.0
    assert sim.arrived[0] == pytest.approx(length / SPEED)
    assert free_flow_time_s(net, trips, 0) == pytest.approx(length / SPEED)
    assert route_lengths_m(net, trips)[0] == pytest.approx(length)
    assert np.abs(sim.link_delay).max() < 1e-6, "the junction is not a delay"
    # the generated networks' links run from node to node: no junction to cross
    assert not ARTERIAL_1.mv_junction_m.any()


def test_the_kernel_and_its_python_source_agree_on_a_city_like_network() -> None:
    """Shared lanes, stubs, junction distances and an ambulance that is let by."""
    road = grid(2, 2, spacing_m=40.0, feeder_m=30.0)
    lengths = {link.id: link.length_m - 6.0 for link in road.network.links}
    lengths["g0_0-g0_1"] = 3.0
    shared = {link.id: ONE_LANE for link in road.network.links if link.id.startswith("g")}
    net = _reshaped(road, lengths=lengths, lanes=shared)
    traffic = random_trips(net, seed=5, duration_s=300.0, vehicles_per_hour=4000.0)
    ambulance = fixed_route(net, ["bW0-g0_0", "g0_0-g0_1", "g0_1-bE0"], depart_s=60.0, name="A")
    trips = Trips.concat([traffic, ambulance])
    compiled, python = Simulation(net, trips), Simulation(net, trips)
    for _ in range(3):
        compiled.advance(100.0)
        _advance_in_python(python, 100)
    for name, value in _state_arrays(compiled).items():
        assert np.array_equal(value, _state_arrays(python)[name], equal_nan=True), name
    check_conservation(compiled)
    assert (compiled.stops > 0).any()
    assert (compiled.state == kernels.ARRIVED).sum() > 50


def _permitted_lefts(
    lanes: Mapping[str, tuple[Lane, ...]] | None = None,
    *,
    road: RoadNetwork | None = None,
    node: str = "a01",
) -> CompiledNetwork:
    """The one-junction arterial (or ``road``) with the main lefts at ``node`` allowed during
    the main throughs (a permitted left, SUMO's ``g``): lefts no longer conflict with the
    opposing throughs."""
    from citybrain.signal_plans.timing import IntersectionSignals, Phase, TimingPlan

    road = road or arterial(1)
    signals = road.plans[node].signals
    permitted = {frozenset(pair) for pair in (("5", "6"), ("1", "2"), ("7", "8"), ("3", "4"))}
    relaxed = IntersectionSignals(
        signals.intersection_id,
        signals.timings,
        frozenset(p for p in signals.conflict_pairs if p not in permitted),
    )
    phases = (
        Phase("main", frozenset({"1", "2", "5", "6"})),
        Phase("side", frozenset({"3", "4", "7", "8"})),
    )
    timing = TimingPlan("permitted", relaxed, phases, (50.0, 30.0))
    plans = {**road.plans, node: timing}
    return _reshaped(dataclasses.replace(road, plans=plans), lanes=lanes)


def test_only_a_permitted_turn_gives_way() -> None:
    net = _permitted_lefts()
    left = net.movement_between(net.link_index["west-a01"], net.link_index["a01-a01n"])
    foes = {
        net.movement_ids[f]
        for f in net.mv_yield[net.mv_yield_start[left] : net.mv_yield_start[left + 1]]
    }
    assert foes == {"a01:WT", "a01:WR"}  # the opposing through, and the right into its link
    assert net.mv_is_foe[net.movement_index["a01:WT"]]
    # protected lefts (the generated plans) meet no one
    assert ARTERIAL_1.mv_yield.size == 0
    assert not ARTERIAL_1.mv_is_foe.any()


@pytest.mark.parametrize(("every_s", "waits"), [(2.0, True), (12.0, False)])
def test_a_permitted_left_waits_for_a_gap_in_the_opposing_stream(
    every_s: float, waits: bool
) -> None:
    """Opposing throughs 2 s apart leave no 4.5 s gap: the left turner waits until they stop
    coming; 12 s apart, it turns in the first gap."""
    net = _permitted_lefts()
    stream = [0.0 + every_s * i for i in range(int(120 / every_s))]
    west = ["east-a01", "a01-west"]
    opposing = vehicles(net, west, stream)
    # the left turner reaches the stop line 60 s after the stream's first vehicle
    length = {link: net.link_length[net.link_index[link]] for link in ("west-a01", "east-a01")}
    depart = 60.0 + (length["east-a01"] - length["west-a01"]) / SPEED
    turner = fixed_route(
        net, EAST_LEFT, depart_s=depart, name="L", emergency=False, speed_factor=1.0
    )
    trips = Trips.concat([opposing, turner])
    sim = Simulation(net, trips)
    sim.set_override(0, group_mask(net, 0, ["1", "2", "5", "6"]))
    sim.advance(400.0)
    check_conservation(sim)
    v = trips.count - 1
    turned = sim.hop_enter[trips.route_start[v] + 1]
    crossings = np.sort(sim.hop_enter[trips.route_start[:-1] + 1])
    arrived_at_line = sim.vehicles.joined[v]
    # a gap of at least 4.5 s around its turn: the last through 1 s before, the next 3.5 s after
    before, after = crossings[crossings <= turned], crossings[crossings > turned]
    assert before.size == 0 or turned - before[-1] >= 1.0 - 1e-9
    assert after.size == 0 or after[0] - turned >= 3.5 - 1e-9
    assert bool(turned - arrived_at_line > 20.0) is waits
    if waits:
        assert after.size == 0, "it turned only once the stream had passed"


def _left_behind_a_stream(net: CompiledNetwork, departs: list[tuple[list[str], float]]) -> Trips:
    """Opposing throughs every 2 s from 0 to 120 s (no 4.5 s gap: a permitted left waits for
    their end), and ``departs`` (route, departure) driving east."""
    stream = vehicles(net, ["east-a01", "a01-west"], [2.0 * i for i in range(60)])
    ours = [
        fixed_route(net, route, depart_s=at, name=f"E{i}", emergency=False, speed_factor=1.0)
        for i, (route, at) in enumerate(departs)
    ]
    return Trips.concat([stream, *ours])


def test_a_permitted_left_waits_inside_the_junction_and_its_lane_goes_on() -> None:
    """On one lane shared by every turn, a left turner that finds no gap waits past its stop
    line, inside the junction (SUMO's internal stop): the through behind it goes on; the
    next left turner waits at the line and holds the lane, so the through behind that one
    waits too. Once the stream has passed, both turn, in their order."""
    net = _permitted_lefts({"west-a01": ONE_LANE})
    straight = ["west-a01", "a01-east"]
    # all reach the stop line 2 s apart from about 60 s, while the stream still comes
    lead = (net.link_length[net.link_index["east-a01"]] - net.link_length[0]) / SPEED
    order = [EAST_LEFT, straight, EAST_LEFT, straight]
    trips = _left_behind_a_stream(net, [(r, 60.0 + lead + 2.0 * i) for i, r in enumerate(order)])
    sim = Simulation(net, trips)
    sim.set_override(0, group_mask(net, 0, ["1", "2", "5", "6"]))
    sim.advance(400.0)
    check_conservation(sim)
    first = trips.count - 4
    crossed = sim.hop_enter[trips.route_start[first:] + 1]
    stream_ends = np.max(sim.hop_enter[trips.route_start[:first] + 1])
    left_1, through_1, left_2, through_2 = crossed
    assert through_1 < stream_ends, "the through behind the waiting left went on"
    assert min(left_1, left_2, through_2) > stream_ends
    assert left_1 < left_2 < through_2


def test_a_left_waiting_inside_leaves_as_the_opposing_stream_stops() -> None:
    """Its green ends with the stream's: it is past its stop line, so it turns as soon as
    the stream has stopped coming (the intergreen), not a cycle later."""
    net = _permitted_lefts({"west-a01": ONE_LANE})
    lead = (net.link_length[net.link_index["east-a01"]] - net.link_length[0]) / SPEED
    trips = _left_behind_a_stream(net, [(EAST_LEFT, 60.0 + lead)])
    sim = Simulation(net, trips)
    sim.set_override(0, group_mask(net, 0, ["1", "2", "5", "6"]))
    # the stream reaches the stop line from ``reach`` on, the left turner 60 s later
    reach = net.link_length[net.link_index["east-a01"]] / (SPEED - DAWDLE_MPS)
    switch = float(np.ceil(reach + 80.0))
    sim.advance(switch)
    turner = trips.count - 1
    assert sim.queues.mv_inside[sim.vehicles.queued_move[turner]] == turner
    sim.set_override(0, group_mask(net, 0, ["3", "4", "7", "8"]))  # the side street's turn
    sim.advance(10.0)
    turned = sim.hop_enter[trips.route_start[turner] + 1]
    last_through = np.nanmax(sim.hop_enter[trips.route_start[:turner] + 1])
    assert turned >= switch
    assert last_through + kernels.FOE_CLEAR_S - 1e-9 <= turned <= last_through + 3.0


def test_a_permitted_left_does_not_wait_for_an_opposing_car_that_cannot_move() -> None:
    """The opposing through at a02 cannot leave its stop line while the lanes it takes next
    (a02-a01, 35 m, held red at a01) are full: it is not coming, so the left turner facing
    it turns (waiting for it, two permitted turns on short links once waited for each
    other's stuck car for good)."""
    net = _permitted_lefts(road=arterial(2, length_m=100.0), node="a02")
    a01, a02 = net.controller_ids.index("a01"), net.controller_ids.index("a02")
    speed = SPEED - DAWDLE_MPS
    reach = net.link_length[net.link_index["east-a02"]] / speed
    route = ["west-a01", "a01-a02", "a02-a02n"]
    to_a02 = sum(net.link_length[net.link_index[link]] for link in route[:2]) / speed
    # the stream reaches a02 from 100 s before the left turner, coming from the west
    at = max(to_a02, 100.0 + reach) + 10.0
    westbound = ["east-a02", "a02-a01", "a01-west"]
    stream = vehicles(net, westbound, [at - 100.0 - reach + 2.0 * i for i in range(20)])
    turner = fixed_route(
        net, route, depart_s=at - to_a02, name="L", emergency=False, speed_factor=1.0
    )
    trips = Trips.concat([stream, turner])
    sim = Simulation(net, trips)
    eastbound = {int(net.mv_bit[net.movement_index[m]]) for m in ("a01:ET", "a01:ER")}
    sim.set_override(a01, sum(1 << bit for bit in eastbound))  # westbound held red at a01
    sim.set_override(a02, group_mask(net, a02, ["1", "2", "5", "6"]))
    sim.advance(at + 60.0)
    v = trips.count - 1
    through = net.movement_index["a02:WT"]
    head = sim.queues.q_head[net.mv_queue[through]]
    assert head >= 0, "the stream stands at a02"
    assert sim.vehicles.queued_move[head] == through
    assert sim.vehicles.joined[head] < sim.vehicles.joined[v]
    turned = sim.hop_enter[trips.route_start[v] + 2]
    assert turned - sim.vehicles.joined[v] < kernels.CRITICAL_GAP_S
