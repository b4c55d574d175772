"""MQTT topics of the wire contract: building, parsing, filters."""

from __future__ import annotations

import operator
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.errors import TopicError, ValidationError
from citybrain.models.topics import (
    INTERSECTION_KINDS,
    Topic,
    TopicKind,
    corridor_status_topic,
    intersection_filter,
    intersection_topic,
    parse_topic,
    shared_filter,
    vehicle_position_topic,
)

# Valid ids, `[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}`, built directly (faster than from_regex).
ID_FIRST = string.ascii_letters + string.digits
ids = st.builds(operator.add, st.sampled_from(ID_FIRST), st.text(ID_FIRST + "_.:-", max_size=63))
intersection_kinds = st.sampled_from(sorted(INTERSECTION_KINDS))

BAD_IDS = ["", "+", "#", "a/b", "a+", "b#", "$SYS", "x" * 65, "has space"]


def test_intersection_kinds_are_the_four_per_intersection_topics() -> None:
    assert {
        TopicKind.TELEMETRY,
        TopicKind.STATUS,
        TopicKind.PLAN,
        TopicKind.ACK,
    } == INTERSECTION_KINDS


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (
            intersection_topic(TopicKind.TELEMETRY, "r1", "i-7"),
            "cb/v1/r1/x/i-7/telemetry",
        ),
        (intersection_topic(TopicKind.STATUS, "r1", "i-7"), "cb/v1/r1/x/i-7/status"),
        (intersection_topic(TopicKind.PLAN, "r1", "i-7"), "cb/v1/r1/x/i-7/plan"),
        (intersection_topic(TopicKind.ACK, "r1", "i-7"), "cb/v1/r1/x/i-7/ack"),
        (vehicle_position_topic("amb.3"), "cb/v1/vehicle/amb.3/position"),
        (corridor_status_topic("c:42"), "cb/v1/corridor/c:42/status"),
    ],
)
def test_topic_strings(topic: str, expected: str) -> None:
    assert topic == expected


@settings(max_examples=200)
@given(kind=intersection_kinds, region=ids, intersection=ids)
def test_intersection_topic_round_trip(kind: TopicKind, region: str, intersection: str) -> None:
    text = intersection_topic(kind, region, intersection)
    parsed = parse_topic(text)
    assert parsed == Topic(kind, region=region, intersection=intersection)
    assert str(parsed) == text


@settings(max_examples=200)
@given(vehicle=ids)
def test_vehicle_position_topic_round_trip(vehicle: str) -> None:
    text = vehicle_position_topic(vehicle)
    parsed = parse_topic(text)
    assert parsed == Topic(TopicKind.VEHICLE_POSITION, vehicle=vehicle)
    assert str(parsed) == text


@settings(max_examples=200)
@given(corridor=ids)
def test_corridor_status_topic_round_trip(corridor: str) -> None:
    text = corridor_status_topic(corridor)
    parsed = parse_topic(text)
    assert parsed == Topic(TopicKind.CORRIDOR_STATUS, corridor=corridor)
    assert str(parsed) == text


def test_region_named_like_a_keyword_is_still_an_intersection_topic() -> None:
    parsed = parse_topic("cb/v1/vehicle/x/corridor/status")
    assert parsed == Topic(TopicKind.STATUS, region="vehicle", intersection="corridor")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cb",
        "cb/v1",
        "cb/v2/r1/x/i1/telemetry",
        "xx/v1/r1/x/i1/telemetry",
        "/cb/v1/r1/x/i1/telemetry",
        "CB/v1/r1/x/i1/telemetry",
        "cb/v1/r1/x/i1/" + "a" * 600,
    ],
)
def test_parse_topic_refuses_wrong_root(text: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(text)
    assert info.value.field == "topic"


@pytest.mark.parametrize(
    "text",
    [
        "cb/v1/r1/x/i1/bogus",
        "cb/v1/r1/x/i1/position",
        "cb/v1/r1/x/i1/corridor_status",
        "cb/v1/r1/x/i1/Telemetry",
        "cb/v1/vehicle/v1/status",
        "cb/v1/corridor/c1/position",
        "cb/v1/bus/v1/position",
    ],
)
def test_parse_topic_refuses_unknown_kind(text: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(text)
    assert info.value.field == "topic"


@pytest.mark.parametrize(
    "text",
    [
        "cb/v1/r1/x/telemetry",
        "cb/v1/r1/x/i1/telemetry/extra",
        "cb/v1/r1/x/i1/telemetry/",
        "cb/v1/r1/y/i1/telemetry",
        "cb/v1/vehicle/position",
        "cb/v1/vehicle/v1/position/now",
        "cb/v1/corridor/status",
        "cb/v1/corridor/c1/c2/status",
    ],
)
def test_parse_topic_refuses_wrong_depth_or_layout(text: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(text)
    assert info.value.field == "topic"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("cb/v1/+/x/i1/telemetry", "topic.region"),
        ("cb/v1/#/x/i1/telemetry", "topic.region"),
        ("cb/v1/r1/x/+/plan", "topic.intersection"),
        ("cb/v1/r1/x/#/ack", "topic.intersection"),
        ("cb/v1//x/i1/status", "topic.region"),
        ("cb/v1/r1/x/$SYS/status", "topic.intersection"),
        ("cb/v1/vehicle/+/position", "topic.vehicle"),
        ("cb/v1/vehicle/#/position", "topic.vehicle"),
        ("cb/v1/corridor/+/status", "topic.corridor"),
        ("cb/v1/corridor//status", "topic.corridor"),
    ],
)
def test_parse_topic_refuses_wildcards_and_bad_ids(text: str, field: str) -> None:
    with pytest.raises(TopicError) as info:
        parse_topic(text)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": TopicKind.TELEMETRY, "intersection": "i1"}, "topic.region"),
        ({"kind": TopicKind.PLAN, "region": "r1"}, "topic.intersection"),
        ({"kind": TopicKind.VEHICLE_POSITION}, "topic.vehicle"),
        ({"kind": TopicKind.CORRIDOR_STATUS}, "topic.corridor"),
    ],
)
def test_topic_refuses_missing_ids(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(TopicError) as info:
        Topic(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (
            {"kind": TopicKind.TELEMETRY, "region": "r", "intersection": "i", "vehicle": "v"},
            "topic.vehicle",
        ),
        (
            {"kind": TopicKind.ACK, "region": "r", "intersection": "i", "corridor": "c"},
            "topic.corridor",
        ),
        ({"kind": TopicKind.VEHICLE_POSITION, "vehicle": "v", "region": "r"}, "topic.region"),
        (
            {"kind": TopicKind.CORRIDOR_STATUS, "corridor": "c", "intersection": "i"},
            "topic.intersection",
        ),
    ],
)
def test_topic_refuses_extra_ids(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(TopicError) as info:
        Topic(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("bad", BAD_IDS)
def test_topic_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(TopicError) as info:
        Topic(TopicKind.STATUS, region="r1", intersection=bad)
    assert info.value.field == "topic.intersection"
    with pytest.raises(TopicError) as info:
        vehicle_position_topic(bad)
    assert info.value.field == "topic.vehicle"
    with pytest.raises(TopicError) as info:
        corridor_status_topic(bad)
    assert info.value.field == "topic.corridor"


def test_topic_is_immutable() -> None:
    topic = Topic(TopicKind.TELEMETRY, region="r1", intersection="i1")
    with pytest.raises(AttributeError):
        topic.region = "r2"  # type: ignore[misc]


def test_topic_refuses_unknown_kind() -> None:
    with pytest.raises(TopicError):
        Topic("bogus", corridor="c")  # type: ignore[arg-type]


# --- subscription filters -------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(INTERSECTION_KINDS))
def test_intersection_filter_defaults_to_wildcards(kind: TopicKind) -> None:
    assert intersection_filter(kind) == f"cb/v1/+/x/+/{kind.value}"


def test_intersection_filter_telemetry() -> None:
    assert intersection_filter(TopicKind.TELEMETRY) == "cb/v1/+/x/+/telemetry"


def test_intersection_filter_with_concrete_ids() -> None:
    assert intersection_filter(TopicKind.PLAN, region="r1") == "cb/v1/r1/x/+/plan"
    assert intersection_filter(TopicKind.ACK, intersection="i-9") == "cb/v1/+/x/i-9/ack"
    assert (
        intersection_filter(TopicKind.STATUS, region="r1", intersection="i-9")
        == "cb/v1/r1/x/i-9/status"
    )


@pytest.mark.parametrize("kind", [TopicKind.VEHICLE_POSITION, TopicKind.CORRIDOR_STATUS])
def test_intersection_filter_refuses_non_intersection_kinds(kind: TopicKind) -> None:
    with pytest.raises(TopicError) as info:
        intersection_filter(kind)
    assert info.value.field == "topic.kind"


@pytest.mark.parametrize("bad", ["#", "", "a/b", "a+", "$share", "x" * 65])
def test_intersection_filter_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(TopicError) as info:
        intersection_filter(TopicKind.TELEMETRY, region=bad)
    assert info.value.field == "topic.region"
    with pytest.raises(TopicError) as info:
        intersection_filter(TopicKind.TELEMETRY, intersection=bad)
    assert info.value.field == "topic.intersection"


def test_shared_filter() -> None:
    assert (
        shared_filter(intersection_filter(TopicKind.TELEMETRY), "workers")
        == "$share/workers/cb/v1/+/x/+/telemetry"
    )


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "$x"])
def test_shared_filter_refuses_bad_group(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        shared_filter("cb/v1/+/x/+/telemetry", bad)
    assert info.value.field == "share_group"
