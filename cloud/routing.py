"""The validating layer over the corridor kernels: ids in, immutable routes and windows out.

Every input is checked here (ids, offsets, times, per-movement arrays) so the kernels can run
on plain arrays without bounds checks; a bad input raises ``ValidationError`` naming the field
and never reaches compiled code. No I/O.

Per-movement state (when each movement's queue can be gone) is checked when it is made or
updated, as a ``MovementTimes``, and cannot change otherwise; queries given one do not look at
its values again. A query reads a few hundred of a city's million movements, and checking them
all on every query cost more than the search (issue 15: 45-58 % of a corridor's time on
100,000 junctions, the search 9-14 %). Plain arrays are still taken, and checked in full on
every call. Windows take their queues' flush times and earliest openings per stop line of the
route (``Router.windows``), which is all a corridor knows and needs.

A ``Router`` owns preallocated search workspaces and is therefore not thread-safe: use one
per thread (they can share one ``CorridorGraph``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from citybrain.cloud import kernels
from citybrain.cloud.graph import CorridorGraph
from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import MAX_SPEED_MPS

LARGEST = sys.float_info.max
"""Upper end of arrays that must be finite (``+inf`` excluded, ``-inf`` allowed if asked)."""
READY = (-math.inf, math.inf)
"""Range of ``mv_ready_s``: any time but NaN (``-inf``: no queue, ``+inf``: closed)."""
FLUSH = (0.0, LARGEST)
"""Range of ``Router.windows``' ``flush_s``: a finite duration."""
EARLIEST = (-math.inf, LARGEST)
"""Range of ``Router.windows``' ``earliest_s``: a time, ``-inf`` for any time, never
``+inf``."""
MAX_BASE_S = 1e12
"""Largest ``|base_s|`` of a ``MovementTimes`` (31,700 years): far below the rounding step of
values near ``LARGEST``, so ``base + value`` never overflows into ``+inf``."""
MIN_PACE, MAX_PACE = 0.5, 4.0
"""The range of a vehicle's pace (observed driving time over the graph's) a route is timed
with: from twice as fast as planned to four times as slow."""


@dataclass(frozen=True, slots=True)
class HeldSpeed:
    """A speed a route's driving keeps until ``until_s`` instead of the vehicle's pace: the
    traffic's, for a vehicle behind traffic it cannot pass, for as long as that is likely to
    last (the car ahead may turn off at the next junction; nobody knows which)."""

    speed_mps: float
    until_s: float

    def __post_init__(self) -> None:
        # no faster than a position may report: the speed held is one it reported
        check_number("speed_mps", self.speed_mps, gt=0.0, le=MAX_SPEED_MPS)
        check_number("until_s", self.until_s, ge=0.0, le=MAX_BASE_S)


NOT_HELD = (0.0, -math.inf)
"""``route_times``' and ``free_flow_lines``' held speed and end where none is kept."""


class UnreachableError(ValidationError):
    """No route leads from the origin to the destination (with the movements allowed)."""


class MovementTimes:
    """One time per movement of a graph, ``base_s + values[m]``, checked when it changes.

    ``values`` is read-only: it changes only through ``update``, which checks what it writes,
    so a ``Router`` takes a ``MovementTimes`` as it is (an O(1) look at its size and range,
    whatever the graph's size). ``at`` gives the same values from another base (the queues
    seen from a later ``now``) without copying or checking them; such views share the values,
    and see ``update``'s changes. Make one when the state is set up and ``update`` the
    movements whose queues change (telemetry in), not per query: making one costs what one
    query's check of a plain array did. ``|base_s| <= MAX_BASE_S`` keeps ``base + value``
    within the range the values were checked for.
    """

    __slots__ = ("_data", "base_s", "values")
    field: ClassVar[str] = "mv_ready_s"
    """The router argument it is (names the value in errors)."""
    _data: NDArray[np.float64]
    base_s: float
    values: NDArray[np.float64]

    def __init__(self, values: ArrayLike, *, movements: int, base_s: float = 0.0) -> None:
        data = _checked(self.field, values, movements, READY, copy=True)
        view = data.view()
        view.flags.writeable = False
        for name, value in (
            ("_data", data),
            ("values", view),
            ("base_s", _base(self.field, base_s)),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def ready(
        cls, graph: CorridorGraph, values: ArrayLike, *, base_s: float = 0.0
    ) -> MovementTimes:
        """``mv_ready_s`` for ``Router.route``, ``evaluate`` and ``retime``."""
        return cls(values, movements=graph.movements, base_s=base_s)

    @property
    def movements(self) -> int:
        return int(self._data.shape[0])

    def at(self, base_s: float) -> MovementTimes:
        """The same values from ``base_s`` (shared, not copied or checked again)."""
        other = object.__new__(MovementTimes)
        for name in ("_data", "values"):
            object.__setattr__(other, name, getattr(self, name))
        object.__setattr__(other, "base_s", _base(self.field, base_s))
        return other

    def update(self, movements: ArrayLike, values: ArrayLike) -> None:
        """Set ``values[movements]`` after checking them (indices in range, values within the
        range): O(changed), and nothing is written when anything is refused."""
        try:
            index = np.asarray(movements)
            new = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValidationError(self.field, f"not movements and numbers: {error}") from None
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise ValidationError(self.field, "movements must be a 1-D array of indices")
        if new.shape != index.shape:
            raise ValidationError(
                self.field, f"{index.shape[0]} movements but values of shape {new.shape}"
            )
        if index.size and (index.min() < 0 or index.max() >= self.movements):
            raise ValidationError(self.field, f"movement index outside 0..{self.movements - 1}")
        _checked(self.field, new, index.shape[0], READY, copy=False)
        self._data[index] = new

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a MovementTimes changes only through update")


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

    # -- queries -------------------------------------------------------------------------

    def route(
        self,
        origin_link: str,
        offset_m: float,
        destination_link: str,
        depart_s: float,
        mv_ready_s: MovementTimes | ArrayLike,
        *,
        use_astar: bool = True,
    ) -> Route:
        """Earliest-arrival route from ``offset_m`` metres into ``origin_link`` to the end of
        ``destination_link``, leaving at ``depart_s``; ``mv_ready_s[m]`` is the absolute time
        the queue ahead on movement ``m`` can be gone (``-inf``: none; ``+inf``: closed), as a
        checked ``MovementTimes`` (no look at its values) or a plain array (checked in full)."""
        origin, offset, destination, depart = self._query(
            origin_link, offset_m, destination_link, depart_s
        )
        ready = self._ready(mv_ready_s)
        n = self._search(origin, offset, destination, depart, ready, use_astar)
        if n == kernels.UNREACHABLE:
            raise UnreachableError(
                "destination_link", f"no route from {origin_link!r} to {destination_link!r}"
            )
        return self._timed(self._links[:n].copy(), offset, depart, ready, self._prev)

    def evaluate(
        self,
        links: Sequence[str],
        offset_m: float,
        depart_s: float,
        mv_ready_s: MovementTimes | ArrayLike,
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
        mv_ready_s: MovementTimes | ArrayLike,
        *,
        pace: float = 1.0,
        held: HeldSpeed | None = None,
    ) -> Route:
        """``evaluate`` for a route given by link indices (e.g. the rest of a ``Route``), its
        driving times scaled by ``pace`` (the vehicle's observed time over the graph's), at
        ``held``'s speed until its end."""
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
            raw.astype(np.int32), offset_m, depart_s, mv_ready_s,
            field="link_indices", pace=pace, held=held,
        )  # fmt: skip

    def _fixed(
        self,
        indices: NDArray[np.int32],
        offset_m: float,
        depart_s: float,
        mv_ready_s: MovementTimes | ArrayLike,
        *,
        field: str = "links",
        pace: float = 1.0,
        held: HeldSpeed | None = None,
    ) -> Route:
        offset = self._offset(int(indices[0]), offset_m)
        pace = _number("pace", pace, ge=MIN_PACE, le=MAX_PACE)
        depart = _number("depart_s", depart_s, ge=0.0)
        ready = self._ready(mv_ready_s)
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
        return self._route_from(indices, moves, offset, depart, ready, pace, held)

    def windows(
        self,
        route: Route,
        flush_s: ArrayLike,
        earliest_s: ArrayLike,
        depart_s: float,
        *,
        margin_s: float = 3.0,
        clear_after_s: float = 4.0,
        sigma0_s: float = 1.0,
        sigma_rate: float = 0.03,
        pace: float = 1.0,
        held: HeldSpeed | None = None,
    ) -> Windows:
        """Green windows along ``route``, one per stop line but the last link's, for queues
        that take ``flush_s[i]`` to flush once stop line ``i``'s movement can open, at the
        earliest at ``earliest_s[i]`` (``-inf``: any time). One value per stop line: checked
        here in O(route), whatever the graph's size (the caller knows them for its route only).

        ETAs start from the route's free-flow stop-line times (its first stop line, then link
        times at ``pace``, at ``held``'s speed until its end, no waiting) and every queue that
        cannot be flushed in time delays that ETA and all later ones. Feeding the route's own
        ``line_s`` instead would count each wait twice: ``route.line_s`` already includes the
        waits upstream. So when the route was searched with ``mv_ready = earliest + flush``,
        ``eta == line_s + wait_s`` and ``shift_s == sum(wait_s)`` (to rounding).
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
        count = n - 1
        flush = _checked("flush_s", flush_s, count, FLUSH, copy=False, per="stop line")
        earliest = _checked("earliest_s", earliest_s, count, EARLIEST, copy=False, per="stop line")
        depart = _number("depart_s", depart_s, ge=0.0)
        margin = _number("margin_s", margin_s, ge=0.0, le=600.0)
        clear_after = _number("clear_after_s", clear_after_s, ge=0.0, le=600.0)
        sigma0 = _number("sigma0_s", sigma0_s, ge=0.0, le=600.0)
        rate = _number("sigma_rate", sigma_rate, ge=0.0, le=10.0)
        pace = _number("pace", pace, ge=MIN_PACE, le=MAX_PACE)
        line = np.empty(n, dtype=np.float64)
        kernels.free_flow_lines(
            np.ascontiguousarray(indices, dtype=np.int32),
            np.ascontiguousarray(moves, dtype=np.int32),
            n,
            float(route.line_s[0]),
            self.graph.link_time,
            self.graph.link_length,
            self.graph.mv_junction_s,
            self.graph.mv_junction_m,
            pace,
            *_held_ok(held),
            line,
        )
        eta, opening, close, low, high = (np.empty(count, dtype=np.float64) for _ in range(5))
        shift = kernels.windows(
            line,
            n,
            flush,
            earliest,
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
        moves_out = np.ascontiguousarray(moves[:count], dtype=np.int32)
        return Windows(moves_out, eta, opening, close, low, high, float(shift))

    # -- helpers ---------------------------------------------------------------------------

    def _search(
        self,
        origin: int,
        offset: float,
        destination: int,
        depart: float,
        ready: tuple[NDArray[np.float64], float],
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
            g.mv_junction_s,
            g.link_time,
            g.link_length,
            g.link_x,
            g.link_y,
            g.max_speed,
            g.lm_dist,
            ready[0],
            ready[1],
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
        ready: tuple[NDArray[np.float64], float],
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
        ready: tuple[NDArray[np.float64], float],
        pace: float = 1.0,
        held: HeldSpeed | None = None,
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
            self.graph.mv_junction_s,
            self.graph.mv_junction_m,
            ready[0],
            ready[1],
            pace,
            *_held_ok(held),
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
        self, origin_link: str, offset_m: float, destination_link: str, depart_s: float
    ) -> tuple[int, float, int, float]:
        origin = self._link_index("origin_link", origin_link)
        offset = self._offset(origin, offset_m)
        destination = self._link_index("destination_link", destination_link)
        depart = _number("depart_s", depart_s, ge=0.0)
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

    def _ready(self, values: MovementTimes | ArrayLike) -> tuple[NDArray[np.float64], float]:
        """The kernels' (values, base) of ``mv_ready_s``, never NaN. A ``MovementTimes`` was
        checked when it was made: only its size is looked at (O(1)). A plain array is checked
        in full."""
        field = MovementTimes.field
        if isinstance(values, MovementTimes):
            if values.movements != self.graph.movements:
                raise ValidationError(
                    field,
                    f"expected one value per movement, shape ({self.graph.movements},), "
                    f"got ({values.movements},)",
                )
            return values._data, values.base_s
        return _checked(field, values, self.graph.movements, READY, copy=False), 0.0


def _checked(
    field: str,
    values: ArrayLike,
    count: int,
    bounds: tuple[float, float],
    *,
    copy: bool,
    per: str = "movement",
) -> NDArray[np.float64]:
    """``values`` as a C-contiguous float64 array of ``count`` values, one ``per`` movement
    or stop line (a copy if ``copy``), every value within ``bounds`` (so never NaN)."""
    try:
        array = np.array(values, dtype=np.float64, order="C", copy=copy or None)
    except (TypeError, ValueError) as error:
        raise ValidationError(field, f"not an array of numbers: {error}") from None
    if array.shape != (count,):
        raise ValidationError(
            field, f"expected one value per {per}, shape ({count},), got {array.shape}"
        )
    low, high = bounds
    if kernels.count_outside(array, low, high):
        with np.errstate(invalid="ignore"):
            bad = int(np.flatnonzero(~((array >= low) & (array <= high)))[0])
        raise ValidationError(
            field, f"value {array[bad]} at {per} {bad} is outside [{low}, {high}]"
        )
    return array


def _held_ok(held: object) -> tuple[float, float]:
    """The kernels' (speed, end) of a ``HeldSpeed`` (checked when made), or ``NOT_HELD``."""
    if held is None:
        return NOT_HELD
    if not isinstance(held, HeldSpeed):
        raise ValidationError("held", f"expected a HeldSpeed, got {type(held).__name__}")
    return held.speed_mps, held.until_s


def _number(field: str, value: object, *, ge: float, le: float | None = None) -> float:
    """``check_number`` that also takes NumPy scalars (but not bools or strings)."""
    if isinstance(value, np.integer | np.floating):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, f"expected a number, got {type(value).__name__}")
    return float(check_number(field, value, ge=ge, le=le))


def _base(field: str, base_s: float) -> float:
    return _number(f"{field}.base_s", base_s, ge=-MAX_BASE_S, le=MAX_BASE_S)


def _kernel_ok(result: int) -> None:
    if result == kernels.BAD_ARGUMENTS:
        raise RuntimeError("a corridor kernel refused arguments the router had validated")
