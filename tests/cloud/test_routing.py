"""Corridor routing: kernels against plain-Python references, scipy and brute force, on
generated grids with random link times and on random sparse networks; the validating layer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from citybrain.cloud import kernels
from citybrain.cloud.graph import DEFAULT_LANDMARKS, CorridorGraph, default_landmarks
from citybrain.cloud.routing import (
    NOT_HELD,
    HeldSpeed,
    MovementTimes,
    Route,
    Router,
    UnreachableError,
)
from citybrain.models.errors import ValidationError

from . import reference as ref
from .cases import grid_graph, random_network, random_ready, random_times_graph


class Workspace:
    """The arrays ``route_search`` needs, for calling the kernel directly."""

    def __init__(self, graph: CorridorGraph, heap: int | None = None) -> None:
        self.graph = graph
        self.dist = np.empty(graph.links, dtype=np.float64)
        self.prev = np.empty(graph.links, dtype=np.int32)
        size = graph.movements + 1 if heap is None else heap
        self.keys = np.empty(size, dtype=np.float64)
        self.vals = np.empty(size, dtype=np.int32)
        self.visited = np.zeros(graph.links + 1, dtype=np.int64)
        self.out = np.empty(graph.links, dtype=np.int32)
        self.n = 0

    def args(
        self,
        origin: int,
        offset: float,
        destination: int,
        depart: float,
        ready: NDArray[np.float64],
        use_astar: bool,
        link_time: NDArray[np.float64] | None = None,
        ready_base: float = 0.0,
    ) -> tuple[Any, ...]:
        """``route_search``'s arguments, in order."""
        g = self.graph
        return (
            origin, offset, destination, depart, g.out_start, g.mv_to, g.mv_junction_s,
            g.link_time if link_time is None else link_time, g.link_length, g.link_x, g.link_y,
            g.max_speed, g.lm_dist, ready, ready_base,
            use_astar, self.dist, self.prev, self.keys, self.vals, self.visited, self.out,
        )  # fmt: skip

    def search(
        self,
        origin: int,
        offset: float,
        destination: int,
        depart: float,
        ready: NDArray[np.float64],
        *,
        use_astar: bool,
        link_time: NDArray[np.float64] | None = None,
    ) -> tuple[list[int], float] | None:
        n = kernels.route_search(
            *self.args(origin, offset, destination, depart, ready, use_astar, link_time)
        )
        assert n != kernels.BAD_ARGUMENTS
        if n == kernels.UNREACHABLE:
            return None
        self.n = n
        return self.out[:n].tolist(), float(self.dist[destination])

    def timed(
        self, offset: float, depart: float, ready: NDArray[np.float64]
    ) -> tuple[list[int], list[float], list[float], float]:
        """Moves (from ``prev_mv``) and ``route_times`` of the route the last search found."""
        n, links = self.n, self.out[: self.n]
        moves = np.empty(n, dtype=np.int32)
        kernels.route_moves_of(links, n, self.prev, moves)
        line, wait = np.empty(n), np.empty(n)
        g = self.graph
        arrival = kernels.route_times(
            links, n, moves, offset, depart, g.link_time, g.link_length, g.mv_junction_s,
            g.mv_junction_m, ready, 0.0, 1.0, *NOT_HELD, line, wait,
        )  # fmt: skip
        return moves.tolist(), line.tolist(), wait.tolist(), arrival


def graphs() -> Iterator[tuple[str, CorridorGraph]]:
    yield "grid-6x7-random-times", random_times_graph(6, 7, seed=1)
    yield "grid-12x9-random-times", random_times_graph(12, 9, seed=2)
    yield "grid-6x7-straight-line-only", random_times_graph(6, 7, seed=5, landmarks=0)
    yield "grid-4x4-uniform", grid_graph(4, 4)
    for seed in (3, 4):
        yield f"random-sparse-{seed}", CorridorGraph.from_network(random_network(seed))
    yield (
        "random-sparse-5-two-landmarks",
        CorridorGraph.from_network(random_network(5), landmarks=2),
    )


GRAPHS = dict(graphs())


def queries(
    graph: CorridorGraph, seed: int, count: int
) -> Iterator[tuple[int, float, int, float, NDArray[np.float64]]]:
    """Random (origin, offset, destination, depart, mv_ready), a fresh queue state every
    tenth query, a few closed movements, and origin == destination now and then."""
    rng = np.random.default_rng(seed)
    ready = random_ready(graph, rng, 0.0, closed=0.03)
    for q in range(count):
        origin = int(rng.integers(graph.links))
        destination = origin if q % 17 == 0 else int(rng.integers(graph.links))
        offset = float(rng.uniform(0.0, graph.link_length[origin]))
        depart = float(rng.uniform(0.0, 300.0))
        if q % 10 == 0:
            ready = random_ready(graph, rng, depart, closed=0.03)
        yield origin, offset, destination, depart, ready


# -- search kernel against the reference ---------------------------------------------------


@pytest.mark.parametrize("name", list(GRAPHS))
def test_search_matches_reference_exactly(name: str) -> None:
    """Same routes (tie-breaking included) and bit-equal arrivals, Dijkstra and A*; A* and
    Dijkstra agree on the arrival; route_times along the route gives the search's label."""
    graph = GRAPHS[name]
    plain = ref.plain(graph)
    work = Workspace(graph)  # one workspace for every query: the stamps must isolate them
    reachable = 0
    for origin, offset, destination, depart, ready in queries(graph, seed=7, count=120):
        ready_list = ready.tolist()
        arrivals = []
        for astar in (False, True):
            got = work.search(origin, offset, destination, depart, ready, use_astar=astar)
            want = ref.search(
                plain, origin, offset, destination, depart, ready_list, use_astar=astar
            )
            if want is None:
                assert got is None
                continue
            assert got is not None
            links, moves, arrival = want
            assert got[0] == links
            assert got[1] == arrival
            line, wait, timed = ref.route_times(plain, links, moves, offset, depart, ready_list)
            assert timed == arrival
            assert work.timed(offset, depart, ready) == (moves, line, wait, arrival)
            arrivals.append(arrival)
        if arrivals:
            reachable += 1
            # A* may trade up to TIE_WEIGHT of the remaining time for speed (kernels.py)
            assert arrivals[0] == pytest.approx(arrivals[1], rel=kernels.TIE_WEIGHT, abs=1e-9)
            assert arrivals[1] >= arrivals[0] - 1e-9
    assert reachable >= 20


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_label_setting_is_exact_against_brute_force(seed: int) -> None:
    """On tiny random networks, no simple route beats the search (FIFO: no revisits needed)."""
    graph = CorridorGraph.from_network(random_network(seed, nodes=7, out_degree=2.0))
    plain = ref.plain(graph)
    work = Workspace(graph)
    checked = 0
    for origin, offset, destination, depart, ready in queries(graph, seed=seed, count=60):
        best = ref.brute_force_arrival(plain, origin, offset, destination, depart, ready.tolist())
        for astar in (False, True):
            got = work.search(origin, offset, destination, depart, ready, use_astar=astar)
            if math.isinf(best):
                assert got is None
            else:
                assert got is not None
                assert got[1] == pytest.approx(best, rel=kernels.TIE_WEIGHT, abs=1e-9)
                checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", ["grid-12x9-random-times", "random-sparse-3", "random-sparse-4"])
def test_no_waiting_equals_scipy_dijkstra(name: str) -> None:
    """With no queues anywhere the search is a static shortest path: scipy's on the link graph
    (edge u -> w weighs its junction's time and w's) plus the partial origin link."""
    graph = GRAPHS[name]
    weights = csr_matrix(
        (graph.mv_junction_s + graph.link_time[graph.mv_to], (graph.mv_from, graph.mv_to)),
        shape=(graph.links, graph.links),
    )
    free = np.full(graph.movements, -np.inf)
    work = Workspace(graph)
    rng = np.random.default_rng(5)
    origins = rng.integers(graph.links, size=25)
    table = dijkstra(weights, directed=True, indices=origins)
    for row, origin in enumerate(origins.tolist()):
        offset = float(rng.uniform(0.0, graph.link_length[origin]))
        start = float(graph.link_length[origin] - offset) / float(
            graph.link_length[origin] / graph.link_time[origin]
        )
        for destination in rng.integers(graph.links, size=20).tolist():
            for astar in (False, True):
                got = work.search(origin, offset, destination, 100.0, free, use_astar=astar)
                static = table[row, destination]
                if np.isinf(static):
                    assert got is None
                else:
                    assert got is not None
                    assert got[1] == pytest.approx(100.0 + start + static, rel=1e-9)


def bounds_to(graph: CorridorGraph, destination: int) -> NDArray[np.float64]:
    """The A* bound of every link, computed with NumPy the way the kernel does it."""
    h: NDArray[np.float64] = (
        np.hypot(graph.link_x - graph.link_x[destination], graph.link_y - graph.link_y[destination])
        / graph.max_speed
    )
    here = graph.lm_dist
    there = graph.lm_dist[destination]
    with np.errstate(invalid="ignore"):
        ahead = there[0::2] - here[:, 0::2]
        behind = here[:, 1::2] - there[1::2]
    for bound in (*ahead.T, *behind.T):
        h = np.fmax(h, bound)  # fmax skips NaN (inf - inf: no information)
    h[destination] = 0.0
    return h


@pytest.mark.parametrize(
    "name",
    [
        "grid-12x9-random-times",
        "grid-6x7-straight-line-only",
        "random-sparse-4",
        "grid-4x4-uniform",
    ],
)
def test_bound_is_admissible_and_consistent(name: str) -> None:
    """From every link the bound is at most the true free-flow time to the destination
    (scipy on the reversed link graph, each junction crossed included), infinite only where
    there is truly no way, and it never drops by more than a movement's junction and target
    link's time along it."""
    graph = GRAPHS[name]
    step = graph.mv_junction_s + graph.link_time[graph.mv_to]
    reverse = csr_matrix((step, (graph.mv_to, graph.mv_from)), shape=(graph.links, graph.links))
    for destination in range(0, graph.links, max(1, graph.links // 9)):
        to_go = dijkstra(reverse, directed=True, indices=[destination])[0]
        h = bounds_to(graph, destination)
        finite = np.isfinite(to_go)
        assert np.all(h[finite] <= to_go[finite] * (1 + 1e-12) + 1e-9)
        assert np.all(~finite[np.isinf(h)])
        u, w = graph.mv_from, graph.mv_to
        live = np.isfinite(h[w])
        assert np.all(h[u][live] <= step[live] + h[w][live] + 1e-9)


@pytest.mark.parametrize("name", ["grid-12x9-random-times", "random-sparse-4"])
def test_landmark_bound_reaches_the_time_to_a_landmark(name: str) -> None:
    """The landmark table is on the search's own link graph: toward a link into a landmark
    intersection no link's bound is below its free-flow time to the nearest link into that
    intersection, each movement's junction and every missing turn included (a table on the
    intersection graph falls short by each junction's difference from the least one)."""
    graph = GRAPHS[name]
    assert np.any(graph.mv_junction_s > 0.0)
    step = graph.mv_junction_s + graph.link_time[graph.mv_to]
    reverse = csr_matrix((step, (graph.mv_to, graph.mv_from)), shape=(graph.links, graph.links))
    for landmark in graph.landmark_nodes:
        entering = np.flatnonzero(graph.link_to_node == landmark)
        nearest = dijkstra(reverse, directed=True, indices=entering, min_only=True)
        for destination in entering:
            to_go = dijkstra(reverse, directed=True, indices=[destination])[0]
            h = bounds_to(graph, int(destination))
            finite = np.isfinite(to_go)
            assert np.all(h[finite] >= nearest[finite] * (1 - 1e-12) - 1e-9)
            assert np.all(h[finite] <= to_go[finite] * (1 + 1e-12) + 1e-9)


def test_landmarks_make_astar_settle_little_more_than_the_route() -> None:
    """Corner to corner on a uniform grid every staircase route is shortest: the straight-line
    bound makes A* settle about every link on the way, the landmarks only the route's
    neighbourhood; Dijkstra settles them all. Same arrival every time."""
    free = np.full(grid_graph(12, 12).movements, -np.inf)
    settled = {}
    arrival = {}
    for landmarks, astar in ((8, True), (0, True), (8, False)):
        graph = grid_graph(12, 12, landmarks)
        work = Workspace(graph)
        before = int(work.visited[-1])
        found = work.search(
            graph.link_index["bW0-g0_0"], 0.0, graph.link_index["g11_11-bE11"], 0.0, free,
            use_astar=astar,
        )  # fmt: skip
        assert found is not None
        settled[landmarks, astar] = int(np.count_nonzero(work.visited[:-1] == before + 3))
        arrival[landmarks, astar] = found[1]
        route_length = len(found[0])
    assert settled[8, True] <= 2 * route_length
    assert settled[0, True] > 10 * route_length
    assert settled[8, False] > settled[0, True] / 2
    assert arrival[8, True] == pytest.approx(arrival[8, False], rel=kernels.TIE_WEIGHT)
    assert arrival[0, True] == pytest.approx(arrival[8, False], rel=kernels.TIE_WEIGHT)


def test_search_kernel_refuses_bad_arguments_without_crashing() -> None:
    graph = GRAPHS["grid-4x4-uniform"]
    free = np.full(graph.movements, -np.inf)
    work = Workspace(graph)
    for origin, destination in ((-1, 0), (graph.links, 0), (0, -5), (0, graph.links)):
        n = kernels.route_search(*work.args(origin, 0.0, destination, 0.0, free, True))
        assert n == kernels.BAD_ARGUMENTS
    far = graph.link_index["g3_3-bN3"]
    origin = graph.link_index["bS0-g0_0"]
    tiny = Workspace(graph, heap=2)
    assert kernels.route_search(*tiny.args(origin, 0.0, far, 0.0, free, False)) == -2
    assert kernels.route_search(*work.args(origin, math.nan, far, 0.0, free, False)) == -2
    args = list(work.args(origin, 0.0, far, 0.0, free, True))
    args[12] = graph.lm_dist[:-1]  # landmark table one link short
    assert kernels.route_search(*args) == -2
    args = list(work.args(origin, 0.0, far, 0.0, free, True))
    args[12] = graph.lm_dist[:, :-1]  # a landmark's second column missing
    assert kernels.route_search(*args) == -2
    args = list(work.args(origin, 0.0, far, 0.0, free, True))
    args[6] = graph.mv_junction_s[:-1]  # one junction short
    assert kernels.route_search(*args) == -2
    args = list(work.args(origin, 0.0, far, 0.0, free[:-1], True))  # one movement short
    assert kernels.route_search(*args) == -2
    hops = np.empty(2, np.int32)
    for links in ([0, graph.links], [-1, 0], []):
        route = np.array(links, np.int32)
        assert kernels.moves_along(route, len(links), graph.out_start, graph.mv_to, hops) == -2
    out = np.empty(3)
    assert math.isnan(
        kernels.route_times(
            np.array([0], np.int32), 0, np.array([-1], np.int32), 0.0, 0.0,
            graph.link_time, graph.link_length, graph.mv_junction_s, graph.mv_junction_m,
            free, 0.0, 1.0, *NOT_HELD, out, out,
        )
    )  # fmt: skip
    assert math.isnan(
        kernels.route_times(
            np.array([0], np.int32), 1, np.array([-1], np.int32), 0.0, 0.0,
            graph.link_time, graph.link_length, graph.mv_junction_s[:-1], graph.mv_junction_m,
            free, 0.0, 1.0, *NOT_HELD, out, out,
        )
    )  # fmt: skip


def test_count_outside_finds_nan_and_out_of_range() -> None:
    values = np.array([0.0, 1.0, -np.inf, np.inf, 5.0])
    assert kernels.count_outside(values, -np.inf, np.inf) == 0
    assert kernels.count_outside(values, 0.0, 5.0) == 2
    values[1] = np.nan
    assert kernels.count_outside(values, -np.inf, np.inf) == 1
    assert kernels.count_outside(np.zeros(0), 0.0, 1.0) == 0


def test_stamps_replace_clearing() -> None:
    """Each query bumps the stamp counter by two; nothing is cleared between queries, yet a
    query gives the same answer whatever ran before it."""
    graph = GRAPHS["random-sparse-3"]
    rng = np.random.default_rng(1)
    ready = random_ready(graph, rng, 0.0)
    cases = [(int(o), int(d)) for o, d in rng.integers(graph.links, size=(40, 2))]
    shared = Workspace(graph)
    first = [shared.search(o, 0.0, d, 0.0, ready, use_astar=True) for o, d in cases]
    assert shared.visited[-1] == 2 * len(cases)
    again = [shared.search(o, 0.0, d, 0.0, ready, use_astar=True) for o, d in reversed(cases)]
    fresh = [Workspace(graph).search(o, 0.0, d, 0.0, ready, use_astar=True) for o, d in cases]
    assert first == fresh == again[::-1]


# -- route_times and windows kernels -------------------------------------------------------


def test_route_times_and_windows_kernels_match_reference() -> None:
    rng = np.random.default_rng(21)
    moves_total = 50
    for _ in range(200):
        n = int(rng.integers(1, 12))
        links = rng.integers(0, 30, n).astype(np.int32)
        moves = rng.integers(0, moves_total, n).astype(np.int32)
        moves[-1] = -1
        link_time = rng.uniform(3.0, 30.0, 30)
        link_length = rng.uniform(50.0, 400.0, 30)
        # junctions crossed in 0-6 s, or in no time (links node to node)
        junction_s = rng.uniform(0.0, 6.0, moves_total) * float(rng.random() < 0.7)
        junction_m = junction_s * rng.uniform(5.0, 15.0, moves_total)
        ready = rng.uniform(0.0, 300.0, moves_total)
        ready[rng.random(moves_total) < 0.3] = -np.inf
        base = float(rng.choice([0.0, rng.uniform(-100.0, 100.0)]))  # the kernels add it
        offset = float(rng.uniform(0.0, link_length[links[0]]))
        depart = float(rng.uniform(0.0, 100.0))
        line = np.empty(n)
        wait = np.empty(n)
        pace = float(rng.choice([1.0, rng.uniform(0.5, 4.0)]))  # a vehicle slower or faster
        # behind traffic for a while, or not (exactly today's times when not)
        held = (float(rng.uniform(1.0, 30.0)), depart + float(rng.uniform(-20.0, 200.0)))
        held = held if rng.random() < 0.6 else NOT_HELD
        arrival = kernels.route_times(
            links, n, moves, offset, depart, link_time, link_length, junction_s, junction_m,
            ready, base, pace, *held, line, wait,
        )  # fmt: skip
        plain = ref.PlainGraph(
            [], link_time.tolist(), link_length.tolist(), junction_s.tolist(),
            junction_m.tolist(), [], [], 0.0, [],
        )  # fmt: skip
        want = ref.route_times(
            plain, links.tolist(), moves.tolist(), offset, depart, [base + r for r in ready],
            pace, held=None if held == NOT_HELD else held,
        )  # fmt: skip
        if held == NOT_HELD:
            assert (line.tolist(), wait.tolist(), arrival) == want
        else:
            assert line.tolist() == pytest.approx(want[0], rel=1e-12)
            assert wait.tolist() == pytest.approx(want[1], rel=1e-12, abs=1e-9)
            assert arrival == pytest.approx(want[2], rel=1e-12)
        free = np.empty(n)
        kernels.free_flow_lines(
            links, moves, n, line[0], link_time, link_length, junction_s, junction_m, pace,
            *held, free,
        )  # fmt: skip
        no_wait = ref.route_times(
            plain, links.tolist(), moves.tolist(), offset, depart, [-math.inf] * moves_total,
            pace, held=None if held == NOT_HELD else held,
        )[0]  # fmt: skip
        assert free.tolist() == pytest.approx(no_wait, rel=1e-12)

        flush = rng.uniform(0.0, 40.0, n - 1)
        earliest = base + rng.uniform(0.0, 300.0, n - 1)
        earliest[rng.random(n - 1) < 0.2] = -np.inf
        outs = [np.empty(n - 1) for _ in range(5)]
        params = {"margin_s": 2.5, "clear_after_s": 4.0, "sigma0_s": 1.5, "sigma_rate": 0.05}
        eta, opening, close, low, high = outs
        shift = kernels.windows(
            line,
            n,
            flush,
            earliest,
            depart,
            2.5,
            4.0,
            1.5,
            0.05,
            eta,
            opening,
            close,
            low,
            high,
        )
        plain_windows = ref.windows(
            line.tolist(), flush.tolist(), earliest.tolist(), depart, **params
        )
        assert shift == plain_windows.shift
        for got, field in zip(outs, ("eta", "open", "close", "low", "high"), strict=True):
            assert got.tolist() == getattr(plain_windows, field)


def test_windows_hand_computed_unflushable_queue_shifts_later_etas() -> None:
    """Stop lines at 10, 30, 50 s (then the destination at 70 s). The queue on the second
    movement can only go at 40 s and needs 6 s: it is gone at 46 s, not by 30 s, so the
    vehicle is held 16 s there and every later ETA moves by the same 16 s."""
    line = np.array([10.0, 30.0, 50.0, 70.0])
    flush = np.array([5.0, 6.0, 5.0])
    earliest = np.array([0.0, 40.0, 0.0])
    outs = [np.empty(3) for _ in range(5)]
    shift = kernels.windows(line, 4, flush, earliest, 0.0, 3.0, 4.0, 1.0, 0.03, *outs)
    eta, opening, close, low, high = (o.tolist() for o in outs)
    assert shift == 16.0
    assert eta == [10.0, 46.0, 66.0]
    assert [e - t for e, t in zip(eta, line[:3], strict=True)] == [0.0, 16.0, 16.0]
    assert opening == [2.0, 40.0, 58.0]  # max(earliest, eta - flush - margin)
    assert close == [14.0, 50.0, 70.0]
    assert low == pytest.approx([10.0 - 1.3, 46.0 - 2.38, 66.0 - 2.98])
    assert high == pytest.approx([10.0 + 1.3, 46.0 + 2.38, 66.0 + 2.98])


# -- graph -----------------------------------------------------------------------------------


def test_graph_times_each_junction_at_its_speed_limit() -> None:
    """A junction's distance (``Network.junction_m``) at its own speed limit where the map
    gives one (a turn slowed for its curve), else the next link's, times the speed factor;
    links that run node to node (ours) cross in no time."""
    from citybrain.simulator.networks import grid

    net = grid(2, 2).network
    assert not CorridorGraph.from_network(net).mv_junction_s.any()
    shorter = tuple(dataclasses.replace(link, length_m=link.length_m - 12.0) for link in net.links)
    turn = net.movements[0]
    slowed = (dataclasses.replace(turn, junction_speed_mps=5.0), *net.movements[1:])
    real = dataclasses.replace(net, links=shorter, movements=slowed)
    graph = CorridorGraph.from_network(real, emergency_speed_factor=1.5)
    for movement in real.movements:
        k = graph.movement_index[movement.id]
        assert graph.mv_junction_m[k] == pytest.approx(12.0)
        speed = movement.junction_speed_mps or real.link(movement.to_link).speed_limit_mps
        assert graph.mv_junction_s[k] == pytest.approx(12.0 / (speed * 1.5))
    assert graph.mv_junction_s[graph.movement_index[turn.id]] == pytest.approx(12.0 / 7.5)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_graph_refuses_a_junction_time_that_is_no_duration(value: float) -> None:
    graph = GRAPHS["grid-4x4-uniform"]
    times = graph.mv_junction_s.copy()
    times[3] = value
    with pytest.raises(ValidationError, match="junction") as info:
        dataclasses.replace(graph, mv_junction_s=times)
    assert info.value.field == "mv_junction_s"
    with pytest.raises(ValidationError) as info:
        dataclasses.replace(graph, mv_junction_m=times[:-1])
    assert info.value.field == "mv_junction_m"


def test_graph_refuses_a_movement_no_lane_of_its_link_allows() -> None:
    """A network whose lanes do not carry one of its turns (a hand-edited map) is refused with
    the link and movement named, not built into a graph that routes through that turn."""
    from citybrain.models.network import Lane, Turn
    from citybrain.simulator.networks import grid

    net = grid(3, 4).network
    left = next(m for m in net.movements if m.turn is Turn.LEFT)
    source = net.link_by_id[left.from_link]
    through_only = tuple(
        Lane(index=lane.index, turns=frozenset({Turn.THROUGH})) for lane in source.lanes
    )
    links = tuple(
        dataclasses.replace(link, lanes=through_only) if link is source else link
        for link in net.links
    )
    with pytest.raises(ValidationError, match=f"no lane of {source.id!r} allows {left.id!r}"):
        CorridorGraph.from_network(dataclasses.replace(net, links=links))


def test_graph_from_network_arrays() -> None:
    from citybrain.simulator.networks import grid

    net = grid(3, 4).network
    graph = CorridorGraph.from_network(net, emergency_speed_factor=1.5)
    assert graph.link_ids == tuple(link.id for link in net.links)
    for i, link in enumerate(net.links):
        assert graph.link_time[i] == link.length_m / (link.speed_limit_mps * 1.5)
        assert graph.link_length[i] == link.length_m
        node = net.intersection_by_id[link.to_node]
        assert (graph.link_x[i], graph.link_y[i]) == (node.x_m, node.y_m)
    assert sorted(graph.movement_ids) == sorted(m.id for m in net.movements)
    for movement in net.movements:
        k = graph.movement_index[movement.id]
        assert net.movements[int(graph.mv_order[k])] is movement
        assert graph.mv_from[k] == graph.link_index[movement.from_link]
        assert graph.mv_to[k] == graph.link_index[movement.to_link]
        assert graph.out_start[graph.mv_from[k]] <= k < graph.out_start[graph.mv_from[k] + 1]
        assert graph.intersection_ids[graph.mv_intersection[k]] == movement.intersection_id
        assert graph.mv_group[k] == movement.signal_group
        assert graph.movement_between(int(graph.mv_from[k]), int(graph.mv_to[k])) == k
    assert graph.max_speed == pytest.approx(13.9 * 1.5)
    assert len(graph.landmark_nodes) <= DEFAULT_LANDMARKS
    sizes = (1_999, 2_000, 49_999, 50_000)
    assert [default_landmarks(n) for n in sizes] == [DEFAULT_LANDMARKS, 16, 16, 32]


def test_graph_is_read_only_after_its_check() -> None:
    """Checked once when built; its arrays are read-only copies, so the kernels' trust in
    them (and the A* bounds) cannot be broken in place, by the graph's users or its builder."""
    graph = grid_graph(3, 3)
    for name in ("link_time", "mv_to", "out_start", "lm_dist"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(graph, name)[0] = 0
    times = graph.link_time.copy()
    faster = graph.with_link_times(times)
    times[:] = 1e-3  # the caller's array is not the graph's
    assert np.array_equal(faster.link_time, graph.link_time)
    assert not faster.link_time.flags.writeable


def test_graph_refuses_bad_values() -> None:
    from citybrain.models.errors import ValidationError
    from citybrain.simulator.networks import grid

    net = grid(2, 2).network
    with pytest.raises(ValidationError) as caught:
        CorridorGraph.from_network(net, emergency_speed_factor=0.0)
    assert caught.value.field == "emergency_speed_factor"
    graph = CorridorGraph.from_network(net)
    for times in (np.zeros(graph.links), np.ones(3), np.full(graph.links, np.nan)):
        with pytest.raises(ValidationError) as caught:
            graph.with_link_times(times)
        assert caught.value.field == "link_time"
    with pytest.raises(ValidationError) as caught:
        dataclasses.replace(graph, mv_from=graph.mv_from[::-1].copy())
    assert caught.value.field == "out_start"
    with pytest.raises(ValidationError) as caught:
        dataclasses.replace(graph, lm_dist=graph.lm_dist[:-1].copy())
    assert caught.value.field == "lm_dist"
    with pytest.raises(ValidationError) as caught:
        CorridorGraph.from_network(net, landmarks=-1)
    assert caught.value.field == "landmarks"
    for args, field in (
        ((-1, 0), "from_link"),
        ((0, graph.links), "to_link"),
        ((0, 0), "movement"),
    ):
        with pytest.raises(ValidationError) as caught:
            graph.movement_between(*args)
        assert caught.value.field == field


# -- Router ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["grid-6x7-random-times", "random-sparse-4"])
def test_router_routes_match_reference(name: str) -> None:
    graph = GRAPHS[name]
    plain = ref.plain(graph)
    router = Router(graph)
    for origin, offset, destination, depart, ready in queries(graph, seed=3, count=60):
        want = ref.search(
            plain, origin, offset, destination, depart, ready.tolist(), use_astar=True
        )
        args = (graph.link_ids[origin], offset, graph.link_ids[destination], depart, ready)
        if want is None:
            with pytest.raises(UnreachableError) as caught:
                router.route(*args)
            assert caught.value.field == "destination_link"
            continue
        links, moves, arrival = want
        route = router.route(*args)
        line, wait, _ = ref.route_times(plain, links, moves, offset, depart, ready.tolist())
        assert route.link_indices.tolist() == links
        assert route.links == tuple(graph.link_ids[i] for i in links)
        assert route.moves.tolist() == moves
        assert route.line_s.tolist() == line
        assert route.wait_s.tolist() == wait
        assert route.arrival_s == arrival
        for timed in (
            router.evaluate(route.links, offset, depart, ready),
            router.retime(route.link_indices, offset, depart, ready),
        ):
            assert timed.arrival_s == arrival
            assert timed.moves.tolist() == moves
            assert timed.wait_s.tolist() == wait


def test_a_held_speed_times_the_route_at_it_until_it_ends() -> None:
    """Row 0 of a 1 x 4 grid at 10 m/s (links of 150, 200, 200 m), no queues. A vehicle at
    the start held to 5 m/s for 15 s covers 75 m in that time, the other 75 m of its link at
    10 m/s: its first stop line at 22.5 s (15 s at its own speed), then 20 s a link as
    before; the windows' ETAs agree, and a speed held until a time already past changes
    nothing."""
    grid = grid_graph(1, 4)
    graph = grid.with_link_times(grid.link_length / 10.0)
    router = Router(graph)
    free = np.full(graph.movements, -np.inf)
    links = router.route("bW0-g0_0", 0.0, "g0_3-bE0", 0.0, free).link_indices
    held = HeldSpeed(speed_mps=5.0, until_s=15.0)
    slow = router.retime(links, 0.0, 0.0, free, held=held)
    assert slow.line_s[:4].tolist() == pytest.approx([22.5, 42.5, 62.5, 82.5])
    assert router.retime(links, 0.0, 0.0, free).line_s[:4].tolist() == pytest.approx(
        [15.0, 35.0, 55.0, 75.0]
    )
    flush = np.zeros(len(links) - 1)
    windows = router.windows(slow, flush, flush - np.inf, 0.0, held=held)
    assert windows.eta.tolist() == pytest.approx([22.5, 42.5, 62.5, 82.5])
    # held past its first stop line: 5 m/s from 0 to 40 s (150 m, then 50 m), then 10 m/s;
    # the windows from the first stop line at 22.5 s: 87.5 m at 5 m/s, 112.5 m at 10
    longer = HeldSpeed(speed_mps=5.0, until_s=40.0)
    assert router.retime(links, 0.0, 0.0, free, held=longer).line_s[:3].tolist() == (
        pytest.approx([30.0, 55.0, 75.0])
    )
    assert router.windows(slow, flush, flush - np.inf, 0.0, held=longer).eta[:3].tolist() == (
        pytest.approx([22.5, 51.25, 71.25])
    )
    past = HeldSpeed(speed_mps=5.0, until_s=0.0)
    assert (
        router.retime(links, 0.0, 0.0, free, held=past).line_s.tolist()
        == router.retime(links, 0.0, 0.0, free).line_s.tolist()
    )


def test_router_closed_movements_and_dead_ends_are_unreachable() -> None:
    graph = grid_graph(4, 4)
    router = Router(graph)
    free = np.full(graph.movements, -np.inf)
    # inbound feeders start at boundary nodes, which have no movements: nothing leads in
    with pytest.raises(UnreachableError):
        router.route("g1_1-g1_2", 0.0, "bS2-g0_2", 0.0, free)
    origin = graph.link_index["g1_1-g1_2"]
    closed = free.copy()
    closed[graph.out_start[origin] : graph.out_start[origin + 1]] = np.inf
    with pytest.raises(UnreachableError):
        router.route("g1_1-g1_2", 0.0, "g3_3-bN3", 0.0, closed)
    # a closed movement is avoided, not waited for
    route = router.route("bW0-g0_0", 0.0, "g0_3-bE0", 0.0, free)
    blocked = free.copy()
    blocked[route.moves[1]] = np.inf
    detour = router.route("bW0-g0_0", 0.0, "g0_3-bE0", 0.0, blocked)
    assert int(route.moves[1]) not in detour.moves.tolist()
    assert detour.arrival_s > route.arrival_s
    # origin == destination: the rest of the origin link
    same = router.route("g1_1-g1_2", 50.0, "g1_1-g1_2", 10.0, free)
    assert same.links == ("g1_1-g1_2",)
    assert same.arrival_s == pytest.approx(10.0 + 150.0 / (13.9 * 1.3))


def test_router_windows_follow_the_routes_waits() -> None:
    """Searching with ``mv_ready = earliest + flush`` and then asking for windows gives ETAs at
    the times the vehicle actually passes each stop line, and a shift equal to its waits."""
    graph = GRAPHS["grid-12x9-random-times"]
    router = Router(graph)
    rng = np.random.default_rng(8)
    shifted = 0
    for origin, offset, destination, depart, _ in queries(graph, seed=4, count=60):
        flush = rng.uniform(0.0, 30.0, graph.movements)
        earliest = depart + rng.uniform(-30.0, 300.0, graph.movements)
        earliest[rng.random(graph.movements) < 0.3] = -np.inf
        ready = earliest + flush
        try:
            route = router.route(
                graph.link_ids[origin], offset, graph.link_ids[destination], depart, ready
            )
        except UnreachableError:
            continue
        along = route.moves[:-1]
        result = router.windows(route, flush[along], earliest[along], depart)
        assert result.moves.tolist() == along.tolist()
        passing = route.line_s[:-1] + route.wait_s[:-1]
        np.testing.assert_allclose(result.eta, passing, rtol=0, atol=1e-9)
        assert result.shift_s == pytest.approx(float(route.wait_s.sum()), abs=1e-9)
        assert np.all(result.open <= result.eta - flush[result.moves] + 1e-9)
        assert np.all(result.open >= earliest[result.moves])
        assert np.all(result.low <= result.eta)
        assert np.all(result.eta <= result.high)
        shifted += result.shift_s > 0
    assert shifted >= 5


def test_router_windows_hand_example_on_a_real_route() -> None:
    graph = grid_graph(3, 3)
    router = Router(graph)
    free = np.full(graph.movements, -np.inf)
    route = router.route("bW1-g1_0", 0.0, "g1_2-bE1", 0.0, free)  # straight east: 3 stop lines
    assert len(route.links) == 4
    flush = np.zeros(3)
    earliest = np.full(3, -np.inf)
    flush[1] = 6.0
    earliest[1] = route.line_s[1] + 10.0  # opens 10 s after arrival, 6 s more to flush
    result = router.windows(route, flush, earliest, 0.0)
    assert result.shift_s == pytest.approx(16.0)
    np.testing.assert_allclose(result.eta - route.line_s[:-1], [0.0, 16.0, 16.0])
    assert result.open[1] == earliest[1]


# -- validation ------------------------------------------------------------------------------


def _router() -> tuple[Router, NDArray[np.float64]]:
    graph = grid_graph(3, 3)
    return Router(graph), np.full(graph.movements, -np.inf)


GOOD = {
    "origin_link": "bW0-g0_0",
    "offset_m": 10.0,
    "destination_link": "g2_2-bE2",
    "depart_s": 5.0,
}


def _with_nan(free: NDArray[np.float64]) -> NDArray[np.float64]:
    out = free.copy()
    out[7] = np.nan
    return out


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("origin_link", "nope"),
        ("origin_link", 3),
        ("destination_link", "g9_9-g9_8"),
        ("destination_link", None),
        ("offset_m", -0.1),
        ("offset_m", 150.1),  # the feeder is 150 m long
        ("offset_m", math.nan),
        ("offset_m", "10"),
        ("offset_m", True),
        ("depart_s", math.nan),
        ("depart_s", math.inf),
        ("depart_s", -1.0),
        ("depart_s", None),
        ("mv_ready_s", np.zeros(3)),
        ("mv_ready_s", np.zeros((2, 2))),
        ("mv_ready_s", "abc"),
        ("mv_ready_s", None),
        ("mv_ready_s", _with_nan),
    ],
)
def test_route_bad_inputs_name_the_field(field: str, value: object) -> None:
    """route refuses the bad value, naming it (not unreachable), with the queue state given as
    a plain array or checked beforehand; a bad state is refused when it is made."""
    from citybrain.models.errors import ValidationError

    router, free = _router()
    if callable(value):
        value = value(free)
    checked = MovementTimes.ready(router.graph, free)
    plain: dict[str, Any] = {**GOOD, "mv_ready_s": free, field: value}
    ahead: dict[str, Any] = {**GOOD, "mv_ready_s": checked, field: value}
    calls: list[Callable[[], object]] = [
        lambda: router.route(**plain),
        lambda: router.route(**ahead),
    ]
    if field == "mv_ready_s":
        calls.append(lambda: MovementTimes.ready(router.graph, value))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == field
        assert not isinstance(caught.value, UnreachableError)


def test_windows_and_evaluate_bad_inputs() -> None:
    from citybrain.models.errors import ValidationError

    router, free = _router()
    route = router.route(**GOOD, mv_ready_s=free)  # type: ignore[arg-type]
    zeros = np.zeros(len(route.links) - 1)  # one per stop line
    nan = zeros.copy()
    nan[1] = np.nan
    cases: list[tuple[object, str]] = [
        (lambda: router.windows(route, zeros[:-1], zeros, 0.0), "flush_s"),
        (lambda: router.windows(route, nan, zeros, 0.0), "flush_s"),
        (lambda: router.windows(route, -1.0 + zeros, zeros, 0.0), "flush_s"),
        (lambda: router.windows(route, zeros + np.inf, zeros, 0.0), "flush_s"),
        (lambda: router.windows(route, zeros, nan, 0.0), "earliest_s"),
        (lambda: router.windows(route, zeros, zeros + np.inf, 0.0), "earliest_s"),
        (lambda: router.windows(route, np.zeros(router.graph.movements), zeros, 0.0), "flush_s"),
        (lambda: router.windows(route, zeros, zeros, -3.0), "depart_s"),
        (lambda: router.windows(route, zeros, zeros, 0.0, margin_s=math.nan), "margin_s"),
        (lambda: router.windows(route, zeros, zeros, 0.0, sigma_rate=-1.0), "sigma_rate"),
        (lambda: router.windows("route", zeros, zeros, 0.0), "route"),  # type: ignore[arg-type]
        (lambda: router.evaluate([], 0.0, 0.0, free), "links"),
        (lambda: router.evaluate(["bW0-g0_0", "g2_2-bE2"], 0.0, 0.0, free), "links[1]"),
        (lambda: router.evaluate(["bW0-g0_0", "x"], 0.0, 0.0, free), "links[1]"),
        (lambda: router.retime(np.array([0.0, 1.0]), 0.0, 0.0, free), "link_indices"),
        (lambda: router.retime(np.zeros((1, 1), np.int32), 0.0, 0.0, free), "link_indices"),
        (lambda: router.retime(np.array([], np.int32), 0.0, 0.0, free), "link_indices"),
        (lambda: router.retime([0, 10_000], 0.0, 0.0, free), "link_indices"),
        (lambda: router.retime(route.link_indices[::2], 0.0, 0.0, free), "link_indices[1]"),
        (lambda: router.retime(route.link_indices, 1e6, 0.0, free), "offset_m"),
        (lambda: Router("graph"), "graph"),  # type: ignore[arg-type]
        (lambda: HeldSpeed(speed_mps=0.0, until_s=10.0), "speed_mps"),
        (lambda: HeldSpeed(speed_mps=math.nan, until_s=10.0), "speed_mps"),
        (lambda: HeldSpeed(speed_mps=1e9, until_s=10.0), "speed_mps"),
        (lambda: HeldSpeed(speed_mps=10.0, until_s=math.inf), "until_s"),
        (lambda: HeldSpeed(speed_mps=10.0, until_s=-1.0), "until_s"),
        (lambda: router.retime(route.link_indices, 0.0, 0.0, free, held=(5.0, 9.0)), "held"),  # type: ignore[arg-type]
        (lambda: router.windows(route, zeros, zeros, 0.0, held=5.0), "held"),  # type: ignore[arg-type]
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as caught:
            call()  # type: ignore[operator]
        assert caught.value.field == field
    foreign = Route(("x",), np.array([10_000], np.int32), np.array([-1], np.int32),
                    np.zeros(1), np.zeros(1), 0.0)  # fmt: skip
    with pytest.raises(ValidationError) as caught:
        router.windows(foreign, zeros, zeros, 0.0)
    assert caught.value.field == "route"


# -- per-movement state checked when it changes --------------------------------------------


def test_movement_times_refuse_bad_state_when_made() -> None:
    """NaN, the wrong shape or a base that takes the values out of range are refused when the
    state is made, naming the argument it is for."""
    from citybrain.models.errors import ValidationError

    graph = grid_graph(3, 3)
    good = np.zeros(graph.movements)
    nan = good.copy()
    nan[5] = np.nan
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: MovementTimes.ready(graph, nan), "mv_ready_s"),
        (lambda: MovementTimes.ready(graph, good[:-1]), "mv_ready_s"),
        (lambda: MovementTimes.ready(graph, np.zeros((2, 2))), "mv_ready_s"),
        (lambda: MovementTimes.ready(graph, ["a"] * graph.movements), "mv_ready_s"),
        (lambda: MovementTimes.ready(graph, good, base_s=math.nan), "mv_ready_s.base_s"),
        (lambda: MovementTimes.ready(graph, good, base_s=math.inf), "mv_ready_s.base_s"),
        (lambda: MovementTimes.ready(graph, good).at(2e12), "mv_ready_s.base_s"),
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == field


def test_movement_times_update_checks_what_changes() -> None:
    """Telemetry changes a few queues: ``update`` checks those values only, refuses NaN, a
    value out of range, a bad index or a shape mismatch without writing anything, and every
    view (``at``) and query sees what it wrote."""
    from citybrain.models.errors import ValidationError

    graph = grid_graph(3, 3)
    router = Router(graph)
    ready = MovementTimes.ready(graph, np.full(graph.movements, -np.inf))
    now = ready.at(100.0)
    route = router.route("bW1-g1_0", 0.0, "g1_2-bE1", 100.0, now)  # straight east
    assert route.wait_s.sum() == 0.0
    second = int(route.moves[1])
    for movements, values in (
        ([second], [np.nan]),
        ([0, second], [1.0, np.nan]),
        ([second], [1.0, 2.0]),
        ([graph.movements], [1.0]),
        ([-1], [1.0]),
        ([[second]], [[1.0]]),
        ([0.5], [1.0]),
    ):
        before = ready.values.copy()
        with pytest.raises(ValidationError) as caught:
            ready.update(movements, values)
        assert caught.value.field == "mv_ready_s"
        assert np.array_equal(ready.values, before)  # nothing half-written
    ready.update([second], [60.0])  # the queue there is gone 60 s after now
    assert now.values[second] == 60.0
    held = router.route("bW1-g1_0", 0.0, "g1_2-bE1", 100.0, now)
    if held.links == route.links:
        assert held.wait_s[1] == pytest.approx(160.0 - route.line_s[1])
    else:
        assert held.arrival_s > route.arrival_s


def test_movements_leaving_links_expand_per_link_values() -> None:
    from citybrain.models.errors import ValidationError

    graph = GRAPHS["random-sparse-3"]
    links = np.array([5, 0, 5, graph.links - 1, 17])
    movements, owner = graph.movements_leaving(links)
    want = [
        (k, i) for i, u in enumerate(links.tolist()) for k in range(graph.movements)
        if graph.mv_from[k] == u
    ]  # fmt: skip
    assert list(zip(movements.tolist(), owner.tolist(), strict=True)) == want
    assert graph.movements_leaving(np.zeros(0, np.int64))[0].shape == (0,)
    for bad in (np.array([graph.links]), np.array([-1]), np.array([0.5]), np.zeros((1, 1), int)):
        with pytest.raises(ValidationError) as caught:
            graph.movements_leaving(bad)
        assert caught.value.field == "links"


def test_movement_times_cannot_change_unchecked() -> None:
    graph = grid_graph(3, 3)
    source = np.zeros(graph.movements)
    times = MovementTimes.ready(graph, source, base_s=4.0)
    source[0] = np.nan  # the caller's array is not the state
    assert times.values[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        times.values[0] = np.nan
    with pytest.raises(AttributeError):
        times.base_s = math.nan
    with pytest.raises(AttributeError):
        times.values = np.zeros(graph.movements)
    later = times.at(10.0)
    assert (later.base_s, times.base_s) == (10.0, 4.0)
    assert later.values is times.values  # shared, not copied


def test_router_takes_checked_state_without_checking_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queries given a ``MovementTimes`` answer as with the plain array ``base + values`` (bit
    for bit), and never scan the values: ``count_outside`` is not called per query."""
    from citybrain.models.errors import ValidationError

    graph = GRAPHS["grid-12x9-random-times"]
    router = Router(graph)
    rng = np.random.default_rng(31)
    base = 437.25
    relative = random_ready(graph, rng, 0.0, closed=0.02)
    ready = MovementTimes.ready(graph, relative).at(base)
    plain_ready = base + relative
    scans: list[int] = []
    real_scan = kernels.count_outside

    def counting_scan(*args: Any) -> int:
        scans.append(1)
        return int(real_scan(*args))

    monkeypatch.setattr(kernels, "count_outside", counting_scan)
    compared = 0
    for origin, offset, destination, depart, _ in queries(graph, seed=6, count=80):
        o, d = graph.link_ids[origin], graph.link_ids[destination]
        try:
            want = router.route(o, offset, d, base + depart, plain_ready)
        except UnreachableError:
            with pytest.raises(UnreachableError):
                router.route(o, offset, d, base + depart, ready)
            continue
        before = len(scans)
        got = router.route(o, offset, d, base + depart, ready)
        again = router.retime(got.link_indices, offset, base + depart, ready)
        assert len(scans) == before  # no look at the values
        assert got.links == want.links
        for field in ("moves", "line_s", "wait_s"):
            assert getattr(got, field).tolist() == getattr(want, field).tolist()
            assert getattr(again, field).tolist() == getattr(want, field).tolist()
        assert got.arrival_s == want.arrival_s == again.arrival_s
        compared += 1
    assert compared >= 40
    assert len(scans) >= compared  # the plain array was scanned, on every call
    # a state checked for another graph is refused; windows take a route's stop lines only
    small = grid_graph(3, 3)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: router.windows(got, ready, np.zeros(len(got.links) - 1), 0.0), "flush_s"),  # type: ignore[arg-type]
        (
            lambda: router.route(
                o, 0.0, d, 0.0, MovementTimes.ready(small, np.zeros(small.movements))
            ),
            "mv_ready_s",
        ),
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == field
