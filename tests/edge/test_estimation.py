"""The edge's queue estimator: hand-built loop readings, properties, and the simulator's truth."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.edge.estimation import (
    EstimatorSettings,
    Fault,
    Flag,
    QueueEstimate,
    QueueEstimator,
)
from citybrain.models.errors import ValidationError
from citybrain.models.fieldbus import (
    ApproachConfig,
    ApproachCounts,
    DetectorReading,
    SignalReading,
)
from citybrain.models.network import DetectorKind, Network
from citybrain.models.signal import Indication
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import random_trips
from citybrain.simulator.detectors import DetectorCards
from citybrain.simulator.engine import Simulation
from citybrain.simulator.networks import arterial

EAST = ApproachConfig(
    approach="x:E",
    link="w-x",
    lanes=2,
    length_m=300.0,
    speed_limit_mps=12.0,
    saturation_flow_vphpl=1800.0,
    advance_setback_m=60.0,
    groups=["2"],
)
"""Two lanes: 16 vehicles fill the zone between the loops, 80 the link; a counted vehicle
needs 60 m / (0.85 x 12 m/s) = 5.9 s from the advance loop to an empty stop line."""
NORTH = ApproachConfig(
    approach="x:N",
    link="s-x",
    lanes=1,
    length_m=150.0,
    speed_limit_mps=10.0,
    saturation_flow_vphpl=1800.0,
    advance_setback_m=40.0,
    groups=["4"],
)
STORAGE = {"x:E": 2 * 300.0 / 7.5, "x:N": 150.0 / 7.5}
ZONE_E = 16.0


def counts(
    approach: str = "x:E",
    *,
    stop: int = 0,
    stop_occ: float = 0.0,
    adv: int = 0,
    adv_occ: float = 0.0,
    interval: float = 1.0,
) -> ApproachCounts:
    return ApproachCounts(
        approach=approach,
        interval_s=interval,
        stop_bar_count=stop,
        stop_bar_occupancy=stop_occ,
        advance_count=adv,
        advance_occupancy=adv_occ,
    )


def signals(at: float, shown: Indication, since: float | None = 0.0) -> SignalReading:
    return SignalReading(
        time=at, groups={"2": shown, "4": Indication.RED}, since={"2": since, "4": None}
    )


class Approach:
    """Feeds approach x:E's loops reading by reading (1 s unless told) and keeps the time."""

    def __init__(
        self, estimator_settings: EstimatorSettings | None = None, config: ApproachConfig = EAST
    ) -> None:
        self.estimator = QueueEstimator([config, NORTH], estimator_settings)
        self.approach = config.approach
        self.now = 0.0

    def read(
        self,
        signal: Indication | None = None,
        green_since: float = 0.0,
        *,
        stop: int = 0,
        stop_occ: float = 0.0,
        adv: int = 0,
        adv_occ: float = 0.0,
        interval: float = 1.0,
    ) -> QueueEstimate:
        self.now += interval
        loops = counts(
            self.approach,
            stop=stop,
            stop_occ=stop_occ,
            adv=adv,
            adv_occ=adv_occ,
            interval=interval,
        )
        shown = None if signal is None else signals(self.now, signal, green_since)
        reading = DetectorReading(time=self.now, approaches=[loops])
        return self.estimator.update(reading, shown)[self.approach]

    def red_arrivals(self, vehicles: int, *, every_s: int = 2) -> list[QueueEstimate]:
        """``vehicles`` counted at the advance loop, one every ``every_s``, during a red; the
        stop bar is occupied from when the first one can have reached it (6 s on)."""
        out = []
        for second in range(vehicles * every_s + 10):
            arriving = second % every_s == 0 and second < vehicles * every_s
            out.append(self.read(adv=int(arriving), stop_occ=float(second >= 6)))
        return out


def test_a_queue_builds_during_red_and_is_counted() -> None:
    approach = Approach()
    approach.read()  # an empty stop line: the count is anchored
    history = approach.red_arrivals(10)
    queues = [e.queue_veh for e in history]
    assert queues[0] == 0.0  # counted at the advance loop, still driving to the stop line
    assert all(b >= a for a, b in itertools.pairwise(queues))
    assert queues[-1] == pytest.approx(10.0)
    assert history[-1].confidence == 1.0
    assert history[-1].flags == frozenset()
    # the tenth, counted at 18 s, joins the queue of nine (34 m long) after 26 m: at 21 s
    assert queues[18:22] == pytest.approx([8.0, 9.0, 9.0, 10.0])


def test_the_queue_clears_at_green() -> None:
    approach = Approach()
    approach.read()
    approach.red_arrivals(10)
    seen = [approach.read(stop=1, stop_occ=1.0).queue_veh for _ in range(10)]
    assert seen == pytest.approx([9 - i for i in range(10)])
    cleared = approach.read(stop_occ=0.0)
    assert cleared.queue_veh == 0.0
    assert cleared.occupancy == 0.0


def test_vehicles_driving_through_on_green_never_queue() -> None:
    approach = Approach()
    approach.read()
    for second in range(60):
        # one vehicle every 6 s passes the advance loop and, 5 s later, the stop line
        crossing = second % 6 == 5
        estimate = approach.read(
            adv=int(second % 6 == 0), stop=int(crossing), stop_occ=float(crossing)
        )
        assert estimate.queue_veh == 0.0


def test_a_vehicle_that_left_before_reaching_the_queue_never_joins_it() -> None:
    """A is counted, then B; A crosses on the last of a green 3 s later (faster than the
    estimator's cautious speed), B stops at the red stop line: one vehicle queues, not two."""
    approach = Approach()
    approach.read()
    approach.read(adv=1)
    approach.read(adv=1)
    approach.read()
    approach.read(stop=1, stop_occ=1.0)
    approach.read()
    queue = [approach.read(stop_occ=1.0).queue_veh for _ in range(5)]
    assert queue == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_a_missed_departure_drifts_until_the_stop_bar_stands_clear() -> None:
    approach = Approach()
    approach.read()
    approach.red_arrivals(10)
    for departing in [1] * 7 + [0, 0, 0]:  # ten leave, the loop counts seven
        drifted = approach.read(stop=departing, stop_occ=1.0)
    assert drifted.queue_veh == pytest.approx(3.0)
    assert approach.read(stop_occ=0.0).queue_veh == 0.0


def test_a_mostly_clear_stop_bar_keeps_those_who_joined_after_it_cleared() -> None:
    """10 s reads on a crawling approach (3 m/s): two counted vehicles need 23.5 s to the
    stop line; they reach it 1.5 s before the end of a read that saw it occupied 30 %."""
    crawl = msgspec.structs.replace(EAST, speed_limit_mps=3.0)
    approach = Approach(config=crawl)
    approach.read(adv=2, interval=10.0)
    assert approach.read(interval=10.0).queue_veh == 0.0
    assert approach.read(stop_occ=0.3, interval=10.0).queue_veh == pytest.approx(2.0)
    assert approach.read(stop_occ=0.0, interval=10.0).queue_veh == 0.0


def test_more_departures_than_counted_arrivals_never_go_negative() -> None:
    approach = Approach()
    approach.read()
    for _ in range(4):
        estimate = approach.read(stop=2, stop_occ=1.0)
        assert estimate.queue_veh == 0.0
        assert estimate.faults == frozenset()


def fill_the_zone_then_cover_the_loop(approach: Approach) -> list[QueueEstimate]:
    """18 vehicles, one every 2 s (0.5 veh/s), queue up to and over the advance loop; then it
    stays covered while the counts stop for 20 s: the newcomers queue beyond it."""
    approach.read()
    approach.red_arrivals(18)
    return [approach.read(stop_occ=1.0, adv_occ=1.0) for _ in range(20)]


def test_spillback_infers_the_queue_beyond_the_advance_loop() -> None:
    approach = Approach()
    covered = fill_the_zone_then_cover_the_loop(approach)
    assert all(Flag.SPILLBACK in e.flags for e in covered)
    # the flow before the loop was covered (0.5 veh/s over the last ~46 s, counted at 18/46)
    # feeds the queue beyond it: about 20 s x that rate more than the 18 counted
    rate = covered[-1].flow_vph / 3600.0
    assert 0.3 < rate < 0.6
    assert covered[-1].queue_veh == pytest.approx(18.0 + 20 * rate, rel=0.05)
    assert covered[-1].confidence < 1.0


def test_vehicles_from_beyond_the_loop_are_paid_off_as_it_counts_them() -> None:
    approach = Approach()
    covered = fill_the_zone_then_cover_the_loop(approach)[-1].queue_veh
    beyond = covered - 18.0
    # green: one departs and one from beyond the loop crosses it each second, for 6 s
    for _ in range(6):
        moving = approach.read(stop=1, adv=1, stop_occ=1.0, adv_occ=1.0)
    # each departure shortens the queue by one; the newcomers beyond keep coming at the rate
    rate = moving.flow_vph / 3600.0
    assert moving.queue_veh == pytest.approx(covered - 6 + 6 * rate, rel=0.02)
    # the loop clears: what is left must fit between the loops
    cleared = approach.read(stop=2, stop_occ=1.0)
    assert Flag.SPILLBACK not in cleared.flags
    assert cleared.queue_veh <= ZONE_E
    assert beyond > 0.0


def test_a_clear_stop_line_empties_the_queue_beyond_the_loop_too() -> None:
    approach = Approach()
    assert fill_the_zone_then_cover_the_loop(approach)[-1].queue_veh > 18.0
    assert approach.read(stop=3, stop_occ=0.2, interval=5.0).queue_veh == 0.0


def test_one_lane_covering_the_loop_is_not_spillback_of_the_whole_approach() -> None:
    """Eight vehicles in one lane cover the loop while the other lane's arrivals still count:
    nothing is inferred beyond it."""
    approach = Approach()
    approach.read()
    approach.red_arrivals(8)
    for second in range(20):
        estimate = approach.read(stop_occ=1.0, adv_occ=1.0, adv=int(second % 5 == 0))
    assert estimate.queue_veh == pytest.approx(8 + 4)
    assert Flag.SPILLBACK in estimate.flags
    assert estimate.confidence == 1.0


def test_a_covered_advance_loop_means_at_least_one_lane_queued_up_to_it() -> None:
    approach = Approach()
    approach.read()
    estimate = approach.read(stop_occ=1.0, adv_occ=1.0)
    assert estimate.queue_veh == pytest.approx(60.0 / 7.5)


def test_stop_bar_stuck_on_is_flagged_and_green_is_assumed_to_discharge() -> None:
    approach = Approach(EstimatorSettings(stuck_on_s=120.0))
    approach.read(signal=Indication.RED)
    for _ in range(119):
        estimate = approach.read(signal=Indication.RED, stop_occ=1.0)
        assert Flag.DETECTOR_FAULT not in estimate.flags
    stuck = approach.read(signal=Indication.RED, stop_occ=1.0)
    assert stuck.faults == frozenset({Fault.STOP_BAR_STUCK_ON})
    assert Flag.DETECTOR_FAULT in stuck.flags
    assert stuck.confidence < 0.5
    for second in range(20):
        queued = approach.read(Indication.RED, adv=int(second < 10), stop_occ=1.0)
    assert queued.queue_veh == pytest.approx(10.0)
    green_from = approach.now
    # a green discharges at saturation flow after the 2 s lost time: 2 lanes x 0.5 veh/s
    discharging = [approach.read(Indication.GREEN, green_from, stop_occ=1.0) for _ in range(8)]
    assert [e.queue_veh for e in discharging] == pytest.approx([10, 10, 9, 8, 7, 6, 5, 4])
    for _ in range(4):
        emptied = approach.read(Indication.GREEN, green_from, stop_occ=1.0)
    assert emptied.queue_veh == 0.0
    assert emptied.faults == frozenset({Fault.STOP_BAR_STUCK_ON})


def test_without_signals_a_stuck_stop_bar_holds_the_estimate_with_no_confidence() -> None:
    approach = Approach(EstimatorSettings(stuck_on_s=30.0))
    approach.read()
    approach.red_arrivals(5, every_s=1)
    estimates = [approach.read(stop_occ=1.0, adv=1) for _ in range(40)]
    stuck = [e for e in estimates if Fault.STOP_BAR_STUCK_ON in e.faults]
    # occupied without a count from 6 s into the red: stuck 30 s later, 21 reads on
    assert stuck == estimates[20:]
    assert {e.queue_veh for e in stuck} == {estimates[19].queue_veh}
    assert all(e.confidence == 0.0 for e in stuck)
    assert estimates[19].queue_veh > 20.0


def test_a_silent_stop_bar_is_stuck_off_once_more_arrive_than_could_be_driving() -> None:
    approach = Approach()
    approach.read()
    found = [approach.read(adv=1).faults for _ in range(12)]
    assert found[8] == frozenset()
    assert found[9] == frozenset({Fault.STOP_BAR_STUCK_OFF})


def test_a_silent_advance_loop_is_stuck_off_once_departures_are_unaccounted_for() -> None:
    approach = Approach()
    approach.read()
    found = [approach.read(stop=1, stop_occ=1.0).faults for _ in range(12)]
    assert found[9] == frozenset()
    assert found[10] == frozenset({Fault.ADVANCE_STUCK_OFF})
    # its stand-in: arrivals at the departure rate (1 veh/s for these 12 s), so a red queues
    for _ in range(20):
        queued = approach.read(stop_occ=1.0)
    assert queued.queue_veh > 5.0


def test_a_fault_clears_when_the_loop_counts_again() -> None:
    approach = Approach(EstimatorSettings(stuck_on_s=60.0))
    approach.read()
    for _ in range(61):
        stuck = approach.read(adv_occ=1.0, stop=1, stop_occ=1.0)
    assert stuck.faults == frozenset({Fault.ADVANCE_STUCK_ON})
    repaired = approach.read(adv=1, stop_occ=1.0)
    assert repaired.faults == frozenset()
    assert repaired.confidence == 0.5  # counting again, not yet anchored by a clear stop bar
    assert approach.read(stop_occ=0.0).confidence == 1.0


def test_flow_is_the_smoothed_arrival_rate() -> None:
    approach = Approach()
    for second in range(900):
        estimate = approach.read(adv=int(second % 4 == 0), stop=int(second % 4 == 3))
    assert estimate.flow_vph == pytest.approx(900.0, rel=0.02)


def test_a_missing_approach_keeps_its_estimate_flagged_stale() -> None:
    estimator = QueueEstimator([EAST, NORTH])
    first = estimator.update(
        DetectorReading(time=1.0, approaches=[counts(adv=1), counts("x:N", stop_occ=0.0)])
    )
    assert first["x:N"].confidence == 1.0
    later = estimator.update(DetectorReading(time=2.0, approaches=[counts(adv=1)]))
    assert later["x:N"] == QueueEstimate(
        "x:N", 1.0, 0.0, 0.0, 0.0, 0.5, frozenset({Flag.STALE}), frozenset()
    )
    assert estimator.update(DetectorReading(time=3.0, approaches=[]))["x:N"].confidence == 0.25
    assert Flag.STALE not in later["x:E"].flags


def test_an_approach_never_read_is_stale_with_no_confidence() -> None:
    estimator = QueueEstimator([EAST, NORTH])
    estimate = estimator.update(DetectorReading(time=1.0, approaches=[counts()]))["x:N"]
    assert estimate.queue_veh == 0.0
    assert estimate.confidence == 0.0
    assert Flag.STALE in estimate.flags


def test_a_zero_interval_is_skipped_and_counted() -> None:
    approach = Approach()
    approach.read()
    approach.red_arrivals(4)
    before = approach.estimator.estimates()["x:E"]
    again = approach.estimator.update(
        DetectorReading(time=approach.now, approaches=[counts(interval=0.0, stop_occ=0.0)])
    )
    assert again["x:E"] == before
    assert approach.estimator.skipped == 1


def corrupted(field: str, value: object) -> ApproachCounts:
    """A reading changed after its checks ran (``msgspec.structs.force_setattr``)."""
    reading = counts(adv=1)
    msgspec.structs.force_setattr(reading, field, value)
    return reading


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (corrupted("stop_bar_occupancy", math.nan), "approaches[1].stop_bar_occupancy"),
        (corrupted("advance_occupancy", 1.5), "approaches[1].advance_occupancy"),
        (corrupted("stop_bar_count", -1), "approaches[1].stop_bar_count"),
        (counts(stop=1.5), "approaches[1].stop_bar_count"),  # type: ignore[arg-type]
        (counts(adv=True), "approaches[1].advance_count"),  # a bool passes as an int
        (corrupted("interval_s", math.inf), "approaches[1].interval_s"),
        (corrupted("interval_s", -1.0), "approaches[1].interval_s"),
        (counts("x:W"), "approaches[1].approach"),
    ],
)
def test_bad_counts_are_refused_and_change_nothing(bad: ApproachCounts, field: str) -> None:
    approach = Approach()
    approach.read()
    approach.red_arrivals(3)
    before = approach.estimator.estimates()
    with pytest.raises(ValidationError) as error:
        approach.estimator.update(
            DetectorReading(time=100.0, approaches=[counts("x:N", adv=2), bad])
        )
    assert error.value.field == field
    assert approach.estimator.estimates() == before
    assert approach.read(stop_occ=1.0).queue_veh == pytest.approx(3.0)


def test_a_reading_must_not_go_back_in_time_nor_repeat_an_approach() -> None:
    estimator = QueueEstimator([EAST, NORTH])
    estimator.update(DetectorReading(time=10.0, approaches=[counts()]))
    with pytest.raises(ValidationError) as error:
        estimator.update(DetectorReading(time=9.0, approaches=[counts()]))
    assert error.value.field == "time"
    with pytest.raises(ValidationError) as error:
        estimator.update(DetectorReading(time=11.0, approaches=[counts(), counts()]))
    assert error.value.field == "approaches[1].approach"
    with pytest.raises(ValidationError):
        estimator.update({"time": 12.0, "approaches": []})  # type: ignore[arg-type]


def test_signals_must_show_every_group_that_serves_an_approach() -> None:
    estimator = QueueEstimator([EAST, NORTH])
    partial = SignalReading(time=1.0, groups={"2": Indication.RED}, since={"2": None})
    with pytest.raises(ValidationError) as error:
        estimator.update(DetectorReading(time=1.0, approaches=[counts()]), partial)
    assert error.value.field == "signals.groups"


def test_an_estimator_needs_distinct_approaches_and_sane_settings() -> None:
    with pytest.raises(ValidationError):
        QueueEstimator([])
    with pytest.raises(ValidationError):
        QueueEstimator([EAST, EAST])
    with pytest.raises(ValidationError):
        EstimatorSettings(clear_occupancy=1.5)
    with pytest.raises(ValidationError):
        EstimatorSettings(flow_window_s=math.nan)


def loop_readings(approach: str) -> st.SearchStrategy[ApproachCounts]:
    return st.builds(
        counts,
        st.just(approach),
        stop=st.integers(0, 6),
        stop_occ=st.floats(0.0, 1.0),
        adv=st.integers(0, 6),
        adv_occ=st.floats(0.0, 1.0),
        interval=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 10.0]),
    )


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(loop_readings("x:E"), st.none() | loop_readings("x:N")), max_size=120),
    shown=st.sampled_from([None, Indication.RED, Indication.GREEN, Indication.YELLOW]),
    stuck_on_s=st.sampled_from([5.0, 300.0]),
)
def test_estimates_are_always_finite_non_negative_and_within_storage(
    steps: list[tuple[ApproachCounts, ApproachCounts | None]],
    shown: Indication | None,
    stuck_on_s: float,
) -> None:
    estimator = QueueEstimator([EAST, NORTH], EstimatorSettings(stuck_on_s=stuck_on_s))
    for second, (east, north) in enumerate(steps, start=1):
        read = [east] if north is None else [east, north]
        signal = None if shown is None else signals(second, shown, second - 3.0)
        reading = DetectorReading(time=float(second), approaches=read)
        for estimate in estimator.update(reading, signal).values():
            assert math.isfinite(estimate.queue_veh)
            assert 0.0 <= estimate.queue_veh <= STORAGE[estimate.approach] + 1e-9
            assert 0.0 <= estimate.confidence <= 1.0
            assert math.isfinite(estimate.flow_vph)
            assert estimate.flow_vph >= 0.0
            assert 0.0 <= estimate.occupancy <= 1.0


def approach_configs(network: Network, intersection: str) -> Iterator[ApproachConfig]:
    for approach in network.approaches:
        if approach.intersection_id != intersection:
            continue
        link = network.link(approach.link_id)
        (setback,) = (
            d.distance_from_stop_line_m
            for d in network.detectors
            if d.link_id == link.id and d.kind is DetectorKind.ADVANCE
        )
        yield ApproachConfig(
            approach=approach.id,
            link=link.id,
            lanes=len(link.lanes),
            length_m=link.length_m,
            speed_limit_mps=link.speed_limit_mps,
            saturation_flow_vphpl=link.saturation_flow_vphpl,
            advance_setback_m=setback,
            groups=sorted({m.signal_group for m in network.movements if m.from_link == link.id}),
        )


def test_estimates_follow_the_simulators_true_queues() -> None:
    """A 3-intersection arterial at moderate demand (800 veh/h per main entry, 120 per side
    street), read every second for 300 s after a 200 s warm-up, without signals."""
    net = compile_network(arterial(3, length_m=1600.0))
    road = net.road.network
    entries = {
        link.id: 800.0 if link.from_node in ("west", "east") else 120.0
        for link in road.links
        if not road.intersection_by_id[link.from_node].signalized
    }
    trips = random_trips(
        net, seed=5, duration_s=500.0, vehicles_per_hour=sum(entries.values()),
        origin_weights=entries,
    )  # fmt: skip
    sim = Simulation(net, trips)
    cards = DetectorCards(sim)
    estimators = {
        node: QueueEstimator(list(approach_configs(road, node))) for node in net.controller_ids
    }
    errors: dict[str, list[float]] = {}
    queued = 0
    while sim.now < 500.0:
        sim.advance(1.0)
        for node, estimator in estimators.items():
            read = cards.read(node)
            reading = DetectorReading(
                time=sim.now,
                approaches=[
                    ApproachCounts(
                        approach=r.approach,
                        interval_s=r.interval_s,
                        stop_bar_count=r.stop_bar_count,
                        stop_bar_occupancy=r.stop_bar_occupancy,
                        advance_count=r.advance_count,
                        advance_occupancy=r.advance_occupancy,
                    )
                    for r in read.values()
                ],
            )
            estimates = estimator.update(reading)
            if sim.now <= 200.0:
                continue
            for approach, true in cards.true_queues(node).items():
                errors.setdefault(approach, []).append(estimates[approach].queue_veh - true)
                queued += true
    mae = {approach: float(np.mean(np.abs(e))) for approach, e in errors.items()}
    assert len(mae) == 12
    assert queued > 1000  # queues did form: this is not a test of empty roads
    # 1.25, not 1.0, since the engine queues by lane (issue 12): on a02:W and a03:W the two
    # through-and-right lanes reach the advance loop at about 16 cars, where the estimator
    # assumes all three lanes fill (24); the left lane's queue is counted apart
    assert max(mae.values()) <= 1.25, mae
    assert float(np.mean(list(mae.values()))) <= 0.5
