"""Seeded, reproducible demand: Poisson arrivals with a peak, routed by turning ratios, plus
individually placed vehicles (an ambulance on a fixed route)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.network import Link, Network
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.kernels import DRIVING as DRIVING_STATE
from citybrain.simulator.kernels import random_walk_routes


@dataclass(frozen=True, slots=True)
class Peak:
    """A bell-shaped peak: demand rises to ``factor`` x base at ``at_s``, ``width_s`` wide."""

    at_s: float
    width_s: float
    factor: float

    def __post_init__(self) -> None:
        check_number("peak.at_s", self.at_s, ge=0.0)
        check_number("peak.width_s", self.width_s, gt=0.0)
        check_number("peak.factor", self.factor, ge=1.0, le=20.0)

    def multiplier(self, t: NDArray[np.float64]) -> NDArray[np.float64]:
        return 1.0 + (self.factor - 1.0) * np.exp(-(((t - self.at_s) / self.width_s) ** 2))


@dataclass(frozen=True)
class Trips:
    """Vehicles to release: departure times, routes (CSR over links and the movements joining
    them, -1 after the last link), desired-speed factors and which are emergency vehicles."""

    depart: NDArray[np.float64]
    route_start: NDArray[np.int64]
    route_len: NDArray[np.int32]
    route_links: NDArray[np.int32]
    route_moves: NDArray[np.int32]
    speed_factor: NDArray[np.float64]
    emergency: NDArray[np.bool_]
    names: dict[int, str]
    """Vehicle index -> id, for the vehicles that carry one (emergency vehicles)."""
    reroute: NDArray[np.bool_] | None = None
    """Vehicles routed again when they leave, on the travel times of that moment (SUMO routes
    a ``<trip>`` when it inserts it): their route here runs from their origin link to their
    destination link. ``None``: every route is fixed."""
    standing: NDArray[np.bool_] | None = None
    """Vehicles that start from a standstill (SUMO's default ``departSpeed`` 0, in its first
    lane): each pays its pulling away, and enters its link only once the one that started
    there before it has cleared a car length. ``None``: every vehicle leaves at speed."""

    @property
    def count(self) -> int:
        return int(self.depart.shape[0])

    @property
    def rerouted(self) -> bool:
        return self.reroute is not None and bool(self.reroute.any())

    def check_on(self, links: int) -> None:
        """Refuse, before any engine starts, what would fail it mid-run (SUMO only when the
        vehicle is due) or move nothing: a departure not finite or negative, a speed factor
        not finite and positive, a route through a link outside a network of ``links``."""
        if not self.count:
            return
        if not np.all(np.isfinite(self.depart)) or self.depart.min() < 0:
            raise ValidationError("trips.depart", "departure times must be finite and >= 0")
        if not np.all(np.isfinite(self.speed_factor)) or self.speed_factor.min() <= 0:
            raise ValidationError("trips.speed_factor", "speed factors must be finite and > 0")
        if self.route_links.min() < 0 or self.route_links.max() >= links:
            raise ValidationError("trips.route_links", "a route names a link outside the network")

    @staticmethod
    def concat(parts: Sequence[Trips]) -> Trips:
        offsets = np.cumsum([0, *(p.route_links.shape[0] for p in parts)])[:-1]
        firsts = np.cumsum([0, *(p.count for p in parts)])[:-1]
        names: dict[int, str] = {}
        for part, first in zip(parts, firsts, strict=True):
            names.update({int(first) + i: name for i, name in part.names.items()})
        return Trips(
            np.concatenate([p.depart for p in parts]),
            np.concatenate([p.route_start + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.route_len for p in parts]),
            np.concatenate([p.route_links for p in parts]),
            np.concatenate([p.route_moves for p in parts]),
            np.concatenate([p.speed_factor for p in parts]),
            np.concatenate([p.emergency for p in parts]),
            names,
            np.concatenate([_reroute_mask(p) for p in parts])
            if any(p.reroute is not None for p in parts)
            else None,
            np.concatenate([standing_mask(p) for p in parts])
            if any(p.standing is not None for p in parts)
            else None,
        )


def _reroute_mask(trips: Trips) -> NDArray[np.bool_]:
    if trips.reroute is None:
        return np.zeros(trips.count, dtype=np.bool_)
    return trips.reroute


def standing_mask(trips: Trips) -> NDArray[np.bool_]:
    """Per vehicle, whether it starts from a standstill (``Trips.standing``)."""
    if trips.standing is None:
        return np.zeros(trips.count, dtype=np.bool_)
    return trips.standing


DEFAULT_TURNS = (0.15, 0.7, 0.15)
"""Left, through, right shares at every intersection."""


def entry_links(network: Network) -> tuple[Link, ...]:
    """The links by which traffic comes in from outside: those leaving a node that no other
    link enters except the way back from the leaving link's far end (a dead end or the cut
    end of a road at the network's boundary). Links leaving an ordinary junction, signalized
    or not, are not entries: on an imported city most junctions are unsignalized."""
    sources: dict[str, set[str]] = {}
    for link in network.links:
        sources.setdefault(link.to_node, set()).add(link.from_node)
    return tuple(
        link for link in network.links if sources.get(link.from_node, set()) <= {link.to_node}
    )


def random_trips(
    net: CompiledNetwork,
    *,
    seed: int,
    duration_s: float,
    vehicles_per_hour: float,
    start_s: float = 0.0,
    peak: Peak | None = None,
    turns: tuple[float, float, float] = DEFAULT_TURNS,
    from_boundary: bool = True,
    origin_weights: dict[str, float] | None = None,
    max_hops: int = 60,
) -> Trips:
    """Poisson arrivals (rate varying with ``peak``) on origin links chosen uniformly: the
    network's ``entry_links``, or any link when ``from_boundary`` is false (SUMO randomTrips
    style). ``origin_weights`` (link id -> weight, default 1) skews the choice, for example
    towards an arterial's main-road entries. Routes follow the turning shares until the
    network's edge or ``max_hops``."""
    check_count("seed", seed)
    check_number("duration_s", duration_s, gt=0.0, le=30 * 86400.0)
    check_number("vehicles_per_hour", vehicles_per_hour, ge=0.0, le=10_000_000.0)
    check_count("max_hops", max_hops, ge=1, le=10_000)
    for name, share in zip(("left", "through", "right"), turns, strict=True):
        check_number(f"turns.{name}", share, ge=0.0)
    if sum(turns) <= 0.0:
        raise ValidationError("turns", "at least one turning share must be positive")
    rng = np.random.default_rng(seed)
    top = vehicles_per_hour * (peak.factor if peak else 1.0) / 3600.0
    expected = top * duration_s
    count = int(rng.poisson(expected)) if expected > 0 else 0
    times = np.sort(rng.uniform(start_s, start_s + duration_s, count))
    if peak is not None:
        keep = rng.uniform(0.0, 1.0, count) < peak.multiplier(times) / peak.factor
        times = times[keep]
    if from_boundary:
        candidates = np.array(
            [net.link_index[link.id] for link in entry_links(net.road.network)], dtype=np.int32
        )
    else:
        candidates = np.arange(net.links, dtype=np.int32)
    if candidates.size == 0:
        raise ValidationError("origins", "the network has no entry link")
    weights_by_link = np.ones(candidates.size)
    for link_id, weight in (origin_weights or {}).items():
        check_number(f"origin_weights[{link_id}]", weight, ge=0.0)
        if link_id not in net.link_index:
            raise ValidationError("origin_weights", f"unknown link {link_id!r}")
        hits = np.flatnonzero(candidates == net.link_index[link_id])
        if hits.size == 0:
            raise ValidationError("origin_weights", f"{link_id!r} is not an origin link")
        weights_by_link[hits] = weight
    if weights_by_link.sum() <= 0.0:
        raise ValidationError("origin_weights", "all origin weights are zero")
    origins = candidates[
        rng.choice(candidates.size, size=times.size, p=weights_by_link / weights_by_link.sum())
    ]
    n = times.size
    links = np.zeros((n, max_hops), dtype=np.int32)
    moves = np.zeros((n, max_hops), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    weights = np.array([turns[0], turns[1], turns[2], 0.0], dtype=np.float64)
    random_walk_routes(
        seed,
        origins,
        max_hops,
        weights,
        net.link_out_start,
        net.mv_to,
        net.mv_turn,
        links,
        moves,
        lengths,
    )
    mask = np.arange(max_hops)[None, :] < lengths[:, None]
    starts = np.zeros(n, dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    return Trips(
        times.astype(np.float64),
        starts,
        lengths,
        links[mask].astype(np.int32),
        moves[mask].astype(np.int32),
        rng.uniform(0.9, 1.05, n),
        np.zeros(n, dtype=np.bool_),
        {},
    )


def fixed_route(
    net: CompiledNetwork,
    links: Sequence[str],
    *,
    depart_s: float,
    name: str,
    emergency: bool = True,
    speed_factor: float = 1.3,
) -> Trips:
    """One vehicle on a given route of link ids (for example an ambulance)."""
    check_id("vehicle", name)
    check_number("depart_s", depart_s, ge=0.0)
    check_number("speed_factor", speed_factor, gt=0.0, le=3.0)
    if not links:
        raise ValidationError("route", "a route needs at least one link")
    indices: list[int] = []
    for position, link_id in enumerate(links):
        if link_id not in net.link_index:
            raise ValidationError(f"route[{position}]", f"unknown link {link_id!r}")
        indices.append(net.link_index[link_id])
    moves = [net.movement_between(a, b) for a, b in itertools.pairwise(indices)]
    return Trips(
        np.array([depart_s]),
        np.array([0], dtype=np.int64),
        np.array([len(indices)], dtype=np.int32),
        np.array(indices, dtype=np.int32),
        np.array([*moves, -1], dtype=np.int32),
        np.array([speed_factor]),
        np.array([emergency]),
        {0: name},
    )


def free_flow_time_s(
    net: CompiledNetwork, trips: Trips, vehicle: int, *, speed_factor: float | None = None
) -> float:
    """Travel time of ``vehicle`` on an empty network with every signal green: its links and
    the junctions between them at its desired speed."""
    start = int(trips.route_start[vehicle])
    hops = np.arange(start, start + int(trips.route_len[vehicle]))
    links = trips.route_links[hops]
    factor = trips.speed_factor[vehicle] if speed_factor is None else speed_factor
    return float(np.sum(hop_metres(net, trips, hops) / (net.link_speed[links] * factor)))


def route_hops(trips: Trips) -> NDArray[np.int64]:
    """Indices into the route arrays of every vehicle's hops, vehicle after vehicle."""
    lengths = trips.route_len.astype(np.int64)
    firsts = np.cumsum(lengths) - lengths
    return np.repeat(trips.route_start - firsts, lengths) + np.arange(int(lengths.sum()))


def hop_metres(net: CompiledNetwork, trips: Trips, hops: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per hop (indices into the route arrays): its link's length plus the junction crossed
    to reach it (none before a route's first link)."""
    metres = net.link_length[trips.route_links[hops]].copy()
    if hops.size:
        firsts = np.isin(hops, trips.route_start)
        before = trips.route_moves[np.maximum(hops - 1, 0)]
        metres[~firsts] += net.mv_junction_m[before[~firsts]]
    return metres


def _per_vehicle(trips: Trips, values: NDArray[np.float64]) -> NDArray[np.float64]:
    if not trips.count:
        return np.zeros(0)
    return np.add.reduceat(values, np.cumsum(trips.route_len) - trips.route_len)


def route_lengths_m(net: CompiledNetwork, trips: Trips) -> NDArray[np.float64]:
    """Per vehicle: the distance of its route, junctions between its links included (what
    SUMO reports as ``routeLength``)."""
    return _per_vehicle(trips, hop_metres(net, trips, route_hops(trips)))


def free_flow_times_s(net: CompiledNetwork, trips: Trips) -> NDArray[np.float64]:
    """Per vehicle: ``free_flow_time_s`` of all of them at once."""
    hops = route_hops(trips)
    speed = net.link_speed[trips.route_links[hops]]
    return _per_vehicle(trips, hop_metres(net, trips, hops) / speed) / trips.speed_factor


def od_trips(
    net: CompiledNetwork,
    matrix: dict[tuple[str, str], float],
    *,
    seed: int,
    duration_s: float,
    start_s: float = 0.0,
    peak: Peak | None = None,
) -> Trips:
    """Poisson arrivals per origin-destination pair of links (vehicles per hour), each vehicle
    on the pair's shortest free-flow route through the network."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    check_count("seed", seed)
    check_number("duration_s", duration_s, gt=0.0, le=30 * 86400.0)
    for (origin, destination), rate in matrix.items():
        for role, link_id in (("origin", origin), ("destination", destination)):
            if link_id not in net.link_index:
                raise ValidationError(
                    f"matrix[{origin},{destination}]", f"unknown {role} link {link_id!r}"
                )
        check_number(f"matrix[{origin},{destination}]", rate, ge=0.0, le=100_000.0)
    free_time = net.link_length / net.link_speed
    graph = csr_matrix(
        (free_time[net.mv_to], (net.mv_from, net.mv_to)), shape=(net.links, net.links)
    )
    origins = sorted({net.link_index[o] for o, _ in matrix})
    _, predecessors = dijkstra(graph, indices=origins, return_predecessors=True)
    row_of = {o: r for r, o in enumerate(origins)}
    rng = np.random.default_rng(seed)
    parts: list[Trips] = []
    for (origin, destination), rate in sorted(matrix.items()):
        a, b = net.link_index[origin], net.link_index[destination]
        path = [b]
        while path[-1] != a:
            previous = int(predecessors[row_of[a], path[-1]])
            if previous < 0:
                raise ValidationError(
                    f"matrix[{origin},{destination}]",
                    f"{destination!r} cannot be reached from {origin!r}",
                )
            path.append(previous)
        path.reverse()
        top = rate * (peak.factor if peak else 1.0) / 3600.0
        count = int(rng.poisson(top * duration_s))
        times = np.sort(rng.uniform(start_s, start_s + duration_s, count))
        if peak is not None:
            times = times[rng.uniform(0.0, 1.0, count) < peak.multiplier(times) / peak.factor]
        n = times.size
        if n == 0:
            continue
        moves = [net.movement_between(x, y) for x, y in itertools.pairwise(path)] + [-1]
        hops = len(path)
        parts.append(
            Trips(
                times,
                np.arange(n, dtype=np.int64) * hops,
                np.full(n, hops, dtype=np.int32),
                np.tile(np.array(path, dtype=np.int32), n),
                np.tile(np.array(moves, dtype=np.int32), n),
                rng.uniform(0.9, 1.05, n),
                np.zeros(n, dtype=np.bool_),
                {},
            )
        )
    if not parts:
        return Trips(
            np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0),
            np.zeros(0, dtype=np.bool_), {},
        )  # fmt: skip
    merged = Trips.concat(parts)
    order = np.argsort(merged.depart, kind="stable")
    return _reorder(merged, order)


def _reorder(trips: Trips, order: NDArray[np.int64]) -> Trips:
    """The same vehicles, renumbered in ``order`` (routes moved with them)."""
    lengths = trips.route_len[order]
    starts = np.zeros(order.size, dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    gather = (
        np.concatenate(
            [
                np.arange(trips.route_start[v], trips.route_start[v] + trips.route_len[v])
                for v in order
            ]
        )
        if order.size
        else np.zeros(0, dtype=np.int64)
    )
    names = {int(np.flatnonzero(order == v)[0]): name for v, name in trips.names.items()}
    return Trips(
        trips.depart[order], starts, lengths, trips.route_links[gather], trips.route_moves[gather],
        trips.speed_factor[order], trips.emergency[order], names,
        None if trips.reroute is None else trips.reroute[order],
        None if trips.standing is None else trips.standing[order],
    )  # fmt: skip


ROUTING_INTERVAL_S = 5.0
"""How often travel times are sampled and due vehicles routed (SUMO: every step, 1 s)."""
ROUTING_WINDOW_S = 180.0
"""Travel times are the mean over this past window (SUMO's ``device.rerouting``:
``adaptation-steps`` 180 of ``adaptation-interval`` 1 s)."""
SLOWEST_ASSUMED_MPS = 0.001
"""A link whose vehicles all stood still the whole window costs its length at this speed
(SUMO's ``NUMERICAL_EPS``): routes avoid it unless nothing else leads on."""


class DepartureRouter:
    """Routes the ``Trips.reroute`` vehicles as they become due, the way SUMO routes a trip when
    it inserts it: fastest path from origin to destination link by each link's length over
    the mean speed of the vehicles on it, averaged over the last ``ROUTING_WINDOW_S`` (the
    speed limit while it is empty; the junction on the way at the link's speed). New routes
    go into spare room after the given ones; when that runs out a vehicle keeps its route."""

    def __init__(self, net: CompiledNetwork, trips: Trips) -> None:
        mask = _reroute_mask(trips)
        spare = 2 * int(trips.route_len[mask].sum()) + 64
        self.trips = Trips(
            trips.depart,
            trips.route_start.copy(),
            trips.route_len.copy(),
            np.concatenate([trips.route_links, np.zeros(spare, dtype=np.int32)]),
            np.concatenate([trips.route_moves, np.full(spare, -1, dtype=np.int32)]),
            trips.speed_factor,
            trips.emergency,
            trips.names,
            mask,
            trips.standing,
        )
        self.net = net
        due = np.flatnonzero(mask)
        self.due = due[np.argsort(trips.depart[due], kind="stable")]
        self.next_due = 0
        self.free = int(trips.route_links.shape[0])
        self.origin = trips.route_links[trips.route_start]
        self.destination = trips.route_links[trips.route_start + trips.route_len - 1]
        samples = max(1, round(ROUTING_WINDOW_S / ROUTING_INTERVAL_S))
        self.speeds = np.tile(net.link_speed, (samples, 1))
        self.sampled = 0
        self.changed = 0
        self.kept = 0
        """Vehicles that kept their route because the spare room ran out."""
        self.move_of = {
            (int(a), int(b)): m for m, (a, b) in enumerate(zip(net.mv_from, net.mv_to, strict=True))
        }

    @property
    def done(self) -> bool:
        return self.next_due >= int(self.due.shape[0])

    def sample(
        self, state: NDArray[np.int8], hop: NDArray[np.int32], active: NDArray[np.int64]
    ) -> None:
        """Record each link's mean vehicle speed now (queued vehicles stand still)."""
        net, trips = self.net, self.trips
        links = trips.route_links[trips.route_start[active] + hop[active]]
        moving = state[active] == DRIVING_STATE
        speed = np.where(moving, net.link_speed[links] * trips.speed_factor[active], 0.0)
        count = np.bincount(links, minlength=net.links)
        total = np.bincount(links, weights=speed, minlength=net.links)
        now = np.where(count > 0, total / np.maximum(count, 1), net.link_speed)
        self.speeds[self.sampled % self.speeds.shape[0]] = now
        self.sampled += 1

    def route(self, until_s: float) -> None:
        """Route every vehicle due before ``until_s`` that has not been routed yet."""
        first = self.next_due
        while self.next_due < self.due.shape[0] and (
            self.trips.depart[self.due[self.next_due]] < until_s
        ):
            self.next_due += 1
        vehicles = self.due[first : self.next_due]
        if vehicles.size == 0:
            return
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra

        net = self.net
        speed = np.maximum(self.speeds.mean(axis=0), SLOWEST_ASSUMED_MPS)
        seconds = (net.link_length[net.mv_to] + net.mv_junction_m) / speed[net.mv_to]
        graph = csr_matrix((seconds, (net.mv_from, net.mv_to)), shape=(net.links, net.links))
        origins = np.unique(self.origin[vehicles])
        _, predecessors = dijkstra(graph, indices=origins, return_predecessors=True)
        row = {int(o): r for r, o in enumerate(origins)}
        for v in vehicles.tolist():
            self._set(v, predecessors[row[int(self.origin[v])]])

    def _set(self, v: int, predecessors: NDArray[np.int32]) -> None:
        trips = self.trips
        path = [int(self.destination[v])]
        while path[-1] != self.origin[v]:
            previous = int(predecessors[path[-1]])
            if previous < 0:
                return
            path.append(previous)
        path.reverse()
        start, length = int(trips.route_start[v]), int(trips.route_len[v])
        if trips.route_links[start : start + length].tolist() == path:
            return
        if self.free + len(path) > trips.route_links.shape[0]:
            self.kept += 1
            return
        end = self.free + len(path)
        trips.route_links[self.free : end] = path
        trips.route_moves[self.free : end - 1] = [
            self.move_of[pair] for pair in itertools.pairwise(path)
        ]
        trips.route_moves[end - 1] = -1
        trips.route_start[v] = self.free
        trips.route_len[v] = len(path)
        self.free = end
        self.changed += 1
