"""Our engine against SUMO running a RESCO city stand-alone (``sumo -c``): arrived vehicles and
mean trip time within ``TOLERANCE`` (``benchmarks/sumo_fidelity.py`` prints the full table).
Cologne (8 lights, 2,046 trips) runs in seconds; Ingolstadt (21 lights, 4,283 trips) is slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from citybrain.simulator import sumo
from citybrain.simulator.cities import FetchError, resolve_scenario
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.routes import read_routes, sumo_edge_ids

pytest.importorskip("sumolib")
if sumo.find_binary("sumo") is None:
    pytest.skip("the SUMO binary is not installed", allow_module_level=True)

pytestmark = pytest.mark.sumo

TOLERANCE = 0.15


def _both(name: str, out: Path) -> tuple[sumo.SimResult, sumo.SimResult]:
    try:
        scenario = resolve_scenario(f"resco:{name}")
    except FetchError as error:
        pytest.skip(f"the RESCO networks cannot be fetched here: {error}")
    assert scenario is not None
    assert scenario.config is not None
    assert scenario.end_s is not None
    theirs = sumo.run_sumo_config(
        scenario.config, begin_s=scenario.begin_s, end_s=scenario.end_s, out_dir=out
    )
    snet = sumo.read_net(scenario.net_file, begin_s=scenario.begin_s)
    net = compile_network(snet.road)
    demand = read_routes(
        scenario.route_files,
        link_of_edge=snet.link_of_edge,
        net=net,
        begin_s=scenario.begin_s,
        end_s=scenario.end_s,
        sumo_edges=sumo_edge_ids(scenario.net_file),
    )
    assert set(demand.report.dropped) <= {"outside_time_window"}, demand.report
    ours = sumo.run_citybrain(net, demand.trips, duration_s=scenario.end_s - scenario.begin_s)
    return theirs, ours


def _check(theirs: sumo.SimResult, ours: sumo.SimResult) -> None:
    assert theirs.arrived > 1000
    assert theirs.teleports == 0
    assert abs(ours.arrived / theirs.arrived - 1.0) <= TOLERANCE
    assert abs(ours.mean_travel_time_s / theirs.mean_travel_time_s - 1.0) <= TOLERANCE
    # the junctions crossed are on both sides' route lengths
    assert abs(ours.mean_route_length_m / theirs.mean_route_length_m - 1.0) <= 0.05
    assert ours.stuck <= 0.01 * ours.vehicles


def test_cologne8_is_within_tolerance_of_sumo(tmp_path: Path) -> None:
    _check(*_both("cologne8", tmp_path))


@pytest.mark.slow
def test_ingolstadt21_is_within_tolerance_of_sumo(tmp_path: Path) -> None:
    _check(*_both("ingolstadt21", tmp_path))


@pytest.mark.parametrize("name", ["cologne8", "ingolstadt21"])
def test_the_turns_that_give_way_are_sumo_s_permitted_ones(name: str) -> None:
    """Our permitted turns (``compiled.mv_yield``, from geometry and the plans' conflicts) are
    the movements SUMO's programs show ``g`` while a foe shows ``G``: all of them, and on
    Ingolstadt three more (lefts whose opposing traffic SUMO lets go in other phases only)."""
    from citybrain.simulator.sumo_xml import read_net_file

    try:
        scenario = resolve_scenario(f"resco:{name}")
    except FetchError as error:
        pytest.skip(f"the RESCO networks cannot be fetched here: {error}")
    assert scenario is not None
    snet = sumo.read_net(scenario.net_file, begin_s=scenario.begin_s)
    net = compile_network(snet.road)
    ours = {
        net.movement_ids[m]
        for m in range(net.movements)
        if net.mv_yield_start[m] < net.mv_yield_start[m + 1]
    }
    programs = read_net_file(scenario.net_file).programs
    theirs = set()
    for tls, links in snet.tls_links.items():
        states = [phase.state for phase in programs[tls][-1].phases]
        for link in links:
            for state in states:
                if state[link.index] == "g" and any(state[f] == "G" for f in link.foes):
                    theirs.add(link.movement)
    assert theirs <= ours
    assert len(ours - theirs) <= 3
