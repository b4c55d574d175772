"""The closed loop with two ambulances whose routes cross on a grid (a 6 x 6 one, to stay fast;
`citybrain demo` runs the 10 x 10)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from citybrain import demo, diagram
from citybrain.cli import _parser
from citybrain.closed_loop import GRID, Policy, Setup, _Driver, run_policy, setup_scenario
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorState
from citybrain.simulator.crossing import Approach, least_larger_delay
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import Level, Meeting
from citybrain.simulator.sumo_run import open_run

SMALL_GRID = Setup(
    network="grid:6x6", level=Level.HEAVY, warmup_s=900.0, after_s=700.0, crossing=(2, 3)
)
VEHICLES = ("AMB-1", "AMB-2")


@pytest.fixture(scope="module")
def comparison() -> demo.Comparison:
    return demo.compare([1, 2], setup=SMALL_GRID)


def test_both_ambulances_arrive_both_corridors_complete_and_no_plan_is_refused(
    comparison: demo.Comparison,
) -> None:
    for policy, outcomes in comparison.outcomes.items():
        for outcome in outcomes:
            assert tuple(outcome.journeys) == VEHICLES
            assert outcome.crossings == ("g2_3",)
            assert outcome.plans_refused == 0, policy
            for journey in outcome.journeys.values():
                assert journey.trip.arrived_s is not None, policy
                assert journey.travel_time_s >= journey.trip.free_flow_s - 1e-6
                assert journey.stops_at["g2_3"] in (0, 1)
                assert sum(journey.stops_at.values()) == journey.trip.stops
    for outcome in comparison.outcomes[Policy.CORRIDOR]:
        assert outcome.corridors == dict.fromkeys(VEHICLES, CorridorState.COMPLETED)
    for outcome in comparison.outcomes[Policy.LOCAL_PREEMPTION]:
        assert outcome.corridors == {}
        assert outcome.plans_sent == 2 * 6  # one call per stop line and vehicle


def test_at_free_flow_both_would_reach_the_crossing_together(
    comparison: demo.Comparison,
) -> None:
    journeys = comparison.outcomes[Policy.NO_PRIORITY][0].journeys
    reach = []
    for journey in journeys.values():
        free = 0.0
        for line in journey.trip.stop_lines:
            free += line.left_s - line.entered_s - line.delay_s
            if line.intersection == "g2_3":
                break
        reach.append(journey.trip.depart_s + free)
    assert reach[0] == pytest.approx(reach[1], abs=1e-6)
    assert journeys["AMB-2"].route == ("bS3", *(f"g{r}_3" for r in range(6)), "bN3")


def test_each_ambulances_queue_at_the_crossing_is_kept_and_bounds_what_it_cost(
    comparison: demo.Comparison,
) -> None:
    """Per ambulance, the other vehicles of its queue at the crossing as they came. Every run
    is one timing of the crossing: the least any timing could cost the two there
    (``simulator/crossing.py``, each due when it would have passed unhindered in that run)
    is no more than the larger of their losses on the link up to it."""
    for outcomes in comparison.outcomes.values():
        for outcome in outcomes:
            queues = outcome.crossing_queues["g2_3"]
            assert set(queues) == set(VEHICLES)
            approaches = []
            for name, queue in queues.items():
                assert queue.arrivals_s.size > 0
                assert bool(np.all(np.diff(queue.arrivals_s) >= 0.0))
                assert queue.headway_s == pytest.approx(1.0)  # two lanes at 1,800 veh/h
                line = next(
                    ln for ln in outcome.journeys[name].trip.stop_lines
                    if ln.intersection == "g2_3"
                )  # fmt: skip
                due = line.left_s - line.delay_s
                approaches.append(Approach(queue.arrivals_s, due, queue.headway_s, 5.0, 5.0))
            lost = max(outcome.journeys[name].delay_at("g2_3") for name in VEHICLES)
            since = min(approach.due_s for approach in approaches) - 150.0
            assert least_larger_delay(*approaches, since_s=since) <= lost + 1.0


def test_the_corridors_beat_no_priority_together_and_serve_the_crossing_in_turn(
    comparison: demo.Comparison,
) -> None:
    """On every seed the two together take less time and stop less than without priority;
    the one served first at the crossing does not stop there and beats its own trip without
    priority; the other waits there for its window and clearance, and loses less there than
    the one that lost more without priority. The one that waits can be slower than a lucky
    trip without priority (AMB-1 on seed 1 crossed on green without it): who waits is the
    arbitration's choice, not a corridor's failure."""
    assert demo.grid_summary(comparison)["crossing"] == "g2_3"
    seeds = zip(
        comparison.outcomes[Policy.NO_PRIORITY], comparison.outcomes[Policy.CORRIDOR], strict=True
    )
    for without, outcome in seeds:
        base, ours = without.journeys, outcome.journeys
        assert sum(j.travel_time_s for j in ours.values()) < sum(
            j.travel_time_s for j in base.values()
        )
        assert sum(j.trip.stops for j in ours.values()) < sum(j.trip.stops for j in base.values())
        first, second = sorted(ours, key=lambda name: ours[name].delay_at("g2_3"))
        assert ours[first].stops_at["g2_3"] == 0
        assert ours[first].travel_time_s < base[first].travel_time_s
        worst = max(j.delay_at("g2_3") for j in base.values())
        assert ours[second].delay_at("g2_3") < worst
        assert outcome.plans_refused == 0
        # the one that yields is advised to slow down for its window there, and keeps to it;
        # the other is never advised, and nobody is once the corridors ended
        assert not ours[first].advice
        slowed = [speed for _, speed in ours[second].advice if speed is not None]
        assert slowed
        assert min(slowed) < ours[second].progression_mps * 1.3
        assert ours[second].advice[-1][1] is None


def test_the_grid_json_member_has_the_documented_shape(
    comparison: demo.Comparison, tmp_path: Path
) -> None:
    data = demo.grid_summary(comparison)
    assert data["scenario"] == "grid:6x6-heavy"
    assert data["seeds"] == 2
    assert data["intersections"] == 11
    for vehicle in VEHICLES:
        assert data["ambulances"][vehicle]["free_flow_s"] > 0
    for name in ("no_priority", "local_preemption", "corridor"):
        policy = data["policies"][name]
        for vehicle in VEHICLES:
            for key in ("travel_time_s", "stops", "ratio_to_free_flow", "delay_at_crossing_s"):
                assert math.isfinite(policy[vehicle][key]), (name, vehicle, key)
        assert math.isfinite(policy["other_vehicles_extra_delay_s"])
        assert 0.0 <= policy["both_through_crossing_without_stopping"] <= 1.0
    assert data["policies"]["no_priority"]["other_vehicles_extra_delay_s"] == 0.0
    demo.write_json(data, tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text()) == data
    assert "g2_3" in demo.render_grid(data)
    assert "did not complete" not in demo.render_grid(data)
    for vehicle in VEHICLES:
        assert data["policies"]["corridor"][vehicle]["corridor_states"] == {"completed": 2}
        assert data["policies"]["no_priority"][vehicle]["corridor_states"] == {}
    data["policies"]["corridor"]["AMB-2"]["corridor_states"] = {"completed": 1, "failed": 1}
    assert "  AMB-2 corridor did not complete: failed on 1 seed" in demo.render_grid(data)
    first = {policy: outcomes[0] for policy, outcomes in comparison.outcomes.items()}
    picture = diagram.time_space_diagram(first, tmp_path / "ts.png", vehicle="AMB-2")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_departures_in_the_green_each_ambulance_passed_on_are_kept(
    comparison: demo.Comparison,
) -> None:
    """``Journey.discharged`` (how the crossing's greens were used, in the benchmark): when
    each vehicle left the approach from the start of the green an ambulance left on, itself
    last, as many ahead of it as ``ahead_at_green`` counts."""
    kept = 0
    for outcomes in comparison.outcomes.values():
        for outcome in outcomes:
            for journey in outcome.journeys.values():
                assert journey.discharged.keys() == journey.ahead_at_green.keys()
                for line in journey.trip.stop_lines:
                    times = journey.discharged.get(line.intersection)
                    if times is None:
                        continue
                    onset = journey.green_onset(line.intersection, line.left_s)
                    ahead = journey.ahead_at_green[line.intersection]
                    assert len(times) == ahead + 1 or (times == [] and ahead == 0)
                    assert times == sorted(times)
                    assert all(onset < t <= line.left_s + 1.0 for t in times)
                    kept += len(times)
    assert kept > 0


def test_without_speed_advice_the_one_that_yields_is_never_slowed_and_waits_instead(
    comparison: demo.Comparison,
) -> None:
    """``Setup.speed_advice`` off (the benchmark's ``grid-no-advice``): the same order at
    the crossing, nobody advised; the one that yields, slowed for its window with the
    advice and not stopping there, stops there instead."""
    for seed, advised in zip((1, 2), comparison.outcomes[Policy.CORRIDOR], strict=True):
        outcome = run_policy(Policy.CORRIDOR, seed, replace(SMALL_GRID, speed_advice=False))
        assert outcome.corridors == dict.fromkeys(VEHICLES, CorridorState.COMPLETED)
        journeys = outcome.journeys
        assert all(speed is None for j in journeys.values() for _, speed in j.advice)
        first, second = sorted(VEHICLES, key=lambda name: journeys[name].delay_at("g2_3"))
        assert journeys[first].stops_at["g2_3"] == 0
        assert journeys[second].stops_at["g2_3"] == 1
        assert second == max(VEHICLES, key=lambda name: advised.journeys[name].delay_at("g2_3"))
        assert advised.journeys[second].stops_at["g2_3"] == 0


def test_advice_never_slower_than_the_floor_set_and_at_the_limit_nothing_slows_it_below(
    comparison: demo.Comparison,
) -> None:
    """``Setup.min_advised_mps`` (the benchmark's ``grid-slowest-*``): advised at 5 m/s at the
    slowest, the one that yields is told to go below the speed limit; with the floor at the
    limit (13.9 m/s), never: what that cannot absorb it waits out at the stop line."""
    advised = [
        speed
        for outcome in comparison.outcomes[Policy.CORRIDOR]
        for j in outcome.journeys.values()
        for _, speed in j.advice
        if speed is not None
    ]
    assert min(advised) < 13.9
    assert min(advised) >= 5.0
    for seed in (1, 2):
        outcome = run_policy(Policy.CORRIDOR, seed, replace(SMALL_GRID, min_advised_mps=13.9))
        assert outcome.corridors == dict.fromkeys(VEHICLES, CorridorState.COMPLETED)
        speeds = [s for j in outcome.journeys.values() for _, s in j.advice if s is not None]
        assert speeds  # still advised, only not below the limit
        assert all(speed >= 13.9 for speed in speeds)


def test_the_corridors_hand_a_late_window_over_as_the_setup_says() -> None:
    """``Setup.handover_s`` (the benchmark's ``grid-handover-10``) reaches the corridors'
    settings; the other corridor settings stay the defaults but those the setup names."""
    setup = replace(SMALL_GRID, handover_s=12.0, min_advised_mps=6.0)
    scenario = setup_scenario(setup, 1)
    with open_run(Engine.OURS, scenario) as run:
        manager = _Driver(Policy.CORRIDOR, scenario, run, setup).manager
    assert manager is not None
    assert manager.settings == CorridorSettings(handover_s=12.0, min_advised_mps=6.0)
    assert SMALL_GRID.handover_s == CorridorSettings().handover_s


@pytest.mark.parametrize("meeting", [Meeting.HEAD_ON, Meeting.CONVOY, Meeting.THREE_WAY])
def test_several_corridors_meeting_all_complete_each_passing_every_signal_on_its_green(
    meeting: Meeting,
) -> None:
    """Several vehicles (the issue's fourth point, ``benchmarks/meeting.py``): every corridor
    completes, no plan is refused, and each vehicle passes every signal inside its window and
    on a green."""
    outcome = run_policy(Policy.CORRIDOR, 2, replace(SMALL_GRID, meeting=meeting))
    names = ("AMB-1", "AMB-2", "AMB-3") if meeting is Meeting.THREE_WAY else VEHICLES
    assert outcome.corridors == dict.fromkeys(names, CorridorState.COMPLETED)
    assert outcome.plans_refused == 0
    for name, journey in outcome.journeys.items():
        lines = journey.trip.stop_lines
        signalized = [ln for ln in lines if ln.intersection in journey.stop_line_m]
        assert len(signalized) == 6
        for line in signalized:
            _, closes = journey.windows[line.intersection]
            assert line.left_s <= closes + 0.5, (name, line.intersection)
            shown = [s for t, s in journey.signals[line.intersection] if t <= line.left_s]
            assert shown[-1] == "green", (name, line.intersection)


def test_the_grid_report_refuses_ambulances_that_meet_otherwise_than_crossing() -> None:
    """Head on, their routes share every junction of the row: the report's one crossing was
    a bare ValueError of unpacking."""
    setup = replace(SMALL_GRID, meeting=Meeting.HEAD_ON, after_s=600.0)
    outcome = run_policy(Policy.NO_PRIORITY, 1, setup)
    comparison = demo.Comparison(setup, (1,), {Policy.NO_PRIORITY: [outcome]}, 6)
    with pytest.raises(ValidationError, match="share 6"):
        demo.grid_summary(comparison)


def test_one_ambulance_only_keeps_the_same_traffic() -> None:
    """The yardstick of what the crossing costs (``benchmarks/sumo_closed_loop.py``,
    ``grid-solo``): the other ambulance goes, every other trip stays as it was."""
    both = setup_scenario(SMALL_GRID, 3).trips
    solo = setup_scenario(SMALL_GRID, 3, only="AMB-2").trips
    assert [solo.names[int(v)] for v in np.flatnonzero(solo.emergency)] == ["AMB-2"]
    kept = ~both.emergency
    kept[[v for v, name in both.names.items() if name == "AMB-2"]] = True
    assert solo.depart.tolist() == both.depart[kept].tolist()
    assert solo.route_len.tolist() == both.route_len[kept].tolist()
    with pytest.raises(ValidationError, match="AMB-3"):
        setup_scenario(SMALL_GRID, 3, only="AMB-3")
    with pytest.raises(ValidationError, match="one ambulance"):
        setup_scenario(Setup(), 3, only="AMB-1")


def test_cli_demo_runs_the_grid_unless_told_not_to() -> None:
    assert _parser().parse_args(["demo"]).grid is True
    assert _parser().parse_args(["demo", "--no-grid"]).grid is False
    assert GRID.network == "grid:10x10"
    assert GRID.crossing == (4, 5)


def test_cli_demo_keeps_the_live_system_running_only_when_asked() -> None:
    assert _parser().parse_args(["demo"]).keep_running is False
    assert _parser().parse_args(["demo", "--keep-running"]).keep_running is True
