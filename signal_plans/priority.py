"""Priority-plan building: the green window a vehicle needs, and the plan message that asks for it.

The window rule is DESIGN's: open early enough that the queue ahead of the vehicle has
discharged (queue x saturation headway + start-up lost time) plus a safety margin before the
vehicle's arrival, and close once it has cleared the intersection.
"""

from __future__ import annotations

from dataclasses import dataclass

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import PlanKind, SignalPlan
from citybrain.models.traffic import DEFAULT_LOST_TIME_S, queue_discharge_time_s
from citybrain.signal_plans.transitions import Transition

DEFAULT_MARGIN_S = 3.0
DEFAULT_CLEAR_AFTER_S = 4.0
"""Time for an emergency vehicle to cross and clear the box after reaching the stop line."""


@dataclass(frozen=True, slots=True)
class Window:
    open_at_s: float
    close_at_s: float
    flush_s: float
    """Green needed before arrival to discharge the queue ahead."""


def priority_window(
    eta_s: float,
    *,
    queue_veh: float,
    lanes: int,
    saturation_flow_vphpl: float,
    lost_time_s: float = DEFAULT_LOST_TIME_S,
    margin_s: float = DEFAULT_MARGIN_S,
    clear_after_s: float = DEFAULT_CLEAR_AFTER_S,
) -> Window:
    check_number("eta_s", eta_s, ge=0.0)
    check_number("margin_s", margin_s, ge=0.0, le=60.0)
    check_number("clear_after_s", clear_after_s, gt=0.0, le=60.0)
    flush = queue_discharge_time_s(
        queue_veh, lanes=lanes, saturation_flow_vphpl=saturation_flow_vphpl, lost_time_s=lost_time_s
    )
    return Window(max(0.0, eta_s - flush - margin_s), eta_s + clear_after_s, flush)


def plan_message(
    transition: Transition,
    *,
    plan_id: str,
    intersection: str,
    seq: int,
    issued_at_s: float,
    corridor_id: str | None = None,
    lease_margin_s: float = 10.0,
) -> SignalPlan:
    """The wire plan carrying a transition's steps, valid from its takeover; the lease ends
    ``lease_margin_s`` after the controller is back on its normal timeline."""
    check_number("lease_margin_s", lease_margin_s, gt=0.0, le=120.0)
    if not transition.steps:
        raise ValidationError(
            "transition", "the normal plan already serves this window: send nothing"
        )
    steps = tuple(step.to_wire() for step in transition.steps)
    valid_from = transition.starts_at_s
    valid_until = max(transition.resume_at_s, steps[-1].at) + lease_margin_s
    return SignalPlan(
        plan_id=plan_id,
        intersection=intersection,
        seq=seq,
        issued_at=issued_at_s,
        valid_from=valid_from,
        valid_until=valid_until,
        kind=PlanKind.PRIORITY,
        corridor_id=corridor_id,
        steps=steps,
    )
