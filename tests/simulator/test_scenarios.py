"""Scenarios: one ambulance on the main route, or several on given routes (two crossing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator.cities import ACCEPTED_SPECS
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import Trips, fixed_route, random_trips
from citybrain.simulator.networks import arterial, grid
from citybrain.simulator.scenarios import (
    CONVOY_GAP_S,
    MAIN_ENTRY_VPH,
    SIDE_ENTRY_VPH,
    AmbulanceSpec,
    Level,
    Meeting,
    build,
    crossing_ambulances,
    load_network,
    main_route,
)

GRID = grid(10, 10)


def _same(a: Trips, b: Trips) -> None:
    for name in ("depart", "route_start", "route_len", "route_links", "route_moves"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.speed_factor, b.speed_factor)
    np.testing.assert_array_equal(a.emergency, b.emergency)
    assert a.names == b.names


def test_the_arterial_ambulance_is_the_traffic_then_amb_1_on_the_main_route() -> None:
    """The closed loop's arterial figures depend on this staying exactly as it was."""
    scenario = build("arterial:4", level=Level.HEAVY, duration_s=600.0, seed=3, ambulance_at_s=90.0)
    road = arterial(4)
    net = compile_network(road)
    weights = {
        link.id: (MAIN_ENTRY_VPH if link.from_node in ("west", "east") else SIDE_ENTRY_VPH)[
            Level.HEAVY
        ]
        for link in road.network.links
        if not road.network.intersection_by_id[link.from_node].signalized
    }
    traffic = random_trips(
        net, seed=3, duration_s=600.0, vehicles_per_hour=sum(weights.values()),
        origin_weights=weights,
    )  # fmt: skip
    main = ["a01s-a01", "a01-a02", "a02-a03", "a03-a04", "a04-east"]
    _same(
        scenario.trips, Trips.concat([traffic, fixed_route(net, main, depart_s=90.0, name="AMB-1")])
    )


def test_continued_demand_keeps_the_traffic_until_the_end_and_goes_on_as_much_after() -> None:
    plain = build("arterial:4", level=Level.HEAVY, duration_s=600.0, seed=3, ambulance_at_s=90.0)
    going = build(
        "arterial:4", level=Level.HEAVY, duration_s=600.0, seed=3, ambulance_at_s=90.0,
        continued_s=1200.0,
    )  # fmt: skip
    traffic, ambulance = plain.trips.count - 1, going.trips.count - 1
    np.testing.assert_array_equal(going.trips.depart[:traffic], plain.trips.depart[:traffic])
    assert going.trips.names == {ambulance: "AMB-1"}
    after = going.trips.depart[traffic:ambulance]
    assert after.min() >= 600.0
    assert after.max() <= 1800.0
    assert after.size == pytest.approx(2 * traffic, rel=0.15)  # the same rate, twice as long
    with pytest.raises(ValidationError, match="continued_s"):
        build("arterial:4", level=Level.HEAVY, duration_s=600.0, seed=3, continued_s=-1.0)


def test_the_westbound_main_route_mirrors_the_eastbound_one() -> None:
    road = arterial(3)
    assert main_route(road, "westbound") == ["a03n-a03", "a03-a02", "a02-a01", "a01-west"]
    scenario = build(
        road,
        level=Level.HEAVY,
        duration_s=600.0,
        seed=3,
        ambulance_at_s=90.0,
        ambulance_direction="westbound",
    )
    east = build(road, level=Level.HEAVY, duration_s=600.0, seed=3, ambulance_at_s=90.0)
    count = scenario.trips.count - 1
    np.testing.assert_array_equal(scenario.trips.depart, east.trips.depart)
    assert scenario.trips.names == {count: "AMB-1"}
    assert main_route(GRID, "westbound")[0] == "bE0-g0_9"
    assert main_route(GRID, "westbound")[-1] == "g0_0-bW0"


def test_the_main_route_follows_the_street_past_99_junctions() -> None:
    route = main_route(arterial(101))
    assert route[99:102] == ["a99-a100", "a100-a101", "a101-east"]


def test_crossing_ambulances_reach_their_crossing_together_at_free_flow() -> None:
    first, second = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0)
    assert (first.name, second.name) == ("AMB-1", "AMB-2")
    assert first.route[0] == "bW4-g4_0"
    assert first.route[-1] == "g4_9-bE4"
    assert second.route[0] == "bS5-g0_5"
    assert second.route[-1] == "g9_5-bN5"
    assert len(first.route) == len(second.route) == 11
    # AMB-1 has 150 + 5 x 200 m to g4_5's stop line, AMB-2 150 + 4 x 200 m: 200 m more
    speed = 13.9 * 1.3
    assert first.depart_s == 1000.0
    assert second.depart_s == pytest.approx(1000.0 + 200.0 / speed)


def test_opposing_ambulances_meet_head_on_at_their_crossing_at_free_flow() -> None:
    first, second = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0, meeting=Meeting.HEAD_ON)
    assert first.route[0] == "bW4-g4_0"
    assert second.route == tuple(
        "-".join(reversed(link.split("-"))) for link in reversed(first.route)
    )
    # AMB-1 has 150 + 5 x 200 m to g4_5's stop line, AMB-2 150 + 4 x 200 m: 200 m more
    assert second.depart_s == pytest.approx(1000.0 + 200.0 / (13.9 * 1.3))


def test_a_convoy_follows_the_first_on_its_route() -> None:
    first, second = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0, meeting=Meeting.CONVOY)
    assert second.route == first.route
    assert second.name == "AMB-2"
    assert second.depart_s == pytest.approx(1000.0 + CONVOY_GAP_S)


def test_three_ways_meet_head_on_and_across_at_free_flow() -> None:
    specs = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0, meeting=Meeting.THREE_WAY)
    head_on = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0, meeting=Meeting.HEAD_ON)
    across = crossing_ambulances(GRID, row=4, column=5, at_s=1000.0)
    assert [spec.name for spec in specs] == ["AMB-1", "AMB-2", "AMB-3"]
    assert specs[:2] == head_on
    assert (specs[2].route, specs[2].depart_s) == (across[1].route, across[1].depart_s)


def test_several_ambulances_come_after_the_traffic_which_they_leave_unchanged() -> None:
    specs = crossing_ambulances(GRID, row=4, column=5, at_s=300.0)
    alone = build(GRID, level=Level.LIGHT, duration_s=600.0, seed=2)
    both = build(GRID, level=Level.LIGHT, duration_s=600.0, seed=2, ambulances=specs)
    count = alone.trips.count
    assert both.trips.count == count + 2
    assert both.trips.names == {count: "AMB-1", count + 1: "AMB-2"}
    assert both.trips.emergency[count:].all()
    assert not both.trips.emergency[:count].any()
    np.testing.assert_array_equal(both.trips.depart[:count], alone.trips.depart)
    np.testing.assert_array_equal(both.trips.speed_factor[count:], [1.3, 1.3])
    assert both.name == "grid-10x10-light"


def test_ambulance_names_must_differ_and_routes_must_exist() -> None:
    spec = AmbulanceSpec("AMB-1", ("bW0-g0_0", "g0_0-g0_1"), 10.0)
    with pytest.raises(ValidationError, match="duplicate"):
        build(GRID, level=Level.LIGHT, duration_s=60.0, seed=1, ambulances=[spec, spec])
    with pytest.raises(ValidationError, match="duplicate"):
        build(
            GRID, level=Level.LIGHT, duration_s=60.0, seed=1, ambulance_at_s=5.0, ambulances=[spec]
        )
    with pytest.raises(ValidationError, match="row"):
        crossing_ambulances(GRID, row=10, column=5, at_s=0.0)
    with pytest.raises(ValidationError, match="no such route"):
        crossing_ambulances(arterial(3), row=0, column=0, at_s=0.0)


def test_load_network_names_what_it_accepts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no RESCO scenario 'foo'; known: resco:ingolstadt1"):
        load_network("resco:foo")
    with pytest.raises(ValidationError, match=r"'city\.net\.xml' is neither a known spec nor"):
        load_network("city.net.xml")
    empty = tmp_path / "empty.net.xml"
    empty.write_text("")
    with pytest.raises(ValidationError, match=r"empty\.net\.xml: empty or not XML; expected"):
        load_network(str(empty))
    routes = tmp_path / "city.rou.xml"
    routes.write_text("<routes/>")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (routes, text):
        with pytest.raises(ValidationError) as caught:
            load_network(str(path))
        assert ACCEPTED_SPECS in str(caught.value)
    ours = tmp_path / "net.json"
    ours.write_text("{")
    with pytest.raises(ValidationError, match="not valid JSON") as caught:
        load_network(str(ours))
    assert ACCEPTED_SPECS not in str(caught.value)


@pytest.mark.sumo
def test_load_network_imports_a_sumo_network_by_path_config_or_resco_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from citybrain.simulator import sumo

    if sumo.find_binary("netgenerate") is None:
        pytest.skip("the SUMO tool 'netgenerate' is not installed")
    net = sumo.netgenerate_grid(tmp_path / "city.net.xml", rows=2, columns=2)
    config = tmp_path / "city.sumocfg"
    config.write_text(
        '<configuration><input><net-file value="city.net.xml"/></input></configuration>'
    )
    # a RESCO name is read from the cache, as left by `fetch_resco`
    folder = tmp_path / "cache" / "resco" / "sumo-rl-1.4.5" / "cologne1"
    folder.mkdir(parents=True)
    (folder / "cologne1.net.xml").write_bytes(net.read_bytes())
    (folder / "cologne1.sumocfg").write_text(config.read_text().replace("city", "cologne1"))
    monkeypatch.setenv("CITYBRAIN_CACHE", str(tmp_path / "cache"))
    expected = sumo.read_net(net).road.network
    for spec in (str(net), str(config), "resco:cologne1"):
        assert load_network(spec).network == expected, spec
