"""The wire messages: round trips through the codec, and the schema rules they enforce."""

from __future__ import annotations

import json
import math
import operator
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import (
    MAX_SEQ,
    AckStatus,
    ApproachState,
    CorridorIntersection,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    GreenWindow,
    IntervalStep,
    Message,
    Mode,
    PlanAck,
    PlanKind,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.signal import Indication, Interval

# --- examples of every wire message ---------------------------------------------------------


def _approach(name: str, queue: float = 3.0) -> ApproachState:
    return ApproachState(approach=name, queue_veh=queue, occupancy=0.25, flow_vph=540.0)


TELEMETRY = Telemetry(
    intersection="i-1",
    controller_time=1234.5,
    seq=42,
    phase="p2",
    interval=Interval.GREEN,
    signals={"g1": Indication.GREEN, "g2": Indication.RED, "g3": Indication.YELLOW},
    approaches=(_approach("north"), _approach("south", 0.0), _approach("east", 12.5)),
    plan_id="plan.7",
    mode=Mode.PRIORITY,
)
MINIMAL_TELEMETRY = Telemetry(intersection="i-1", controller_time=0.0, seq=0)
STATUS = Status(
    intersection="i-1",
    presence=Presence.ONLINE,
    mode=Mode.FAIL_SAFE,
    software_version="1.2.3+build.7",
    at=99.5,
)
LAST_WILL = Status(intersection="i-1", presence=Presence.OFFLINE)
PLAN_STEPS = SignalPlan(
    plan_id="p-1",
    intersection="i-1",
    seq=7,
    issued_at=100.0,
    valid_from=101.0,
    valid_until=160.0,
    corridor_id="c-1",
    steps=(
        IntervalStep(at=101.0, green=("g1",), yellow=("g2",)),
        IntervalStep(at=104.0, green=("g1", "g5")),
        IntervalStep(at=130.0, yellow=("g1", "g5")),
    ),
    signature="c2lnbmF0dXJl",
)
PLAN_WINDOWS = SignalPlan(
    plan_id="p-2",
    intersection="i-1",
    seq=8,
    issued_at=100.0,
    valid_from=100.0,
    valid_until=160.0,
    corridor_id="c-1",
    windows=(
        GreenWindow(signal_group="g2", open_at=110.0, close_at=125.0),
        GreenWindow(signal_group="g6", open_at=100.0, close_at=160.0),
    ),
)
PLAN_RELEASE = SignalPlan(
    plan_id="p-3",
    intersection="i-1",
    seq=9,
    issued_at=170.0,
    valid_from=170.0,
    valid_until=171.0,
    kind=PlanKind.RELEASE,
    corridor_id="c-1",
)
ACK_REJECTED = PlanAck(
    plan_id="p-1",
    intersection="i-1",
    seq=7,
    status=AckStatus.REJECTED,
    at=100.2,
    reason_code="stale_seq",
    reason="seq 7 is not newer than 9",
)
ACK_APPLIED = PlanAck(plan_id="p-1", intersection="i-1", seq=7, status=AckStatus.APPLIED, at=101.0)
POSITION = VehiclePosition(vehicle="amb-1", time=12.0, link="AB", offset_m=120.5, speed_mps=14.2)
REQUEST_DESTINATION = CorridorRequest(
    vehicle="amb-1",
    origin="i-1",
    destination="i-9",
    priority=8,
    requester="dispatch",
    requested_at=5.0,
    corridor_id="c-1",
)
REQUEST_ROUTE = CorridorRequest(
    vehicle="amb-1",
    origin="i-1",
    route=("i-1", "i-2", "i-3"),
    requester="op:7",
    requested_at=5.0,
)
CORRIDOR_STATUS = CorridorStatus(
    corridor_id="c-1",
    vehicle="amb-1",
    state=CorridorState.ACTIVE,
    priority=8,
    updated_at=50.0,
    route=("i-1", "i-2"),
    intersections=(
        CorridorIntersection(
            intersection="i-1",
            eta=60.0,
            eta_low=55.0,
            eta_high=70.0,
            window_open=54.0,
            window_close=72.0,
            actual_arrival=61.0,
            confirmed=True,
        ),
        CorridorIntersection(intersection="i-2", eta=90.0, eta_low=80.0, eta_high=100.0),
    ),
)

EXAMPLES: dict[str, Message] = {
    "telemetry": TELEMETRY,
    "telemetry-minimal": MINIMAL_TELEMETRY,
    "status": STATUS,
    "status-last-will": LAST_WILL,
    "plan-steps": PLAN_STEPS,
    "plan-windows": PLAN_WINDOWS,
    "plan-release": PLAN_RELEASE,
    "ack-rejected": ACK_REJECTED,
    "ack-applied": ACK_APPLIED,
    "vehicle-position": POSITION,
    "corridor-request-destination": REQUEST_DESTINATION,
    "corridor-request-route": REQUEST_ROUTE,
    "corridor-status": CORRIDOR_STATUS,
}


def _assert_round_trip(message: Message) -> dict[str, Any]:
    payload = DEFAULT_CODEC.encode(message)
    assert isinstance(payload, bytes)
    document = json.loads(payload)
    assert document["v"] == 1
    decoded = DEFAULT_CODEC.decode(payload, type(message))
    assert type(decoded) is type(message)
    assert decoded == message
    return document  # type: ignore[no-any-return]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_example_round_trip(message: Message) -> None:
    _assert_round_trip(message)


def test_decoded_enums_are_enum_members() -> None:
    decoded = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(TELEMETRY), Telemetry)
    assert decoded.mode is Mode.PRIORITY
    assert decoded.interval is Interval.GREEN
    assert decoded.signals["g3"] is Indication.YELLOW
    plan = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(PLAN_RELEASE), SignalPlan)
    assert plan.kind is PlanKind.RELEASE


def test_payload_uses_the_documented_wire_names() -> None:
    document = _assert_round_trip(TELEMETRY)
    assert document["intersection"] == "i-1"
    assert document["mode"] == "priority"
    assert document["signals"] == {"g1": "green", "g2": "red", "g3": "yellow"}
    assert document["approaches"][2] == {
        "approach": "east",
        "queue_veh": 12.5,
        "occupancy": 0.25,
        "flow_vph": 540.0,
    }
    assert json.loads(DEFAULT_CODEC.encode(STATUS))["mode"] == "fail-safe"


def test_boundary_values_round_trip() -> None:
    telemetry = Telemetry(
        intersection="x" * 64,
        controller_time=0.0,
        seq=0,
        signals={f"g{i}": Indication.RED for i in range(32)},
        approaches=tuple(
            ApproachState(approach=f"a{i}", queue_veh=2000.0, occupancy=1.0, flow_vph=20_000.0)
            for i in range(64)
        ),
    )
    _assert_round_trip(telemetry)
    _assert_round_trip(
        VehiclePosition(vehicle="v", time=0.0, link="l", offset_m=100_000.0, speed_mps=70.0)
    )
    _assert_round_trip(
        SignalPlan(
            plan_id="p",
            intersection="i",
            seq=0,
            issued_at=0.0,
            valid_from=0.0,
            valid_until=257.0,
            steps=tuple(IntervalStep(at=float(i), green=("g1",)) for i in range(256)),
        )
    )
    _assert_round_trip(
        SignalPlan(
            plan_id="p",
            intersection="i",
            seq=0,
            issued_at=0.0,
            valid_from=0.0,
            valid_until=100.0,
            windows=tuple(
                GreenWindow(signal_group=f"g{i}", open_at=0.0, close_at=100.0) for i in range(32)
            ),
        )
    )
    for priority in (1, 10):
        _assert_round_trip(
            CorridorRequest(
                vehicle="v",
                origin="o",
                destination="d",
                requester="r",
                requested_at=0.0,
                priority=priority,
            )
        )
    _assert_round_trip(
        Status(intersection="i", presence=Presence.ONLINE, software_version="\u00e9" * 512)
    )


# --- strategies for valid messages ----------------------------------------------------------

# Valid ids, `[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}`, built directly (faster than from_regex).
ID_FIRST = string.ascii_letters + string.digits
ids = st.builds(operator.add, st.sampled_from(ID_FIRST), st.text(ID_FIRST + "_.:-", max_size=63))
times = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=MAX_SEQ)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=512)  # type: ignore[arg-type]


def _bounded(high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=high, allow_nan=False, allow_infinity=False)


approach_states = st.builds(
    ApproachState,
    approach=ids,
    queue_veh=_bounded(2000.0),
    occupancy=_bounded(1.0),
    flow_vph=_bounded(20_000.0),
)

telemetry_messages = st.builds(
    Telemetry,
    intersection=ids,
    controller_time=times,
    seq=counts,
    phase=st.none() | ids,
    interval=st.none() | st.sampled_from(Interval),
    signals=st.dictionaries(ids, st.sampled_from(Indication), max_size=32),
    approaches=st.lists(approach_states, max_size=64, unique_by=lambda a: a.approach).map(tuple),
    plan_id=st.none() | ids,
    mode=st.sampled_from(Mode),
)

vehicle_positions = st.builds(
    VehiclePosition,
    vehicle=ids,
    time=times,
    link=ids,
    offset_m=_bounded(100_000.0),
    speed_mps=_bounded(70.0),
)


@st.composite
def plan_acks(draw: st.DrawFn) -> PlanAck:
    status = draw(st.sampled_from(AckStatus))
    needs_reason = status in (AckStatus.REJECTED, AckStatus.EXPIRED)
    reason = (
        draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=512))  # type: ignore[arg-type]
        if needs_reason
        else draw(st.none() | texts)
    )
    return PlanAck(
        plan_id=draw(ids),
        intersection=draw(ids),
        seq=draw(counts),
        status=status,
        at=draw(times),
        reason_code=draw(st.none() | ids),
        reason=reason,
    )


@st.composite
def interval_steps(draw: st.DrawFn, at: float) -> IntervalStep:
    groups = draw(st.lists(ids, unique=True, max_size=6))
    split = draw(st.integers(min_value=0, max_value=len(groups)))
    return IntervalStep(at=at, green=tuple(groups[:split]), yellow=tuple(groups[split:]))


@st.composite
def step_plans(draw: st.DrawFn) -> SignalPlan:
    step_times = sorted(draw(st.lists(_bounded(1e7), min_size=1, max_size=16, unique=True)))
    valid_from = max(0.0, step_times[0] - draw(_bounded(600.0)))
    valid_until = step_times[-1] + draw(st.floats(min_value=0.5, max_value=600.0))
    return SignalPlan(
        plan_id=draw(ids),
        intersection=draw(ids),
        seq=draw(counts),
        issued_at=draw(times),
        valid_from=valid_from,
        valid_until=valid_until,
        corridor_id=draw(st.none() | ids),
        steps=tuple(draw(interval_steps(at)) for at in step_times),
        signature=draw(st.none() | texts),
    )


@st.composite
def window_plans(draw: st.DrawFn) -> SignalPlan:
    valid_from = draw(_bounded(1e7))
    valid_until = valid_from + draw(st.floats(min_value=1.0, max_value=3600.0))
    windows = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        open_at = draw(st.floats(min_value=valid_from, max_value=valid_until - 0.5))
        close_at = draw(st.floats(min_value=open_at + 0.25, max_value=valid_until))
        windows.append(GreenWindow(signal_group=draw(ids), open_at=open_at, close_at=close_at))
    return SignalPlan(
        plan_id=draw(ids),
        intersection=draw(ids),
        seq=draw(counts),
        issued_at=draw(times),
        valid_from=valid_from,
        valid_until=valid_until,
        windows=tuple(windows),
    )


@st.composite
def corridor_requests(draw: st.DrawFn) -> CorridorRequest:
    route = draw(st.none() | st.lists(ids, max_size=12).map(tuple))
    destination = draw(ids) if not route else draw(st.none() | ids)
    return CorridorRequest(
        vehicle=draw(ids),
        origin=draw(ids),
        destination=destination,
        route=route,
        priority=draw(st.integers(min_value=1, max_value=10)),
        requester=draw(ids),
        requested_at=draw(times),
        corridor_id=draw(st.none() | ids),
    )


ROUND_TRIP_SETTINGS = settings(max_examples=200, deadline=None)


@ROUND_TRIP_SETTINGS
@given(telemetry_messages)
def test_telemetry_round_trip(message: Telemetry) -> None:
    _assert_round_trip(message)


@ROUND_TRIP_SETTINGS
@given(vehicle_positions)
def test_vehicle_position_round_trip(message: VehiclePosition) -> None:
    _assert_round_trip(message)


@ROUND_TRIP_SETTINGS
@given(plan_acks())
def test_plan_ack_round_trip(message: PlanAck) -> None:
    _assert_round_trip(message)


@ROUND_TRIP_SETTINGS
@given(step_plans())
def test_step_plan_round_trip(message: SignalPlan) -> None:
    document = _assert_round_trip(message)
    assert document["kind"] == "priority"
    assert len(document["steps"]) == len(message.steps)


@ROUND_TRIP_SETTINGS
@given(window_plans())
def test_window_plan_round_trip(message: SignalPlan) -> None:
    _assert_round_trip(message)


@ROUND_TRIP_SETTINGS
@given(corridor_requests())
def test_corridor_request_round_trip(message: CorridorRequest) -> None:
    _assert_round_trip(message)


# --- decoding refuses schema violations, naming the field -----------------------------------

_DELETE = object()


def _payload(message: Message, *edits: tuple[tuple[str | int, ...], Any]) -> bytes:
    """``message`` as JSON with each ``(path, value)`` edit applied (``_DELETE`` removes)."""
    document = json.loads(DEFAULT_CODEC.encode(message))
    for path, value in edits:
        target = document
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return json.dumps(document).encode()


def _step(at: float, green: list[str] | None = None) -> dict[str, Any]:
    return {"at": at, "green": green or ["g1"], "yellow": []}


def _window(group: str, open_at: float, close_at: float) -> dict[str, Any]:
    return {"signal_group": group, "open_at": open_at, "close_at": close_at}


def _approach_json(name: str) -> dict[str, Any]:
    return {"approach": name, "queue_veh": 1.0, "occupancy": 0.1, "flow_vph": 100.0}


REJECTIONS: list[tuple[str, Message, list[tuple[tuple[str | int, ...], Any]], str]] = [
    # Telemetry
    (
        "negative-queue",
        TELEMETRY,
        [(("approaches", 2, "queue_veh"), -1.0)],
        "$.approaches[2].queue_veh",
    ),
    (
        "queue-over-2000",
        TELEMETRY,
        [(("approaches", 0, "queue_veh"), 2000.5)],
        "$.approaches[0].queue_veh",
    ),
    (
        "occupancy-over-1",
        TELEMETRY,
        [(("approaches", 1, "occupancy"), 1.01)],
        "$.approaches[1].occupancy",
    ),
    (
        "negative-occupancy",
        TELEMETRY,
        [(("approaches", 1, "occupancy"), -0.1)],
        "$.approaches[1].occupancy",
    ),
    (
        "flow-over-bound",
        TELEMETRY,
        [(("approaches", 1, "flow_vph"), 20_000.5)],
        "$.approaches[1].flow_vph",
    ),
    (
        "bad-approach-id",
        TELEMETRY,
        [(("approaches", 1, "approach"), "n/1")],
        "$.approaches[1].approach",
    ),
    ("duplicate-approaches", TELEMETRY, [(("approaches", 2, "approach"), "north")], "$.approaches"),
    (
        "65-approaches",
        TELEMETRY,
        [(("approaches",), [_approach_json(f"a{i}") for i in range(65)])],
        "$.approaches",
    ),
    ("33-signals", TELEMETRY, [(("signals",), {f"g{i}": "red" for i in range(33)})], "$.signals"),
    ("bad-signal-id", TELEMETRY, [(("signals",), {"g1": "red", "g+": "red"})], "$.signals[1]"),
    ("mode-turbo", TELEMETRY, [(("mode",), "turbo")], "$.mode"),
    ("interval-amber", TELEMETRY, [(("interval",), "amber")], "$.interval"),
    ("negative-seq", TELEMETRY, [(("seq",), -1)], "$.seq"),
    ("negative-time", TELEMETRY, [(("controller_time",), -0.5)], "$.controller_time"),
    ("empty-phase", TELEMETRY, [(("phase",), "")], "$.phase"),
    ("bad-plan-id", TELEMETRY, [(("plan_id",), "p#1")], "$.plan_id"),
    ("missing-intersection", TELEMETRY, [(("intersection",), _DELETE)], "$"),
    # Status
    ("presence-maybe", STATUS, [(("presence",), "maybe")], "$.presence"),
    ("mode-unknown", STATUS, [(("mode",), "FAIL_SAFE")], "$.mode"),
    ("long-version", STATUS, [(("software_version",), "x" * 513)], "$.software_version"),
    ("negative-at", STATUS, [(("at",), -0.5)], "$.at"),
    # SignalPlan
    ("until-equals-from", PLAN_STEPS, [(("valid_until",), 101.0)], "$.valid_until"),
    ("until-before-from", PLAN_STEPS, [(("valid_until",), 50.0)], "$.valid_until"),
    ("windows-and-steps", PLAN_STEPS, [(("windows",), [_window("g2", 110.0, 120.0)])], "$.windows"),
    ("neither-windows-nor-steps", PLAN_STEPS, [(("steps",), [])], "$.windows"),
    ("release-with-steps", PLAN_RELEASE, [(("steps",), [_step(170.0)])], "$.kind"),
    (
        "release-with-windows",
        PLAN_RELEASE,
        [(("windows",), [_window("g2", 170.0, 171.0)])],
        "$.kind",
    ),
    ("steps-plan-as-release", PLAN_STEPS, [(("kind",), "release")], "$.kind"),
    ("kind-unknown", PLAN_STEPS, [(("kind",), "maybe")], "$.kind"),
    ("steps-equal-times", PLAN_STEPS, [(("steps", 1, "at"), 101.0)], "$.steps"),
    ("steps-decreasing", PLAN_STEPS, [(("steps", 2, "at"), 102.0)], "$.steps"),
    ("step-before-validity", PLAN_STEPS, [(("steps", 0, "at"), 100.5)], "$.steps"),
    ("step-at-valid-until", PLAN_STEPS, [(("steps", 2, "at"), 160.0)], "$.steps"),
    ("step-after-validity", PLAN_STEPS, [(("steps", 2, "at"), 161.0)], "$.steps"),
    ("green-and-yellow", PLAN_STEPS, [(("steps", 1, "yellow"), ["g5"])], "$.steps[1].yellow"),
    ("duplicate-green", PLAN_STEPS, [(("steps", 0, "green"), ["g1", "g1"])], "$.steps[0].green"),
    ("bad-green-id", PLAN_STEPS, [(("steps", 0, "green"), ["g1", "g/2"])], "$.steps[0].green[1]"),
    ("negative-step-time", PLAN_STEPS, [(("steps", 0, "at"), -1.0)], "$.steps[0].at"),
    (
        "257-steps",
        PLAN_STEPS,
        [(("valid_until",), 1000.0), (("steps",), [_step(101.0 + i) for i in range(257)])],
        "$.steps",
    ),
    ("window-after-validity", PLAN_WINDOWS, [(("windows", 1, "close_at"), 161.0)], "$.windows[1]"),
    ("window-before-validity", PLAN_WINDOWS, [(("windows", 0, "open_at"), 99.0)], "$.windows[0]"),
    (
        "window-closes-at-open",
        PLAN_WINDOWS,
        [(("windows", 0, "close_at"), 110.0)],
        "$.windows[0].close_at",
    ),
    (
        "33-windows",
        PLAN_WINDOWS,
        [(("windows",), [_window(f"g{i}", 110.0, 120.0) for i in range(33)])],
        "$.windows",
    ),
    ("bad-corridor-id", PLAN_STEPS, [(("corridor_id",), "")], "$.corridor_id"),
    ("long-signature", PLAN_STEPS, [(("signature",), "s" * 513)], "$.signature"),
    # PlanAck
    ("rejected-without-reason", ACK_REJECTED, [(("reason",), None)], "$.reason"),
    ("rejected-with-empty-reason", ACK_REJECTED, [(("reason",), "")], "$.reason"),
    ("expired-without-reason", ACK_APPLIED, [(("status",), "expired")], "$.reason"),
    ("ack-status-maybe", ACK_APPLIED, [(("status",), "maybe")], "$.status"),
    ("bad-reason-code", ACK_REJECTED, [(("reason_code",), "stale seq")], "$.reason_code"),
    ("long-reason", ACK_REJECTED, [(("reason",), "r" * 513)], "$.reason"),
    # VehiclePosition
    ("speed-over-70", POSITION, [(("speed_mps",), 70.01)], "$.speed_mps"),
    ("negative-speed", POSITION, [(("speed_mps",), -1.0)], "$.speed_mps"),
    ("negative-offset", POSITION, [(("offset_m",), -1.0)], "$.offset_m"),
    ("offset-over-100km", POSITION, [(("offset_m",), 100_000.5)], "$.offset_m"),
    ("bad-link", POSITION, [(("link",), "#")], "$.link"),
    # CorridorRequest
    (
        "neither-destination-nor-route",
        REQUEST_DESTINATION,
        [(("destination",), None)],
        "$.destination",
    ),
    ("empty-route-only", REQUEST_ROUTE, [(("route",), [])], "$.destination"),
    ("null-route-only", REQUEST_ROUTE, [(("route",), None)], "$.destination"),
    ("priority-0", REQUEST_DESTINATION, [(("priority",), 0)], "$.priority"),
    ("priority-11", REQUEST_DESTINATION, [(("priority",), 11)], "$.priority"),
    ("bad-route-id", REQUEST_ROUTE, [(("route", 1), "i+2")], "$.route[1]"),
    ("bad-destination", REQUEST_DESTINATION, [(("destination",), "$SYS")], "$.destination"),
    ("missing-requester", REQUEST_DESTINATION, [(("requester",), _DELETE)], "$"),
    # CorridorStatus
    ("advised-speed-0", CORRIDOR_STATUS, [(("advised_speed_mps",), 0.0)], "$.advised_speed_mps"),
    (
        "advised-speed-absurd",
        CORRIDOR_STATUS,
        [(("advised_speed_mps",), 1e6)],
        "$.advised_speed_mps",
    ),
    (
        "eta-after-high",
        CORRIDOR_STATUS,
        [(("intersections", 1, "eta"), 100.5)],
        "$.intersections[1].eta",
    ),
    (
        "eta-before-low",
        CORRIDOR_STATUS,
        [(("intersections", 0, "eta"), 54.0)],
        "$.intersections[0].eta",
    ),
    (
        "window-with-one-end",
        CORRIDOR_STATUS,
        [(("intersections", 0, "window_close"), None)],
        "$.intersections[0].window_close",
    ),
    (
        "window-closing-before-open",
        CORRIDOR_STATUS,
        [(("intersections", 0, "window_close"), 50.0)],
        "$.intersections[0].window_close",
    ),
    (
        "negative-arrival",
        CORRIDOR_STATUS,
        [(("intersections", 0, "actual_arrival"), -2.0)],
        "$.intersections[0].actual_arrival",
    ),
    ("state-maybe", CORRIDOR_STATUS, [(("state",), "maybe")], "$.state"),
    ("status-priority-11", CORRIDOR_STATUS, [(("priority",), 11)], "$.priority"),
    ("status-priority-0", CORRIDOR_STATUS, [(("priority",), 0)], "$.priority"),
    ("status-bad-route", CORRIDOR_STATUS, [(("route", 0), "")], "$.route[0]"),
]


@pytest.mark.parametrize(
    ("message", "edits", "field"),
    [pytest.param(message, edits, field, id=name) for name, message, edits, field in REJECTIONS],
)
def test_decoding_refuses_schema_violations(
    message: Message, edits: list[tuple[tuple[str | int, ...], Any]], field: str
) -> None:
    payload = _payload(message, *edits)
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(payload, type(message))
    assert info.value.field == field, info.value
    assert info.value.reason


def test_unknown_indication_names_the_signals_field() -> None:
    payload = _payload(TELEMETRY, (("signals", "g1"), "blue"))
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(payload, Telemetry)
    assert info.value.field.startswith("$.signals")
    assert "blue" in info.value.reason


@pytest.mark.parametrize("message", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_decoding_refuses_schema_version_2(message: Message) -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(_payload(message, (("v",), 2)), type(message))
    assert info.value.field == "$.v"


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "", "x" * 65, "$sys", "a b", 7, None])
@pytest.mark.parametrize(
    ("message", "field"),
    [
        (TELEMETRY, "intersection"),
        (POSITION, "vehicle"),
        (ACK_APPLIED, "plan_id"),
        (REQUEST_ROUTE, "vehicle"),
        (CORRIDOR_STATUS, "corridor_id"),
    ],
)
def test_decoding_refuses_bad_ids(message: Message, field: str, bad: object) -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(_payload(message, ((field,), bad)), type(message))
    assert info.value.field == f"$.{field}"


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "", "x" * 65, "$sys", "a b", 7])
def test_an_origin_is_a_valid_id_or_none_for_where_the_vehicle_is(bad: object) -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(_payload(REQUEST_ROUTE, (("origin",), bad)), CorridorRequest)
    assert info.value.field == "$.origin"
    unplaced = DEFAULT_CODEC.decode(_payload(REQUEST_ROUTE, (("origin",), None)), CorridorRequest)
    assert unplaced.origin is None


def test_unknown_fields_are_ignored() -> None:
    payload = _payload(POSITION, (("heading_deg",), 90.0), (("extra",), {"nested": [1, 2]}))
    assert DEFAULT_CODEC.decode(payload, VehiclePosition) == POSITION


# --- building in Python refuses the same things ---------------------------------------------


def _telemetry(**changes: Any) -> Telemetry:
    fields: dict[str, Any] = {"intersection": "i-1", "controller_time": 1.0, "seq": 1}
    fields.update(changes)
    return Telemetry(**fields)


def _plan(**changes: Any) -> SignalPlan:
    fields: dict[str, Any] = {
        "plan_id": "p",
        "intersection": "i",
        "seq": 1,
        "issued_at": 0.0,
        "valid_from": 10.0,
        "valid_until": 20.0,
        "steps": (IntervalStep(at=10.0, green=("g1",)),),
    }
    fields.update(changes)
    return SignalPlan(**fields)


def _ack(**changes: Any) -> PlanAck:
    fields: dict[str, Any] = {
        "plan_id": "p",
        "intersection": "i",
        "seq": 1,
        "status": AckStatus.ACCEPTED,
        "at": 1.0,
    }
    fields.update(changes)
    return PlanAck(**fields)


def _request(**changes: Any) -> CorridorRequest:
    fields: dict[str, Any] = {
        "vehicle": "v",
        "origin": "o",
        "destination": "d",
        "requester": "r",
        "requested_at": 0.0,
    }
    fields.update(changes)
    return CorridorRequest(**fields)


def _corridor_intersection(**changes: Any) -> CorridorIntersection:
    fields: dict[str, Any] = {"intersection": "i", "eta": 10.0, "eta_low": 5.0, "eta_high": 15.0}
    fields.update(changes)
    return CorridorIntersection(**fields)


CONSTRUCTION_ERRORS: list[tuple[str, Callable[[], object], str]] = [
    ("telemetry-v2", lambda: _telemetry(v=2), "v"),
    ("telemetry-bad-id", lambda: _telemetry(intersection="a/b"), "intersection"),
    ("telemetry-id-not-str", lambda: _telemetry(intersection=12), "intersection"),
    ("telemetry-nan-time", lambda: _telemetry(controller_time=math.nan), "controller_time"),
    ("telemetry-inf-time", lambda: _telemetry(controller_time=math.inf), "controller_time"),
    ("telemetry-str-time", lambda: _telemetry(controller_time="1"), "controller_time"),
    ("telemetry-bool-seq", lambda: _telemetry(seq=True), "seq"),
    ("telemetry-float-seq", lambda: _telemetry(seq=1.5), "seq"),
    ("telemetry-negative-seq", lambda: _telemetry(seq=-1), "seq"),
    ("telemetry-bad-phase", lambda: _telemetry(phase="p 1"), "phase"),
    ("telemetry-bad-plan-id", lambda: _telemetry(plan_id="+"), "plan_id"),
    (
        "telemetry-33-signals",
        lambda: _telemetry(signals={f"g{i}": Indication.RED for i in range(33)}),
        "signals",
    ),
    ("telemetry-bad-signal", lambda: _telemetry(signals={"g#": Indication.RED}), "signals[0]"),
    (
        "telemetry-duplicate-approach",
        lambda: _telemetry(approaches=(_approach("n"), _approach("n"))),
        "approaches",
    ),
    (
        "telemetry-65-approaches",
        lambda: _telemetry(approaches=tuple(_approach(f"a{i}") for i in range(65))),
        "approaches",
    ),
    ("approach-negative-queue", lambda: _approach("n", -0.1), "queue_veh"),
    ("approach-nan-queue", lambda: _approach("n", math.nan), "queue_veh"),
    ("approach-queue-over-2000", lambda: _approach("n", 2000.001), "queue_veh"),
    (
        "approach-occupancy-over-1",
        lambda: ApproachState(approach="n", queue_veh=1.0, occupancy=1.5, flow_vph=1.0),
        "occupancy",
    ),
    (
        "approach-inf-flow",
        lambda: ApproachState(approach="n", queue_veh=1.0, occupancy=0.5, flow_vph=math.inf),
        "flow_vph",
    ),
    ("approach-bad-id", lambda: _approach(""), "approach"),
    (
        "status-long-version",
        lambda: Status(intersection="i", presence=Presence.ONLINE, software_version="v" * 513),
        "software_version",
    ),
    (
        "status-nan-at",
        lambda: Status(intersection="i", presence=Presence.ONLINE, at=math.nan),
        "at",
    ),
    (
        "window-closes-before-open",
        lambda: GreenWindow(signal_group="g", open_at=5.0, close_at=5.0),
        "close_at",
    ),
    (
        "window-negative-open",
        lambda: GreenWindow(signal_group="g", open_at=-1.0, close_at=5.0),
        "open_at",
    ),
    ("step-green-and-yellow", lambda: IntervalStep(at=1.0, green=("a",), yellow=("a",)), "yellow"),
    ("step-duplicate-yellow", lambda: IntervalStep(at=1.0, yellow=("a", "a")), "yellow"),
    ("step-bad-group", lambda: IntervalStep(at=1.0, green=("a", "b", "#")), "green[2]"),
    (
        "step-33-groups",
        lambda: IntervalStep(at=1.0, green=tuple(f"g{i}" for i in range(33))),
        "green",
    ),
    ("step-nan-time", lambda: IntervalStep(at=math.nan), "at"),
    ("plan-until-equals-from", lambda: _plan(valid_until=10.0), "valid_until"),
    ("plan-nan-until", lambda: _plan(valid_until=math.nan), "valid_until"),
    ("plan-negative-issued", lambda: _plan(issued_at=-1.0), "issued_at"),
    (
        "plan-both",
        lambda: _plan(windows=(GreenWindow(signal_group="g", open_at=10.0, close_at=11.0),)),
        "windows",
    ),
    ("plan-neither", lambda: _plan(steps=()), "windows"),
    ("plan-release-with-steps", lambda: _plan(kind=PlanKind.RELEASE), "kind"),
    (
        "plan-steps-not-increasing",
        lambda: _plan(steps=(IntervalStep(at=12.0), IntervalStep(at=11.0))),
        "steps",
    ),
    ("plan-step-at-until", lambda: _plan(steps=(IntervalStep(at=20.0),)), "steps"),
    ("plan-step-before-from", lambda: _plan(steps=(IntervalStep(at=9.0),)), "steps"),
    (
        "plan-window-outside",
        lambda: _plan(
            steps=(), windows=(GreenWindow(signal_group="g", open_at=15.0, close_at=21.0),)
        ),
        "windows[0]",
    ),
    (
        "plan-257-steps",
        lambda: _plan(valid_until=1e4, steps=tuple(IntervalStep(at=10.0 + i) for i in range(257))),
        "steps",
    ),
    ("ack-rejected-no-reason", lambda: _ack(status=AckStatus.REJECTED), "reason"),
    ("ack-expired-empty-reason", lambda: _ack(status=AckStatus.EXPIRED, reason=""), "reason"),
    ("ack-bad-reason-code", lambda: _ack(reason_code="a/b"), "reason_code"),
    (
        "position-too-fast",
        lambda: VehiclePosition(vehicle="v", time=0.0, link="l", offset_m=0.0, speed_mps=71.0),
        "speed_mps",
    ),
    (
        "position-nan-offset",
        lambda: VehiclePosition(vehicle="v", time=0.0, link="l", offset_m=math.nan, speed_mps=1.0),
        "offset_m",
    ),
    ("request-neither", lambda: _request(destination=None), "destination"),
    ("request-empty-route", lambda: _request(destination=None, route=()), "destination"),
    ("request-priority-0", lambda: _request(priority=0), "priority"),
    ("request-priority-11", lambda: _request(priority=11), "priority"),
    ("request-bad-route", lambda: _request(route=("a", "b/c")), "route[1]"),
    ("request-route-too-long", lambda: _request(route=("a",) * 4097), "route"),
    ("corridor-eta-above-high", lambda: _corridor_intersection(eta=15.5), "eta"),
    ("corridor-eta-below-low", lambda: _corridor_intersection(eta=4.0), "eta"),
    ("corridor-window-open-only", lambda: _corridor_intersection(window_open=3.0), "window_close"),
    (
        "corridor-window-reversed",
        lambda: _corridor_intersection(window_open=8.0, window_close=7.0),
        "window_close",
    ),
    (
        "corridor-status-priority-0",
        lambda: CorridorStatus(
            corridor_id="c",
            vehicle="v",
            state=CorridorState.REQUESTED,
            priority=0,
            updated_at=0.0,
        ),
        "priority",
    ),
    (
        "corridor-status-long-reason",
        lambda: CorridorStatus(
            corridor_id="c",
            vehicle="v",
            state=CorridorState.FAILED,
            priority=5,
            updated_at=0.0,
            reason="x" * 513,
        ),
        "reason",
    ),
]


@pytest.mark.parametrize(
    ("make", "field"),
    [pytest.param(make, field, id=name) for name, make, field in CONSTRUCTION_ERRORS],
)
def test_construction_refuses_invalid_values(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field, info.value


def test_construction_error_is_not_a_message_error() -> None:
    # Only the codec turns errors into MessageError (with a JSON path).
    with pytest.raises(ValidationError) as info:
        _telemetry(seq=-1)
    assert not isinstance(info.value, MessageError)


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        TELEMETRY.seq = 43  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        pytest.param(
            lambda: Status(intersection="i", presence="maybe"),  # type: ignore[arg-type]
            "presence",
            id="status-presence",
        ),
        pytest.param(lambda: _telemetry(mode="turbo"), "mode", id="telemetry-mode"),
        pytest.param(lambda: _ack(status="maybe"), "status", id="ack-status"),
        pytest.param(
            # A plain-str "release" fails the `kind is PlanKind.RELEASE` test, so a release
            # carrying steps is accepted here, then refused by every receiver.
            lambda: _plan(kind="release"),
            "kind",
            id="plan-str-release-with-steps",
        ),
    ],
)
def test_construction_refuses_unknown_enum_values(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field


def test_seq_beyond_what_json_readers_hold_exactly_is_refused() -> None:
    payload = (
        b'{"intersection":"i-1","controller_time":1.0,"seq":' + str(MAX_SEQ + 1).encode() + b"}"
    )
    with pytest.raises(MessageError) as error:
        DEFAULT_CODEC.decode(payload, Telemetry)
    assert error.value.field == "$.seq"
