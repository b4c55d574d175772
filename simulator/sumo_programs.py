"""A SUMO traffic light's own program as our signal groups, conflicts and timing plan.

SUMO describes a traffic light as a state string per phase, one character per controlled
connection (link index): ``G``/``g`` go (``g`` yields to foes), ``y``/``Y`` amber, ``r``/``R``/
``s``/``u`` stop, ``o``/``O`` off (go, yielding). We keep what it says and never guess:

- **Signal groups**: the movements whose colour is the same in every phase of the program (a
  movement shows go when any of its connections does; a connection without a link index is
  uncontrolled, always go). A group is named by its lowest link index (``L3``).
- **Conflicts**: two groups conflict when SUMO's junction declares one of their connections a
  foe of the other's, unless the program itself shows them green together (a permitted
  movement that yields, SUMO's ``g``): those stay compatible, as SUMO runs them.
- **Timing**: each run of phases with the same go set is one of our phases; the phases between
  two runs (amber, all-red) are its intergreen. A stopping group's yellow is its amber time
  (3-6 s) and its red clearance the rest of the change (at least 0.5 s: SUMO's programs often
  have none, and then the 0.5 s comes out of the green before, so every phase still starts
  when SUMO starts it). Minimum greens are 5 s or the shortest green the program gives a
  starting group, if shorter (3 s at least). The cycle and the offset are SUMO's. A group
  that SUMO shows amber between two greens (netconvert does that) stays green across.

A program that cannot be written that way (a group amber and then green again, a green shorter
than 3 s, an all-red longer than 6 s, a state string too short for its links) is refused with
the reason, and the junction gets ``generated_plan``: one group per movement, every SUMO foe a
conflict, phases built greedily, fixed splits. Actuated and delay-based programs run as the
fixed-time program of their phases' ``duration``; the caller says so in its import report.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, combinations

from citybrain.models.errors import ValidationError
from citybrain.signal_plans.timing import (
    MAX_RED_CLEARANCE_S,
    MAX_YELLOW_S,
    MIN_GREEN_FLOOR_S,
    MIN_RED_CLEARANCE_S,
    MIN_YELLOW_S,
    GroupTiming,
    IntersectionSignals,
    Phase,
    TimingPlan,
)
from citybrain.simulator.sumo_xml import NetProgram

GO, AMBER, STOP = "go", "amber", "stop"
_COLOURS = {
    **dict.fromkeys("GgOo", GO),
    **dict.fromkeys("yY", AMBER),
    **dict.fromkeys("rRsu", STOP),
}
UNCONTROLLED_GROUP = "always"
"""Group of a signalized junction's movements that no link index controls (always go)."""
OTHER_GROUP = "others"
"""Group standing for the traffic we do not model (bicycles, trams) where it has its own stage."""
PLAN_ID = "sumo"
GENERATED_PLAN_ID = "generated"
DEFAULT_MIN_GREEN_S = 5.0
GENERATED_GREEN_S = 20.0
GENERATED_TIMING = GroupTiming(min_green_s=5.0, yellow_s=3.0, red_clearance_s=2.0)


@dataclass(frozen=True, slots=True)
class ControlledMovement:
    """One of our movements at a junction and the SUMO link indices of its connections."""

    movement: str
    link_indices: tuple[int, ...]
    """Empty when none of its connections is controlled by the traffic light."""


@dataclass(frozen=True)
class JunctionSignals:
    """What a junction runs: its groups (group id -> movement ids) and plan, or no plan when
    the program never stops any of its movements (imported unsignalized)."""

    groups: Mapping[str, frozenset[str]]
    plan: TimingPlan | None
    generated: bool = False
    refusal: str = ""
    """Why the program could not be kept (``generated`` plans only)."""


class ProgramRefusedError(ValueError):
    """The program cannot be represented safely; the message says why."""


@dataclass(frozen=True, slots=True)
class _Change:
    """The phases between two runs of go: their total time and each group's colours."""

    duration_s: float
    colours: tuple[tuple[float, Mapping[str, str]], ...]


def junction_signals(
    node: str,
    movements: Sequence[ControlledMovement],
    foes: Collection[frozenset[str]],
    program: NetProgram,
    *,
    other_links: tuple[int, ...] = (),
    begin_s: float = 0.0,
) -> JunctionSignals:
    """Our groups and plan for ``node`` from ``program``; ``foes`` are pairs of movement ids
    SUMO declares foes; ``other_links`` are the link indices at the junction of traffic we do
    not model (bicycles, trams, crossings): when the program gives them a stage of their own,
    they become a group without movements (``OTHER_GROUP``) that conflicts with every group
    the program never shows green with it. ``begin_s`` is the SUMO time our time 0 stands for."""
    try:
        groups, colours = _groups(movements, program)
        others = _other_group(colours, program, other_links)
        if others is not None:
            for phase, colour in zip(colours, others, strict=True):
                phase[OTHER_GROUP] = colour
            groups[OTHER_GROUP] = frozenset()
        conflicts = _conflicts(groups, colours, foes)
        plan = _plan(node, groups, colours, conflicts, program, begin_s)
    except ProgramRefusedError as refusal:
        return generated_plan(node, movements, foes, refusal=str(refusal))
    return JunctionSignals(groups, plan)


@dataclass(frozen=True, slots=True)
class JunctionLayout:
    """A junction's connections as SUMO numbers them, movement after movement: how many
    each movement has, each one's link index under the traffic light (negative: none, or
    another light's) and request index at the junction (negative: none), and the junction's
    foe rows (row ``i`` has bit ``j`` set when requests ``i`` and ``j`` are foes). With the
    program, it decides the groups, conflicts and plan up to the movements' names."""

    sizes: tuple[int, ...]
    link_indices: tuple[int, ...]
    requests: tuple[int, ...]
    foe_rows: tuple[int, ...]

    def _spans(self) -> list[tuple[int, int]]:
        """Where each movement's connections start and end."""
        ends = list(accumulate(self.sizes))
        return list(zip([0, *ends][:-1], ends, strict=True))

    def movements(self, movement_ids: Sequence[str]) -> list[ControlledMovement]:
        """The movements (named in order) with the link indices of their connections."""
        return [
            ControlledMovement(
                movement, tuple(sorted({i for i in self.link_indices[a:b] if i >= 0}))
            )
            for movement, (a, b) in zip(movement_ids, self._spans(), strict=True)
        ]

    def foes(self, movement_ids: Sequence[str]) -> set[frozenset[str]]:
        """Pairs of the movements (named in order) with connections SUMO declares foes."""
        movement_at = {
            request: movement
            for movement, (a, b) in zip(movement_ids, self._spans(), strict=True)
            for request in self.requests[a:b]
            if request >= 0
        }
        rows = self.foe_rows
        pairs = set()
        for index, movement in movement_at.items():
            for bit in bit_positions(rows[index] if index < len(rows) else 0):
                other = movement_at.get(bit)
                if other is not None and other != movement:
                    pairs.add(frozenset((movement, other)))
        return pairs


def bit_positions(mask: int) -> list[int]:
    """The positions of the bits set in ``mask`` (a SUMO foe row)."""
    out = []
    while mask:
        bit = mask & -mask
        out.append(bit.bit_length() - 1)
        mask ^= bit
    return out


@dataclass(frozen=True, slots=True)
class _Pattern:
    """``junction_signals`` for placeholder movements, and which of them each group holds."""

    found: JunctionSignals
    members: tuple[tuple[str, tuple[int, ...]], ...]


class SignalsCache:
    """``junction_signals`` for many junctions that share a program and a layout (a city's
    lights are mostly a few netconvert patterns): worked out once per pattern, then renamed.
    The key is what decides the result, the foes as SUMO numbers them, so the foes of a
    junction are only worked out when its pattern is new."""

    def __init__(self) -> None:
        self._found: dict[tuple[object, ...], _Pattern] = {}

    def signals(
        self,
        node: str,
        movement_ids: Sequence[str],
        layout: JunctionLayout,
        program: NetProgram,
        *,
        other_links: tuple[int, ...] = (),
        begin_s: float = 0.0,
    ) -> JunctionSignals:
        if len(movement_ids) != len(layout.sizes):
            raise ValueError("give one movement id per movement of the layout")
        key = (
            layout,
            program.type,
            program.offset_s,
            program.phases,
            other_links,
            begin_s,
        )
        pattern = self._found.get(key)
        if pattern is None:
            names = [f"m{i}" for i in range(len(movement_ids))]
            found = junction_signals(
                "x",
                layout.movements(names),
                layout.foes(names),
                program,
                other_links=other_links,
                begin_s=begin_s,
            )
            position = {name: i for i, name in enumerate(names)}
            members = tuple(
                (group, tuple(sorted(position[m] for m in ids)))
                for group, ids in found.groups.items()
            )
            pattern = self._found[key] = _Pattern(found, members)
        found = pattern.found
        groups = {
            group: frozenset([movement_ids[i] for i in positions])
            for group, positions in pattern.members
        }
        plan = None if found.plan is None else found.plan.at(node)
        return JunctionSignals(groups, plan, found.generated, found.refusal)


def _colour(state: str, indices: Sequence[int]) -> str:
    if not indices:
        return GO
    seen = {_COLOURS.get(state[i], STOP) for i in indices}
    return GO if GO in seen else AMBER if AMBER in seen else STOP


def _groups(
    movements: Sequence[ControlledMovement], program: NetProgram
) -> tuple[dict[str, frozenset[str]], list[dict[str, str]]]:
    """Movements with the same colour in every phase, and each group's colour per phase."""
    for index, phase in enumerate(program.phases):
        bad = set(phase.state) - _COLOURS.keys()
        if bad:
            raise ProgramRefusedError(f"phase {index} shows unknown signal states {sorted(bad)}")
        for movement in movements:
            if any(i >= len(phase.state) for i in movement.link_indices):
                raise ProgramRefusedError(
                    f"phase {index}'s state has {len(phase.state)} links, movement "
                    f"{movement.movement!r} uses link {max(movement.link_indices)}"
                )
    by_signature: dict[tuple[str, ...], list[ControlledMovement]] = {}
    for movement in movements:
        signature = tuple(_colour(p.state, movement.link_indices) for p in program.phases)
        by_signature.setdefault(signature, []).append(movement)
    groups: dict[str, frozenset[str]] = {}
    signatures: dict[str, tuple[str, ...]] = {}
    for signature, members in by_signature.items():
        indices = [i for m in members for i in m.link_indices]
        name = f"L{min(indices)}" if indices else UNCONTROLLED_GROUP
        groups[name] = frozenset(m.movement for m in members)
        signatures[name] = signature
    colours = [
        {group: signature[index] for group, signature in signatures.items()}
        for index in range(len(program.phases))
    ]
    return groups, colours


def _other_group(
    colours: Sequence[Mapping[str, str]], program: NetProgram, links: tuple[int, ...]
) -> tuple[str, ...] | None:
    """The colours of the traffic we do not model, if some phase stops every car for it."""
    shown = tuple(_colour(phase.state, links) for phase in program.phases) if links else ()
    for index, phase in enumerate(colours):
        if shown and shown[index] == GO and GO not in phase.values():
            return shown
    return None


def _conflicts(
    groups: Mapping[str, frozenset[str]],
    colours: Sequence[Mapping[str, str]],
    foes: Collection[frozenset[str]],
) -> list[tuple[str, str]]:
    """Groups with foe movements that the program never shows green together."""
    out = []
    for a, b in combinations(sorted(groups), 2):
        unknown = OTHER_GROUP in (a, b)  # SUMO's foes for it are not imported: assume all
        if not unknown and not any(frozenset((x, y)) in foes for x in groups[a] for y in groups[b]):
            continue
        if not any(phase[a] == GO and phase[b] == GO for phase in colours):
            out.append((a, b))
    return out


def _stages(
    colours: Sequence[Mapping[str, str]], durations: Sequence[float]
) -> tuple[float, list[tuple[frozenset[str], float, _Change]]]:
    """The program as (go set, green time, change to the next) from its first run of go, and
    the program time at which that run starts."""
    count = len(colours)
    go = [frozenset(g for g, c in phase.items() if c == GO) for phase in colours]
    steady = [bool(go[i]) and AMBER not in colours[i].values() for i in range(count)]
    starts = [i for i in range(count) if steady[i] and not (steady[i - 1] and go[i - 1] == go[i])]
    if not starts:
        return 0.0, []
    order = [(starts[0] + k) % count for k in range(count)]
    stages: list[tuple[frozenset[str], float, _Change]] = []
    position = 0
    while position < count:
        index = order[position]
        green = 0.0
        while position < count and steady[order[position]] and go[order[position]] == go[index]:
            green += durations[order[position]]
            position += 1
        between = []
        while position < count and not steady[order[position]]:
            between.append((durations[order[position]], colours[order[position]]))
            position += 1
        change = _Change(sum(d for d, _ in between), tuple(between))
        stages.append((go[index], green, change))
    return sum(durations[: starts[0]]), stages


def _plan(
    node: str,
    groups: Mapping[str, frozenset[str]],
    colours: Sequence[Mapping[str, str]],
    conflicts: Sequence[tuple[str, str]],
    program: NetProgram,
    begin_s: float,
) -> TimingPlan | None:
    durations = [phase.duration_s for phase in program.phases]
    start, stages = _stages(colours, durations)
    if len({go for go, _, _ in stages}) < 2:
        return None
    yellows: dict[str, float] = {}
    reds: dict[str, float] = {}
    for k, (go, _, change) in enumerate(stages):
        following = stages[(k + 1) % len(stages)][0]
        for group in groups:
            amber = _amber_time(group, go, following, change, k)
            if amber is not None:
                yellows[group] = max(yellows.get(group, 0.0), amber)
                reds[group] = max(reds.get(group, 0.0), change.duration_s - amber)
    clearances = _clearances(groups, yellows, reds)
    greens = []
    for k, (go, green, change) in enumerate(stages):
        stopping = go - stages[(k + 1) % len(stages)][0]
        intergreen = max((clearances[g] for g in stopping), default=0.0)
        greens.append(green + change.duration_s - intergreen)
    timings = _timings(groups, stages, greens, yellows, reds)
    signals = IntersectionSignals.build(node, timings, conflicts)
    phases = tuple(Phase(f"p{k}", go) for k, (go, _, _) in enumerate(stages))
    cycle = sum(durations)
    offset = (program.offset_s + start - begin_s) % cycle
    try:
        return TimingPlan(PLAN_ID, signals, phases, tuple(greens), offset)
    except ValidationError as error:
        raise ProgramRefusedError(f"{error.field}: {error.reason}") from None


def _amber_time(
    group: str, go: frozenset[str], following: frozenset[str], change: _Change, stage: int
) -> float | None:
    """How long ``group`` shows amber in the change after ``stage``: None if it does not stop
    there. Refuses any colour sequence our intervals cannot show."""
    seen = [colours[group] for _, colours in change.colours]
    if group in go and group in following:
        expected = [c if c == AMBER else GO for c in seen]  # amber between greens: kept green
    elif group in go:
        amber = sum(d for d, colours in change.colours if colours[group] == AMBER)
        steps = [c for c in seen if c != STOP] + [c for c in seen if c == STOP]
        if seen != steps or GO in seen or not amber:
            raise ProgramRefusedError(
                f"group {group!r} ends its green after phase run {stage} without a plain "
                f"amber then red (shows {seen})"
            )
        return amber
    else:
        expected = [STOP] * len(seen)
    if seen != expected:
        raise ProgramRefusedError(
            f"group {group!r} shows {seen} in the change after phase run {stage}, where it "
            "should keep its colour"
        )
    return None


def _clearances(
    groups: Mapping[str, frozenset[str]], yellows: Mapping[str, float], reds: Mapping[str, float]
) -> dict[str, float]:
    """Each group's yellow plus red clearance as our intervals will show them."""
    return {group: _yellow(group, yellows) + _red(group, reds) for group in groups}


def _yellow(group: str, yellows: Mapping[str, float]) -> float:
    return min(max(yellows.get(group, MIN_YELLOW_S), MIN_YELLOW_S), MAX_YELLOW_S)


def _red(group: str, reds: Mapping[str, float]) -> float:
    red = max(reds.get(group, 0.0), MIN_RED_CLEARANCE_S)
    if red > MAX_RED_CLEARANCE_S:
        raise ProgramRefusedError(
            f"group {group!r} is followed by {red:g} s of all-red (more than "
            f"{MAX_RED_CLEARANCE_S:g} s: a stage for pedestrians only?)"
        )
    return red


def _timings(
    groups: Mapping[str, frozenset[str]],
    stages: Sequence[tuple[frozenset[str], float, _Change]],
    greens: Sequence[float],
    yellows: Mapping[str, float],
    reds: Mapping[str, float],
) -> dict[str, GroupTiming]:
    """Per group: its yellow and red clearance, and a minimum green no longer than the
    shortest green it starts in."""
    timings = {}
    for group in groups:
        shortest = min(
            (greens[k] for k, (go, _, _) in enumerate(stages) if group in go - stages[k - 1][0]),
            default=DEFAULT_MIN_GREEN_S,
        )
        if shortest < MIN_GREEN_FLOOR_S:
            raise ProgramRefusedError(
                f"group {group!r} gets {shortest:g} s of green, less than the "
                f"{MIN_GREEN_FLOOR_S:g} s minimum"
            )
        timings[group] = GroupTiming(
            min_green_s=min(DEFAULT_MIN_GREEN_S, shortest),
            yellow_s=_yellow(group, yellows),
            red_clearance_s=_red(group, reds),
        )
    return timings


def generated_plan(
    node: str,
    movements: Sequence[ControlledMovement],
    foes: Collection[frozenset[str]],
    *,
    refusal: str,
) -> JunctionSignals:
    """A plan that respects every SUMO foe: one group per movement, phases built greedily
    (each takes the first group not yet served and every group compatible with it)."""
    groups = {f"M{n}": frozenset({m.movement}) for n, m in enumerate(movements)}
    movement_of = {group: next(iter(members)) for group, members in groups.items()}
    conflicts = [
        (a, b)
        for a, b in combinations(groups, 2)
        if frozenset((movement_of[a], movement_of[b])) in foes
    ]
    timings = dict.fromkeys(groups, GENERATED_TIMING)
    signals = IntersectionSignals.build(node, timings, conflicts)
    phases: list[Phase] = []
    served: set[str] = set()
    for group in groups:
        if group in served:
            continue
        members = [group]
        for other in groups:
            if other not in members and not any(signals.conflict(other, m) for m in members):
                members.append(other)
        served.update(members)
        phases.append(Phase(f"p{len(phases)}", frozenset(members)))
    if len(phases) < 2:
        return JunctionSignals(groups, None, generated=True, refusal=refusal)
    greens = (GENERATED_GREEN_S,) * len(phases)
    plan = TimingPlan(GENERATED_PLAN_ID, signals, tuple(phases), greens)
    return JunctionSignals(groups, plan, generated=True, refusal=refusal)
