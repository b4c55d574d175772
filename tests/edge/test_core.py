from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.edge.core import (
    CONTROLLER_UNAVAILABLE,
    LEASE_EXPIRED,
    MALFORMED,
    EdgeAction,
    EdgeCore,
    EdgeCoreSettings,
    Publish,
    ReleaseController,
    SendToController,
)
from citybrain.models.fieldbus import ApproachConfig, ApproachCounts, DetectorReading, SignalReading
from citybrain.models.messages import (
    AckStatus,
    GreenWindow,
    IntervalStep,
    Mode,
    PlanAck,
    PlanKind,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
)
from citybrain.models.signal import Indication
from citybrain.models.signing import (
    KeyState,
    PlanSigner,
    TrustedKey,
    TrustStore,
    encode_public_key,
)
from citybrain.models.topics import TopicKind
from citybrain.signal_plans.config import IntersectionConfig, reading_from_state
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.state import normal_state_at

PLAN = lead_lead_plan(nema_eight_group("X"), offset_s=0.0)
APPROACHES = tuple(
    ApproachConfig(
        approach=f"X:{side}", link=f"{side}-X", lanes=2, length_m=300.0, speed_limit_mps=13.9,
        saturation_flow_vphpl=1800.0, advance_setback_m=60.0, groups=list(groups),
    )
    for side, groups in (("W", "52"), ("E", "16"), ("S", "74"), ("N", "38"))
)  # fmt: skip
CONFIG = IntersectionConfig(PLAN, APPROACHES)
NOW = 1000.0
CLOUD = PlanSigner.generate()
TRUST = TrustStore.of({CLOUD.key_id: CLOUD.public_key})


def _core(**settings: Any) -> EdgeCore:
    core = EdgeCore(CONFIG, trust=TRUST, settings=EdgeCoreSettings(**settings), first_seq=7)
    _read(core, NOW)
    return core


def _read(core: EdgeCore, at: float, *, mode: str = "normal") -> None:
    state = normal_state_at(PLAN, at)
    core.on_signals(reading_from_state(state, mode=mode), at)


def _window_plan(seq: int = 1, **fields: Any) -> SignalPlan:
    values: dict[str, Any] = {
        "plan_id": f"p{seq}", "intersection": "X", "seq": seq, "issued_at": NOW,
        "valid_from": NOW, "valid_until": NOW + 90.0,
        "windows": (GreenWindow(signal_group="4", open_at=NOW + 20.0, close_at=NOW + 40.0),),
    }  # fmt: skip
    values.update(fields)
    return CLOUD.sign(SignalPlan(**values))


def _acks(actions: list[EdgeAction]) -> list[PlanAck]:
    return [a.message for a in actions if isinstance(a, Publish) and isinstance(a.message, PlanAck)]


def _commands(actions: list[EdgeAction]) -> list[SignalPlan]:
    return [a.plan for a in actions if isinstance(a, SendToController)]


def test_detector_readings_become_telemetry_with_increasing_seq() -> None:
    core = _core()
    counts = [
        ApproachCounts(
            approach=a.approach, interval_s=1.0, stop_bar_count=0, stop_bar_occupancy=0.0,
            advance_count=1, advance_occupancy=0.1,
        )
        for a in APPROACHES
    ]  # fmt: skip
    first = core.on_detectors(DetectorReading(time=NOW, approaches=counts), NOW)
    second = core.on_detectors(DetectorReading(time=NOW + 1.0, approaches=counts), NOW + 1.0)
    telemetry = [a.message for a in first + second if isinstance(a, Publish)]
    assert all(isinstance(t, Telemetry) for t in telemetry)
    assert [t.seq for t in telemetry if isinstance(t, Telemetry)] == [7, 8]
    last = telemetry[-1]
    assert isinstance(last, Telemetry)
    assert {a.approach for a in last.approaches} == {a.approach for a in APPROACHES}
    assert last.mode is Mode.NORMAL
    assert set(last.signals) == set(PLAN.signals.groups)


def test_a_safe_plan_is_accepted_handed_over_and_applied() -> None:
    core = _core()
    actions = core.on_plan(_window_plan(), NOW)
    assert [a.status for a in _acks(actions)] == [AckStatus.ACCEPTED]
    (sent,) = _commands(actions)
    answered = core.on_command_result(sent.plan_id, AckStatus.ACCEPTED, None, None, NOW + 0.01)
    assert [a.status for a in _acks(answered)] == [AckStatus.APPLIED]
    assert core.active == sent


def test_unsafe_expired_out_of_sequence_and_foreign_plans_are_refused_with_reasons() -> None:
    core = _core()
    core.on_plan(_window_plan(seq=5), NOW)
    shown = normal_state_at(PLAN, NOW)
    clash = next(
        g for g in sorted(PLAN.signals.groups) if PLAN.signals.conflict(g, min(shown.greens))
    )
    bad_steps = (IntervalStep(at=NOW, green=tuple(sorted(shown.greens | {clash}))),)
    cases = {
        "conflicting_greens": _window_plan(seq=6, windows=(), steps=bad_steps),
        "expired": _window_plan(seq=7, valid_from=NOW - 100, valid_until=NOW - 10, windows=(),
                                steps=(IntervalStep(at=NOW - 100, green=("2",)),)),
        "out_of_sequence": _window_plan(seq=5),
        "wrong_intersection": _window_plan(seq=8, intersection="Y"),
        "unknown_group": _window_plan(
            seq=9, windows=(GreenWindow(signal_group="99", open_at=NOW + 1, close_at=NOW + 9),)
        ),
    }  # fmt: skip
    for code, plan in cases.items():
        actions = core.on_plan(plan, NOW)
        (ack,) = _acks(actions)
        assert ack.reason_code == code, (code, ack)
        assert ack.status in (AckStatus.REJECTED, AckStatus.EXPIRED)
        assert ack.reason
        assert not _commands(actions)
    assert core.counters["plans_rejected_conflicting_greens"] == 1


def test_without_a_recent_signal_reading_plans_are_refused() -> None:
    core = EdgeCore(CONFIG, trust=TRUST)
    (ack,) = _acks(core.on_plan(_window_plan(), NOW))
    assert ack.reason_code == CONTROLLER_UNAVAILABLE
    core = _core()
    (ack,) = _acks(core.on_plan(_window_plan(), NOW + 10.0))
    assert ack.reason_code == CONTROLLER_UNAVAILABLE


def test_garbage_is_counted_and_readable_ids_get_a_refusal() -> None:
    core = _core()
    assert core.on_plan_payload(b"\xff\x00not json", NOW) == []
    assert core.on_plan_payload(b"[1,2,3]", NOW) == []
    half = msgspec.json.encode({"plan_id": "p9", "seq": 9, "intersection": "X", "v": 1})
    (ack,) = _acks(core.on_plan_payload(half, NOW))
    assert (ack.plan_id, ack.seq, ack.reason_code) == ("p9", 9, MALFORMED)
    assert core.counters["plans_malformed"] == 3


def test_a_plan_starting_later_is_handed_over_just_before_its_start() -> None:
    core = _core()
    plan = _window_plan(valid_from=NOW + 30.0, valid_until=NOW + 120.0, windows=(
        GreenWindow(signal_group="4", open_at=NOW + 40.0, close_at=NOW + 60.0),
    ))  # fmt: skip
    actions = core.on_plan(plan, NOW)
    assert [a.status for a in _acks(actions)] == [AckStatus.ACCEPTED]
    assert not _commands(actions)
    assert not _commands(core.tick(NOW + 20.0))
    assert _commands(core.tick(NOW + 29.5)) == [plan]


def test_a_lease_that_runs_out_brings_the_normal_plan_back() -> None:
    core = _core()
    plan = _window_plan()
    core.on_plan(plan, NOW)
    core.on_command_result(plan.plan_id, AckStatus.ACCEPTED, None, None, NOW)
    _read(core, NOW + 50.0, mode="priority")
    assert core.tick(NOW + 80.0) == []
    actions = core.tick(plan.valid_until)
    assert ReleaseController(LEASE_EXPIRED) in actions
    (ack,) = _acks(actions)
    assert (ack.status, ack.reason_code) == (AckStatus.RELEASED, LEASE_EXPIRED)
    assert core.active is None


@pytest.mark.parametrize("answer", [AckStatus.ACCEPTED, AckStatus.REJECTED])
def test_a_renewal_the_controller_has_not_answered_yet_is_not_undone_at_the_lease_end(
    answer: AckStatus,
) -> None:
    """The lease-end release went to the cabinet behind the renewal handed to it 0.5 s before
    and released it: the corridor lost its green while the edge believed the renewal ran."""
    core = _core()
    plan = _window_plan()
    core.on_plan(plan, NOW)
    core.on_command_result(plan.plan_id, AckStatus.ACCEPTED, None, None, NOW)
    _read(core, NOW + 89.5, mode="priority")
    renewal = _window_plan(
        seq=2, issued_at=NOW + 89.5, valid_from=NOW + 89.5, valid_until=NOW + 150.0,
        windows=(GreenWindow(signal_group="4", open_at=NOW + 100.0, close_at=NOW + 120.0),),
    )  # fmt: skip
    assert _commands(core.on_plan(renewal, NOW + 89.5)) == [renewal]
    assert not any(isinstance(a, ReleaseController) for a in core.tick(NOW + 90.5))
    core.on_command_result(renewal.plan_id, answer, None, None, NOW + 91.0)
    if answer is AckStatus.ACCEPTED:
        assert core.active == renewal
        assert core.tick(NOW + 91.5) == []
    else:  # the running plan's lease is over: released now
        assert ReleaseController(LEASE_EXPIRED) in core.tick(NOW + 91.5)
        assert core.active is None


def test_losing_the_broker_puts_the_intersection_on_its_local_plan() -> None:
    core = _core(failsafe_after_s=30.0)
    plan = _window_plan()
    core.on_plan(plan, NOW)
    core.on_command_result(plan.plan_id, AckStatus.ACCEPTED, None, None, NOW)
    core.on_broker(False, NOW + 1.0)
    assert not any(isinstance(a, ReleaseController) for a in core.tick(NOW + 20.0))
    actions = core.tick(NOW + 31.0)
    assert any(isinstance(a, ReleaseController) for a in actions)
    assert core.mode is Mode.FAIL_SAFE
    (back,) = core.on_broker(True, NOW + 40.0)
    assert isinstance(back, Publish)
    assert isinstance(back.message, Status)
    assert back.message.presence is Presence.ONLINE
    assert back.message.mode is Mode.NORMAL


def test_release_plans_go_to_the_controller_and_are_acked_released() -> None:
    core = _core()
    core.on_plan(_window_plan(seq=1), NOW)
    release = CLOUD.sign(
        SignalPlan(
            plan_id="r2", intersection="X", seq=2, issued_at=NOW, valid_from=NOW,
            valid_until=NOW + 30.0, kind=PlanKind.RELEASE,
        )
    )  # fmt: skip
    (sent,) = _commands(core.on_plan(release, NOW))
    assert sent == release
    (ack,) = _acks(core.on_command_result("r2", AckStatus.RELEASED, None, None, NOW))
    assert ack.status is AckStatus.RELEASED


def test_a_controller_that_cannot_be_reached_refuses_the_plan() -> None:
    core = _core()
    (sent,) = _commands(core.on_plan(_window_plan(), NOW))
    (ack,) = _acks(core.on_command_failed(sent.plan_id, "link down", NOW))
    assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, CONTROLLER_UNAVAILABLE)


def test_the_will_is_offline_and_birth_online() -> None:
    core = _core()
    assert core.will().presence is Presence.OFFLINE
    assert core.will().at is None
    assert core.birth(NOW).presence is Presence.ONLINE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=300)
    | json_values.map(msgspec.json.encode)
    | st.fixed_dictionaries(
        {"plan_id": st.text(max_size=8), "seq": st.integers(), "intersection": st.just("X")},
        optional={"windows": json_values, "steps": json_values, "valid_from": json_values},
    ).map(msgspec.json.encode)
)
def test_no_payload_crashes_the_core_or_reaches_the_controller(payload: bytes) -> None:
    core = _core()
    actions = core.on_plan_payload(payload, NOW)
    assert not _commands(actions)
    for action in actions:
        assert isinstance(action, Publish)
        assert action.kind is TopicKind.ACK


# ---- trust: signatures and order ----------------------------------------------------------------


def _refusal(core: EdgeCore, plan: SignalPlan) -> str | None:
    actions = core.on_plan(plan, NOW)
    assert not _commands(actions), "a refused plan must never reach the controller"
    (ack,) = _acks(actions)
    assert ack.status is AckStatus.REJECTED
    return ack.reason_code


@pytest.mark.security
def test_plans_not_signed_by_a_trusted_key_are_refused_each_with_its_reason() -> None:
    core = _core()
    genuine = _window_plan(seq=3)
    stranger = PlanSigner.generate()
    cases = {
        "unsigned": msgspec.structs.replace(genuine, signature=None, key_id=None),
        "bad_signature": msgspec.structs.replace(genuine, seq=4),  # tampered after signing
        "unknown_key": stranger.sign(_window_plan(seq=5)),
        "bad_signature ": msgspec.structs.replace(
            stranger.sign(_window_plan(seq=6)), key_id=CLOUD.key_id
        ),
    }
    for code, plan in cases.items():
        assert _refusal(core, plan) == code.strip(), code
        assert core.last_order is None  # nothing refused moves the high-water mark
    assert core.counters["plans_rejected_bad_signature"] == 2
    assert _acks(core.on_plan(genuine, NOW))[0].status is AckStatus.ACCEPTED


@pytest.mark.security
def test_a_plan_re_signed_with_a_revoked_key_is_refused_by_name() -> None:
    old, new = PlanSigner.generate(), PlanSigner.generate()
    trust = TrustStore(
        [
            TrustedKey(key_id=old.key_id, public_key=encode_public_key(old.public_key),
                       state=KeyState.REVOKED),
            TrustedKey(key_id=new.key_id, public_key=encode_public_key(new.public_key)),
        ]
    )  # fmt: skip
    core = EdgeCore(CONFIG, trust=trust)
    _read(core, NOW)
    assert _refusal(core, old.sign(_window_plan(seq=1))) == "revoked_key"
    assert _acks(core.on_plan(new.sign(_window_plan(seq=2)), NOW))[0].status is AckStatus.ACCEPTED


@pytest.mark.security
def test_order_is_epoch_then_seq_a_replay_is_refused_and_a_restarted_cloud_is_newer() -> None:
    core = _core()
    first = _window_plan(seq=900, epoch=5)
    assert _acks(core.on_plan(first, NOW))[0].status is AckStatus.ACCEPTED
    assert core.last_order == (5, 900)
    assert _refusal(core, first) == "out_of_sequence"  # the same plan played back
    assert _refusal(core, _window_plan(seq=901, epoch=4)) == "out_of_sequence"
    restarted = _window_plan(seq=1, epoch=6)  # a new cloud process: seq starts again
    assert _acks(core.on_plan(restarted, NOW))[0].status is AckStatus.ACCEPTED


@pytest.mark.security
def test_a_restarted_edge_keeps_its_high_water_mark() -> None:
    core = EdgeCore(CONFIG, trust=TRUST, last_order=(5, 900))
    _read(core, NOW)
    assert _refusal(core, _window_plan(seq=900, epoch=5)) == "out_of_sequence"


@pytest.mark.security
def _release(seq: int, issued_at: float, valid_from: float) -> SignalPlan:
    return CLOUD.sign(
        SignalPlan(
            plan_id=f"r{seq}", intersection="X", seq=seq, issued_at=issued_at,
            valid_from=valid_from, valid_until=valid_from + 5.0, kind=PlanKind.RELEASE,
        )
    )  # fmt: skip


@pytest.mark.security
def test_a_release_taking_over_later_leaves_the_lease_watched_until_then() -> None:
    """One an hour ahead was acked released and the edge stopped watching the lease of the
    plan it ends: a cabinet that runs that plan until the release takes over held a 90 s
    lease for the hour. Now one more than 30 s ahead is refused, and one within that leaves
    the lease watched until the cabinet shows the normal plan again."""
    core = _core()
    (sent,) = _commands(core.on_plan(_window_plan(seq=1), NOW))
    core.on_command_result(sent.plan_id, AckStatus.ACCEPTED, None, None, NOW)
    _read(core, NOW + 10.0, mode="priority")
    (ack,) = _acks(core.on_plan(_release(2, NOW + 10.0, NOW + 3600.0), NOW + 10.0))
    assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "release_too_late")
    (command,) = _commands(core.on_plan(_release(3, NOW + 10.0, NOW + 35.0), NOW + 10.0))
    answer = core.on_command_result(command.plan_id, AckStatus.RELEASED, None, None, NOW + 10.0)
    assert [ack.status for ack in _acks(answer)] == [AckStatus.RELEASED]
    assert core.active is not None, "the lease watch stopped 25 s before the release"
    _read(core, NOW + 40.0)
    assert core.active is None


@pytest.mark.parametrize("code", ["E 42: conflict monitor", "x" * 65])
def test_a_cabinets_own_refusal_code_is_acked_in_the_reason_not_crashing_the_agent(
    code: str,
) -> None:
    core = _core()
    (sent,) = _commands(core.on_plan(_window_plan(seq=1), NOW))
    (ack,) = _acks(core.on_command_result(sent.plan_id, AckStatus.REJECTED, code, "no", NOW))
    assert ack.reason_code == "refused"
    assert (ack.reason or "").startswith(code[:20])


def test_a_plan_on_a_reading_with_conflicting_greens_is_refused_and_counted() -> None:
    """A cabinet in priority mode reading two conflicting groups green: the plan's check
    raised, so it got no ack and no count (the agent logged an error from its callback)."""
    core = _core()
    groups = sorted(PLAN.signals.groups)
    other = next(g for g in groups if PLAN.signals.conflict("2", g))
    both = (Indication.GREEN, Indication.RED)
    shown = {g: both[g not in ("2", other)] for g in groups}
    core.on_signals(
        SignalReading(
            time=NOW + 1, groups=shown, since=dict.fromkeys(groups, NOW), mode="priority"
        ),
        NOW + 1,
    )
    (ack,) = _acks(core.on_plan(_window_plan(seq=1, issued_at=NOW + 1), NOW + 1))
    assert (ack.status, ack.reason_code) == (AckStatus.REJECTED, "conflicting_greens")
    assert core.counters["plans_rejected_conflicting_greens"] == 1


def test_fail_safe_says_what_it_did_to_the_plans_it_dropped() -> None:
    """They were dropped without an ack: the cloud went on believing one applied and the
    other accepted. The acks go out once the broker is back (the agent buffers them)."""
    core = _core(failsafe_after_s=10.0)
    (sent,) = _commands(core.on_plan(_window_plan(seq=1), NOW))
    core.on_command_result(sent.plan_id, AckStatus.ACCEPTED, None, None, NOW)
    waiting = _window_plan(
        seq=2, issued_at=NOW + 5, valid_from=NOW + 30, valid_until=NOW + 150,
        windows=(GreenWindow(signal_group="4", open_at=NOW + 40, close_at=NOW + 60),),
    )  # fmt: skip
    _read(core, NOW + 5, mode="priority")
    core.on_plan(waiting, NOW + 5)
    assert core.pending is waiting
    core.on_broker(False, NOW + 6)
    actions = core.tick(NOW + 16)
    assert any(isinstance(a, ReleaseController) for a in actions)
    said = {(ack.plan_id, ack.status, ack.reason_code) for ack in _acks(actions)}
    assert said == {
        ("p1", AckStatus.RELEASED, "fail_safe"),
        ("p2", AckStatus.REJECTED, "fail_safe"),
    }
    assert core.active is None
    assert core.pending is None
