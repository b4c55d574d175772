"""A SUMO program as our groups, conflicts and plan: kept where it is safe, refused where not."""

from __future__ import annotations

import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator.sumo_programs import (
    OTHER_GROUP,
    ControlledMovement,
    JunctionLayout,
    SignalsCache,
    junction_signals,
)
from citybrain.simulator.sumo_xml import NetPhase, NetProgram


def _program(*phases: tuple[float, str], offset: float = 0.0, kind: str = "static") -> NetProgram:
    return NetProgram(
        "tls", "0", kind, offset, tuple(NetPhase(d, state, None, None) for d, state in phases)
    )


EW = ControlledMovement("ew", (0, 1))
NS = ControlledMovement("ns", (2, 3))
FOES = {frozenset(("ew", "ns"))}
TWO_PHASES = _program((30, "GGrr"), (3, "yyrr"), (30, "rrGG"), (3, "rryy"))


def test_a_two_phase_program_keeps_its_cycle_and_its_phase_starts() -> None:
    found = junction_signals("j", [EW, NS], FOES, TWO_PHASES)
    assert not found.generated
    assert found.groups == {"L0": frozenset({"ew"}), "L2": frozenset({"ns"})}
    plan = found.plan
    assert plan is not None
    assert [set(p.groups) for p in plan.phases] == [{"L0"}, {"L2"}]
    assert plan.signals.conflict("L0", "L2")
    assert plan.cycle_s == pytest.approx(66.0)
    # SUMO has no all-red: our 0.5 s comes out of the green, phase 1 still starts at 33 s
    assert plan.greens_s == pytest.approx((29.5, 29.5))
    assert plan.phase_starts_s == pytest.approx((0.0, 33.0))
    timing = plan.signals.timings["L0"]
    assert (timing.yellow_s, timing.red_clearance_s) == (3.0, 0.5)


def test_a_permitted_left_runs_with_the_opposing_through_and_a_protected_one_alone() -> None:
    through = ControlledMovement("through", (0,))
    left = ControlledMovement("left", (1,))
    opposing = ControlledMovement("opposing", (2,))
    cross = ControlledMovement("cross", (3,))
    foes = {
        frozenset(("left", "opposing")),
        *(frozenset((m, "cross")) for m in ("through", "left", "opposing")),
    }
    program = _program(
        (30, "GgGr"), (3, "ygyr"), (6, "rGrr"), (3, "ryrr"), (20, "rrrG"), (4, "rrry")
    )
    found = junction_signals("j", [through, left, opposing, cross], foes, program)
    plan = found.plan
    assert plan is not None
    assert not found.generated
    assert found.groups["L0"] == {"through", "opposing"}  # same colours throughout: one group
    assert not plan.signals.conflict("L0", "L1")  # SUMO shows them green together: permitted
    assert plan.signals.conflict("L0", "L3")
    assert plan.signals.conflict("L1", "L3")
    assert [set(p.groups) for p in plan.phases] == [{"L0", "L1"}, {"L1"}, {"L3"}]
    assert plan.cycle_s == pytest.approx(66.0)


def test_the_offset_is_sumo_s_seen_from_the_scenario_begin() -> None:
    program = _program((2, "rrrr"), (30, "GGrr"), (3, "yyrr"), (30, "rrGG"), (3, "rryy"))
    program = NetProgram("tls", "0", "static", 10.0, program.phases)
    plan = junction_signals("j", [EW, NS], FOES, program, begin_s=57_600.0).plan
    assert plan is not None
    # phase 0 (GGrr) starts 2 s into SUMO's program, which starts at SUMO time 10 + k * 68
    assert plan.offset_s == pytest.approx((10.0 + 2.0 - 57_600.0) % 68.0)


def test_an_all_red_start_counts_as_clearance() -> None:
    program = _program((1, "rrrr"), (30, "GGrr"), (3, "yyrr"), (30, "rrGG"), (3, "rryy"))
    plan = junction_signals("j", [EW, NS], FOES, program).plan
    assert plan is not None
    assert plan.signals.timings["L2"].red_clearance_s == 1.0
    assert plan.cycle_s == pytest.approx(67.0)


def test_amber_between_two_greens_is_kept_green() -> None:
    program = _program((42, "GGrr"), (3, "yyrr"), (42, "GrGG"), (3, "yryy"))
    found = junction_signals(
        "j", [ControlledMovement("a", (0,)), ControlledMovement("b", (1,)), NS], set(), program
    )
    assert found.plan is not None
    assert not found.generated
    assert all("L0" in phase.groups for phase in found.plan.phases)


def test_a_program_that_never_stops_a_car_gives_no_plan() -> None:
    found = junction_signals("j", [EW], set(), _program((30, "GGrr"), (3, "GGrr")))
    assert found.plan is None


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        (_program((2, "GGrr"), (3, "yyrr"), (30, "rrGG"), (3, "rryy")), "minimum"),
        (_program((30, "GGrr"), (3, "yyrr"), (20, "rrrr"), (30, "rrGG"), (3, "rryy")), "all-red"),
        (_program((30, "GGrr"), (30, "rrGG"), (3, "rryy")), "amber"),
        (_program((30, "GGr"), (3, "yyr"), (30, "rrG"), (3, "rry")), "links"),
    ],
    ids=["short-green", "long-all-red", "no-amber", "state-too-short"],
)
def test_an_unsafe_program_is_replaced_by_a_plan_that_respects_every_foe(
    program: NetProgram, reason: str
) -> None:
    found = junction_signals("j", [EW, NS], FOES, program)
    assert found.generated
    assert reason in found.refusal
    plan = found.plan
    assert plan is not None
    movement_of = {g: next(iter(m)) for g, m in found.groups.items()}
    for phase in plan.phases:
        members = [movement_of[g] for g in phase.groups]
        assert not any(frozenset((a, b)) in FOES for a in members for b in members if a != b)
    served = {movement_of[g] for phase in plan.phases for g in phase.groups}
    assert served == {"ew", "ns"}


def test_traffic_we_do_not_model_keeps_its_stage_as_a_group_without_movements() -> None:
    program = _program(
        (24, "rrGG"), (3, "rryy"), (24, "GGrr"), (3, "yyrr"), (24, "rrrr"), (3, "rrrr")
    )
    cars = ControlledMovement("cars", (2, 3))
    found = junction_signals("j", [cars], set(), program, other_links=(0, 1))
    assert found.plan is None  # the bicycles' stage and an all-red: nothing to keep
    found = junction_signals(
        "j",
        [cars],
        set(),
        _program((24, "rrGG"), (3, "rryy"), (24, "GGrr"), (3, "yyrr")),
        other_links=(0, 1),
    )
    assert found.plan is not None
    assert found.groups[OTHER_GROUP] == frozenset()
    assert found.plan.signals.conflict(OTHER_GROUP, "L2")


def test_junctions_sharing_a_program_and_layout_get_their_own_names() -> None:
    cache = SignalsCache()
    # requests 0-1 (ew) and 2-3 (ns) cross: each row marks the other movement's two requests
    layout = JunctionLayout((2, 2), (0, 1, 2, 3), (0, 1, 2, 3), (0b1100, 0b1100, 0b11, 0b11))
    first = cache.signals("j1", ["ew", "ns"], layout, TWO_PHASES)
    second = cache.signals("j2", ["ew2", "ns2"], layout, TWO_PHASES)
    assert first.groups == {"L0": frozenset({"ew"}), "L2": frozenset({"ns"})}
    assert second.groups == {"L0": frozenset({"ew2"}), "L2": frozenset({"ns2"})}
    assert first.plan == junction_signals("j1", [EW, NS], FOES, TWO_PHASES).plan
    other = [ControlledMovement("ew2", (0, 1)), ControlledMovement("ns2", (2, 3))]
    assert second.plan is not None
    assert second.plan.signals.intersection_id == "j2"
    assert (
        second.plan == junction_signals("j2", other, {frozenset(("ew2", "ns2"))}, TWO_PHASES).plan
    )
    assert second.plan.cycle_s == pytest.approx(66.0)
    with pytest.raises(ValidationError, match="intersection_id"):
        cache.signals("j 3", ["ew3", "ns3"], layout, TWO_PHASES)


def test_a_layout_s_foes_are_its_movements_with_requests_sumo_declares_foes() -> None:
    # request 2 is a crossing we do not import: its bits name no movement; link -1 is
    # another light's
    layout = JunctionLayout((1, 2, 1), (0, 1, -1, 2), (0, 1, -1, 3), (0b110, 0b1, 0b1, 0b100))
    assert layout.foes(["a", "b", "c"]) == {frozenset(("a", "b"))}
    assert layout.movements(["a", "b", "c"]) == [
        ControlledMovement("a", (0,)),
        ControlledMovement("b", (1,)),
        ControlledMovement("c", (2,)),
    ]
