"""The closed-loop proof: the same seeded traffic under three policies, in one process.

* ``no_priority``: the ambulances drive through the normal plans.
* ``local_preemption``: as deployed today, a detector about 300 m before each stop line calls
  green for an ambulance's approach at that intersection alone; no queue flushing, no
  coordination (still a safe transition: the controller plans and checks it). Where two
  ambulances call the same intersection, the later call replaces the earlier one, as it does
  in the field.
* ``corridor``: citybrain. The corridor manager routes every ambulance, times queue-flushing
  windows on a rolling horizon (an intersection two corridors cross gets one plan serving both
  windows in turn), and sends plans the controllers check and run; queues come from the
  simulator's ground truth (the edge's estimates replace them when edges exist).

Beside them, a ceiling no one would deploy (``green_all_the_way``): from dispatch until the
ambulance passes, every signal on its route holds green for it (renewed before it runs out),
whatever the cross streets wait. No signal control does better for the ambulance, so a trip
time it cannot reach is out of reach of signals altogether.

Every figure comes from the run: each ambulance's trip, its delay and stops stop line by stop
line, the extra vehicle-seconds all other traffic spent compared with no priority, and how long
the signals took to get back to their normal plans.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from citybrain.cloud.corridor import CorridorManager, PublishStatus, SendPlan
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.graph import CorridorGraph
from citybrain.cloud.routing import Router
from citybrain.cloud.state import NetworkState
from citybrain.models.checks import compose_id
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    MAX_SPEED_MPS,
    AckStatus,
    CorridorImpact,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    GreenWindow,
    PlanAck,
    PlanKind,
    SignalPlan,
    VehiclePosition,
)
from citybrain.models.signal import Indication
from citybrain.simulator.crossing import QueueArrivals, queue_arrivals
from citybrain.simulator.kernels import ARRIVED, DRIVING, PENDING, QUEUED
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.runner import Engine, SimulationRun, VehicleIncident
from citybrain.simulator.scenarios import (
    Direction,
    Level,
    Meeting,
    Scenario,
    build,
    crossing_ambulances,
    load_network,
)
from citybrain.simulator.scoring import EmergencyTrip, score
from citybrain.simulator.sumo_run import open_run

log = logging.getLogger(__name__)

AMBULANCE = "AMB-1"
"""The first ambulance (the only one on the arterial)."""
FLOW_WINDOW_S = 120.0
"""Arrival flows reach the cloud as the advance loops' counts over this window, as telemetry
would carry them."""
PREEMPTION_DISTANCE_M = 300.0


class Policy(enum.StrEnum):
    NO_PRIORITY = "no_priority"
    LOCAL_PREEMPTION = "local_preemption"
    CORRIDOR = "corridor"
    GREEN_ALL_THE_WAY = "green_all_the_way"
    """The ceiling (see the module's docstring), not a policy to compare."""


COMPARED = (Policy.NO_PRIORITY, Policy.LOCAL_PREEMPTION, Policy.CORRIDOR)
"""The policies every comparison runs; the ceiling runs where asked for."""
HOLD_S = 100.0
"""The ceiling's windows: this long each (under the controllers' 120 s limit), renewed when
``RENEW_S`` is left."""
RENEW_S = 10.0


@dataclass(frozen=True)
class Journey:
    """One ambulance's trip under a policy."""

    trip: EmergencyTrip
    route: tuple[str, ...]
    """The intersections it passes, from its origin."""
    recovered_s: float
    """Mean over the route's intersections: from the ambulance passing the stop line until that
    controller was back on its normal plan (0 where it never left it)."""
    recovered_max_s: float
    trajectory: list[tuple[float, float]] = field(default_factory=list)
    """(time, distance along the route) of the ambulance."""
    signals: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    """Per route intersection: (time, indication of the ambulance's group)."""
    stop_line_m: dict[str, float] = field(default_factory=dict)
    """Distance along the route of each signalized stop line."""
    stops_at: dict[str, int] = field(default_factory=dict)
    """Per signalized stop line on the route: how often the ambulance stopped in its queue."""
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per signalized stop line: the green window (open, close) the last plan sent there
    before the ambulance passed asked for its movement; none without priority."""
    progression_mps: float = 0.0
    """The speed limit along the route (length over free-flow time at the limit): the speed
    a coordinated green wave is timed for."""
    advice: list[tuple[float, float | None]] = field(default_factory=list)
    """(time, speed) each time the speed its corridor advised changed, which it kept to
    (``None``: its own speed again)."""
    ahead_at_green: dict[str, int] = field(default_factory=dict)
    """Per signalized stop line it passed: the vehicles that left its approach from the start
    of its last green there until it left (the queue that green served ahead of it): at
    saturation flow, the least green it needed there, whatever the timing, behind them."""
    discharged: dict[str, list[float]] = field(default_factory=dict)
    """Per signalized stop line it passed: when each of those vehicles left (to the step),
    itself last: how that green was used, a queue at saturation flow, then arrivals, then
    none while the green waited for it."""
    flush_estimate_veh: dict[str, float] = field(default_factory=dict)
    """Per signalized stop line its corridor sent a window for and it passed: the vehicles
    the cloud expected that window to flush ahead of it (``StopLine.flushed_veh``), to hold
    against ``ahead_at_green`` (corridor policy only)."""
    forecasts: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    """Per intersection of its corridor's status: (when, ETA, early and late edge of its
    band) each time the cloud published one, to hold against when it got there (corridor
    policy only)."""

    lost: str | None = None
    """What the engine did to it that no driver does (SUMO teleported or removed it), if
    anything: its trip is then no real drive, and has no travel time."""

    @property
    def travel_time_s(self) -> float:
        if self.lost is not None or self.trip.travel_time_s is None:
            return float("nan")
        return float(self.trip.travel_time_s)

    def green_onset(self, intersection: str, until_s: float) -> float:
        """When its group's last green at ``intersection`` began, no later than ``until_s``
        (where none began, its first record: green, or not, since then)."""
        shown = self.signals[intersection]
        onsets = [
            t for (_, before), (t, now) in itertools.pairwise(shown)
            if now == "green" and before != "green" and t <= until_s
        ]  # fmt: skip
        return max(onsets, default=shown[0][0])

    def delay_at(self, intersection: str) -> float:
        """Seconds lost on the link up to ``intersection``'s stop line (nan if not reached)."""
        for line in self.trip.stop_lines:
            if line.intersection == intersection:
                return line.delay_s
        return float("nan")


@dataclass(frozen=True)
class Outcome:
    policy: Policy
    seed: int
    journeys: dict[str, Journey]
    """Per ambulance, in the scenario's order (``AMB-1`` first)."""
    other_vehicle_seconds: float
    """Vehicle-seconds all traffic but the emergency vehicles spent in the network."""
    plans_sent: int = 0
    plans_refused: int = 0
    crossings: tuple[str, ...] = ()
    """Signalized intersections on the routes of more than one ambulance."""
    corridors: dict[str, CorridorState] = field(default_factory=dict)
    """Per ambulance, the final state of its corridor (corridor policy only)."""
    queued_veh_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per link, the vehicle-seconds spent queued on it over the run (the ground truth the
    corridor's estimated cost to cross traffic is held against)."""
    impacts: dict[str, CorridorImpact] = field(default_factory=dict)
    """Per ambulance, its corridor's impact as the cloud estimated it (``cloud/impact.py``),
    to hold against what the runs measure."""
    incidents: tuple[VehicleIncident, ...] = ()
    """Vehicles the engine teleported or removed (SUMO; ours never does)."""
    crossing_queues: dict[str, dict[str, QueueArrivals]] = field(default_factory=dict)
    """Per crossing, per ambulance: its queue there as the run drove it (``crossing.py``
    bounds what any timing of that signal could have cost them with it)."""


@dataclass(frozen=True, slots=True)
class Setup:
    network: str = "arterial"
    level: Level = Level.SATURATED
    warmup_s: float = 900.0
    after_s: float = 900.0
    dispatch_lead_s: float = 60.0
    """How long before each ambulance leaves its station its corridor is requested (the crew's
    turnout time: dispatch systems ask for priority when the call is assigned)."""
    peak: bool = False
    """Demand with a peak (x1.5 at mid-run), see `citybrain.simulator.scenarios.build`."""
    crossing: tuple[int, int] | None = None
    """(row, column) on a grid: ambulances that meet at junction ``g{row}_{column}``
    (`crossing_ambulances`: AMB-1 leaves after the warm-up); None: one along the main route."""
    meeting: Meeting = Meeting.CROSSING
    """With ``crossing``: how they meet there (AMB-2 along the column, the row the other way,
    behind AMB-1, or both of the last but one and AMB-3 along the column)."""
    direction: Direction = "eastbound"
    """The one ambulance's way along the main route: ``westbound`` drives against the
    arterial's green wave, where no priority meets far more reds (only without ``crossing``)."""
    speed_advice: bool = True
    """The corridors advise a vehicle that yields to another one's window to slow down for
    it (``cloud.corridor.Settings.speed_advice``); without, it drives on and waits at the
    stop line. Off, the crossing shows what the advice costs and what it saves (stops)."""
    min_advised_mps: float = CorridorSettings().min_advised_mps
    """The slowest speed advised (``cloud.corridor.Settings.min_advised_mps``): at the speed
    limit or above, nothing overtakes the slowed vehicle, and what it cannot absorb is waited
    out at the stop line; the grid's trade between stops and delay at the crossing."""
    handover_s: float = CorridorSettings().handover_s
    """How much sooner another vehicle must come for a late one's open window to go to it
    (``cloud.corridor.Settings.handover_s``): sooner, the order at the crossing follows
    ETAs that slipped, at the price of stops for the one that hands over."""
    lead_budget_veh: float = CorridorSettings().lead_budget_veh
    """The lead's budget (``cloud.corridor.Settings.lead_budget_veh``)."""
    meeting_lead_budget_veh: float = CorridorSettings().meeting_lead_budget_veh
    """The lead's budget before an intersection two corridors share
    (``cloud.corridor.Settings.meeting_lead_budget_veh``)."""


GRID = Setup(
    network="grid:10x10",
    level=Level.HEAVY,
    warmup_s=1500.0,
    after_s=900.0,
    crossing=(4, 5),
)
"""The grid case: heavy demand (650 veh/h per entry) is served at steady state with bounded
queues after about 1,500 s, where ``saturated`` (1,000) keeps filling the grid for as long as
it runs; AMB-1 along row 4 and AMB-2 along column 5 reach g4_5 together at free flow."""

WESTBOUND = Setup(direction="westbound", after_s=2400.0)
"""The arterial ambulance against the green wave: it stops at nearly every signal and takes
about 1,540 s without priority (4x free flow), so the run goes on 2,400 s after it leaves (about
1.5x its slowest trip, as 900 s is for eastbound's 600 s) for every policy's trip to end."""


def run_policy(
    policy: Policy,
    seed: int,
    setup: Setup | None = None,
    *,
    scenario: Scenario | None = None,
    engine: Engine = Engine.OURS,
) -> Outcome:
    """One run under ``policy``: ``scenario`` (traffic and ambulances built elsewhere, such as
    ``citybrain evaluate``'s), else the one ``setup`` describes for ``seed``; ``setup`` times
    the run (the ambulances leave after its warm-up, it ends ``after_s`` later). ``engine``
    moves the vehicles: ours, or SUMO micro under the same controllers (``sumo_run``)."""
    setup = setup or Setup()
    scenario = scenario or setup_scenario(setup, seed)
    with open_run(engine, scenario) as run:
        return _run(policy, seed, setup, scenario, run)


def _run(
    policy: Policy, seed: int, setup: Setup, scenario: Scenario, run: SimulationRun
) -> Outcome:
    run.advance(setup.warmup_s - setup.dispatch_lead_s - FLOW_WINDOW_S - 1.0)
    driver = _Driver(policy, scenario, run, setup)
    busy_until, queued = _drive(driver, run, until_s=setup.warmup_s + setup.after_s)
    # vehicle-seconds all other traffic spent, up to the same end time under every policy
    others = ~scenario.trips.emergency & (scenario.trips.depart < run.now)
    until = np.where(np.isnan(run.sim.arrived), run.now, np.minimum(run.sim.arrived, run.now))
    seconds = float(np.sum((until - scenario.trips.depart)[others]))
    crossings, crossing_queues = _crossing_queues(driver, run)
    corridors, impacts = _corridor_ends(driver.manager)
    return Outcome(
        policy,
        seed,
        _journeys(driver, run, scenario, busy_until),
        seconds,
        driver.sent,
        driver.refused,
        crossings,
        corridors,
        queued,
        impacts,
        tuple(run.incidents),
        crossing_queues,
    )


def _drive(
    driver: _Driver, run: SimulationRun, *, until_s: float
) -> tuple[dict[str, float], np.ndarray]:
    """The closed loop, a second at a time: (per intersection, when its controller last ran
    a plan of the policy's; per link, the vehicle-seconds queued on it)."""
    busy_until: dict[str, float] = {}
    queued = np.zeros(len(run.net.link_ids))
    while run.now < until_s:
        driver.step()
        run.advance(1.0)
        queued += run.sim.link_queued
        driver.lost(run.incidents)
        for node, controller in run.controllers.items():
            if controller.running is not None:
                busy_until[node] = run.now
    return busy_until, queued


def _journeys(
    driver: _Driver, run: SimulationRun, scenario: Scenario, busy_until: dict[str, float]
) -> dict[str, Journey]:
    estimates = _flush_estimates(driver.manager)
    lost = {i.vehicle: i.describe() for i in reversed(run.incidents)}  # the first of each
    journeys: dict[str, Journey] = {}
    for trip, vehicle in zip(
        score(run, scenario=scenario.name, started_s=0.0).emergency, driver.vehicles, strict=True
    ):
        recoveries = [
            max(0.0, busy_until[line.intersection] - line.left_s)
            if line.intersection in busy_until
            else 0.0
            for line in trip.stop_lines
            if line.intersection in run.controllers
        ]
        journeys[vehicle.name] = Journey(
            trip,
            (vehicle.origin, *vehicle.nodes),
            float(np.mean(recoveries)) if recoveries else 0.0,
            max(recoveries, default=0.0),
            vehicle.trajectory,
            vehicle.signals,
            vehicle.stop_line_m,
            vehicle.stops_at,
            vehicle.windows,
            vehicle.progression_mps,
            vehicle.advice,
            vehicle.ahead_at_green,
            vehicle.discharged,
            estimates.get(vehicle.name, {}),
            vehicle.forecasts,
            lost.get(vehicle.name),
        )
    return journeys


def _crossing_queues(
    driver: _Driver, run: SimulationRun
) -> tuple[tuple[str, ...], dict[str, dict[str, QueueArrivals]]]:
    """The intersections on more than one ambulance's route, and each one's queue there."""
    routes = Counter(node for vehicle in driver.vehicles for node in vehicle.stop_line_m)
    crossings = tuple(sorted(node for node, count in routes.items() if count > 1))
    queues = {
        node: {
            vehicle.name: queue_arrivals(run.net, run.trips, run.sim.hop_enter, vehicle.index, node)
            for vehicle in driver.vehicles
            if node in vehicle.stop_line_m
        }
        for node in crossings
    }
    return crossings, queues


def _corridor_ends(
    manager: CorridorManager | None,
) -> tuple[dict[str, CorridorState], dict[str, CorridorImpact]]:
    """Per ambulance, how its corridor ended and the impact the cloud estimated for it."""
    corridors: dict[str, CorridorState] = {}
    impacts: dict[str, CorridorImpact] = {}
    if manager is not None:
        for corridor in manager.corridors.values():
            corridors[corridor.vehicle] = corridor.state
            impact = manager.impact.report(corridor.corridor_id)
            if impact is not None:
                impacts[corridor.vehicle] = impact
    return corridors, impacts


def _flush_estimates(manager: CorridorManager | None) -> dict[str, dict[str, float]]:
    """Per ambulance (``Journey.flush_estimate_veh``): per stop line its window passed, the
    vehicles the cloud expected that window to flush ahead of it."""
    if manager is None:
        return {}
    return {
        corridor.vehicle: {
            line.intersection: line.flushed_veh
            for line in corridor.stop_lines
            if line.passed_s is not None and line.plan_id is not None
        }
        for corridor in manager.corridors.values()
    }


@dataclass(frozen=True, slots=True)
class ImpactCheck:
    """A corridor's impact as the cloud estimated it (what the console shows) beside what the
    runs measured against the same seed without priority."""

    estimate: CorridorImpact
    time_saved_s: float
    """No priority's trip less the corridor's."""
    cross_delay_veh_s: float
    """Vehicle-seconds queued on the route intersections' other approaches, corridor run less
    the run without priority (over the whole run)."""


def check_impact(
    corridor: Outcome, without: Outcome, vehicle: str, road: RoadNetwork
) -> ImpactCheck | None:
    """``vehicle``'s corridor estimate against the runs (``None`` if it had no corridor)."""
    estimate = corridor.impacts.get(vehicle)
    if estimate is None:
        return None
    journey = corridor.journeys[vehicle]
    links = {link.id: i for i, link in enumerate(road.network.links)}
    cross = [  # the last node is the destination link's end: never crossed
        links[link.id]
        for before, node in itertools.pairwise(journey.route[:-1])
        if node in road.plans
        for link in road.network.links
        if link.to_node == node and link.from_node != before
    ]
    saved = without.journeys[vehicle].travel_time_s - journey.travel_time_s
    queued = corridor.queued_veh_s[cross] - without.queued_veh_s[cross]
    return ImpactCheck(estimate, saved, float(np.sum(queued)))


def setup_scenario(setup: Setup, seed: int, *, only: str | None = None) -> Scenario:
    """The scenario ``setup`` describes for ``seed``. ``only`` (crossing setups): that one of
    its ambulances, the others taken out and the traffic the same, so that its trip less
    this one's is all the others cost it."""
    end = setup.warmup_s + setup.after_s
    if setup.crossing is None:
        if only is not None:
            raise ValidationError("only", "a setup without a crossing has one ambulance")
        if setup.meeting is not Meeting.CROSSING:
            raise ValidationError("meeting", "ambulances meet only at a crossing")
        return build(
            setup.network,
            level=setup.level,
            duration_s=end,
            seed=seed,
            peak=setup.peak,
            ambulance_at_s=setup.warmup_s,
            ambulance_direction=setup.direction,
        )
    if setup.direction != "eastbound":
        raise ValidationError("direction", "crossing ambulances have their own directions")
    road = load_network(setup.network)
    row, column = setup.crossing
    ambulances = crossing_ambulances(
        road, row=row, column=column, at_s=setup.warmup_s, meeting=setup.meeting
    )
    kept = [a for a in ambulances if only is None or a.name == only]
    if not kept:
        raise ValidationError("only", f"no ambulance {only!r} in this setup")
    return build(
        road, level=setup.level, duration_s=end, seed=seed, peak=setup.peak, ambulances=kept
    )


class _Vehicle:
    """One ambulance as the driver follows it: its route, what it met, what it asked for."""

    def __init__(
        self, name: str, index: int, scenario: Scenario, run: SimulationRun, setup: Setup
    ) -> None:
        net, trips = scenario.net, scenario.trips
        self.name = name
        self.index = index
        start = int(trips.route_start[index])
        length = int(trips.route_len[index])
        self.route = [int(i) for i in trips.route_links[start : start + length]]
        self.moves = [int(m) for m in trips.route_moves[start : start + length]]
        road = net.road.network
        self.into_m = np.array([0.0, *(float(net.mv_junction_m[m]) for m in self.moves[:-1])])
        """Per link of its route, the junction it crosses into it (none into the first)."""
        crossed = net.link_length[self.route] + self.into_m
        self.offsets = np.concatenate([[0.0], np.cumsum(crossed)])
        """Per link, how far along the route the junction into it begins (the stop line
        before it): the junctions are driven too, and its speed over them counted."""
        self.origin = road.link_by_id[net.link_ids[self.route[0]]].from_node
        self.nodes = [road.link_by_id[net.link_ids[i]].to_node for i in self.route]
        self.groups = [
            road.movement_by_id[net.movement_ids[m]].signal_group if m >= 0 else ""
            for m in self.moves
        ]
        self.speed_factor = float(trips.speed_factor[index])
        self.depart_s = float(trips.depart[index])
        self.dispatched_at = self.depart_s - setup.dispatch_lead_s
        self.requested = False
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
        self.stops_at = dict.fromkeys(self.stop_line_m, 0)
        self.windows: dict[str, tuple[float, float]] = {}
        lengths, speeds = net.link_length[self.route], net.link_speed[self.route]
        self.progression_mps = float(np.sum(lengths) / np.sum(lengths / speeds))
        self.hop = 0
        self.stops = 0
        self.advice: list[tuple[float, float | None]] = []
        """(time, speed) each time its corridor's advice changed (``Journey.advice``)."""
        self.held_until: dict[int, float] = {}
        """The ceiling: per hop of the route, until when its signal holds green."""
        self.counted: dict[int, int] = {}
        """Per hop of the route ahead: its approach's departures counted into ``discharged``
        since its signal last turned green."""
        self.discharged: dict[str, list[float]] = {}
        self.forecasts: dict[str, list[tuple[float, float, float, float]]] = {}

    @property
    def ahead_at_green(self) -> dict[str, int]:
        """``Journey.ahead_at_green``: per stop line it passed, those ``discharged`` there
        before it."""
        return {
            node: max(0, len(self.discharged[node]) - 1)
            for node in self.nodes[: self.hop]
            if node in self.discharged
        }

    @property
    def advised_mps(self) -> float | None:
        """The speed its corridor advises now, which it keeps to (none: its own)."""
        return self.advice[-1][1] if self.advice else None

    def measured_mps(self) -> float | None:
        """Its speed over the last step of its trajectory (none before it has two points)."""
        if len(self.trajectory) < 2:
            return None
        (then, was), (now, at) = self.trajectory[-2:]
        return min(max(0.0, (at - was) / (now - then)), MAX_SPEED_MPS) if now > then else None


class _Driver:
    """What happens each second under a policy: detection, requests, positions, plans."""

    def __init__(
        self, policy: Policy, scenario: Scenario, run: SimulationRun, setup: Setup
    ) -> None:
        self.policy = policy
        self.run = run
        self.net = scenario.net
        self.vehicles = [
            _Vehicle(name, index, scenario, run, setup)
            for index, name in sorted(scenario.trips.names.items())
        ]
        self.observe_from = min(v.dispatched_at for v in self.vehicles) - FLOW_WINDOW_S
        self.sent = 0
        self.refused = 0
        self.manager: CorridorManager | None = None
        self.counts: deque[tuple[float, np.ndarray]] = deque()
        self.seq: dict[str, int] = {}
        self.seen_incidents = 0
        if policy is Policy.CORRIDOR:
            factors = {v.speed_factor for v in self.vehicles}
            if len(factors) > 1:
                raise ValidationError(
                    "ambulances", "the corridor graph times every vehicle at one emergency speed"
                )
            road = self.net.road.network
            graph = CorridorGraph.from_network(road, emergency_speed_factor=factors.pop())
            self.state = NetworkState(road)
            self.manager = CorridorManager(
                graph,
                Router(graph),
                self.state,
                self.net.road.plans,
                lambda node, at: run.controllers[node].state_at(at),
                settings=CorridorSettings(
                    speed_advice=setup.speed_advice,
                    min_advised_mps=setup.min_advised_mps,
                    handover_s=setup.handover_s,
                    lead_budget_veh=setup.lead_budget_veh,
                    meeting_lead_budget_veh=setup.meeting_lead_budget_veh,
                ),
            )

    def step(self) -> None:
        now = self.run.now
        manager = self.manager
        if manager is not None and now >= self.observe_from:
            self._observe(now)
            manager.measure(now)
        for vehicle in self.vehicles:
            if manager is not None and not vehicle.requested and now >= vehicle.dispatched_at:
                self._request(vehicle, now)
            if self.policy is Policy.GREEN_ALL_THE_WAY and now >= vehicle.dispatched_at:
                self._hold_green(vehicle, now)
        for vehicle in self.vehicles:
            self._follow(vehicle, now)

    def lost(self, incidents: list[VehicleIncident]) -> None:
        """An ambulance the engine teleported or removed no longer drives its corridor: the
        corridor fails with the reason and its lights go back to their plans."""
        manager = self.manager
        ambulances = {vehicle.name for vehicle in self.vehicles}
        for incident in incidents[self.seen_incidents :]:
            ambulance = incident.vehicle in ambulances
            log.log(logging.WARNING if ambulance else logging.INFO, "%s", incident.describe())
            if ambulance and manager is not None and incident.vehicle in manager.by_vehicle:
                corridor = manager.by_vehicle[incident.vehicle]
                reason = f"vehicle lost: {incident.describe()}"
                self._apply(manager.fail(corridor, self.run.now, reason=reason))
        self.seen_incidents = len(incidents)

    def _follow(self, vehicle: _Vehicle, now: float) -> None:
        sim, v = self.run.sim, vehicle.index
        self._watch_signals(vehicle, now)
        if sim.state[v] not in (DRIVING, QUEUED):
            manager = self.manager
            if (
                manager is not None
                and sim.state[v] == ARRIVED
                and vehicle.name in manager.by_vehicle
            ):
                last = vehicle.route[-1]
                self._apply(
                    manager.on_position(
                        self._position(vehicle, last, self.net.link_length[last]), now
                    )
                )
            return
        hop = int(sim.hop[v])
        # a stop counts when the vehicle leaves the queue: at the stop line it was queued at
        stops = int(sim.stops[v])
        if stops > vehicle.stops and vehicle.nodes[vehicle.hop] in vehicle.stops_at:
            vehicle.stops_at[vehicle.nodes[vehicle.hop]] += stops - vehicle.stops
        vehicle.hop, vehicle.stops = hop, stops
        into = float(vehicle.into_m[hop])  # ours drives it from -into on the link, SUMO off it
        along = float(vehicle.offsets[hop] + into + max(-into, sim.position[v]))
        vehicle.trajectory.append((now, along))
        if self.policy is Policy.LOCAL_PREEMPTION:
            self._preempt(vehicle, hop, now)
        elif self.manager is not None:
            self._corridor(vehicle, hop, now)

    def _watch_signals(self, vehicle: _Vehicle, now: float) -> None:
        """Note what each signal on its route shows it, and at each stop line still ahead
        when vehicles left its approach since its signal last turned green."""
        run = self.run
        for hop, node in enumerate(vehicle.nodes):
            if node in vehicle.signals and vehicle.groups[hop]:
                shown = run.controllers[node].state_at(now).groups[vehicle.groups[hop]].indication
                seen = vehicle.signals[node]
                departed = int(run.sim.link_departures[vehicle.route[hop]])
                onset = shown is Indication.GREEN and (not seen or seen[-1][1] != shown.value)
                seen.append((now, shown.value))
                if hop < vehicle.hop:
                    continue  # passed: what its green there was used for is kept
                if onset:
                    vehicle.counted[hop] = departed
                    vehicle.discharged[node] = []
                elif hop in vehicle.counted:
                    vehicle.discharged[node] += [now] * (departed - vehicle.counted[hop])
                    vehicle.counted[hop] = departed

    def _preempt(self, vehicle: _Vehicle, hop: int, now: float) -> None:
        node = vehicle.nodes[hop]
        if hop in vehicle.preempted or node not in self.run.controllers or not vehicle.groups[hop]:
            return
        link = vehicle.route[hop]
        remaining = self.net.link_length[link] - float(self.run.sim.position[vehicle.index])
        if remaining > PREEMPTION_DISTANCE_M:
            return
        vehicle.preempted.add(hop)
        speed = self.net.link_speed[link] * vehicle.speed_factor
        close = now + remaining / speed + 4.0
        seq = self._next_seq(node)
        plan = SignalPlan(
            plan_id=compose_id("preempt", node, seq),
            intersection=node,
            seq=seq,
            issued_at=now,
            valid_from=now,
            valid_until=close + 60.0,
            windows=(GreenWindow(signal_group=vehicle.groups[hop], open_at=now, close_at=close),),
        )
        self._send(node, plan)

    def _hold_green(self, vehicle: _Vehicle, now: float) -> None:
        """The ceiling: every signal the ambulance has still to pass green for it, from
        dispatch until it passes or leaves the network another way (SUMO removed it); then
        back to its normal plan."""
        gone = self.run.sim.state[vehicle.index] not in (PENDING, DRIVING, QUEUED)
        for hop in [h for h in vehicle.held_until if gone or h < vehicle.hop]:
            del vehicle.held_until[hop]
            self._send(vehicle.nodes[hop], self._release_plan(vehicle.nodes[hop], now))
        if gone:
            return
        for hop in range(vehicle.hop, len(vehicle.nodes)):
            node, group = vehicle.nodes[hop], vehicle.groups[hop]
            if node not in self.run.controllers or not group:
                continue
            if vehicle.held_until.get(hop, -math.inf) - now > RENEW_S:
                continue
            vehicle.held_until[hop] = now + HOLD_S
            seq = self._next_seq(node)
            window = GreenWindow(signal_group=group, open_at=now, close_at=now + HOLD_S)
            plan = SignalPlan(
                plan_id=compose_id("ceiling", node, seq), intersection=node, seq=seq,
                issued_at=now, valid_from=now, valid_until=now + HOLD_S + 60.0,
                windows=(window,),
            )  # fmt: skip
            self._send(node, plan)

    def _next_seq(self, node: str) -> int:
        """The next seq of the plans this driver sends ``node`` (local preemption, ceiling)."""
        self.seq[node] = self.seq.get(node, 0) + 1
        return self.seq[node]

    def _release_plan(self, node: str, now: float) -> SignalPlan:
        seq = self._next_seq(node)
        return SignalPlan(
            plan_id=compose_id("ceiling", node, "release", seq), intersection=node, seq=seq,
            issued_at=now, valid_from=now, valid_until=now + 30.0, kind=PlanKind.RELEASE,
        )  # fmt: skip

    def _corridor(self, vehicle: _Vehicle, hop: int, now: float) -> None:
        manager = self.manager
        if manager is None or vehicle.name not in manager.by_vehicle:
            return
        offset = float(self.run.sim.position[vehicle.index])
        link = vehicle.route[hop]
        if offset < 0.0 and vehicle.into_m[hop] > 0.0:
            # still crossing the junction into it: at the end of the link it left, as SUMO's
            # engine (and an AVL unit matched to a link) says there
            link = vehicle.route[hop - 1]
            offset = float(self.net.link_length[link])
        self._apply(manager.on_position(self._position(vehicle, link, offset), now))

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

    def _request(self, vehicle: _Vehicle, now: float) -> None:
        """Dispatch: ask for the corridor before the ambulance leaves its station."""
        if self.manager is None:
            return
        vehicle.requested = True
        request = CorridorRequest(
            vehicle=vehicle.name,
            origin=vehicle.origin,
            route=(vehicle.origin, *vehicle.nodes),
            priority=8,
            requester="dispatch",
            requested_at=now,
            depart_at=vehicle.depart_s,
        )
        self._apply(self.manager.request(request, now))

    def _position(self, vehicle: _Vehicle, link: int, offset_m: float) -> VehiclePosition:
        """Where it is, and its speed as its AVL unit measures it: over the last step of its
        trajectory (before it has one, the speed it drives at there)."""
        speed = vehicle.measured_mps()
        if speed is None:
            speed = min(self.net.link_speed[link] * vehicle.speed_factor,
                        vehicle.advised_mps or math.inf)  # fmt: skip
        return VehiclePosition(
            vehicle=vehicle.name,
            time=self.run.now,
            link=self.net.link_ids[link],
            offset_m=min(max(0.0, float(offset_m)), float(self.net.link_length[link])),
            speed_mps=float(speed),
        )

    def _apply(self, actions: list[SendPlan | PublishStatus]) -> None:
        for action in actions:
            if isinstance(action, PublishStatus):
                status = action.status
                vehicle = next((v for v in self.vehicles if v.name == status.vehicle), None)
                if vehicle is not None:
                    _note_forecasts(vehicle, status)
                    self._follow_advice(vehicle, status)
            elif isinstance(action, SendPlan):
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

    def _follow_advice(self, vehicle: _Vehicle, status: CorridorStatus) -> None:
        """The crew keeps to the speed its corridor's status advises (none: its own)."""
        if status.advised_speed_mps != vehicle.advised_mps:
            vehicle.advice.append((self.run.now, status.advised_speed_mps))
            self.run.set_speed_cap(vehicle.name, status.advised_speed_mps)

    def _send(self, node: str, plan: SignalPlan) -> AckStatus:
        self._note_windows(node, plan)
        self.sent += 1
        outcome = self.run.command(node, plan)
        if outcome.status in (AckStatus.REJECTED, AckStatus.EXPIRED):
            self.refused += 1
            log.info("%s refused %s: %s", node, plan.plan_id, outcome.verdict.reason)
        return outcome.status

    def _note_windows(self, node: str, plan: SignalPlan) -> None:
        """Keep, per ambulance not yet past ``node``, the window the plan asks for its
        movement there: the time-space diagram draws what was asked next to what was shown."""
        asked = {window.signal_group: window for window in plan.windows}
        for vehicle in self.vehicles:
            for hop in range(vehicle.hop, len(vehicle.nodes)):
                window = asked.get(vehicle.groups[hop])
                if vehicle.nodes[hop] == node and window is not None:
                    vehicle.windows[node] = (window.open_at, window.close_at)


def _note_forecasts(vehicle: _Vehicle, status: CorridorStatus) -> None:
    """Keep each ETA its vehicle's status gives (``Journey.forecasts``)."""
    for ahead in status.intersections:
        if ahead.actual_arrival is None:
            forecast = (status.updated_at, ahead.eta, ahead.eta_low, ahead.eta_high)
            vehicle.forecasts.setdefault(ahead.intersection, []).append(forecast)


def indication_colour(value: str) -> str:
    return {Indication.GREEN.value: "#2e9e44", Indication.YELLOW.value: "#f2c12e"}.get(
        value, "#d64541"
    )
