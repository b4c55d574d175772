"""Signalized road networks for the simulator: generators, and our own file format.

A ``RoadNetwork`` is a ``models.Network`` plus a normal timing plan per signalized intersection.
Generated intersections use the NEMA eight-group layout of ``signal_plans.library``: east-west
is the main street (2 eastbound, 6 westbound; lefts 5 and 1), north-south the side street
(4 northbound, 8 southbound; lefts 7 and 3). Rights run with their through. Approaches have an
exclusive left lane, a through lane and a shared through-right lane.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.network import (
    Approach,
    Detector,
    DetectorKind,
    Intersection,
    Lane,
    Link,
    Movement,
    Network,
    Turn,
)
from citybrain.models.signal import SignalGroup
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group, progression_offset_s
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan

ADVANCE_DETECTOR_M = 60.0
"""Advance loop distance from the stop line (about 8 queued cars per lane)."""

# Heading of travel -> (through group, left group). A left turner conflicts with the opposing
# through, which is how NEMA pairs them.
GROUPS_BY_HEADING = {"E": ("2", "5"), "W": ("6", "1"), "N": ("4", "7"), "S": ("8", "3")}
HEADING_VECTORS = {"E": (1, 0), "W": (-1, 0), "N": (0, 1), "S": (0, -1)}
LEFT_OF = {"E": "N", "N": "W", "W": "S", "S": "E"}
RIGHT_OF = {value: key for key, value in LEFT_OF.items()}

STANDARD_LANES = (
    Lane(0, frozenset({Turn.THROUGH, Turn.RIGHT})),
    Lane(1, frozenset({Turn.THROUGH})),
    Lane(2, frozenset({Turn.LEFT})),
)


@dataclass(frozen=True)
class RoadNetwork:
    """A network and the normal plan each of its signalized intersections runs."""

    name: str
    network: Network
    plans: Mapping[str, TimingPlan]

    def __post_init__(self) -> None:
        for intersection in self.network.intersections:
            if intersection.signalized and intersection.id not in self.plans:
                raise ValidationError(
                    "plans", f"signalized intersection {intersection.id!r} has no timing plan"
                )
        for node_id, plan in self.plans.items():
            node = self.network.intersection(node_id)
            if not node.signalized:
                raise ValidationError("plans", f"{node_id!r} is not signalized but has a plan")
            groups = {g.id for g in self.network.signal_groups_at(node_id)}
            if groups != set(plan.signals.groups):
                raise ValidationError(
                    "plans",
                    f"plan of {node_id!r} covers groups {sorted(plan.signals.groups)}, "
                    f"the network has {sorted(groups)}",
                )


class _Builder:
    """Accumulates network parts; ``add_approach_movements`` wires a signalized junction."""

    def __init__(self, *, speed_mps: float, saturation_flow_vphpl: float) -> None:
        self.speed = speed_mps
        self.saturation = saturation_flow_vphpl
        self.nodes: dict[str, Intersection] = {}
        self.links: dict[str, Link] = {}
        self.link_heading: dict[str, str] = {}
        self.incoming: dict[str, list[Link]] = {}
        self.outgoing: dict[str, list[Link]] = {}
        self.approaches: list[Approach] = []
        self.movements: list[Movement] = []
        self.groups: list[SignalGroup] = []
        self.detectors: list[Detector] = []

    def node(self, node_id: str, x: float, y: float, *, signalized: bool) -> None:
        self.nodes[node_id] = Intersection(node_id, x, y, signalized)

    def link(
        self, a: str, b: str, heading: str, *, lanes: tuple[Lane, ...] = STANDARD_LANES
    ) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        length = math.hypot(nb.x_m - na.x_m, nb.y_m - na.y_m)
        link_id = f"{a}-{b}"
        link = Link(link_id, a, b, length, lanes, self.speed, self.saturation)
        self.links[link_id] = link
        self.link_heading[link_id] = heading
        self.outgoing.setdefault(a, []).append(link)
        self.incoming.setdefault(b, []).append(link)

    def signalize(self, node_id: str) -> None:
        """Approaches, movements, detectors and the eight NEMA groups of one junction."""
        incoming = self.incoming.get(node_id, [])
        outgoing = {self.link_heading[link.id]: link for link in self.outgoing.get(node_id, [])}
        members: dict[str, set[str]] = {g: set() for g in "12345678"}
        for link in incoming:
            heading = self.link_heading[link.id]
            approach = f"{node_id}:{heading}"
            self.approaches.append(Approach(approach, node_id, link.id))
            self.detectors.append(Detector(f"{approach}:stop", link.id, DetectorKind.STOP_BAR, 0.0))
            advance = min(ADVANCE_DETECTOR_M, link.length_m)
            self.detectors.append(
                Detector(f"{approach}:adv", link.id, DetectorKind.ADVANCE, advance)
            )
            through_group, left_group = GROUPS_BY_HEADING[heading]
            for turn, out_heading, group in (
                (Turn.THROUGH, heading, through_group),
                (Turn.LEFT, LEFT_OF[heading], left_group),
                (Turn.RIGHT, RIGHT_OF[heading], through_group),
            ):
                target = outgoing.get(out_heading)
                if target is None:
                    continue
                movement_id = f"{approach}{turn.value[0].upper()}"
                self.movements.append(
                    Movement(movement_id, node_id, link.id, target.id, turn, group)
                )
                members[group].add(movement_id)
        for group, movements in members.items():
            if movements:
                self.groups.append(
                    SignalGroup(group, node_id, frozenset(movements), group in "2468")
                )

    def build(self) -> Network:
        return Network(
            tuple(self.nodes.values()),
            tuple(self.links.values()),
            tuple(self.approaches),
            tuple(self.movements),
            tuple(self.groups),
            tuple(self.detectors),
        )


def _plan_for(network: Network, node_id: str, *, offset_s: float) -> TimingPlan:
    """The lead-lead plan restricted to the groups this junction has (edges lack some)."""
    present = {g.id for g in network.signal_groups_at(node_id)}
    full = nema_eight_group(node_id)
    timings: dict[str, GroupTiming] = {g: full.timings[g] for g in present}
    conflicts = [tuple(sorted(pair)) for pair in full.conflict_pairs if pair <= present]
    signals = IntersectionSignals.build(node_id, timings, [(a, b) for a, b in conflicts])
    reference = lead_lead_plan(full, offset_s=0.0)
    phases: list[Phase] = []
    greens: list[float] = []
    for phase, green in zip(reference.phases, reference.greens_s, strict=True):
        kept = phase.groups & present
        if kept:
            phases.append(Phase(phase.id, kept))
            greens.append(green)
    plan = TimingPlan("normal", signals, tuple(phases), tuple(greens), 0.0)
    return TimingPlan("normal", signals, tuple(phases), tuple(greens), offset_s % plan.cycle_s)


def grid(
    rows: int,
    columns: int,
    *,
    spacing_m: float = 200.0,
    speed_mps: float = 13.9,
    saturation_flow_vphpl: float = 1800.0,
    feeder_m: float = 150.0,
) -> RoadNetwork:
    """An ``rows`` x ``columns`` grid of signalized intersections, with feeder links from and to
    unsignalized boundary nodes on every edge. Offsets make an eastbound green wave."""
    check_count("rows", rows, ge=1, le=1000)
    check_count("columns", columns, ge=1, le=1000)
    check_number("spacing_m", spacing_m, ge=20.0, le=5000.0)
    check_number("feeder_m", feeder_m, ge=20.0, le=5000.0)
    builder = _Builder(speed_mps=speed_mps, saturation_flow_vphpl=saturation_flow_vphpl)
    for r in range(rows):
        for c in range(columns):
            builder.node(f"g{r}_{c}", c * spacing_m, r * spacing_m, signalized=True)
    boundary: list[tuple[str, str, str]] = []  # (boundary node, grid node, heading into the grid)
    for c in range(columns):
        boundary.append((f"bS{c}", f"g0_{c}", "N"))
        boundary.append((f"bN{c}", f"g{rows - 1}_{c}", "S"))
    for r in range(rows):
        boundary.append((f"bW{r}", f"g{r}_0", "E"))
        boundary.append((f"bE{r}", f"g{r}_{columns - 1}", "W"))
    for node_id, inner, heading in boundary:
        gx, gy = builder.nodes[inner].x_m, builder.nodes[inner].y_m
        dx, dy = HEADING_VECTORS[heading]
        builder.node(node_id, gx - dx * feeder_m, gy - dy * feeder_m, signalized=False)
        builder.link(node_id, inner, heading)
        builder.link(inner, node_id, _opposite(heading))
    for r in range(rows):
        for c in range(columns):
            if c + 1 < columns:
                builder.link(f"g{r}_{c}", f"g{r}_{c + 1}", "E")
                builder.link(f"g{r}_{c + 1}", f"g{r}_{c}", "W")
            if r + 1 < rows:
                builder.link(f"g{r}_{c}", f"g{r + 1}_{c}", "N")
                builder.link(f"g{r + 1}_{c}", f"g{r}_{c}", "S")
    for r in range(rows):
        for c in range(columns):
            builder.signalize(f"g{r}_{c}")
    network = builder.build()
    plans = {}
    for node in network.intersections:
        if node.signalized:
            offset = progression_offset_s(node.x_m, speed_mps, 100.0)
            plans[node.id] = _plan_for(network, node.id, offset_s=offset)
    return RoadNetwork(f"grid-{rows}x{columns}", network, plans)


def arterial(
    intersections: int = 21,
    *,
    length_m: float = 7000.0,
    cross_street_m: float = 200.0,
    speed_mps: float = 13.9,
    saturation_flow_vphpl: float = 1800.0,
    seed: int = 0,
) -> RoadNetwork:
    """An east-west arterial of ``intersections`` signalized junctions spread over ``length_m``
    (spacings drawn +-25 % around the mean from a seed, then scaled to ``length_m``, like a
    real street), each with a cross street to
    boundary nodes north and south, and feeder links at both ends. Offsets give eastbound
    progression at the speed limit. The default is the reference case: 21 over 7 km."""
    import random

    check_count("intersections", intersections, ge=1, le=500)
    check_number("length_m", length_m, gt=0.0, le=100_000.0)
    rng = random.Random(seed)  # noqa: S311 - layout jitter, not cryptography
    mean = length_m / (intersections + 1)
    xs = [0.0]
    for _ in range(intersections + 1):
        xs.append(xs[-1] + mean * rng.uniform(0.75, 1.25))
    scale = length_m / xs[-1]
    xs = [x * scale for x in xs]
    builder = _Builder(speed_mps=speed_mps, saturation_flow_vphpl=saturation_flow_vphpl)
    builder.node("west", xs[0], 0.0, signalized=False)
    builder.node("east", xs[-1], 0.0, signalized=False)
    names = [f"a{i + 1:02d}" for i in range(intersections)]
    for name, x in zip(names, xs[1:-1], strict=True):
        builder.node(name, x, 0.0, signalized=True)
        builder.node(f"{name}n", x, cross_street_m, signalized=False)
        builder.node(f"{name}s", x, -cross_street_m, signalized=False)
    chain = ["west", *names, "east"]
    for a, b in itertools.pairwise(chain):
        builder.link(a, b, "E")
        builder.link(b, a, "W")
    for name in names:
        builder.link(f"{name}n", name, "S")
        builder.link(name, f"{name}n", "N")
        builder.link(f"{name}s", name, "N")
        builder.link(name, f"{name}s", "S")
    for name in names:
        builder.signalize(name)
    network = builder.build()
    plans = {
        name: _plan_for(network, name, offset_s=progression_offset_s(x - xs[1], speed_mps, 100.0))
        for name, x in zip(names, xs[1:-1], strict=True)
    }
    return RoadNetwork(f"arterial-{intersections}", network, plans)


def _opposite(heading: str) -> str:
    return {"E": "W", "W": "E", "N": "S", "S": "N"}[heading]
