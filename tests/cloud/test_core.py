from __future__ import annotations

from collections.abc import Sequence

import pytest

from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import SendPlan
from citybrain.cloud.state import RefusedError
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    AckStatus,
    ApproachState,
    CorridorRequest,
    CorridorState,
    Mode,
    PlanAck,
    PlanKind,
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


def _request(vehicle: str = "AMB-1", at: float = NOW) -> CorridorRequest:
    return CorridorRequest(
        vehicle=vehicle, origin="west", route=ROUTE, priority=5, requester="op",
        requested_at=at,
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
    # planned around, and released: its edge may have run the plan with only its acks lost
    assert [p.plan.kind for p in later if p.intersection == target.intersection] == [
        PlanKind.RELEASE
    ]
    # once its edge answers again it is planned for as before
    core.on_status(
        Status(intersection=target.intersection, presence=Presence.ONLINE, at=NOW + 4.0),
        NOW + 4.0,
    )
    assert target.intersection not in core.manager.unconfirmed


def _first_unanswered(wall: Wall) -> tuple[CloudCore, SendPlan]:
    """A request whose first plan to one intersection alone goes unacknowledged."""
    core = _core(wall, ack_timeout_s=1.0, send_attempts=2)
    sent = _plans(core.request(_request(), NOW))
    for plan in sent[1:]:
        core.on_ack(_ack(plan), NOW)
    return core, sent[0]


def test_a_first_plan_acknowledged_only_when_sent_again_still_gives_the_latency() -> None:
    wall = Wall()
    core, unanswered = _first_unanswered(wall)
    wall.t = 1.5
    again = _plans(core.tick(NOW + 1.5))
    (resent,) = [p for p in again if p.intersection == unanswered.intersection]
    core.on_ack(_ack(resent), NOW + 1.6)
    assert not core.dispatches
    assert list(core.plan_latency_ms) == [1500.0]


def test_a_first_plan_never_acknowledged_ends_its_request_instead_of_keeping_it_forever() -> None:
    wall = Wall()
    core, _ = _first_unanswered(wall)
    wall.t = 1.5
    core.tick(NOW + 1.5)
    wall.t = 3.0
    core.tick(NOW + 3.0)
    assert not core.dispatches
    assert not core.plan_latency_ms
    assert core.counters["dispatches_unconfirmed"] == 1


def test_a_first_plan_not_sent_again_because_its_corridor_ended_ends_its_request() -> None:
    wall = Wall()
    core, _ = _first_unanswered(wall)
    corridor_id = core.corridor_of("AMB-1")
    assert corridor_id is not None
    for release in _plans(core.cancel(corridor_id, NOW + 0.5, reason="test")):
        core.on_ack(_ack(release, AckStatus.RELEASED), NOW + 0.5)
    wall.t = 1.5
    core.tick(NOW + 1.5)
    assert not core.dispatches
    assert core.counters["dispatches_superseded"] == 1


def test_a_request_with_no_first_plan_times_no_latency() -> None:
    """Leaving in 400 s with a long horizon, every window lies beyond reach: no first plan,
    and the next ack of another corridor's plan took it as this request's (42 s "latency")."""
    from citybrain.cloud.corridor import Settings as CorridorSettings

    wall = Wall()
    settings = CoreSettings(corridor=CorridorSettings(horizon_s=600.0))
    core = CloudCore(ROAD.network, ROAD.plans, settings=settings, wall_clock=wall)
    later = CorridorRequest(
        vehicle="AMB-2", origin="west", route=ROUTE, priority=5, requester="op",
        requested_at=NOW, depart_at=NOW + 400.0,
    )  # fmt: skip
    assert _plans(core.request(later, NOW)) == []
    wall.t = 42.0
    sent = _plans(core.request(_request(), NOW + 1.0))
    for plan in sent:
        core.on_ack(_ack(plan), NOW + 1.0)
    assert list(core.plan_latency_ms) == [0.0]  # AMB-1's, none for AMB-2


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


def test_plans_far_ahead_take_over_later_so_their_lease_stays_within_the_limit() -> None:
    """A horizon covering a whole 7 km arterial puts the last windows 6 minutes ahead: their
    plans take over later rather than carry a lease the controllers refuse, but never so late
    that the cabinet, handed the plan at its takeover, finds it stale; the windows further
    out wait (``test_windows_beyond_a_lease_wait_until_...`` in ``test_corridor.py``)."""
    from citybrain.cloud.corridor import Settings as CorridorSettings
    from citybrain.signal_plans.controller import ControllerModel
    from citybrain.simulator.scenarios import load_network

    road = load_network("arterial")
    route = ("west", *sorted(road.plans), "east")
    settings = CoreSettings(corridor=CorridorSettings(horizon_s=600.0, takeover_lead_s=0.2))
    core = CloudCore(road.network, road.plans, settings=settings, wall_clock=Wall())
    request = CorridorRequest(
        vehicle="AMB-1", origin="west", route=route, priority=5, requester="op",
        requested_at=NOW,
    )  # fmt: skip
    plans = _plans(core.request(request, NOW))
    assert len(road.plans) - 5 <= len(plans) < len(road.plans)
    later = [p for p in plans if p.plan.valid_from > NOW + 0.2]
    assert later, "the last stop lines are more than a lease ahead"
    for sent in plans:
        plan = sent.plan
        assert plan.valid_until - plan.valid_from <= 300.0 + 1e-9
        # the plan still takes over a cycle or more before its window, or at once
        cycle = road.plans[sent.intersection].cycle_s
        assert plan.valid_from == NOW + 0.2 or plan.valid_from <= plan.windows[0].open_at - cycle
        # a cabinet with the default limits takes it at its takeover, as does the cloud's twin
        cabinet = ControllerModel(road.plans[sent.intersection])
        assert cabinet.command(plan, plan.valid_from).status is AckStatus.ACCEPTED
    core.settle()
    assert core.counters["twin_refused"] == 0


def test_a_refused_first_plan_ends_the_latency_sample_instead_of_keeping_it_forever() -> None:
    core = _core()
    sent = _plans(core.request(_request(), NOW))
    refusal = PlanAck(
        plan_id=sent[0].plan.plan_id, intersection=sent[0].intersection, seq=sent[0].plan.seq,
        status=AckStatus.REJECTED, at=NOW, reason_code="unsafe", reason="test",
    )  # fmt: skip
    core.on_ack(refusal, NOW)
    for plan in sent[1:]:
        core.on_ack(_ack(plan), NOW)
    assert not core.dispatches
    assert not core.plan_latency_ms
    assert core.counters["dispatches_refused"] == 1


def test_ended_corridors_are_forgotten_past_the_limit_and_acks_find_theirs_directly() -> None:
    from citybrain.cloud.corridor import Settings as CorridorSettings

    core = CloudCore(
        ROAD.network,
        ROAD.plans,
        settings=CoreSettings(corridor=CorridorSettings(keep_ended=3)),
        wall_clock=Wall(),
    )
    ids = []
    for n in range(6):
        now = NOW + 100.0 * n
        sent = _plans(core.request(_request(at=now), now))
        corridor_id = core.manager.by_vehicle["AMB-1"]
        ids.append(corridor_id)
        core.cancel(corridor_id, now, reason="test")
        # an ack that comes after the cancel still finds its (ended) corridor
        actions = core.on_ack(_ack(sent[0]), now)
        assert any(getattr(a, "status", None) for a in actions)
    assert list(core.manager.corridors) == ids[-3:]
    # the plan index keeps only the corridors still known
    owners = {o for owners in core.manager._serving.values() for o in owners}
    assert owners == set(ids[-3:])
    assert set(core.manager._plans_of) == set(ids[-3:])
    # an ack for a forgotten corridor's plan is harmless
    assert core.on_ack(_ack(sent[0]), NOW + 600.0) is not None


def test_a_full_table_gives_way_to_a_higher_priority_the_lowest_then_newest_first() -> None:
    """The table holds 4: a request above the lowest priority pre-empts the newest corridor
    of that priority (one status ``cancelled``/``preempted``, its windows gone from the same
    plans that bring the newcomer's, one plan per intersection); one at or below is refused."""
    from citybrain.cloud.corridor import PREEMPTED, PublishStatus
    from citybrain.cloud.corridor import Settings as CorridorSettings
    from citybrain.models.messages import CorridorState

    core = CloudCore(
        ROAD.network,
        ROAD.plans,
        settings=CoreSettings(corridor=CorridorSettings(max_corridors=4)),
        wall_clock=Wall(),
    )

    def request(vehicle: str, priority: int, at: float) -> CorridorRequest:
        return CorridorRequest(
            vehicle=vehicle, origin="west", route=ROUTE, priority=priority, requester="op",
            requested_at=at,
        )  # fmt: skip

    for n, priority in enumerate((2, 1, 1, 3)):
        core.request(request(f"V{n}", priority, NOW + n), NOW + n)
    with pytest.raises(ValidationError, match="none below priority 1"):
        core.request(request("LOW", 1, NOW + 5), NOW + 5)
    actions = core.request(request("AMB", 2, NOW + 6), NOW + 6)
    ended = [
        a.status
        for a in actions
        if isinstance(a, PublishStatus) and a.status.state is CorridorState.CANCELLED
    ]
    assert [(s.vehicle, s.reason) for s in ended] == [("V2", PREEMPTED)]
    assert sorted(core.manager.by_vehicle) == ["AMB", "V0", "V1", "V3"]
    sent = _plans(actions)
    assert sent
    assert len({p.intersection for p in sent}) == len(sent), "one plan per intersection"
    serving = core.manager._serving
    assert all(ended[0].corridor_id not in serving.get(p.plan.plan_id, []) for p in sent)


def _telemetry(node: str, seq: int, mode: Mode = Mode.NORMAL) -> Telemetry:
    return Telemetry(intersection=node, controller_time=NOW, seq=seq, mode=mode)


def test_a_last_will_keeps_the_mode_telemetry_told_since() -> None:
    """The will is written when the edge connects, so its mode is stale: an intersection
    that went into priority and then vanished was shown as ``normal``."""
    core = _core()
    core.on_status(Status(intersection="a02", presence=Presence.ONLINE, at=NOW), NOW)
    core.on_telemetry(_telemetry("a02", 1, Mode.PRIORITY), NOW)
    core.on_status(Status(intersection="a02", presence=Presence.OFFLINE, mode=Mode.NORMAL), NOW)
    assert (core.seen["a02"].presence, core.seen["a02"].mode) == (Presence.OFFLINE, Mode.PRIORITY)
    # a goodbye (it has ``at``) says what the edge ran as it left
    goodbye = Status(intersection="a02", presence=Presence.OFFLINE, mode=Mode.FAIL_SAFE, at=NOW)
    core.on_status(goodbye, NOW)
    assert core.seen["a02"].mode is Mode.FAIL_SAFE


def test_an_edge_born_again_may_start_its_count_over_once() -> None:
    core = _core()
    core.on_telemetry(_telemetry("a02", 10), NOW)
    restarted = 1_700_000_000_000  # an edge counts from the wall clock in ms
    with pytest.raises(RefusedError, match="leaps"):
        core.on_telemetry(_telemetry("a02", restarted), NOW + 1.0)
    core.on_status(Status(intersection="a02", presence=Presence.ONLINE, at=NOW + 1.0), NOW + 1.0)
    core.on_telemetry(_telemetry("a02", restarted), NOW + 1.0)
    assert core.seen["a02"].telemetry == _telemetry("a02", restarted)


@pytest.mark.security
def test_a_position_counts_only_near_now_on_the_network_and_moves_only_its_own_corridor() -> None:
    """A position of a vehicle without a corridor is kept as where it is, and sends nothing."""
    from citybrain.models.messages import VehiclePosition

    core = _core()
    core.request(_request(), NOW)

    def position(
        vehicle: str, at: float, link: str = "west-a01", offset_m: float = 10.0
    ) -> VehiclePosition:
        return VehiclePosition(
            vehicle=vehicle, time=at, link=link, offset_m=offset_m, speed_mps=15.0
        )

    cases = [
        (position("AMB-1", 2_000_000_000.0), "position_time"),
        (position("AMB-1", NOW - 30.0), "position_time"),
        (position("AMB-9", NOW, link="nowhere"), "fleet_position_link"),  # no corridor: quiet
        (position("AMB-9", NOW - 30.0), "fleet_position_time"),
        (position("AMB-9", NOW, offset_m=5000.0), "fleet_position_link"),
    ]
    for bad, code in cases:
        with pytest.raises(RefusedError) as refused:
            core.on_position(bad, NOW, tolerance_s=5.0)
        assert refused.value.code == code
    assert list(core.fleet) == []
    assert core.on_position(position("AMB-9", NOW), NOW, tolerance_s=5.0) == []
    assert core.fleet["AMB-9"].link == "west-a01"
    assert core.counters["positions_without_corridor"] == 1
    late = position("AMB-9", NOW - 2.0, link="a01-a02")  # an older report, delivered late
    core.on_position(late, NOW, tolerance_s=5.0)
    assert core.fleet["AMB-9"].link == "west-a01"
    corridor_id = core.manager.by_vehicle["AMB-1"]
    assert core.manager.status(corridor_id, NOW).state is CorridorState.GRANTED, "activated"
    core.on_position(position("AMB-1", NOW + 2.0), NOW, tolerance_s=5.0)
    assert core.manager.status(corridor_id, NOW).state is CorridorState.ACTIVE


def _refusal(plan: SendPlan, code: str, *, seq: int | None = None) -> PlanAck:
    return PlanAck(
        plan_id=plan.plan.plan_id, intersection=plan.intersection,
        seq=plan.plan.seq if seq is None else seq, status=AckStatus.REJECTED, at=NOW,
        reason_code=code, reason="refused",
    )  # fmt: skip


def _confirmed(core: CloudCore, node: str) -> bool:
    (status,) = core.statuses(NOW)
    return next(line.confirmed for line in status.intersections if line.intersection == node)


@pytest.mark.security
def test_refusals_of_copies_do_not_unconfirm_the_plan_the_edge_took() -> None:
    """With the leader's broker password but not its key, an attacker sends copies of a
    genuine plan: tampered (another seq), unsigned or re-signed (the edge acks a signature
    refusal under the plan's id), or replayed (``out_of_sequence``). None of those acks is
    about the plan the edge runs: before, each un-confirmed it and dropped it from the twin."""
    core = _core()
    first = _plans(core.request(_request(), NOW))[0]
    node = first.intersection
    core.on_ack(_ack(first), NOW)
    core.on_ack(_ack(first, AckStatus.APPLIED), NOW)
    assert _confirmed(core, node)
    for ack in (
        _refusal(first, "bad_signature", seq=2**53 - 1),
        _refusal(first, "unsigned"),
        _refusal(first, "unknown_key"),
        _refusal(first, "out_of_sequence"),
    ):
        assert core.on_ack(ack, NOW) == []
    assert _confirmed(core, node)
    assert core.counters["acks_unmatched"] == 1
    assert core.counters["acks_of_copies"] == 3


def test_a_cabinet_refusing_a_plan_the_edge_accepted_still_unconfirms_it() -> None:
    core = _core()
    first = _plans(core.request(_request(), NOW))[0]
    core.on_ack(_ack(first), NOW)
    core.on_ack(_refusal(first, "min_green_cut"), NOW)
    assert not _confirmed(core, first.intersection)
    assert core.counters["acks_of_copies"] == 0


def test_a_corridor_asked_for_a_vehicle_and_a_destination_starts_where_it_last_reported() -> None:
    from citybrain.models.messages import VehiclePosition

    core = _core()
    request = CorridorRequest(
        vehicle="AMB-2", destination="east", priority=5, requester="op", requested_at=NOW
    )
    with pytest.raises(ValidationError, match="no position from AMB-2") as unheard:
        core.request(request, NOW)
    assert unheard.value.field == "origin"
    here = VehiclePosition(
        vehicle="AMB-2", time=NOW, link="a01-a02", offset_m=120.0, speed_mps=12.0
    )
    core.on_position(here, NOW, tolerance_s=5.0)
    with pytest.raises(ValidationError, match="in the last 30 s"):
        core.request(request, NOW + 31.0)  # heard from too long ago
    core.request(request, NOW + 2.0)
    corridor = core.manager.corridors[core.manager.by_vehicle["AMB-2"]]
    assert corridor.offset_m == 120.0
    assert corridor.stop_lines[0].intersection == "a02"  # a01 is behind it


def test_a_vehicle_just_past_the_end_of_its_link_is_requested_from_its_end() -> None:
    from citybrain.models.messages import VehiclePosition

    core = _core()
    length = float(core.graph.link_length[core.graph.link_index["a01-a02"]])
    beyond = VehiclePosition(
        vehicle="AMB-3", time=NOW, link="a01-a02", offset_m=length + 0.5, speed_mps=12.0
    )
    core.on_position(beyond, NOW, tolerance_s=5.0)  # GPS is not exact: up to 1 m over
    request = CorridorRequest(
        vehicle="AMB-3", destination="east", priority=5, requester="op", requested_at=NOW
    )
    core.request(request, NOW)
    corridor = core.manager.corridors[core.manager.by_vehicle["AMB-3"]]
    assert corridor.offset_m == length
