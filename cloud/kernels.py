"""Numba kernels of the corridor optimizer: time-dependent shortest routes over links.

Cost model (every function here uses it, with the same floating-point operations in the same
order, so a search's arrival time equals ``route_times`` along its route bit for bit):

* a vehicle entering link ``u`` at time ``T`` reaches its stop line at
  ``t_line = T + link_time[u]``; on the origin link, starting ``offset_m`` metres in, at
  ``T + (link_length[u] - offset_m) / (link_length[u] / link_time[u])``;
* crossing into ``w`` through movement ``m = (u -> w)`` it waits
  ``wait = max(0, (ready_base + mv_ready[m]) - t_line)``, where ``ready_base + mv_ready[m]``
  is the caller's absolute earliest time the queue ahead of it on ``m`` can be gone (``-inf``:
  no queue, ``+inf``: the movement may not be used), crosses the junction in
  ``mv_junction_s[m]`` and reaches the stop line of ``w`` at
  ``(t_line + wait) + (mv_junction_s[m] + link_time[w])``.
  The scalar base lets one checked queue state serve queries at different ``now`` (0.0 adds
  nothing: ``0.0 + x == x`` exactly);
* the destination is reached at the END of the destination link (no wait there).

Entering later never lets a vehicle leave earlier (the cost is FIFO), so label-setting
Dijkstra is exact. A* adds a lower bound on the time still to drive, the larger of the
straight-line distance from the END of ``u`` to the END of the destination over the fastest
straight-line speed of any link, and the landmark bound of ``lm_dist`` (free-flow times on the
link graph, see ``graph.py``); waits only lengthen the true time, so both are admissible and
consistent. Its key is ``g + h * (1 + TIE_WEIGHT)``: the tiny weight makes the
search prefer, among routes of equal length, the link closer to the destination, which on grid
networks (where landmarks come close and thousands of staircase routes tie) is the difference
between settling the route and settling the whole rectangle. The price is an arrival at most
``TIE_WEIGHT * h(origin)`` later than the optimum (about 0.01 ms on a three-hour trip).

Workspaces are passed in and reused: ``visited`` is an int64 stamp array of ``L + 1`` whose
last element counts queries, so a query never clears the ``L``-sized arrays; ``dist`` and
``prev_mv`` are only meaningful where the stamp says this query touched them.

Return codes: a route length ``>= 1``; ``-1`` unreachable; ``-2`` bad arguments (an index or
array size out of range, a workspace too small). The kernels check every scalar index and every
array size they are given; the CONTENTS of the graph arrays (CSR, targets, node of each link)
are trusted, as ``CorridorGraph`` validates them once when it is built, and so are the
per-movement values (never NaN, within their ranges), which ``routing`` checks when a state is
made or updated (``MovementTimes``), not on every query: on a city that cost more than the
search.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

UNREACHABLE = -1
BAD_ARGUMENTS = -2
TIE_WEIGHT = 1e-9
TIE_FACTOR = 1.0 + TIE_WEIGHT


@njit(cache=True)
def count_outside(values: np.ndarray, low: float, high: float) -> int:
    """How many values lie outside ``[low, high]`` (NaN always does), in one pass without a
    temporary array: what checking a per-movement state costs, once when it is made
    (``routing.MovementTimes``), or per call for a plain array."""
    bad = 0
    for i in range(values.shape[0]):
        x = values[i]
        bad += (x < low) | (x > high) | (x != x)
    return bad


@njit(cache=True)
def _heap_push(keys: np.ndarray, vals: np.ndarray, size: int, key: float, val: int) -> int:
    """Binary min-heap on (key, val) pairs, ties broken by val (as Python's heapq on tuples)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        pk = keys[parent]
        if pk < key or (pk == key and vals[parent] < val):
            break
        keys[i] = pk
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return size + 1


@njit(cache=True)
def _heap_pop(keys: np.ndarray, vals: np.ndarray, size: int) -> int:
    """Remove the root (read it before calling); returns the new size."""
    size -= 1
    key = keys[size]
    val = vals[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        r = c + 1
        kc = keys[c]
        if r < size:
            kr = keys[r]
            if kr < kc or (kr == kc and vals[r] < vals[c]):
                c = r
                kc = kr
        if key < kc or (key == kc and val < vals[c]):
            break
        keys[i] = kc
        vals[i] = vals[c]
        i = c
    keys[i] = key
    vals[i] = val
    return size


@njit(cache=True)
def _bound(
    w: int,
    destination: int,
    xd: float,
    yd: float,
    link_x: np.ndarray,
    link_y: np.ndarray,
    max_speed: float,
    lm_dist: np.ndarray,
    destination_row: np.ndarray,
) -> float:
    """Lower bound on the time from the end of link ``w`` to the end of the destination: the
    larger of the straight-line bound and the landmarks' (``lm_dist`` is on the link graph, so
    it bounds exactly that). ``inf`` when the landmarks prove there is no way; NaN bounds
    (inf - inf: this landmark reaches neither) are ignored.
    """
    if w == destination:
        return 0.0
    dx = link_x[w] - xd
    dy = link_y[w] - yd
    h = math.sqrt(dx * dx + dy * dy) / max_speed
    for j in range(0, lm_dist.shape[1], 2):
        b = destination_row[j] - lm_dist[w, j]
        if b > h:
            h = b
        b = lm_dist[w, j + 1] - destination_row[j + 1]
        if b > h:
            h = b
    return h


@njit(cache=True)
def route_search(
    origin: int,
    offset_m: float,
    destination: int,
    depart_s: float,
    out_start: np.ndarray,
    mv_to: np.ndarray,
    mv_junction_s: np.ndarray,
    link_time: np.ndarray,
    link_length: np.ndarray,
    link_x: np.ndarray,
    link_y: np.ndarray,
    max_speed: float,
    lm_dist: np.ndarray,
    mv_ready: np.ndarray,
    ready_base: float,
    use_astar: bool,
    dist: np.ndarray,
    prev_mv: np.ndarray,
    heap_keys: np.ndarray,
    heap_vals: np.ndarray,
    visited: np.ndarray,
    out_links: np.ndarray,
) -> int:
    """Earliest-arrival route from ``offset_m`` into link ``origin`` to the end of
    ``destination``, leaving at ``depart_s``: A* or Dijkstra, stopping once the destination is
    settled. Writes the links into ``out_links`` and returns their count (or -1 / -2).

    ``dist[u]`` is the time the vehicle reaches the end (stop line) of ``u``; ``prev_mv[u]``
    the movement it entered ``u`` through (``-1`` at the origin). The heap needs one slot per
    movement plus one (each movement relaxes at most once).
    """
    n_links = link_time.shape[0]
    if (
        origin < 0
        or origin >= n_links
        or destination < 0
        or destination >= n_links
        or out_start.shape[0] != n_links + 1
        or dist.shape[0] < n_links
        or prev_mv.shape[0] < n_links
        or visited.shape[0] < n_links + 1
        or heap_keys.shape[0] < 1
        or heap_vals.shape[0] < heap_keys.shape[0]
        or out_links.shape[0] < 1
        or link_length.shape[0] != n_links
        or link_x.shape[0] != n_links
        or link_y.shape[0] != n_links
        or mv_ready.shape[0] != mv_to.shape[0]
        or mv_junction_s.shape[0] != mv_to.shape[0]
        or out_start[n_links] > mv_to.shape[0]
        or lm_dist.shape[0] != n_links
        or lm_dist.shape[1] % 2 != 0
    ):
        return BAD_ARGUMENTS
    capacity = heap_keys.shape[0]
    reached = visited[n_links] + 2
    settled = reached + 1
    visited[n_links] = reached
    astar = use_astar and max_speed > 0.0
    xd = link_x[destination]
    yd = link_y[destination]
    destination_row = lm_dist[destination]

    length = link_length[origin]
    g0 = depart_s + (length - offset_m) / (length / link_time[origin])
    if g0 != g0:
        return BAD_ARGUMENTS
    if not (g0 < math.inf):
        return UNREACHABLE
    dist[origin] = g0
    prev_mv[origin] = -1
    visited[origin] = reached
    h = 0.0
    if astar:
        h = _bound(origin, destination, xd, yd, link_x, link_y, max_speed, lm_dist, destination_row)
        if not (h < math.inf):
            return UNREACHABLE
    heap_keys[0] = g0 + h * TIE_FACTOR
    heap_vals[0] = origin
    size = 1
    found = False
    while size > 0:
        u = heap_vals[0]
        size = _heap_pop(heap_keys, heap_vals, size)
        if visited[u] == settled:
            continue
        visited[u] = settled
        if u == destination:
            found = True
            break
        gu = dist[u]
        for k in range(out_start[u], out_start[u + 1]):
            w = mv_to[k]
            stamp = visited[w]
            if stamp == settled:
                continue
            wait = (ready_base + mv_ready[k]) - gu
            if wait < 0.0:
                wait = 0.0
            g = (gu + wait) + (mv_junction_s[k] + link_time[w])
            if not (g < math.inf):
                continue
            if stamp == reached and not (g < dist[w]):
                continue
            h = 0.0
            if astar:
                h = _bound(
                    w, destination, xd, yd, link_x, link_y, max_speed, lm_dist, destination_row
                )
                if not (h < math.inf):
                    visited[w] = settled  # proven not to lead there: never bound it again
                    continue
            dist[w] = g
            prev_mv[w] = k
            visited[w] = reached
            if size >= capacity:
                return BAD_ARGUMENTS
            size = _heap_push(heap_keys, heap_vals, size, g + h * TIE_FACTOR, w)
    if not found:
        return UNREACHABLE
    # walk back: the source of movement k is the last link whose CSR slice starts at or
    # before k
    n = 1
    v = destination
    while v != origin:
        k = prev_mv[v]
        v = np.searchsorted(out_start, k, side="right") - 1
        n += 1
        if n > n_links:
            return BAD_ARGUMENTS
    if n > out_links.shape[0]:
        return BAD_ARGUMENTS
    v = destination
    for i in range(n - 1, -1, -1):
        out_links[i] = v
        if i > 0:
            v = np.searchsorted(out_start, prev_mv[v], side="right") - 1
    return n


@njit(cache=True)
def route_moves_of(
    route_links: np.ndarray, n: int, prev_mv: np.ndarray, out_moves: np.ndarray
) -> None:
    """Movement of each hop of a route ``route_search`` just wrote (``-1`` after the last)."""
    for i in range(n - 1):
        out_moves[i] = prev_mv[route_links[i + 1]]
    if n > 0:
        out_moves[n - 1] = -1


@njit(cache=True)
def moves_along(
    route_links: np.ndarray, n: int, out_start: np.ndarray, mv_to: np.ndarray, out_moves: np.ndarray
) -> int:
    """The movement of each hop of a route given as links (``-1`` after the last); returns
    ``-1``, or the index of the first link no movement leads into from the one before it
    (``-2`` on bad sizes or link indices)."""
    n_links = out_start.shape[0] - 1
    if n < 1 or route_links.shape[0] < n or out_moves.shape[0] < n:
        return BAD_ARGUMENTS
    for i in range(n):
        if route_links[i] < 0 or route_links[i] >= n_links:
            return BAD_ARGUMENTS
    for i in range(n - 1):
        u = route_links[i]
        found = -1
        for k in range(out_start[u], out_start[u + 1]):
            if mv_to[k] == route_links[i + 1]:
                found = k
                break
        if found < 0:
            return i + 1
        out_moves[i] = found
    out_moves[n - 1] = -1
    return -1


@njit(cache=True)
def route_times(
    route_links: np.ndarray,
    n: int,
    route_moves: np.ndarray,
    offset_m: float,
    depart_s: float,
    link_time: np.ndarray,
    link_length: np.ndarray,
    mv_junction_s: np.ndarray,
    mv_junction_m: np.ndarray,
    mv_ready: np.ndarray,
    ready_base: float,
    pace: float,
    held_mps: float,
    held_until_s: float,
    out_line: np.ndarray,
    out_wait: np.ndarray,
) -> float:
    """Along a fixed route: the time at each stop line before waiting, the wait there (0 at the
    last link, whose "stop line" is its end) and the arrival, which is returned. ``pace``
    scales every driving time, each junction's crossing with the link after it (the
    vehicle's observed time over the graph's; 1.0 exactly reproduces a search's labels);
    until ``held_until_s`` it drives at ``held_mps`` instead (``_driven_s``).

    NaN when ``n`` is not a valid length for the arrays given.
    """
    if (
        n < 1
        or route_links.shape[0] < n
        or route_moves.shape[0] < n - 1
        or out_line.shape[0] < n
        or out_wait.shape[0] < n
        or mv_junction_s.shape[0] != mv_ready.shape[0]
        or mv_junction_m.shape[0] != mv_ready.shape[0]
    ):
        return math.nan
    n_links = link_time.shape[0]
    n_moves = mv_ready.shape[0]
    u = route_links[0]
    if u < 0 or u >= n_links:
        return math.nan
    length = link_length[u]
    free = pace * ((length - offset_m) / (length / link_time[u]))
    t: float = depart_s + _driven_s(free, length - offset_m, depart_s, held_mps, held_until_s)
    for i in range(n):
        out_line[i] = t
        if i == n - 1:
            out_wait[i] = 0.0
            break
        m = route_moves[i]
        w = route_links[i + 1]
        if m < 0 or m >= n_moves or w < 0 or w >= n_links:
            return math.nan
        wait = (ready_base + mv_ready[m]) - t
        if wait < 0.0:
            wait = 0.0
        out_wait[i] = wait
        t = t + wait
        t = t + _driven_s(
            pace * (mv_junction_s[m] + link_time[w]),
            mv_junction_m[m] + link_length[w],
            t,
            held_mps,
            held_until_s,
        )
    return t


@njit(cache=True)
def free_flow_lines(
    route_links: np.ndarray,
    route_moves: np.ndarray,
    n: int,
    line0: float,
    link_time: np.ndarray,
    link_length: np.ndarray,
    mv_junction_s: np.ndarray,
    mv_junction_m: np.ndarray,
    pace: float,
    held_mps: float,
    held_until_s: float,
    out_line: np.ndarray,
) -> None:
    """Stop-line times along a route with no waiting, from the first stop line's time, each
    junction's and link's time scaled by ``pace``, at ``held_mps`` until ``held_until_s``
    (``_driven_s``)."""
    t = line0
    count = min(n, out_line.shape[0], route_links.shape[0], route_moves.shape[0] + 1)
    for i in range(count):
        if i > 0:
            w = route_links[i]
            m = route_moves[i - 1]
            t = t + _driven_s(
                pace * (mv_junction_s[m] + link_time[w]),
                mv_junction_m[m] + link_length[w],
                t,
                held_mps,
                held_until_s,
            )
        out_line[i] = t


@njit(cache=True, inline="always")
def _driven_s(
    free_s: float, metres: float, t: float, held_mps: float, held_until_s: float
) -> float:
    """Time to drive ``metres`` from time ``t`` that take ``free_s`` at the vehicle's pace, the
    part before ``held_until_s`` at ``held_mps`` (0: none; ``free_s`` exactly when none)."""
    if held_mps <= 0.0 or t >= held_until_s or metres <= 0.0:
        return free_s
    reach = held_mps * (held_until_s - t)
    if metres <= reach:
        return metres / held_mps
    return (held_until_s - t) + free_s * ((metres - reach) / metres)


@njit(cache=True)
def windows(
    line_s: np.ndarray,
    n: int,
    flush_s: np.ndarray,
    earliest_s: np.ndarray,
    depart_s: float,
    margin_s: float,
    clear_after_s: float,
    sigma0_s: float,
    sigma_rate: float,
    out_eta: np.ndarray,
    out_open: np.ndarray,
    out_close: np.ndarray,
    out_low: np.ndarray,
    out_high: np.ndarray,
) -> float:
    """Green windows, one per stop line except the last link's; returns the total shift.

    At stop line ``i`` the vehicle's ETA is ``line_s[i]`` plus the delays so far; when the
    queue there cannot be flushed by then (``earliest_s[i] + flush_s[i] > eta``) the vehicle
    is held back by the difference, and every later ETA follows. The window opens early
    enough to flush the queue plus a margin (never before the earliest opening), closes
    ``clear_after_s`` after the ETA, and the band ``eta -/+ (sigma0 + rate * (eta - depart))``
    is the ETA's uncertainty, growing with the time driven.
    """
    count = n - 1
    if (
        count < 0
        or line_s.shape[0] < n
        or flush_s.shape[0] < count
        or earliest_s.shape[0] < count
        or out_eta.shape[0] < count
        or out_open.shape[0] < count
        or out_close.shape[0] < count
        or out_low.shape[0] < count
        or out_high.shape[0] < count
    ):
        return math.nan
    shift = 0.0
    for i in range(count):
        flush = flush_s[i]
        earliest = earliest_s[i]
        eta = line_s[i] + shift
        need = earliest + flush
        if need > eta:
            d = need - eta
            eta += d
            shift += d
        opening = eta - flush - margin_s
        if earliest > opening:
            opening = earliest
        out_eta[i] = eta
        out_open[i] = opening
        out_close[i] = eta + clear_after_s
        spread = sigma0_s + sigma_rate * (eta - depart_s)
        out_low[i] = eta - spread
        out_high[i] = eta + spread
    return shift
