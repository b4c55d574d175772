"""Run scores and the ``citybrain sim`` commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from citybrain.cli import main
from citybrain.simulator import kernels, netfile, scoring
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import Trips, fixed_route, random_trips
from citybrain.simulator.engine import DAWDLE_MPS
from citybrain.simulator.networks import arterial, grid
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

from .simhelpers import all_groups_mask, vehicles

SUMMARY_KEYS = {
    "scenario",
    "duration_s",
    "vehicles",
    "arrived",
    "in_network",
    "not_departed",
    "mean_travel_time_s",
    "mean_delay_s",
    "mean_stops",
    "throughput_vph",
    "intersections",
    "emergency",
    "waiting_to_enter",
    "stuck",
}


def test_score_accounts_for_every_vehicle_and_the_ambulance_is_never_early() -> None:
    scenario = build("arterial:3", level=Level.HEAVY, duration_s=600.0, seed=4, ambulance_at_s=60.0)
    run = Run(scenario.net, scenario.trips)
    run.advance(scenario.duration_s)
    result = scoring.score(run, scenario=scenario.name, started_s=0.0)
    assert result.vehicles == scenario.trips.count
    assert result.arrived + result.in_network + result.not_departed == result.vehicles
    assert result.arrived > 0
    assert result.in_network > 0
    assert result.duration_s == 600.0
    assert result.throughput_vph == pytest.approx(result.arrived / 600.0 * 3600.0)
    assert len(result.approaches) == 3 * 4
    assert set(result.intersections) == {"a01", "a02", "a03"}
    assert sum(a.departures for a in result.approaches) == int(run.sim.stop_count.sum())
    (trip,) = result.emergency
    assert trip.vehicle == "AMB-1"
    assert trip.depart_s == 60.0
    # from the station south of a01 (200 m of cross street), then the arterial east of a01,
    # at 1.3 x 13.9 m/s
    road = scenario.net.road.network
    east_of_a01 = 7000.0 - road.intersection_by_id["a01"].x_m
    assert trip.free_flow_s == pytest.approx((200.0 + east_of_a01) / (13.9 * 1.3))
    assert trip.arrived_s is not None
    assert trip.travel_time_s is not None
    assert trip.travel_time_s >= trip.free_flow_s - 1e-6
    assert [line.intersection for line in trip.stop_lines] == ["a01", "a02", "a03", "east"]
    assert trip.stop_lines[0].link == "a01s-a01"
    for line in trip.stop_lines:
        assert line.delay_s >= -1e-6, line
    for before, after in zip(trip.stop_lines, trip.stop_lines[1:], strict=False):
        assert after.entered_s == before.left_s
    assert sum(line.delay_s for line in trip.stop_lines) == pytest.approx(
        trip.travel_time_s - trip.free_flow_s, abs=1e-6
    )
    # the ambulance's trajectory was recorded every step while it drove
    track = run.trajectories["AMB-1"]
    assert track.times[0] == pytest.approx(61.0)
    assert np.all(np.diff(track.times) == 1.0)


def test_score_of_a_free_run_has_no_delay_but_its_drivers_dawdling() -> None:
    """Delay is counted against the limit (as SUMO's time loss is): what a driver dawdles
    is in it."""
    net = compile_network(grid(1, 1))
    run = Run(net, vehicles(net, ["bW0-g0_0", "g0_0-bE0"], [0.0, 30.0, 60.0]))
    run.sim.set_override(0, all_groups_mask(net, 0))
    run.advance(120.0)
    result = scoring.score(run, scenario="free", started_s=0.0)
    assert result.arrived == 3
    assert result.mean_travel_time_s == pytest.approx(300.0 / (13.9 - DAWDLE_MPS))
    assert result.mean_delay_s == pytest.approx(300.0 / (13.9 - DAWDLE_MPS) - 300.0 / 13.9)
    assert result.mean_stops == 0.0


def test_a_blocked_run_says_who_is_waiting_stuck_and_that_nothing_arrived() -> None:
    # 100 cars at once onto a 60-car link whose signal stays red: its two through lanes
    # hold 40 of them (the third lane is for the left turn)
    net = compile_network(grid(1, 1))
    route = ["bW0-g0_0", "g0_0-bE0"]
    assert net.link_storage[net.link_index[route[0]]] == 60
    through = net.movement_between(net.link_index[route[0]], net.link_index[route[1]])
    assert net.qu_storage[net.mv_queue[through]] == 40
    run = Run(net, vehicles(net, route, [0.0] * 100))
    run.sim.set_override(0, 0)
    run.advance(200.0)
    early = scoring.score(run, scenario="red", started_s=0.0)
    assert (early.in_network, early.waiting_to_enter, early.not_departed) == (40, 60, 60)
    assert early.stuck == 0  # about 190 s of delay so far
    run.advance(200.0)
    late = scoring.score(run, scenario="red", started_s=0.0)
    assert (late.arrived, late.in_network, late.waiting_to_enter, late.stuck) == (0, 40, 60, 40)
    text = "\n".join(late.lines())
    assert "100 vehicles, 0 arrived, 40 still in the network, 60 not departed" in text
    assert "60 due but not let in" in text
    assert "40 stuck" in text
    assert "no vehicle arrived" in text
    assert "mean travel time" not in text


def test_lines_of_a_run_with_arrivals_give_the_means_and_the_ambulance() -> None:
    net = compile_network(arterial(1))
    trips = Trips.concat(
        [
            vehicles(net, ["west-a01", "a01-east"], [0.0, 5.0]),
            fixed_route(net, ["west-a01", "a01-east"], depart_s=0.0, name="AMB-1"),
        ]
    )
    run = Run(net, trips)
    run.advance(600.0)
    result = scoring.score(run, scenario="few", started_s=0.0)
    assert result.arrived == 3
    assert (result.waiting_to_enter, result.stuck) == (0, 0)
    text = "\n".join(result.lines())
    assert f"mean travel time {result.mean_travel_time_s:.1f} s" in text
    assert "no vehicle arrived" not in text
    assert "stuck" not in text
    assert "AMB-1: " in text


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_cli_sim_run_writes_the_summary_and_csv_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "sim",
            "run",
            "--network",
            "arterial:3",
            "--duration",
            "300",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "arterial-3-moderate" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["scenario"] == "arterial-3-moderate"
    assert summary["duration_s"] == 300.0
    assert summary["vehicles"] > 0
    assert (
        summary["arrived"] + summary["in_network"] + summary["not_departed"] == summary["vehicles"]
    )
    assert summary["emergency"] == []
    vehicles_csv = _rows(out / "vehicles.csv")
    approaches_csv = _rows(out / "approaches.csv")
    queues_csv = _rows(out / "queues.csv")
    assert vehicles_csv[0][:3] == ["vehicle", "depart_s", "arrived_s"]
    assert len(vehicles_csv) == 1 + summary["arrived"]
    assert approaches_csv[0] == [
        "approach",
        "intersection",
        "departures",
        "mean_delay_s",
        "max_queue_veh",
    ]
    assert len(approaches_csv) == 1 + 3 * 4
    assert queues_csv[0][0] == "time_s"
    assert len(queues_csv[0]) == 1 + 3 * 4
    # a queue sample every 60 s from 0 s: 0, 60, 120, 180, 240
    assert [row[0] for row in queues_csv[1:]] == ["0", "60", "120", "180", "240"]
    assert sorted(p.name for p in out.iterdir()) == [
        "approaches.csv",
        "queues.csv",
        "summary.json",
        "vehicles.csv",
    ]


def test_cli_sim_run_with_an_unknown_network_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "nope" is not a file here either
    assert main(["sim", "run", "--network", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err
    assert "arterial" in err
    assert "grid" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [["sim", "run"], ["sim", "serve"], ["evaluate", "--network", "arterial"], ["demo"]],
)
def test_an_unknown_engine_is_refused_naming_the_choices(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--engine", "sumo-micro"])
    assert exited.value.code == 2
    assert "invalid choice: 'sumo-micro' (choose from ours, sumo)" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["grid:2x2", "arterial:2"])
def test_cli_sim_network_writes_a_loadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    path = tmp_path / "net.json"
    assert main(["sim", "network", spec, str(path)]) == 0
    loaded = netfile.load(path)
    expected = grid(2, 2) if spec.startswith("grid") else arterial(2)
    assert loaded == expected
    assert f"{len(expected.network.links)} links" in capsys.readouterr().out
    # and the file runs as a network
    assert (
        main(
            [
                "sim",
                "run",
                "--network",
                str(path),
                "--duration",
                "60",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )


def test_score_with_an_ambulance_and_no_other_traffic() -> None:
    net = compile_network(arterial(1))
    empty = random_trips(net, seed=1, duration_s=1.0, vehicles_per_hour=0.0)
    amb = fixed_route(net, ["west-a01", "a01-east"], depart_s=0.0, name="AMB-1")
    trips = Trips.concat([empty, amb])
    assert trips.count == 1
    run = Run(net, trips)
    run.advance(30.0)
    result = scoring.score(run, scenario="amb", started_s=0.0)
    assert result.vehicles == 1
    assert run.sim.state[0] == kernels.DRIVING


def test_cli_short_run_with_only_an_ambulance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # light demand on arterial:1 is 920 veh/h: 0.26 expected vehicles in 1 s, none for seed 1
    args = ["sim", "run", "--network", "arterial:1", "--demand", "light", "--duration", "1"]
    args += ["--seed", "1", "--ambulance-at", "0", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no vehicle arrived: no travel time, delay or stops to report" in out
    assert "mean travel time" not in out
    assert "AMB-1: not arrived" in out
