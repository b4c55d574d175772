"""Signal vocabulary: what a signal group can show and which movements it controls."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from citybrain.models.checks import are_ids, check_id_fields, check_ids
from citybrain.models.errors import ValidationError


class Indication(enum.StrEnum):
    """What one signal group shows. Anything not green or yellow is red (stop)."""

    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class Interval(enum.StrEnum):
    """Where the controller is in a phase change, as reported in telemetry."""

    GREEN = "green"
    YELLOW = "yellow"
    RED_CLEARANCE = "red_clearance"


@dataclass(frozen=True, slots=True)
class SignalGroup:
    """Movements (and perhaps a pedestrian crossing) that always show the same colour."""

    id: str
    intersection_id: str
    movement_ids: frozenset[str]
    pedestrian_crossing: bool = False

    def __post_init__(self) -> None:
        check_id_fields(
            ("signal_group.id", "signal_group.intersection_id"), (self.id, self.intersection_id)
        )
        if not are_ids(self.movement_ids):  # else sorted, so that the error names the same one
            check_ids("signal_group.movement_ids", sorted(self.movement_ids))
        if not self.movement_ids and not self.pedestrian_crossing:
            raise ValidationError(
                "signal_group.movement_ids",
                f"group {self.id!r} controls no movement and no crossing",
            )
