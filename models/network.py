"""The road network as immutable values: intersections, links with lanes, approaches,
movements, detectors and signal groups, with every cross-reference checked once at build time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from citybrain.models.checks import (
    check_count,
    check_id,
    check_id_fields,
    check_number,
    check_unique,
)
from citybrain.models.errors import ValidationError
from citybrain.models.signal import SignalGroup

JAM_SPACING_M = 7.5
"""Road length one stopped car occupies (vehicle length plus gap), the usual planning value."""
MAX_JUNCTION_M = 1000.0
"""Longest way across one junction a map may give (SUMO clusters of junctions reach 100 m)."""


class Turn(enum.StrEnum):
    LEFT = "left"
    THROUGH = "through"
    RIGHT = "right"
    UTURN = "uturn"


class DetectorKind(enum.StrEnum):
    STOP_BAR = "stop_bar"
    """Presence loop at the stop line: occupancy and departures."""
    ADVANCE = "advance"
    """Count loop upstream of the stop line: arrivals, and blocked when the queue reaches it."""


@dataclass(frozen=True, slots=True)
class Intersection:
    id: str
    x_m: float
    y_m: float
    signalized: bool = True

    def __post_init__(self) -> None:
        check_id("intersection.id", self.id)
        check_number("intersection.x_m", self.x_m)
        check_number("intersection.y_m", self.y_m)


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane of a link, numbered from the kerb (0), with the turns it allows at its end."""

    index: int
    turns: frozenset[Turn]

    def __post_init__(self) -> None:
        check_count("lane.index", self.index, le=15)
        if not self.turns:
            raise ValidationError("lane.turns", f"lane {self.index} allows no turn")


@dataclass(frozen=True, slots=True)
class Link:
    """A directed road segment from one intersection to the next."""

    id: str
    from_node: str
    to_node: str
    length_m: float
    lanes: tuple[Lane, ...]
    speed_limit_mps: float
    saturation_flow_vphpl: float = 1800.0
    """Discharge rate of one lane in vehicles per hour of green (HCM base: 1900)."""

    def __post_init__(self) -> None:
        check_id_fields(
            ("link.id", "link.from_node", "link.to_node"), (self.id, self.from_node, self.to_node)
        )
        if self.from_node == self.to_node:
            raise ValidationError(
                "link.to_node", f"link {self.id!r} starts and ends at {self.to_node!r}"
            )
        check_number("link.length_m", self.length_m, gt=0.0, le=100_000.0)
        check_number("link.speed_limit_mps", self.speed_limit_mps, gt=0.0, le=70.0)
        check_number("link.saturation_flow_vphpl", self.saturation_flow_vphpl, gt=0.0, le=3600.0)
        if not 1 <= len(self.lanes) <= 16:
            raise ValidationError(
                "link.lanes", f"link {self.id!r} has {len(self.lanes)} lanes (1-16)"
            )
        if [lane.index for lane in self.lanes] != list(range(len(self.lanes))):
            raise ValidationError("link.lanes", f"link {self.id!r}: lanes must be numbered 0..n-1")

    @property
    def storage_veh(self) -> float:
        """How many stopped vehicles fit on the link before it spills back upstream."""
        return len(self.lanes) * self.length_m / JAM_SPACING_M

    @property
    def free_flow_time_s(self) -> float:
        return self.length_m / self.speed_limit_mps

    def lanes_allowing(self, turn: Turn) -> int:
        """How many of the link's lanes a vehicle making ``turn`` may queue and leave in."""
        return sum(1 for lane in self.lanes if turn in lane.turns)


@dataclass(frozen=True, slots=True)
class Approach:
    """An incoming link seen from the intersection it enters: the unit queues are reported on."""

    id: str
    intersection_id: str
    link_id: str

    def __post_init__(self) -> None:
        check_id_fields(
            ("approach.id", "approach.intersection_id", "approach.link_id"),
            (self.id, self.intersection_id, self.link_id),
        )


@dataclass(frozen=True, slots=True)
class Movement:
    """A turn from one link onto another through an intersection, served by one signal group."""

    id: str
    intersection_id: str
    from_link: str
    to_link: str
    turn: Turn
    signal_group: str
    junction_speed_mps: float | None = None
    """The speed limit across its junction (SUMO's internal lanes: netconvert slows a turn
    for its curve); None: its links' own."""
    junction_m: float | None = None
    """The distance it drives across its junction, stop line to next link (SUMO's internal
    lanes end to end); None: estimated from the node coordinates (``Network.junction_m``)."""

    def __post_init__(self) -> None:
        if self.junction_speed_mps is not None:
            check_number("movement.junction_speed_mps", self.junction_speed_mps, gt=0.0, le=70.0)
        if self.junction_m is not None:
            check_number("movement.junction_m", self.junction_m, ge=0.0, le=MAX_JUNCTION_M)
        check_id_fields(
            (
                "movement.id",
                "movement.intersection_id",
                "movement.from_link",
                "movement.to_link",
                "movement.signal_group",
            ),
            (self.id, self.intersection_id, self.from_link, self.to_link, self.signal_group),
        )


@dataclass(frozen=True, slots=True)
class Detector:
    id: str
    link_id: str
    kind: DetectorKind
    distance_from_stop_line_m: float

    def __post_init__(self) -> None:
        check_id_fields(("detector.id", "detector.link_id"), (self.id, self.link_id))
        check_number("detector.distance_from_stop_line_m", self.distance_from_stop_line_m, ge=0.0)


@dataclass(frozen=True)
class Network:
    """A whole road network; building one checks that every reference resolves."""

    intersections: tuple[Intersection, ...]
    links: tuple[Link, ...]
    approaches: tuple[Approach, ...] = ()
    movements: tuple[Movement, ...] = ()
    signal_groups: tuple[SignalGroup, ...] = ()
    detectors: tuple[Detector, ...] = field(default=())

    def __post_init__(self) -> None:
        # The maps by id are built anyway (the checks and lookups use them), so they find the
        # duplicates without a set of every id.
        _check_unique("intersections", self.intersections, self.intersection_by_id)
        _check_unique("links", self.links, self.link_by_id)
        check_unique("network.approaches", (item.id for item in self.approaches))
        _check_unique("movements", self.movements, self.movement_by_id)
        check_unique("network.detectors", (item.id for item in self.detectors))
        groups = {(g.intersection_id, g.id): g for g in self.signal_groups}
        if len(groups) != len(self.signal_groups):
            check_unique(
                "network.signal_groups",
                (f"{g.intersection_id}/{g.id}" for g in self.signal_groups),
            )
        self._check_references(groups)

    def _check_references(self, groups: Mapping[tuple[str, str], SignalGroup]) -> None:
        nodes = self.intersection_by_id
        links = self.link_by_id
        for link in self.links:
            if link.from_node not in nodes or link.to_node not in nodes:
                end = link.from_node if link.from_node not in nodes else link.to_node
                raise ValidationError("link.nodes", f"link {link.id!r} names unknown node {end!r}")
        for approach in self.approaches:
            entering = links.get(approach.link_id)
            if entering is None:
                raise ValidationError(
                    "approach.link_id",
                    f"approach {approach.id!r}: unknown link {approach.link_id!r}",
                )
            if entering.to_node != approach.intersection_id:
                raise ValidationError(
                    "approach.link_id",
                    f"approach {approach.id!r}: link {entering.id!r} does not enter "
                    f"{approach.intersection_id!r}",
                )
        for movement in self.movements:
            source, target = links.get(movement.from_link), links.get(movement.to_link)
            if source is None or target is None:
                raise ValidationError(
                    "movement.links", f"movement {movement.id!r} names an unknown link"
                )
            if (
                source.to_node != movement.intersection_id
                or target.from_node != movement.intersection_id
            ):
                raise ValidationError(
                    "movement.links",
                    f"movement {movement.id!r} does not pass through {movement.intersection_id!r}",
                )
            group = groups.get((movement.intersection_id, movement.signal_group))
            if group is None:
                raise ValidationError(
                    "movement.signal_group",
                    f"movement {movement.id!r}: no signal group {movement.signal_group!r} at "
                    f"{movement.intersection_id!r}",
                )
            if movement.id not in group.movement_ids:
                raise ValidationError(
                    "signal_group.movement_ids",
                    f"group {group.id!r} does not list movement {movement.id!r} that it serves",
                )
        # Each movement is listed by its own group (above), and ids are unique: when the groups
        # list no more ids than there are movements, those are all they list, so what the
        # loop below checks of every listed id already holds and only the nodes need a look.
        listed_all = sum(len(group.movement_ids) for group in self.signal_groups)
        lists_only_own = listed_all == len(self.movements)
        movement_ids = self.movement_by_id
        for group in self.signal_groups:
            if group.intersection_id not in nodes:
                raise ValidationError(
                    "signal_group.intersection_id",
                    f"group {group.id!r}: unknown intersection {group.intersection_id!r}",
                )
            if lists_only_own:
                continue
            for movement_id in group.movement_ids:
                listed = movement_ids.get(movement_id)
                if listed is None:
                    raise ValidationError(
                        "signal_group.movement_ids",
                        f"group {group.id!r} lists unknown movement {movement_id!r}",
                    )
                if (
                    listed.intersection_id != group.intersection_id
                    or listed.signal_group != group.id
                ):
                    raise ValidationError(
                        "signal_group.movement_ids",
                        f"group {group.id!r} at {group.intersection_id!r} lists movement "
                        f"{movement_id!r}, which group {listed.signal_group!r} at "
                        f"{listed.intersection_id!r} serves",
                    )
        for detector in self.detectors:
            carrying = links.get(detector.link_id)
            if carrying is None:
                raise ValidationError(
                    "detector.link_id",
                    f"detector {detector.id!r}: unknown link {detector.link_id!r}",
                )
            if detector.distance_from_stop_line_m > carrying.length_m:
                raise ValidationError(
                    "detector.distance_from_stop_line_m",
                    f"detector {detector.id!r} lies beyond the start of link {carrying.id!r}",
                )

    @cached_property
    def intersection_by_id(self) -> Mapping[str, Intersection]:
        return {item.id: item for item in self.intersections}

    @cached_property
    def link_by_id(self) -> Mapping[str, Link]:
        return {item.id: item for item in self.links}

    @cached_property
    def movement_by_id(self) -> Mapping[str, Movement]:
        return {item.id: item for item in self.movements}

    def intersection(self, intersection_id: str) -> Intersection:
        """The intersection with this id, or a ``ValidationError`` naming the unknown id."""
        try:
            return self.intersection_by_id[intersection_id]
        except KeyError:
            raise ValidationError(
                "intersection", f"unknown intersection {intersection_id!r}"
            ) from None

    def link(self, link_id: str) -> Link:
        try:
            return self.link_by_id[link_id]
        except KeyError:
            raise ValidationError("link", f"unknown link {link_id!r}") from None

    @cached_property
    def uncovered_m(self) -> Mapping[str, float]:
        """Per link: how much further apart its two nodes are than its length, the distance a
        vehicle drives inside the junctions at its ends (SUMO's internal lanes; 0 where links
        run node to node, as ours do). Half of it belongs to each end's junction."""
        nodes = self.intersection_by_id
        out = {}
        for link in self.links:
            start, end = nodes[link.from_node], nodes[link.to_node]
            chord = math.dist((start.x_m, start.y_m), (end.x_m, end.y_m))
            out[link.id] = max(0.0, chord - link.length_m)
        return out

    def junction_m(self, movement: Movement) -> float:
        """Distance ``movement`` drives inside its junction, from the stop line onto the next
        link: its own where the map gives it (``Movement.junction_m``), else half the
        uncovered distance (``uncovered_m``) of each of its two links."""
        if movement.junction_m is not None:
            return movement.junction_m
        uncovered = self.uncovered_m
        return (uncovered[movement.from_link] + uncovered[movement.to_link]) / 2.0

    @cached_property
    def _groups_by_intersection(self) -> Mapping[str, tuple[SignalGroup, ...]]:
        out: dict[str, list[SignalGroup]] = {}
        for group in self.signal_groups:
            out.setdefault(group.intersection_id, []).append(group)
        return {node: tuple(groups) for node, groups in out.items()}

    def signal_groups_at(self, intersection_id: str) -> tuple[SignalGroup, ...]:
        self.intersection(intersection_id)
        return self._groups_by_intersection.get(intersection_id, ())


def _check_unique(
    name: str, items: tuple[Intersection | Link | Movement, ...], by_id: Mapping[str, object]
) -> None:
    """A map by id shorter than its items means a duplicate: ``check_unique`` names it."""
    if len(by_id) != len(items):
        check_unique(f"network.{name}", (item.id for item in items))
