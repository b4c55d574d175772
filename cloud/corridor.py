"""The corridor manager: a pure state machine. Requests, vehicle positions, acks and ``now``
go in; signal plans to send and corridor status to publish come out. No I/O, no clock.

Lifecycle (after NTCIP 1211 / SAE J2735 SSM): requested -> processing -> granted (route and
windows computed, plans sent within the horizon) -> active (the vehicle reports positions) ->
completed | cancelled | timed_out | failed; an invalid request is refused with a typed error.

Rolling horizon: plans are committed only for stop lines the vehicle reaches, or whose window
opens, within ``horizon_s``; every position update re-times the route (and re-routes when the
vehicle left it), and so does a window coming within the horizon; a plan is re-sent only when
its window moved by more than ``min_change_s``; a stop line is released as soon as the vehicle
is past it. Several vehicles: windows are reserved per (intersection, group); a conflicting
reservation of a higher priority (ties: whose window must open first at the shared
intersection, then the earlier request) pushes a window back until the other's closes plus
clearance, and where there is time the vehicle that waits has its queue flushed before the
other's window too.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from citybrain.cloud.graph import CorridorGraph
from citybrain.cloud.impact import ImpactMeter, Leg, normal_trip_s
from citybrain.cloud.routing import (
    MAX_PACE,
    MIN_PACE,
    HeldSpeed,
    MovementTimes,
    Route,
    Router,
    UnreachableError,
)
from citybrain.cloud.state import NetworkState, RefusedError
from citybrain.models.checks import check_count, check_number, compose_id
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    MAX_SEQ,
    MAX_SPEED_MPS,
    MAX_WINDOWS,
    AckStatus,
    CorridorIntersection,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    GreenWindow,
    PlanAck,
    PlanKind,
    SignalPlan,
    VehiclePosition,
)
from citybrain.models.network import JAM_SPACING_M
from citybrain.models.signal import Indication
from citybrain.models.traffic import DEFAULT_LOST_TIME_S
from citybrain.signal_plans.state import ControllerState, normal_periods
from citybrain.signal_plans.timing import TimingPlan
from citybrain.signal_plans.transitions import plan_green_window

log = logging.getLogger(__name__)

SWITCH_ESTIMATE_S = 8.0
"""Assumed time to bring a group to green where the exact answer is not computed (beyond the
horizon, and in route search): a typical remaining minimum green plus a clearance."""

MOVED_M = 5.0
"""How far a vehicle goes on its link for it to count as moving."""
FIX_ERROR_M = 50.0
"""How far a position fix and its matching to a link may be off: a report further from the
last than the vehicle could drive in between plus this is refused (``_check_plausible``)."""
STUCK = "stuck in traffic its windows cannot move: windows dropped until it moves"
PLAN_AGE_SLACK_S = 5.0
"""A plan takes over at least this long before it is ``max_plan_age_s`` old: room for its way
to the edge, the edge's handing it over ahead of the takeover, and the clocks' skew."""
ARBITRATION_MARGIN_S = 20.0
"""How far a vehicle's arrival at a shared intersection must move before its turn there is
taken again: its estimate moves by a few seconds with every queue it meets, and a swap moves
both vehicles' windows; a vehicle held up for longer than this gives way to the other."""
PRE_FLUSH_MIN_S = 6.0
"""The shortest window worth sending to flush a queue ahead of time: a minimum green plus
the lost time."""
FORECAST_S = 60.0
"""How far ahead of a stop line the ETA kept to learn the forecast's error is made: about the
horizon a window is committed over (a flush plus the controller's change)."""
PACE_MEMORY_S = 30.0
"""Driving time over which the vehicle's pace is averaged: long enough to smooth a traffic
light's slowing, short enough to follow it onto a road where it must keep behind traffic."""
SPEED_HELD_S = 15.0
"""How long a vehicle reporting a speed under its own (pace's) keeps it in its ETAs, before
its pace again: behind traffic it cannot pass it drives at that traffic's speed, which the
pace learns only over ``PACE_MEMORY_S``, and how long it stays there nobody knows (the car
ahead may turn off at the next junction). SUMO grid, each ambulance alone, seeds 7-12: 21
of 120 ETAs 20 s ahead were made behind a car it followed to the stop line, and 19 of them
were more than 2 s early (median 4.1 s)."""
HELD_FLOOR = 0.5
"""Slower than this share of its own speed it is braking for a queue or a light, which the
queue estimates time, not a speed to keep."""
PACE_SLOWEST = 3.0
"""A stretch driven this much slower than planned is waiting (a queue, a red), which the
windows model apart: it does not teach the pace."""
SPREAD_LEARNING = 0.3
"""Weight of each stop line passed in the learned spread of a vehicle's ETAs."""
LEAST_SPREAD_RATE = 0.03
"""The ETA band's growth with the time to go before anything is learned (and its floor): 3 %."""
MOST_SPREAD_RATE = 0.5
"""Its ceiling: ETAs off by half the time to go leave nothing to plan windows on anyway."""
ADVICE_MIN_HOLD_S = 1.0
"""A shorter hold is no stop (engines count a wait over 1 s, or a fall to walking pace)."""
ADVICE_BAND_SHARE = 0.5
"""Of the early side of the vehicle's ETA band, the share its advice comes after the queue
there has gone, so that it seldom comes too soon (demo grid, seeds 1-40: with all of it
neither ambulance stops at the crossing on 92.5 % of seeds and the second loses 18.6 s
there; with half, 95 % and 16.8 s; with none, 75 % and 15.6 s)."""
PLATOON_AHEAD_SHARE = 0.42
"""Of the platoon a window upstream carries to a stop line (``StopLine.platoon_veh``), the
share that gets there ahead of the vehicle: the least-squares fit of what did leave ahead of
each ambulance against the flush estimate's parts (demo grid, seeds 1-4, 80 windows)."""
DRAIN_STALL_S = 2.0
"""Under its own green, an approach whose queue has not fallen for this long (two telemetry
periods) has none left in the vehicle's lanes: what still stands waits for another
movement's green (a turn lane held red). Demo grid, ours, seeds 1-20: the one that yields
crawled at the slowest advised speed behind such a queue (6 left-turners, seed 14) and
reached the stop line 2-6 s after the last car ahead of it had gone, on 15 seeds; taken as
gone, the larger loss at the crossing fell 15.1 -> 13.4 s (SUMO, seeds 1-10, 18.5 -> 17.1 s)."""
CUT = "its window ran out before it arrived: the cross streets have their turn first"
PREEMPTED = "preempted"
"""The reason of a corridor cancelled to make room for a higher-priority one."""

TERMINAL = {
    CorridorState.COMPLETED,
    CorridorState.CANCELLED,
    CorridorState.TIMED_OUT,
    CorridorState.FAILED,
    CorridorState.REJECTED,
}


@dataclass(frozen=True, slots=True)
class SendPlan:
    intersection: str
    plan: SignalPlan


@dataclass(frozen=True, slots=True)
class PublishStatus:
    status: CorridorStatus


Action = SendPlan | PublishStatus


@dataclass(slots=True)
class Drain:
    """An approach's queue under the green of a window for a vehicle that yields there."""

    green_s: float
    """When its group was first seen green in the window."""
    queue_veh: float
    """The queue last seen."""
    fell_s: float
    """When it last fell (its green onset until it does)."""

    def stalled(self, now_s: float) -> bool:
        """No fall for ``DRAIN_STALL_S`` once the start-up lost time has run."""
        return now_s - max(self.fell_s, self.green_s + DEFAULT_LOST_TIME_S) >= DRAIN_STALL_S


@dataclass
class StopLine:
    """One intersection on a corridor's route: the movement it needs and its window."""

    intersection: str
    hop: int
    movement: int
    group: str
    eta_s: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0
    open_s: float = 0.0
    close_s: float = 0.0
    due: bool = False
    """Within the horizon at the last re-timing (reached, or its window open, by then): its
    window is planned from the controller's state and sent."""
    plan_id: str | None = None
    confirmed: bool = False
    released: bool = False
    passed_s: float | None = None
    pre_open_s: float = 0.0
    pre_close_s: float = 0.0
    """A window before another corridor's conflicting one here, flushing this line's queue
    ahead of time (``_pre_flush``); none when ``pre_close_s <= pre_open_s``."""
    platoon_veh: float = 0.0
    """Of the vehicles in its way, those flushed upstream ahead of the vehicle: they arrive
    with it, after any early window here."""
    flushed_veh: float = 0.0
    """Vehicles its window flushes ahead of the vehicle: the estimate before the window opened,
    kept (never lowered) while it flushes, since the queue it measures then is draining."""
    committed_s: float | None = None
    """The window's opening once the controller is changing for it (a plan carries it and it
    opens within ``SWITCH_ESTIMATE_S``): re-timing then moves its close, never its opening, so
    a vehicle running late finds the green held for it rather than a change that keeps being
    put off and is not finished when it arrives (``_hold``)."""
    resume_s: float = 0.0
    """After a window that ran out (``Settings.max_window_s``) before its vehicle came: when
    its next one can open, once the cross streets have had their turn."""
    yields: bool = False
    """Its window follows another corridor's conflicting one here, and still does once that
    one has passed: the vehicle is advised a speed for it (``_advise``). Cleared where it
    comes to lead while the other still has the intersection ahead: a leader slowed came late
    to its own window and held the other's red the longer."""
    handed_over: bool = False
    """Its open window went to another corridor's vehicle that gets here first
    (``CorridorManager._hands_over``): it keeps its place behind that one until its own next
    window opens."""
    drain: Drain | None = None
    """While its own window shows green: how its approach's queue falls (``_watch_drain``)."""
    forecast: tuple[float, float] | None = None
    """(when, ETA) of the forecast made about ``FORECAST_S`` before the vehicle got here: its
    error once the vehicle passes teaches the corridor how far its ETAs can be trusted."""


@dataclass(frozen=True, slots=True)
class _Sent:
    """The windows last sent to an intersection: (corridor, group, open, close) each."""

    plan_id: str
    windows: tuple[tuple[str, str, float, float], ...]


@dataclass
class Corridor:
    corridor_id: str
    vehicle: str
    priority: int
    requested_at: float
    destination_link: int
    state: CorridorState
    route: Route
    offset_m: float
    stop_lines: list[StopLine] = field(default_factory=list)
    last_position_s: float = 0.0
    depart_s: float = 0.0
    """When the vehicle leaves; windows are timed from it until it reports positions."""
    reason: str | None = None
    requester: str = ""
    """Who asked for it (the API's authenticated user)."""
    incident: str | None = None
    moved_at_s: float = 0.0
    """When the vehicle last moved on (a new link, or 5 m further on its link)."""
    mark: tuple[int, float] = (-1, 0.0)
    """Where it was then: (link, offset)."""
    stuck: bool = False
    """Stuck behind traffic its window cannot move: its windows are dropped until it moves."""
    turn_s: float = math.inf
    """Its place in the arbitration at the first intersection it shares with another live
    corridor: when it gets there (``_in_turn``)."""
    pace: float = 1.0
    """Its observed driving time over the graph's, averaged over ``PACE_MEMORY_S`` of driving
    (``_learn_pace``): the ETAs ahead are timed with it, so a vehicle that cannot keep to its
    speed (behind traffic that does not make way) gets its windows when it comes."""
    seen: tuple[int, float, float] | None = None
    """Its last reported position: (link, offset, time)."""
    first_position_s: float | None = None
    """When its first position came: its trip starts there (``CorridorImpact.trip_s``)."""
    advised_mps: float | None = None
    """The speed advised to its crew since the last re-timing (``_advise``); none: its own."""
    advised_s: float = -math.inf
    """When it was last advised a speed: a stop line it passes after a forecast made before
    then teaches no ETA error (it came when it was told to)."""
    reported_mps: float | None = None
    """The speed its last position reported (``_held``)."""
    spread_rate: float = LEAST_SPREAD_RATE
    """How its ETA's uncertainty grows with the time to go, learned from the error of the
    forecasts at the stop lines it passed (``_learn_spread``); the band's low edge sets how
    early a window opens."""
    reported_at: float = -math.inf
    """The time its last accepted position was taken (the vehicle's clock): a report not
    after it is a redelivery, a replay or late."""
    left_links: set[int] = field(default_factory=set)
    """Links it was seen on, or passed, and has left, and that its route does not run over
    again: a report on one is behind it."""


@dataclass(frozen=True, slots=True)
class Settings:
    horizon_s: float = 120.0
    min_change_s: float = 2.0
    lease_margin_s: float = 20.0
    margin_s: float = 3.0
    clear_after_s: float = 4.0
    position_timeout_s: float = 30.0
    max_corridors: int = 64
    max_lead_s: float = 30.0
    """How long before the vehicle comes, beyond what its queue needs, a window opens where
    the cross streets can afford it (``_lead``): traffic let onto the route just ahead of the
    vehicle, which drives faster than it, is caught up with and followed."""
    lead_budget_veh: float = 3.0
    """How many arriving cross-street vehicles a window's lead may hold at one intersection."""
    meeting_lead_budget_veh: float = 30.0
    """The same before an intersection the corridor shares with another live corridor: there
    the other's windows are timed on this vehicle's ETA, which holds only where it does not
    catch up with the traffic its own windows let go just ahead of it. Demo grid, two that
    cross, ours, seeds 1-20: both trips 290.1 / 272.3 / 268.4 s with 3 / 9 / 30, other
    traffic +29,690 / +39,123 / +41,673 veh-s against no priority. The trips gain, not the
    crossing: against each trip alone with the same lead its larger loss is 14.0 s at 30."""
    platoon_share: float = 0.7
    """Share of the vehicles flushed ahead of the ambulance at one stop line that continue to
    the next one (and so join the queue it must flush there): the through share."""
    takeover_lead_s: float = 0.0
    """Plans take over this long after they are made (``valid_from``), so that they reach the
    controller first and every party (edge, cabinet, the cloud's twin) takes over at the same
    instant. 0 where commands arrive at once (in-process); about the plan path's p99 over MQTT."""
    keep_ended: int = 1000
    """Ended corridors kept in memory (for late acks and listing); older ones are forgotten."""
    epoch: int = 0
    """This cloud process's epoch (``cloud/epoch.py``): its plans carry it, so they are newer
    than a previous process's, and its corridor ids name it, so they are never reused."""
    stuck_s: float = 120.0
    """A vehicle that has not moved for this long while the window ahead of it is green is
    stuck behind traffic the window cannot move (spillback beyond the signal): its windows
    are dropped, so that no green is held for a queue that cannot leave, until it moves."""
    max_window_s: float = 110.0
    """The longest green window sent, kept below the controllers' limit
    (``SafetyLimits.max_window_s``, 120 s) so that no plan is refused for it: the longest a
    window is held for a vehicle that is late. One that runs out before its vehicle comes
    closes; the cross streets have their turn, then the vehicle gets a new window."""
    speed_advice: bool = True
    """Advise the crew of a vehicle that yields to another corridor a speed that reaches its
    window as its queue has flushed, where it would otherwise stop in the queue
    (``CorridorStatus.advised_speed_mps``, ``CorridorManager._advise``)."""
    min_advised_mps: float = 5.0
    """The slowest speed advised: a hold that needs a slower one is partly waited out."""
    handover_s: float = 30.0
    """A window open at an intersection another corridor of the same priority shares, whose
    queue is flushed and whose vehicle is late, goes to the other's vehicle when that one
    gets there this much sooner (``_hands_over``): the holder's approach stays green until
    the other's window needs the switch, and the holder's window comes after it. Less than
    two clearances, the other's passage and a re-flush of the holder's queue would cost the
    holder its green."""
    max_lease_s: float = 300.0
    """The controllers' lease limit (``SafetyLimits.max_lease_s``): a plan whose windows lie
    further ahead takes over later, so that ``valid_until - valid_from`` stays within it (the
    controller runs its normal plan until then, which is what the plan would replay)."""
    max_plan_age_s: float = 30.0
    """The controllers' plan age limit (``SafetyLimits.max_plan_age_s``): the edge hands a plan
    to its cabinet just before it takes over, and the cabinet refuses one made longer ago, so
    a window that would need a later takeover (beyond a lease from now, with a long
    ``horizon_s``) is sent once it comes within reach (``_dispatch``)."""

    def __post_init__(self) -> None:
        check_number("horizon_s", self.horizon_s, gt=0.0, le=600.0)
        check_number("min_change_s", self.min_change_s, ge=0.0, le=60.0)
        check_number("lease_margin_s", self.lease_margin_s, gt=0.0, le=120.0)
        check_number("margin_s", self.margin_s, ge=0.0, le=30.0)
        check_number("clear_after_s", self.clear_after_s, gt=0.0, le=60.0)
        check_number("position_timeout_s", self.position_timeout_s, gt=0.0, le=600.0)
        check_number("platoon_share", self.platoon_share, ge=0.0, le=1.0)
        check_number("max_lead_s", self.max_lead_s, ge=0.0, le=120.0)
        check_number("lead_budget_veh", self.lead_budget_veh, ge=0.0, le=1000.0)
        check_number("meeting_lead_budget_veh", self.meeting_lead_budget_veh, ge=0.0, le=1000.0)
        check_number("takeover_lead_s", self.takeover_lead_s, ge=0.0, le=10.0)
        check_number("max_lease_s", self.max_lease_s, gt=0.0, le=900.0)
        check_number(
            "max_plan_age_s",
            self.max_plan_age_s,
            gt=self.takeover_lead_s + PLAN_AGE_SLACK_S,
            le=300.0,
        )
        check_number("stuck_s", self.stuck_s, gt=0.0, le=3600.0)
        check_number("max_window_s", self.max_window_s, gt=self.clear_after_s, le=300.0)
        check_number("min_advised_mps", self.min_advised_mps, gt=0.0, le=30.0)
        check_number("handover_s", self.handover_s, ge=10.0, le=600.0)
        check_count("keep_ended", self.keep_ended, ge=1, le=1_000_000)
        check_count("epoch", self.epoch, le=MAX_SEQ)
        if self.lease_margin_s + self.clear_after_s >= self.max_lease_s:
            raise ValidationError("max_lease_s", "leaves no room for a window")


SignalStates = Callable[[str, float], ControllerState]
"""The cloud's view of an intersection's controller state at a time (from telemetry)."""


class CorridorManager:
    def __init__(
        self,
        graph: CorridorGraph,
        router: Router,
        network_state: NetworkState,
        plans: Mapping[str, TimingPlan],
        signal_states: SignalStates,
        *,
        settings: Settings | None = None,
    ) -> None:
        self.graph = graph
        self.router = router
        self.network_state = network_state
        self.plans = plans
        self.signal_states = signal_states
        self.settings = settings or Settings()
        self.corridors: dict[str, Corridor] = {}
        """Live corridors and the last ``keep_ended`` that ended (the audit trail has all)."""
        self.by_vehicle: dict[str, str] = {}
        self._serving: dict[str, list[str]] = {}
        """Plan id -> the corridors whose windows it carries, for its acks."""
        self._plans_of: dict[str, list[str]] = {}
        """Corridor id -> every plan that carried its windows (to forget them with it)."""
        self._ended: deque[str] = deque()
        self.seq: dict[str, int] = {}
        self.sent: dict[str, _Sent] = {}
        self.deferred_until = math.inf
        """When the first window left out of its plan for being beyond a lease comes within
        reach (``_dispatch``): ``tick`` sends it then if no position has."""
        self.unconfirmed: set[str] = set()
        """Intersections whose edge did not acknowledge plans: planned around, sent nothing."""
        self._ids = itertools.count(1)
        self._id_epoch = f"{_base36(self.settings.epoch)}." if self.settings.epoch else ""
        self.nodes_out: dict[str, list[int]] = {}
        self.nodes_in: dict[str, list[int]] = {}
        network = network_state.network
        self.storage = np.array(
            [len(link.lanes) * link.length_m / JAM_SPACING_M for link in network.links]
        )
        self.red_share = np.zeros(len(graph.movement_ids))
        self.switch_s = np.zeros(len(graph.movement_ids))
        """Per movement: the assumed time to bring its group to green (``SWITCH_ESTIMATE_S``),
        0 at a junction without a light, where nothing switches: only its queue holds the
        vehicle there (``resco:ingolstadt21``'s corridor crosses 30 such junctions between its
        10 lights, each once an 8 s wait in its ETAs)."""
        for movement in range(len(graph.movement_ids)):
            node = graph.intersection_ids[graph.mv_intersection[movement]]
            plan = plans.get(node)
            self.switch_s[movement] = SWITCH_ESTIMATE_S if plan is not None else 0.0
            if plan is not None:
                green = sum(
                    g
                    for g, phase in zip(plan.greens_s, plan.phases, strict=True)
                    if graph.mv_group[movement] in phase.groups
                )
                self.red_share[movement] = 1.0 - green / plan.cycle_s
        for link in network.links:
            self.nodes_out.setdefault(link.from_node, []).append(graph.link_index[link.id])
            self.nodes_in.setdefault(link.to_node, []).append(graph.link_index[link.id])
        self.window_group = _window_groups(graph, plans)
        self.impact = ImpactMeter(
            links_into=self.nodes_in,
            cycles_s={node: plan.cycle_s for node, plan in plans.items()},
            link_count=len(network.links),
        )
        self._ready: MovementTimes | None = None
        """``_ready_estimate``'s per-movement times, made on first use."""

    # ---- requests -------------------------------------------------------------------------

    def request(
        self, request: CorridorRequest, now_s: float, *, start: tuple[str, float] | None = None
    ) -> list[Action]:
        """Grant a corridor or raise a typed error (nothing changes on an error). ``start``
        (link, offset) is where the vehicle is, for a request that names no origin."""
        if request.vehicle in self.by_vehicle:
            existing = self.corridors[self.by_vehicle[request.vehicle]]
            raise ValidationError(
                "vehicle", f"{request.vehicle} already has corridor {existing.corridor_id}"
            )
        depart = now_s if request.depart_at is None else request.depart_at
        if not now_s - 1.0 <= depart <= now_s + self.settings.horizon_s:
            raise ValidationError(
                "depart_at", f"must lie between now and the {self.settings.horizon_s:.0f} s horizon"
            )
        best, offset = self._route_for(request, start, depart, now_s)
        corridor_id = request.corridor_id or compose_id(
            f"C{self._id_epoch}{next(self._ids)}", request.vehicle
        )
        if corridor_id in self.corridors:
            raise ValidationError("corridor_id", f"{corridor_id} exists")
        corridor = Corridor(
            corridor_id,
            request.vehicle,
            request.priority,
            now_s,
            int(best.link_indices[-1]),
            CorridorState.GRANTED,
            best,
            offset,
            last_position_s=max(now_s, depart),
            depart_s=depart,
            moved_at_s=max(now_s, depart),
            requester=request.requester,
            incident=request.incident,
        )
        corridor.stop_lines = self._stop_lines(best)
        preempted = self._room_for(request.priority, corridor.stop_lines)
        self.corridors[corridor_id] = corridor
        self.by_vehicle[request.vehicle] = corridor_id
        self.impact.start(corridor_id)
        log.info(
            "corridor %s for %s: %d stop lines",
            corridor_id,
            request.vehicle,
            len(corridor.stop_lines),
        )
        for victim in preempted:
            self._end(victim, CorridorState.CANCELLED, now_s, PREEMPTED)
        statuses = [PublishStatus(self._status(victim, now_s)) for victim in preempted]
        return [*self._replan(now_s), *statuses]

    def _route_for(
        self,
        request: CorridorRequest,
        start: tuple[str, float] | None,
        depart: float,
        now_s: float,
    ) -> tuple[Route, float]:
        """Its route and its offset on the first link: one the requester fixed (the crew's
        own) timed along it, not searched between its ends (the vehicle would leave a route
        the cloud found faster, and meet its windows late); else the fastest."""
        if request.route:
            links = self._links_of_route(request.route)
            return self.router.retime(links, 0.0, depart, self._ready_estimate(now_s)), 0.0
        origins, destinations, offset = self._ends_of(request, start)
        return self._fastest(request, origins, destinations, offset, depart, now_s), offset

    def _ends_of(
        self, request: CorridorRequest, start: tuple[str, float] | None
    ) -> tuple[list[int], list[int], float]:
        """(the links it may start on, those it may end on, its offset on the first)."""
        offset = 0.0
        if request.origin is not None:
            origins = self._endpoints(request.origin, outgoing=True)
        elif start is not None:
            origins, offset = self._endpoints(start[0], outgoing=True), start[1]
        else:
            raise ValidationError("origin", "give an origin or the vehicle's position")
        if request.destination is None:
            raise ValidationError("destination", "give a destination or a route")
        return origins, self._endpoints(request.destination, outgoing=False), offset

    def _fastest(
        self,
        request: CorridorRequest,
        origins: list[int],
        destinations: list[int],
        offset: float,
        depart: float,
        now_s: float,
    ) -> Route:
        """The route arriving soonest from any origin to any destination."""
        ready = self._ready_estimate(now_s)
        best: Route | None = None
        for origin, destination in itertools.product(origins, destinations):
            try:
                candidate = self.router.route(
                    self.graph.link_ids[origin],
                    offset,
                    self.graph.link_ids[destination],
                    depart,
                    ready,
                )
            except UnreachableError:
                continue
            if best is None or candidate.arrival_s < best.arrival_s:
                best = candidate
        if best is None:
            place = request.origin or f"{request.vehicle}'s position"
            raise UnreachableError(
                "destination", f"no route from {place!r} to {request.destination!r}"
            )
        return best

    def _room_for(self, priority: int, lines: list[StopLine]) -> list[Corridor]:
        """The live corridors a request of ``priority`` with these stop lines pre-empts to
        fit: the table holds ``max_corridors``, an intersection's plan ``MAX_WINDOWS``
        windows. Only corridors of lower priority give way, the lowest and then the newest
        first, so a flood of lower-priority requests never locks out a genuine higher-priority
        one; when they are not enough, the request is refused (nothing has changed)."""
        live = self._live()  # highest priority first, then the earliest
        candidates = [c for c in reversed(live) if c.priority < priority]
        chosen: list[Corridor] = []
        if len(live) >= self.settings.max_corridors:
            if not candidates:
                raise ValidationError(
                    "corridor",
                    f"{len(live)} corridors are active, the limit, none below priority {priority}",
                )
            chosen.append(candidates[0])
        for node, count in Counter(line.intersection for line in lines).items():
            while _windows_at(node, live, chosen) + count > MAX_WINDOWS:
                victim = next((c for c in candidates if c not in chosen and _holds(c, node)), None)
                if victim is None:
                    held = _windows_at(node, live, chosen)
                    raise ValidationError(
                        "corridor", f"{node} holds {held} windows, as many as one plan can"
                    )
                chosen.append(victim)
        return chosen

    def _links_of_route(self, route: tuple[str, ...]) -> list[int]:
        """A fixed route given as intersections: the links joining consecutive ones."""
        if len(route) < 2:
            raise ValidationError("route", "a route names at least two intersections")
        links = []
        for index, (a, b) in enumerate(itertools.pairwise(route)):
            found = [i for i in self.nodes_out.get(a, []) if i in self.nodes_in.get(b, [])]
            if not found:
                raise ValidationError(f"route[{index}]", f"no road from {a!r} to {b!r}")
            links.append(found[0])
        for x, y in itertools.pairwise(links):
            self.graph.movement_between(x, y)
        return links

    def _endpoints(self, place: str, *, outgoing: bool) -> list[int]:
        """A link id stands for itself; an intersection id for its outgoing/incoming links."""
        if place in self.graph.link_index:
            return [self.graph.link_index[place]]
        table = self.nodes_out if outgoing else self.nodes_in
        if place not in table:
            role = "origin" if outgoing else "destination"
            raise ValidationError(role, f"unknown intersection or link {place!r}")
        return table[place]

    def _stop_lines(self, route: Route) -> list[StopLine]:
        lines = []
        for hop, movement in enumerate(route.moves):
            if movement < 0:
                break
            node = self.graph.intersection_ids[self.graph.mv_intersection[movement]]
            if node in self.plans:
                lines.append(StopLine(node, hop, int(movement), self.window_group[movement]))
        return lines

    # ---- events ---------------------------------------------------------------------------

    def on_position(self, position: VehiclePosition, now_s: float) -> list[Action]:
        corridor_id = self.by_vehicle.get(position.vehicle)
        if corridor_id is None:
            raise ValidationError("vehicle", f"no corridor for vehicle {position.vehicle!r}")
        corridor = self.corridors[corridor_id]
        link = self.graph.link_index.get(position.link)
        if link is None:
            raise ValidationError("link", f"unknown link {position.link!r}")
        if position.offset_m > self.graph.link_length[link] + 1.0:
            raise ValidationError("offset_m", f"beyond the end of {position.link}")
        self._check_plausible(corridor, position, link)
        links = list(corridor.route.link_indices)
        rerouted = None
        if link not in links:  # searched before anything changes: a refusal leaves it all
            try:
                rerouted = self._reroute(corridor, link, position.offset_m, now_s, keep=None)
            except UnreachableError:
                raise RefusedError(
                    "position_unreachable",
                    "link",
                    f"{corridor.vehicle}'s destination cannot be reached from {position.link}",
                ) from None
        self._left(corridor, link, links)
        corridor.reported_at = position.time
        corridor.last_position_s = now_s
        corridor.reported_mps = position.speed_mps
        if corridor.first_position_s is None:
            corridor.first_position_s = now_s
        self._learn_pace(corridor, link, position.offset_m, now_s)
        if corridor.state is CorridorState.GRANTED:
            corridor.state = CorridorState.ACTIVE
        if link != corridor.mark[0] or position.offset_m >= corridor.mark[1] + MOVED_M:
            corridor.mark, corridor.moved_at_s = (link, position.offset_m), now_s
        if rerouted is None:
            hop = links.index(link)
            for line in corridor.stop_lines:
                if line.hop < hop and not line.released:
                    line.passed_s = now_s
                    line.released = True
                    if line.forecast is None or corridor.advised_s < line.forecast[0]:
                        _learn_spread(corridor, line)  # not what it was told to do
                    if corridor.reason == CUT:
                        corridor.reason = None
            if hop == len(links) - 1 and position.offset_m >= self.graph.link_length[link] - 1.0:
                return self._finish(corridor, CorridorState.COMPLETED, now_s, None)
            corridor.route = self._reroute(corridor, link, position.offset_m, now_s, keep=hop)
        else:
            log.info("%s left its route at %s: re-routing", corridor.vehicle, position.link)
            for line in corridor.stop_lines:
                line.released = True
            corridor.route = rerouted
            corridor.stop_lines = self._stop_lines(corridor.route)
            # a way back round the block runs over links it left: they are ahead of it again
            corridor.left_links.difference_update(int(x) for x in rerouted.link_indices)
        corridor.offset_m = min(position.offset_m, float(self.graph.link_length[link]))
        return self._replan(now_s)

    def _check_plausible(self, corridor: Corridor, position: VehiclePosition, link: int) -> None:
        """Refuse, before it changes anything, a report no vehicle driving on makes: one not
        after the last (a QoS 1 redelivery, a replay, a late one), one on a link it has left
        (late, or map matching flipping between two links at a junction: each flip back had
        the corridor re-route and re-open its windows), or one further from the last than
        ``MAX_SPEED_MPS`` covers in the time between (a fix gone wrong: taken at its word it
        released every signal it jumped over, or ended the corridor)."""
        if position.time <= corridor.reported_at:
            raise RefusedError(
                "position_stale",
                "time",
                f"{position.time:.1f} is not after its last report ({corridor.reported_at:.1f})",
            )
        if link in corridor.left_links:
            raise RefusedError(
                "position_behind", "link", f"{corridor.vehicle} has left {position.link}"
            )
        if corridor.seen is None:
            return
        graph, (last, last_offset, _) = self.graph, corridor.seen
        ends = math.hypot(
            graph.link_x[link] - graph.link_x[last], graph.link_y[link] - graph.link_y[last]
        )
        apart = (
            ends - self._from_end_m(last, last_offset) - self._from_end_m(link, position.offset_m)
        )
        reach = MAX_SPEED_MPS * (position.time - corridor.reported_at) + FIX_ERROR_M
        if apart > reach:
            raise RefusedError(
                "position_jump",
                "link",
                f"{corridor.vehicle} at least {apart:.0f} m from its last report, "
                f"{position.time - corridor.reported_at:.1f} s before",
            )

    def _from_end_m(self, link: int, offset_m: float) -> float:
        """At most how far a point ``offset_m`` along ``link`` lies from the link's downstream
        node: what is left of the link, or of the straight line between its two nodes where
        that is longer (the junctions at its ends, which its length leaves out)."""
        graph = self.graph
        start, end = graph.link_from_node[link], graph.link_to_node[link]
        nodes = math.hypot(
            graph.node_x[end] - graph.node_x[start], graph.node_y[end] - graph.node_y[start]
        )
        return max(float(graph.link_length[link]), nodes) - offset_m

    @staticmethod
    def _left(corridor: Corridor, link: int, links: list[int]) -> None:
        """Note the links it has left on coming to ``link``: the one it was on, and on its
        route those it passed without a report."""
        if corridor.seen is not None and corridor.seen[0] != link:
            corridor.left_links.add(corridor.seen[0])
        if link in links:
            corridor.left_links.update(links[: links.index(link)])

    def _learn_pace(self, corridor: Corridor, link: int, offset_m: float, now_s: float) -> None:
        """Weigh the stretch driven since the last report into the vehicle's pace: its time
        over the graph's time for the same metres (on its route; waits left out)."""
        seen, corridor.seen = corridor.seen, (link, offset_m, now_s)
        if seen is None or now_s <= seen[2] or corridor.advised_mps is not None:
            return  # advised slower, or told to and not listening: neither is its pace
        planned = self._planned_s(corridor.route, seen[:2], (link, offset_m))
        taken = now_s - seen[2]
        if planned is None or planned <= 0.0 or taken > PACE_SLOWEST * planned:
            return
        weight = min(1.0, planned / PACE_MEMORY_S)
        pace = (1.0 - weight) * corridor.pace + weight * taken / planned
        corridor.pace = min(max(pace, MIN_PACE), MAX_PACE)

    def _planned_s(
        self, route: Route, start: tuple[int, float], end: tuple[int, float]
    ) -> float | None:
        """The graph's time from ``start`` to ``end`` (each a link and an offset) along
        ``route``, the junctions crossed included; None off the route, or where a report at
        a link's end may have been anywhere in the junction after it: SUMO's engine, like an
        AVL unit matched to the link it leaves, reports the link's end there."""
        graph = self.graph
        links = [int(x) for x in route.link_indices]
        first = links.index(start[0]) if start[0] in links else len(links)
        if end[0] not in links[first:]:
            return None
        last = links.index(end[0], first)
        for hop, offset in ((first, start[1]), (last, end[1])):
            inside = hop < len(links) - 1 and graph.mv_junction_s[route.moves[hop]] > 0.0
            if inside and offset >= float(graph.link_length[links[hop]]):
                return None
        planned = 0.0
        for hop in range(first, last + 1):
            here = links[hop]
            begin = start[1] if hop == first else 0.0
            until = end[1] if hop == last else float(graph.link_length[here])
            share = max(0.0, until - begin) / float(graph.link_length[here])
            planned += share * float(graph.link_time[here])
            if hop > first:  # it crossed the junction into ``here``
                planned += float(graph.mv_junction_s[route.moves[hop - 1]])
        return planned

    def _held(self, corridor: Corridor, link: int) -> HeldSpeed | None:
        """The speed its ETAs keep for ``SPEED_HELD_S`` after its last position on ``link``:
        the one it reported, where that is under its own speed there and over
        ``HELD_FLOOR`` of it; none while it is advised (its speed is what it was told, and
        its turn at a shared intersection is its arrival without being told)."""
        speed = corridor.reported_mps
        if speed is None or corridor.advised_mps is not None:
            return None
        own = _own_mps(
            corridor, float(self.graph.link_length[link]), float(self.graph.link_time[link])
        )
        if not HELD_FLOOR * own <= speed < own:
            return None
        return HeldSpeed(speed_mps=speed, until_s=corridor.last_position_s + SPEED_HELD_S)

    def _reroute(
        self, corridor: Corridor, link: int, offset_m: float, now_s: float, *, keep: int | None
    ) -> Route:
        """Re-time the rest of the route from the vehicle's position (re-route if it left it)."""
        offset = min(offset_m, float(self.graph.link_length[link]))
        destination = self.graph.link_ids[corridor.destination_link]
        ready = self._ready_estimate(now_s)
        if keep is None:
            return self.router.route(self.graph.link_ids[link], offset, destination, now_s, ready)
        rest = corridor.route.link_indices[keep:]
        held = self._held(corridor, link)
        route = self.router.retime(rest, offset, now_s, ready, pace=corridor.pace, held=held)
        for line in corridor.stop_lines:
            # stop lines behind the vehicle stay (hop -1) so the status keeps their arrival
            line.hop = line.hop - keep if line.hop >= keep else -1
        return route

    def on_ack(self, ack: PlanAck, now_s: float) -> list[Action]:
        """Mark the stop lines a plan served as confirmed (or not); one plan can serve several
        corridors crossing one intersection."""
        actions: list[Action] = []
        for corridor_id in self._serving.get(ack.plan_id, ()):
            corridor = self.corridors[corridor_id]
            lines = [
                line
                for line in corridor.stop_lines
                if line.plan_id == ack.plan_id and line.intersection == ack.intersection
            ]
            if not lines:
                continue
            confirmed = ack.status in (AckStatus.ACCEPTED, AckStatus.APPLIED)
            for line in lines:
                line.confirmed = confirmed
            if ack.status in (AckStatus.REJECTED, AckStatus.EXPIRED):
                log.warning(
                    "%s refused %s for %s: %s",
                    ack.intersection,
                    ack.plan_id,
                    corridor.corridor_id,
                    ack.reason,
                )
            actions.append(PublishStatus(self._status(corridor, now_s)))
        return actions

    def resend(self, intersection: str, now_s: float) -> list[Action]:
        """Send the intersection its windows again, as a new plan (a fresh ``seq``: the edge
        may have taken the first one and only its ack was lost)."""
        self.sent.pop(intersection, None)
        return self._dispatch(now_s)

    def set_confirmed(self, intersection: str, confirmed: bool, now_s: float) -> list[Action]:
        """Plan around an intersection whose edge does not answer (its normal plan decides
        when the vehicle passes, later windows follow), or take it back once it answers.
        What it was sent is released: its edge may have taken the plan and only its acks be
        lost, and the cloud now plans as if it ran its normal plan (before, it forgot the
        plan, so no release ever went there, even after the corridor ended)."""
        if confirmed == (intersection not in self.unconfirmed):
            return []
        if confirmed:
            self.unconfirmed.discard(intersection)
        else:
            log.warning("%s does not acknowledge plans: planning around it", intersection)
            self.unconfirmed.add(intersection)
        return self._replan(now_s)

    def cancel(
        self, corridor_id: str, now_s: float, *, reason: str = "cancelled by operator"
    ) -> list[Action]:
        return self._end_by_id(corridor_id, CorridorState.CANCELLED, now_s, reason)

    def fail(self, corridor_id: str, now_s: float, *, reason: str) -> list[Action]:
        """End a corridor whose vehicle can no longer drive it (the simulator teleported or
        removed it, say): its lights go back to their plans, its status says why."""
        return self._end_by_id(corridor_id, CorridorState.FAILED, now_s, reason)

    def _end_by_id(
        self, corridor_id: str, state: CorridorState, now_s: float, reason: str
    ) -> list[Action]:
        """End a live corridor from outside (nothing for one already ended)."""
        corridor = self.corridors.get(corridor_id)
        if corridor is None:
            raise ValidationError("corridor_id", f"unknown corridor {corridor_id!r}")
        if corridor.state in TERMINAL:
            return []
        return self._finish(corridor, state, now_s, reason)

    def tick(self, now_s: float) -> list[Action]:
        """Time out corridors whose vehicle went silent; re-time when a window not planned yet
        comes within the horizon (positions re-time, but a vehicle in its turnout may not
        report any yet); measure the corridors' impact."""
        actions = self.measure(now_s)
        for corridor in list(self.corridors.values()):
            if corridor.state in TERMINAL:
                continue
            if now_s - corridor.last_position_s > self.settings.position_timeout_s:
                actions += self._finish(
                    corridor, CorridorState.TIMED_OUT, now_s, "no position reports"
                )
        horizon = now_s + self.settings.horizon_s
        if any(
            not line.due and line.open_s < line.close_s and line.open_s <= horizon
            for corridor in self._live()
            for line in _ahead(corridor)
        ):
            actions += self._replan(now_s)
        elif now_s >= self.deferred_until:
            actions += self._dispatch(now_s)
        return actions

    def measure(self, now_s: float) -> list[Action]:
        """Take the queues seen now into every corridor's impact (``cloud/impact.py``) and into
        how the queue drains ahead of a vehicle that yields (``_watch_drain``): the final
        status of each corridor whose intersections have all recovered since it ended."""
        settled = []
        if self.impact.due(now_s):
            settled = self.impact.observe(self.network_state.queues(now_s).queue_veh, now_s)
        for corridor in self._live():
            for line in corridor.stop_lines:
                opened = _window_open(line, now_s)
                if opened and not self.impact.measures(corridor.corridor_id, line.intersection):
                    approach = np.array([self.graph.mv_from[line.movement]], dtype=np.int64)
                    arrivals = self.network_state.inflow_veh_per_s(now_s, links=approach)
                    self.impact.opened(
                        corridor.corridor_id,
                        line.intersection,
                        int(approach[0]),
                        float(arrivals[0]),
                        now_s,
                    )
                if line.passed_s is not None:
                    self.impact.passed(corridor.corridor_id, line.intersection, line.passed_s)
            held = {line.intersection for line in corridor.stop_lines if not line.released}
            self.impact.held_only(corridor.corridor_id, held, now_s)
            for line in _ahead(corridor):
                self._watch_drain(line, now_s)
        return [
            PublishStatus(self._status(self.corridors[c], now_s))
            for c in settled
            if c in self.corridors
        ]

    def _watch_drain(self, line: StopLine, now_s: float) -> None:
        """Follow the queue at a stop line where the vehicle yields, while its own window
        shows green: the queue that stops falling then is not in the vehicle's way
        (``_ready_at``)."""
        own = line.yields and line.plan_id is not None and line.open_s <= now_s < line.close_s
        state = self.signal_states(line.intersection, now_s) if own else None
        if state is None or state.groups[line.group].indication is not Indication.GREEN:
            line.drain = None
            return
        queue = self._approach_now(line, now_s)[0]
        if line.drain is None:
            line.drain = Drain(green_s=now_s, queue_veh=queue, fell_s=now_s)
            return
        if queue < line.drain.queue_veh:
            line.drain.fell_s = now_s
        line.drain.queue_veh = queue

    def _trip(self, corridor: Corridor, now_s: float) -> tuple[float, float] | None:
        """(trip, the same trip through the normal plans) of a vehicle at its destination."""
        start = corridor.first_position_s
        if start is None:
            return None
        inflow = self.network_state.inflow_veh_per_s(now_s)
        passed = sorted(
            (line for line in corridor.stop_lines if line.passed_s is not None),
            key=lambda line: line.passed_s or 0.0,
        )
        legs = []
        for line in passed:
            approach = int(self.graph.mv_from[line.movement])
            seen = self.impact.approach_at(corridor.corridor_id, line.intersection)
            arrivals, level = seen or (float(inflow[approach]), self.impact.level_of(approach))
            legs.append(
                Leg(
                    passed_s=line.passed_s or 0.0,
                    plan=self.plans[line.intersection],
                    group=self.graph.mv_group[line.movement],
                    arrivals_veh_per_s=arrivals,
                    queue_level_veh=level,
                    discharge_s_per_veh=float(self.network_state.discharge_s_per_veh[approach]),
                )
            )
        # a clock that stepped back since the first position: no trip to speak of
        end = max(now_s, start)
        return end - start, normal_trip_s(start, end, legs)

    # ---- planning -------------------------------------------------------------------------

    def _ready_estimate(self, now_s: float) -> MovementTimes:
        """When each movement's queue can be gone, seen from ``now_s``: a switch to green
        (``switch_s``) plus its flush. Kept per movement and updated where queues changed
        (``take_changed``), so a route query takes it as checked instead of checking every
        movement each time."""
        state = self.network_state
        changed = state.take_changed(now_s)
        if self._ready is None:
            flush = state.flush_time_s(now_s)[self.graph.mv_from]
            self._ready = MovementTimes.ready(self.graph, self.switch_s + flush)
        elif changed.size:
            movements, owner = self.graph.movements_leaving(changed)
            flush = state.flush_time_s(now_s, links=changed)
            self._ready.update(movements, self.switch_s[movements] + flush[owner])
        return self._ready.at(now_s)

    def _replan(self, now_s: float) -> list[Action]:
        """Re-time every live corridor, highest priority (then earliest request) first, each
        fitting its windows around the reservations of those before it; then send each
        intersection whose windows changed one plan holding all of them."""
        statuses: list[Action] = []
        reservations: list[tuple[str, str, float, float]] = []
        live = self._live()
        holders = self._holders(live)
        for corridor in self._in_turn(live, holders, now_s):
            self._check_stuck(corridor, now_s)  # against the windows it was given
            self._time_windows(corridor, now_s, reservations, holders)
            corridor.advised_mps = self._advise(corridor, now_s)
            if corridor.advised_mps is not None:
                corridor.advised_s = now_s
            for line in corridor.stop_lines:  # a stuck one's are not sent: nothing to keep
                if not line.released and not corridor.stuck:
                    reservations += [(line.intersection, line.group, a, b) for a, b in _spans(line)]
            statuses.append(PublishStatus(self._status(corridor, now_s)))
        return [*self._dispatch(now_s), *statuses]

    def _holders(self, live: list[Corridor]) -> Counter[str]:
        """Per intersection, how many different phases the live corridors still to pass it
        need there (``TimingPlan.window_groups``): shared (taken in turn, without a lead)
        where more than one. Vehicles on opposing throughs need the same one: counted as
        two, every intersection two ambulances meeting on a street both pass lost its lead
        and took turns (10 of 10 on a grid row)."""
        needs: dict[str, dict[frozenset[str] | None, set[str]]] = {}
        for corridor in live:
            for line in _ahead(corridor):
                phase = self.plans[line.intersection].window_groups(line.group)
                by_phase = needs.setdefault(line.intersection, {})
                by_phase.setdefault(phase, set()).add(corridor.corridor_id)
        return Counter(
            {
                # one corridor passing twice takes no turn with itself
                node: len(by_phase) if len(set().union(*by_phase.values())) > 1 else 1
                for node, by_phase in needs.items()
            }
        )

    def _check_stuck(self, corridor: Corridor, now_s: float) -> None:
        """Drop the windows of a vehicle that does not move while the one ahead is green (the
        traffic ahead has nowhere to go), and take them up again once it moves; said in the
        corridor's reason."""
        ahead = next(iter(_ahead(corridor)), None)
        green_ahead = (
            ahead is not None
            and ahead.open_s < ahead.close_s
            and ahead.open_s <= now_s
            # the controller's display, not the window: another corridor's may come first
            and self.signal_states(ahead.intersection, now_s).groups[ahead.group].indication
            is Indication.GREEN
        )
        idle = now_s - corridor.moved_at_s
        stuck = corridor.stuck or green_ahead
        stuck = stuck and idle >= self.settings.stuck_s and now_s >= corridor.depart_s
        if stuck and not corridor.stuck:
            log.warning(
                "%s: %s has not moved for %.0f s with its window green: windows dropped",
                corridor.corridor_id,
                corridor.vehicle,
                idle,
            )
            corridor.reason = STUCK
        elif corridor.stuck and not stuck:
            corridor.reason = None
        corridor.stuck = stuck

    def _live(self) -> list[Corridor]:
        live = [c for c in self.corridors.values() if c.state not in TERMINAL]
        return sorted(live, key=lambda c: (-c.priority, c.requested_at))

    def _in_turn(self, live: list[Corridor], holders: Counter[str], now_s: float) -> list[Corridor]:
        """Live corridors in the order their windows are fitted: priority first, then whose
        window must open first at the intersection they share (its route's arrival there,
        without waiting for the other, less the flush its queue needs: the one whose window
        is open keeps it unless it hands it over, ``_hands_over``), then the earlier
        request. That moves the order only when it drifts by ``ARBITRATION_MARGIN_S``, so two
        vehicles due together do not swap at every position report.

        By window rather than by arrival: the longer queue flushes first, and the shorter
        window after it leaves the other approach less to pile up (demo grid, seeds 1-20:
        the second to cross lost 16.4 s at the crossing by arrival, 12.0 s by window)."""
        shared = {
            c.corridor_id: next((ln for ln in _ahead(c) if holders[ln.intersection] > 1), None)
            for c in live
        }
        for corridor in live:
            line = shared[corridor.corridor_id]
            if line is None:
                corridor.turn_s = math.inf
            elif line.plan_id is not None and line.open_s <= now_s < line.close_s:
                if self._hands_over(corridor, line, live, shared, now_s):
                    _hand_over(corridor, line)
                    corridor.turn_s = float(corridor.route.line_s[line.hop])
                else:
                    line.handed_over = False
                    corridor.turn_s = -math.inf
            elif _changing_for(line, now_s) and self._hands_over(
                corridor, line, live, shared, now_s
            ):  # as an open one: else ``_hold`` keeps it and squeezes the other in after it
                _hand_over(corridor, line)
                corridor.turn_s = float(corridor.route.line_s[line.hop])
            elif line.handed_over:
                corridor.turn_s = float(corridor.route.line_s[line.hop])
            else:
                opens = float(corridor.route.line_s[line.hop]) - self._flush_s(corridor, line)
                if not abs(opens - corridor.turn_s) <= ARBITRATION_MARGIN_S:
                    corridor.turn_s = opens
        return sorted(live, key=lambda c: (-c.priority, c.turn_s, c.requested_at))

    def _hands_over(
        self,
        holder: Corridor,
        line: StopLine,
        live: list[Corridor],
        shared: dict[str, StopLine | None],
        now_s: float,
    ) -> bool:
        """Whether ``line``'s open window should go to another corridor's vehicle (one not
        stuck, whose movement conflicts with it) that gets there first: one of higher
        priority whenever it does (it is fitted first, and the holder's committed window
        would otherwise keep it waiting); one of the same priority only where the holder is
        late, its queue flushed (what the window was opened early for) and still no sooner
        there than ``handover_s`` after the other, so that the switch and back costs it
        nothing. Arrivals are the routes' own, without waiting for each other."""
        signals = self.plans[line.intersection].signals
        arrival = float(holder.route.line_s[line.hop])
        flushed = now_s >= line.open_s + self._flush_s(holder, line)
        for other in live:
            theirs = shared[other.corridor_id]
            if (
                other is holder
                or other.stuck
                or theirs is None
                or theirs.intersection != line.intersection
                or not signals.conflict(theirs.group, line.group)
            ):
                continue
            comes = float(other.route.line_s[theirs.hop])
            if other.priority > holder.priority and comes < arrival:
                return True
            if (
                other.priority == holder.priority
                and flushed
                and comes + self.settings.handover_s < arrival
            ):
                return True
        return False

    def _flush_s(self, corridor: Corridor, line: StopLine) -> float:
        """The green ``line``'s window needs before the vehicle: what it flushes ahead of it,
        as last estimated (``_flush_along``)."""
        link = int(corridor.route.link_indices[line.hop])
        return _green_to_flush(
            line.flushed_veh, float(self.network_state.discharge_s_per_veh[link])
        )

    def _time_windows(
        self,
        corridor: Corridor,
        now_s: float,
        reservations: list[tuple[str, str, float, float]],
        holders: Counter[str],
    ) -> None:
        flush = self._flush_along(corridor, now_s)
        route = corridor.route
        earliest = now_s + self.switch_s[route.moves[: flush.shape[0]]]
        open_lines = _ahead(corridor)
        lead = self._lead(corridor, flush.shape[0], now_s, holders)
        lead = np.maximum(lead, self.settings.margin_s)
        # within the horizon: stop lines the vehicle reaches, or whose window opens, by then
        opens = route.line_s[: flush.shape[0]] - flush - lead
        for line in open_lines:
            known = line.open_s if line.close_s > line.open_s else math.inf
            line.due = min(float(opens[line.hop]), known) - now_s <= self.settings.horizon_s
            if not line.due:
                continue
            plan = self.plans[line.intersection]
            self._commit(corridor, line, plan, now_s)
            if line.intersection in self.unconfirmed:
                # no plan reaches it: the vehicle passes when its normal plan serves the group
                due = float(route.line_s[line.hop]) - float(flush[line.hop])
                earliest[line.hop] = _normal_green_from(plan, line.group, max(now_s, due))
                continue
            state = self.signal_states(line.intersection, now_s)
            try:
                move = plan_green_window(plan, state, line.group, now_s, now_s + 1.0)
                earliest[line.hop] = max(now_s, move.green_from_s)
            except ValidationError as error:
                log.warning("%s: cannot time a window: %s", line.intersection, error)
            earliest[line.hop] = max(float(earliest[line.hop]), line.resume_s)
            green_from = float(earliest[line.hop])
            first = self._fit_around(line, plan, float(route.line_s[line.hop]), earliest,
                                     reservations, now_s)  # fmt: skip
            # it leads where it follows no one while another vehicle still comes
            line.yields = first is not None or (line.yields and holders[line.intersection] < 2)
            self._pre_flush(line, plan, green_from, first, earliest, flush, now_s)
            if line.committed_s is not None and line.committed_s <= now_s:
                earliest[line.hop] = line.committed_s  # what is left to flush counts from there
        windows = self.router.windows(
            route, flush, earliest, max(now_s, corridor.depart_s),
            margin_s=self.settings.margin_s, clear_after_s=self.settings.clear_after_s,
            sigma_rate=corridor.spread_rate, pace=corridor.pace,
            held=self._held(corridor, int(route.link_indices[0])),
        )  # fmt: skip
        beyond_margin = lead - self.settings.margin_s
        for line in open_lines:
            i = line.hop
            line.eta_s, line.low_s, line.high_s = (
                float(windows.eta[i]),
                float(windows.low[i]),
                float(windows.high[i]),
            )
            # open early enough for the band's early edge, its queue flushed by then
            early = line.low_s - float(flush[i])
            opening = min(float(windows.open[i]), early) - float(beyond_margin[i])
            line.open_s = max(opening, float(earliest[i]))
            line.close_s = float(windows.close[i])
            self._hold(line)
            if line.forecast is None and line.eta_s - now_s <= FORECAST_S:
                line.forecast = (now_s, line.eta_s)

    def _advise(self, corridor: Corridor, now_s: float) -> float | None:
        """Where the vehicle yields to another corridor at one of the next two stop lines:
        the fastest speed at which it gets there no sooner than its queue there is flushed
        (``_ready_at``). Slowed upstream, it passes at speed where it would have stopped in
        the queue. At the second of them only by what the last link cannot take at the
        slowest advised speed: its pass at the first is advised no sooner than that.

        Only where it yields, and only the next two stop lines: advice at every held stop
        line (a controller's change, a queue's flush) cost each trip 4-6 s in the demo grid,
        seeds 1-20 (the flush estimates it aims at err late: it is slowed for more than it
        would have waited); a hold further on is less certain, and slowing for one that then
        shrinks loses what it need not. None before the vehicle's first position, while it
        is stuck, or where its own speed reaches no stop line more than
        ``ADVICE_MIN_HOLD_S`` early."""
        if not self.settings.speed_advice or corridor.seen is None or corridor.stuck:
            return None
        # counted from where it was last seen: another vehicle's report re-times this one
        # between its own reports, and must not find it further away than it is
        seen_s = corridor.seen[2]
        ahead = _ahead(corridor)[:2]
        yields = [line.due and line.yields and line.close_s > line.open_s for line in ahead]
        targets = []  # (stop line, when to get there at the soonest)
        if ahead and yields[0]:
            targets.append((ahead[0], self._advised_at(ahead[0], now_s)))
        if len(ahead) == 2 and yields[1]:
            metres, _ = self._hops(corridor.route, ahead[0].hop + 1, ahead[1].hop + 1)
            slowest = float(np.sum(metres)) / self.settings.min_advised_mps
            targets.append((ahead[0], self._advised_at(ahead[1], now_s) - slowest))
        speeds = [self._speed_to(corridor, line, at - seen_s) for line, at in targets]
        return min((speed for speed in speeds if speed is not None), default=None)

    def _advised_at(self, line: StopLine, now_s: float) -> float:
        """When to get to ``line`` at the soonest: its queue gone (``_ready_at``), with part
        of the early side of the vehicle's ETA band after it, so that it seldom comes too
        soon."""
        early_side = max(0.0, line.eta_s - line.low_s)
        return self._ready_at(line, now_s) + ADVICE_BAND_SHARE * early_side

    def _ready_at(self, line: StopLine, now_s: float) -> float:
        """When the queue ahead of the vehicle at ``line`` has gone, from what its approach
        measures: the queue standing now (less what a window ahead of time serves), what
        arrives until its window opens, and the part of the platoon carried from upstream
        that gets there first, leaving at saturation flow from the opening; once open, what
        still stands, from its green on; now, once that has stopped falling under its green
        (``Drain.stalled``: it waits for another movement).

        Not the flush its window is timed with: that one must err long, so that the vehicle
        never meets a red, and advice aimed at it slowed the vehicle more than it would have
        waited (demo grid, seeds 1-40: aimed at it, with all the band, the second to cross
        lost 18.0 s at the crossing and neither stopped there on 92.5 % of seeds; aimed at
        this, with half the band, 16.8 s and 95 %)."""
        standing, inflow, per_veh = self._approach_now(line, now_s)
        if now_s >= line.open_s:
            drain = line.drain
            if standing <= 0.0 or (drain is not None and drain.stalled(now_s)):
                return now_s
            green = drain.green_s if drain is not None else line.open_s
            return max(now_s, green + DEFAULT_LOST_TIME_S) + standing * per_veh
        since = now_s
        if line.pre_close_s > max(line.pre_open_s, now_s):  # flushed ahead of time first
            served = (
                line.pre_close_s - max(now_s, line.pre_open_s + DEFAULT_LOST_TIME_S)
            ) / per_veh
            standing = max(0.0, standing + inflow * (line.pre_close_s - now_s) - max(0.0, served))
            since = line.pre_close_s
        arriving = inflow * max(0.0, line.open_s - since)
        ahead = standing + arriving + PLATOON_AHEAD_SHARE * line.platoon_veh
        return line.open_s + _green_to_flush(ahead, per_veh)

    def _approach_now(self, line: StopLine, now_s: float) -> tuple[float, float, float]:
        """What ``line``'s approach measures now: its queue (vehicles), its arrival rate
        (vehicles a second) and the seconds a vehicle takes to leave at saturation flow."""
        link = int(self.graph.mv_from[line.movement])
        links = np.array([link], dtype=np.int64)
        state = self.network_state
        return (
            float(state.queues(now_s, links=links).queue_veh[0]),
            float(state.inflow_veh_per_s(now_s, links=links)[0]),
            float(state.discharge_s_per_veh[link]),
        )

    def _hops(self, route: Route, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Per hop of ``route`` from ``start`` up to ``stop``: the metres and the graph's
        seconds of its link and of the junction into it (none into the route's first link,
        which the vehicle is on)."""
        links = route.link_indices[start:stop]
        metres = self.graph.link_length[links].astype(np.float64)
        seconds = self.graph.link_time[links].astype(np.float64)
        first = max(start, 1)  # hops entered through a junction on this route
        moves = route.moves[first - 1 : stop - 1]
        metres[first - start :] += self.graph.mv_junction_m[moves]
        seconds[first - start :] += self.graph.mv_junction_s[moves]
        return metres, seconds

    def _speed_to(self, corridor: Corridor, line: StopLine, due: float) -> float | None:
        """The fastest speed (at least ``min_advised_mps``) that takes ``due`` seconds or
        more from the vehicle's last reported position to ``line``; None where its own speed
        does, within a second."""
        metres, seconds = self._hops(corridor.route, 0, line.hop + 1)
        own = _own_mps(corridor, metres, seconds)
        metres[0] = max(0.0, metres[0] - corridor.offset_m)  # left to drive on each link
        if float(np.sum(metres / own)) > due - ADVICE_MIN_HOLD_S:
            return None

        def early(speed: float) -> bool:
            return float(np.sum(metres / np.minimum(own, speed))) < due

        least = self.settings.min_advised_mps
        slow, fast = least, min(float(own.max()), MAX_SPEED_MPS)
        if early(slow):
            return slow
        while fast - slow > 0.05:
            middle = 0.5 * (slow + fast)
            slow, fast = (middle, fast) if not early(middle) else (slow, middle)
        return max(round(slow, 1), least)

    def _lead(
        self, corridor: Corridor, count: int, now_s: float, holders: Counter[str]
    ) -> np.ndarray:
        """Per stop line, how long before the vehicle the traffic let onto its route there
        should have left: ``max_lead_s`` while the cross streets can afford it (the arrivals
        it holds there, from live telemetry, stay within ``lead_budget_veh``, or within
        ``meeting_lead_budget_veh`` before an intersection another corridor crosses), none
        where their flow is not known, where another corridor's vehicle comes too, or where
        the vehicle is no faster than traffic.

        At 1.3x the speed limit the vehicle catches up before its destination with whatever
        leaves less than 0.3 of its remaining trip ahead of it: more than 30 s over any trip
        of 100 s. Tapered to the trip left as the vehicle advances, as traffic at the limit
        would allow, the lead lost 3 s on Ingolstadt, tapered per stop line to the route after
        it 11 s: the traffic ahead seldom keeps to the limit through junctions.
        """
        lead = np.zeros(count)
        if self.graph.emergency_speed_factor <= 1.0:
            return lead
        links = corridor.route.link_indices
        settings = self.settings
        ahead = _ahead(corridor)
        shared = {line.hop for line in ahead if holders[line.intersection] > 1}
        last_shared = max(shared, default=-1)
        for line in ahead:
            if line.hop in shared:
                continue  # the lead would come out of the other vehicle's turn there
            meets = line.hop < last_shared  # another's windows are timed on its ETA further on
            budget = settings.meeting_lead_budget_veh if meets else settings.lead_budget_veh
            approach = int(links[line.hop])
            cross = np.array(
                [link for link in self.nodes_in[line.intersection] if link != approach], np.int64
            )
            if not bool(np.all(self.network_state.live(now_s, links=cross))):
                continue
            arrivals = float(np.sum(self.network_state.inflow_veh_per_s(now_s, links=cross)))
            affordable = budget / arrivals if arrivals > 0.0 else math.inf
            lead[line.hop] = min(settings.max_lead_s, affordable)
        return lead

    def _commit(self, corridor: Corridor, line: StopLine, plan: TimingPlan, now_s: float) -> None:
        """Pin the opening of a window the controller is already changing for (``_hold``);
        end one that ran out before its vehicle came: the cross streets have their turn
        (the normal plan's red for the vehicle's group), then the vehicle a new window."""
        sent = line.plan_id is not None and line.close_s > line.open_s and not corridor.stuck
        if line.committed_s is None:
            if sent and line.open_s - now_s <= SWITCH_ESTIMATE_S:
                line.committed_s = line.open_s
            return
        if not sent:
            line.committed_s = None
        elif now_s >= line.committed_s + self.settings.max_window_s:
            line.committed_s = None
            turn = float(self.red_share[line.movement]) * plan.cycle_s
            line.resume_s = now_s + max(turn, plan.signals.intergreen_s({line.group}))
            corridor.reason = corridor.reason or CUT
            log.warning(
                "%s: %s's window at %s ran out before it came: next one from %.0f",
                corridor.corridor_id,
                corridor.vehicle,
                line.intersection,
                line.resume_s,
            )

    def _hold(self, line: StopLine) -> None:
        """A committed window keeps its opening and is held, its close following the vehicle,
        for at most ``max_window_s``; one not yet committed opens no earlier than that before
        its close."""
        longest = self.settings.max_window_s
        if line.committed_s is not None:
            line.open_s = line.committed_s
            line.close_s = min(line.close_s, line.committed_s + longest)
        else:
            line.open_s = max(line.open_s, line.close_s - longest)

    def _fit_around(
        self,
        line: StopLine,
        plan: TimingPlan,
        line_s: float,
        earliest: np.ndarray,
        reservations: list[tuple[str, str, float, float]],
        now_s: float,
    ) -> float | None:
        """Push the line's earliest opening (``earliest``, per stop line of the route) past
        the windows reserved before it at its intersection (served in turn, a conflicting one
        after its clearance; one its phase shows too, an opposing through, is the same green
        and holds nothing back); a pushed window can run into the next reservation, so a few
        passes. Returns when the first conflicting window it waits for opens (None: it waits
        for none)."""
        first: float | None = None
        for _ in range(3):
            arrival = max(line_s, float(earliest[line.hop]))
            for node, group, opened, closed in reservations:
                if node != line.intersection or closed <= now_s:
                    continue
                if group == line.group or plan.served_together(group, line.group):
                    continue
                if opened <= arrival + self.settings.clear_after_s:
                    conflicting = plan.signals.conflict(group, line.group)
                    clearance = plan.signals.intergreen_s({group}) if conflicting else 0.0
                    ends = max(closed, opened + _min_green_s(plan, group))
                    earliest[line.hop] = max(earliest[line.hop], ends + clearance)
                    if conflicting:
                        first = opened if first is None else min(first, opened)
        return first

    def _pre_flush(
        self,
        line: StopLine,
        plan: TimingPlan,
        green_from: float,
        first: float | None,
        earliest: np.ndarray,
        flush: np.ndarray,
        now_s: float,
    ) -> None:
        """A vehicle whose window must follow another corridor's conflicting one gets its
        queue flushed before that window too, where there is time: then only what arrives
        while the other vehicle passes stands between it and the stop line (a crossing's
        second vehicle would otherwise wait behind a whole cycle's queue). ``flush`` (per stop
        line of the route) then holds what is left to flush when its own window opens."""
        line.pre_open_s = line.pre_close_s = 0.0
        if first is None:
            return
        queue, inflow, per_veh = self._approach_now(line, now_s)
        close = first - plan.signals.intergreen_s({line.group})
        standing = queue + inflow * max(0.0, close - now_s)
        opening = max(green_from, close - DEFAULT_LOST_TIME_S - standing * per_veh)
        # no longer than an own window may be: an edge refuses a plan with a longer one
        opening = max(opening, close - self.settings.max_window_s)
        if close - opening < PRE_FLUSH_MIN_S:
            return
        line.pre_open_s, line.pre_close_s = opening, close
        # left when its own window opens: what the early window could not serve, what
        # arrives after it, and the platoon flushed upstream ahead of the vehicle
        served = (close - opening - DEFAULT_LOST_TIME_S) / per_veh
        arrival = max(float(earliest[line.hop]), line.eta_s)
        left = max(0.0, standing - served) + inflow * max(0.0, arrival - close) + line.platoon_veh
        remaining = DEFAULT_LOST_TIME_S + left * per_veh if left > 0.0 else 0.0
        flush[line.hop] = min(float(flush[line.hop]), remaining)

    def _flush_along(self, corridor: Corridor, now_s: float) -> np.ndarray:
        """Per stop line of the route (its links but the last), the green needed before the
        vehicle arrives: its queue, plus the vehicles a window upstream flushes ahead of the
        vehicle that continue to this stop line (they arrive before it, so they are in its way
        too). On the link the vehicle drives on, those are the platoon the stop line it passed
        last flushed, as far as it is still driving and gets there before the vehicle (the rest
        is in the measured queue already, or behind the vehicle)."""
        state = self.network_state
        route = corridor.route
        count = route.moves.shape[0] - 1
        links = route.link_indices[:count].astype(np.int64)
        queues = state.queues(now_s, links=links).queue_veh
        inflow = state.inflow_veh_per_s(now_s, links=links)
        flush = np.zeros(count)
        lines = {line.hop: line for line in _ahead(corridor)}
        ahead = 0.0
        for hop in range(count):
            movement, link = int(route.moves[hop]), int(links[hop])
            # the queue when the vehicle gets there: it grows with arrivals while its movement
            # is red (the normal plan's red share), up to what the link can store
            until = max(0.0, float(route.line_s[hop]) - now_s)
            grown = queues[hop] + inflow[hop] * until * self.red_share[movement]
            carried = self.settings.platoon_share * ahead
            if hop == 0:
                carried += self._platoon_ahead(corridor, now_s)
            expected = min(float(grown), float(self.storage[link]))
            ahead = expected + carried
            flush[hop] = _green_to_flush(ahead, float(state.discharge_s_per_veh[link]))
            line = lines.get(hop)
            if line is not None:
                line.platoon_veh = carried
                # once its window opens the queue measured drains: what it flushes ahead of
                # the vehicle is what was there, not what is left
                opened = line.close_s > line.open_s and now_s >= line.open_s
                line.flushed_veh = max(line.flushed_veh, ahead) if opened else ahead
                ahead = line.flushed_veh
        return flush

    def _platoon_ahead(self, corridor: Corridor, now_s: float) -> float:
        """Vehicles the window at the stop line the vehicle passed last flushed ahead of it
        that continue onto its link and are still driving to the next stop line, where they
        get before the vehicle: it drives faster than they do and catches up with them.

        They left that stop line at saturation headway just before the vehicle (the window is
        timed to end its flush then) and drive the link at its speed limit.
        """
        route = corridor.route
        link = int(route.link_indices[0])
        graph = self.graph
        passed = [
            line
            for line in corridor.stop_lines
            if line.passed_s is not None and int(graph.mv_to[line.movement]) == link
        ]
        if not passed:
            return 0.0
        line = max(passed, key=lambda x: float(x.passed_s or 0.0))
        share = self.settings.platoon_share
        if line.passed_s is None or line.flushed_veh <= 0.0 or share <= 0.0:
            return 0.0
        source = int(graph.mv_from[line.movement])
        spread = max(line.flushed_veh * float(self.network_state.discharge_s_per_veh[source]), 1.0)
        crossing = float(graph.mv_junction_s[line.movement]) + float(graph.link_time[link])
        travel = crossing * graph.emergency_speed_factor
        first = line.passed_s - spread + travel
        low = max(first, now_s)
        high = min(line.passed_s + travel, float(route.line_s[0]))
        if high <= low:
            return 0.0
        return share * line.flushed_veh * (high - low) / spread

    def _dispatch(self, now_s: float) -> list[Action]:
        """One plan per intersection holding every live window there (two corridors crossing
        share it), sent when the set changed or a window moved by more than ``min_change_s``;
        a release once no window is left."""
        settings = self.settings
        wanted: dict[str, list[_Wanted]] = {}
        for corridor in self._live():
            for line in corridor.stop_lines:
                if line.intersection in self.unconfirmed or corridor.stuck:
                    continue
                if not line.released and line.hop >= 0 and line.due and line.close_s > line.open_s:
                    _want(wanted, corridor, line)
        actions: list[Action] = []
        self.deferred_until = math.inf
        soonest = now_s + settings.takeover_lead_s
        for node in sorted(wanted.keys() | self.sent.keys()):
            lines = sorted(wanted.get(node, []), key=lambda want: want[2])
            timed = self._timed(node, lines, soonest)
            reach = self._within_reach(timed, now_s)
            for _, line, _, _ in lines[reach:]:
                line.plan_id, line.confirmed = None, False
            lines, timed = lines[:reach], timed[:reach]
            sent = self.sent.get(node)
            if not lines:
                if sent is not None:
                    actions.append(self._release(node, sent, now_s))
                continue
            windows = tuple((c.corridor_id, ln.group, a, b) for c, ln, a, b in lines)
            if sent is not None and _same_windows(sent.windows, windows, settings.min_change_s):
                continue
            plan = self._plan(node, lines, timed, now_s)
            self.sent[node] = _Sent(plan.plan.plan_id, windows)
            actions.append(plan)
        return actions

    def _timed(self, node: str, lines: list[_Wanted], soonest: float) -> list[tuple[float, float]]:
        """When each window (in order of opening) is sent to open and close: not before
        ``soonest``, nor before every window ahead of it that another phase shows has closed
        (served in turn; windows one phase shows, two vehicles on opposing throughs, are one
        green), and for 1 s at least."""
        plan = self.plans[node]
        timed: list[tuple[float, float]] = []
        for count, (_, line, open_s, close_s) in enumerate(lines):
            ahead = [
                closing
                for (_, other, _, _), (_, closing) in zip(lines[:count], timed, strict=True)
                if not plan.served_together(other.group, line.group)
            ]
            opening = max(open_s, soonest, *ahead)
            timed.append((opening, max(close_s, opening + 1.0)))
        return timed

    def _within_reach(self, timed: list[tuple[float, float]], now_s: float) -> int:
        """How many of the windows (in order, as ``_timed``) a plan made now can hold: a plan
        takes over no sooner than ``max_lease_s`` before its last window closes (with
        ``lease_margin_s``), and no later than its cabinet takes a plan made now nor than its
        first window opens. The rest wait; ``deferred_until`` says when the first of them
        comes within reach by age (the windows before it passed, a position re-plans)."""
        settings = self.settings
        latest = now_s + settings.max_plan_age_s - PLAN_AGE_SLACK_S
        last, first = -math.inf, math.inf
        for count, (opening, closing) in enumerate(timed):
            last, first = max(last, closing), min(first, opening)
            takeover = last + settings.lease_margin_s - settings.max_lease_s
            # nor after the plan's first window opens (a near window and one 5 minutes on)
            if takeover > min(latest, first):
                reach = takeover - settings.max_plan_age_s + PLAN_AGE_SLACK_S
                self.deferred_until = min(self.deferred_until, reach)
                return count
        return len(timed)

    def _plan(
        self, node: str, lines: list[_Wanted], timed: list[tuple[float, float]], now_s: float
    ) -> SendPlan:
        """The plan holding ``lines``' windows at ``node``, as ``_timed`` times them."""
        settings = self.settings
        seq = self._next_seq(node)
        plan_id = compose_id(lines[0][0].corridor_id, node, seq)
        owners = list(dict.fromkeys(c.corridor_id for c, *_ in lines))
        self._serving[plan_id] = owners
        for owner in owners:
            self._plans_of.setdefault(owner, []).append(plan_id)
        for _, line, _, _ in lines:
            line.plan_id, line.confirmed = plan_id, False
        valid_until = max(closing for _, closing in timed) + settings.lease_margin_s
        plan = SignalPlan(
            plan_id=plan_id,
            intersection=node,
            seq=seq,
            epoch=settings.epoch,
            issued_at=now_s,
            valid_from=max(now_s + settings.takeover_lead_s, valid_until - settings.max_lease_s),
            valid_until=valid_until,
            corridor_id=lines[0][0].corridor_id,
            windows=tuple(
                GreenWindow(signal_group=line.group, open_at=opening, close_at=closing)
                for (_, line, _, _), (opening, closing) in zip(lines, timed, strict=True)
            ),
        )
        return SendPlan(node, plan)

    def _next_seq(self, node: str) -> int:
        seq = self.seq.get(node, 0) + 1
        self.seq[node] = seq
        return seq

    def _release(self, node: str, sent: _Sent, now_s: float) -> SendPlan:
        del self.sent[node]
        seq = self._next_seq(node)
        corridor_id = sent.windows[0][0]
        plan = SignalPlan(
            plan_id=compose_id(corridor_id, node, "release", seq),
            intersection=node,
            seq=seq,
            epoch=self.settings.epoch,
            issued_at=now_s,
            valid_from=now_s + self.settings.takeover_lead_s,
            valid_until=now_s + 30.0,
            kind=PlanKind.RELEASE,
            corridor_id=corridor_id,
        )
        return SendPlan(node, plan)

    def _finish(
        self, corridor: Corridor, state: CorridorState, now_s: float, reason: str | None
    ) -> list[Action]:
        self._end(corridor, state, now_s, reason)
        return [*self._dispatch(now_s), PublishStatus(self._status(corridor, now_s))]

    def _end(
        self, corridor: Corridor, state: CorridorState, now_s: float, reason: str | None
    ) -> None:
        """End the corridor; its stop lines are released by the next dispatch."""
        trip = self._trip(corridor, now_s) if state is CorridorState.COMPLETED else None
        self.impact.ended(corridor.corridor_id, now_s, trip)
        unpassed = {line.intersection for line in _ahead(corridor)}
        for other in self._live():
            for line in _ahead(other):
                # it no longer comes: the others yield there only to whoever still does
                line.yields = line.yields and line.intersection not in unpassed
        for line in corridor.stop_lines:
            line.released = True
        corridor.state, corridor.reason = state, reason
        self.by_vehicle.pop(corridor.vehicle, None)
        self._forget_ended(corridor.corridor_id)
        log.info("corridor %s %s%s", corridor.corridor_id, state, f": {reason}" if reason else "")

    def _forget_ended(self, corridor_id: str) -> None:
        """Keep the last ``keep_ended`` ended corridors (for their late acks and the operators'
        list); older ones go, with their plans' index entries."""
        self._ended.append(corridor_id)
        while len(self._ended) > self.settings.keep_ended:
            gone = self._ended.popleft()
            del self.corridors[gone]
            self.impact.forget(gone)
            for plan_id in self._plans_of.pop(gone, []):
                owners = self._serving.get(plan_id, [])
                if gone in owners:
                    owners.remove(gone)
                if not owners:
                    self._serving.pop(plan_id, None)

    def status(self, corridor_id: str, now_s: float) -> CorridorStatus:
        corridor = self.corridors.get(corridor_id)
        if corridor is None:
            raise ValidationError("corridor_id", f"unknown corridor {corridor_id!r}")
        return self._status(corridor, now_s)

    def _status(self, corridor: Corridor, now_s: float) -> CorridorStatus:
        lines = []
        for line in corridor.stop_lines:
            lines.append(
                CorridorIntersection(
                    intersection=line.intersection,
                    eta=max(0.0, line.eta_s),
                    eta_low=max(0.0, min(line.low_s, line.eta_s)),
                    eta_high=max(line.high_s, line.eta_s, 0.0),
                    window_open=max(0.0, line.open_s) if line.close_s > line.open_s else None,
                    window_close=line.close_s if line.close_s > line.open_s else None,
                    actual_arrival=line.passed_s,
                    confirmed=line.confirmed,
                )
            )
        return CorridorStatus(
            corridor_id=corridor.corridor_id,
            vehicle=corridor.vehicle,
            state=corridor.state,
            priority=corridor.priority,
            updated_at=now_s,
            route=tuple(dict.fromkeys(line.intersection for line in corridor.stop_lines)),
            intersections=tuple(lines),
            reason=corridor.reason,
            impact=self.impact.report(corridor.corridor_id),
            advised_speed_mps=corridor.advised_mps if corridor.state not in TERMINAL else None,
        )


def _green_to_flush(vehicles: float, per_veh_s: float) -> float:
    """The green a queue of ``vehicles`` needs to pass its stop line (none for no queue)."""
    return DEFAULT_LOST_TIME_S + vehicles * per_veh_s if vehicles > 0.0 else 0.0


def _ahead(corridor: Corridor) -> list[StopLine]:
    """The stop lines the vehicle has still to pass."""
    return [line for line in corridor.stop_lines if not line.released and line.hop >= 0]


def _window_groups(graph: CorridorGraph, plans: Mapping[str, TimingPlan]) -> tuple[str, ...]:
    """Per movement, the group its windows ask for. Where another movement from the same link
    is green in only some of the phases the vehicle's is (a right turn green with the through
    and again in the side street's phase, say), a window for the vehicle's own group may run
    the phase in which the other one is red: if they share a lane, the vehicle waits behind a
    car going the other way, at a green that is not its lane's. The network does not say which
    lanes are shared, so the window asks for the narrower group, whose phases serve both."""
    groups = list(graph.mv_group)
    for movement, group in enumerate(graph.mv_group):
        plan = plans.get(graph.intersection_ids[graph.mv_intersection[movement]])
        if plan is None:
            continue
        own = _phases_serving(plan, group)
        link = int(graph.mv_from[movement])
        leaving = range(int(graph.out_start[link]), int(graph.out_start[link + 1]))
        narrower = [
            (len(phases), other)
            for other in {graph.mv_group[m] for m in leaving}
            if (phases := _phases_serving(plan, other)) and phases < own
        ]
        if narrower:
            groups[movement] = max(narrower)[1]
    return tuple(groups)


def _phases_serving(plan: TimingPlan, group: str) -> frozenset[int]:
    return frozenset(i for i, phase in enumerate(plan.phases) if group in phase.groups)


def _learn_spread(corridor: Corridor, line: StopLine) -> None:
    """Learn how far the vehicle's ETAs can be trusted from the forecast made for the stop line
    it just passed: the error over the time to go then, weighed into ``spread_rate``."""
    if line.forecast is None or line.passed_s is None:
        return
    made_s, eta_s = line.forecast
    error = abs(line.passed_s - eta_s) / max(eta_s - made_s, 10.0)
    rate = (1.0 - SPREAD_LEARNING) * corridor.spread_rate + SPREAD_LEARNING * error
    corridor.spread_rate = min(max(rate, LEAST_SPREAD_RATE), MOST_SPREAD_RATE)


def _changing_for(line: StopLine, now_s: float) -> bool:
    """Whether the controller is changing for ``line``'s window (committed, not yet open)."""
    return line.plan_id is not None and line.committed_s is not None and now_s < line.open_s


def _hand_over(holder: Corridor, line: StopLine) -> None:
    """Give up ``line``'s open window (``_hands_over``): it is re-timed after the other's,
    and nothing of the old one is kept (its opening is not pinned again)."""
    if not line.handed_over:
        log.info(
            "%s: %s's window at %s handed over to a vehicle that comes first",
            holder.corridor_id,
            holder.vehicle,
            line.intersection,
        )
    line.handed_over = True
    line.committed_s = None
    line.open_s = line.close_s = 0.0


def _holds(corridor: Corridor, node: str) -> bool:
    return any(line.intersection == node and not line.released for line in corridor.stop_lines)


def _windows_at(node: str, live: list[Corridor], leaving: list[Corridor]) -> int:
    """Windows live corridors hold at ``node``, those ``leaving`` aside."""
    return sum(
        1
        for corridor in live
        if corridor not in leaving
        for line in corridor.stop_lines
        if line.intersection == node and not line.released
    )


_Wanted = tuple[Corridor, StopLine, float, float]
"""A window an intersection's plan should hold: whose, for which stop line, open, close."""


def _spans(line: StopLine) -> list[tuple[float, float]]:
    """The stop line's windows: its queue flushed ahead of time, if it has that, then its own."""
    pre = [(line.pre_open_s, line.pre_close_s)] if line.pre_close_s > line.pre_open_s else []
    return [*pre, (line.open_s, line.close_s)]


def _want(wanted: dict[str, list[_Wanted]], corridor: Corridor, line: StopLine) -> None:
    """Add a stop line's windows to its intersection's plan; corridors come highest priority
    first, and past ``MAX_WINDOWS`` (a re-routed vehicle can bring one more) the rest wait,
    unconfirmed, rather than make a plan no edge takes."""
    held = wanted.setdefault(line.intersection, [])
    spans = _spans(line)
    if len(held) + len(spans) <= MAX_WINDOWS:
        held += [(corridor, line, a, b) for a, b in spans]
        return
    log.debug("%s: no room for %s's window", line.intersection, corridor.corridor_id)
    line.plan_id, line.confirmed = None, False


def _min_green_s(plan: TimingPlan, group: str) -> float:
    """The least green a window for ``group`` shows once opened: the longest minimum of the
    groups its phase turns green (a window shorter than that runs longer, and one after it
    timed from its close found its green late)."""
    shown = plan.window_groups(group) or frozenset({group})
    timings = plan.signals.timings
    return max((timings[g].min_green_s for g in shown if g in timings), default=0.0)


def _same_windows(
    sent: tuple[tuple[str, str, float, float], ...],
    wanted: tuple[tuple[str, str, float, float], ...],
    tolerance_s: float,
) -> bool:
    """Whether the windows sent still stand: same corridors and groups, none moved by more
    than ``tolerance_s``."""
    if [w[:2] for w in sent] != [w[:2] for w in wanted]:
        return False
    return all(
        abs(a[2] - b[2]) <= tolerance_s and abs(a[3] - b[3]) <= tolerance_s
        for a, b in zip(sent, wanted, strict=True)
    )


def _normal_green_from(plan: TimingPlan, group: str, at_s: float) -> float:
    """When the normal plan next shows ``group`` green at or after ``at_s``."""
    for period in normal_periods(plan, at_s, at_s + 2 * plan.cycle_s):
        if group in plan.phases[period.phase_index].groups and period.green_end_s > at_s:
            return max(at_s, period.green_start_s)
    return at_s + plan.cycle_s


def _window_open(line: StopLine, now_s: float) -> bool:
    """Whether a window sent for the line (its own, or its early flush) is open now."""
    if line.plan_id is None or line.released:
        return False
    return line.open_s <= now_s < line.close_s or line.pre_open_s <= now_s < line.pre_close_s


def _base36(number: int) -> str:
    """A short spelling of an epoch for corridor ids (``C<epoch>.<n>-<vehicle>``)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while number:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
    return text or "0"


_Metres = TypeVar("_Metres", float, np.ndarray)


def _own_mps(corridor: Corridor, metres: _Metres, free_flow_s: _Metres) -> _Metres:
    """The vehicle's own speed over links this long and this quick at free flow, at the pace
    it has shown: what its held speed is measured against and its advice slows it from."""
    return metres / (free_flow_s * corridor.pace)
