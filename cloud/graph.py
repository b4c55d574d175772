"""A ``Network`` flattened into the plain arrays the corridor search runs on.

The search graph's nodes are LINKS, its edges are MOVEMENTS: a vehicle's cost depends on the
turn it takes at each stop line (each movement has its own queue and signal group), which a
node-per-intersection graph cannot express. Index spaces: links ``0..L-1`` in the order of
``network.links``; intersections ``0..N-1`` in the order of ``network.intersections``;
movements ``0..M-1`` sorted (stably) by source link, so that the movements leaving link ``u``
are ``out_start[u]:out_start[u + 1]``. ``movement_ids`` and ``movement_index`` follow that
sorted order; ``mv_order[k]`` is movement ``k``'s position in ``network.movements``.

Two lower bounds on the time still to drive feed the A* search (the larger is used; waits only
add to the true time, so both stay admissible):

* straight-line distance over ``max_speed``, the fastest any link closes distance;
* landmarks (ALT): free-flow times from and to a few intersections on the rim, computed once
  on the link graph the search runs on (turn restrictions and each movement's junction in),
  give ``time(a -> b) >= time(L -> b) - time(L -> a)`` and ``>= time(a -> L) - time(b -> L)``.
  On a grid the straight-line bound cannot tell the many equally short staircase routes apart
  and A* ends up settling most links between the two ends; landmarks come close there. On an
  imported map, where junctions take time and differ by turn, times on the intersection graph
  fell short by every junction's difference from the least one, and A* on 100,000 SUMO
  junctions settled twice as many links.

The graph is checked once, when it is built, and its arrays are read-only copies from then
on, so nothing changes it unchecked (the kernels trust its contents; a link time lowered in
place would make the A* bounds overestimate). Numba compiles one specialisation per array
flavour: the kernels see the graph's arrays read-only and their workspaces writable, always.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.network import Network

ADMISSIBLE_MARGIN = 1e-9
"""Relative slack added to ``max_speed`` so rounding can never make the A* bound overshoot."""
DEFAULT_LANDMARKS = 8
CITY_LANDMARKS = ((2_000, 16), (50_000, 32))
"""(intersections, landmarks): from that size on, that many landmarks by default. Measured on
irregular SUMO networks (``benchmarks/test_corridor_speed.py``, tables then on the
intersection graph), the search's CPU p99: 10,000 junctions 0.89 ms with 8, 0.55 with 16 (32
no better); 100,000 junctions 12.6 ms with 8, 8.5 with 16, 5.6 with 32; on the link graph
with junctions timed, 64 instead of 32 settle a sixth fewer links but take longer (median
2.67 against 2.34 ms). The table costs 16 B per landmark and link (158 MB for 32 on 100,000
SUMO junctions' 308,000 links) and two Dijkstra runs per landmark on the link graph when the
graph is built (5 s there). Networks under 2,000 intersections keep 8, and with them the
routes they had."""
MAX_LANDMARKS = 64


def default_landmarks(intersections: int) -> int:
    """How many landmarks a graph of ``intersections`` gets unless told."""
    count = DEFAULT_LANDMARKS
    for size, landmarks in CITY_LANDMARKS:
        if intersections >= size:
            count = landmarks
    return count


def heuristic_speed(
    link_length: NDArray[np.float64],
    link_time: NDArray[np.float64],
    link_from_node: NDArray[np.int32],
    link_to_node: NDArray[np.int32],
    node_x: NDArray[np.float64],
    node_y: NDArray[np.float64],
) -> float:
    """The fastest any link closes straight-line distance (m/s), for the A* bound.

    Taking the larger of the driven speed and the end-to-end straight-line distance over the
    link time keeps the bound admissible (and consistent) even where a link's stated length is
    shorter than the distance between its end nodes, as in imported networks.
    """
    if link_time.shape[0] == 0:
        return 0.0
    chord = np.hypot(
        node_x[link_to_node] - node_x[link_from_node], node_y[link_to_node] - node_y[link_from_node]
    )
    fastest = float(np.max(np.maximum(link_length, chord) / link_time))
    return fastest * (1.0 + ADMISSIBLE_MARGIN)


def choose_landmarks(
    count: int,
    link_from_node: NDArray[np.int32],
    link_to_node: NDArray[np.int32],
    node_x: NDArray[np.float64],
    node_y: NDArray[np.float64],
) -> NDArray[np.int32]:
    """Up to ``count`` intersections on the rim: in each of ``count`` equal angular sectors
    around the centre, the one farthest out (among those with links in and out). Landmarks
    behind the origin or beyond the destination give the tightest bounds; the rim is where
    they are for most queries."""
    nodes = node_x.shape[0]
    connected = np.zeros(nodes, dtype=bool)
    if count == 0 or link_from_node.shape[0] == 0:
        return np.zeros(0, dtype=np.int32)
    connected[link_from_node] = True
    has_in = np.zeros(nodes, dtype=bool)
    has_in[link_to_node] = True
    candidates = np.flatnonzero(connected & has_in)
    if candidates.size == 0:
        return np.zeros(0, dtype=np.int32)
    cx, cy = node_x[candidates].mean(), node_y[candidates].mean()
    dx, dy = node_x[candidates] - cx, node_y[candidates] - cy
    sector = np.minimum((np.arctan2(dy, dx) + np.pi) / (2.0 * np.pi) * count, count - 1)
    sector = sector.astype(np.int64)
    radius = np.hypot(dx, dy)
    chosen: list[int] = []
    for s in range(count):
        inside = np.flatnonzero(sector == s)
        if inside.size:
            chosen.append(int(candidates[inside[np.argmax(radius[inside])]]))
    return np.array(sorted(set(chosen)), dtype=np.int32)


def landmark_table(
    landmarks: NDArray[np.int32],
    link_from_node: NDArray[np.int32],
    link_to_node: NDArray[np.int32],
    out_start: NDArray[np.int64],
    mv_to: NDArray[np.int32],
    mv_junction_s: NDArray[np.float64],
    link_time: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Free-flow times on the link graph, the search's own (each movement costs its junction
    plus the link it enters), between the end of each link and landmark intersection ``j``:
    column ``2 j`` from the landmark (the end of the nearest of the links out of it, as if a
    vehicle stood there) to the end of each link, column ``2 j + 1`` from the end of each link
    to the landmark (the end of the nearest link into it); ``inf`` where there is no way. Both
    are distances to and from a node added to the link graph, so the triangle inequality,
    and with it an admissible and consistent bound, holds. Turn restrictions and each
    movement's junction count, so the bounds are as tight on an imported map as on a grid.
    Parallel movements count with their fastest time."""
    links = link_time.shape[0]
    table = np.zeros((links, 2 * landmarks.shape[0]), dtype=np.float64)
    if landmarks.shape[0] == 0:
        return table
    mv_from = np.repeat(np.arange(links, dtype=np.int64), np.diff(out_start))
    cost = mv_junction_s + link_time[mv_to]
    pair = mv_from * links + mv_to
    order = np.lexsort((cost, pair))
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = pair[order][1:] != pair[order][:-1]
    keep = order[first]
    weights = csr_matrix((cost[keep], (mv_from[keep], mv_to[keep])), shape=(links, links))
    reverse = weights.T.tocsr()
    for j, node in enumerate(landmarks):
        leaving = np.flatnonzero(link_from_node == node)
        entering = np.flatnonzero(link_to_node == node)
        table[:, 2 * j] = dijkstra(weights, directed=True, indices=leaving, min_only=True)
        table[:, 2 * j + 1] = dijkstra(reverse, directed=True, indices=entering, min_only=True)
    return table


@dataclass(frozen=True, eq=False)
class CorridorGraph:
    """Link-and-movement arrays of one network at emergency free-flow speeds."""

    link_ids: tuple[str, ...]
    link_index: dict[str, int]
    link_length: NDArray[np.float64]
    link_time: NDArray[np.float64]
    """Emergency free-flow time of each link: length / (speed limit * speed factor)."""
    link_x: NDArray[np.float64]
    """Coordinates of each link's downstream node (where its stop line is)."""
    link_y: NDArray[np.float64]
    link_from_node: NDArray[np.int32]
    link_to_node: NDArray[np.int32]
    out_start: NDArray[np.int64]
    """CSR over movements: those leaving link ``u`` are ``out_start[u]:out_start[u + 1]``."""
    movement_ids: tuple[str, ...]
    movement_index: dict[str, int]
    mv_order: NDArray[np.int64]
    """Position of each (sorted) movement in ``network.movements``."""
    mv_from: NDArray[np.int32]
    mv_to: NDArray[np.int32]
    mv_junction_m: NDArray[np.float64]
    """Distance driven inside the junction from the stop line onto the next link
    (``Network.junction_m``): on a real city's map a fifth of a route can lie inside
    junctions (``resco:ingolstadt21``'s corridor: 515 m of 2,537), which link lengths miss."""
    mv_junction_s: NDArray[np.float64]
    """Its emergency free-flow time: at the junction's speed limit (else the next link's)
    times the speed factor. Route times add it on entering the next link."""
    mv_intersection: NDArray[np.int32]
    mv_group: tuple[str, ...]
    intersection_ids: tuple[str, ...]
    intersection_index: dict[str, int]
    node_x: NDArray[np.float64]
    node_y: NDArray[np.float64]
    max_speed: float
    """Upper bound on straight-line progress per second (m/s): the A* heuristic's divisor."""
    landmark_nodes: NDArray[np.int32]
    lm_dist: NDArray[np.float64]
    """Per link, free-flow times from / to each landmark (see ``landmark_table``)."""
    emergency_speed_factor: float = 1.3

    def __post_init__(self) -> None:
        links, moves, nodes = len(self.link_ids), len(self.movement_ids), len(self.intersection_ids)
        for name in ("link_length", "link_time", "link_x", "link_y"):
            _check_array(name, getattr(self, name), np.float64, (links,))
        for name in ("link_from_node", "link_to_node"):
            _check_array(name, getattr(self, name), np.int32, (links,))
        for name in ("node_x", "node_y"):
            _check_array(name, getattr(self, name), np.float64, (nodes,))
        _check_array("out_start", self.out_start, np.int64, (links + 1,))
        _check_array("mv_order", self.mv_order, np.int64, (moves,))
        for name in ("mv_from", "mv_to", "mv_intersection"):
            _check_array(name, getattr(self, name), np.int32, (moves,))
        for name in ("mv_junction_m", "mv_junction_s"):
            _check_array(name, getattr(self, name), np.float64, (moves,))
            values = getattr(self, name)
            if moves and not bool(np.all(values >= 0.0) and np.all(np.isfinite(values))):
                raise ValidationError(name, "every junction's distance and time must be >= 0")
        count = self.landmark_nodes.shape[0] if isinstance(self.landmark_nodes, np.ndarray) else 0
        _check_array("landmark_nodes", self.landmark_nodes, np.int32, (count,))
        _check_array("lm_dist", self.lm_dist, np.float64, (links, 2 * count))
        if len(self.mv_group) != moves:
            raise ValidationError("mv_group", f"expected {moves} groups, got {len(self.mv_group)}")
        if links and not bool(np.all(self.link_time > 0.0) and np.all(np.isfinite(self.link_time))):
            raise ValidationError("link_time", "every link time must be finite and > 0")
        for name in ("link_from_node", "link_to_node"):
            values = getattr(self, name)
            if links and (values.min() < 0 or values.max() >= nodes):
                raise ValidationError(name, "intersection index out of range")
        if self.out_start[0] != 0 or self.out_start[-1] != moves:
            raise ValidationError("out_start", "CSR must start at 0 and end at the movement count")
        if moves and not np.array_equal(
            np.repeat(np.arange(links, dtype=np.int32), np.diff(self.out_start)), self.mv_from
        ):
            raise ValidationError("out_start", "movements must be sorted by source link")
        if moves and (self.mv_to.min() < 0 or self.mv_to.max() >= links):
            raise ValidationError("mv_to", "movement target outside the link range")
        check_number("max_speed", self.max_speed, ge=0.0)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                frozen = value.copy()  # no one else holds it: nothing writes it unchecked
                frozen.flags.writeable = False
                object.__setattr__(self, field.name, frozen)

    @classmethod
    def from_network(
        cls,
        network: Network,
        *,
        emergency_speed_factor: float = 1.3,
        landmarks: int | None = None,
    ) -> CorridorGraph:
        """Flatten ``network``; link times are the emergency vehicle's free-flow times.
        ``landmarks=0`` leaves A* with the straight-line bound only; ``None``: as many as
        ``default_landmarks`` gives for its size."""
        check_number("emergency_speed_factor", emergency_speed_factor, gt=0.0, le=5.0)
        intersection_ids = tuple(node.id for node in network.intersections)
        intersection_index = {node_id: i for i, node_id in enumerate(intersection_ids)}
        links = network.links
        link_index = {link.id: i for i, link in enumerate(links)}
        movements = network.movements
        source = np.array([link_index[m.from_link] for m in movements], dtype=np.int32)
        order = np.argsort(source, kind="stable").astype(np.int64)
        ordered = [movements[i] for i in order]
        for movement in ordered:
            link = network.link_by_id[movement.from_link]
            if link.lanes_allowing(movement.turn) == 0:
                raise ValidationError(
                    "movement.turn",
                    f"no lane of {link.id!r} allows {movement.id!r} ({movement.turn})",
                )
        length = np.array([link.length_m for link in links], dtype=np.float64)
        speed = np.array([link.speed_limit_mps for link in links], dtype=np.float64)
        junction_m = np.array([network.junction_m(m) for m in ordered], dtype=np.float64)
        junction_mps = np.array(
            [m.junction_speed_mps or speed[link_index[m.to_link]] for m in ordered],
            dtype=np.float64,
        )
        return cls.from_arrays(
            link_ids=tuple(link.id for link in links),
            link_length=length,
            link_time=length / (speed * emergency_speed_factor),
            link_from_node=np.array(
                [intersection_index[link.from_node] for link in links], dtype=np.int32
            ),
            link_to_node=np.array(
                [intersection_index[link.to_node] for link in links], dtype=np.int32
            ),
            intersection_ids=intersection_ids,
            node_x=np.array([node.x_m for node in network.intersections], dtype=np.float64),
            node_y=np.array([node.y_m for node in network.intersections], dtype=np.float64),
            movement_ids=tuple(m.id for m in ordered),
            mv_from=source[order],
            mv_to=np.array([link_index[m.to_link] for m in ordered], dtype=np.int32),
            mv_junction_m=junction_m,
            mv_junction_s=junction_m / (junction_mps * emergency_speed_factor),
            mv_group=tuple(m.signal_group for m in ordered),
            mv_order=order,
            landmarks=landmarks,
            emergency_speed_factor=emergency_speed_factor,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        link_ids: tuple[str, ...],
        link_length: NDArray[np.float64],
        link_time: NDArray[np.float64],
        link_from_node: NDArray[np.int32],
        link_to_node: NDArray[np.int32],
        intersection_ids: tuple[str, ...],
        node_x: NDArray[np.float64],
        node_y: NDArray[np.float64],
        movement_ids: tuple[str, ...],
        mv_from: NDArray[np.int32],
        mv_to: NDArray[np.int32],
        mv_group: Sequence[str],
        mv_junction_m: NDArray[np.float64] | None = None,
        mv_junction_s: NDArray[np.float64] | None = None,
        mv_order: NDArray[np.int64] | None = None,
        landmarks: int | None = None,
        emergency_speed_factor: float = 1.3,
    ) -> CorridorGraph:
        """Build from plain arrays (movements already sorted by source link), deriving the
        CSR, the link coordinates, the A* speed bound and the landmark table. Lets generators
        of very large networks skip building ``Network`` objects. Junctions left out are
        crossed in no distance (links that run node to node)."""
        if landmarks is None:
            landmarks = default_landmarks(len(intersection_ids))
        check_count("landmarks", landmarks, le=MAX_LANDMARKS)
        links = len(link_ids)
        out_start = np.zeros(links + 1, dtype=np.int64)
        if mv_from.shape[0]:
            if mv_from.min() < 0 or mv_from.max() >= links:
                raise ValidationError("mv_from", "movement source outside the link range")
            np.cumsum(np.bincount(mv_from, minlength=links), out=out_start[1:])
        chosen = choose_landmarks(landmarks, link_from_node, link_to_node, node_x, node_y)
        junction_m = np.zeros(mv_from.shape[0]) if mv_junction_m is None else mv_junction_m
        junction_s = np.zeros(mv_from.shape[0]) if mv_junction_s is None else mv_junction_s
        return cls(
            link_ids=link_ids,
            link_index={link_id: i for i, link_id in enumerate(link_ids)},
            link_length=link_length,
            link_time=link_time,
            link_x=node_x[link_to_node],
            link_y=node_y[link_to_node],
            link_from_node=link_from_node,
            link_to_node=link_to_node,
            out_start=out_start,
            movement_ids=movement_ids,
            movement_index={m: k for k, m in enumerate(movement_ids)},
            mv_order=np.arange(len(movement_ids), dtype=np.int64) if mv_order is None else mv_order,
            mv_from=mv_from,
            mv_to=mv_to,
            mv_junction_m=junction_m,
            mv_junction_s=junction_s,
            mv_intersection=link_to_node[mv_from] if links else np.zeros(0, dtype=np.int32),
            mv_group=tuple(mv_group),
            intersection_ids=intersection_ids,
            intersection_index={node_id: i for i, node_id in enumerate(intersection_ids)},
            node_x=node_x,
            node_y=node_y,
            max_speed=heuristic_speed(
                link_length, link_time, link_from_node, link_to_node, node_x, node_y
            ),
            landmark_nodes=chosen,
            lm_dist=landmark_table(
                chosen, link_from_node, link_to_node, out_start, mv_to, junction_s, link_time
            ),
            emergency_speed_factor=emergency_speed_factor,
        )

    @property
    def links(self) -> int:
        return len(self.link_ids)

    @property
    def movements(self) -> int:
        return len(self.movement_ids)

    def with_link_times(self, link_time: NDArray[np.float64]) -> CorridorGraph:
        """The same graph with other link times (e.g. congestion-aware), with both A* bounds
        (speed and landmark table) recomputed: shorter times than the ones they were computed
        for would make them overestimate, which is why this is the way to change times."""
        times = np.array(link_time, dtype=np.float64, copy=True)
        if times.shape != (self.links,):
            raise ValidationError(
                "link_time", f"expected {self.links} link times, got shape {times.shape}"
            )
        if not bool(np.all(np.isfinite(times)) and np.all(times > 0.0)):
            raise ValidationError("link_time", "every link time must be finite and > 0")
        return dataclasses.replace(
            self,
            link_time=times,
            max_speed=heuristic_speed(
                self.link_length,
                times,
                self.link_from_node,
                self.link_to_node,
                self.node_x,
                self.node_y,
            ),
            lm_dist=landmark_table(
                self.landmark_nodes,
                self.link_from_node,
                self.link_to_node,
                self.out_start,
                self.mv_to,
                self.mv_junction_s,
                times,
            ),
        )

    def movements_leaving(
        self, links: NDArray[np.integer]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The movements leaving ``links`` (link indices, checked) and, for each, the position
        in ``links`` of its source: per-link values (a queue's flush time) become per-movement
        ones as ``values[owner]``, for ``routing.MovementTimes.update``."""
        chosen = np.asarray(links)
        if chosen.ndim != 1 or (chosen.size and chosen.dtype.kind not in "iu"):
            raise ValidationError("links", "expected a 1-D array of link indices")
        if chosen.size and (chosen.min() < 0 or chosen.max() >= self.links):
            raise ValidationError("links", f"link index outside 0..{self.links - 1}")
        counts = np.diff(self.out_start)[chosen]
        owner = np.repeat(np.arange(chosen.shape[0], dtype=np.int64), counts)
        first = np.cumsum(counts) - counts
        movements = self.out_start[chosen][owner] + (np.arange(owner.shape[0]) - first[owner])
        return movements.astype(np.int64), owner

    def movement_between(self, from_link: int, to_link: int) -> int:
        """Index of the movement from link ``from_link`` onto ``to_link`` (both indices)."""
        for name, value in (("from_link", from_link), ("to_link", to_link)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValidationError(name, f"expected a link index, got {type(value).__name__}")
            if not 0 <= value < self.links:
                raise ValidationError(name, f"link index {value} outside 0..{self.links - 1}")
        for k in range(int(self.out_start[from_link]), int(self.out_start[from_link + 1])):
            if self.mv_to[k] == to_link:
                return k
        raise ValidationError(
            "movement",
            f"no movement from link {self.link_ids[from_link]!r} to {self.link_ids[to_link]!r}",
        )


def _check_array(name: str, value: object, dtype: type[np.generic], shape: tuple[int, ...]) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != shape:
        got = getattr(value, "shape", None)
        kind = getattr(value, "dtype", type(value).__name__)
        raise ValidationError(
            name, f"expected a {np.dtype(dtype).name} array of shape {shape}, got {kind} {got}"
        )
    if not value.flags.c_contiguous:
        raise ValidationError(name, "must be C-contiguous")
