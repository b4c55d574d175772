"""The road network: values that check themselves and a Network that checks every reference."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.network import (
    JAM_SPACING_M,
    Approach,
    Detector,
    DetectorKind,
    Intersection,
    Lane,
    Link,
    Movement,
    Network,
    Turn,
)
from citybrain.models.signal import SignalGroup

THROUGH = frozenset({Turn.THROUGH})
TWO_LANES = (Lane(0, frozenset({Turn.THROUGH, Turn.RIGHT})), Lane(1, frozenset({Turn.UTURN})))


def _parts() -> dict[str, tuple[Any, ...]]:
    """A small valid network: A <-> B, 300 m each way, a U-turn movement at each end."""
    return {
        "intersections": (Intersection("A", 0.0, 0.0), Intersection("B", 300.0, 0.0)),
        "links": (
            Link("AB", "A", "B", 300.0, TWO_LANES, 15.0),
            Link("BA", "B", "A", 300.0, TWO_LANES, 15.0, saturation_flow_vphpl=1900.0),
        ),
        "approaches": (Approach("A-east", "A", "BA"), Approach("B-west", "B", "AB")),
        "movements": (
            Movement("A-u", "A", "BA", "AB", Turn.UTURN, "g1"),
            Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
        ),
        # The same group id at two intersections is fine: groups are keyed per intersection.
        "signal_groups": (
            SignalGroup("g1", "A", frozenset({"A-u"})),
            SignalGroup("g1", "B", frozenset({"B-u"})),
            SignalGroup("ped", "B", frozenset(), pedestrian_crossing=True),
        ),
        "detectors": (
            Detector("AB-stop", "AB", DetectorKind.STOP_BAR, 2.0),
            Detector("AB-adv", "AB", DetectorKind.ADVANCE, 60.0),
            Detector("BA-start", "BA", DetectorKind.ADVANCE, 300.0),
        ),
    }


def _build(**changes: tuple[Any, ...]) -> Network:
    parts = _parts()
    parts.update(changes)
    return Network(**parts)


def _refused(field: str, **changes: tuple[Any, ...]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _build(**changes)
    assert info.value.field == field, info.value
    return info.value


# --- the valid network ----------------------------------------------------------------------


def test_small_network_builds() -> None:
    network = _build()
    assert network.intersection("A") == Intersection("A", 0.0, 0.0)
    assert network.link("BA").to_node == "A"
    assert network.link_by_id["AB"].from_node == "A"
    assert set(network.movement_by_id) == {"A-u", "B-u"}
    assert {g.id for g in network.signal_groups_at("B")} == {"g1", "ped"}
    assert [g.intersection_id for g in network.signal_groups_at("A")] == ["A"]


def test_unknown_intersection_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        _build().intersection("nope")
    assert info.value.field == "intersection"
    assert "nope" in info.value.reason


def test_unknown_link_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        _build().link("nope")
    assert info.value.field == "link"


def test_signal_groups_at_unknown_intersection_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        _build().signal_groups_at("nope")
    assert info.value.field == "intersection"


def test_storage_and_free_flow_time() -> None:
    link = Link("L", "A", "B", 300.0, TWO_LANES, 15.0)
    assert JAM_SPACING_M == 7.5
    assert link.storage_veh == pytest.approx(80.0)
    assert link.free_flow_time_s == pytest.approx(20.0)
    one_lane = Link("M", "A", "B", 75.0, (Lane(0, THROUGH),), 12.5)
    assert one_lane.storage_veh == pytest.approx(10.0)
    assert one_lane.free_flow_time_s == pytest.approx(6.0)


def test_junctions_take_what_the_links_leave_between_their_nodes() -> None:
    """Links of an imported map end at a junction's edge, not its centre: AB (280 m between
    nodes 300 m apart) leaves 20 m inside the junctions at its ends, BA (300 m) none, and a
    link longer than the chord (a bend) none either."""
    links = (
        Link("AB", "A", "B", 280.0, TWO_LANES, 15.0),
        Link("BA", "B", "A", 330.0, TWO_LANES, 15.0),
    )
    network = _build(links=links)
    assert network.uncovered_m == {"AB": pytest.approx(20.0), "BA": 0.0}
    by_id = network.movement_by_id
    assert network.junction_m(by_id["A-u"]) == pytest.approx(10.0)  # (BA 0 + AB 20) / 2
    assert network.junction_m(by_id["B-u"]) == pytest.approx(10.0)
    assert _build().uncovered_m == {"AB": 0.0, "BA": 0.0}  # links node to node


def test_a_junction_the_map_measured_is_taken_as_it_is() -> None:
    """Where the map gives a movement's way across its junction (SUMO's internal lanes), it
    is that, not the estimate from the node coordinates; a bad one is refused."""
    links = (
        Link("AB", "A", "B", 280.0, TWO_LANES, 15.0),
        Link("BA", "B", "A", 330.0, TWO_LANES, 15.0),
    )
    network = _build(links=links)
    measured = replace(network.movement_by_id["A-u"], junction_m=17.5)
    assert network.junction_m(measured) == 17.5
    assert network.junction_m(replace(measured, junction_m=0.0)) == 0.0
    for bad in (-1.0, math.nan, math.inf, 5_000.0):
        with pytest.raises(ValidationError) as caught:
            replace(measured, junction_m=bad)
        assert caught.value.field == "movement.junction_m"


def test_saturation_flow_defaults_to_1800() -> None:
    assert Link("L", "A", "B", 300.0, TWO_LANES, 15.0).saturation_flow_vphpl == 1800.0


def test_network_is_immutable() -> None:
    network = _build()
    with pytest.raises(AttributeError):
        network.links = ()  # type: ignore[misc]


# --- broken references ----------------------------------------------------------------------


def test_link_to_unknown_node() -> None:
    links = (*_parts()["links"], Link("BC", "B", "C", 100.0, TWO_LANES, 15.0))
    error = _refused("link.nodes", links=links)
    assert "'C'" in error.reason


def test_link_from_unknown_node() -> None:
    links = (*_parts()["links"], Link("ZA", "Z", "A", 100.0, TWO_LANES, 15.0))
    _refused("link.nodes", links=links)


def test_approach_with_unknown_link() -> None:
    _refused("approach.link_id", approaches=(Approach("A-x", "A", "nowhere"),))


def test_approach_link_that_does_not_enter_its_intersection() -> None:
    # AB leaves A: it is an approach of B, not of A.
    _refused("approach.link_id", approaches=(Approach("A-wrong", "A", "AB"),))


def test_movement_through_the_wrong_intersection() -> None:
    movements = (
        Movement("A-u", "A", "AB", "BA", Turn.UTURN, "g1"),  # AB enters B, not A
        Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
    )
    _refused("movement.links", movements=movements)


def test_movement_whose_exit_link_does_not_leave_its_intersection() -> None:
    movements = (
        Movement("A-u", "A", "BA", "BA", Turn.UTURN, "g1"),  # BA leaves B, not A
        Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
    )
    _refused("movement.links", movements=movements)


def test_movement_with_unknown_link() -> None:
    movements = (
        Movement("A-u", "A", "BA", "nowhere", Turn.UTURN, "g1"),
        Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
    )
    _refused("movement.links", movements=movements)


def test_movement_with_unknown_signal_group() -> None:
    movements = (
        Movement("A-u", "A", "BA", "AB", Turn.UTURN, "g9"),
        Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
    )
    _refused("movement.signal_group", movements=movements)


def test_movement_whose_group_sits_at_another_intersection() -> None:
    # "ped" exists only at B; a movement at A cannot be served by it.
    movements = (
        Movement("A-u", "A", "BA", "AB", Turn.UTURN, "ped"),
        Movement("B-u", "B", "AB", "BA", Turn.UTURN, "g1"),
    )
    _refused("movement.signal_group", movements=movements)


def test_movement_whose_group_does_not_list_it() -> None:
    groups = (
        SignalGroup("g1", "A", frozenset(), pedestrian_crossing=True),
        SignalGroup("g1", "B", frozenset({"B-u"})),
    )
    _refused("signal_group.movement_ids", signal_groups=groups)


def test_group_listing_an_unknown_movement() -> None:
    groups = (
        SignalGroup("g1", "A", frozenset({"A-u", "ghost"})),
        SignalGroup("g1", "B", frozenset({"B-u"})),
    )
    error = _refused("signal_group.movement_ids", signal_groups=groups)
    assert "ghost" in error.reason


def test_group_at_unknown_intersection() -> None:
    groups = (*_parts()["signal_groups"], SignalGroup("g1", "Z", frozenset(), True))
    _refused("signal_group.intersection_id", signal_groups=groups)


def test_group_listing_a_movement_of_another_intersection() -> None:
    groups = (
        SignalGroup("g1", "A", frozenset({"A-u", "B-u"})),
        SignalGroup("g1", "B", frozenset({"B-u"})),
    )
    _refused("signal_group.movement_ids", signal_groups=groups)


def test_detector_on_unknown_link() -> None:
    _refused("detector.link_id", detectors=(Detector("d", "nowhere", DetectorKind.STOP_BAR, 1.0),))


def test_detector_beyond_link_start() -> None:
    detectors = (Detector("d", "AB", DetectorKind.ADVANCE, 300.5),)
    _refused("detector.distance_from_stop_line_m", detectors=detectors)


@pytest.mark.parametrize(
    ("name", "duplicate"),
    [
        ("intersections", Intersection("A", 5.0, 5.0)),
        ("links", Link("AB", "B", "A", 10.0, TWO_LANES, 10.0)),
        ("approaches", Approach("A-east", "A", "BA")),
        ("movements", Movement("A-u", "A", "BA", "AB", Turn.UTURN, "g1")),
        ("signal_groups", SignalGroup("g1", "A", frozenset({"A-u"}))),
        ("detectors", Detector("AB-stop", "BA", DetectorKind.STOP_BAR, 1.0)),
    ],
)
def test_duplicate_ids(name: str, duplicate: object) -> None:
    items = (*_parts()[name], duplicate)
    error = _refused(f"network.{name}", **{name: items})
    assert "duplicate" in error.reason


# --- the parts refuse bad values themselves -------------------------------------------------


@pytest.mark.parametrize(
    ("lanes", "field"),
    [
        ((Lane(1, THROUGH),), "link.lanes"),
        ((Lane(0, THROUGH), Lane(0, THROUGH)), "link.lanes"),
        ((Lane(0, THROUGH), Lane(2, THROUGH)), "link.lanes"),
        ((Lane(1, THROUGH), Lane(0, THROUGH)), "link.lanes"),
        ((), "link.lanes"),
    ],
)
def test_lanes_misnumbered(lanes: tuple[Lane, ...], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Link("L", "A", "B", 100.0, lanes, 10.0)
    assert info.value.field == field


def test_sixteen_lanes_build_and_a_seventeenth_index_does_not() -> None:
    lanes = tuple(Lane(i, THROUGH) for i in range(16))
    assert Link("L", "A", "B", 100.0, lanes, 10.0).storage_veh == pytest.approx(16 * 100 / 7.5)
    with pytest.raises(ValidationError) as info:
        Lane(16, THROUGH)
    assert info.value.field == "lane.index"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"index": -1}, "lane.index"),
        ({"index": True}, "lane.index"),
        ({"turns": frozenset()}, "lane.turns"),
    ],
)
def test_lane_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"index": 0, "turns": THROUGH}
    arguments.update(kwargs)
    with pytest.raises(ValidationError) as info:
        Lane(**arguments)
    assert info.value.field == field


def test_link_from_a_node_to_itself() -> None:
    with pytest.raises(ValidationError) as info:
        Link("loop", "A", "A", 100.0, TWO_LANES, 10.0)
    assert info.value.field == "link.to_node"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"length_m": 0.0}, "link.length_m"),
        ({"length_m": math.nan}, "link.length_m"),
        ({"length_m": -5.0}, "link.length_m"),
        ({"length_m": math.inf}, "link.length_m"),
        ({"length_m": 100_001.0}, "link.length_m"),
        ({"speed_limit_mps": 0.0}, "link.speed_limit_mps"),
        ({"speed_limit_mps": 71.0}, "link.speed_limit_mps"),
        ({"speed_limit_mps": math.nan}, "link.speed_limit_mps"),
        ({"saturation_flow_vphpl": 0.0}, "link.saturation_flow_vphpl"),
        ({"saturation_flow_vphpl": 3601.0}, "link.saturation_flow_vphpl"),
        ({"id": "a/b"}, "link.id"),
        ({"from_node": "#"}, "link.from_node"),
        ({"to_node": ""}, "link.to_node"),
    ],
)
def test_link_refuses_bad_values(kwargs: dict[str, Any], field: str) -> None:
    good = Link("L", "A", "B", 100.0, TWO_LANES, 10.0)
    with pytest.raises(ValidationError) as info:
        replace(good, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Intersection("a b", 0.0, 0.0), "intersection.id"),
        (lambda: Intersection("A", math.nan, 0.0), "intersection.x_m"),
        (lambda: Intersection("A", 0.0, math.inf), "intersection.y_m"),
        (lambda: Approach("+", "A", "L"), "approach.id"),
        (lambda: Approach("a", "A/B", "L"), "approach.intersection_id"),
        (lambda: Approach("a", "A", ""), "approach.link_id"),
        (lambda: Movement("m", "A", "L1", "L2", Turn.LEFT, "#"), "movement.signal_group"),
        (lambda: Movement("m", "A", "$L1", "L2", Turn.LEFT, "g"), "movement.from_link"),
        (
            lambda: Detector("d", "L", DetectorKind.STOP_BAR, -0.1),
            "detector.distance_from_stop_line_m",
        ),
        (
            lambda: Detector("d", "L", DetectorKind.STOP_BAR, math.nan),
            "detector.distance_from_stop_line_m",
        ),
        (lambda: Detector("d/1", "L", DetectorKind.STOP_BAR, 1.0), "detector.id"),
        (lambda: SignalGroup("g", "A", frozenset()), "signal_group.movement_ids"),
        (
            lambda: SignalGroup("g", "A", frozenset({"ok", "not ok"})),
            "signal_group.movement_ids[0]",
        ),
        (lambda: SignalGroup("g+", "A", frozenset({"m"})), "signal_group.id"),
    ],
)
def test_parts_refuse_bad_values(make: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field
