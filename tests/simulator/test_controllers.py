"""Emulated controllers through Run.command: accepted plans drive the engine, unsafe ones never do.

The arterial's first junction has offset 0 and the 100 s lead-lead cycle: main lefts (1, 5)
green 0-10, main throughs (2, 6) 15-54, side lefts (3, 7) 59.5-67.5, side throughs (4, 8)
72.5-94.5 (clearances 5 s after lefts, 5.5 s after throughs), every 100 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.messages import AckStatus, GreenWindow, IntervalStep, PlanKind, SignalPlan
from citybrain.signal_plans.validator import RejectCode, check_steps
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.engine import END_LAG_S, LOST_TIME_S
from citybrain.simulator.networks import arterial
from citybrain.simulator.runner import Run

from .simhelpers import groups_in, normal_masks, vehicles

NET = compile_network(arterial(1))
EAST = ["west-a01", "a01-east"]


def _run(departs: list[float] | None = None) -> Run:
    return Run(NET, vehicles(NET, EAST, departs if departs is not None else [5000.0]))


def _plan(run: Run, **changes: Any) -> SignalPlan:
    fields: dict[str, Any] = {
        "plan_id": "p1",
        "intersection": "a01",
        "seq": 1,
        "issued_at": run.now,
        "valid_from": run.now,
        "valid_until": run.now + 120.0,
    }
    fields.update(changes)
    return SignalPlan(**fields)


def _step(run: Run) -> set[str]:
    """Advance one step; the groups the engine let through during it."""
    run.advance(1.0)
    return groups_in(NET, 0, int(run.sim.allowed[0]))


def _normal(t: float) -> set[str]:
    return groups_in(NET, 0, int(normal_masks(NET, t, END_LAG_S)[0]))


def test_the_schedule_in_the_docstring_is_the_plan() -> None:
    assert _normal(5.0) == {"1", "5"}
    assert _normal(30.0) == {"2", "6"}
    assert _normal(55.0) == {"2", "6"}  # end lag into the yellow
    assert _normal(57.0) == set()
    assert _normal(62.0) == {"3", "7"}
    assert _normal(80.0) == {"4", "8"}
    assert _normal(180.0) == {"4", "8"}


def test_a_green_window_for_the_main_through_is_accepted_and_served() -> None:
    # five cars reach the stop line at 356-360 s (3566 m at 13.25 m/s, the limit less their
    # dawdling), just after the main through's green ended
    run = _run([87.0 + i for i in range(5)])
    with pytest.raises(ValidationError, match="seconds"):
        run.advance(1e12)  # a caller's slip: refused, not run for ever
    run.advance(365.0)
    assert run.sim.q_len[NET.mv_queue[NET.movement_index["a01:ET"]]] == 5
    window = GreenWindow(signal_group="2", open_at=375.0, close_at=390.0)
    outcome = run.command("a01", _plan(run, windows=(window,)))
    assert outcome.status is AckStatus.ACCEPTED
    assert outcome.verdict.accepted
    controller = run.controllers["a01"]
    assert controller.running is not None
    assert controller.last_order == (0, 1)
    shown: dict[float, set[str]] = {}
    while run.now < 400.0:
        t = run.now
        shown[t] = _step(run)
    for t in np.arange(375.0, 390.0):
        assert "2" in shown[t], t
        assert "2" not in _normal(t)  # the normal plan would have kept it red
    # never two conflicting groups at once
    for groups in shown.values():
        assert not (groups & {"1", "2", "5", "6"} and groups & {"3", "4", "7", "8"})
    # the queue left in the window: lost time, then one car a second on the two lanes
    leave = run.sim.hop_enter[run.trips.route_start + 1]
    np.testing.assert_allclose(leave, 375.0 + LOST_TIME_S + np.arange(5.0), atol=1e-9)
    # afterwards the controller finds its way back to the normal plan by itself
    run.advance(200.0)
    assert run.controllers["a01"].running is None
    assert run.sim.override[0] == -1
    assert not run._running
    t = run.now
    assert _step(run) == _normal(t)


def test_a_newer_window_replaces_a_running_plan_safely() -> None:
    run = _run()
    run.advance(365.0)
    first = _plan(run, windows=(GreenWindow(signal_group="2", open_at=375.0, close_at=390.0),))
    assert run.command("a01", first).status is AckStatus.ACCEPTED
    run.advance(12.0)  # the first plan has taken over and shows its window
    second = _plan(
        run, seq=2, windows=(GreenWindow(signal_group="4", open_at=395.0, close_at=410.0),)
    )
    outcome = run.command("a01", second)
    assert outcome.status is AckStatus.ACCEPTED, outcome.verdict
    controller = run.controllers["a01"]
    assert controller.running is not None
    assert check_steps(controller.running.start, controller.running.steps).accepted
    shown: dict[float, set[str]] = {}
    while run.now < 420.0:
        shown[run.now] = _step(run)
    for groups in shown.values():
        assert not (groups & {"1", "2", "5", "6"} and groups & {"3", "4", "7", "8"})
    assert any("4" in groups for t, groups in shown.items() if 395.0 <= t < 410.0)


CONFLICTING = (IntervalStep(at=40.0, green=("2", "4", "6")),)
CUT_YELLOW = (IntervalStep(at=40.0, yellow=("2", "6")), IntervalStep(at=42.0))
NO_YELLOW = (IntervalStep(at=40.0, green=()),)


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        (CONFLICTING, RejectCode.CONFLICTING_GREENS),
        (CUT_YELLOW, RejectCode.SHORT_YELLOW),
        (NO_YELLOW, RejectCode.NO_YELLOW),
        ((IntervalStep(at=40.0, green=("2", "6"), yellow=("9",)),), RejectCode.UNKNOWN_GROUP),
        ((IntervalStep(at=40.0, green=("2", "6", "3")),), RejectCode.CONFLICTING_GREENS),
    ],
)
def test_an_unsafe_step_plan_is_refused_and_the_normal_plan_runs_on(
    steps: tuple[IntervalStep, ...], code: RejectCode
) -> None:
    run = _run()
    run.advance(40.0)  # main throughs green since 15 s, walk and clearance done by 37 s
    outcome = run.command("a01", _plan(run, steps=steps))
    assert outcome.status is AckStatus.REJECTED
    assert outcome.verdict.code is code
    assert outcome.verdict.reason
    controller = run.controllers["a01"]
    assert controller.running is None
    assert controller.refused == 1
    assert controller.last_order is None  # a refused plan does not consume its seq
    for _ in range(120):
        t = run.now
        assert _step(run) == _normal(t)
        assert run.sim.override[0] == -1


def test_an_expired_plan_is_acked_expired() -> None:
    run = _run()
    run.advance(40.0)
    plan = _plan(
        run,
        issued_at=35.0,
        valid_from=35.0,
        valid_until=39.0,
        steps=(IntervalStep(at=35.0, green=("2", "6")),),
    )
    outcome = run.command("a01", plan)
    assert outcome.status is AckStatus.EXPIRED
    assert outcome.verdict.code is RejectCode.EXPIRED
    assert run.controllers["a01"].running is None


def test_a_plan_for_another_intersection_is_refused() -> None:
    run = _run()
    run.advance(40.0)
    plan = _plan(run, intersection="a02", steps=(IntervalStep(at=40.0, green=("2", "6")),))
    outcome = run.command("a01", plan)
    assert outcome.status is AckStatus.REJECTED
    assert outcome.verdict.code is RejectCode.WRONG_INTERSECTION
    assert run.controllers["a01"].running is None


def test_out_of_sequence_plans_are_refused() -> None:
    run = _run()
    run.advance(40.0)
    release = _plan(run, seq=7, kind=PlanKind.RELEASE)
    assert run.command("a01", release).status is AckStatus.RELEASED
    hold = (IntervalStep(at=40.0, green=("2", "6")),)
    for seq in (7, 6, 0):
        outcome = run.command("a01", _plan(run, seq=seq, steps=hold))
        assert outcome.status is AckStatus.REJECTED
        assert outcome.verdict.code is RejectCode.OUT_OF_SEQUENCE
    assert run.controllers["a01"].running is None
    assert run.command("a01", _plan(run, seq=8, steps=hold)).status is AckStatus.ACCEPTED


def test_a_command_for_an_unknown_intersection_raises() -> None:
    run = _run()
    plan = _plan(run, intersection="a09", steps=(IntervalStep(at=0.0, green=("1", "5")),))
    with pytest.raises(ValidationError, match="a09"):
        run.command("a09", plan)


def test_an_expiring_lease_returns_the_intersection_to_normal_by_itself() -> None:
    run = _run()
    run.advance(40.0)
    # the steps keep the throughs green past their normal end; after the last step the
    # controller holds its displays until the normal plan shows the same (115 s) ...
    keep = (IntervalStep(at=40.0, green=("2", "6")), IntervalStep(at=60.0, green=("2", "6")))
    hold = _plan(run, valid_until=80.0, steps=keep)
    assert run.command("a01", hold).status is AckStatus.ACCEPTED
    shown: dict[float, set[str]] = {}
    while run.now < 400.0:
        t = run.now
        shown[t] = _step(run)
    # ... but the lease runs out at 80 s: held green past the normal end (54 s + end lag)
    for t in np.arange(40.0, 80.0):
        assert shown[t] == {"2", "6"}, t
    assert _normal(70.0) != {"2", "6"}
    # then a yellow (crossing allowed for the end lag only) and the way back, on its own
    assert any("2" not in shown[t] for t in np.arange(80.0, 80.0 + 4.0 + END_LAG_S + 1.0))
    assert run.controllers["a01"].running is None
    assert run.sim.override[0] == -1
    for t in np.arange(150.0, 400.0):  # back on the normal timeline within about a cycle
        assert shown[t] == _normal(t), t


def test_the_normal_plan_runs_until_a_later_takeover() -> None:
    run = _run()
    run.advance(102.0)  # main lefts green (0-10 in the cycle)
    window = GreenWindow(signal_group="4", open_at=150.0, close_at=170.0)
    outcome = run.command("a01", _plan(run, windows=(window,)))
    assert outcome.status is AckStatus.ACCEPTED
    running = run.controllers["a01"].running
    assert running is not None
    takeover = running.start.at_s
    assert takeover > 140.0  # the planner follows the normal timeline until its cut
    while run.now < 140.0:
        t = run.now
        assert _step(run) == _normal(t), f"at {t} s"
