"""Test networks and queue states for the corridor tests (seeded, small, varied)."""

from __future__ import annotations

import dataclasses
import math
from functools import cache

import numpy as np
from numpy.typing import NDArray

from citybrain.cloud.graph import CorridorGraph
from citybrain.models.network import Intersection, Lane, Link, Movement, Network, Turn
from citybrain.models.signal import SignalGroup
from citybrain.simulator.networks import grid

ANY_TURN = (Lane(0, frozenset({Turn.LEFT, Turn.THROUGH, Turn.RIGHT, Turn.UTURN})),)


@cache
def grid_graph(rows: int, columns: int, landmarks: int = 8) -> CorridorGraph:
    return CorridorGraph.from_network(grid(rows, columns).network, landmarks=landmarks)


def random_times_graph(rows: int, columns: int, seed: int, landmarks: int = 8) -> CorridorGraph:
    """A generated grid whose links take random times (5-40 s), so optima are unique, and
    whose junctions take 0-4 s to cross (10 m/s), as on a real city's map."""
    graph = grid_graph(rows, columns, landmarks)
    rng = np.random.default_rng(seed)
    crossing = rng.uniform(0.0, 4.0, graph.movements)
    times = rng.uniform(5.0, 40.0, graph.links)
    crossed = dataclasses.replace(graph, mv_junction_s=crossing, mv_junction_m=10.0 * crossing)
    return crossed.with_link_times(times)  # bounds on the junctions too


def random_network(seed: int, nodes: int = 40, out_degree: float = 2.5) -> Network:
    """A sparse random directed road network: nodes scattered over 3 km, links to random
    other nodes with stated lengths 0.6-1.5 times the chord (some SHORTER than the distance
    between their ends, as in imported networks), random speeds, and a random 70 % of the
    possible turns at each node, all in one signal group."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.0, 3000.0, nodes)
    ys = rng.uniform(0.0, 3000.0, nodes)
    intersections = tuple(
        Intersection(f"n{i}", float(xs[i]), float(ys[i]), True) for i in range(nodes)
    )
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < int(nodes * out_degree):
        a, b = (int(v) for v in rng.integers(0, nodes, 2))
        if a != b:
            pairs.add((a, b))
    links = []
    for a, b in sorted(pairs):
        chord = math.hypot(xs[b] - xs[a], ys[b] - ys[a])
        length = max(1.0, chord * float(rng.uniform(0.6, 1.5)))
        links.append(
            Link(f"n{a}-n{b}", f"n{a}", f"n{b}", length, ANY_TURN, float(rng.uniform(5.0, 30.0)))
        )
    movements: list[Movement] = []
    for node in range(nodes):
        incoming = [link for link in links if link.to_node == f"n{node}"]
        outgoing = [link for link in links if link.from_node == f"n{node}"]
        for source in incoming:
            for target in outgoing:
                if rng.random() < 0.7:
                    movements.append(
                        Movement(
                            f"{source.id}:{target.id}",
                            f"n{node}",
                            source.id,
                            target.id,
                            Turn.THROUGH,
                            "1",
                        )
                    )
    groups = []
    for node in range(nodes):
        served = frozenset(m.id for m in movements if m.intersection_id == f"n{node}")
        if served:
            groups.append(SignalGroup("1", f"n{node}", served))
    return Network(intersections, tuple(links), (), tuple(movements), tuple(groups))


def random_ready(
    graph: CorridorGraph, rng: np.random.Generator, depart_s: float, *, closed: float = 0.0
) -> NDArray[np.float64]:
    """Queue-gone times: 40 % no queue (-inf), the rest spread over the next ten minutes
    (some already in the past), and a fraction ``closed`` of movements closed (+inf)."""
    ready = depart_s + rng.uniform(-60.0, 600.0, graph.movements)
    ready[rng.random(graph.movements) < 0.4] = -np.inf
    if closed:
        ready[rng.random(graph.movements) < closed] = np.inf
    return ready
