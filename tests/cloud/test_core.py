from __future__ import annotations

from collections.abc import Sequence

import pytest

from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import SendPlan
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    AckStatus,
    ApproachState,
    CorridorRequest,
    Mode,
    PlanAck,
    Presence,
    Status,
    Telemetry,
)
from citybrain.simulator.networks import arterial

ROAD = arterial(5, length_m=2400.0)
ROUTE = ("west", "a01", "a02", "a03", "a04", "a05", "east")
NOW = 1000.0


class Wall:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _core(wall: Wall | None = None, **settings: float) -> CloudCore:
    return CloudCore(
        ROAD.network,
        ROAD.plans,
        settings=CoreSettings(**settings),  # type: ignore[arg-type]
        wall_clock=wall or Wall(),
    )


def _request(vehicle: str = "AMB-1") -> CorridorRequest:
    return CorridorRequest(
        vehicle=vehicle, origin="west", route=ROUTE, priority=5, requester="op",
        requested_at=NOW,
    )  # fmt: skip


def _plans(actions: Sequence[object]) -> list[SendPlan]:
    return [a for a in actions if isinstance(a, SendPlan)]


def _ack(plan: SendPlan, status: AckStatus = AckStatus.ACCEPTED) -> PlanAck:
    return PlanAck(
        plan_id=plan.plan.plan_id, intersection=plan.intersection, seq=plan.plan.seq,
        status=status, at=NOW,
    )  # fmt: skip


def test_every_first_plan_acknowledged_gives_the_request_latency() -> None:
    wall = Wall()
    core = _core(wall)
    sent = _plans(core.request(_request(), NOW))
    assert sent
    wall.t = 0.004
    for plan in sent:
        core.on_ack(_ack(plan), NOW + 0.004)
    assert list(core.plan_latency_ms) == [4.0]
    assert not core.pending


def test_an_unacknowledged_plan_is_sent_again_as_a_new_plan_then_planned_around() -> None:
    wall = Wall()
    core = _core(wall, ack_timeout_s=1.0, send_attempts=2)
    sent = _plans(core.request(_request(), NOW))
    target = sent[0]
    for plan in sent[1:]:
        core.on_ack(_ack(plan), NOW)
    wall.t = 1.5
    again = _plans(core.tick(NOW + 1.5))
    (resent,) = [p for p in again if p.intersection == target.intersection]
    assert resent.plan.seq > target.plan.seq
    assert resent.plan.plan_id != target.plan.plan_id
    assert core.counters["plans_resent"] == 1
    wall.t = 3.0
    later = _plans(core.tick(NOW + 3.0))
    assert target.intersection in core.manager.unconfirmed
    assert all(p.intersection != target.intersection for p in later)
    # once its edge answers again it is planned for as before
    core.on_status(
        Status(intersection=target.intersection, presence=Presence.ONLINE, at=NOW + 4.0),
        NOW + 4.0,
    )
    assert target.intersection not in core.manager.unconfirmed


def test_telemetry_updates_queues_and_redeliveries_are_refused() -> None:
    core = _core()
    approach = next(a for a in ROAD.network.approaches if a.intersection_id == "a02")
    message = Telemetry(
        intersection="a02", controller_time=NOW, seq=5, mode=Mode.NORMAL,
        approaches=(ApproachState(approach=approach.id, queue_veh=12.0, occupancy=0.5,
                                  flow_vph=600.0),),
    )  # fmt: skip
    core.on_telemetry(message, NOW)
    link = core.state.approach_link[approach.id]
    assert core.state.queues(NOW).queue_veh[link] == 12.0
    with pytest.raises(ValidationError, match="not newer"):
        core.on_telemetry(message, NOW)
    assert core.seen["a02"].telemetry == message
