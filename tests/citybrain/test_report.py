"""What ``citybrain demo`` says besides its tables: progress, verdicts, the live difference."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from citybrain import demo, live, report
from citybrain.report import Progress, SeedRun, Stage


def _policy(travel: float, stops: float, others: float, recovery: float) -> dict[str, Any]:
    return {
        "travel_time_s": travel, "ratio_to_free_flow": travel / 380.0, "stops": stops,
        "other_vehicles_extra_delay_s": others, "recovery_s": recovery,
    }  # fmt: skip


ARTERIAL: dict[str, Any] = {
    "scenario": "arterial-saturated",
    "seeds": 3,
    "intersections": 21,
    "ambulance": {"free_flow_s": 378.8},
    "policies": {
        "no_priority": _policy(597.6, 10.3, 0.0, 0.0),
        "local_preemption": _policy(480.9, 8.7, 18470.0, 8.6),
        "corridor": _policy(386.2, 0.7, 12848.0, 10.3),
    },
    "impact": {
        "time_saved_s": {"estimated": 209.0, "measured": 215.0},
        "cross_delay_veh_s": {"estimated": 15700.0, "measured": 9045.0},
        "recovery_s": 362.0,
        "recovered_seeds": 1,
    },
}


def _vehicle(travel: float, stops: float, at_crossing: float, stops_there: float) -> dict[str, Any]:
    return {
        "travel_time_s": travel, "ratio_to_free_flow": travel / 116.2, "stops": stops,
        "delay_at_crossing_s": at_crossing, "stops_at_crossing": stops_there,
    }  # fmt: skip


def _grid_policy(amb1: dict[str, Any], amb2: dict[str, Any], others: float) -> dict[str, Any]:
    return {
        "AMB-1": amb1, "AMB-2": amb2, "other_vehicles_extra_delay_s": others,
        "both_through_crossing_without_stopping": 0.0, "recovery_s": 5.0, "plans_sent": 10.0,
        "plans_refused": 0.0,
    }  # fmt: skip


GRID: dict[str, Any] = {
    "scenario": "grid:10x10-heavy",
    "seeds": 3,
    "intersections": 19,
    "crossing": "g4_5",
    "ambulances": {
        name: {"free_flow_s": 116.2, "depart_s": 1500.0, "route": ["a", "b"]}
        for name in ("AMB-1", "AMB-2")
    },
    "policies": {
        "no_priority": _grid_policy(
            _vehicle(179.7, 5.0, 0.1, 0.0), _vehicle(667.2, 7.3, 82.1, 1.0), 0.0
        ),
        "local_preemption": _grid_policy(
            _vehicle(180.0, 4.7, 11.4, 0.3), _vehicle(400.8, 8.7, 24.3, 1.0), -4316.0
        ),
        "corridor": _grid_policy(
            _vehicle(167.9, 5.0, 9.8, 0.7), _vehicle(144.0, 2.7, 4.7, 0.7), 13864.0
        ),
    },
}


def test_progress_numbers_stages_and_runs_and_estimates_what_is_left() -> None:
    lines: list[str] = []
    now = [100.0]
    stages = [Stage("arterial", 3, "3 runs"), Stage("live system", 0, "about 2 min")]
    progress = Progress(stages, lines.append, clock=lambda: now[0])
    progress.plan("citybrain demo")
    progress.begin("arterial")
    progress.step("seed 1, no_priority")
    now[0] += 4.0
    progress.step("seed 1, local_preemption")
    progress.begin("live system")
    progress.note("21 edge agents reporting to the cloud")
    assert lines == [
        "citybrain demo: 2 stages: 1. arterial (3 runs); 2. live system (about 2 min)",
        "[1/2 arterial] run 1 of 3: seed 1, no_priority",
        "[1/2 arterial] run 2 of 3: seed 1, local_preemption, about 8 s left",
        "[2/2 live system] 21 edge agents reporting to the cloud",
    ]


def test_the_arterial_verdict_says_by_how_much_it_wins_at_what_cost_and_where_it_loses() -> None:
    line = report.arterial_verdict(ARTERIAL)
    assert "\n" not in line
    assert line.startswith("  verdict: the corridor is fastest (the ambulance 386 s: -35 % / -20 %")
    assert "at +12,848 veh-s to other traffic" in line
    # recovery is compared with local preemption only: no priority never leaves its plan
    assert line.endswith("it loses on recovery 10.3 s (local preemption: 8.6 s)")
    assert line in demo.render(ARTERIAL)


def test_the_clouds_impact_estimate_is_set_against_the_runs_with_how_far_off_it_is() -> None:
    lines = report.impact_lines(ARTERIAL["impact"])
    assert "time saved 209 s (runs 215 s, -3%)" in lines[0]
    assert "+15,700 veh-s (runs +9,045, +74%)" in lines[1]
    assert "back to their level 362 s after the ambulance (mean of the 1 seed " in lines[1]
    assert all(line in demo.render(ARTERIAL) for line in lines)
    unknown = copy.deepcopy(ARTERIAL["impact"])
    unknown["time_saved_s"]["estimated"] = None
    assert report.impact_lines(unknown) == [
        "  the cloud estimated no corridor's impact (none completed)"
    ]


def test_a_verdict_says_when_the_corridor_is_not_fastest_and_when_it_loses_on_nothing() -> None:
    slower = copy.deepcopy(ARTERIAL)
    slower["policies"]["corridor"].update(travel_time_s=500.0, recovery_s=8.0)
    line = report.arterial_verdict(slower)
    assert "the corridor is NOT fastest for the ambulance" in line
    assert line.endswith("it loses on no figure in this table")


def test_the_grid_verdict_names_the_crossing_where_the_corridor_loses() -> None:
    line = report.grid_verdict(GRID)
    assert "\n" not in line
    assert "fastest (AMB-1 168 s: -7 % / -7 %; AMB-2 144 s: -78 % / -64 %" in line
    assert "AMB-1's loss at g4_5 9.8 s (no priority: 0.1 s)" in line
    assert "AMB-1's stops at g4_5 0.7 (no priority: 0.0)" in line
    assert "cost to others +13,864 veh-s (local preemption: -4,316 veh-s)" in line
    assert "AMB-2's loss" not in line
    assert line in demo.render_grid(GRID)


LIVE: dict[str, Any] = {
    "broker": "mosquitto (TLS, passwords, ACL)", "database": "postgresql (embedded)",
    "edges": 21, "telemetry_messages": 2373, "telemetry_rows": 2373, "plans_sent": 306,
    "plans_acked": 306, "plan_latency_ms": {"p50": 34.1, "p99": 41.0}, "rejected_messages": 0,
    "telemetry_period_sim_s": 5.0, "takeover_lead_sim_s": 0.5,
    "ambulance": {
        "corridor": {"travel_time_s": 408.0, "stops": 3,
                     "delay_per_intersection_s": {"a05": 14.2, "a06": 5.0, "a11": 9.5, "a12": 0.2}},
        "no_priority": {"travel_time_s": 595.3, "stops": 10},
        "time_saved_s": 187.3,
    },
    "other_vehicles_extra_delay_s": 11903.5, "wall_s": 114.1,
}  # fmt: skip
IN_PROCESS = SeedRun(
    corridor_s=379.0,
    corridor_stops=0,
    no_priority_s=595.32,
    delay_per_intersection_s={"a05": 1.8, "a06": 5.0, "a11": 0.0, "a12": 0.0},
)


def test_the_live_difference_is_explained_from_the_runs_figures() -> None:
    lines = report.live_difference(LIVE, IN_PROCESS)
    assert lines[0] == (
        "  live against in-process, seed 1 (without a corridor 595.3 s in both: the same "
        "traffic): with its corridor 408.0 s and 3 stops live, 379.0 s and 0 stops in-process "
        "(+29.0 s live)"
    )
    assert lines[1] == (
        "    where: a05 +12.4 s, a11 +9.5 s (live minus in-process delay at the stop line)"
    )
    assert "every 5 simulated s" in lines[2]
    assert "take over 0.5 simulated s after" in lines[2]
    assert "p99 41 ms" in lines[2]
    rendered = demo.render_live(LIVE, IN_PROCESS)
    assert rendered.endswith("\n".join(lines))
    assert "3 stops; without: 595.3 s, 10 stops" in rendered
    # without a comparable in-process run (westbound, a peak, SUMO) nothing is set against it
    assert "live against in-process" not in demo.render_live(LIVE)


def test_the_live_difference_says_when_the_traffic_was_not_the_same() -> None:
    other = SeedRun(390.0, 1, 610.0, {})
    assert "not the same traffic" in report.live_difference(LIVE, other)[0]


@pytest.mark.parametrize(
    ("count", "text"), [(1, "1 stop"), (3, "3 stops"), (0, "0 stops"), (0.7, "0.7 stops")]
)
def test_plural(count: float, text: str) -> None:
    assert report.plural(count, "stop") == text


def test_the_access_lines_name_the_api_the_console_and_the_token_file(tmp_path: Path) -> None:
    token = tmp_path / "operators" / f"{live.OPERATOR}.token"
    assert live.access("http://127.0.0.1:8123", token) == [
        "cloud API: http://127.0.0.1:8123 (docs/api.md)",
        f"console: http://127.0.0.1:8123{live.CONSOLE_PATH} (sign in with the operator token "
        f"in {token})",
    ]


def test_the_live_stage_is_announced_with_its_usual_length() -> None:
    assert live.wall_s(live.LiveOptions()) == pytest.approx((60 + 30 + 480) / 5 + 30)
