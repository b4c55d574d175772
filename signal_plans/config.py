"""A cabinet's configuration and displays on the wire, and back into the timing values.

An edge reads its cabinet's configuration at start (like NTCIP 1202 timing data): the signal
groups with their timings and conflicts, the normal ``TimingPlan``, and per approach what a queue
estimator needs. The wire Structs only carry it; ``from_wire`` rebuilds the validated
``IntersectionSignals`` / ``TimingPlan``, so a cabinet configured against the safety rules is
refused the same way as a bad plan. ``to_wire`` then ``from_wire`` gives an equal plan.

``state_from_reading`` / ``reading_from_state`` convert between a cabinet's ``SignalReading``
and a ``ControllerState`` (the validator's and planner's view), which ``models`` cannot do itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from citybrain.models.checks import check_unique
from citybrain.models.errors import ValidationError
from citybrain.models.fieldbus import MAX_APPROACHES, MAX_GROUPS, ApproachConfig, SignalReading
from citybrain.signal_plans.state import NEVER, ControllerState, GroupState
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan

MAX_PHASES = 64
CYCLE_TOLERANCE_S = 1e-6


class GroupTimingConfig(msgspec.Struct, frozen=True, kw_only=True):
    group: str
    min_green_s: float
    yellow_s: float
    red_clearance_s: float
    walk_s: float = 0.0
    ped_clearance_s: float = 0.0


class PhaseConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    groups: tuple[str, ...]


class TimingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """An intersection's signal groups and its normal plan. ``cycle_s`` is derived, sent so a
    reader that computes a different cycle (other intergreen rules) refuses the plan instead
    of running out of step with the cabinet."""

    intersection: str
    plan_id: str
    groups: tuple[GroupTimingConfig, ...]
    conflicts: tuple[tuple[str, str], ...]
    phases: tuple[PhaseConfig, ...]
    greens_s: tuple[float, ...]
    offset_s: float
    cycle_s: float

    def __post_init__(self) -> None:
        # Bounds only, so a hostile document cannot cost much; from_wire checks the rest.
        if len(self.groups) > MAX_GROUPS:
            raise ValidationError("groups", f"at most {MAX_GROUPS}")
        if len(self.conflicts) > MAX_GROUPS * (MAX_GROUPS - 1) // 2:
            raise ValidationError("conflicts", "more pairs than groups allow")
        if len(self.phases) > MAX_PHASES:
            raise ValidationError("phases", f"at most {MAX_PHASES}")
        for index, phase in enumerate(self.phases):
            if len(phase.groups) > MAX_GROUPS:
                raise ValidationError(f"phases[{index}].groups", f"at most {MAX_GROUPS}")


class CabinetConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The result of the field bus ``config`` op."""

    plan: TimingConfig
    approaches: tuple[ApproachConfig, ...]

    def __post_init__(self) -> None:
        if len(self.approaches) > MAX_APPROACHES:
            raise ValidationError("approaches", f"at most {MAX_APPROACHES}")


def to_wire(plan: TimingPlan) -> TimingConfig:
    signals = plan.signals
    return TimingConfig(
        intersection=signals.intersection_id,
        plan_id=plan.plan_id,
        groups=tuple(
            GroupTimingConfig(
                group=group,
                min_green_s=t.min_green_s,
                yellow_s=t.yellow_s,
                red_clearance_s=t.red_clearance_s,
                walk_s=t.walk_s,
                ped_clearance_s=t.ped_clearance_s,
            )
            for group, t in sorted(signals.timings.items())
        ),
        conflicts=tuple(sorted((a, b) for a, b in map(sorted, signals.conflict_pairs))),
        phases=tuple(PhaseConfig(id=p.id, groups=tuple(sorted(p.groups))) for p in plan.phases),
        greens_s=plan.greens_s,
        offset_s=plan.offset_s,
        cycle_s=plan.cycle_s,
    )


def from_wire(config: TimingConfig) -> TimingPlan:
    """The validated plan, or ``ValidationError`` naming what the configuration gets wrong."""
    check_unique("groups", (g.group for g in config.groups))
    timings = {
        g.group: GroupTiming(
            min_green_s=g.min_green_s,
            yellow_s=g.yellow_s,
            red_clearance_s=g.red_clearance_s,
            walk_s=g.walk_s,
            ped_clearance_s=g.ped_clearance_s,
        )
        for g in config.groups
    }
    signals = IntersectionSignals.build(config.intersection, timings, config.conflicts)
    phases = []
    for index, phase in enumerate(config.phases):
        check_unique(f"phases[{index}].groups", phase.groups)
        phases.append(Phase(phase.id, frozenset(phase.groups)))
    plan = TimingPlan(config.plan_id, signals, tuple(phases), config.greens_s, config.offset_s)
    if not math.isclose(plan.cycle_s, config.cycle_s, rel_tol=0.0, abs_tol=CYCLE_TOLERANCE_S):
        raise ValidationError(
            "cycle_s", f"the cabinet reports {config.cycle_s} s, the plan makes {plan.cycle_s} s"
        )
    return plan


@dataclass(frozen=True)
class IntersectionConfig:
    """What an edge knows of its cabinet after reading it: the normal plan (with the signal
    groups) and the approaches, each served only by groups the plan knows."""

    plan: TimingPlan
    approaches: tuple[ApproachConfig, ...]

    def __post_init__(self) -> None:
        check_unique("approaches", (a.approach for a in self.approaches))
        for index, approach in enumerate(self.approaches):
            self.plan.signals.require_known(f"approaches[{index}].groups", approach.groups)

    @property
    def intersection(self) -> str:
        return self.plan.signals.intersection_id

    @property
    def signals(self) -> IntersectionSignals:
        return self.plan.signals

    def to_wire(self) -> CabinetConfig:
        return CabinetConfig(plan=to_wire(self.plan), approaches=self.approaches)

    @classmethod
    def from_wire(cls, config: CabinetConfig) -> IntersectionConfig:
        return cls(from_wire(config.plan), config.approaches)


def state_from_reading(signals: IntersectionSignals, reading: SignalReading) -> ControllerState:
    """The controller state a reading shows; ``since`` None (red as long as the cabinet knows)
    becomes ``NEVER``. Raises ``ValidationError`` when the reading does not fit ``signals``."""
    groups = {}
    for group, indication in reading.groups.items():
        since = reading.since[group]
        groups[group] = GroupState(
            indication, NEVER if since is None else since, reading.walk_since.get(group)
        )
    return ControllerState(signals, reading.time, groups)


def reading_from_state(
    state: ControllerState, *, plan_id: str | None = None, mode: str = "normal"
) -> SignalReading:
    """What a cabinet in ``state`` reports (JSON cannot carry ``NEVER``, -inf: it is sent null)."""
    ordered = sorted(state.groups.items())
    return SignalReading(
        time=state.at_s,
        groups={group: s.indication for group, s in ordered},
        since={group: None if s.since_s == NEVER else s.since_s for group, s in ordered},
        walk_since={g: s.walk_since_s for g, s in ordered if s.walk_since_s is not None},
        plan_id=plan_id,
        mode=mode,
    )
