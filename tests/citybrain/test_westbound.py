"""The arterial ambulance driving westbound, against the green wave (`citybrain demo
--westbound`), on a small arterial to stay fast."""

from __future__ import annotations

from dataclasses import replace

import pytest

from citybrain import demo
from citybrain.closed_loop import AMBULANCE, GRID, Policy, Setup, run_policy
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorState
from citybrain.simulator.scenarios import Level, Meeting

WEST = Setup(
    network="arterial:6",
    level=Level.SATURATED,
    warmup_s=300.0,
    after_s=900.0,
    direction="westbound",
)


@pytest.fixture(scope="module")
def comparison() -> demo.Comparison:
    return demo.compare([1], setup=WEST)


def test_the_route_runs_from_the_last_cross_street_through_a06_to_a01_to_the_west_end(
    comparison: demo.Comparison,
) -> None:
    for outcomes in comparison.outcomes.values():
        journey = outcomes[0].journeys[AMBULANCE]
        assert journey.route == ("a06n", "a06", "a05", "a04", "a03", "a02", "a01", "west")
        assert list(journey.stop_line_m) == ["a06", "a05", "a04", "a03", "a02", "a01"]
    assert demo.summary(comparison)["scenario"] == "arterial:6-saturated-westbound"


def test_every_policy_delivers_the_ambulance_and_no_plan_is_refused(
    comparison: demo.Comparison,
) -> None:
    for policy, outcomes in comparison.outcomes.items():
        for outcome in outcomes:
            journey = outcome.journeys[AMBULANCE]
            assert journey.trip.arrived_s is not None, policy
            assert journey.travel_time_s >= journey.trip.free_flow_s - 1e-6
            assert outcome.plans_refused == 0, policy
    assert all(o.plans_sent > 0 for o in comparison.outcomes[Policy.CORRIDOR])
    assert all(
        o.corridors == {AMBULANCE: CorridorState.COMPLETED}
        for o in comparison.outcomes[Policy.CORRIDOR]
    )


def test_crossing_ambulances_take_no_direction() -> None:
    with pytest.raises(ValidationError, match="direction"):
        run_policy(
            Policy.NO_PRIORITY,
            1,
            Setup(network=GRID.network, crossing=(4, 5), direction="westbound"),
        )
    with pytest.raises(ValidationError, match="meeting"):
        run_policy(Policy.NO_PRIORITY, 1, Setup(meeting=Meeting.HEAD_ON))


def test_a_run_too_short_for_the_ambulance_to_arrive_is_refused() -> None:
    with pytest.raises(ValidationError, match="still driving"):
        demo.compare([1], setup=replace(WEST, after_s=120.0))
