"""``citybrain evaluate``: the three policies on any network and route, from Python and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from citybrain import evaluate
from citybrain.cli import main
from citybrain.closed_loop import Policy
from citybrain.demo import json_text
from citybrain.models.errors import ValidationError
from citybrain.simulator import sumo

AMBULANCE = evaluate.Ambulance("AMB-1", "west-a01", "a03-east", 300.0)


@pytest.fixture(scope="module")
def arterial_result() -> dict[str, Any]:
    study = evaluate.Study(
        network="arterial:3", ambulances=(AMBULANCE,), demand="heavy", seeds=2, after_s=600.0
    )
    return evaluate.to_json(evaluate.evaluate(study))


def test_the_result_has_the_demo_s_policies_and_every_seed(arterial_result: dict[str, Any]) -> None:
    policies = arterial_result["policies"]
    assert set(policies) == {"no_priority", "local_preemption", "corridor"}
    for figures in policies.values():
        assert {"travel_time_s", "ratio_to_free_flow", "other_vehicles_extra_delay_s"} <= set(
            figures
        )
        assert len(figures["per_seed_travel_time_s"]) == 2
    assert arterial_result["ambulances"]["AMB-1"]["route"][0] == "west-a01"
    assert arterial_result["ambulances"]["AMB-1"]["route"][-1] == "a03-east"
    rows = arterial_result["per_seed"]
    assert [row["seed"] for row in rows] == [0, 1]
    assert rows[0]["corridor"]["corridor"]["AMB-1"] == "completed"
    corridor = policies["corridor"]["travel_time_s"]
    assert corridor < policies["no_priority"]["travel_time_s"]
    text = evaluate.render(arterial_result)
    assert "verdict: the corridor takes" in text


def test_trips_that_did_not_end_are_null_in_the_json(
    arterial_result: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON has no nan: a trip that did not end before its run did, and a mean over seeds
    where none did, are null (a real city's seed once made ``benchmarks/real_cities.py`` fail
    to write; a run too short for any made ``citybrain evaluate --json`` fail)."""
    study = evaluate.Study(
        network="arterial:3", ambulances=(AMBULANCE,), demand="heavy", seeds=2, after_s=600.0
    )
    evaluation = evaluate.evaluate(study)
    outcome = evaluation.comparison.outcomes[Policy.NO_PRIORITY][1]
    journey = outcome.journeys["AMB-1"]
    late = dataclasses.replace(journey, trip=dataclasses.replace(journey.trip, travel_time_s=None))
    outcome.journeys["AMB-1"] = late
    data = json.loads(json_text(evaluate.to_json(evaluation)))
    figures = data["policies"]["no_priority"]
    assert figures["per_seed_travel_time_s"][1] is None
    expected = arterial_result["policies"]["no_priority"]["per_seed_travel_time_s"][0]
    assert figures["per_seed_travel_time_s"][0] == expected
    assert data["per_seed"][1]["no_priority"]["travel_time_s"] == {"AMB-1": None}
    code = main(
        ["evaluate", "--network", "arterial:3", "--from", "west-a01", "--to", "a03-east",
         "--depart", "300", "--demand", "light", "--seeds", "1", "--after", "30", "--json",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["policies"]["corridor"]["travel_time_s"] is None  # not arrived in 30 s
    assert json.loads((tmp_path / "evaluate.json").read_text()) == printed


def test_a_trip_the_engine_teleported_is_said_and_left_out_of_the_means(
    arterial_result: dict[str, Any],
) -> None:
    """SUMO teleported the ambulance (``Journey.lost``): no travel time, the reason in the
    JSON and in the report, not taken for a trip that did not end."""
    study = evaluate.Study(
        network="arterial:3", ambulances=(AMBULANCE,), demand="heavy", seeds=2, after_s=600.0
    )
    evaluation = evaluate.evaluate(study)
    outcome = evaluation.comparison.outcomes[Policy.CORRIDOR][0]
    reason = "AMB-1 teleport on a01-a02 at 380 s: jammed over the time to teleport"
    outcome.journeys["AMB-1"] = dataclasses.replace(outcome.journeys["AMB-1"], lost=reason)
    data = json.loads(json_text(evaluate.to_json(evaluation)))
    assert data["engine"] == "ours"
    assert data["per_seed"][0]["corridor"]["lost"] == {"AMB-1": reason}
    assert data["per_seed"][1]["corridor"]["lost"] == {}
    assert data["per_seed"][0]["corridor"]["travel_time_s"] == {"AMB-1": None}
    kept = arterial_result["policies"]["corridor"]["per_seed_travel_time_s"][1]
    assert data["policies"]["corridor"]["travel_time_s"] == kept
    text = evaluate.render(data)
    assert f"left out of the means: AMB-1 (corridor, seed 0): {reason}" in text
    assert "not arrived" not in text


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(
        ["evaluate", "--network", "arterial:3", "--from", "west-a01", "--to", "a03-east",
         "--seeds", "1", "--out", str(blocker / "out")]
    )  # fmt: skip
    assert code == 2
    assert f"out: cannot make {blocker / 'out'}: Not a directory" in capsys.readouterr().err


def test_the_ceiling_holds_every_signal_green_and_no_policy_beats_it() -> None:
    """``green_all_the_way``: every signal on the route green for the ambulance from dispatch,
    whatever it costs the cross streets: the ambulance never stops, losing only what the
    traffic it cannot pass holds it to, no policy is clearly faster (the corridor matches it:
    within 1 %, the cars it catches up with), and everyone else pays more than under the
    corridor."""
    study = evaluate.Study(
        network="arterial:3", ambulances=(AMBULANCE,), demand="heavy", seeds=1, after_s=600.0,
        ceiling=True,
    )  # fmt: skip
    result = evaluate.to_json(evaluate.evaluate(study))
    policies = result["policies"]
    assert list(policies) == ["no_priority", "local_preemption", "corridor", "green_all_the_way"]
    ceiling = policies["green_all_the_way"]
    assert 1.0 <= ceiling["ratio_to_free_flow"] <= 1.1
    assert ceiling["stops"] == 0
    assert ceiling["plans_refused"] == 0
    for name in ("no_priority", "local_preemption", "corridor"):
        assert ceiling["travel_time_s"] <= 1.01 * policies[name]["travel_time_s"]
    costs = {name: p["other_vehicles_extra_delay_s"] for name, p in policies.items()}
    assert costs["green_all_the_way"] > costs["corridor"]
    assert "green_all_the_way" in evaluate.render(result)


def test_several_ambulances_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ambulances.json"
    path.write_text(
        json.dumps(
            [
                {"name": "AMB-1", "origin": "west-a01", "destination": "a03-east"},
                {"name": "AMB-2", "origin": "east-a03", "destination": "a01-west",
                 "depart_s": 320.0},
            ]
        )
    )  # fmt: skip
    ambulances = evaluate.read_ambulances(path, depart_s=300.0)
    assert [a.depart_s for a in ambulances] == [300.0, 320.0]
    data = evaluate.to_json(
        evaluate.evaluate(
            evaluate.Study(
                network="arterial:3", ambulances=ambulances, demand="light", seeds=1,
                after_s=400.0,
            )
        )
    )  # fmt: skip
    assert set(data["ambulances"]) == {"AMB-1", "AMB-2"}
    assert set(data["per_seed"][0]["corridor"]["travel_time_s"]) == {"AMB-1", "AMB-2"}


@pytest.mark.parametrize(
    ("origin", "depart_s", "message"),
    [("nowhere", 300.0, "neither an edge"), ("west-a01", 10.0, "leave at least"),
     ("a03-east", 300.0, "AMB-1 starts where it ends")],
)  # fmt: skip
def test_a_bad_route_or_departure_is_refused(origin: str, depart_s: float, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ambulance = evaluate.Ambulance("AMB-1", origin, "a03-east", depart_s)
        evaluate.evaluate(evaluate.Study(network="arterial:3", ambulances=(ambulance,), seeds=1))


@pytest.mark.parametrize(
    ("demand", "message"),
    [("50%", "a share of what"), ("nosuch.rou.xml", "not a route file"),
     ("0%", "'0%': a share is over 0% and at most 1000%"), ("5000%", "at most 1000%")],
)  # fmt: skip
def test_a_bad_demand_is_refused(demand: str, message: str) -> None:
    study = evaluate.Study(network="arterial:3", ambulances=(AMBULANCE,), demand=demand, seeds=1)
    with pytest.raises(ValidationError, match=message):
        evaluate.evaluate(study)


def test_a_bad_ambulance_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[{"name": "AMB-1", "origin": "x"}]')
    with pytest.raises(ValidationError, match="destination"):
        evaluate.read_ambulances(path, depart_s=300.0)
    path.write_text("[not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        evaluate.read_ambulances(path, depart_s=300.0)


def test_the_cli_prints_json_and_writes_the_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate", "--network", "arterial:3", "--from", "west-a01", "--to", "a03-east",
            "--depart", "300", "--after", "500", "--demand", "light", "--seeds", "1", "--json",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seeds"] == 1
    assert (tmp_path / "evaluate.json").is_file()
    assert (tmp_path / "AMB-1.png").stat().st_size > 10_000


def test_the_cli_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--network", "arterial:3"]) == 2
    assert "--from EDGE --to EDGE" in capsys.readouterr().err


@pytest.mark.sumo
def test_a_sumo_network_with_its_route_file(tmp_path: Path) -> None:
    if sumo.find_binary("netgenerate") is None:
        pytest.skip("netgenerate is not installed")
    net_file = sumo.netgenerate_grid(tmp_path / "grid.net.xml", rows=3, columns=3)
    routes = tmp_path / "cars.rou.xml"
    routes.write_text(
        '<routes><flow id="f" begin="0" end="1500" vehsPerHour="600" from="A0A1" to="A2C2"/>'
        '<flow id="g" begin="0" end="1500" vehsPerHour="400" from="C1B1" to="B1A1"/></routes>'
    )
    study = evaluate.Study(
        network=str(net_file),
        ambulances=(evaluate.Ambulance("AMB-1", "A0A1", "B2C2", 400.0),),
        demand=f"{routes}@100%",
        seeds=1,
        after_s=600.0,
    )
    data = evaluate.to_json(evaluate.evaluate(study))
    route = data["ambulances"]["AMB-1"]["route"]
    assert route[0] == "A0A1"
    assert route[-1] == "B2C2"
    assert data["per_seed"][0]["corridor"]["travel_time_s"]["AMB-1"] is not None


@pytest.mark.sumo
def test_the_cli_evaluates_on_sumo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("libsumo")
    code = main(
        ["evaluate", "--network", "arterial:3", "--from", "west-a01", "--to", "a03-east",
         "--depart", "300", "--after", "600", "--demand", "moderate", "--seeds", "1",
         "--engine", "sumo", "--json", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine"] == "sumo"
    row = data["per_seed"][0]
    assert row["corridor"]["corridor"] == {"AMB-1": "completed"}
    assert all(row[p]["lost"] == {} for p in ("no_priority", "local_preemption", "corridor"))
    free = data["ambulances"]["AMB-1"]["free_flow_s"]
    assert free <= data["policies"]["corridor"]["travel_time_s"] < 1.3 * free
