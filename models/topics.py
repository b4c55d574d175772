"""MQTT topics of the wire contract, built and parsed by pure functions.

``Topic`` is frozen and validates itself, like aiomqtt's: a topic that exists as a value is a
topic the contract allows. Filters for subscribing (with ``+`` wildcards and ``$share`` groups)
are built here too so no other module writes a topic string by hand.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from citybrain.models.checks import ID_PATTERN, check_id
from citybrain.models.errors import TopicError, ValidationError

ROOT = "cb/v1"


class TopicKind(enum.StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    PLAN = "plan"
    ACK = "ack"
    VEHICLE_POSITION = "position"
    CORRIDOR_STATUS = "corridor_status"


INTERSECTION_KINDS = frozenset(
    {TopicKind.TELEMETRY, TopicKind.STATUS, TopicKind.PLAN, TopicKind.ACK}
)


@dataclass(frozen=True, slots=True)
class Topic:
    """One concrete topic: its kind and the ids it is addressed by."""

    kind: TopicKind
    region: str | None = None
    intersection: str | None = None
    vehicle: str | None = None
    corridor: str | None = None

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValidationError as error:
            raise TopicError(error.field, error.reason) from None

    def _check(self) -> None:
        if not isinstance(self.kind, TopicKind):
            raise ValidationError("topic.kind", f"unknown topic kind {self.kind!r}")
        given = {
            "region": self.region,
            "intersection": self.intersection,
            "vehicle": self.vehicle,
            "corridor": self.corridor,
        }
        if self.kind in INTERSECTION_KINDS:
            needed = {"region", "intersection"}
        elif self.kind is TopicKind.VEHICLE_POSITION:
            needed = {"vehicle"}
        else:
            needed = {"corridor"}
        for name, value in given.items():
            if name in needed:
                if value is None:
                    raise ValidationError(f"topic.{name}", f"a {self.kind} topic needs a {name}")
                check_id(f"topic.{name}", value)
            elif value is not None:
                raise ValidationError(f"topic.{name}", f"a {self.kind} topic takes no {name}")

    def __str__(self) -> str:
        if self.kind in INTERSECTION_KINDS:
            return f"{ROOT}/{self.region}/x/{self.intersection}/{self.kind}"
        if self.kind is TopicKind.VEHICLE_POSITION:
            return f"{ROOT}/vehicle/{self.vehicle}/position"
        return f"{ROOT}/corridor/{self.corridor}/status"


def intersection_topic(kind: TopicKind, region: str, intersection: str) -> str:
    return str(Topic(kind, region=region, intersection=intersection))


def vehicle_position_topic(vehicle: str) -> str:
    return str(Topic(TopicKind.VEHICLE_POSITION, vehicle=vehicle))


def corridor_status_topic(corridor: str) -> str:
    return str(Topic(TopicKind.CORRIDOR_STATUS, corridor=corridor))


def parse_topic(topic: str) -> Topic:
    """Parse a concrete topic string, or raise ``TopicError`` saying what does not fit."""
    parts = topic.split("/")
    if len(topic) > 512 or parts[:2] != ROOT.split("/"):
        raise TopicError("topic", f"{topic[:80]!r} is not under {ROOT}/")
    rest = parts[2:]
    if len(rest) == 4 and rest[1] == "x":
        region, _, intersection, kind_name = rest
        try:
            kind = TopicKind(kind_name)
        except ValueError:
            kind = None
        if kind not in INTERSECTION_KINDS:
            raise TopicError("topic", f"{topic!r}: unknown intersection topic {kind_name!r}")
        return Topic(kind, region=region, intersection=intersection)
    if len(rest) == 3 and rest[0] == "vehicle" and rest[2] == "position":
        return Topic(TopicKind.VEHICLE_POSITION, vehicle=rest[1])
    if len(rest) == 3 and rest[0] == "corridor" and rest[2] == "status":
        return Topic(TopicKind.CORRIDOR_STATUS, corridor=rest[1])
    raise TopicError("topic", f"{topic[:80]!r} is not a topic of the contract")


def intersection_filter(kind: TopicKind, *, region: str = "+", intersection: str = "+") -> str:
    """Subscription filter for an intersection topic; ``+`` is a single-level wildcard."""
    if kind not in INTERSECTION_KINDS:
        raise TopicError("topic.kind", f"{kind} is not an intersection topic")
    for name, value in (("region", region), ("intersection", intersection)):
        if value != "+" and ID_PATTERN.fullmatch(value) is None:
            raise TopicError(f"topic.{name}", f"{value!r} is neither '+' nor a valid id")
    return f"{ROOT}/{region}/x/{intersection}/{kind}"


def shared_filter(topic_filter: str, group: str) -> str:
    """The MQTT 5 shared-subscription form, so several cloud workers split one stream."""
    try:
        check_id("share_group", group)
    except ValidationError as error:
        raise TopicError(error.field, error.reason) from None
    if not topic_filter.startswith(f"{ROOT}/"):
        raise TopicError("topic_filter", f"{topic_filter[:80]!r} is not under {ROOT}/")
    return f"$share/{group}/{topic_filter}"
