from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from citybrain import demo, diagram
from citybrain.cli import main
from citybrain.closed_loop import AMBULANCE, Policy, Setup, indication_colour, run_policy
from citybrain.cloud.corridor import CorridorManager
from citybrain.models.messages import CorridorState, VehiclePosition
from citybrain.simulator.networks import RoadNetwork, arterial
from citybrain.simulator.scenarios import Level, Scenario, build, load_network

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


def test_the_vehicles_ahead_at_each_green_are_counted(comparison: demo.Comparison) -> None:
    road = load_network(SMALL.network).network
    for outcomes in comparison.outcomes.values():
        for outcome in outcomes:
            journey = outcome.journeys[AMBULANCE]
            assert journey.ahead_at_green.keys() == journey.stops_at.keys()
            for line in journey.trip.stop_lines:
                if line.intersection not in journey.ahead_at_green:
                    continue  # no signal
                onset = journey.green_onset(line.intersection, line.left_s)
                # no more than its lanes discharge at saturation flow since that green began
                link = road.link_by_id[line.link]
                lanes = len(link.lanes)
                least_gap_s = 3600.0 / link.saturation_flow_vphpl / lanes
                ahead = journey.ahead_at_green[line.intersection]
                assert 0 <= ahead <= (line.left_s - onset) / least_gap_s + lanes
    # without priority it waits in queues on this saturated arterial: someone mostly went first
    waited = [
        journey.ahead_at_green[node]
        for outcome in comparison.outcomes[Policy.NO_PRIORITY]
        for journey in [outcome.journeys[AMBULANCE]]
        for node, stops in journey.stops_at.items()
        if stops
    ]
    assert waited
    assert sum(count > 0 for count in waited) >= 0.5 * len(waited)


def test_the_corridor_s_flush_estimates_are_kept_beside_what_left_ahead(
    comparison: demo.Comparison,
) -> None:
    """Per stop line its window passed, the vehicles the cloud expected that window to flush
    ahead of the ambulance, to hold against those that did (the benchmark's ratio)."""
    for policy, outcomes in comparison.outcomes.items():
        for outcome in outcomes:
            journey = outcome.journeys[AMBULANCE]
            if policy is not Policy.CORRIDOR:
                assert journey.flush_estimate_veh == {}
                continue
            assert journey.flush_estimate_veh
            assert journey.flush_estimate_veh.keys() <= journey.ahead_at_green.keys()
            assert all(
                math.isfinite(veh) and veh >= 0.0 for veh in journey.flush_estimate_veh.values()
            )
            # a saturated arterial: the windows flush queues, and the cloud expects some
            assert sum(journey.flush_estimate_veh.values()) > 0.0


def test_the_corridor_s_etas_are_kept_until_the_ambulance_gets_there(
    comparison: demo.Comparison,
) -> None:
    """Per intersection of its route, each ETA its corridor's status gave (with its band),
    none after it passed: the benchmark holds them against when it got there."""
    for policy, outcomes in comparison.outcomes.items():
        for outcome in outcomes:
            journey = outcome.journeys[AMBULANCE]
            if policy is not Policy.CORRIDOR:
                assert journey.forecasts == {}
                continue
            passed = {
                line.intersection: line.left_s
                for line in journey.trip.stop_lines
                if line.intersection in journey.stop_line_m  # its signals
            }
            assert passed
            assert passed.keys() <= journey.forecasts.keys()
            for node, given in journey.forecasts.items():
                times = [when for when, _, _, _ in given]
                assert times == sorted(times)
                assert all(low <= eta <= high for _, eta, low, high in given)
                if node in passed:
                    assert times[-1] <= passed[node] + 1.0
                    # a second before it got there, the ETA is that second, within a few
                    assert abs(given[-1][1] - passed[node]) < 5.0


def test_positions_report_the_speed_driven_over_the_last_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As an AVL unit measures it, not the speed it could drive: each position after the
    first says how far it went along its route since the one before, over that time, so one
    slowed by the traffic ahead or standing in a queue says so."""
    reported: list[tuple[float, float]] = []
    on_position = CorridorManager.on_position

    def spy(self: CorridorManager, position: VehiclePosition, now_s: float) -> list[object]:
        reported.append((now_s, position.speed_mps))
        return on_position(self, position, now_s)  # type: ignore[return-value]

    monkeypatch.setattr(CorridorManager, "on_position", spy)
    journey = run_policy(Policy.CORRIDOR, 1, SMALL).journeys[AMBULANCE]
    along = dict(journey.trajectory)
    driven = {
        now: (along[now] - along[then]) / (now - then)
        for then, now in itertools.pairwise(sorted(along))
    }
    said = {now: speed for now, speed in reported[1:] if now in driven}
    assert len(said) > 100
    assert said == pytest.approx({now: driven[now] for now in said})
    assert min(said.values()) < 0.5 * max(said.values())


def _with_junctions() -> tuple[RoadNetwork, Scenario]:
    """The small arterial as a map whose links end at the junctions' edges (its nodes 20 %
    further apart than its links are long: 80 m or so inside each junction), light traffic."""
    base = arterial(6)
    nodes = tuple(
        dataclasses.replace(node, x_m=1.2 * node.x_m, y_m=1.2 * node.y_m)
        for node in base.network.intersections
    )
    road = dataclasses.replace(base, network=dataclasses.replace(base.network, intersections=nodes))
    scenario = build(
        road, level=Level.LIGHT, duration_s=1200.0, seed=1, ambulance_at_s=SMALL.warmup_s
    )
    return road, scenario


def test_the_route_it_drives_goes_across_the_junctions() -> None:
    """On a map whose links end at the junctions' edges (the nodes 20 % further apart than
    the links are long), the distance along its route counts each junction it crosses: its
    stop lines lie where the links and junctions before them end, it has driven all of them
    when it arrives, and its speed over each second (what its positions report) is never
    the artefact of a junction left out: green all the way, none over its top speed and none
    near a standstill."""
    road, scenario = _with_junctions()
    outcome = run_policy(Policy.GREEN_ALL_THE_WAY, 1, SMALL, scenario=scenario)
    journey = outcome.journeys[AMBULANCE]
    network = road.network
    links = [network.link(line.link) for line in journey.trip.stop_lines]
    moves = {(m.from_link, m.to_link): m for m in network.movements}
    crossed = [network.junction_m(moves[a.id, b.id]) for a, b in itertools.pairwise(links)]
    assert min(crossed) > 50.0
    metres = [link.length_m for link in links]
    ends = itertools.accumulate(m + j for m, j in zip(metres, [0.0, *crossed], strict=True))
    for line, end in zip(journey.trip.stop_lines, ends, strict=True):
        if line.intersection in journey.stop_line_m:
            assert journey.stop_line_m[line.intersection] == pytest.approx(end)
    top = max(link.speed_limit_mps for link in links) * 1.3
    total = sum(metres) + sum(crossed)
    assert total - top < journey.trajectory[-1][1] <= total  # its last second before arriving
    driven = [
        (at - was) / (now - then)
        for (then, was), (now, at) in itertools.pairwise(journey.trajectory[5:])
    ]
    assert len(driven) > 100
    assert min(driven) > 0.5 * top
    assert max(driven) <= top + 1e-6


def test_while_it_crosses_a_junction_its_position_is_the_end_of_the_link_it_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As SUMO's engine reports it (and an AVL unit matched to a link): the cloud does not
    see it on the next link, at its start, seconds before it gets there. On the map with
    junctions of the test above, each crossing (80 m or more, 4 s or more) is seen as
    reports at the end of the link it left."""
    road, scenario = _with_junctions()
    reported: list[tuple[str, float]] = []
    on_position = CorridorManager.on_position

    def spy(self: CorridorManager, position: VehiclePosition, now_s: float) -> list[object]:
        reported.append((position.link, position.offset_m))
        return on_position(self, position, now_s)  # type: ignore[return-value]

    monkeypatch.setattr(CorridorManager, "on_position", spy)
    journey = run_policy(Policy.CORRIDOR, 1, SMALL, scenario=scenario).journeys[AMBULANCE]
    links = [line.link for line in journey.trip.stop_lines]
    for left, entered in itertools.pairwise(links):
        end = road.network.link(left).length_m
        assert reported.count((left, end)) >= 2, left
        assert (entered, 0.0) not in reported, entered


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
    picture = diagram.time_space_diagram(
        {policy: outcomes[0] for policy, outcomes in comparison.outcomes.items()},
        tmp_path / "ts.png",
    )
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_corridor_that_did_not_complete_is_said_under_the_table(
    comparison: demo.Comparison,
) -> None:
    data = demo.summary(comparison)
    assert data["policies"]["corridor"]["corridor_states"] == {"completed": 2}
    assert data["policies"]["local_preemption"]["corridor_states"] == {}
    assert "did not complete" not in demo.render(data)
    data["policies"]["corridor"]["corridor_states"] = {"cancelled": 1, "completed": 1}
    assert "  the corridor did not complete: cancelled on 1 seed" in demo.render(data)


def test_same_seed_same_result() -> None:
    first = run_policy(Policy.CORRIDOR, 5, SMALL)
    again = run_policy(Policy.CORRIDOR, 5, SMALL)
    assert first.journeys[AMBULANCE].travel_time_s == again.journeys[AMBULANCE].travel_time_s
    assert first.other_vehicle_seconds == again.other_vehicle_seconds


def test_cli_demo_refuses_bad_seed_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seeds", "0"]) == 2
    assert "seeds" in capsys.readouterr().err


def test_the_windows_the_plans_asked_for_are_kept_for_the_diagram(
    comparison: demo.Comparison,
) -> None:
    for policy, outcomes in comparison.outcomes.items():
        journey = outcomes[0].journeys[AMBULANCE]
        assert journey.progression_mps == pytest.approx(13.9, rel=0.01)
        if policy is Policy.NO_PRIORITY:
            assert journey.windows == {}
            continue
        # every stop line got a window before the ambulance passed it
        assert set(journey.windows) == set(journey.stop_line_m), policy
        for open_at, close_at in journey.windows.values():
            assert journey.trip.depart_s - 120.0 < open_at < close_at


def test_signal_bands_are_runs_of_one_indication_drawn_from_the_departure() -> None:
    series = [(10.0, "green"), (11.0, "green"), (12.0, "yellow"), (13.0, "red"), (15.0, "red")]
    red, yellow, green = (indication_colour(c) for c in ("red", "yellow", "green"))
    assert list(diagram.signal_intervals(series, start=10.0)) == [
        (0.0, 2.0, green),
        (2.0, 3.0, yellow),
        (3.0, 5.0, red),
    ]


def test_the_progression_line_starts_at_the_first_green_after_departure(
    comparison: demo.Comparison,
) -> None:
    journey = comparison.outcomes[Policy.NO_PRIORITY][0].journeys[AMBULANCE]
    start = journey.trip.depart_s
    t0, y0 = diagram.progression_start(journey, start) or (math.nan, math.nan)
    first = min(journey.stop_line_m, key=journey.stop_line_m.__getitem__)
    assert y0 == journey.stop_line_m[first]
    shown = dict(journey.signals[first])
    assert t0 >= 0.0
    assert shown[start + t0] == "green"
    assert shown.get(start + t0 - 1.0) != "green"


@pytest.mark.sumo
@pytest.mark.slow
def test_the_demo_runs_on_sumo_with_the_same_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--engine sumo`` on the demo (arterial only, one seed: about 40 s): the JSON our
    engine gives, every key of it, with the engine named."""
    pytest.importorskip("libsumo")
    figures = {}
    for engine in ("ours", "sumo"):
        out = tmp_path / engine
        args = ["demo", "--seeds", "1", "--no-grid", "--no-live", "--json", "--out", str(out)]
        assert main([*args, "--engine", engine]) == 0
        figures[engine] = json.loads(capsys.readouterr().out)
        assert json.loads((out / "demo.json").read_text()) == figures[engine]
    ours, sumo = figures["ours"], figures["sumo"]
    assert (ours["engine"], sumo["engine"]) == ("ours", "sumo")
    assert _keys(ours) == _keys(sumo)
    for policy in ("no_priority", "local_preemption", "corridor"):
        # the engines' agreement, loosely: on one seed
        trips = sumo["policies"][policy]["travel_time_s"], ours["policies"][policy]["travel_time_s"]
        assert 0.8 < trips[0] / trips[1] < 1.25, policy
    corridor, local = sumo["policies"]["corridor"], sumo["policies"]["local_preemption"]
    assert corridor["travel_time_s"] < local["travel_time_s"]


def _keys(value: object, path: str = "") -> set[str]:
    """Every key path of a JSON object (lists by their first item)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in _keys(v, f"{path}/{k}")} | {path}
    if isinstance(value, list) and value:
        return _keys(value[0], f"{path}[]")
    return {path}
