"""The validating layer over the corridor kernels: ids in, immutable routes and windows out.

Every input is checked here (ids, offsets, times, per-movement arrays) so the kernels can run
on plain arrays without bounds checks; a bad input raises ``ValidationError`` naming the field
and never reaches compiled code. No I/O.

A ``Router`` owns preallocated search workspaces and is therefore not thread-safe: use one
per thread (they can share one ``CorridorGraph``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from citybrain.cloud import kernels
from citybrain.cloud.graph import CorridorGraph
from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError

MAX_ALTERNATIVES = 64
LARGEST = sys.float_info.max
"""Upper end of arrays that must be finite (``+inf`` excluded, ``-inf`` allowed if asked)."""
BATCH_LINKS_PER_QUERY = 64
"""Initial route-buffer room per batch query; the buffer doubles when routes are longer."""


class UnreachableError(ValidationError):
    """No route leads from the origin to the destination (with the movements allowed)."""


@dataclass(frozen=True, eq=False)
class Route:
    """A route with its timing: one entry per link, origin first."""

    links: tuple[str, ...]
    link_indices: NDArray[np.int32]
    moves: NDArray[np.int32]
    """Movement index taken at the end of each link; ``-1`` after the last link."""
    line_s: NDArray[np.float64]
    """Time at each link's stop line before waiting (the last link: its end, the arrival)."""
    wait_s: NDArray[np.float64]
    """Wait at each stop line for the queue ahead to be gone; 0 at the last link."""
    arrival_s: float


@dataclass(frozen=True, eq=False)
class Windows:
    """Green windows along a route, one per stop line except the last link's."""

    moves: NDArray[np.int32]
    """The movement each window is for (``route.moves[:-1]``)."""
    eta: NDArray[np.float64]
    open: NDArray[np.float64]
    close: NDArray[np.float64]
    low: NDArray[np.float64]
    """Early edge of the ETA's uncertainty band."""
    high: NDArray[np.float64]
    shift_s: float
    """Total delay from queues that cannot be flushed before the vehicle arrives."""


class Router:
    """Routes on one ``CorridorGraph``, with workspaces allocated once for all queries."""

    def __init__(self, graph: CorridorGraph) -> None:
        if not isinstance(graph, CorridorGraph):
            raise ValidationError("graph", f"expected a CorridorGraph, got {type(graph).__name__}")
        self.graph = graph
        links, moves = graph.links, graph.movements
        self._dist = np.empty(links, dtype=np.float64)
        self._prev = np.empty(links, dtype=np.int32)
        self._heap_keys = np.empty(moves + 1, dtype=np.float64)
        self._heap_vals = np.empty(moves + 1, dtype=np.int32)
        self._visited = np.zeros(links + 1, dtype=np.int64)
        self._links = np.empty(max(links, 1), dtype=np.int32)
        self._penalized = np.empty(0, dtype=np.float64)

    # -- queries -------------------------------------------------------------------------

    def route(
        self,
        origin_link: str,
        offset_m: float,
        destination_link: str,
        depart_s: float,
        mv_ready_s: ArrayLike,
        *,
        use_astar: bool = True,
    ) -> Route:
        """Earliest-arrival route from ``offset_m`` metres into ``origin_link`` to the end of
        ``destination_link``, leaving at ``depart_s``; ``mv_ready_s[m]`` is the absolute time
        the queue ahead on movement ``m`` can be gone (``-inf``: none; ``+inf``: closed)."""
        origin, offset, destination, depart = self._query(
            origin_link, offset_m, destination_link, depart_s
        )
        ready = self._mv_array("mv_ready_s", mv_ready_s, low=-math.inf, high=math.inf)
        n = self._search(
            origin, offset, destination, depart, ready, self.graph.link_time, use_astar
        )
        if n == kernels.UNREACHABLE:
            raise UnreachableError(
                "destination_link", f"no route from {origin_link!r} to {destination_link!r}"
            )
        return self._timed(self._links[:n].copy(), offset, depart, ready, self._prev)

    def evaluate(
        self, links: Sequence[str], offset_m: float, depart_s: float, mv_ready_s: ArrayLike
    ) -> Route:
        """The timing of a fixed route given by link ids (e.g. a corridor after queues changed)."""
        if isinstance(links, str) or not isinstance(links, Sequence) or not links:
            raise ValidationError("links", "expected a non-empty sequence of link ids")
        indices = np.array(
            [self._link_index(f"links[{i}]", link) for i, link in enumerate(links)], dtype=np.int32
        )
        return self._fixed(indices, offset_m, depart_s, mv_ready_s)

    def retime(
        self,
        link_indices: ArrayLike,
        offset_m: float,
        depart_s: float,
        mv_ready_s: ArrayLike,
    ) -> Route:
        """``evaluate`` for a route given by link indices (e.g. the rest of a ``Route``)."""
        try:
            raw = np.asarray(link_indices)
        except (TypeError, ValueError) as error:
            raise ValidationError(
                "link_indices", f"not an array of link indices: {error}"
            ) from None
        if raw.ndim != 1 or raw.shape[0] == 0 or raw.dtype.kind not in "iu":
            raise ValidationError("link_indices", "expected a non-empty 1-D array of link indices")
        if raw.min() < 0 or raw.max() >= self.graph.links:
            raise ValidationError("link_indices", f"link index outside 0..{self.graph.links - 1}")
        return self._fixed(
            raw.astype(np.int32), offset_m, depart_s, mv_ready_s, field="link_indices"
        )

    def _fixed(
        self,
        indices: NDArray[np.int32],
        offset_m: float,
        depart_s: float,
        mv_ready_s: ArrayLike,
        *,
        field: str = "links",
    ) -> Route:
        offset = self._offset(int(indices[0]), offset_m)
        depart = _number("depart_s", depart_s, ge=0.0)
        ready = self._mv_array("mv_ready_s", mv_ready_s, low=-math.inf, high=math.inf)
        moves = np.empty(len(indices), dtype=np.int32)
        gap = kernels.moves_along(
            indices, len(indices), self.graph.out_start, self.graph.mv_to, moves
        )
        _kernel_ok(gap)
        if gap >= 0:
            ids = self.graph.link_ids
            raise ValidationError(
                f"{field}[{gap}]",
                f"no movement from link {ids[indices[gap - 1]]!r} to {ids[indices[gap]]!r}",
            )
        return self._route_from(indices, moves, offset, depart, ready)

    def alternatives(
        self,
        origin_link: str,
        offset_m: float,
        destination_link: str,
        depart_s: float,
        mv_ready_s: ArrayLike,
        *,
        k: int,
        use_astar: bool = True,
        penalty: float = 0.5,
        max_searches: int | None = None,
    ) -> list[Route]:
        """Up to ``k`` distinct routes, fastest first, by the penalty method.

        After each search the links the route used (except origin and destination, which
        every route shares) get their times multiplied by ``1 + penalty``, and the search is
        repeated, at most ``max_searches`` times (default ``4 k``). The penalised times only
        steer the search: each candidate is then timed with the true times and queues. Fewer
        than ``k`` routes come back when the searches find no more distinct ones (a route of
        two links has no inner link to penalise, so the search stops there).
        """
        check_count("k", k, ge=1, le=MAX_ALTERNATIVES)
        check_number("penalty", penalty, gt=0.0, le=100.0)
        limit = 4 * k if max_searches is None else check_count("max_searches", max_searches, ge=1)
        origin, offset, destination, depart = self._query(
            origin_link, offset_m, destination_link, depart_s
        )
        ready = self._mv_array("mv_ready_s", mv_ready_s, low=-math.inf, high=math.inf)
        if self._penalized.shape[0] != self.graph.links:
            self._penalized = np.empty(self.graph.links, dtype=np.float64)
        penalized = self._penalized
        penalized[:] = self.graph.link_time
        factor = 1.0 + penalty
        found: dict[tuple[int, ...], NDArray[np.int32]] = {}
        for _ in range(limit):
            # penalised times only grow, so the graph's A* bound stays admissible
            n = self._search(origin, offset, destination, depart, ready, penalized, use_astar)
            if n == kernels.UNREACHABLE:
                break
            links = self._links[:n].copy()
            found.setdefault(tuple(links.tolist()), links)
            if len(found) >= k or n <= 2:
                break
            penalized[links[1:-1]] *= factor
        if not found:
            raise UnreachableError(
                "destination_link", f"no route from {origin_link!r} to {destination_link!r}"
            )
        candidates = list(found.values())
        lengths = np.array([len(c) for c in candidates], dtype=np.int64)
        starts = np.zeros(len(candidates) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        links_csr = np.concatenate(candidates).astype(np.int32)
        moves_csr = np.empty(links_csr.shape[0], dtype=np.int32)
        out_start, mv_to = self.graph.out_start, self.graph.mv_to
        for c, route in enumerate(candidates):
            hops = moves_csr[starts[c] : starts[c + 1]]
            if kernels.moves_along(route, len(route), out_start, mv_to, hops) != -1:
                raise RuntimeError("a searched route has a hop without a movement")
        line = np.empty(links_csr.shape[0], dtype=np.float64)
        wait = np.empty(links_csr.shape[0], dtype=np.float64)
        arrival = np.empty(len(candidates), dtype=np.float64)
        done = kernels.routes_evaluate(
            starts,
            links_csr,
            moves_csr,
            np.full(len(candidates), offset),
            np.full(len(candidates), depart),
            self.graph.link_time,
            self.graph.link_length,
            ready,
            line,
            wait,
            arrival,
        )
        _kernel_ok(done)
        routes = [
            self._make_route(
                links_csr[starts[c] : starts[c + 1]].copy(),
                moves_csr[starts[c] : starts[c + 1]].copy(),
                line[starts[c] : starts[c + 1]].copy(),
                wait[starts[c] : starts[c + 1]].copy(),
                float(arrival[c]),
            )
            for c in range(len(candidates))
        ]
        routes.sort(key=lambda r: (r.arrival_s, r.link_indices.tolist()))
        return routes

    def windows(
        self,
        route: Route,
        mv_flush_s: ArrayLike,
        mv_earliest_s: ArrayLike,
        depart_s: float,
        *,
        margin_s: float = 3.0,
        clear_after_s: float = 4.0,
        sigma0_s: float = 1.0,
        sigma_rate: float = 0.03,
    ) -> Windows:
        """Green windows along ``route`` for queues that take ``mv_flush_s[m]`` to flush once
        movement ``m`` can open, at the earliest at ``mv_earliest_s[m]`` (``-inf``: any time).

        ETAs start from the route's free-flow stop-line times (its first stop line, then link
        times, no waiting) and every queue that cannot be flushed in time delays that ETA and
        all later ones. Feeding the route's own ``line_s`` instead would count each wait twice:
        ``route.line_s`` already includes the waits upstream. So when the route was searched
        with ``mv_ready = earliest + flush``, ``eta == line_s + wait_s`` and
        ``shift_s == sum(wait_s)`` (to rounding).
        """
        if not isinstance(route, Route):
            raise ValidationError("route", f"expected a Route, got {type(route).__name__}")
        indices, moves = route.link_indices, route.moves
        n = indices.shape[0]
        if (
            n < 1
            or moves.shape != (n,)
            or route.line_s.shape != (n,)
            or indices.min() < 0
            or indices.max() >= self.graph.links
            or (n > 1 and (moves[:-1].min() < 0 or moves[:-1].max() >= self.graph.movements))
        ):
            raise ValidationError("route", "route does not belong to this graph")
        flush = self._mv_array("mv_flush_s", mv_flush_s, low=0.0, high=LARGEST)
        earliest = self._mv_array("mv_earliest_s", mv_earliest_s, low=-math.inf, high=LARGEST)
        depart = _number("depart_s", depart_s, ge=0.0)
        margin = _number("margin_s", margin_s, ge=0.0, le=600.0)
        clear_after = _number("clear_after_s", clear_after_s, ge=0.0, le=600.0)
        sigma0 = _number("sigma0_s", sigma0_s, ge=0.0, le=600.0)
        rate = _number("sigma_rate", sigma_rate, ge=0.0, le=10.0)
        line = np.empty(n, dtype=np.float64)
        kernels.free_flow_lines(
            np.ascontiguousarray(indices, dtype=np.int32),
            n,
            float(route.line_s[0]),
            self.graph.link_time,
            line,
        )
        count = n - 1
        eta, opening, close, low, high = (np.empty(count, dtype=np.float64) for _ in range(5))
        move_list = np.ascontiguousarray(moves[:count], dtype=np.int32)
        shift = kernels.windows(
            line,
            n,
            flush,
            earliest,
            move_list,
            depart,
            margin,
            clear_after,
            sigma0,
            rate,
            eta,
            opening,
            close,
            low,
            high,
        )
        if math.isnan(shift):
            raise ValidationError("route", "route does not belong to this graph")
        return Windows(move_list, eta, opening, close, low, high, float(shift))

    def batch(
        self,
        origin_links: Sequence[str],
        offsets_m: Sequence[float],
        destination_links: Sequence[str],
        departs_s: Sequence[float],
        mv_ready_s: ArrayLike,
        *,
        use_astar: bool = True,
    ) -> list[Route | None]:
        """Many routes against one queue state in a single kernel call; ``None`` where a
        destination is unreachable (one dead end does not sink the batch)."""
        count = len(origin_links)
        for name, items in (
            ("offsets_m", offsets_m),
            ("destination_links", destination_links),
            ("departs_s", departs_s),
        ):
            if len(items) != count:
                raise ValidationError(name, f"expected {count} entries, got {len(items)}")
        origins = np.empty(count, dtype=np.int32)
        destinations = np.empty(count, dtype=np.int32)
        offsets = np.empty(count, dtype=np.float64)
        departs = np.empty(count, dtype=np.float64)
        for q in range(count):
            o, off, d, t = self._query(
                origin_links[q],
                offsets_m[q],
                destination_links[q],
                departs_s[q],
                index=q,
            )
            origins[q], offsets[q], destinations[q], departs[q] = o, off, d, t
        ready = self._mv_array("mv_ready_s", mv_ready_s, low=-math.inf, high=math.inf)
        route_start = np.zeros(count + 1, dtype=np.int64)
        arrival = np.empty(count, dtype=np.float64)
        capacity = max(16, count * min(self.graph.links, BATCH_LINKS_PER_QUERY))
        results: list[Route | None] = []
        q0 = 0
        while q0 < count:
            links = np.empty(capacity, dtype=np.int32)
            moves = np.empty(capacity, dtype=np.int32)
            line = np.empty(capacity, dtype=np.float64)
            wait = np.empty(capacity, dtype=np.float64)
            done = kernels.route_batch(
                origins[q0:],
                offsets[q0:],
                destinations[q0:],
                departs[q0:],
                self.graph.out_start,
                self.graph.mv_to,
                self.graph.link_time,
                self.graph.link_length,
                self.graph.link_x,
                self.graph.link_y,
                self.graph.max_speed,
                self.graph.link_from_node,
                self.graph.link_to_node,
                self.graph.lm_dist,
                ready,
                use_astar,
                self._dist,
                self._prev,
                self._heap_keys,
                self._heap_vals,
                self._visited,
                self._links,
                route_start,
                links,
                moves,
                line,
                wait,
                arrival,
            )
            _kernel_ok(done)
            for q in range(done):
                start, end = int(route_start[q]), int(route_start[q + 1])
                if end == start:
                    results.append(None)
                    continue
                results.append(
                    self._make_route(
                        links[start:end].copy(),
                        moves[start:end].copy(),
                        line[start:end].copy(),
                        wait[start:end].copy(),
                        float(arrival[q]),
                    )
                )
            q0 += done
            capacity *= 2
        return results

    # -- helpers ---------------------------------------------------------------------------

    def _search(
        self,
        origin: int,
        offset: float,
        destination: int,
        depart: float,
        ready: NDArray[np.float64],
        link_time: NDArray[np.float64],
        use_astar: bool,
    ) -> int:
        g = self.graph
        n: int = kernels.route_search(
            origin,
            offset,
            destination,
            depart,
            g.out_start,
            g.mv_to,
            link_time,
            g.link_length,
            g.link_x,
            g.link_y,
            g.max_speed,
            g.link_from_node,
            g.link_to_node,
            g.lm_dist,
            ready,
            bool(use_astar),
            self._dist,
            self._prev,
            self._heap_keys,
            self._heap_vals,
            self._visited,
            self._links,
        )
        if n == kernels.BAD_ARGUMENTS:
            raise RuntimeError("route_search refused arguments the router had validated")
        return n

    def _timed(
        self,
        indices: NDArray[np.int32],
        offset: float,
        depart: float,
        ready: NDArray[np.float64],
        prev_mv: NDArray[np.int32],
    ) -> Route:
        moves = np.empty(indices.shape[0], dtype=np.int32)
        kernels.route_moves_of(indices, indices.shape[0], prev_mv, moves)
        return self._route_from(indices, moves, offset, depart, ready)

    def _route_from(
        self,
        indices: NDArray[np.int32],
        moves: NDArray[np.int32],
        offset: float,
        depart: float,
        ready: NDArray[np.float64],
    ) -> Route:
        n = indices.shape[0]
        line = np.empty(n, dtype=np.float64)
        wait = np.empty(n, dtype=np.float64)
        arrival = kernels.route_times(
            indices,
            n,
            moves,
            offset,
            depart,
            self.graph.link_time,
            self.graph.link_length,
            ready,
            line,
            wait,
        )
        return self._make_route(indices, moves, line, wait, float(arrival))

    def _make_route(
        self,
        indices: NDArray[np.int32],
        moves: NDArray[np.int32],
        line: NDArray[np.float64],
        wait: NDArray[np.float64],
        arrival: float,
    ) -> Route:
        ids = self.graph.link_ids
        return Route(tuple([ids[i] for i in indices.tolist()]), indices, moves, line, wait, arrival)

    def _query(
        self,
        origin_link: str,
        offset_m: float,
        destination_link: str,
        depart_s: float,
        *,
        index: int | None = None,
    ) -> tuple[int, float, int, float]:
        names: tuple[str, ...]
        if index is None:
            names = ("origin_link", "offset_m", "destination_link", "depart_s")
        else:
            names = tuple(
                f"{name}[{index}]"
                for name in ("origin_links", "offsets_m", "destination_links", "departs_s")
            )
        origin = self._link_index(names[0], origin_link)
        offset = self._offset(origin, offset_m, field=names[1])
        destination = self._link_index(names[2], destination_link)
        depart = _number(names[3], depart_s, ge=0.0)
        return origin, offset, destination, depart

    def _link_index(self, field: str, link_id: object) -> int:
        if not isinstance(link_id, str):
            raise ValidationError(field, f"expected a link id, got {type(link_id).__name__}")
        index = self.graph.link_index.get(link_id)
        if index is None:
            raise ValidationError(field, f"unknown link {link_id[:80]!r}")
        return index

    def _offset(self, link: int, offset_m: float, *, field: str = "offset_m") -> float:
        length = float(self.graph.link_length[link])
        return _number(field, offset_m, ge=0.0, le=length)

    def _mv_array(
        self, field: str, values: ArrayLike, *, low: float, high: float
    ) -> NDArray[np.float64]:
        """A per-movement float64 array, contiguous, every value within ``[low, high]`` (so
        never NaN)."""
        try:
            array = np.ascontiguousarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValidationError(field, f"not an array of numbers: {error}") from None
        expected = (self.graph.movements,)
        if array.shape != expected:
            raise ValidationError(
                field, f"expected one value per movement, shape {expected}, got {array.shape}"
            )
        if kernels.count_outside(array, low, high):
            with np.errstate(invalid="ignore"):
                bad = int(np.flatnonzero(~((array >= low) & (array <= high)))[0])
            raise ValidationError(
                field, f"value {array[bad]} at movement {bad} is outside [{low}, {high}]"
            )
        return array


def _number(field: str, value: object, *, ge: float, le: float | None = None) -> float:
    """``check_number`` that also takes NumPy scalars (but not bools or strings)."""
    if isinstance(value, np.integer | np.floating):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"expected a number, got {type(value).__name__}")
    return float(check_number(field, value, ge=ge, le=le))


def _kernel_ok(result: int) -> None:
    if result == kernels.BAD_ARGUMENTS:
        raise RuntimeError("a corridor kernel refused arguments the router had validated")
