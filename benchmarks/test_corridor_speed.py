"""Corridor routing speed: one corridor (A* route, its stop-line times, its green windows) on
city-scale grids and on irregular SUMO networks, against scipy's Dijkstra and our plain-Python
reference on the same graph.

Run: ``.venv/bin/python -m pytest benchmarks/test_corridor_speed.py --benchmark-only -s``.

The queue state is checked when it changes, not per corridor: each round draws a new state and
makes its ``MovementTimes`` (untimed, and reported apart as the update's cost), then times one
corridor on it; the same corridors with plain arrays, which the router checks in full on every
call, are timed in the same run for comparison.

Irregular networks (``irregular_net``): SUMO's own random networks (``netgenerate --rand``,
lane counts at random, traffic lights where ``--tls.guess`` puts them), imported with
``simulator.sumo.read_net``. ``netgenerate --rand`` grows worse than quadratically (10,000
junctions in one piece: 54 s; 100,000 would take hours), so a network is tiles of 2,500
junctions, each a random network of its own, laid out in rows 250 m apart and stitched by 24
two-way roads across every seam, then built by ``netconvert``. Built once into
``$TMPDIR/citybrain-bench`` (10,000 junctions: about 20 s; 100,000: a few minutes).

Queries. "Far apart" means the two stop lines are at least half the grid's side apart in a
straight line (>= 9.9 km on the 100 x 100 grid, whose side is 19.8 km); origins are links with
somewhere to go, destinations links something leads into. The queue state is the corridor
manager's model (``cloud/corridor.py``): every movement can be clear at ``depart + 8 s`` (a
switch to green) plus the flush time of its link's queue; 60 % of links have no queue, the rest
1-20 vehicles over their lanes at 2 s a vehicle plus 2 s start-up. A second, harsher state
(60 % of movements blocked until a random time in the next 15 minutes) is measured and printed,
not asserted.

The 100,000-intersection grid (316 x 316) comes from ``grid_corridor_graph`` below, a NumPy
re-implementation of ``citybrain.simulator.networks.grid``'s layout that builds the
``CorridorGraph`` arrays directly (about 2 s instead of minutes of ``Network`` objects);
the cross-city test first checks it against ``CorridorGraph.from_network(grid(...))`` array for
array on small grids, and the 100 x 100 fixture checks it again at full size.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pytest_benchmark.fixture import BenchmarkFixture
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from citybrain.cloud import kernels
from citybrain.cloud.graph import CorridorGraph
from citybrain.cloud.routing import MovementTimes, Route, Router, Windows
from citybrain.simulator import sumo
from citybrain.simulator.networks import grid

ROOT = Path(__file__).resolve().parents[1]
MEDIAN_TARGET_MS = 1.0
P99_TARGET_MS = 2.0
CROSS_CITY_P99_TARGET_MS = 20.0
IRREGULAR_P99_TARGET_MS = {10_000: 1.0, 100_000: 10.0}
"""Issue 15: p99 per corridor on irregular SUMO networks of that many junctions."""
SWITCH_S = 8.0
"""The corridor manager's assumed time to bring a group to green (SWITCH_ESTIMATE_S)."""
CACHE = Path(tempfile.gettempdir()) / "citybrain-bench"
TILE_JUNCTIONS = 2500
TILE_GAP_M = 250.0
SEAM_ROADS = 24

# -- the grid layout of citybrain.simulator.networks.grid, vectorised --------------------------

VECTOR = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)])  # headings E, W, N, S
OPPOSITE = np.array([1, 0, 3, 2])
LEFT_OF = np.array([2, 3, 1, 0])  # E->N, W->S, N->W, S->E
RIGHT_OF = np.array([3, 2, 0, 1])
GROUPS = (("2", "5"), ("6", "1"), ("4", "7"), ("8", "3"))  # (through and right, left)


def grid_corridor_graph(
    rows: int,
    columns: int,
    *,
    spacing_m: float = 200.0,
    feeder_m: float = 150.0,
    speed_mps: float = 13.9,
) -> CorridorGraph:
    """The ``CorridorGraph`` of ``networks.grid(rows, columns)``, same ids and index order.

    Intersections: grid nodes row by row, then the boundary nodes (south and north of each
    column, then west and east of each row). Links: per boundary node its feeder in and out,
    then per grid node eastward and westward, northward and southward pairs. Movements: per
    link into a grid node, through, left and right where the road goes on.
    """
    n_grid = rows * columns
    row, col = np.divmod(np.arange(n_grid), columns)
    side_c, side_r = np.arange(columns), np.arange(rows)
    inner = np.empty(2 * (rows + columns), dtype=np.int64)
    heading = np.empty_like(inner)
    inner[0 : 2 * columns : 2], heading[0 : 2 * columns : 2] = side_c, 2
    inner[1 : 2 * columns : 2], heading[1 : 2 * columns : 2] = (rows - 1) * columns + side_c, 3
    inner[2 * columns :: 2], heading[2 * columns :: 2] = side_r * columns, 0
    inner[2 * columns + 1 :: 2], heading[2 * columns + 1 :: 2] = side_r * columns + columns - 1, 1
    names = [f"g{r}_{c}" for r in range(rows) for c in range(columns)]
    for c in range(columns):
        names += [f"bS{c}", f"bN{c}"]
    for r in range(rows):
        names += [f"bW{r}", f"bE{r}"]
    node_x = np.concatenate(
        [col * spacing_m, col[inner] * spacing_m - VECTOR[heading, 0] * feeder_m]
    )
    node_y = np.concatenate(
        [row * spacing_m, row[inner] * spacing_m - VECTOR[heading, 1] * feeder_m]
    )
    boundary = n_grid + np.arange(inner.shape[0])
    node = np.arange(n_grid)
    east, north = col + 1 < columns, row + 1 < rows
    keep = np.stack([east, east, north, north], 1)
    start = np.concatenate(
        [
            np.stack([boundary, inner], 1).ravel(),
            np.stack([node, node + 1, node, node + columns], 1)[keep],
        ]
    )
    end = np.concatenate(
        [
            np.stack([inner, boundary], 1).ravel(),
            np.stack([node + 1, node, node + columns, node], 1)[keep],
        ]
    )
    link_heading = np.concatenate(
        [
            np.stack([heading, OPPOSITE[heading]], 1).ravel(),
            np.tile(np.arange(4), (n_grid, 1))[keep],
        ]
    )
    links = start.shape[0]
    length = np.hypot(node_x[end] - node_x[start], node_y[end] - node_y[start])
    out_by = np.full((len(names), 4), -1, dtype=np.int64)
    out_by[start, link_heading] = np.arange(links)
    source = np.repeat(np.arange(links), 3)
    turn = np.tile(np.arange(3), links)
    came = link_heading[source]
    goes = np.where(turn == 0, came, np.where(turn == 1, LEFT_OF[came], RIGHT_OF[came]))
    target = out_by[end[source], goes]
    ok = (end[source] < n_grid) & (target >= 0)
    source, turn, target, came = source[ok], turn[ok], target[ok], came[ok]
    at = end[source]
    network_order = np.empty(source.shape[0], dtype=np.int64)
    network_order[np.lexsort((turn, source, at))] = np.arange(source.shape[0])
    return CorridorGraph.from_arrays(
        link_ids=tuple(
            f"{names[a]}-{names[b]}" for a, b in zip(start.tolist(), end.tolist(), strict=True)
        ),
        link_length=length,
        link_time=length / (np.full(links, speed_mps) * 1.3),
        link_from_node=start.astype(np.int32),
        link_to_node=end.astype(np.int32),
        intersection_ids=tuple(names),
        node_x=node_x.astype(np.float64),
        node_y=node_y.astype(np.float64),
        movement_ids=tuple(
            f"{names[n]}:{'EWNS'[h]}{'TLR'[t]}"
            for n, h, t in zip(at.tolist(), came.tolist(), turn.tolist(), strict=True)
        ),
        mv_from=source.astype(np.int32),
        mv_to=target.astype(np.int32),
        mv_group=[GROUPS[h][t == 1] for h, t in zip(came.tolist(), turn.tolist(), strict=True)],
        mv_order=network_order,
    )


def same_graph(a: CorridorGraph, b: CorridorGraph) -> list[str]:
    """Names of the fields that differ (arrays compared exactly, dtype included)."""
    differ = []
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            equal = x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
        else:
            equal = x == y
        if not equal:
            differ.append(field.name)
    return differ


# -- queries and queue states -----------------------------------------------------------------


def manager_queues(
    graph: CorridorGraph, rng: np.random.Generator, depart_s: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(mv_ready, per-movement flush) as the corridor manager builds them."""
    queue = np.where(rng.random(graph.links) < 0.4, rng.integers(1, 21, graph.links), 0)
    flush_link = np.where(queue > 0, 2.0 + queue / 3.0 * 2.0, 0.0)  # 3 lanes, 2 s a vehicle
    flush = flush_link[graph.mv_from]
    return depart_s + SWITCH_S + flush, flush


def manager_state(
    graph: CorridorGraph, flush: NDArray[np.float64]
) -> tuple[MovementTimes, NDArray[np.float64]]:
    """``manager_queues``' state: ready, checked once per queue update and relative to
    ``now`` (moved there with ``at(now)`` per query, nothing copied or checked again), and the
    flush times the windows read along a route (``windows_along``)."""
    return MovementTimes.ready(graph, SWITCH_S + flush), flush.copy()


def search_workspace(graph: CorridorGraph) -> tuple[NDArray[Any], ...]:
    """The search kernel's own workspace (distances, predecessors, heap keys and values,
    visit marks, route links), as ``Router`` allocates it, to time the kernel alone."""
    return (
        np.empty(graph.links),
        np.empty(graph.links, np.int32),
        np.empty(graph.movements + 1),
        np.empty(graph.movements + 1, np.int32),
        np.zeros(graph.links + 1, np.int64),
        np.empty(graph.links, np.int32),
    )


def windows_along(
    router: Router, route: Route, flush: NDArray[np.float64], depart_s: float
) -> Windows:
    """The route's windows as the corridor manager asks for them: its stop lines' flush times
    and earliest openings (a switch from now), one per stop line."""
    along = route.moves[:-1]
    earliest = np.full(along.shape[0], depart_s + SWITCH_S)
    return router.windows(route, flush[along], earliest, depart_s)


def changed_queues(
    graph: CorridorGraph, rng: np.random.Generator, links: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """New queues on ``links`` random links (as ``manager_queues`` draws them), as the flush
    times of the movements leaving those links."""
    chosen = rng.choice(graph.links, size=links, replace=False)
    queue = np.where(rng.random(links) < 0.4, rng.integers(1, 21, links), 0)
    link_flush = np.where(queue > 0, 2.0 + queue / 3.0 * 2.0, 0.0)
    movements, owner = graph.movements_leaving(chosen)
    return movements, link_flush[owner]


def harsh_ready(
    graph: CorridorGraph, rng: np.random.Generator, depart_s: float
) -> NDArray[np.float64]:
    ready = depart_s + rng.uniform(0.0, 900.0, graph.movements)
    ready[rng.random(graph.movements) < 0.4] = -np.inf
    return ready


def far_pairs(
    graph: CorridorGraph,
    rng: np.random.Generator,
    count: int,
    among: NDArray[np.int64] | None = None,
) -> list[tuple[int, int]]:
    """Origins that lead somewhere, destinations something leads into, >= half a side apart
    (both ``among`` the links given, when given)."""
    leads = np.flatnonzero(np.diff(graph.out_start) > 0)
    entered = np.flatnonzero(np.bincount(graph.mv_to, minlength=graph.links) > 0)
    if among is not None:
        leads, entered = np.intersect1d(leads, among), np.intersect1d(entered, among)
    side = float(graph.link_x.max() - graph.link_x.min())
    pairs: list[tuple[int, int]] = []
    while len(pairs) < count:
        o, d = int(rng.choice(leads)), int(rng.choice(entered))
        gap = np.hypot(graph.link_x[o] - graph.link_x[d], graph.link_y[o] - graph.link_y[d])
        if gap >= side / 2:
            pairs.append((o, d))
    return pairs


def static_link_graph(graph: CorridorGraph) -> csr_matrix:
    """The link graph without queues: edge u -> w weighs w's free-flow time."""
    return csr_matrix(
        (graph.link_time[graph.mv_to], (graph.mv_from, graph.mv_to)),
        shape=(graph.links, graph.links),
    )


def strongly_connected(graph: CorridorGraph) -> NDArray[np.int64]:
    """The links of the largest strongly connected part of the link graph: any two of them
    are reachable from each other (random networks have dead ends and one-way pockets)."""
    _, label = connected_components(static_link_graph(graph), directed=True, connection="strong")
    return np.flatnonzero(label == np.argmax(np.bincount(label))).astype(np.int64)


def irregular_net(out: Path, *, junctions: int, seed: int = 1) -> Path:
    """A SUMO network of ``junctions`` junctions from tiles of SUMO random networks (see the
    module docstring); kept at ``out`` and built only when missing."""
    if out.is_file():
        return out
    tiles = max(1, math.ceil(junctions / TILE_JUNCTIONS))
    columns = math.ceil(math.sqrt(tiles))
    work = Path(tempfile.mkdtemp(prefix=out.stem, dir=out.parent if out.parent.is_dir() else None))
    nodes: list[str] = []
    edges: list[str] = []
    placed: list[tuple[list[str], NDArray[np.float64]]] = []
    x0 = y0 = row_height = 0.0
    for t in range(tiles):
        prefix = work / f"t{t}"
        size = junctions // tiles + (t < junctions % tiles)
        sumo.run_tool(
            [
                str(sumo.require_binary("netgenerate")),
                *("--rand", "--rand.iterations", str(size), "--random-lanenumber"),
                *("--seed", str(seed * 1000 + t), "--prefix", f"t{t}_"),
                *("--plain-output-prefix", str(prefix), "--output-file", f"{prefix}.net.xml"),
            ],
            log=None,
            timeout_s=None,
        )
        tile = ET.parse(f"{prefix}.nod.xml").getroot().findall("node")  # noqa: S314 - netgenerate's
        xy = np.array([(float(n.get("x", 0)), float(n.get("y", 0))) for n in tile])
        if t and t % columns == 0:
            x0, y0, row_height = 0.0, y0 + row_height + TILE_GAP_M, 0.0
        xy += np.array([x0, y0]) - xy.min(0)
        x0 = float(xy[:, 0].max()) + TILE_GAP_M
        row_height = max(row_height, float(xy[:, 1].max()) - y0)
        ids = [str(n.get("id")) for n in tile]
        placed.append((ids, xy))
        nodes += [
            f'<node id="{i}" x="{x:.2f}" y="{y:.2f}"/>' for i, (x, y) in zip(ids, xy, strict=True)
        ]
        edges += [
            f'<edge id="{e.get("id")}" from="{e.get("from")}" to="{e.get("to")}" '
            f'numLanes="{e.get("numLanes")}" speed="{e.get("speed")}"/>'
            for e in ET.parse(f"{prefix}.edg.xml").getroot().findall("edge")  # noqa: S314
        ]

    def seam(a: int, b: int, axis: int) -> None:
        """Two-way roads between the junctions of ``a`` and ``b`` nearest their shared side,
        paired in order along it."""
        (ids_a, xy_a), (ids_b, xy_b) = placed[a], placed[b]
        near_a = np.argsort(-xy_a[:, axis])[:SEAM_ROADS]
        near_b = np.argsort(xy_b[:, axis])[:SEAM_ROADS]
        near_a = near_a[np.argsort(xy_a[near_a, 1 - axis])]
        near_b = near_b[np.argsort(xy_b[near_b, 1 - axis])]
        for k, (i, j) in enumerate(zip(near_a, near_b, strict=True)):
            for way, (u, v) in enumerate(((ids_a[i], ids_b[j]), (ids_b[j], ids_a[i]))):
                edges.append(
                    f'<edge id="seam{a}_{b}_{k}_{way}" from="{u}" to="{v}" numLanes="2" '
                    'speed="13.89"/>'
                )

    for t in range(tiles):
        if t % columns + 1 < columns and t + 1 < tiles:
            seam(t, t + 1, 0)
        if t + columns < tiles:
            seam(t, t + columns, 1)
    (work / "all.nod.xml").write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n")
    (work / "all.edg.xml").write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    built = work / out.name
    sumo.run_tool(
        [
            str(sumo.require_binary("netconvert")),
            *("--node-files", str(work / "all.nod.xml"), "--edge-files", str(work / "all.edg.xml")),
            *("--tls.guess", "--output-file", str(built)),
        ],
        log=work / "netconvert.log",
        timeout_s=None,
    )
    built.replace(out)  # whole or not at all
    shutil.rmtree(work)
    return out


def load_reference() -> ModuleType:
    path = ROOT / "tests" / "cloud" / "reference.py"
    spec = importlib.util.spec_from_file_location("corridor_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timed(call: Callable[..., Any], *args: Any, repeat: int = 1, **kwargs: Any) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``call(*args, **kwargs)``."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call(*args, **kwargs)
        out.append(time.perf_counter() - started)
    return out


def run_rounds(
    benchmark: BenchmarkFixture,
    target: Callable[..., Any],
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    rounds: int,
    warmup: int,
) -> NDArray[np.float64]:
    """One call per round, each on the arguments ``setup`` draws (untimed); the round times."""
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=warmup
    )
    stats = benchmark.stats
    assert stats is not None
    return np.array(stats.stats.data, dtype=np.float64)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def city() -> CorridorGraph:
    """The 100 x 100 grid (10,000 signalized intersections), built the slow, real way."""
    graph = CorridorGraph.from_network(grid(100, 100).network)
    assert same_graph(graph, grid_corridor_graph(100, 100)) == []
    return graph


# -- benchmarks -------------------------------------------------------------------------------


def test_corridor_100x100(benchmark: BenchmarkFixture, city: CorridorGraph) -> None:
    graph = city
    router = Router(graph)
    rng = np.random.default_rng(2026)
    pairs = far_pairs(graph, rng, 400)
    link_ids = graph.link_ids
    cursor = iter(range(10**9))

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        o, d = pairs[next(cursor) % len(pairs)]
        depart = float(rng.uniform(0.0, 3600.0))
        state = manager_state(graph, manager_queues(graph, rng, 0.0)[1])
        offset = float(rng.uniform(0.0, graph.link_length[o]))
        return (link_ids[o], offset, link_ids[d], depart, *state), {}

    def corridor(
        origin: str,
        offset: float,
        destination: str,
        depart: float,
        ready: MovementTimes,
        flush: NDArray[np.float64],
    ) -> tuple[Route, Windows]:
        route = router.route(origin, offset, destination, depart, ready.at(depart))
        return route, windows_along(router, route, flush, depart)

    data = run_rounds(benchmark, corridor, setup, rounds=len(pairs), warmup=3)
    median, p99 = float(np.median(data)), float(np.percentile(data, 99))

    # what the landmarks buy: the same queries with the straight-line bound alone
    bare = Router(
        dataclasses.replace(
            graph,
            landmark_nodes=np.zeros(0, np.int32),
            lm_dist=np.zeros((graph.links, 0)),
        )
    )
    straight: list[float] = []
    harsh: list[float] = []
    for o, d in pairs[:100]:
        depart = float(rng.uniform(0.0, 3600.0))
        ready, _ = manager_queues(graph, rng, depart)
        straight += timed(bare.route, link_ids[o], 0.0, link_ids[d], depart, ready)
        tough = harsh_ready(graph, rng, depart)
        harsh += timed(router.route, link_ids[o], 0.0, link_ids[d], depart, tough)

    # scipy: full single-source Dijkstra on the static link graph
    static = static_link_graph(graph)
    scipy_s = [timed(dijkstra, static, directed=True, indices=o)[0] for o, _ in pairs[:15]]
    # plain Python: the reference search (same A*, same landmarks) plus route_times
    ref = load_reference()
    plain = ref.plain(graph)

    def reference_corridor(o: int, d: int, ready: list[float]) -> None:
        links, moves, _ = ref.search(plain, o, 0.0, d, 0.0, ready, use_astar=True)
        ref.route_times(plain, links, moves, 0.0, 0.0, ready)

    python_s: list[float] = []
    numba_s: list[float] = []
    work = search_workspace(graph)
    for o, d in pairs[:15]:
        ready = manager_queues(graph, rng, 0.0)[0]
        python_s += timed(reference_corridor, o, d, ready.tolist())
        # the same search in the kernel, without the router's validation and route objects
        numba_s += timed(
            kernels.route_search, o, 0.0, d, 0.0, graph.out_start, graph.mv_to, graph.mv_junction_s,
            graph.link_time, graph.link_length, graph.link_x, graph.link_y, graph.max_speed,
            graph.lm_dist, ready, 0.0, True, *work,
        )  # fmt: skip
    first_call = fresh_process_first_call()

    info = {
        "pairs": len(pairs),
        "median_ms": ms(median),
        "p99_ms": ms(p99),
        "straight_line_only_median_ms": ms(float(np.median(straight))),
        "straight_line_only_p99_ms": ms(float(np.percentile(straight, 99))),
        "harsh_queues_route_median_ms": ms(float(np.median(harsh))),
        "harsh_queues_route_p99_ms": ms(float(np.percentile(harsh, 99))),
        "scipy_dijkstra_median_ms": ms(float(np.median(scipy_s))),
        "ours_over_scipy": round(median / float(np.median(scipy_s)), 4),
        "python_reference_median_ms": ms(float(np.median(python_s))),
        "ours_over_python": round(median / float(np.median(python_s)), 4),
        "search_kernel_median_ms": ms(float(np.median(numba_s))),
        "search_python_over_numba": round(float(np.median(python_s) / np.median(numba_s)), 1),
        **first_call,
    }
    benchmark.extra_info.update(info)
    print(
        f"\n100x100 grid ({graph.links} links, {graph.movements} movements), {len(pairs)} "
        f"far-apart corridors (route A* + route_times + windows): median {info['median_ms']} ms, "
        f"p99 {info['p99_ms']} ms"
        f"\n  straight-line bound only: median {info['straight_line_only_median_ms']} ms, "
        f"p99 {info['straight_line_only_p99_ms']} ms (route only)"
        f"\n  harsh queues (60 % blocked up to 15 min): median "
        f"{info['harsh_queues_route_median_ms']} ms, p99 {info['harsh_queues_route_p99_ms']} ms"
        f" (route only)"
        f"\n  scipy dijkstra(indices=origin): median {info['scipy_dijkstra_median_ms']} ms, "
        f"ours/scipy = {info['ours_over_scipy']}"
        f"\n  plain-Python reference (search + route_times): median "
        f"{info['python_reference_median_ms']} ms, ours/python = {info['ours_over_python']}; "
        f"the search kernel alone {info['search_kernel_median_ms']} ms, "
        f"x{info['search_python_over_numba']} over Python"
        f"\n  fresh process, first route: {info['first_call_compile_s']} s compiling into an "
        f"empty cache, {info['first_call_cached_s']} s loading the cache"
    )
    assert median * 1e3 <= MEDIAN_TARGET_MS, f"median {median * 1e3:.3f} ms > {MEDIAN_TARGET_MS}"
    assert p99 * 1e3 <= P99_TARGET_MS, f"p99 {p99 * 1e3:.3f} ms > {P99_TARGET_MS}"
    assert first_call["first_call_cached_s"] < first_call["first_call_compile_s"] / 3


def test_cross_city_316x316(benchmark: BenchmarkFixture) -> None:
    """About 100,000 intersections (316 x 316 = 99,856), south-west corner to north-east."""
    for rows, columns in ((1, 1), (1, 5), (4, 1), (5, 7), (9, 6)):  # the generator is faithful
        expected = CorridorGraph.from_network(grid(rows, columns).network)
        assert same_graph(expected, grid_corridor_graph(rows, columns)) == []
    started = time.perf_counter()
    graph = grid_corridor_graph(316, 316)
    build_s = time.perf_counter() - started
    router = Router(graph)
    rng = np.random.default_rng(7)
    origin, destination = "bW0-g0_0", "g315_315-bE315"

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return manager_state(graph, manager_queues(graph, rng, 0.0)[1]), {}

    def corridor(ready: MovementTimes, flush: NDArray[np.float64]) -> tuple[Route, Windows]:
        route = router.route(origin, 0.0, destination, 0.0, ready)
        return route, windows_along(router, route, flush, 0.0)

    data = run_rounds(benchmark, corridor, setup, rounds=30, warmup=2)
    median, p99 = float(np.median(data)), float(np.percentile(data, 99))
    route, _ = corridor(*setup()[0])
    static = static_link_graph(graph)
    o = graph.link_index[origin]
    scipy_s = timed(dijkstra, static, directed=True, indices=o, repeat=3)
    ready, _ = manager_queues(graph, rng, 0.0)
    bare = Router(
        dataclasses.replace(
            graph,
            landmark_nodes=np.zeros(0, np.int32),
            lm_dist=np.zeros((graph.links, 0)),
        )
    )
    straight = timed(bare.route, origin, 0.0, destination, 0.0, ready, repeat=3)
    info = {
        "intersections": len(graph.intersection_ids),
        "links": graph.links,
        "movements": graph.movements,
        "build_s": round(build_s, 2),
        "route_links": len(route.links),
        "median_ms": ms(median),
        "p99_ms": ms(p99),
        "straight_line_only_median_ms": ms(float(np.median(straight))),
        "scipy_dijkstra_median_ms": ms(float(np.median(scipy_s))),
        "ours_over_scipy": round(median / float(np.median(scipy_s)), 4),
    }
    benchmark.extra_info.update(info)
    print(
        f"\n316x316 grid ({info['intersections']} intersections, {graph.links} links, "
        f"{graph.movements} movements; arrays built in {info['build_s']} s), corner to corner "
        f"({len(route.links)} links): median {info['median_ms']} ms, p99 {info['p99_ms']} ms"
        f"\n  straight-line bound only: median {info['straight_line_only_median_ms']} ms"
        f"\n  scipy dijkstra(indices=origin): median {info['scipy_dijkstra_median_ms']} ms, "
        f"ours/scipy = {info['ours_over_scipy']}"
    )
    assert p99 * 1e3 <= CROSS_CITY_P99_TARGET_MS, f"p99 {p99 * 1e3:.1f} ms"


SUMO_TOOLS = pytest.mark.skipif(
    any(sumo.find_binary(tool) is None for tool in ("netgenerate", "netconvert")),
    reason="needs the SUMO tools netgenerate and netconvert (pip install eclipse-sumo)",
)


@SUMO_TOOLS
@pytest.mark.parametrize("junctions", [10_000, 100_000])
def test_corridor_irregular_sumo(benchmark: BenchmarkFixture, junctions: int) -> None:
    """Issue 15's targets: p99 per corridor <= 1 ms on 10,000 junctions, <= 10 ms on 100,000,
    against scipy's Dijkstra on the same graph in the same run (gated on CPU time, see below)."""
    started = time.perf_counter()
    path = irregular_net(CACHE / f"irregular{junctions}.net.xml", junctions=junctions)
    graph = CorridorGraph.from_network(sumo.read_net(path).road.network)
    build_s = time.perf_counter() - started
    router = Router(graph)
    rng = np.random.default_rng(15)
    rounds = 400 if junctions <= 10_000 else 200
    pairs = far_pairs(graph, rng, rounds, among=strongly_connected(graph))
    cursor = iter(range(10**9))
    _, first_flush = manager_queues(graph, rng, 0.0)
    manager_state(graph, first_flush)  # the first call loads the check's kernel
    began = time.perf_counter()
    ready, flush = manager_state(graph, first_flush)
    state_build_s = time.perf_counter() - began
    reporting = max(1, graph.links // 100)
    changes: list[tuple[float, NDArray[np.int64], NDArray[np.float64]]] = []
    updates: list[float] = []
    cpu: list[float] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        """1 % of the links report a new queue between two corridors: their movements are
        updated (and checked) in the state; the rest of it stays as it was, checked."""
        o, d = pairs[next(cursor) % len(pairs)]
        depart = float(rng.uniform(0.0, 3600.0))
        movements, values = changed_queues(graph, rng, reporting)
        changes.append((depart, movements, values))
        began = time.perf_counter()
        ready.update(movements, SWITCH_S + values)
        flush[movements] = values
        updates.append(time.perf_counter() - began)
        offset = float(rng.uniform(0.0, graph.link_length[o]))
        return (graph.link_ids[o], offset, graph.link_ids[d], depart, ready, flush), {}

    def corridor(
        origin: str,
        offset: float,
        destination: str,
        depart: float,
        ready: MovementTimes,
        flush: NDArray[np.float64],
    ) -> tuple[Route, Windows]:
        began = time.thread_time()
        route = router.route(origin, offset, destination, depart, ready.at(depart))
        windows = windows_along(router, route, flush, depart)
        cpu.append(time.thread_time() - began)
        return route, windows

    data = run_rounds(benchmark, corridor, setup, rounds=rounds, warmup=3)
    median, p99 = float(np.median(data)), float(np.percentile(data, 99))
    cpu_median, cpu_p99 = float(np.median(cpu[3:])), float(np.percentile(cpu[3:], 99))

    # the same corridors with plain arrays, which the router checks in full on every call
    plain: list[float] = []
    plain_flush = first_flush.copy()
    for i, (depart, movements, values) in enumerate(changes):
        plain_flush[movements] = values
        o, d = pairs[i % len(pairs)]
        plain_ready = depart + SWITCH_S + plain_flush
        began = time.perf_counter()
        route = router.route(graph.link_ids[o], 0.0, graph.link_ids[d], depart, plain_ready)
        windows_along(router, route, plain_flush, depart)
        if i >= 3:
            plain.append(time.perf_counter() - began)
    # the search kernel alone, and scipy's full single-source Dijkstra on the static graph
    search: list[float] = []
    kernel_ready = manager_queues(graph, rng, 0.0)[0]
    work = search_workspace(graph)
    for o, d in pairs[:100]:
        search += timed(
            kernels.route_search, o, 0.0, d, 0.0, graph.out_start, graph.mv_to, graph.mv_junction_s,
            graph.link_time, graph.link_length, graph.link_x, graph.link_y, graph.max_speed,
            graph.lm_dist, kernel_ready, 0.0, True,
            *work,
        )  # fmt: skip
    static = static_link_graph(graph)
    scipy_s = [timed(dijkstra, static, directed=True, indices=o)[0] for o, _ in pairs[:15]]
    scipy_median = float(np.median(scipy_s))
    info = {
        "junctions": len(graph.intersection_ids),
        "links": graph.links,
        "movements": graph.movements,
        "import_s": round(build_s, 1),
        "pairs": len(pairs),
        "median_ms": ms(median),
        "p99_ms": ms(p99),
        "cpu_median_ms": ms(cpu_median),
        "cpu_p99_ms": ms(cpu_p99),
        "load_average": round(os.getloadavg()[0], 2),
        "plain_arrays_median_ms": ms(float(np.median(plain))),
        "plain_arrays_p99_ms": ms(float(np.percentile(plain, 99))),
        "state_build_ms": ms(state_build_s),
        "state_update_links": reporting,
        "state_update_median_ms": ms(float(np.median(updates))),
        "search_kernel_median_ms": ms(float(np.median(search))),
        "scipy_dijkstra_median_ms": ms(scipy_median),
        "ours_over_scipy": round(median / scipy_median, 4),
        "ours_p99_over_scipy": round(p99 / scipy_median, 4),
    }
    benchmark.extra_info.update(info)
    print(
        f"\nirregular SUMO network, {info['junctions']} junctions ({graph.links} links, "
        f"{graph.movements} movements; import {info['import_s']} s), {len(pairs)} far-apart "
        f"corridors on checked state: median {info['median_ms']} ms, p99 {info['p99_ms']} ms "
        f"(CPU: median {info['cpu_median_ms']} ms, p99 {info['cpu_p99_ms']} ms; load average "
        f"{info['load_average']} on {os.cpu_count()} cores)"
        f"\n  plain arrays, checked per call: median {info['plain_arrays_median_ms']} ms, "
        f"p99 {info['plain_arrays_p99_ms']} ms; search kernel alone median "
        f"{info['search_kernel_median_ms']} ms"
        f"\n  state: built and checked once in {info['state_build_ms']} ms; between corridors "
        f"{reporting} links' new queues updated and checked, median "
        f"{info['state_update_median_ms']} ms"
        f"\n  scipy dijkstra(indices=origin): median {info['scipy_dijkstra_median_ms']} ms, "
        f"ours/scipy = {info['ours_over_scipy']} (p99: {info['ours_p99_over_scipy']})"
    )
    # The gate is the CPU time the corridor took: on this shared 2-core machine the wall p99
    # is the other jobs' (a corridor preempted once costs a scheduler slice), printed above.
    target = IRREGULAR_P99_TARGET_MS[junctions]
    assert cpu_p99 * 1e3 <= target, f"CPU p99 {cpu_p99 * 1e3:.3f} ms > {target} ms"


FIRST_CALL = textwrap.dedent(
    """
    import json, time
    import numpy as np
    from citybrain.cloud.graph import CorridorGraph
    from citybrain.cloud.routing import Router
    from citybrain.simulator.networks import grid

    graph = CorridorGraph.from_network(grid(3, 3).network)
    router = Router(graph)
    ready = np.full(graph.movements, -np.inf)
    started = time.perf_counter()
    route = router.route("bW0-g0_0", 0.0, "g2_2-bE2", 0.0, ready)
    router.windows(route, np.zeros(len(route.links) - 1), np.zeros(len(route.links) - 1), 0.0)
    print(json.dumps(time.perf_counter() - started))
    """
)


def fresh_process_first_call() -> dict[str, float]:
    """First route + windows in a new interpreter: compiling into an empty Numba cache, then
    again in another new interpreter that finds the cache (``cache=True``)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for name in ("first_call_compile_s", "first_call_cached_s"):
            done = subprocess.run(  # noqa: S603 - our own interpreter and script
                [sys.executable, "-c", FIRST_CALL],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            out[name] = round(float(done.stdout.strip().splitlines()[-1]), 3)
    return out
