"""Seeded demand: Poisson counts, peaks, turning shares, routes, and refused arguments."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.network import Intersection, Lane, Link, Movement, Network, Turn
from citybrain.models.signal import SignalGroup
from citybrain.simulator.compiled import TURN_CODES, compile_network
from citybrain.simulator.demand import (
    DEFAULT_TURNS,
    Peak,
    Trips,
    entry_links,
    fixed_route,
    free_flow_time_s,
    random_trips,
)
from citybrain.simulator.networks import RoadNetwork, arterial, grid

NET = compile_network(arterial(3))
GRID = compile_network(grid(2, 2))


def _same(a: Trips, b: Trips) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in (
            "depart",
            "route_start",
            "route_len",
            "route_links",
            "route_moves",
            "speed_factor",
            "emergency",
        )
    )


def test_random_trips_are_reproducible_for_a_seed() -> None:
    kwargs: dict[str, Any] = {"duration_s": 1800.0, "vehicles_per_hour": 2000.0}
    a = random_trips(NET, seed=5, **kwargs)
    b = random_trips(NET, seed=5, **kwargs)
    c = random_trips(NET, seed=6, **kwargs)
    assert a.count > 0
    assert _same(a, b)
    assert not _same(a, c)


def test_routes_are_connected_and_end_on_the_networks_edge() -> None:
    trips = random_trips(GRID, seed=1, duration_s=1200.0, vehicles_per_hour=3000.0)
    nodes = GRID.road.network.intersection_by_id
    road_links = GRID.road.network.links
    assert trips.route_start[0] == 0
    assert np.array_equal(trips.route_start[1:], np.cumsum(trips.route_len)[:-1])
    assert trips.route_links.shape == trips.route_moves.shape == (int(trips.route_len.sum()),)
    for v in range(trips.count):
        start, length = trips.route_start[v], trips.route_len[v]
        links = trips.route_links[start : start + length]
        moves = trips.route_moves[start : start + length]
        assert not nodes[road_links[links[0]].from_node].signalized  # enters from the boundary
        assert not nodes[road_links[links[-1]].to_node].signalized  # leaves to the boundary
        assert moves[-1] == -1
        for hop in range(length - 1):
            m = moves[hop]
            assert GRID.mv_from[m] == links[hop]
            assert GRID.mv_to[m] == links[hop + 1]
    assert ((trips.speed_factor >= 0.9) & (trips.speed_factor <= 1.05)).all()
    assert not trips.emergency.any()
    assert (np.diff(trips.depart) >= 0).all()
    assert ((trips.depart >= 0.0) & (trips.depart <= 1200.0)).all()


@pytest.mark.parametrize(("rate", "duration"), [(3600.0, 3600.0), (500.0, 7200.0)])
def test_the_arrival_count_is_poisson_around_rate_times_duration(
    rate: float, duration: float
) -> None:
    expected = rate * duration / 3600.0
    counts = [
        random_trips(NET, seed=seed, duration_s=duration, vehicles_per_hour=rate).count
        for seed in range(5)
    ]
    for count in counts:
        assert abs(count - expected) < 4.0 * math.sqrt(expected)
    assert len(set(counts)) > 1  # the count is drawn, not fixed


def test_start_time_shifts_the_departures() -> None:
    trips = random_trips(NET, seed=2, duration_s=600.0, vehicles_per_hour=3600.0, start_s=1000.0)
    assert trips.depart.min() >= 1000.0
    assert trips.depart.max() <= 1600.0


def test_a_peak_adds_the_demand_its_bell_shape_says() -> None:
    """1 veh/s base; x4 at 1800 s with 300 s width. Expected in [1500, 2100]:
    600 + 3 * 300 * sqrt(pi) * erf(1) = 1944; in [0, 600]: 600 (the bell is e^-16 there)."""
    peak = Peak(at_s=1800.0, width_s=300.0, factor=4.0)
    peak_expected = 600.0 + 3.0 * 300.0 * math.sqrt(math.pi) * math.erf(1.0)
    assert peak_expected == pytest.approx(1944.3, abs=0.1)
    for seed in range(3):
        trips = random_trips(NET, seed=seed, duration_s=3600.0, vehicles_per_hour=3600.0, peak=peak)
        in_peak = int(((trips.depart >= 1500.0) & (trips.depart < 2100.0)).sum())
        off_peak = int((trips.depart < 600.0).sum())
        assert in_peak > off_peak
        assert abs(in_peak - peak_expected) < 4.0 * math.sqrt(peak_expected)
        assert abs(off_peak - 600.0) < 4.0 * math.sqrt(600.0)


@pytest.mark.parametrize(
    "turns", [DEFAULT_TURNS, (0.2, 0.5, 0.3), (0.0, 1.0, 0.0), (1.0, 1.0, 2.0)]
)
def test_turning_shares_follow_the_given_shares(turns: tuple[float, float, float]) -> None:
    trips = random_trips(NET, seed=9, duration_s=3600.0, vehicles_per_hour=6000.0, turns=turns)
    moves = trips.route_moves[trips.route_moves >= 0]
    # every movement of the arterial is at a junction that offers all three turns
    kinds = NET.mv_turn[moves]
    total = sum(turns)
    assert moves.size > 3000
    for turn, share in zip((Turn.LEFT, Turn.THROUGH, Turn.RIGHT), turns, strict=True):
        measured = float((kinds == TURN_CODES[turn]).mean())
        p = share / total
        assert abs(measured - p) <= 4.0 * math.sqrt(p * (1.0 - p) / moves.size) + 1e-12, turn


def test_origin_weights_skew_the_entries() -> None:
    nodes = NET.road.network.intersection_by_id
    entries = [link.id for link in NET.road.network.links if not nodes[link.from_node].signalized]
    assert len(entries) == 2 + 2 * 3  # two main-road ends, two cross-street ends per junction
    only_west = dict.fromkeys(entries, 0.0)
    only_west["west-a01"] = 1.0
    trips = random_trips(
        NET, seed=3, duration_s=600.0, vehicles_per_hour=2000.0, origin_weights=only_west
    )
    firsts = {NET.link_ids[trips.route_links[s]] for s in trips.route_start}
    assert firsts == {"west-a01"}


@pytest.mark.parametrize("road", [arterial(1), arterial(4), grid(1, 1), grid(2, 3)])
def test_generated_entries_are_the_links_leaving_their_unsignalized_ends(road: RoadNetwork) -> None:
    net = road.network
    nodes = net.intersection_by_id
    assert entry_links(net) == tuple(
        link for link in net.links if not nodes[link.from_node].signalized
    )


def _unsignalized_tee() -> RoadNetwork:
    """Ends A, B and C two-way into an unsignalized junction M, and a one-way road from S."""
    lane = (Lane(0, frozenset({Turn.THROUGH})),)
    places = {"A": (-100.0, 0.0), "B": (100.0, 0.0), "C": (0.0, -100.0), "S": (0.0, 100.0)}
    nodes = [Intersection("M", 0.0, 0.0, signalized=False)]
    nodes += [Intersection(name, x, y, signalized=False) for name, (x, y) in places.items()]
    pairs = [(end, "M") for end in places] + [("M", end) for end in "ABC"]
    links = [Link(f"{a}-{b}", a, b, 100.0, lane, 13.9) for a, b in pairs]
    moves = [
        Movement(f"{a}{b}", "M", f"{a}-M", f"M-{b}", Turn.THROUGH, "free")
        for a in places
        for b in "ABC"
        if a != b
    ]
    group = SignalGroup("free", "M", frozenset(m.id for m in moves))
    return RoadNetwork("tee", Network(tuple(nodes), tuple(links), (), tuple(moves), (group,)), {})


def test_entries_are_the_fringe_not_every_unsignalized_junction() -> None:
    road = _unsignalized_tee()
    entries = ["A-M", "B-M", "C-M", "S-M"]
    assert [link.id for link in entry_links(road.network)] == entries
    net = compile_network(road)
    trips = random_trips(net, seed=2, duration_s=600.0, vehicles_per_hour=3000.0)
    firsts = {net.link_ids[trips.route_links[s]] for s in trips.route_start}
    assert firsts == set(entries)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vehicles_per_hour": -1.0}, "vehicles_per_hour"),
        ({"vehicles_per_hour": math.nan}, "vehicles_per_hour"),
        ({"duration_s": math.nan}, "duration_s"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"turns": (0.0, 0.0, 0.0)}, "turns"),
        ({"turns": (0.2, -0.1, 0.9)}, "turns.through"),
        ({"turns": (math.nan, 1.0, 1.0)}, "turns.left"),
        ({"origin_weights": {"nope": 1.0}}, "origin_weights"),
        ({"origin_weights": {"a03-east": 1.0}}, "origin_weights"),
        ({"origin_weights": {"west-a01": -1.0}}, "origin_weights[west-a01]"),
        ({"seed": -1}, "seed"),
        ({"max_hops": 0}, "max_hops"),
    ],
)
def test_bad_demand_arguments_raise(changes: dict[str, Any], field: str) -> None:
    kwargs: dict[str, Any] = {"seed": 1, "duration_s": 600.0, "vehicles_per_hour": 1000.0}
    kwargs.update(changes)
    with pytest.raises(ValidationError) as caught:
        random_trips(NET, **kwargs)
    assert caught.value.field == field


def test_unknown_origin_weight_link_is_named() -> None:
    with pytest.raises(ValidationError, match="'nope'"):
        random_trips(
            NET, seed=1, duration_s=60.0, vehicles_per_hour=100.0, origin_weights={"nope": 1.0}
        )
    with pytest.raises(ValidationError, match="'a03-east' is not an origin link"):
        random_trips(
            NET, seed=1, duration_s=60.0, vehicles_per_hour=100.0, origin_weights={"a03-east": 1.0}
        )


@pytest.mark.parametrize(
    "peak",
    [
        lambda: Peak(at_s=-1.0, width_s=10.0, factor=2.0),
        lambda: Peak(at_s=10.0, width_s=0.0, factor=2.0),
        lambda: Peak(at_s=10.0, width_s=10.0, factor=0.5),
        lambda: Peak(at_s=10.0, width_s=10.0, factor=math.nan),
    ],
)
def test_bad_peaks_raise(peak: Any) -> None:
    with pytest.raises(ValidationError):
        peak()


def test_fixed_route_builds_one_vehicle() -> None:
    route = ["west-a01", "a01-a01n"]
    trips = fixed_route(NET, route, depart_s=12.5, name="AMB-7")
    assert trips.count == 1
    assert trips.names == {0: "AMB-7"}
    assert trips.emergency.tolist() == [True]
    assert trips.speed_factor.tolist() == [1.3]
    assert [NET.link_ids[i] for i in trips.route_links] == route
    assert NET.movement_ids[trips.route_moves[0]] == "a01:EL"
    assert trips.route_moves[-1] == -1
    lengths = sum(NET.link_length[NET.link_index[link]] for link in route)
    assert free_flow_time_s(NET, trips, 0) == pytest.approx(lengths / (13.9 * 1.3))


def test_fixed_route_with_an_unknown_link_names_it() -> None:
    with pytest.raises(ValidationError) as caught:
        fixed_route(NET, ["west-a01", "no-such-link"], depart_s=0.0, name="A")
    assert caught.value.field == "route[1]"
    assert "'no-such-link'" in caught.value.reason


def test_fixed_route_with_a_gap_names_both_links() -> None:
    with pytest.raises(ValidationError) as caught:
        fixed_route(NET, ["west-a01", "a02-a03"], depart_s=0.0, name="A")
    assert "'west-a01'" in caught.value.reason
    assert "'a02-a03'" in caught.value.reason
    # a U-turn is not a movement either
    with pytest.raises(ValidationError, match="'a01-west'"):
        fixed_route(NET, ["west-a01", "a01-west"], depart_s=0.0, name="A")


@pytest.mark.parametrize(
    "changes",
    [{"links": []}, {"depart_s": -1.0}, {"name": "has space"}, {"speed_factor": 0.0}],
)
def test_fixed_route_refuses_bad_arguments(changes: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"depart_s": 0.0, "name": "A"}
    links = changes.pop("links", ["west-a01"])
    kwargs.update(changes)
    with pytest.raises(ValidationError):
        fixed_route(NET, links, **kwargs)


def test_concat_renumbers_routes_and_names() -> None:
    cars = random_trips(NET, seed=1, duration_s=300.0, vehicles_per_hour=1000.0)
    amb = fixed_route(NET, ["west-a01", "a01-a02"], depart_s=5.0, name="AMB-1")
    both = Trips.concat([cars, amb])
    assert both.count == cars.count + 1
    assert both.names == {cars.count: "AMB-1"}
    start = both.route_start[cars.count]
    assert [NET.link_ids[i] for i in both.route_links[start : start + 2]] == [
        "west-a01",
        "a01-a02",
    ]
    assert both.route_start.shape == both.depart.shape


def test_an_empty_demand_has_no_route_starts() -> None:
    empty = random_trips(NET, seed=1, duration_s=60.0, vehicles_per_hour=0.0)
    assert empty.count == 0
    assert empty.route_start.shape == (0,)


def test_od_trips_follow_the_shortest_route_and_are_reproducible() -> None:
    from citybrain.simulator.demand import od_trips

    net = compile_network(arterial(5))
    matrix = {("west-a01", "a05-east"): 720.0, ("a02s-a02", "a04-a04n"): 360.0}
    trips = od_trips(net, matrix, seed=4, duration_s=3600.0)
    again = od_trips(net, matrix, seed=4, duration_s=3600.0)
    np.testing.assert_array_equal(trips.depart, again.depart)
    assert np.all(np.diff(trips.depart) >= 0)
    assert 1080 - 4 * 33 < trips.count < 1080 + 4 * 33  # Poisson(1080)
    main = [
        net.link_index[f"{a}-{b}"]
        for a, b in zip(
            ["west", "a01", "a02", "a03", "a04", "a05"],
            ["a01", "a02", "a03", "a04", "a05", "east"],
            strict=True,
        )
    ]
    firsts = trips.route_links[trips.route_start]
    v = int(np.flatnonzero(firsts == net.link_index["west-a01"])[0])
    start = trips.route_start[v]
    assert list(trips.route_links[start : start + trips.route_len[v]]) == main
    assert trips.route_moves[start + trips.route_len[v] - 1] == -1


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({("nowhere", "a01-east"): 10.0}, "unknown origin"),
        ({("west-a01", "nowhere"): 10.0}, "unknown destination"),
        ({("west-a01", "a01-east"): -1.0}, ">= 0"),
        ({("west-a01", "a01-east"): float("nan")}, "finite"),
        ({("a01-east", "west-a01"): 10.0}, "cannot be reached"),
    ],
)
def test_bad_od_matrices_are_refused(matrix: dict[tuple[str, str], float], message: str) -> None:
    from citybrain.simulator.demand import od_trips

    with pytest.raises(ValidationError, match=message):
        od_trips(compile_network(arterial(1)), matrix, seed=1, duration_s=600.0)


# --- routing when leaving (SUMO's trips) ------------------------------------------------------

DIRECT = ["bW0-g0_0", "g0_0-g0_1", "g0_1-bE0"]
AROUND = ["bW0-g0_0", "g0_0-g1_0", "g1_0-g1_1", "g1_1-g0_1", "g0_1-bE0"]


def test_a_trip_leaving_behind_a_jam_is_routed_around_it() -> None:
    """Routed when it leaves, on the last three minutes' speeds: a trip whose fastest route on
    an empty network runs into a standing queue takes the way round instead, like SUMO's
    trips; a vehicle with a fixed route keeps it; the trips given are not changed."""
    from citybrain.simulator.engine import Simulation

    jam = [
        fixed_route(GRID, DIRECT, depart_s=2.0 * i, name="j", emergency=False) for i in range(30)
    ]
    late = [
        fixed_route(GRID, DIRECT, depart_s=200.0, name=name, emergency=False)
        for name in ("fixed", "trip")
    ]
    trips = Trips.concat([*jam, *late])
    reroute = np.zeros(trips.count, dtype=np.bool_)
    reroute[-1] = True
    trips = dataclasses.replace(trips, names={}, reroute=reroute)
    given = trips.route_links.copy()
    sim = Simulation(GRID, trips)
    east_at_g0_1, around = group_bits(GRID, "g0_1", ["3"]), ["5", "4", "2"]
    for node, groups in (("g0_0", around), ("g1_0", around), ("g1_1", around)):
        sim.set_override(GRID.controller_index[node], group_bits(GRID, node, groups))
    sim.set_override(GRID.controller_index["g0_1"], east_at_g0_1)  # the direct way stands
    sim.advance(260.0)
    routes = sim.trips
    assert routes is not trips
    assert np.array_equal(trips.route_links, given)
    fixed, trip = trips.count - 2, trips.count - 1
    assert _route(GRID, routes, fixed) == DIRECT
    assert _route(GRID, routes, trip) == AROUND
    assert sim.router is not None
    assert sim.router.changed == 1
    assert sim.router.done
    # the same trips run again give the same result
    again = Simulation(GRID, trips)
    for c in range(len(GRID.controller_ids)):
        again.set_override(c, int(sim.override[c]))
    again.advance(260.0)
    assert _route(GRID, again.trips, trip) == AROUND


def test_with_nothing_to_route_a_run_keeps_the_trips_it_was_given() -> None:
    from citybrain.simulator.engine import Simulation

    trips = random_trips(GRID, seed=2, duration_s=300.0, vehicles_per_hour=2000.0)
    assert trips.reroute is None
    assert not trips.rerouted
    sim = Simulation(GRID, trips)
    assert sim.trips is trips
    assert sim.router is None


def test_reroute_flags_follow_their_vehicles() -> None:
    a = random_trips(GRID, seed=1, duration_s=300.0, vehicles_per_hour=1000.0)
    b = dataclasses.replace(a, reroute=np.arange(a.count) % 2 == 0)
    both = Trips.concat([a, b])
    assert both.reroute is not None
    assert not both.reroute[: a.count].any()
    assert b.reroute is not None
    assert np.array_equal(both.reroute[a.count :], b.reroute)
    assert Trips.concat([a, a]).reroute is None


def group_bits(net: Any, node: str, groups: list[str]) -> int:
    bits = net.group_bits[net.controller_index[node]]
    return sum(1 << bits[g] for g in set(groups))


def _route(net: Any, trips: Trips, v: int) -> list[str]:
    start, length = int(trips.route_start[v]), int(trips.route_len[v])
    return [net.link_ids[i] for i in trips.route_links[start : start + length]]


@pytest.mark.parametrize(
    ("field", "first", "said"),
    [
        ("depart", math.nan, "departure times"),
        ("depart", -1.0, "departure times"),
        ("speed_factor", 0.0, "speed factors"),
        ("speed_factor", math.inf, "speed factors"),
        ("route_links", NET.links, "outside the network"),
        ("route_links", -1, "outside the network"),
    ],
)
def test_trips_an_engine_would_fail_on_mid_run_are_refused_before(
    field: str, first: float, said: str
) -> None:
    good = random_trips(NET, seed=1, duration_s=60.0, vehicles_per_hour=600.0)
    assert good.count
    good.check_on(NET.links)
    column = getattr(good, field).copy()
    column[0] = first
    with pytest.raises(ValidationError, match=said):
        dataclasses.replace(good, **{field: column}).check_on(NET.links)
