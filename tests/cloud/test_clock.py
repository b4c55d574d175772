"""The cloud's controller clock: one message cannot move it, a quorum can (pure: the wall
clock is the test's)."""

from __future__ import annotations

import pytest

from citybrain.cloud.clock import ClockVerdict, ControllerClock
from citybrain.cloud.service import RecentEvents

FOLLOWED, DISAGREED, STEPPED = ClockVerdict.FOLLOWED, ClockVerdict.DISAGREED, ClockVerdict.STEPPED


class Wall:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _clock(rate: float = 1.0) -> tuple[ControllerClock, Wall]:
    wall = Wall()
    return ControllerClock(rate=rate, tolerance_s=5.0, vote_s=5.0, monotonic=wall), wall


def test_reports_within_the_tolerance_move_it_as_before() -> None:
    clock, wall = _clock()
    assert not clock.known
    assert clock.seen("a01", 1000.0) is FOLLOWED
    wall.t += 0.5
    assert clock.now() == pytest.approx(1000.5)
    assert clock.seen("a02", 1003.0) is FOLLOWED
    assert clock.now() == pytest.approx(1003.0)
    assert clock.seen("a01", 1001.0) is FOLLOWED  # behind, within the tolerance: kept newest
    assert clock.now() == pytest.approx(1003.0)
    wall.t += 10.0
    assert clock.now() == pytest.approx(1004.0), "held after hold_s"


@pytest.mark.security
def test_one_report_far_ahead_does_not_move_it() -> None:
    """Today one message with time 2,000,000,000 became the clock for good."""
    clock, wall = _clock()
    clock.seen("a01", 1000.0)
    assert clock.seen("a02", 2_000_000_000.0) is DISAGREED
    assert clock.seen("a02", 2_000_000_000.0) is DISAGREED, "one intersection is no quorum"
    assert clock.now() == pytest.approx(1000.0)
    wall.t += 0.5
    assert clock.seen("a01", 1000.5) is FOLLOWED


def test_two_intersections_agreeing_step_it_forward() -> None:
    """Every edge jumped (the clock held through an outage, a simulation sped up)."""
    clock, wall = _clock(rate=8.0)
    clock.seen("a01", 1000.0)
    assert clock.tolerance == 40.0, "the tolerance scales with the pace"
    assert clock.seen("a01", 1039.0) is FOLLOWED
    assert clock.seen("a02", 5000.0) is DISAGREED
    wall.t += 1.0
    assert clock.seen("a03", 5008.0) is STEPPED, "a02's vote, advanced 1 s at rate 8, agrees"
    assert clock.now() == pytest.approx(5008.0)


def test_votes_go_stale_and_a_report_within_the_tolerance_withdraws_its_own() -> None:
    clock, wall = _clock()
    clock.seen("a01", 1000.0)
    clock.seen("a02", 5000.0)
    wall.t += 6.0
    clock.seen("a01", 1006.0)
    assert clock.seen("a03", 5006.0) is DISAGREED, "a02's vote is older than vote_s"
    clock.seen("a03", 1006.0)
    assert clock.seen("a02", 5006.0) is DISAGREED, "a03 took its vote back"


def test_in_a_one_intersection_city_two_reports_in_a_row_step_it() -> None:
    clock, wall = _clock()
    clock.seen("solo", 1000.0)
    assert clock.seen("solo", 2_000_000_000.0) is DISAGREED
    wall.t += 0.5
    clock.seen("solo", 1000.5)  # the genuine edge in between: the forged vote is withdrawn
    assert clock.seen("solo", 2_000_000_000.0) is DISAGREED
    wall.t += 1.0
    assert clock.seen("solo", 5000.0) is DISAGREED
    wall.t += 1.0
    assert clock.seen("solo", 5001.0) is STEPPED


def test_edges_replaying_old_telemetry_do_not_pull_it_back_while_others_are_live() -> None:
    clock, wall = _clock()
    for step in range(3):
        wall.t += 1.0
        clock.seen("a01", 1000.0 + step)  # live
        assert clock.seen("a02", 900.0 + step) is DISAGREED  # replaying its buffer
        assert clock.seen("a03", 900.5 + step) is DISAGREED
    assert clock.now() == pytest.approx(1002.0)


@pytest.mark.security
def test_a_poisoned_first_report_is_corrected_once_nobody_confirms_it() -> None:
    clock, wall = _clock()
    clock.seen("a09", 2_000_000_000.0)  # the attacker spoke first
    steps = []
    for second in range(8):
        wall.t += 1.0
        steps.append(clock.seen("a01", 1000.0 + second))
        steps.append(clock.seen("a02", 1000.0 + second))
    assert STEPPED in steps
    assert clock.now() == pytest.approx(1007.0)


def test_recent_events_are_counted_over_the_window_only(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("citybrain.cloud.service.time.monotonic", lambda: now[0])
    recent = RecentEvents(60.0)
    for _ in range(5):
        recent.add()
    now[0] += 30.0
    recent.add()
    assert recent.count() == 6
    now[0] += 31.0
    assert recent.count() == 1
    now[0] += 30.0
    assert recent.count() == 0


@pytest.mark.security
def test_one_edge_box_speaking_for_two_intersections_cannot_step_it() -> None:
    """A box hosting a01 and a02 is one party: its two votes are no majority of four."""
    clock, wall = _clock()
    for node in ("a01", "a02", "a03", "a04"):
        clock.seen(node, 1000.0)
    assert clock.seen("a01", 2_000_000_000.0) is DISAGREED
    assert clock.seen("a02", 2_000_000_000.0) is DISAGREED
    assert clock.now() == pytest.approx(1000.0)
    wall.t += 1.0
    assert clock.seen("a03", 2_000_000_001.0) is STEPPED, "three of four are a majority"


def test_a_whole_city_jumping_at_once_steps_it_in_linear_time() -> None:
    clock, _ = _clock()
    nodes = [f"n{i}" for i in range(20_000)]
    for node in nodes:
        clock.seen(node, 1000.0)
    verdicts = [clock.seen(node, 90_000.0) for node in nodes]
    assert verdicts.count(STEPPED) == 1
    assert verdicts.index(STEPPED) == len(nodes) // 2
    assert clock.now() == pytest.approx(90_000.0)
