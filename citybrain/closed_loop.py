"""The closed-loop proof: the same seeded traffic under three policies, in one process.

* ``no_priority``: the ambulance drives through the normal plans.
* ``local_preemption``: as deployed today, a detector about 300 m before each stop line calls
  green for the ambulance's approach at that intersection alone; no queue flushing, no
  coordination (still a safe transition: the controller plans and checks it).
* ``corridor``: citybrain. The corridor manager routes the ambulance, times queue-flushing
  windows on a rolling horizon, and sends plans the controllers check and run; queues come from
  the simulator's ground truth (the edge's estimates replace them when edges exist).

Every figure comes from the run: the ambulance's trip, its delay stop line by stop line, the
extra vehicle-seconds all other traffic spent compared with no priority, and how long the
signals took to get back to their normal plans.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from citybrain.cloud.corridor import CorridorManager, PublishStatus, SendPlan
from citybrain.cloud.graph import CorridorGraph
from citybrain.cloud.routing import Router
from citybrain.cloud.state import NetworkState
from citybrain.models.messages import (
    AckStatus,
    CorridorRequest,
    GreenWindow,
    PlanAck,
    SignalPlan,
    VehiclePosition,
)
from citybrain.models.signal import Indication
from citybrain.simulator.kernels import ARRIVED, DRIVING, QUEUED
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, Scenario, build
from citybrain.simulator.scoring import EmergencyTrip, score

log = logging.getLogger(__name__)

AMBULANCE = "AMB-1"
FLOW_WINDOW_S = 120.0
"""Arrival flows reach the cloud as the advance loops' counts over this window, as telemetry
would carry them."""
PREEMPTION_DISTANCE_M = 300.0


class Policy(enum.StrEnum):
    NO_PRIORITY = "no_priority"
    LOCAL_PREEMPTION = "local_preemption"
    CORRIDOR = "corridor"


@dataclass
class Outcome:
    policy: Policy
    seed: int
    trip: EmergencyTrip
    other_vehicle_seconds: float
    recovered_s: float
    """Mean over the route's intersections: from the ambulance passing the stop line until that
    controller was back on its normal plan (0 where it never left it)."""
    recovered_max_s: float
    plans_sent: int = 0
    plans_refused: int = 0
    trajectory: list[tuple[float, float]] = field(default_factory=list)
    """(time, distance along the route) of the ambulance."""
    signals: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    """Per route intersection: (time, indication of the ambulance's group)."""
    stop_line_m: dict[str, float] = field(default_factory=dict)
    """Distance along the route of each signalized stop line."""

    @property
    def travel_time_s(self) -> float:
        return (
            float(self.trip.travel_time_s) if self.trip.travel_time_s is not None else float("nan")
        )


@dataclass(frozen=True, slots=True)
class Setup:
    network: str = "arterial"
    level: Level = Level.SATURATED
    warmup_s: float = 900.0
    after_s: float = 900.0
    dispatch_lead_s: float = 60.0
    """How long before the ambulance leaves its station the corridor is requested (the crew's
    turnout time: dispatch systems ask for priority when the call is assigned)."""


def run_policy(policy: Policy, seed: int, setup: Setup | None = None) -> Outcome:
    setup = setup or Setup()
    end = setup.warmup_s + setup.after_s
    scenario = build(
        setup.network, level=setup.level, duration_s=end, seed=seed, ambulance_at_s=setup.warmup_s
    )
    run = Run(scenario.net, scenario.trips)
    run.advance(setup.warmup_s - setup.dispatch_lead_s - FLOW_WINDOW_S - 1.0)
    driver = _Driver(policy, scenario, run, setup)
    busy_until: dict[str, float] = {}
    while run.now < end:
        driver.step()
        run.advance(1.0)
        for node, controller in run.controllers.items():
            if controller.running is not None:
                busy_until[node] = run.now
    trip = score(run, scenario=scenario.name, started_s=0.0).emergency[0]
    recoveries = [
        max(0.0, busy_until[line.intersection] - line.left_s)
        if line.intersection in busy_until
        else 0.0
        for line in trip.stop_lines
        if line.intersection in run.controllers
    ]
    # vehicle-seconds all other traffic spent, up to the same end time under every policy
    others = ~scenario.trips.emergency & (scenario.trips.depart < run.now)
    until = np.where(np.isnan(run.sim.arrived), run.now, np.minimum(run.sim.arrived, run.now))
    seconds = float(np.sum((until - scenario.trips.depart)[others]))
    return Outcome(
        policy,
        seed,
        trip,
        seconds,
        float(np.mean(recoveries)) if recoveries else 0.0,
        max(recoveries, default=0.0),
        driver.sent,
        driver.refused,
        driver.trajectory,
        driver.signals,
        driver.stop_line_m,
    )


class _Driver:
    """What happens each second under a policy: detection, requests, positions, plans."""

    def __init__(self, policy: Policy, scenario: Scenario, run: Run, setup: Setup) -> None:
        self.policy = policy
        self.run = run
        self.net = scenario.net
        self.trips = scenario.trips
        self.vehicle = scenario.trips.count - 1
        start = int(self.trips.route_start[self.vehicle])
        length = int(self.trips.route_len[self.vehicle])
        self.route = [int(i) for i in self.trips.route_links[start : start + length]]
        self.moves = [int(m) for m in self.trips.route_moves[start : start + length]]
        road = self.net.road.network
        self.offsets = np.concatenate([[0.0], np.cumsum(self.net.link_length[self.route])])
        self.nodes = [road.link_by_id[self.net.link_ids[i]].to_node for i in self.route]
        self.groups = [
            road.movement_by_id[self.net.movement_ids[m]].signal_group if m >= 0 else ""
            for m in self.moves
        ]
        self.sent = 0
        self.refused = 0
        self.preempted: set[int] = set()
        self.trajectory: list[tuple[float, float]] = []
        self.signals: dict[str, list[tuple[float, str]]] = {
            n: [] for n in self.nodes if n in run.controllers
        }
        self.stop_line_m = {
            node: float(self.offsets[hop + 1])
            for hop, node in enumerate(self.nodes)
            if node in run.controllers
        }
        self.manager: CorridorManager | None = None
        self.counts: deque[tuple[float, np.ndarray]] = deque()
        self.dispatched_at = float(self.trips.depart[self.vehicle]) - setup.dispatch_lead_s
        self.seq: dict[str, int] = {}
        if policy is Policy.CORRIDOR:
            graph = CorridorGraph.from_network(
                road, emergency_speed_factor=float(self.trips.speed_factor[self.vehicle])
            )
            self.state = NetworkState(road)
            self.manager = CorridorManager(
                graph,
                Router(graph),
                self.state,
                self.net.road.plans,
                lambda node, at: run.controllers[node].state_at(at),
            )

    def step(self) -> None:
        run, sim, v = self.run, self.run.sim, self.vehicle
        now = run.now
        manager = self.manager
        if manager is not None and now >= self.dispatched_at - FLOW_WINDOW_S:
            self._observe(now)
        if manager is not None and not manager.corridors and now >= self.dispatched_at:
            self._request(now)
        for hop, node in enumerate(self.nodes):
            if node in self.signals and self.groups[hop]:
                shown = run.controllers[node].state_at(now).groups[self.groups[hop]].indication
                self.signals[node].append((now, shown.value))
        if sim.state[v] not in (DRIVING, QUEUED):
            manager = self.manager
            if manager is not None and sim.state[v] == ARRIVED and AMBULANCE in manager.by_vehicle:
                last = self.route[-1]
                self._apply(
                    manager.on_position(self._position(last, self.net.link_length[last]), now)
                )
            return
        hop = int(sim.hop[v])
        along = float(self.offsets[hop] + max(0.0, sim.position[v]))
        self.trajectory.append((now, along))
        if self.policy is Policy.LOCAL_PREEMPTION:
            self._preempt(hop, now)
        elif self.manager is not None:
            self._corridor(hop, now)

    def _preempt(self, hop: int, now: float) -> None:
        node = self.nodes[hop]
        if hop in self.preempted or node not in self.run.controllers or not self.groups[hop]:
            return
        remaining = self.net.link_length[self.route[hop]] - float(
            self.run.sim.position[self.vehicle]
        )
        if remaining > PREEMPTION_DISTANCE_M:
            return
        self.preempted.add(hop)
        speed = self.net.link_speed[self.route[hop]] * float(self.trips.speed_factor[self.vehicle])
        close = now + remaining / speed + 4.0
        seq = self.seq.get(node, 0) + 1
        self.seq[node] = seq
        plan = SignalPlan(
            plan_id=f"preempt-{node}-{seq}",
            intersection=node,
            seq=seq,
            issued_at=now,
            valid_from=now,
            valid_until=close + 60.0,
            windows=(GreenWindow(signal_group=self.groups[hop], open_at=now, close_at=close),),
        )
        self._send(node, plan)

    def _corridor(self, hop: int, now: float) -> None:
        manager = self.manager
        if manager is None:
            return
        if AMBULANCE not in manager.by_vehicle:
            return
        position = self._position(self.route[hop], float(self.run.sim.position[self.vehicle]))
        self._apply(manager.on_position(position, now))

    def _observe(self, now: float) -> None:
        """What telemetry would tell the cloud: the standing queue and the arrival flow (the
        advance loops' counts over the last two minutes) of every approach."""
        sim = self.run.sim
        self.counts.append((now, sim.adv_count.copy()))
        while len(self.counts) > 1 and now - self.counts[0][0] > FLOW_WINDOW_S:
            self.counts.popleft()
        then, before = self.counts[0]
        span = max(now - then, 1.0)
        for link in self.run.detectors.approaches.values():
            flow = min(float(sim.adv_count[link] - before[link]) / span * 3600.0, 20_000.0)
            queue = float(sim.link_queued[link])
            self.state.set_queue(self.net.link_ids[link], queue, now, flow_vph=flow)

    def _request(self, now: float) -> None:
        """Dispatch: ask for the corridor before the ambulance leaves its station."""
        if self.manager is None:
            return
        origin = self.net.road.network.link_by_id[self.net.link_ids[self.route[0]]].from_node
        request = CorridorRequest(
            vehicle=AMBULANCE,
            origin=origin,
            route=(origin, *self.nodes),
            priority=8,
            requester="dispatch",
            requested_at=now,
            depart_at=float(self.trips.depart[self.vehicle]),
        )
        self._apply(self.manager.request(request, now))

    def _position(self, link: int, offset_m: float) -> VehiclePosition:
        speed = self.net.link_speed[link] * float(self.trips.speed_factor[self.vehicle])
        return VehiclePosition(
            vehicle=AMBULANCE,
            time=self.run.now,
            link=self.net.link_ids[link],
            offset_m=min(max(0.0, float(offset_m)), float(self.net.link_length[link])),
            speed_mps=float(speed),
        )

    def _apply(self, actions: list[SendPlan | PublishStatus]) -> None:
        for action in actions:
            if isinstance(action, SendPlan):
                outcome = self._send(action.intersection, action.plan)
                if self.manager is not None:
                    ack = PlanAck(
                        plan_id=action.plan.plan_id,
                        intersection=action.intersection,
                        seq=action.plan.seq,
                        status=outcome,
                        at=self.run.now,
                        reason=None
                        if outcome in (AckStatus.ACCEPTED, AckStatus.RELEASED)
                        else "refused",
                    )
                    self.manager.on_ack(ack, self.run.now)

    def _send(self, node: str, plan: SignalPlan) -> AckStatus:
        self.sent += 1
        outcome = self.run.command(node, plan)
        if outcome.status in (AckStatus.REJECTED, AckStatus.EXPIRED):
            self.refused += 1
            log.info("%s refused %s: %s", node, plan.plan_id, outcome.verdict.reason)
        return outcome.status


def indication_colour(value: str) -> str:
    return {Indication.GREEN.value: "#2e9e44", Indication.YELLOW.value: "#f2c12e"}.get(
        value, "#d64541"
    )
