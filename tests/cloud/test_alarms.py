"""Alarms, the city's states and metrics as the real ``CloudService`` makes them from what its
edges tell it (messages handed to ``handle`` with the broker connection faked as up), and the
pure ``AlarmBook`` beneath."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from citybrain.cloud.alarms import AlarmBook, AlarmKind, Severity
from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.events import EventKind
from citybrain.cloud.operations import (
    FLEET_SHOWN_S,
    Conflict,
    HistoryQuery,
    NotFound,
    ServiceUnavailable,
    SignalState,
)
from citybrain.cloud.service import CloudService, writer_sinks
from citybrain.cloud.storage import MemoryStore, TelemetryWriter
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.codec import DEFAULT_CODEC as CODEC
from citybrain.models.messages import (
    AckStatus,
    ApproachState,
    CorridorRequest,
    CorridorState,
    Mode,
    PlanAck,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.signing import PlanSigner
from citybrain.models.topics import TopicKind, intersection_topic, vehicle_position_topic
from citybrain.simulator.networks import grid

ROAD = grid(3, 3)
REGION = "live"


# ---- the book -------------------------------------------------------------------------------


def test_one_alarm_is_open_per_kind_and_subject_and_a_cleared_one_still_needs_an_ack() -> None:
    book = AlarmBook(prefix="A1")
    first = book.raise_(AlarmKind.EDGE_OFFLINE, "g0_0", "offline", at=10.0)
    assert first is not None
    assert first.severity is Severity.CRITICAL
    assert book.raise_(AlarmKind.EDGE_OFFLINE, "g0_0", "offline again", at=11.0) is None
    assert book.raise_(AlarmKind.EDGE_OFFLINE, "g0_1", "offline", at=12.0) is not None
    cleared = book.clear(AlarmKind.EDGE_OFFLINE, "g0_0", at=13.0)
    assert cleared is not None
    assert cleared.cleared_at == 13.0
    assert [a.subject for a in book.alarms(active_only=True)] == ["g0_1", "g0_0"]
    again = book.raise_(AlarmKind.EDGE_OFFLINE, "g0_0", "offline", at=14.0)
    assert again is not None
    assert again.alarm_id != first.alarm_id, "a new episode, a new alarm"
    acked = book.acknowledge(first.alarm_id, by="op", at=20.0)
    assert (acked.acked_by, acked.acked_at, acked.acked_time) == (
        "op", 20.0, "1970-01-01T00:00:20.000Z"
    )  # fmt: skip
    assert book.acknowledge(first.alarm_id, by="admin", at=30.0).acked_by == "op"
    with pytest.raises(KeyError):
        book.acknowledge("A1-99", by="op", at=1.0)


def test_the_book_keeps_open_alarms_when_it_trims() -> None:
    book = AlarmBook(prefix="A1", max_alarms=3)
    ids = []
    for n in range(3):
        alarm = book.raise_(AlarmKind.TELEMETRY_STALE, f"n{n}", "stale", at=float(n))
        assert alarm is not None
        ids.append(alarm.alarm_id)
    book.acknowledge(ids[0], by="op", at=5.0)
    book.raise_(AlarmKind.TELEMETRY_STALE, "n3", "stale", at=6.0)
    book.raise_(AlarmKind.TELEMETRY_STALE, "n4", "stale", at=7.0)
    kept = [a.subject for a in book.alarms()]
    assert kept == ["n4", "n3", "n2", "n1"], "the settled one went; the open ones stay"


# ---- the service -------------------------------------------------------------------------------


def _service(**core: float | int) -> CloudService:
    settings = CoreSettings(**core)  # type: ignore[arg-type]
    service = CloudService(
        CloudCore(ROAD.network, ROAD.plans, settings=settings, wall_clock=time.monotonic),
        signer=PlanSigner.generate(),
    )
    service.connected.set()
    return service


def _telemetry(service: CloudService, node: str, seq: int, at: float, queue: float) -> bytes:
    state = service.core.state
    approaches = sorted(a for a, n in state.approach_node.items() if n == node)
    message = Telemetry(
        intersection=node, controller_time=at, seq=seq, mode=Mode.NORMAL,
        approaches=tuple(
            ApproachState(approach=a, queue_veh=queue, occupancy=0.0, flow_vph=0.0)
            for a in approaches
        ),
    )  # fmt: skip
    return DEFAULT_CODEC.encode(message)


async def _report(service: CloudService, at: float, seq: int, queue: float = 2.0) -> None:
    for node in service.core.seen:
        await service.handle(
            intersection_topic(TopicKind.TELEMETRY, REGION, node),
            _telemetry(service, node, seq, at, queue),
        )


async def _online(service: CloudService, node: str, presence: Presence) -> None:
    status = Status(intersection=node, presence=presence, at=1.0)
    await service.handle(intersection_topic(TopicKind.STATUS, REGION, node), CODEC.encode(status))


async def _only_g0_0_reports_until(service: CloudService, until: float) -> None:
    """g0_0 reports every 4 s (within the clock's tolerance, so time moves on); the rest
    fall silent."""
    at, seq = 1000.0, 10
    while at < until:
        at, seq = at + 4.0, seq + 1
        topic = intersection_topic(TopicKind.TELEMETRY, REGION, "g0_0")
        await service.handle(topic, _telemetry(service, "g0_0", seq, at, 1.0))


def run(scenario: Callable[[CloudService], Awaitable[None]], **core: float | int) -> None:
    async def main() -> None:
        service = _service(**core)
        for node in service.core.seen:
            await _online(service, node, Presence.ONLINE)
        await _report(service, 1000.0, 1)
        await scenario(service)

    asyncio.run(main())


def _plans(service: CloudService) -> list[SignalPlan]:
    plans = []
    while not service._outgoing.empty():
        topic, payload, _ = service._outgoing.get_nowait()
        if topic.endswith("/plan"):
            plans.append(DEFAULT_CODEC.decode(payload, SignalPlan))
    return plans


def _request(service: CloudService, vehicle: str = "AMB-1") -> CorridorRequest:
    return CorridorRequest(
        vehicle=vehicle, origin="g0_0", route=("g0_0", "g0_1", "g0_2"), priority=8,
        requester="op", requested_at=service.clock.now(),
    )  # fmt: skip


def test_an_edge_going_offline_raises_an_alarm_streamed_and_cleared_when_it_is_back() -> None:
    async def scenario(service: CloudService) -> None:
        subscription = service.events.subscribe()
        await _online(service, "g1_1", Presence.OFFLINE)
        (alarm,) = await service.alarms(active_only=True)
        assert (alarm.kind, alarm.subject) == (AlarmKind.EDGE_OFFLINE, "g1_1")
        await _online(service, "g1_1", Presence.OFFLINE)
        assert len(await service.alarms()) == 1, "one alarm per episode"
        await _online(service, "g1_1", Presence.ONLINE)
        (cleared,) = await service.alarms(active_only=True)
        assert cleared.cleared_at is not None, "cleared, still to be acknowledged"
        events = await subscription.next_batch(0.1)
        assert [e.kind for e in events] == [EventKind.ALARM, EventKind.ALARM]
        acked = await service.acknowledge_alarm(alarm.alarm_id, by="op")
        assert acked.acked_by == "op"
        assert await service.alarms(active_only=True) == []

    run(scenario)


def test_a_refused_plan_raises_an_alarm_with_the_reason_and_an_accepted_one_clears_it() -> None:
    async def scenario(service: CloudService) -> None:
        await service.request_corridor(_request(service))
        plans = _plans(service)
        plan = next(p for p in plans if p.intersection == "g0_1")
        refusal = PlanAck(
            plan_id=plan.plan_id, intersection="g0_1", seq=plan.seq, status=AckStatus.REJECTED,
            at=1000.5, reason_code="min_green", reason="phase A keeps its minimum green",
        )  # fmt: skip
        topic = intersection_topic(TopicKind.ACK, REGION, "g0_1")
        await service.handle(topic, CODEC.encode(refusal))
        (alarm,) = await service.alarms(active_only=True)
        assert alarm.kind is AlarmKind.PLAN_REFUSED
        assert "minimum green" in alarm.message
        forged = PlanAck(plan_id="other", intersection="g0_2", seq=1, status=AckStatus.REJECTED,
                         at=1000.5, reason="nonsense")  # fmt: skip
        await service.handle(
            intersection_topic(TopicKind.ACK, REGION, "g0_2"), CODEC.encode(forged)
        )
        assert len(await service.alarms()) == 1, "an ack for no plan sent raises nothing"

    run(scenario)


def test_a_silent_intersection_raises_not_confirmed() -> None:
    async def scenario(service: CloudService) -> None:
        await service.request_corridor(_request(service))
        _plans(service)
        for _ in range(3):
            await asyncio.sleep(0.02)
            await service.tick_once()
        kinds = {(a.kind, a.subject) for a in await service.alarms()}
        assert (AlarmKind.PLAN_UNCONFIRMED, "g0_1") in kinds

    run(scenario, ack_timeout_s=0.01, send_attempts=1)


def test_a_failed_corridor_raises_a_critical_alarm() -> None:
    async def scenario(service: CloudService) -> None:
        status = await service.request_corridor(_request(service))
        async with service._lock:
            service._apply(
                service.core.manager.fail(status.corridor_id, 1001.0, reason="vehicle lost")
            )
        (alarm,) = [a for a in await service.alarms() if a.kind is AlarmKind.CORRIDOR_FAILED]
        assert alarm.subject == status.corridor_id
        assert alarm.severity is Severity.CRITICAL
        assert "vehicle lost" in alarm.message

    run(scenario)


def test_stale_telemetry_and_a_degraded_service_raise_alarms_on_the_survey() -> None:
    async def scenario(service: CloudService) -> None:
        await service.survey()
        assert await service.alarms() == []
        await _only_g0_0_reports_until(service, 1030.0)
        service.connected.clear()  # the broker went
        await service.survey()
        stale = {a.subject for a in await service.alarms() if a.kind is AlarmKind.TELEMETRY_STALE}
        assert stale == set(service.core.seen) - {"g0_0"}
        (degraded,) = [a for a in await service.alarms() if a.kind is AlarmKind.SERVICE_DEGRADED]
        assert "broker" in degraded.message
        service.connected.set()
        await _report(service, 1031.0, 3)
        await service.survey()
        open_ = [a for a in await service.alarms() if a.cleared_at is None]
        assert open_ == [], "fresh telemetry and the broker back clear them all"

    run(scenario)


# ---- the city's states, map and metrics -------------------------------------------------


def test_intersection_states_colour_by_presence_then_mode_and_sum_queues() -> None:
    async def scenario(service: CloudService) -> None:
        await _online(service, "g2_2", Presence.OFFLINE)
        states = await service.intersection_states()
        by_id = dict(zip(states.ids, states.states, strict=True))
        assert by_id["g2_2"] is SignalState.OFFLINE
        assert by_id["g0_0"] is SignalState.NORMAL
        approaches = sum(1 for n in service.core.state.approach_node.values() if n == "g1_1")
        queues = dict(zip(states.ids, states.queue_veh, strict=True))
        assert queues["g1_1"] == pytest.approx(2.0 * approaches)
        assert states.time.endswith("Z")
        await _only_g0_0_reports_until(service, 1030.0)
        stale = await service.intersection_states()
        assert set(stale.states) == {SignalState.NORMAL, SignalState.STALE, SignalState.OFFLINE}
        assert dict(zip(stale.ids, stale.states, strict=True))["g0_0"] is SignalState.NORMAL
        subscription = service.events.subscribe()
        await service.survey()
        (event,) = [e for e in await subscription.next_batch(0.1) if e.kind == "intersections"]
        assert b'"ids"' in event.data

    run(scenario)


def test_the_fleet_goes_out_each_survey_while_a_vehicle_was_heard_from_then_once_empty() -> None:
    async def scenario(service: CloudService) -> None:
        subscription = service.events.subscribe()
        await service.survey()
        assert not [e for e in await subscription.next_batch(0.1) if e.kind == "vehicles"]
        now = service.clock.now()
        position = VehiclePosition(
            vehicle="AMB-5", time=now, link="bW0-g0_0", offset_m=20.0, speed_mps=10.0
        )
        await service.handle(vehicle_position_topic("AMB-5"), CODEC.encode(position))
        await service.survey()
        (event,) = [e for e in await subscription.next_batch(0.1) if e.kind == "vehicles"]
        fleet = msgspec.json.decode(event.data)
        assert [v["vehicle"] for v in fleet["vehicles"]] == ["AMB-5"]
        assert fleet["vehicles"][0]["from_node"] == "bW0"
        gone = msgspec.structs.replace(position, time=now - FLEET_SHOWN_S - 1.0)
        service.core.fleet["AMB-5"] = gone  # as if heard from just over 5 minutes ago
        await service.survey()
        (last,) = [e for e in await subscription.next_batch(0.1) if e.kind == "vehicles"]
        assert msgspec.json.decode(last.data)["vehicles"] == []  # the page clears it
        service.core.fleet["AMB-5"] = msgspec.structs.replace(position, time=now - 400.0)
        await service.survey()
        assert not [e for e in await subscription.next_batch(0.1) if e.kind == "vehicles"]

    run(scenario)


def test_the_map_has_every_node_at_its_coordinates_and_every_road_once() -> None:
    async def scenario(service: CloudService) -> None:
        network_map = await service.network_map()
        nodes = ROAD.network.intersections
        assert [(p.id, p.x_m, p.y_m) for p in network_map.places] == [
            (n.id, n.x_m, n.y_m) for n in nodes
        ]
        assert {p.id for p in network_map.places if p.controlled} == set(service.core.seen)
        pairs = {frozenset((link.from_node, link.to_node)) for link in ROAD.network.links}
        drawn = {
            frozenset((network_map.places[a].id, network_map.places[b].id))
            for a, b in network_map.roads
        }
        assert drawn == pairs
        assert len(network_map.roads) == len(pairs)

    run(scenario)


def test_metrics_count_messages_refusals_acks_and_time_requests_and_ticks() -> None:
    async def scenario(service: CloudService) -> None:
        await service.request_corridor(_request(service))
        plans = _plans(service)
        for plan in plans:
            ack = PlanAck(plan_id=plan.plan_id, intersection=plan.intersection, seq=plan.seq,
                          status=AckStatus.ACCEPTED, at=1000.2)  # fmt: skip
            topic = intersection_topic(TopicKind.ACK, REGION, plan.intersection)
            await service.handle(topic, CODEC.encode(ack))
        await service.handle(intersection_topic(TopicKind.TELEMETRY, REGION, "g0_0"), b"{")
        await service.tick_once()
        text = (await service.metrics()).decode()
        telemetry = len(service.core.seen)
        assert f'citybrain_messages_total{{kind="telemetry"}} {telemetry}.0' in text
        assert 'citybrain_messages_dropped_total{reason="malformed"} 1.0' in text
        assert f'citybrain_plan_acks_total{{status="accepted"}} {len(plans)}.0' in text
        assert "citybrain_request_to_ack_seconds_count 1.0" in text
        assert "citybrain_tick_seconds_count 1.0" in text
        assert "citybrain_corridors_active 1.0" in text
        assert "citybrain_database_backlog 0.0" in text

    run(scenario)


# ---- history from the store ----------------------------------------------------------------


def test_corridor_history_comes_from_the_store_and_survives_a_restart() -> None:
    """What issue 14 found: the list was served from memory and lost on restart."""

    async def main() -> None:
        store = MemoryStore()
        async with TelemetryWriter(store) as writer:
            first = _service()
            _, audit = writer_sinks(writer)
            first.audit_sink = audit
            first.history = writer.store
            for node in first.core.seen:
                await _online(first, node, Presence.ONLINE)
            await _report(first, 1000.0, 1)
            granted = await first.request_corridor(_request(first))
            await first.cancel(granted.corridor_id, reason="false alarm", by="op")
            await asyncio.sleep(0.05)  # the audit tasks hand their records to the writer
            await writer.flush()
            restarted = _service()
            restarted.history = writer.store
            page = await restarted.corridor_history(HistoryQuery(vehicle="AMB-1"))
            assert [(c.corridor_id, c.state) for c in page.corridors] == [
                (granted.corridor_id, CorridorState.CANCELLED)
            ]
            assert await restarted.corridors() == [], "the restarted service runs none"
            shown = await restarted.corridor(granted.corridor_id)
            assert shown.state is CorridorState.CANCELLED, "an old id is not unknown"
            with pytest.raises(NotFound):
                await restarted.corridor("C9-NOPE")
            with pytest.raises(Conflict, match="ended before this start"):
                await restarted.owner(granted.corridor_id)  # cancelling it: 409, not 404
            with pytest.raises(NotFound):
                await restarted.owner("C9-NOPE")
            store.available = False
            with pytest.raises(ServiceUnavailable):
                await restarted.corridor_history(HistoryQuery())

    asyncio.run(main())


def test_alarms_nobody_acknowledged_before_a_restart_are_read_back_and_can_be_acked() -> None:
    async def main() -> None:
        store = MemoryStore()
        async with TelemetryWriter(store) as writer:
            first = _service()
            _, audit = writer_sinks(writer)
            first.audit_sink = audit
            await _online(first, "g1_1", Presence.OFFLINE)
            await _online(first, "g1_2", Presence.OFFLINE)
            (settled, waiting) = sorted(await first.alarms(), key=lambda a: a.subject)
            await first.acknowledge_alarm(settled.alarm_id, by="op")
            await asyncio.sleep(0.05)  # the audit tasks hand their records to the writer
            await writer.flush()
            restarted = _service()
            restarted.history = writer.store
            await restarted.restore_alarms()
            (back,) = await restarted.alarms(active_only=True)
            assert (back.alarm_id, back.subject) == (waiting.alarm_id, "g1_2")
            acked = await restarted.acknowledge_alarm(back.alarm_id, by="night shift")
            assert acked.acked_by == "night shift"
            # the condition is this process's to watch: seen again, it raises its own alarm
            await _online(restarted, "g1_2", Presence.OFFLINE)
            (again,) = await restarted.alarms(active_only=True)
            assert again.alarm_id != waiting.alarm_id
            store.available = False  # a database away at start: nothing read back, no failure
            empty = _service()
            empty.history = writer.store
            await empty.restore_alarms()
            assert await empty.alarms() == []

    asyncio.run(main())
