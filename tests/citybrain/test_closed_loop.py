from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from citybrain import demo
from citybrain.cli import main
from citybrain.closed_loop import AMBULANCE, Policy, Setup, run_policy
from citybrain.models.messages import CorridorState
from citybrain.simulator.scenarios import Level

SMALL = Setup(network="arterial:6", level=Level.SATURATED, warmup_s=300.0, after_s=900.0)


@pytest.fixture(scope="module")
def comparison() -> demo.Comparison:
    return demo.compare([1, 2], setup=SMALL)


def test_every_policy_delivers_the_ambulance_and_no_plan_is_refused(
    comparison: demo.Comparison,
) -> None:
    for policy, outcomes in comparison.outcomes.items():
        for outcome in outcomes:
            assert list(outcome.journeys) == [AMBULANCE]
            journey = outcome.journeys[AMBULANCE]
            assert journey.trip.arrived_s is not None, policy
            assert journey.travel_time_s >= journey.trip.free_flow_s - 1e-6
            assert sum(journey.stops_at.values()) == journey.trip.stops
            assert outcome.plans_refused == 0
            assert outcome.crossings == ()
    assert all(o.plans_sent == 0 for o in comparison.outcomes[Policy.NO_PRIORITY])
    assert all(o.plans_sent > 0 for o in comparison.outcomes[Policy.CORRIDOR])
    assert all(
        o.corridors == {AMBULANCE: CorridorState.COMPLETED}
        for o in comparison.outcomes[Policy.CORRIDOR]
    )


def test_the_corridor_is_fastest_and_stops_least(comparison: demo.Comparison) -> None:
    data = demo.summary(comparison)
    p = data["policies"]
    assert p["corridor"]["travel_time_s"] < p["local_preemption"]["travel_time_s"]
    assert p["corridor"]["travel_time_s"] < p["no_priority"]["travel_time_s"]
    assert p["corridor"]["stops"] < p["no_priority"]["stops"]
    assert p["corridor"]["ratio_to_free_flow"] < 1.3


def test_the_json_object_has_the_documented_shape(
    comparison: demo.Comparison, tmp_path: Path
) -> None:
    data = demo.summary(comparison)
    assert isinstance(data["scenario"], str)
    assert data["seeds"] == 2
    assert data["intersections"] == 6
    assert data["ambulance"]["free_flow_s"] > 0
    for name in ("no_priority", "local_preemption", "corridor"):
        policy = data["policies"][name]
        for key in ("travel_time_s", "stops", "ratio_to_free_flow", "other_vehicles_extra_delay_s"):
            assert math.isfinite(policy[key]), (name, key)
    assert data["policies"]["no_priority"]["other_vehicles_extra_delay_s"] == 0.0
    assert "grid" not in data
    demo.write_json(data, tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text()) == data
    picture = demo.time_space_diagram(
        {policy: outcomes[0] for policy, outcomes in comparison.outcomes.items()},
        tmp_path / "ts.png",
    )
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_result() -> None:
    first = run_policy(Policy.CORRIDOR, 5, SMALL)
    again = run_policy(Policy.CORRIDOR, 5, SMALL)
    assert first.journeys[AMBULANCE].travel_time_s == again.journeys[AMBULANCE].travel_time_s
    assert first.other_vehicle_seconds == again.other_vehicle_seconds


def test_cli_demo_refuses_bad_seed_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seeds", "0"]) == 2
    assert "seeds" in capsys.readouterr().err
