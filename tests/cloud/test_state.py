from __future__ import annotations

import numpy as np
import pytest

from citybrain.cloud.state import NetworkState, Source
from citybrain.models.errors import ValidationError
from citybrain.models.messages import ApproachState, Telemetry
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
    ("message", "reason"),
    [
        (_telemetry(1, node="nowhere"), "unknown intersection"),
        (_telemetry(1, approach="a02:E"), "unknown approach"),
        (_telemetry(1, approach="zz:E"), "unknown approach"),
    ],
)
def test_telemetry_that_does_not_fit_is_refused_counted_and_not_applied(
    message: Telemetry, reason: str
) -> None:
    state = NetworkState(NETWORK)
    with pytest.raises(ValidationError, match=reason):
        state.ingest(message, now_s=1.0)
    assert state.rejected == 1
    assert np.all(state.queue == 0.0)


def test_old_sequence_numbers_are_refused() -> None:
    state = NetworkState(NETWORK)
    state.ingest(_telemetry(5, 3.0), now_s=1.0)
    with pytest.raises(ValidationError, match="not newer"):
        state.ingest(_telemetry(5, 9.0), now_s=2.0)
    assert state.queue[state.link_index["west-a01"]] == 3.0


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
