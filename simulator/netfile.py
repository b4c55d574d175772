"""Our network file format: a JSON document of the network and its timing plans.

The document is decoded by msgspec into plain Structs, then built into the validated domain
values, so a malformed file fails with the JSON path or the domain field that was wrong.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from citybrain.models.codec import message_error
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
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan
from citybrain.simulator.networks import RoadNetwork

FORMAT = "citybrain-network"
VERSION = 1
MAX_FILE_BYTES = 512 * 1024 * 1024


class _Node(msgspec.Struct, array_like=True):
    id: str
    x: float
    y: float
    signalized: bool


class _Link(msgspec.Struct, array_like=True):
    id: str
    source: str
    target: str
    length: float
    speed: float
    saturation: float
    lanes: list[list[Turn]]


class _Movement(msgspec.Struct, array_like=True):
    id: str
    node: str
    source: str
    target: str
    turn: Turn
    group: str
    junction_speed: float | None = None  # files written before it was kept have none
    junction_m: float | None = None  # likewise


class _Detector(msgspec.Struct, array_like=True):
    id: str
    link: str
    kind: DetectorKind
    distance: float


class _Timing(msgspec.Struct, array_like=True):
    min_green: float
    yellow: float
    red_clearance: float
    walk: float
    ped_clearance: float


class _Group(msgspec.Struct, array_like=True):
    node: str
    id: str
    movements: list[str]
    crossing: bool


class _Plan(msgspec.Struct):
    node: str
    timings: dict[str, _Timing]
    conflicts: list[tuple[str, str]]
    phases: list[tuple[str, list[str]]]
    greens: list[float]
    offset: float


class _File(msgspec.Struct):
    format: str
    version: int
    name: str
    nodes: list[_Node]
    links: list[_Link]
    approaches: list[tuple[str, str, str]]
    movements: list[_Movement]
    groups: list[_Group]
    detectors: list[_Detector]
    plans: list[_Plan]


def save(road: RoadNetwork, path: Path) -> None:
    net = road.network
    document = _File(
        FORMAT,
        VERSION,
        road.name,
        [_Node(n.id, n.x_m, n.y_m, n.signalized) for n in net.intersections],
        [
            _Link(
                link.id,
                link.from_node,
                link.to_node,
                link.length_m,
                link.speed_limit_mps,
                link.saturation_flow_vphpl,
                [sorted(lane.turns) for lane in link.lanes],
            )
            for link in net.links
        ],
        [(a.id, a.intersection_id, a.link_id) for a in net.approaches],
        [
            _Movement(
                m.id,
                m.intersection_id,
                m.from_link,
                m.to_link,
                m.turn,
                m.signal_group,
                m.junction_speed_mps,
                m.junction_m,
            )
            for m in net.movements
        ],
        [
            _Group(g.intersection_id, g.id, sorted(g.movement_ids), g.pedestrian_crossing)
            for g in net.signal_groups
        ],
        [_Detector(d.id, d.link_id, d.kind, d.distance_from_stop_line_m) for d in net.detectors],
        [
            _Plan(
                node,
                {
                    g: _Timing(
                        t.min_green_s, t.yellow_s, t.red_clearance_s, t.walk_s, t.ped_clearance_s
                    )
                    for g, t in sorted(plan.signals.timings.items())
                },
                sorted(tuple(sorted(pair)) for pair in plan.signals.conflict_pairs),  # type: ignore[misc]
                [(phase.id, sorted(phase.groups)) for phase in plan.phases],
                list(plan.greens_s),
                plan.offset_s,
            )
            for node, plan in sorted(road.plans.items())
        ],
    )
    path.write_bytes(msgspec.json.encode(document))


def load(path: Path) -> RoadNetwork:
    """Read a network file, or raise ``ValidationError`` naming what is wrong in it."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValidationError("$", f"{path}: {size} bytes, over the {MAX_FILE_BYTES} byte limit")
    try:
        document = msgspec.json.decode(path.read_bytes(), type=_File)
    except msgspec.ValidationError as error:
        failure = message_error(error)
        raise ValidationError(f"{path}:{failure.field}", failure.reason) from None
    except msgspec.DecodeError as error:
        raise ValidationError(str(path), f"not valid JSON: {error}") from None
    if document.format != FORMAT or document.version != VERSION:
        raise ValidationError(
            f"{path}:$.format",
            f"expected {FORMAT} v{VERSION}, got {document.format} v{document.version}",
        )
    try:
        return _build(document)
    except ValidationError as error:
        raise ValidationError(f"{path}: {error.field}", error.reason) from None


def _build(document: _File) -> RoadNetwork:
    network = Network(
        tuple(Intersection(n.id, n.x, n.y, n.signalized) for n in document.nodes),
        tuple(
            Link(
                link.id,
                link.source,
                link.target,
                link.length,
                tuple(Lane(i, frozenset(turns)) for i, turns in enumerate(link.lanes)),
                link.speed,
                link.saturation,
            )
            for link in document.links
        ),
        tuple(Approach(*fields) for fields in document.approaches),
        tuple(
            Movement(
                m.id, m.node, m.source, m.target, m.turn, m.group, m.junction_speed, m.junction_m
            )
            for m in document.movements
        ),
        tuple(
            SignalGroup(g.id, g.node, frozenset(g.movements), g.crossing) for g in document.groups
        ),
        tuple(Detector(d.id, d.link, d.kind, d.distance) for d in document.detectors),
    )
    plans: dict[str, TimingPlan] = {}
    for plan in document.plans:
        timings = {
            g: GroupTiming(t.min_green, t.yellow, t.red_clearance, t.walk, t.ped_clearance)
            for g, t in plan.timings.items()
        }
        signals = IntersectionSignals.build(plan.node, timings, plan.conflicts)
        phases = tuple(Phase(pid, frozenset(groups)) for pid, groups in plan.phases)
        plans[plan.node] = TimingPlan("normal", signals, phases, tuple(plan.greens), plan.offset)
    return RoadNetwork(document.name, network, plans)
