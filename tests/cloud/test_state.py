from __future__ import annotations

import numpy as np
import pytest

from citybrain.cloud.state import NetworkState, RefusedError, Source
from citybrain.models.errors import ValidationError
from citybrain.models.messages import MAX_SEQ, ApproachState, Telemetry
from citybrain.simulator.networks import arterial

NETWORK = arterial(2).network


def _telemetry(
    seq: int, queue: float = 6.0, node: str = "a01", approach: str = "a01:E"
) -> Telemetry:
    return Telemetry(
        intersection=node,
        controller_time=100.0,
        seq=seq,
        approaches=(
            ApproachState(approach=approach, queue_veh=queue, occupancy=0.5, flow_vph=600.0),
        ),
    )


def test_live_values_are_used_until_stale_then_the_fallback_says_so() -> None:
    history = np.full(len(NETWORK.links), 2.0)
    state = NetworkState(NETWORK, stale_after_s=10.0, historical_queue_veh=history)
    state.ingest(_telemetry(1, 6.0), now_s=100.0)
    link = state.link_index["west-a01"]
    fresh = state.queues(105.0)
    assert fresh.queue_veh[link] == 6.0
    assert fresh.source[link] == Source.LIVE
    assert fresh.confidence()[link] == 1.0
    stale = state.queues(111.0)
    assert stale.queue_veh[link] == 2.0
    assert stale.source[link] == Source.HISTORICAL
    assert stale.age_s[link] == pytest.approx(11.0)
    never = state.link_index["a01-a02"]
    assert state.queues(105.0).source[never] == Source.HISTORICAL
    assert NetworkState(NETWORK).queues(0.0).source[never] == Source.DEFAULT


def test_flush_time_is_lost_time_plus_the_queue_over_all_lanes() -> None:
    state = NetworkState(NETWORK)
    state.ingest(_telemetry(1, 12.0), now_s=0.0)
    link = state.link_index["west-a01"]
    # 3 lanes at 1800 veh/h: 12 vehicles leave in 12 * 2 s / 3 = 8 s, after 2 s lost time
    assert state.flush_time_s(1.0)[link] == pytest.approx(10.0)
    assert state.flush_time_s(1.0)[state.link_index["a01-a02"]] == 0.0


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (_telemetry(1, node="nowhere"), "unknown_intersection"),
        (_telemetry(1, approach="a02:E"), "unknown_approach"),
        (_telemetry(1, approach="zz:E"), "unknown_approach"),
    ],
)
def test_telemetry_that_does_not_fit_is_refused_with_its_reason_and_not_applied(
    message: Telemetry, code: str
) -> None:
    state = NetworkState(NETWORK)
    with pytest.raises(RefusedError) as refused:
        state.ingest(message, now_s=1.0)
    assert refused.value.code == code
    assert np.all(state.queue == 0.0)


def _refused(state: NetworkState, message: Telemetry, now_s: float) -> str:
    with pytest.raises(RefusedError) as refused:
        state.ingest(message, now_s)
    return refused.value.code


def test_old_sequence_numbers_are_refused() -> None:
    state = NetworkState(NETWORK)
    state.ingest(_telemetry(5, 3.0), now_s=1.0)
    assert _refused(state, _telemetry(5, 9.0), 2.0) == "seq_old"
    assert state.queue[state.link_index["west-a01"]] == 3.0


@pytest.mark.security
def test_a_seq_leap_is_refused_and_a_forged_2_53_does_not_silence_the_intersection() -> None:
    """Today a forged seq 2**53-1 is taken, and every genuine message after it is "old"."""
    state = NetworkState(NETWORK, max_seq_jump=100, max_seq_rate_hz=10.0)
    state.ingest(_telemetry(1000, 3.0), now_s=10.0)
    assert _refused(state, _telemetry(MAX_SEQ, 99.0), 10.5) == "seq_jump"
    assert _refused(state, _telemetry(1000 + 106, 99.0), 10.5) == "seq_jump"
    state.ingest(_telemetry(1001, 4.0), now_s=11.0)  # the genuine edge carries on
    assert state.queue[state.link_index["west-a01"]] == 4.0
    # the bound grows with the time since the last message taken (messages lost meanwhile)
    state.ingest(_telemetry(1001 + 100 + 600, 5.0), now_s=71.0)


@pytest.mark.security
def test_a_birth_lets_a_restarted_edge_leap_once() -> None:
    """An edge counts its seq from the wall clock in ms: restarted, it leaps, after its birth
    status. The leap is allowed once; the count is bounded again from the new baseline."""
    state = NetworkState(NETWORK, max_seq_jump=100)
    state.ingest(_telemetry(1000, 3.0), now_s=10.0)
    state.born("a01")
    state.ingest(_telemetry(1_700_000_000_000, 4.0), now_s=11.0)
    assert _refused(state, _telemetry(MAX_SEQ, 99.0), 11.5) == "seq_jump"
    assert _refused(state, _telemetry(1000, 99.0), 11.5) == "seq_old"
    assert state.queue[state.link_index["west-a01"]] == 4.0


def test_bad_settings_and_history_are_refused() -> None:
    with pytest.raises(ValidationError):
        NetworkState(NETWORK, stale_after_s=0.0)
    with pytest.raises(ValidationError):
        NetworkState(NETWORK, historical_queue_veh=np.full(len(NETWORK.links), np.nan))
    with pytest.raises(ValidationError):
        NetworkState(NETWORK, historical_queue_veh=np.full(3, 1.0))
    with pytest.raises(ValidationError):
        NetworkState(NETWORK).set_queue("west-a01", -1.0, 0.0)


def test_inflow_comes_from_telemetry_and_stale_flow_counts_for_nothing() -> None:
    state = NetworkState(NETWORK, stale_after_s=10.0)
    state.ingest(_telemetry(1, 2.0), now_s=100.0)  # flow_vph=600 in the helper
    link = state.link_index["west-a01"]
    assert state.inflow_veh_per_s(105.0)[link] == pytest.approx(600.0 / 3600.0)
    assert state.inflow_veh_per_s(111.0)[link] == 0.0
    with pytest.raises(ValidationError):
        state.set_queue("west-a01", 1.0, 0.0, flow_vph=-5.0)


def test_take_changed_names_links_set_since_and_links_gone_stale() -> None:
    state = NetworkState(NETWORK, stale_after_s=10.0)
    a, b = state.link_index["west-a01"], state.link_index["a01-a02"]
    state.set_queue("west-a01", 3.0, 100.0)
    state.set_queue("a01-a02", 1.0, 105.0)
    assert state.take_changed(105.0).tolist() == sorted([a, b])
    assert state.take_changed(106.0).tolist() == [], "nothing new"
    assert state.take_changed(110.5).tolist() == [a], "west-a01 went stale after 110 s"
    assert state.take_changed(120.0).tolist() == [b]
    assert state.flush_time_s(120.0, links=np.array([a, b])).tolist() == [0.0, 0.0]
