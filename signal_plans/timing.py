"""Signal timing as immutable, self-checking values.

``IntersectionSignals`` is what a cabinet knows about its own signal groups: their clearance
timings and which of them conflict. ``TimingPlan`` is a fixed-time coordinated plan over them: a
sequence of phases (each a set of mutually compatible groups) with green splits and an offset.
A dual-ring NEMA plan is written here as the sequence of its concurrent phase pairs; a group that
is green in two consecutive phases stays green across the boundary (an overlap).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations

from citybrain.models.checks import check_id, check_number
from citybrain.models.errors import ValidationError

MIN_YELLOW_S = 3.0
MAX_YELLOW_S = 6.0
MIN_RED_CLEARANCE_S = 0.5
MAX_RED_CLEARANCE_S = 6.0
MIN_GREEN_FLOOR_S = 3.0
MIN_WALK_S = 4.0


@dataclass(frozen=True, slots=True)
class GroupTiming:
    """Clearance and minimum timings of one signal group (NEMA-style interval settings).

    Bounds follow ITE practice: yellow change 3-6 s, a red clearance (all-red) on every change,
    a minimum green that no command may cut, and a walk of at least 4 s when there is a crossing.
    """

    min_green_s: float
    yellow_s: float
    red_clearance_s: float
    walk_s: float = 0.0
    ped_clearance_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("min_green_s", self.min_green_s, ge=MIN_GREEN_FLOOR_S, le=120.0)
        check_number("yellow_s", self.yellow_s, ge=MIN_YELLOW_S, le=MAX_YELLOW_S)
        check_number(
            "red_clearance_s", self.red_clearance_s, ge=MIN_RED_CLEARANCE_S, le=MAX_RED_CLEARANCE_S
        )
        check_number("walk_s", self.walk_s, ge=0.0, le=60.0)
        check_number("ped_clearance_s", self.ped_clearance_s, ge=0.0, le=90.0)
        if 0.0 < self.walk_s < MIN_WALK_S:
            raise ValidationError(
                "walk_s", f"a walk lasts at least {MIN_WALK_S} s, got {self.walk_s}"
            )
        if self.walk_s > 0.0 and self.ped_clearance_s == 0.0:
            raise ValidationError(
                "ped_clearance_s", "a crossing with a walk needs a clearance time"
            )

    @property
    def has_crossing(self) -> bool:
        return self.walk_s > 0.0

    @property
    def clearance_s(self) -> float:
        """Yellow plus red clearance: how long after its green ends a conflicting group waits."""
        return self.yellow_s + self.red_clearance_s

    @property
    def shortest_normal_green_s(self) -> float:
        """Shortest green that serves the group and, when it has one, its crossing in full."""
        return max(self.min_green_s, self.walk_s + self.ped_clearance_s)


@dataclass(frozen=True)
class IntersectionSignals:
    """The signal groups of one intersection, their timings and their conflicts."""

    intersection_id: str
    timings: Mapping[str, GroupTiming]
    conflict_pairs: frozenset[frozenset[str]]

    def __post_init__(self) -> None:
        check_id("intersection_id", self.intersection_id)
        if not self.timings:
            raise ValidationError("timings", "an intersection needs at least one signal group")
        for group in self.timings:
            check_id("timings", group)
        for pair in self.conflict_pairs:
            if len(pair) != 2:
                raise ValidationError("conflict_pairs", f"{sorted(pair)} is not a pair of groups")
            unknown = pair - self.timings.keys()
            if unknown:
                raise ValidationError("conflict_pairs", f"unknown signal groups {sorted(unknown)}")

    @classmethod
    def build(
        cls,
        intersection_id: str,
        timings: Mapping[str, GroupTiming],
        conflicts: Iterable[tuple[str, str]],
    ) -> IntersectionSignals:
        pairs = set()
        for a, b in conflicts:
            if a == b:
                raise ValidationError("conflict_pairs", f"group {a!r} cannot conflict with itself")
            pairs.add(frozenset((a, b)))
        return cls(intersection_id, dict(timings), frozenset(pairs))

    def at(self, intersection_id: str) -> IntersectionSignals:
        """The same groups, timings and conflicts at another intersection (a city's lights
        repeat a few layouts): only the new id needs checking, and what was worked out from
        them (``conflicts_of``, which does not depend on where) is shared, not redone."""
        check_id("intersection_id", intersection_id)
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__, intersection_id=intersection_id)
        return twin

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.timings)

    @cached_property
    def conflicts_of(self) -> Mapping[str, frozenset[str]]:
        """For each group, the groups that may never show green or yellow at the same time."""
        out: dict[str, set[str]] = {group: set() for group in self.timings}
        for pair in self.conflict_pairs:
            a, b = sorted(pair)
            out[a].add(b)
            out[b].add(a)
        return {group: frozenset(others) for group, others in out.items()}

    def conflict(self, a: str, b: str) -> bool:
        return b in self.conflicts_of[a]

    def first_conflict(self, groups: Iterable[str]) -> tuple[str, str] | None:
        """A conflicting pair within ``groups``, or ``None`` if they may all run together."""
        for a, b in combinations(sorted(groups), 2):
            if self.conflict(a, b):
                return a, b
        return None

    def require_known(self, field: str, groups: Iterable[str]) -> None:
        unknown = sorted(set(groups) - self.timings.keys())
        if unknown:
            raise ValidationError(
                field, f"unknown signal groups at {self.intersection_id}: {unknown}"
            )

    def intergreen_s(self, ending: Iterable[str]) -> float:
        """Time from the end of the ending groups' green to the next green start."""
        return max((self.timings[group].clearance_s for group in ending), default=0.0)


@dataclass(frozen=True, slots=True)
class Phase:
    id: str
    groups: frozenset[str]

    def __post_init__(self) -> None:
        check_id("phase.id", self.id)
        if not self.groups:
            raise ValidationError("phase.groups", f"phase {self.id!r} has no signal group")


@dataclass(frozen=True, slots=True)
class PhaseTemplate:
    """One phase of a plan's cycle, as its normal timeline uses it."""

    start_s: float
    """Where its green starts within the cycle."""
    green_s: float
    starting: tuple[str, ...]
    """Groups that turn green when it starts (not green in the phase before)."""
    stopping: tuple[tuple[str, float], ...]
    """Groups that stop when it ends (not green in the phase after), with their yellow."""
    intergreen_after_s: float


@dataclass(frozen=True)
class TimingPlan:
    """A fixed-time coordinated plan: phases in order, each with its green split, and an offset.

    Phase 0's green starts at every ``offset_s + k * cycle_s`` in controller time; between
    phases the groups that stop get their yellow and red clearance before new groups start.
    """

    plan_id: str
    signals: IntersectionSignals
    phases: tuple[Phase, ...]
    greens_s: tuple[float, ...]
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        check_id("plan_id", self.plan_id)
        if len(self.phases) < 2:
            raise ValidationError("phases", "a plan alternates between at least two phases")
        if len(self.greens_s) != len(self.phases):
            raise ValidationError("greens_s", "give one green split per phase")
        ids = [phase.id for phase in self.phases]
        if len(set(ids)) != len(ids):
            raise ValidationError("phases", "phase ids must be unique")
        for index, phase in enumerate(self.phases):
            self.signals.require_known(f"phases[{index}].groups", phase.groups)
            clash = self.signals.first_conflict(phase.groups)
            if clash is not None:
                raise ValidationError(
                    f"phases[{index}].groups",
                    f"phase {phase.id!r} runs conflicting groups {clash[0]!r} and {clash[1]!r}",
                )
            following = self.phases[(index + 1) % len(self.phases)]
            if following.groups == phase.groups:
                raise ValidationError(
                    "phases", f"phase {phase.id!r} is followed by an identical one"
                )
        served = frozenset().union(*(phase.groups for phase in self.phases))
        starved = sorted(self.signals.groups - served)
        if starved:
            raise ValidationError("phases", f"groups never served by the plan: {starved}")
        for index, green in enumerate(self.greens_s):
            check_number(f"greens_s[{index}]", green, gt=0.0, le=300.0)
            needed = self.shortest_green_s(index)
            if green < needed:
                raise ValidationError(
                    f"greens_s[{index}]",
                    f"phase {self.phases[index].id!r} needs at least {needed} s of green "
                    f"(minimum green / pedestrian walk and clearance), got {green}",
                )
        check_number("offset_s", self.offset_s, ge=0.0)
        if self.offset_s >= self.cycle_s:
            raise ValidationError("offset_s", f"must be below the cycle of {self.cycle_s} s")

    def at(self, intersection_id: str) -> TimingPlan:
        """This plan run at another intersection with the same signals: every check of a
        plan, and all it works out (its cycle), is about its groups, not where they are; so
        only the new id is checked (by ``IntersectionSignals.at``) and the rest is shared."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__, signals=self.signals.at(intersection_id))
        return twin

    def starting_groups(self, index: int) -> frozenset[str]:
        """Groups that turn green when phase ``index`` starts in the normal sequence."""
        before = self.phases[index - 1].groups
        return self.phases[index].groups - before

    def shortest_green_s(self, index: int) -> float:
        timings = self.signals.timings
        starting = self.starting_groups(index)
        return max((timings[g].shortest_normal_green_s for g in starting), default=0.0)

    def intergreen_after_s(self, index: int) -> float:
        """Clearance between phase ``index`` and the phase that follows it in sequence."""
        return self.cycle_template[index].intergreen_after_s

    @cached_property
    def cycle_template(self) -> tuple[PhaseTemplate, ...]:
        """Per phase, what the normal timeline needs of it, worked out once per plan: the
        controllers, the edge and the cloud replay this timeline for every plan they check."""
        timings = self.signals.timings
        count = len(self.phases)
        template = []
        start = 0.0
        for index, phase in enumerate(self.phases):
            following = self.phases[(index + 1) % count].groups
            stopping = phase.groups - following
            template.append(
                PhaseTemplate(
                    start_s=start,
                    green_s=self.greens_s[index],
                    starting=tuple(sorted(self.starting_groups(index))),
                    stopping=tuple((g, timings[g].yellow_s) for g in sorted(stopping)),
                    intergreen_after_s=self.signals.intergreen_s(stopping),
                )
            )
            start = start + self.greens_s[index] + template[-1].intergreen_after_s
        return tuple(template)

    @cached_property
    def cycle_s(self) -> float:
        return sum(green + self.intergreen_after_s(i) for i, green in enumerate(self.greens_s))

    @cached_property
    def phase_starts_s(self) -> tuple[float, ...]:
        """Where each phase's green starts within the cycle."""
        return tuple(phase.start_s for phase in self.cycle_template)

    def phases_serving(self, group: str) -> tuple[int, ...]:
        return tuple(i for i, phase in enumerate(self.phases) if group in phase.groups)

    def window_groups(self, group: str) -> frozenset[str] | None:
        """What a green window for ``group`` shows: the phase serving it with the longest
        green (the first on a tie); None for a group no phase serves."""
        return self._window_phases.get(group)

    @cached_property
    def _window_phases(self) -> Mapping[str, frozenset[str]]:
        """``window_groups`` of every group a phase serves, worked out once per plan: the
        corridor manager asks it of every pair of windows it fits at an intersection."""
        served = {group for phase in self.phases for group in phase.groups}
        return {
            group: self.phases[
                max(self.phases_serving(group), key=lambda i: (self.greens_s[i], -i))
            ].groups
            for group in served
        }

    def served_together(self, group: str, other: str) -> bool:
        """Whether windows of the two groups show the same phase, so that windows of both
        that overlap are one green (two vehicles on opposing throughs): served in turn, the
        second waited for the first's window to close."""
        shown = self.window_groups(group)
        return shown is not None and shown == self.window_groups(other)
