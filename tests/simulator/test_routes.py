"""Reading SUMO route files: each element kind, vehicle types, the time window, scale, the
report of dropped vehicles, and refused input. The network is our 2x2 grid, its SUMO edges
named like its links (``link_of_edge`` is the identity unless a test says otherwise)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator import routes, sumo
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import random_trips
from citybrain.simulator.networks import grid
from citybrain.simulator.routes import RouteDemand, read_routes

NET = compile_network(grid(2, 2))
IDENTITY = {link: link for link in NET.link_ids}
EAST = ["bW0-g0_0", "g0_0-g0_1", "g0_1-bE0"]
"""Along the south row, west to east."""
TRIP = 'from="bW0-g0_0" to="g0_1-bE0"'
NORTH_THEN_EAST = ["bW0-g0_0", "g0_0-g1_0", "g1_0-g1_1", "g1_1-bE1"]


def _read(tmp_path: Path, body: str, name: str = "demand.rou.xml", **kwargs: Any) -> RouteDemand:
    path = tmp_path / name
    path.write_text(f"<routes>\n{body}\n</routes>\n")
    kwargs.setdefault("link_of_edge", IDENTITY)
    return read_routes([path], net=NET, **kwargs)


def _route(demand: RouteDemand, v: int) -> list[str]:
    trips = demand.trips
    start, length = trips.route_start[v], trips.route_len[v]
    return [NET.link_ids[i] for i in trips.route_links[start : start + length]]


def _check_routes(demand: RouteDemand) -> None:
    """Routes are CSR, consecutive through movements, -1 after the last link."""
    trips = demand.trips
    assert np.array_equal(trips.route_start, np.cumsum([0, *trips.route_len])[:-1])
    for v in range(trips.count):
        start, length = trips.route_start[v], trips.route_len[v]
        links = trips.route_links[start : start + length]
        moves = trips.route_moves[start : start + length]
        assert moves[-1] == -1
        for hop in range(length - 1):
            assert (NET.mv_from[moves[hop]], NET.mv_to[moves[hop]]) == (links[hop], links[hop + 1])


def _accounts(demand: RouteDemand) -> None:
    report = demand.report
    assert report.read + report.duplicated - sum(report.dropped.values()) == report.imported
    assert report.imported == demand.trips.count == len(demand.vehicle_ids)


# --- element kinds -----------------------------------------------------------------------------


def test_a_vehicle_with_an_embedded_route(tmp_path: Path) -> None:
    demand = _read(
        tmp_path, f'<vehicle id="car" depart="12.5"><route edges="{" ".join(EAST)}"/></vehicle>'
    )
    assert demand.trips.count == 1
    assert demand.vehicle_ids == ("car",)
    assert demand.trips.depart.tolist() == [12.5]
    assert _route(demand, 0) == EAST
    assert not demand.trips.emergency.any()
    assert demand.trips.names == {}
    _check_routes(demand)
    _accounts(demand)


def test_vehicles_share_a_route_by_id(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        f'<route id="r" edges="{" ".join(NORTH_THEN_EAST)}"/>'
        '<vehicle id="a" depart="0" route="r"/><vehicle id="b" depart="5" route="r"/>',
    )
    assert [_route(demand, v) for v in range(2)] == [NORTH_THEN_EAST, NORTH_THEN_EAST]
    _check_routes(demand)


def test_a_trip_takes_the_shortest_path(tmp_path: Path) -> None:
    demand = _read(tmp_path, '<trip id="t" depart="3" from="bW0-g0_0" to="g0_1-bE0"/>')
    assert _route(demand, 0) == EAST
    _check_routes(demand)


def test_a_trip_passes_its_via_edges(tmp_path: Path) -> None:
    demand = _read(
        tmp_path, '<trip id="t" depart="0" from="bW0-g0_0" via="g1_0-g1_1" to="g1_1-bE1"/>'
    )
    assert _route(demand, 0) == NORTH_THEN_EAST
    _check_routes(demand)


def test_trips_are_routed_again_when_they_leave_as_sumo_routes_them(tmp_path: Path) -> None:
    """SUMO routes a trip (and a flow from one edge to another) when it inserts it, on the
    travel times of that moment: those are flagged ``reroute``; vehicles with their route
    given, and trips through ``via`` edges, keep the route read."""
    demand = _read(
        tmp_path,
        '<trip id="a" depart="0" from="bW0-g0_0" to="g0_1-bE0"/>'
        f'<vehicle id="b" depart="1"><route edges="{" ".join(EAST)}"/></vehicle>'
        '<trip id="c" depart="2" from="bW0-g0_0" via="g1_0-g1_1" to="g1_1-bE1"/>'
        '<flow id="d" begin="3" end="5" period="1" from="bW0-g0_0" to="g0_1-bE0"/>',
    )
    assert demand.vehicle_ids == ("a", "b", "c", "d.0", "d.1")
    assert demand.trips.reroute is not None
    assert demand.trips.reroute.tolist() == [True, False, False, True, True]
    only_routes = _read(
        tmp_path, f'<vehicle id="b" depart="1"><route edges="{" ".join(EAST)}"/></vehicle>'
    )
    assert only_routes.trips.reroute is None


def test_a_trip_on_one_edge(tmp_path: Path) -> None:
    demand = _read(tmp_path, '<trip id="t" depart="0" from="bW0-g0_0" to="bW0-g0_0"/>')
    assert _route(demand, 0) == ["bW0-g0_0"]
    assert demand.trips.route_moves.tolist() == [-1]


@pytest.mark.parametrize(
    ("attributes", "departs"),
    [
        ('begin="0" end="10" period="2"', [0.0, 2.0, 4.0, 6.0, 8.0]),
        ('begin="0" end="10" vehsPerHour="1800"', [0.0, 2.0, 4.0, 6.0, 8.0]),
        ('begin="10" end="110" number="4"', [10.0, 35.0, 60.0, 85.0]),  # as SUMO spaces them
        ('begin="5" period="1" number="3"', [5.0, 6.0, 7.0]),
        ('begin="0" end="10" vehsPerHour="0"', []),
    ],
)
def test_flows_space_their_vehicles_as_sumo_does(
    tmp_path: Path, attributes: str, departs: list[float]
) -> None:
    demand = _read(tmp_path, f'<flow id="f" {attributes} from="bW0-g0_0" to="g0_1-bE0"/>')
    assert demand.trips.depart.tolist() == pytest.approx(departs)
    assert demand.vehicle_ids == tuple(f"f.{i}" for i in range(len(departs)))
    assert all(_route(demand, v) == EAST for v in range(demand.trips.count))


@pytest.mark.parametrize("rate", ['probability="0.25"', 'period="exp(0.25)"'])
def test_random_flows_draw_about_their_rate_from_the_seed(tmp_path: Path, rate: str) -> None:
    body = f'<route id="r" edges="bW0-g0_0"/><flow id="f" begin="0" end="4000" {rate} route="r"/>'
    a, b = _read(tmp_path, body, seed=1), _read(tmp_path, body, seed=1)
    other = _read(tmp_path, body, seed=2)
    # 1,000 expected; Poisson / binomial standard deviation about 30
    assert 850 < a.trips.count < 1150
    assert np.array_equal(a.trips.depart, b.trips.depart)
    assert not np.array_equal(a.trips.depart[:50], other.trips.depart[:50])
    assert ((a.trips.depart >= 0) & (a.trips.depart < 4000)).all()
    if "probability" in rate:  # one chance a second, at whole seconds
        assert np.array_equal(a.trips.depart, np.round(a.trips.depart))


def test_shortest_route_between_two_links() -> None:
    assert routes.shortest_route(NET, EAST[0], EAST[-1]) == tuple(EAST)
    assert routes.shortest_route(NET, "bW0-g0_0", "bW0-g0_0") == ("bW0-g0_0",)
    with pytest.raises(ValidationError, match="'g0_1-bE0' cannot be reached from 'g0_0-bW0'"):
        routes.shortest_route(NET, "g0_0-bW0", "g0_1-bE0")
    with pytest.raises(ValidationError, match="unknown destination link 'nope'"):
        routes.shortest_route(NET, "bW0-g0_0", "nope")


def test_vehicles_are_sorted_by_departure_whatever_the_file_order(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<route id="r" edges="bW0-g0_0"/>'
        '<vehicle id="late" depart="30" route="r"/>'
        '<trip id="early" depart="10" from="bW0-g0_0" to="g0_1-bE0"/>'
        '<vehicle id="mid" depart="20" route="r"/>'
        '<vehicle id="also-late" depart="30" route="r"/>',
    )
    assert demand.vehicle_ids == ("early", "mid", "late", "also-late")
    assert demand.trips.depart.tolist() == [10.0, 20.0, 30.0, 30.0]
    assert _route(demand, 0) == EAST
    _check_routes(demand)


def test_edges_are_mapped_to_links(tmp_path: Path) -> None:
    renamed = {f"edge{i}#0": link for i, link in enumerate(NET.link_ids)}
    edge_of = {link: edge for edge, link in renamed.items()}
    edges = " ".join(edge_of[link] for link in EAST)
    demand = _read(
        tmp_path,
        f'<vehicle id="v" depart="0"><route edges="{edges}"/></vehicle>'
        f'<trip id="t" depart="1" from="{edge_of[EAST[0]]}" to="{edge_of[EAST[-1]]}"/>',
        link_of_edge=renamed,
    )
    assert _route(demand, 0) == _route(demand, 1) == EAST


def test_a_gzipped_file_and_types_from_an_earlier_file(tmp_path: Path) -> None:
    types = tmp_path / "types.add.xml"
    types.write_text('<additional><vType id="slow" speedFactor="0.5" speedDev="0"/></additional>')
    packed = tmp_path / "demand.rou.xml.gz"
    packed.write_bytes(
        gzip.compress(
            b'<routes><trip id="t" type="slow" depart="0" from="bW0-g0_0" to="bW0-g0_0"/></routes>'
        )
    )
    demand = read_routes([types, packed], link_of_edge=IDENTITY, net=NET)
    assert demand.trips.speed_factor.tolist() == [0.5]
    assert demand.report.files == (str(types), str(packed))


def test_elements_we_do_not_model_are_counted(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<person id="p" depart="0"><walk edges="bW0-g0_0"/></person>'
        '<person id="q" depart="1"><walk edges="bW0-g0_0"/></person>'
        '<vehicle id="v" depart="0"><route edges="bW0-g0_0"/><stop lane="x" duration="5"/>'
        "</vehicle>",
    )
    assert demand.trips.count == 1
    assert demand.report.ignored == {"person": 2}
    assert "person x2" in str(demand.report)


def test_our_own_sumo_export_reads_back_the_same(tmp_path: Path) -> None:
    trips = random_trips(NET, seed=4, duration_s=300.0, vehicles_per_hour=1500.0)
    snet = cast(sumo.SumoNet, SimpleNamespace(edge_of_link=IDENTITY))
    sumo.write_routes(snet, NET, trips, tmp_path / "ours.rou.xml")
    demand = read_routes([tmp_path / "ours.rou.xml"], link_of_edge=IDENTITY, net=NET)
    back = demand.trips
    assert back.count == trips.count > 0
    assert np.allclose(back.depart, trips.depart, atol=0.005)
    assert np.allclose(back.speed_factor, trips.speed_factor, atol=5e-5)
    assert np.array_equal(back.route_len, trips.route_len)
    assert np.array_equal(back.route_links, trips.route_links)
    assert np.array_equal(back.route_moves, trips.route_moves)
    assert demand.vehicle_ids == tuple(f"v{v}" for v in range(trips.count))
    assert back.standing is None  # written to leave at speed, as our own vehicles do
    standing = dataclasses.replace(trips, standing=np.arange(trips.count) % 2 == 0)
    sumo.write_routes(snet, NET, standing, tmp_path / "standing.rou.xml")
    again = read_routes([tmp_path / "standing.rou.xml"], link_of_edge=IDENTITY, net=NET).trips
    assert again.standing is not None
    assert standing.standing is not None
    assert np.array_equal(again.standing, standing.standing)


@pytest.mark.parametrize(
    ("attribute", "standing"),
    [("", True), ('departSpeed="0"', True), ('departSpeed="max"', False),
     ('departSpeed="desired"', False), ('departSpeed="4.5"', False)],
)  # fmt: skip
def test_a_vehicle_without_a_depart_speed_starts_from_a_standstill(
    tmp_path: Path, attribute: str, standing: bool
) -> None:
    """SUMO's default ``departSpeed`` is 0: such a vehicle pulls away from its first edge."""
    demand = _read(tmp_path, f'<trip id="t" depart="0" {attribute} {TRIP}/>')
    flags = demand.trips.standing
    assert (flags is not None and bool(flags[0])) == standing
    # the same on the vehicle's type, which the vehicle's own overrides
    typed = _read(tmp_path, f'<vType id="k" {attribute}/><trip id="t" type="k" depart="0" {TRIP}/>')
    flags = typed.trips.standing
    assert (flags is not None and bool(flags[0])) == standing
    own = _read(
        tmp_path,
        f'<vType id="k" {attribute}/><trip id="t" type="k" depart="0" departSpeed="0" {TRIP}/>',
    )
    assert own.trips.standing is not None
    assert bool(own.trips.standing[0])


# --- vehicle types -----------------------------------------------------------------------------


def _flow_of(vtype: str, count: int = 2000) -> str:
    return (
        f'{vtype}<route id="r" edges="bW0-g0_0"/>'
        f'<flow id="f" type="t" begin="0" end="{count}" period="1" route="r"/>'
    )


@pytest.mark.parametrize(
    ("vtype", "mean", "dev", "bounds"),
    [
        ('<vType id="t"/>', 1.0, 0.1, (0.2, 2.0)),  # SUMO's passenger default
        ('<vType id="t" vClass="truck"/>', 1.0, 0.05, (0.2, 2.0)),
        ('<vType id="t" speedFactor="1.2"/>', 1.2, 0.1, (0.2, 2.0)),  # a number is the mean
        ('<vType id="t" speedFactor="normc(1.1,0.2,0.9,1.3)"/>', None, None, (0.9, 1.3)),
        ('<vType id="t" speedDev="0.3"/>', 1.0, 0.3, (0.2, 2.0)),
        ('<vType id="t" speedFactor="normc(1,5,0.9,1.1)"/>', None, None, (0.9, 1.1)),  # clipped
        ('<vType id="t" speedFactor="normc(0.01,0,0,2)"/>', None, None, (0.05, 0.05)),  # a floor
    ],
)
def test_speed_factors_follow_sumo_distributions(
    tmp_path: Path,
    vtype: str,
    mean: float | None,
    dev: float | None,
    bounds: tuple[float, float],
) -> None:
    factors = _read(tmp_path, _flow_of(vtype)).trips.speed_factor
    assert factors.size == 2000
    assert ((factors >= bounds[0]) & (factors <= bounds[1])).all()
    if mean is not None and dev is not None:
        assert abs(factors.mean() - mean) < 4 * dev / np.sqrt(factors.size)
        assert factors.std() == pytest.approx(dev, rel=0.1)


@pytest.mark.parametrize("vtype", ['<vType id="t" vClass="bus"/>', '<vType id="t" speedDev="0"/>'])
def test_buses_and_zero_deviation_keep_the_speed_limit(tmp_path: Path, vtype: str) -> None:
    assert set(_read(tmp_path, _flow_of(vtype, 20)).trips.speed_factor.tolist()) == {1.0}


def test_a_vehicles_own_speed_factor_wins(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<vType id="t" speedFactor="2"/>'
        '<vehicle id="v" type="t" depart="0" speedFactor="1.3"><route edges="bW0-g0_0"/></vehicle>',
    )
    assert demand.trips.speed_factor.tolist() == [1.3]


def test_emergency_vehicles_are_named(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<vType id="amb" vClass="emergency"/><route id="r" edges="bW0-g0_0"/>'
        '<vehicle id="car" depart="0" route="r"/>'
        '<vehicle id="AMB-9" type="amb" depart="1" route="r"/>',
    )
    assert demand.trips.emergency.tolist() == [False, True]
    assert demand.trips.names == {1: "AMB-9"}


def test_a_type_distribution_draws_each_vehicles_type(tmp_path: Path) -> None:
    nested = (
        '<vTypeDistribution id="t"><vType id="car" probability="3"/>'
        '<vType id="bike" vClass="bicycle" probability="1"/></vTypeDistribution>'
    )
    listed = (
        '<vType id="car"/><vType id="bike" vClass="bicycle"/>'
        '<vTypeDistribution id="t" vTypes="car bike" probabilities="0.75 0.25"/>'
    )
    for body in (nested, listed):
        demand = _read(tmp_path, _flow_of(body))
        bikes = demand.report.dropped[routes.VEHICLE_CLASS]
        assert 400 < bikes < 600  # 500 expected, standard deviation about 19
        assert demand.trips.count == 2000 - bikes


def test_non_car_classes_are_dropped_and_buses_are_cars(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<vType id="bike" vClass="bicycle"/><vType id="bus" vClass="bus"/>'
        '<vType id="tram" vClass="tram"/><route id="r" edges="bW0-g0_0"/>'
        '<vehicle id="b1" type="bike" depart="0" route="r"/>'
        '<vehicle id="bus1" type="bus" depart="0" route="r"/>'
        '<vehicle id="tram1" type="tram" depart="0" route="r"/>',
    )
    assert demand.vehicle_ids == ("bus1",)
    assert demand.report.dropped == {routes.VEHICLE_CLASS: 2}
    examples = demand.report.examples[routes.VEHICLE_CLASS]
    assert "<vehicle id='b1'>" in examples[0]
    assert "'bicycle'" in examples[0]
    _accounts(demand)


# --- time window, scale ------------------------------------------------------------------------


def test_the_time_window_shifts_and_drops_departures(tmp_path: Path) -> None:
    body = '<route id="r" edges="bW0-g0_0"/>' + "".join(
        f'<vehicle id="v{t:g}" depart="{t}" route="r"/>' for t in (50.0, 100.0, 199.5, 200.0)
    )
    demand = _read(tmp_path, body, begin_s=100.0, end_s=200.0)
    assert demand.vehicle_ids == ("v100", "v199.5")
    assert demand.trips.depart.tolist() == [0.0, 99.5]
    assert demand.report.dropped == {routes.OUTSIDE_TIME_WINDOW: 2}
    assert any("'v200'" in e for e in demand.report.examples[routes.OUTSIDE_TIME_WINDOW])
    _accounts(demand)
    # without an end, only the start cuts
    assert _read(tmp_path, body, begin_s=100.0).trips.count == 3


def test_a_flow_is_cut_by_the_time_window(tmp_path: Path) -> None:
    body = '<flow id="f" begin="0" end="100" period="10" from="bW0-g0_0" to="bW0-g0_0"/>'
    demand = _read(tmp_path, body, begin_s=25.0, end_s=55.0)
    assert demand.trips.depart.tolist() == [5.0, 15.0, 25.0]
    assert demand.report.read == 10


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 1.5, 2.0])
def test_scale_keeps_or_copies_each_vehicle(tmp_path: Path, scale: float) -> None:
    body = _flow_of('<vType id="t"/>', 1000)
    demand = _read(tmp_path, body, scale=scale, seed=3)
    _accounts(demand)
    count = demand.trips.count
    whole = int(scale)
    if scale == whole:
        assert count == 1000 * whole
    else:  # binomial standard deviation about 16
        assert abs(count - 1000 * scale) < 80
    assert demand.report.duplicated == max(0, count - 1000 + demand.report.dropped.get("scale", 0))
    if scale >= 2.0:
        assert demand.vehicle_ids[:2] == ("f.0", "f.0.copy1")
    again = _read(tmp_path, body, scale=scale, seed=3)
    assert again.vehicle_ids == demand.vehicle_ids
    assert np.array_equal(again.trips.depart, np.sort(demand.trips.depart))


def test_scale_differs_with_the_seed(tmp_path: Path) -> None:
    body = _flow_of('<vType id="t"/>', 200)
    kept = {_read(tmp_path, body, scale=0.5, seed=seed).vehicle_ids for seed in (1, 2)}
    assert len(kept) == 2


# --- routes that cannot be used: dropped and reported --------------------------------------------


def test_route_problems_are_dropped_counted_and_named(tmp_path: Path) -> None:
    demand = _read(
        tmp_path,
        '<vehicle id="ok" depart="0"><route edges="bW0-g0_0 g0_0-g0_1"/></vehicle>'
        '<vehicle id="gap" depart="0"><route edges="bW0-g0_0 g1_0-g1_1"/></vehicle>'
        '<vehicle id="walk" depart="0"><route edges="bW0-g0_0 footpath"/></vehicle>'
        '<vehicle id="ghost" depart="0"><route edges="nowhere"/></vehicle>'
        '<trip id="stuck" depart="0" from="g0_0-bW0" to="g0_1-bE0"/>'
        '<trip id="ghost-trip" depart="0" from="bW0-g0_0" to="nowhere"/>',
        sumo_edges={*NET.link_ids, "footpath"},
    )
    report = demand.report
    assert demand.vehicle_ids == ("ok",)
    assert report.read == 6
    assert report.dropped == {
        routes.BROKEN_ROUTE: 1,
        routes.EDGE_NOT_IMPORTED: 1,
        routes.UNKNOWN_EDGE: 2,
        routes.NO_PATH: 1,
    }
    (gap,) = report.examples[routes.BROKEN_ROUTE]
    assert "demand.rou.xml <vehicle id='gap'>" in gap
    assert "'bW0-g0_0' to 'g1_0-g1_1'" in gap
    assert "'footpath'" in report.examples[routes.EDGE_NOT_IMPORTED][0]
    (no_path,) = report.examples[routes.NO_PATH]
    assert "<trip id='stuck'>" in no_path
    assert "'g0_0-bW0' to 'g0_1-bE0'" in no_path
    _accounts(demand)
    text = str(report)
    assert "6 vehicles read, 1 imported" in text
    assert "dropped, broken_route: 1" in text
    assert "e.g. " in text


def test_without_the_sumo_edges_a_missing_edge_is_unknown(tmp_path: Path) -> None:
    demand = _read(tmp_path, '<vehicle id="w" depart="0"><route edges="footpath"/></vehicle>')
    assert demand.report.dropped == {routes.UNKNOWN_EDGE: 1}


def test_examples_are_capped(tmp_path: Path) -> None:
    body = "".join(
        f'<vehicle id="v{i}" depart="0"><route edges="nowhere"/></vehicle>' for i in range(9)
    )
    report = _read(tmp_path, body).report
    assert report.dropped == {routes.UNKNOWN_EDGE: 9}
    assert len(report.examples[routes.UNKNOWN_EDGE]) == routes.MAX_EXAMPLES


# --- refused input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "element", "message"),
    [
        (f'<trip id="t" type="van" depart="0" {TRIP}/>', "<trip id='t'>", "unknown vType 'van'"),
        ('<vehicle id="v" depart="0" route="r9"/>', "<vehicle id='v'>", "unknown route 'r9'"),
        ('<vType id="x" vClass="hovercraft"/>', "<vType id='x'>", "unknown vClass"),
        ('<vType id="x" speedFactor="fast"/>', "<vType id='x'>", "speedFactor='fast'"),
        ('<vType id="x" speedFactor="normc(1,0.1)"/>', "<vType id='x'>", "normc(mean,dev,min,max)"),
        ('<vType id="x"/><vType id="x"/>', "<vType id='x'>", "used twice"),
        (f'<trip id="t" depart="nan" {TRIP}/>', "<trip id='t'>", "depart='nan'"),
        (f'<trip id="t" depart="-1" {TRIP}/>', "<trip id='t'>", "depart='-1'"),
        (f'<trip id="t" depart="soon" {TRIP}/>', "<trip id='t'>", "not a number"),
        (f'<trip id="t" depart="0" departSpeed="-1" {TRIP}/>', "<trip id='t'>", "departSpeed"),
        (f'<trip id="t" depart="0" departSpeed="warp" {TRIP}/>', "<trip id='t'>", "departSpeed"),
        (f'<trip id="t" {TRIP}/>', "<trip id='t'>", "depart is missing"),
        (f'<trip id="t" depart="0" {TRIP}/><trip id="t" depart="1" {TRIP}/>', "id='t'", "twice"),
        ('<trip id="t" depart="0" from="bW0-g0_0"/>', "<trip id='t'>", "no route"),
        (f'<trip depart="0" {TRIP}/>', "<trip id=None>", "needs an id"),
        ('<route id="r" edges=""/>', "<route id='r'>", "needs edges"),
        (f'<flow id="f" end="9" vehsPerHour="-5" {TRIP}/>', "<flow id='f'>", "vehsPerHour='-5'"),
        (f'<flow id="f" end="9" period="0" {TRIP}/>', "<flow id='f'>", "period='0'"),
        (f'<flow id="f" end="9" period="exp(-1)" {TRIP}/>', "<flow id='f'>", "exp(rate >= 0)"),
        (f'<flow id="f" end="9" probability="1.5" {TRIP}/>', "<flow id='f'>", "probability"),
        (f'<flow id="f" period="1" number="-2" {TRIP}/>', "<flow id='f'>", "number='-2'"),
        (f'<flow id="f" end="9" period="1" probability="1" {TRIP}/>', "<flow id='f'>", "one of"),
        (f'<flow id="f" end="9" {TRIP}/>', "<flow id='f'>", "needs period"),
        (f'<flow id="f" period="1e-9" {TRIP}/>', "<flow id='f'>", "vehicles, over"),
        (f'<flow id="f" begin="9" end="5" number="2" {TRIP}/>', "<flow id='f'>", "end='5'"),
        (
            '<vTypeDistribution id="d" vTypes="DEFAULT_VEHTYPE" probabilities="1 2"/>',
            "<vTypeDistribution id='d'>",
            "probabilities",
        ),
    ],
)
def test_structural_errors_raise_naming_file_and_element(
    tmp_path: Path, body: str, element: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _read(tmp_path, body)
    assert str(tmp_path / "demand.rou.xml") in caught.value.field
    assert element in caught.value.field
    assert message in caught.value.reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('<routes><vehicle id="a" depart="0">', "malformed XML"),
        ("not xml at all", "malformed XML"),
        ('<net><edge id="e"/></net>', "root <net>, expected <routes>"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.rou.xml"
    path.write_text(content)
    with pytest.raises(ValidationError) as caught:
        read_routes([path], link_of_edge=IDENTITY, net=NET)
    assert caught.value.field == str(path)
    assert message in caught.value.reason


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        read_routes([tmp_path / "none.rou.xml"], link_of_edge=IDENTITY, net=NET)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"begin_s": -1.0}, "begin_s"),
        ({"begin_s": 10.0, "end_s": 10.0}, "end_s"),
        ({"scale": -0.5}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"seed": -1}, "seed"),
        ({"paths": []}, "paths"),
        ({"link_of_edge": {"e": "no-such-link"}}, "link_of_edge"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    path = tmp_path / "ok.rou.xml"
    path.write_text("<routes/>")
    kwargs: dict[str, Any] = {"paths": [path], "link_of_edge": IDENTITY, "net": NET}
    kwargs.update(changes)
    with pytest.raises(ValidationError) as caught:
        read_routes(**kwargs)
    assert caught.value.field == field


def test_sumo_edge_ids_reads_the_edges_vehicles_may_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny.net.xml"
    path.write_text(
        '<net><edge id=":J0_0" function="internal"/><edge id="a"/><junction id="J0"/>'
        '<edge id=":J0_w0" function="walkingarea"/><edge id="b"><lane id="b_0"/></edge></net>'
    )
    assert routes.sumo_edge_ids(path) == {"a", "b"}
