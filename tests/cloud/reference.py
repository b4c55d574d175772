"""Plain-Python references of the corridor kernels, written for reading, not speed.

Same cost rule and the same floating-point operations in the same order as
``citybrain.cloud.kernels`` (so results compare exactly), but built independently: Python
lists, ``heapq`` on ``(key, link)`` tuples, dictionaries for labels and a predecessor-link map
instead of stamps and CSR back-tracking.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from citybrain.cloud.graph import CorridorGraph

TIE_FACTOR = 1.0 + 1e-9
"""A* key = g + h * TIE_FACTOR: prefer, among equally short routes, progress (see kernels)."""


@dataclass(frozen=True)
class PlainGraph:
    """The search arrays of a ``CorridorGraph`` as Python lists."""

    out: list[list[tuple[int, int]]]
    """Per link: (movement, target link) pairs in CSR order."""
    link_time: list[float]
    link_length: list[float]
    mv_junction_s: list[float]
    """Per movement: the time to cross its junction onto the next link."""
    mv_junction_m: list[float]
    link_x: list[float]
    link_y: list[float]
    max_speed: float
    landmarks: list[list[float]]
    """Per link: [from landmark 0, to landmark 0, from landmark 1, ...]."""


def plain(graph: CorridorGraph, link_time: list[float] | None = None) -> PlainGraph:
    starts = graph.out_start.tolist()
    targets = graph.mv_to.tolist()
    out = [[(k, targets[k]) for k in range(starts[u], starts[u + 1])] for u in range(graph.links)]
    return PlainGraph(
        out,
        graph.link_time.tolist() if link_time is None else list(link_time),
        graph.link_length.tolist(),
        graph.mv_junction_s.tolist(),
        graph.mv_junction_m.tolist(),
        graph.link_x.tolist(),
        graph.link_y.tolist(),
        float(graph.max_speed),
        graph.lm_dist.tolist(),
    )


def origin_line(g: PlainGraph, origin: int, offset_m: float, depart_s: float) -> float:
    """When the vehicle, ``offset_m`` into the origin link, reaches its stop line."""
    length = g.link_length[origin]
    return depart_s + (length - offset_m) / (length / g.link_time[origin])


def search(
    g: PlainGraph,
    origin: int,
    offset_m: float,
    destination: int,
    depart_s: float,
    mv_ready: list[float],
    *,
    use_astar: bool,
) -> tuple[list[int], list[int], float] | None:
    """Earliest-arrival route as (links, moves with -1 last, arrival), or None if unreachable."""
    xd, yd = g.link_x[destination], g.link_y[destination]
    there = g.landmarks[destination]

    def bound(link: int) -> float:
        """Straight line over the top speed, or (if larger) the landmarks' bound on the time
        from the end of ``link`` to the end of the destination."""
        if not use_astar or g.max_speed <= 0.0:
            return 0.0
        if link == destination:
            return 0.0
        dx = g.link_x[link] - xd
        dy = g.link_y[link] - yd
        h = math.sqrt(dx * dx + dy * dy) / g.max_speed
        here = g.landmarks[link]
        for j in range(0, len(here), 2):
            # NaN (inf - inf: this landmark reaches neither) never wins a comparison
            ahead = there[j] - here[j]
            if ahead > h:
                h = ahead
            behind = here[j + 1] - there[j + 1]
            if behind > h:
                h = behind
        return h

    start = origin_line(g, origin, offset_m, depart_s)
    if bound(origin) == math.inf:
        return None
    best: dict[int, float] = {origin: start}
    came: dict[int, tuple[int, int]] = {}  # link -> (previous link, movement)
    done: set[int] = set()
    heap = [(start + bound(origin) * TIE_FACTOR, origin)]
    while heap:
        _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u == destination:
            break
        t = best[u]
        for move, w in g.out[u]:
            if w in done:
                continue
            wait = mv_ready[move] - t
            if wait < 0.0:
                wait = 0.0
            arrive = (t + wait) + (g.mv_junction_s[move] + g.link_time[w])
            if not arrive < math.inf:
                continue
            if w in best and not arrive < best[w]:
                continue
            h = bound(w)
            if h == math.inf:
                continue  # the landmarks prove w leads nowhere near the destination
            best[w] = arrive
            came[w] = (u, move)
            heapq.heappush(heap, (arrive + h * TIE_FACTOR, w))
    if destination not in done:
        return None
    links, moves = [destination], [-1]  # walking back: moves[j] is taken at the end of links[j]
    while links[-1] != origin:
        previous, move = came[links[-1]]
        links.append(previous)
        moves.append(move)
    return links[::-1], moves[::-1], best[destination]


def route_times(
    g: PlainGraph,
    links: list[int],
    moves: list[int],
    offset_m: float,
    depart_s: float,
    mv_ready: list[float],
    pace: float = 1.0,
    *,
    held: tuple[float, float] | None = None,
) -> tuple[list[float], list[float], float]:
    """(stop-line times before waiting, waits, arrival) along a fixed route, every driving
    time ``pace`` times the graph's; with ``held`` (speed, until): at that speed until then."""

    def drive(metres: float, free_s: float, t: float) -> float:
        """``t`` after driving ``metres`` that take ``free_s`` at its pace."""
        if held is None or t >= held[1] or metres <= 0.0:
            return t + free_s
        speed, until = held
        at_held = min(metres, speed * (until - t))
        return t + at_held / speed + (metres - at_held) * (free_s / metres)

    length = g.link_length[links[0]]
    t = drive(
        length - offset_m, pace * ((length - offset_m) / (length / g.link_time[links[0]])), depart_s
    )
    line, waits = [], []
    for i in range(len(links)):
        line.append(t)
        if i == len(links) - 1:
            waits.append(0.0)
            break
        move, onto = moves[i], links[i + 1]
        wait = max(0.0, mv_ready[move] - t)
        waits.append(wait)
        crossing_m = g.mv_junction_m[move] + g.link_length[onto]
        t = drive(crossing_m, pace * (g.mv_junction_s[move] + g.link_time[onto]), t + wait)
    return line, waits, t


@dataclass(frozen=True)
class PlainWindows:
    eta: list[float]
    open: list[float]
    close: list[float]
    low: list[float]
    high: list[float]
    shift: float


def windows(
    line_s: list[float],
    flush: list[float],
    earliest: list[float],
    depart_s: float,
    *,
    margin_s: float,
    clear_after_s: float,
    sigma0_s: float,
    sigma_rate: float,
) -> PlainWindows:
    """One window per stop line but the last; an unflushable queue delays this and later ETAs."""
    out = PlainWindows([], [], [], [], [], 0.0)
    shift = 0.0
    for i in range(len(line_s) - 1):
        eta = line_s[i] + shift
        need = earliest[i] + flush[i]
        if need > eta:
            d = need - eta
            eta += d
            shift += d
        spread = sigma0_s + sigma_rate * (eta - depart_s)
        out.eta.append(eta)
        out.open.append(max(earliest[i], eta - flush[i] - margin_s))
        out.close.append(eta + clear_after_s)
        out.low.append(eta - spread)
        out.high.append(eta + spread)
    return PlainWindows(out.eta, out.open, out.close, out.low, out.high, shift)


def brute_force_arrival(
    g: PlainGraph,
    origin: int,
    offset_m: float,
    destination: int,
    depart_s: float,
    mv_ready: list[float],
) -> float:
    """Best arrival over every simple route (tiny graphs only): checks label-setting's claim
    that FIFO costs need no revisits or time-expanded search."""
    best = math.inf
    links: list[int] = [origin]
    moves: list[int] = []

    def walk(u: int) -> None:
        nonlocal best
        if u == destination:
            *_, arrival = route_times(g, links, [*moves, -1], offset_m, depart_s, mv_ready)
            best = min(best, arrival)
            return
        for move, w in g.out[u]:
            if w in links:
                continue
            links.append(w)
            moves.append(move)
            walk(w)
            links.pop()
            moves.pop()

    walk(origin)
    return best
