"""Generated networks: element counts derived by hand from the layout rules."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.network import DetectorKind, Turn
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.networks import ADVANCE_DETECTOR_M, RoadNetwork, arterial, grid


def _check_layout(road: RoadNetwork) -> None:
    """Rules every generated network follows, whatever its size."""
    net = road.network
    links = net.link_by_id
    nodes = net.intersection_by_id
    # every link has its opposite direction
    for link in net.links:
        assert f"{link.to_node}-{link.from_node}" in links
    # every incoming link of a signalized node is an approach; one movement per outgoing
    # link that is not the way back (left, through, right), each from that approach
    for approach in net.approaches:
        node = approach.intersection_id
        assert nodes[node].signalized
        incoming = links[approach.link_id]
        outgoing = {
            link.id
            for link in net.links
            if link.from_node == node and link.to_node != incoming.from_node
        }
        moves = [m for m in net.movements if m.from_link == approach.link_id]
        assert {m.to_link for m in moves} == outgoing
        assert len(moves) == len(outgoing)
        assert sorted(m.turn for m in moves) == sorted(
            [Turn.LEFT, Turn.THROUGH, Turn.RIGHT][: len(outgoing)]
        )
        detectors = [d for d in net.detectors if d.link_id == approach.link_id]
        assert sorted(d.kind for d in detectors) == [DetectorKind.ADVANCE, DetectorKind.STOP_BAR]
        for d in detectors:
            expected = 0.0 if d.kind is DetectorKind.STOP_BAR else min(60.0, incoming.length_m)
            assert d.distance_from_stop_line_m == expected
    # every signalized node has a plan over exactly its network's groups
    signalized = {n.id for n in net.intersections if n.signalized}
    assert set(road.plans) == signalized
    for node, plan in road.plans.items():
        assert set(plan.signals.groups) == {g.id for g in net.signal_groups_at(node)}
        assert plan.signals.intersection_id == node


def test_grid_3x4_counts() -> None:
    road = grid(3, 4)
    net = road.network
    # 12 signalized + 2*4 + 2*3 boundary nodes
    assert len(net.intersections) == 12 + 8 + 6
    assert sum(n.signalized for n in net.intersections) == 12
    # both ways: 14 feeders, 3 rows x 3 east-west gaps, 2 north-south gaps x 4 columns
    assert len(net.links) == 2 * (14 + 9 + 8)
    # every grid node has four neighbours: 4 approaches, 3 movements each, 2 loops each
    assert len(net.approaches) == 12 * 4
    assert len(net.movements) == 12 * 4 * 3
    assert len(net.detectors) == 12 * 4 * 2
    assert len(net.signal_groups) == 12 * 8
    assert road.name == "grid-3x4"
    _check_layout(road)


def test_reference_arterial_counts() -> None:
    road = arterial()
    net = road.network
    # west, east, and per junction the junction and its north and south ends
    assert len(net.intersections) == 2 + 21 * 3
    assert sum(n.signalized for n in net.intersections) == 21
    # 22 main-road sections and 2 cross-street legs per junction, both ways
    assert len(net.links) == 2 * (22 + 2 * 21)
    assert len(net.approaches) == 21 * 4
    assert len(net.movements) == 21 * 4 * 3
    assert len(net.detectors) == 21 * 4 * 2
    assert len(net.signal_groups) == 21 * 8
    _check_layout(road)


@pytest.mark.parametrize("count", [1, 3])
def test_small_arterials_follow_the_layout(count: int) -> None:
    road = arterial(count)
    assert len(road.network.intersections) == 2 + 3 * count
    assert len(road.network.movements) == 12 * count
    _check_layout(road)


@pytest.mark.parametrize(
    ("count", "length", "seed"), [(1, 7000.0, 0), (21, 7000.0, 3), (5, 1234.5, 9)]
)
def test_arterial_spacing_sums_to_its_length(count: int, length: float, seed: int) -> None:
    road = arterial(count, length_m=length, seed=seed)
    net = road.network
    chain = ["west", *(f"a{i + 1:02d}" for i in range(count)), "east"]
    sections = [net.link_by_id[f"{a}-{b}"].length_m for a, b in itertools.pairwise(chain)]
    assert math.isclose(sum(sections), length, rel_tol=0.0, abs_tol=1e-6)
    assert all(s > 0.0 for s in sections)
    assert net.intersection_by_id["east"].x_m == pytest.approx(length, abs=1e-6)
    xs = [net.intersection_by_id[n].x_m for n in chain]
    assert xs == sorted(xs)
    # the layout depends on the seed and only on it
    assert arterial(count, length_m=length, seed=seed) == road


def test_cross_streets_and_feeders_have_the_given_lengths() -> None:
    road = arterial(2, cross_street_m=250.0)
    for name in ("a01", "a02"):
        assert road.network.link_by_id[f"{name}n-{name}"].length_m == 250.0
        assert road.network.link_by_id[f"{name}-{name}s"].length_m == 250.0
    g = grid(2, 2, spacing_m=300.0, feeder_m=120.0)
    assert g.network.link_by_id["g0_0-g0_1"].length_m == 300.0
    assert g.network.link_by_id["bW0-g0_0"].length_m == 120.0


def test_compiled_storage_and_headways_follow_the_lane_layout() -> None:
    road = grid(1, 1, feeder_m=150.0)
    net = compile_network(road)
    i = net.link_index["bW0-g0_0"]
    assert net.link_lanes[i] == 3
    assert net.link_storage[i] == 60  # floor(3 lanes * 150 m / 7.5 m)
    assert net.link_advance[i] == 150.0 - ADVANCE_DETECTOR_M
    # through on two lanes, left and right on one each, 1800 veh/h per lane
    for suffix, lanes in (("T", 2), ("L", 1), ("R", 1)):
        m = net.movement_index[f"g0_0:E{suffix}"]
        assert net.mv_lanes[m] == lanes
        assert net.mv_headway[m] == pytest.approx(3600.0 / (1800.0 * lanes))
    assert len(net.controller_ids) == 1
    assert net.ctl_cycle[0] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: grid(0, 3),
        lambda: grid(2, 0),
        lambda: grid(2, 2, spacing_m=math.nan),
        lambda: grid(2, 2, spacing_m=10.0),
        lambda: grid(2, 2, feeder_m=math.inf),
        lambda: grid(2, 2, speed_mps=0.0),
        lambda: arterial(0),
        lambda: arterial(3, length_m=math.nan),
        lambda: arterial(3, length_m=-5.0),
        lambda: arterial(3, saturation_flow_vphpl=0.0),
    ],
)
def test_bad_arguments_raise_validation_error(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


def test_a_plan_for_a_missing_or_unsignalized_node_is_refused() -> None:
    road = arterial(2)
    plans = dict(road.plans)
    del plans["a02"]
    with pytest.raises(ValidationError, match="a02"):
        RoadNetwork("x", road.network, plans)
    plans = dict(road.plans)
    plans["west"] = plans["a01"]
    with pytest.raises(ValidationError, match="west"):
        RoadNetwork("x", road.network, plans)
