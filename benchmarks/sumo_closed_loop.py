"""The closed loop in two independent simulators (issue 13): the three policies on the demo
arterial (eastbound with the green wave, westbound against it), on the demo's 10 x 10 grid
with two ambulances whose routes cross (``grid``) and on ``resco:ingolstadt21``,
our engine and SUMO micro (libsumo: SUMO moves every vehicle, with its default driver
imperfection, under our controllers) side by side, on the same seeds' traffic.

    .venv/bin/python benchmarks/sumo_closed_loop.py [--seeds 10] [--first-seed 1] [--jobs 2]
        [--cases ...] [--engines ours sumo] [--policies ...] [--out out/bench]
    .venv/bin/python benchmarks/sumo_closed_loop.py --bounds-from out/bench/sumo_closed_loop.json
        [--start-up 2.5]
    .venv/bin/python benchmarks/sumo_closed_loop.py --report-from out/bench/sumo_closed_loop.json

Per case, engine and policy: the ambulance's mean travel time, x free flow, stops (ours: waits
over 1 s in a queue; SUMO: falls below 0.1 m/s), the vehicle-seconds all other traffic spent
beyond the same seeds without priority (with its standard error seed by seed, and its mean on
the seeds where more vehicles were teleported than without priority against the rest: a
saturated network's jams), and for SUMO the closed loop's real-time factor (simulated seconds
over wall seconds, network export and SUMO start included) and the vehicles SUMO teleported; on
the grid also what the second to cross lost on its last link and on its last two (where speed
advice slows it) with the least it could have, the share of seeds where neither stopped at the
crossing, and the two trips together; with ``grid-solo`` in the same run, the corridor's second
to cross against its trip alone (``crossing_cost``), beside the least the crossing could have
cost it with the first crossing when it did, and the least any timing of the crossing could
have cost the two with the traffic that came to it (``simulator/crossing.py``), also with each
green held the corridors' margin (3 s) before its ambulance, as a timing that knows the
arrivals only that well must; with ``grid-solo-same-lead``, the larger loss like for like (each
alone with the meeting's lead). Under the corridor, also the queues its windows flush ahead of
the ambulance: what the cloud expected per stop line against what left (``ahead_veh``); on the
grid, how the first to cross's green at the crossing was used, from its approach's departures
(``_first_green``), and the second's loss there split into parts that add up to it, near ties
and the others apart (``_second_parts``).
A table, one verdict line, JSON in ``OUT/sumo_closed_loop.json``.
Each (case, engine, seed) runs in a process of its own: libsumo holds one simulation per
process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from citybrain.closed_loop import (
    COMPARED,
    GRID,
    WESTBOUND,
    Journey,
    Outcome,
    Policy,
    Setup,
    run_policy,
    setup_scenario,
)
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.demo import json_text
from citybrain.evaluate import Ambulance, Study, evaluate
from citybrain.models.traffic import DEFAULT_LOST_TIME_S, queue_discharge_time_s
from citybrain.simulator.crossing import (
    Approach,
    crossing_schedule,
    least_larger_delay,
    least_larger_delay_without_stops,
)
from citybrain.simulator.demand import Trips, fixed_route
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import Scenario, build, load_network
from citybrain.simulator.scoring import StopLineDelay

_T = TypeVar("_T")

BOUND_SINCE_S = 150.0
"""How long before the sooner ambulance is due the crossing bound counts vehicles from (about
two cycles: what came earlier was served before either window mattered)."""
INGOLSTADT = ("resco:ingolstadt21", "315358244", "201956810")
"""The real-city benchmark's route there: 10 signals over 2.1 km (benchmarks/real_cities.py)."""
FORECAST_LEADS_S = (10.0, 20.0, 30.0, 60.0)
"""How long before an ambulance got to a stop line its ETA there is held against when it did."""
BANDS_S = (0.0, 1.0, 2.0, 3.0)
"""How well a timing of the crossing knows each ambulance's arrival (``--bounds-from``)."""
PAUSE_S = 4.0
"""A pause this long in an approach's departures under green: its standing queue is gone (a
lane discharges one every 2 s at saturation flow; SUMO's first few every 3 s)."""
NEAR_TIE_S = 2.0
"""Two ambulances due at the crossing alone within this of each other (or the second sooner):
which comes first is a near tie, decided on ETAs made a minute before (``_say_ties``)."""
ALONE_LEADS_S = ("10", "20", "30")
"""The leads at which the crossing bound takes each ambulance's arrival as its ETA then, when
it drove alone (``banded_bounds``): how the bound grows with how far ahead the timing decides."""
COMMIT_LEAD_S = 20.0
"""How long before the first ambulance a timing of the crossing must know its arrival: to
end the other approach's green, clear it (5 s) and flush its own queue (10-15 s) in time."""
SAME_LEAD = "crossing_cost_same_lead"
"""The crossing's cost against ``grid-solo-same-lead``, beside ``crossing_cost``."""
SOLOS = {"grid-solo": "crossing_cost", "grid-solo-same-lead": SAME_LEAD}
"""The cases of each ambulance alone, and the key of the grid cases' cost held against each."""
GRIDS = {
    "grid": GRID,
    "grid-no-advice": replace(GRID, speed_advice=False),
    "grid-slowest-8": replace(GRID, min_advised_mps=8.0),
    "grid-slowest-10": replace(GRID, min_advised_mps=10.0),
    "grid-slowest-13.9": replace(GRID, min_advised_mps=13.9),
    "grid-handover-10": replace(GRID, handover_s=10.0),
    "grid-meeting-lead-3": replace(GRID, meeting_lead_budget_veh=3.0),
    "grid-meeting-lead-9": replace(GRID, meeting_lead_budget_veh=9.0),
}
"""The grid's two crossing ambulances with the speed advice off, with it never slower than
8, 10 and 13.9 m/s (the speed limit) instead of 5, and with a late vehicle's window at the
crossing handed over to the other when it comes 10 s sooner instead of 30, and with the lead
before the crossing held to the budget of a vehicle alone (3 vehicles, the code before the
twenty-ninth session) or to 9 instead of 30: how the advice, the order and the lead trade
stops at the crossing for delay there (``plot_trade_off``)."""
CASES = (
    "arterial-eastbound",
    "arterial-westbound",
    "ingolstadt21",
    "arterial-eastbound-alone",
    "arterial-westbound-alone",
    "arterial-eastbound-ceiling",
    "arterial-westbound-ceiling",
    *GRIDS,
    "grid-solo",
    "grid-solo-same-lead",
)
"""``-alone``: the corridor with every other vehicle taken out of the same seed's scenario, the
ceiling of what signals can do for this driver (SUMO: its imperfection, its accelerations).
``-ceiling``: in the same traffic, every signal on the route green for the ambulance from
dispatch until it passes (``green_all_the_way``), the ceiling of what signals can do in it.
``grid-no-advice``: the grid with the corridors' speed advice off (``Setup.speed_advice``): the
second to cross drives on and waits at the crossing, what the advice trades for its stops;
``grid-slowest-*``: never advised slower than that (``Setup.min_advised_mps``).
``grid-handover-10``: a late vehicle's window handed over sooner (``Setup.handover_s``).
``grid-meeting-lead-*``: the lead's budget before the crossing (``Setup.meeting_lead_budget_veh``).
``grid-solo``: each of the grid's ambulances under its corridor with the other taken out of
the same seed's scenario; beside each of ``GRIDS``, what the crossing cost the second to
cross, wherever it lost it. ``grid-solo-same-lead``: the same with the lead a meeting's
corridor has before the crossing (``Setup.meeting_lead_budget_veh``) all the way, so that
each loss until past the crossing is held against a trip alone with the same lead: like for
like (the first corridor spends it from its request on, not only once the second's comes)."""


def _figures(outcomes: list[Outcome]) -> dict[str, Any]:
    """AMB-1's trip; where ambulances' routes cross, also the larger loss at the crossing (the
    second to cross) and whether neither stopped there."""
    journeys = [o.journeys["AMB-1"] for o in outcomes]
    figures = {
        "travel_time_s": [j.travel_time_s for j in journeys],
        "free_flow_s": [j.trip.free_flow_s for j in journeys],
        "stops": [j.trip.stops for j in journeys],
        "teleports": [sum(i.kind == "teleport" for i in o.incidents) for o in outcomes],
        "removed": [sum(i.kind != "teleport" for i in o.incidents) for o in outcomes],
        "corridor": [o.corridors.get("AMB-1", "") for o in outcomes],
        "others_veh_s": [o.other_vehicle_seconds for o in outcomes],
        "ahead_veh": [_flushed_ahead(o) for o in outcomes],
        "forecast_errors": [_forecast_errors(o, at_line=False) for o in outcomes],
        "forecast_errors_at_line": [_forecast_errors(o, at_line=True) for o in outcomes],
    }
    if outcomes and outcomes[0].crossings:
        (crossing,) = outcomes[0].crossings
        every = [list(o.journeys.values()) for o in outcomes]
        figures["second_loss_s"] = [max(j.delay_at(crossing) for j in js) for js in every]
        figures["neither_stops"] = [all(j.stops_at[crossing] == 0 for j in js) for js in every]
        road = load_network(GRID.network)
        signals = road.plans[crossing].signals
        clearance = min(signals.intergreen_s({group}) for group in signals.groups)
        orders = [_at_crossing(js, crossing) for js in every]
        upstream = [_second_upstream(order, clearance) for order in orders]
        figures["second_upstream_s"] = [lost for lost, _ in upstream]
        figures["second_floor_s"] = [least for _, least in upstream]
        figures["second_earliest_s"] = [
            _second_earliest(order, crossing, clearance, road) for order in orders
        ]
        figures["crossed_s"] = [_left_crossing(o.journeys) for o in outcomes]
        figures["crossing_queues"] = [
            {
                name: {"arrivals_s": q.arrivals_s.round(2).tolist(), "headway_s": q.headway_s}
                for name, q in o.crossing_queues[crossing].items()
            }
            for o in outcomes
        ]
        least_green = min(signals.timings[group].min_green_s for group in signals.groups)
        figures["crossing_timing_s"] = [(least_green, clearance)] * len(outcomes)
        figures["both_trips_s"] = [sum(j.travel_time_s for j in js) for js in every]
        figures["second"] = [order[-1][0].trip.vehicle if order else "" for order in orders]
        figures["first_late_s"] = [_late(order, 0) for order in orders]
        figures["second_late_s"] = [_late(order, 1) for order in orders]
        figures["first_green"] = [_first_green(order, crossing) for order in orders]
    figures["seed"] = [o.seed for o in outcomes]
    figures["trips_s"] = [{n: j.travel_time_s for n, j in o.journeys.items()} for o in outcomes]
    return figures


def _at_crossing(journeys: list[Journey], crossing: str) -> list[tuple[Journey, int]]:
    """The journeys in the order they left ``crossing``'s stop line, each with that stop
    line's index on its trip; none if one never got there (the run ended, SUMO took it out)."""
    reached = {j.trip.vehicle: [ln.intersection for ln in j.trip.stop_lines] for j in journeys}
    if any(crossing not in passed for passed in reached.values()):
        return []
    at = [(j, reached[j.trip.vehicle].index(crossing)) for j in journeys]
    return sorted(at, key=lambda pair: pair[0].trip.stop_lines[pair[1]].left_s)


def _late(order: list[tuple[Journey, int]], which: int) -> dict[str, float]:
    """How much later the first (``which`` 0) or the second to cross got there than its
    corridor's ETA said, per lead of ``FORECAST_LEADS_S`` (what a timing of the crossing knows
    of the arrivals it must switch for; NaN where none was given then)."""
    if not order:
        return {}
    journey, at = order[which]
    return _late_at(journey, journey.trip.stop_lines[at])


def _late_at(journey: Journey, line: StopLineDelay) -> dict[str, float]:
    """``_line_errors``' lateness alone, keyed by lead as the JSON keeps it (NaN for a lead
    at which no ETA had been given)."""
    late = {lead: late for lead, late, _ in _line_errors(journey, line)}
    return {f"{lead:.0f}": late.get(lead, math.nan) for lead in FORECAST_LEADS_S}


def _first_green(order: list[tuple[Journey, int]], crossing: str) -> dict[str, float]:
    """How the first to cross's last green at the crossing was used, from its start until the
    first left: how long it ran, how many left ahead of the first in it, until its
    approach's departures first paused ``PAUSE_S`` once started (its standing queue gone),
    how many left after that, and how long before the first no one did; and when the
    second's green there began after the first left, with how many left ahead of the second
    in it, from its onset until the first of them left (the start-up), until the last did,
    and until the second did. Empty where one never got there."""
    if not order:
        return {}
    (first, at), (second, at_second) = order
    left_s = first.trip.stop_lines[at].left_s
    second_left_s = second.trip.stop_lines[at_second].left_s
    second_onset = second.green_onset(crossing, second_left_s)
    ahead = second.discharged.get(crossing, [])[:-1] or [second_onset]
    onset = first.green_onset(crossing, left_s)
    departed = first.discharged.get(crossing, [])[:-1]  # itself, the last, not counted
    pause = next(
        (
            i
            for i, (a, b) in enumerate(itertools.pairwise(departed))
            if b - a >= PAUSE_S and a - onset >= PAUSE_S  # not the start-up's first few
        ),
        len(departed) - 1,
    )
    return {
        "green_s": left_s - onset,
        "ahead_veh": float(len(departed)),
        "queue_gone_s": departed[pause] - onset if departed else 0.0,
        "after_veh": float(len(departed) - 1 - pause),
        "idle_s": left_s - (departed[-1] if departed else onset),
        "second_green_after_s": second_onset - left_s,
        "second_ahead_veh": float(second.ahead_at_green.get(crossing, math.nan)),
        "second_start_up_s": ahead[0] - second_onset,
        "second_queue_s": ahead[-1] - ahead[0],
        "second_after_s": second_left_s - ahead[-1],
    }


def _line_errors(
    journey: Journey, line: StopLineDelay, got_there_s: float | None = None
) -> list[tuple[float, float, bool]]:
    """Per lead of ``FORECAST_LEADS_S`` at which its corridor had given an ETA for ``line``:
    how much later the ambulance got there (``got_there_s``; by default when it entered the
    link after it) than that ETA said (negative: sooner), and whether it got there within
    that ETA's band."""
    at = line.left_s if got_there_s is None else got_there_s
    given = journey.forecasts.get(line.intersection, [])
    errors = []
    for lead in FORECAST_LEADS_S:
        before = [forecast for forecast in given if forecast[0] <= at - lead]
        if before:
            _, eta, low, high = before[-1]
            errors.append((lead, at - eta, low <= at <= high))
    return errors


def _reached_s(journey: Journey, line: StopLineDelay) -> float | None:
    """When the position the ambulance reported first reached ``line``'s stop line (between
    two reports, at a steady speed): the time an ETA is for. Its entry into the link after
    it (``left_s``) is later by the junction's crossing, a second or more on a real map."""
    at = journey.stop_line_m.get(line.intersection)
    track = np.array(journey.trajectory, dtype=np.float64).reshape(-1, 2)
    if at is None or not track.size:
        return None
    past = np.flatnonzero(track[:, 1] >= at)
    if not past.size:
        return None
    k = int(past[0])
    if k == 0 or track[k, 1] <= track[k - 1, 1]:
        return float(track[k, 0])
    (t0, m0), (t1, m1) = track[k - 1], track[k]
    return float(t0 + (t1 - t0) * (at - m0) / (m1 - m0))


def _second_upstream(order: list[tuple[Journey, int]], clearance_s: float) -> tuple[float, float]:
    """What the second to cross lost over the two links up to the crossing (speed advice
    slows it on both, so its loss at the crossing alone would not hold all it gave up there),
    and the least it could have lost there, the first crossing when it did: its green follows
    the first's after ``clearance_s`` (the crossing plan's least intergreen), even were the
    first's window closed the moment it passed, the second's own queue gone and the second
    arriving at speed. ``order``: ``_at_crossing``'s (NaN for an empty one)."""
    if not order:
        return math.nan, math.nan
    (first, first_at), (second, at) = order
    stretch = second.trip.stop_lines[max(0, at - 1) : at + 1]
    lost = sum(line.delay_s for line in stretch)
    passed = first.trip.stop_lines[first_at].left_s
    unhindered = stretch[-1].left_s - lost
    return lost, max(0.0, passed + clearance_s - unhindered)


def _second_earliest(
    order: list[tuple[Journey, int]], crossing: str, clearance_s: float, road: RoadNetwork
) -> float:
    """The soonest the second to cross could have left the crossing, the first leaving it
    when it did: the clearance, then the vehicles that left its approach ahead of it (what
    arrived there while the first's window ran, and while its own did) at the saturation
    flow of all its lanes after the start-up lost time; low where some lanes serve other
    movements. ``order``: ``_at_crossing``'s (NaN for an empty one)."""
    if not order:
        return math.nan
    (first, first_at), (second, at) = order
    ahead = second.ahead_at_green.get(crossing)
    if ahead is None:
        return math.nan
    link = road.network.link_by_id[second.trip.stop_lines[at].link]
    green = queue_discharge_time_s(
        ahead, lanes=len(link.lanes), saturation_flow_vphpl=link.saturation_flow_vphpl
    )
    return first.trip.stop_lines[first_at].left_s + clearance_s + green


def run_case(
    case: str, engine: Engine, seeds: list[int], compared: tuple[Policy, ...] = COMPARED
) -> dict[str, Any]:
    """One case on one engine over ``seeds``: per policy the figures and the wall time
    (``compared``: the policies the cases with traffic run)."""
    out: dict[str, Any] = {}
    if case == "ingolstadt21":
        network, origin, destination = INGOLSTADT
        started = time.perf_counter()
        study = Study(
            network=network,
            ambulances=(Ambulance("AMB-1", origin, destination, 900.0),),
            seeds=len(seeds),
            engine=engine,
        )
        result = evaluate(study)
        wall = time.perf_counter() - started
        simulated = (900.0 + study.after_s) * len(seeds) * len(COMPARED)
        for policy, outcomes in result.comparison.outcomes.items():
            out[policy.value] = _figures(outcomes)
        return {"wall_s": wall, "simulated_s": simulated, "policies": out}
    if case == "grid-solo":
        return _run_solo(GRID, engine, seeds)
    if case == "grid-solo-same-lead":
        return _run_solo(replace(GRID, lead_budget_veh=GRID.meeting_lead_budget_veh), engine, seeds)
    setups = {**GRIDS, "arterial-westbound": WESTBOUND}
    setup = setups.get(case.removesuffix("-alone").removesuffix("-ceiling"), Setup())
    alone = case.endswith("-alone")
    policies = (Policy.CORRIDOR,) if alone else compared
    if case.endswith("-ceiling"):
        policies = (Policy.GREEN_ALL_THE_WAY,)
    wall = 0.0
    per_policy: dict[Policy, list[Outcome]] = {policy: [] for policy in policies}
    for seed in seeds:
        scenario = _alone(setup, seed) if alone else None
        for policy in policies:
            started = time.perf_counter()
            outcome = run_policy(policy, seed, setup, scenario=scenario, engine=engine)
            per_policy[policy].append(outcome)
            wall += time.perf_counter() - started
    simulated = (setup.warmup_s + setup.after_s) * len(seeds) * len(policies)
    for policy, outcomes in per_policy.items():
        out[policy.value] = _figures(outcomes)
    return {"wall_s": wall, "simulated_s": simulated, "policies": out}


def _run_solo(setup: Setup, engine: Engine, seeds: list[int]) -> dict[str, Any]:
    """Each ambulance's corridor with the others taken out of the seed's scenario (per seed
    its trip by name, under ``solo_trips_s``)."""
    trips_of = setup_scenario(setup, seeds[0]).trips
    names = [trips_of.names[int(v)] for v in np.flatnonzero(trips_of.emergency)]
    wall, trips, crossed, late = 0.0, [], [], []
    for seed in seeds:
        started = time.perf_counter()
        journeys = {
            name: run_policy(
                Policy.CORRIDOR, seed, setup,
                scenario=setup_scenario(setup, seed, only=name), engine=engine,
            ).journeys[name]
            for name in names
        }  # fmt: skip
        wall += time.perf_counter() - started
        trips.append({name: j.travel_time_s for name, j in journeys.items()})
        crossed.append(_left_crossing(journeys))
        late.append(_late_alone(journeys))
    simulated = (setup.warmup_s + setup.after_s) * len(seeds) * len(names)
    figures = {
        "seed": list(seeds), "solo_trips_s": trips, "solo_crossed_s": crossed, "solo_late_s": late
    }  # fmt: skip
    return {"wall_s": wall, "simulated_s": simulated, "policies": {"corridor": figures}}


def _alone(setup: Setup, seed: int) -> Scenario:
    """The seed's arterial scenario with its emergency vehicles only."""
    full = build(
        setup.network,
        level=setup.level,
        duration_s=setup.warmup_s + setup.after_s,
        seed=seed,
        ambulance_at_s=setup.warmup_s,
        ambulance_direction=setup.direction,
    )
    trips, net = full.trips, full.net
    alone = []
    for v in np.flatnonzero(trips.emergency):
        start = int(trips.route_start[v])
        route = trips.route_links[start : start + int(trips.route_len[v])]
        alone.append(
            fixed_route(
                net,
                [net.link_ids[int(link)] for link in route],
                depart_s=float(trips.depart[v]),
                name=trips.names[int(v)],
                speed_factor=float(trips.speed_factor[v]),
            )
        )
    return Scenario(full.name, net, Trips.concat(alone), full.duration_s, seed, full.sumo_net)


def _task(args: tuple[str, str, list[int], list[str]]) -> tuple[str, str, dict[str, Any]]:
    case, engine, seeds, policies = args
    compared = tuple(Policy(policy) for policy in policies)
    return case, engine, run_case(case, Engine(engine), seeds, compared)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds run apart, put together."""
    policies: dict[str, dict[str, list[Any]]] = {}
    for part in parts:
        for policy, figures in part["policies"].items():
            into = policies.setdefault(policy, {})
            for key, values in figures.items():
                into.setdefault(key, []).extend(values)
    return {
        "wall_s": sum(p["wall_s"] for p in parts),
        "simulated_s": sum(p["simulated_s"] for p in parts),
        "policies": policies,
    }


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    without = data["policies"].get("no_priority")
    for policy, f in data["policies"].items():
        if "solo_trips_s" in f:
            kept = ("seed", "solo_trips_s", "solo_crossed_s", "solo_late_s")
            rows[policy] = {key: f[key] for key in kept}
            continue
        travel = _mean(f["travel_time_s"])
        extra = _mean(f["others_veh_s"]) - _mean(without["others_veh_s"]) if without else math.nan
        paired = _others_extra(f, without) if without and policy != "no_priority" else {}
        rows[policy] = {
            "travel_time_s": round(travel, 1),
            "x_free_flow": round(travel / _mean(f["free_flow_s"]), 3),
            "stops": round(_mean([float(s) for s in f["stops"]]), 2),
            "not_arrived": sum(not math.isfinite(t) for t in f["travel_time_s"]),
            "teleports": sum(f["teleports"]),
            "removed": sum(f["removed"]),
            "corridor_states": dict(Counter(str(c) for c in f["corridor"] if c)),
            "others_extra_veh_s": round(extra) if math.isfinite(extra) else None,
            **paired,
        }
        pairs = [pair for seed in f["ahead_veh"] for pair in seed]
        if pairs:
            rows[policy]["ahead_veh"] = _expected_over_left(pairs)
        for key, name in (("forecast_errors", "forecasts"), ("forecast_errors_at_line", "at_line")):
            errors = [error for seed in f.get(key, []) for error in seed]
            if errors:
                rows[policy][name] = _forecast_accuracy(errors)
        if "second_loss_s" in f:
            rows[policy]["second_loss_s"] = round(_mean(f["second_loss_s"]), 1)
            rows[policy]["neither_stops_share"] = round(_mean(f["neither_stops"]), 2)
            rows[policy]["second_upstream_s"] = round(_mean(f["second_upstream_s"]), 1)
            rows[policy]["second_floor_s"] = round(_mean(f["second_floor_s"]), 1)
            rows[policy]["both_trips_s"] = round(_mean(f["both_trips_s"]), 1)
            rows[policy]["first_late"] = _late_errors(f["first_late_s"])
            if "second_late_s" in f:
                rows[policy]["second_late"] = _late_errors(f["second_late_s"])
            rows[policy]["first_green"] = _medians(f["first_green"])
            rows[policy].update(
                seed=f["seed"],
                second=f["second"],
                trips_s=f["trips_s"],
                second_earliest_s=f["second_earliest_s"],
                crossed_s=f["crossed_s"],
                crossing_queues=f["crossing_queues"],
                crossing_timing_s=f["crossing_timing_s"],
                first_late_s=f["first_late_s"],
                second_late_s=f["second_late_s"],
                first_green_per_seed=f["first_green"],
            )
    _against_preemption(rows)
    return {
        "policies": rows,
        "real_time_factor": round(data["simulated_s"] / data["wall_s"], 1),
        "per_seed_travel_time_s": {
            p: [round(t, 1) for t in f["travel_time_s"]]
            for p, f in data["policies"].items()
            if "travel_time_s" in f
        },
    }


def _others_extra(f: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """Other traffic's extra vehicle-seconds seed by seed against no priority on the same
    seed: their standard error, and their mean on the seeds where more vehicles were
    teleported than without priority (a jam held one for SUMO's time to teleport) against
    the rest. Tells a cost from the spread of a saturated network's jams."""
    extras = [
        cost - base for cost, base in zip(f["others_veh_s"], without["others_veh_s"], strict=True)
    ]
    jammed: list[float] = []
    rest: list[float] = []
    for extra, mine, theirs in zip(extras, f["teleports"], without["teleports"], strict=True):
        (jammed if mine > theirs else rest).append(extra)
    spread = _standard_error(extras)
    return {
        "others_extra_per_seed_veh_s": [round(x) for x in extras],
        "others_extra_se_veh_s": round(spread) if math.isfinite(spread) else None,
        "others_extra_jammed": _seeds_mean(jammed),
        "others_extra_rest": _seeds_mean(rest),
    }


def _against_preemption(rows: dict[str, dict[str, Any]]) -> None:
    """The corridor's other-traffic extra less local preemption's, seed by seed (the target
    is at most local preemption's): its mean and standard error, added to the corridor's row.
    Paired by seed, the jams both runs of a seed share drop out of the spread."""
    corridor, local = rows.get("corridor", {}), rows.get("local_preemption", {})
    key = "others_extra_per_seed_veh_s"
    if key not in corridor or key not in local:
        return
    differences = [c - p for c, p in zip(corridor[key], local[key], strict=True)]
    spread = _standard_error(differences)
    corridor["others_over_local_preemption"] = {
        "mean_veh_s": round(_mean(differences)),
        "se_veh_s": round(spread) if math.isfinite(spread) else None,
        "seeds": len(differences),
    }


def _standard_error(values: list[float]) -> float:
    """Of the mean of ``values`` (seed by seed); nan for fewer than two."""
    if len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _seeds_mean(extras: list[float]) -> dict[str, int] | None:
    return {"seeds": len(extras), "mean_veh_s": round(_mean(extras))} if extras else None


def _flushed_ahead(outcome: Outcome) -> list[tuple[float, int]]:
    """Per stop line a corridor's window passed: the vehicles the cloud expected it to flush
    ahead of the ambulance, and those that left ahead of it from its green's start."""
    return [
        (journey.flush_estimate_veh[node], journey.ahead_at_green[node])
        for journey in outcome.journeys.values()
        for node in journey.flush_estimate_veh
        if node in journey.ahead_at_green
    ]


def _forecast_errors(outcome: Outcome, *, at_line: bool) -> list[tuple[float, float, bool]]:
    """``_line_errors`` of every stop line every ambulance passed, timed when it entered
    the link after it or (``at_line``) when it reached the stop line."""
    return [
        error
        for journey in outcome.journeys.values()
        for line in journey.trip.stop_lines
        if not at_line or (reached := _reached_s(journey, line)) is not None
        for error in _line_errors(journey, line, reached if at_line else None)
    ]


def _forecast_accuracy(errors: list[tuple[float, float, bool]]) -> dict[str, dict[str, float]]:
    """Per lead: the median and 90th percentile of the ETA's error (either way), its median
    (its bias: positive, later than forecast) and the share that came within the band."""
    out = {}
    for lead in FORECAST_LEADS_S:
        late = np.array([e for at, e, _ in errors if at == lead])
        inside = [ok for at, _, ok in errors if at == lead]
        if late.size:
            out[f"{lead:.0f}"] = _errors(late) | {"in_band": round(float(np.mean(inside)), 2)}
    return out


def _late_errors(seeds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``_errors`` of the first (or the second) to cross's ETA at the crossing over the
    seeds, per lead."""
    out = {}
    for lead in (f"{x:.0f}" for x in FORECAST_LEADS_S):
        late = np.array([seed.get(lead, math.nan) for seed in seeds])
        if np.isfinite(late).any():
            out[lead] = _errors(late[np.isfinite(late)])
    return out


def _errors(late: np.ndarray) -> dict[str, float]:
    """How far off ETAs were (``late``: arrival less forecast): the median and 90th
    percentile either way, and the median (positive: later than forecast)."""
    return {
        "median_abs_s": round(float(np.median(np.abs(late))), 1),
        "p90_abs_s": round(float(np.percentile(np.abs(late), 90)), 1),
        "median_s": round(float(np.median(late)), 1),
        "stop_lines": int(late.size),
    }


def _medians(seeds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the seeds that have it."""
    keys = {key for seed in seeds for key in seed}
    return {
        key: round(float(np.nanmedian([seed.get(key, math.nan) for seed in seeds])), 1)
        for key in sorted(keys)
    }


def _expected_over_left(pairs: list[tuple[float, int]]) -> dict[str, float]:
    """The queues the corridor's windows flushed ahead of its vehicles, per stop line: what
    the cloud expected (the medians over every stop line of every seed), what left ahead of
    the vehicle from its green's start, and the median of the one over the other (where
    any did)."""
    expected, left = (np.array(column, dtype=np.float64) for column in zip(*pairs, strict=True))
    some = left > 0
    ratio = float(np.median(expected[some] / left[some])) if bool(np.any(some)) else math.nan
    return {
        "expected_veh": round(float(np.median(expected)), 1),
        "left_veh": round(float(np.median(left)), 1),
        "ratio": round(ratio, 2),
        "stop_lines": len(pairs),
    }


def _crossing_lines(journeys: dict[str, Journey]) -> dict[str, StopLineDelay]:
    """Each ambulance's stop line at the intersection all their routes share (none where
    they share none, or more than one)."""
    lines = {
        name: {ln.intersection: ln for ln in j.trip.stop_lines} for name, j in journeys.items()
    }
    shared = set.intersection(*(set(by_node) for by_node in lines.values()))
    if len(shared) != 1:
        return {}
    (crossing,) = shared
    return {name: by_node[crossing] for name, by_node in lines.items()}


def _left_crossing(journeys: dict[str, Journey]) -> dict[str, float]:
    """When each ambulance left the stop line of the intersection all their routes share."""
    lines = _crossing_lines(journeys)
    return {name: lines[name].left_s if lines else math.nan for name in journeys}


def _late_alone(journeys: dict[str, Journey]) -> dict[str, dict[str, float]]:
    """Per ambulance alone, how much later it got to the crossing than its corridor's ETA
    said, per lead of ``FORECAST_LEADS_S``: how well the cloud knows an unhindered arrival
    there (with the other ambulance, the second's ETA is its turn after the first)."""
    return {
        name: _late_at(journeys[name], line) for name, line in _crossing_lines(journeys).items()
    }


def crossing_cost(both: dict[str, Any], solo: dict[str, Any]) -> dict[str, Any]:
    """What the crossing cost the second to cross: per seed its trip with both corridors less
    its trip with the other ambulance taken out of the same seed (advice upstream, a wait at
    the crossing, the queue its window had to flush first: all of it, and nothing it would
    have lost anyway), and the two trips' extra together. Beside it, the least it could
    have lost at the crossing with the first crossing when it did (``_second_earliest``: the
    clearance and the queue ahead of it at saturation flow) against when it crossed alone;
    and how much sooner than the first it got there alone (positive: the corridors' order,
    chosen from ETAs, was the wrong one in hindsight)."""
    alone = dict(zip(solo["seed"], solo["solo_trips_s"], strict=True))
    crossed = dict(zip(solo["seed"], solo["solo_crossed_s"], strict=True))
    second, together, at, least, sooner = [], [], [], [], []
    for seed, name, trips, passed, earliest in zip(
        both["seed"],
        both["second"],
        both["trips_s"],
        both["crossed_s"],
        both["second_earliest_s"],
        strict=True,
    ):
        if seed in alone and name:
            second.append(trips[name] - alone[seed][name])
            together.append(sum(trips[n] - alone[seed][n] for n in trips))
            at.append(passed[name] - crossed[seed][name])
            least.append(max(0.0, earliest - crossed[seed][name]))
            sooner.append(-_due_gap(crossed[seed], name))
    finite = [x for x in second if math.isfinite(x)]
    larger, bound = _crossing_bound(both, crossed)
    _, banded = _crossing_bound(both, crossed, band_s=CorridorSettings().margin_s)
    return {
        "second_extra_s": [round(x, 1) for x in second],
        "mean_s": round(_mean(second), 1),
        "median_s": round(float(np.median(finite)), 1) if finite else math.nan,
        "both_extra_s": round(_mean(together), 1),
        "at_crossing_s": [round(x, 1) for x in at],
        "at_crossing_mean_s": round(_mean(at), 1),
        "least_s": [round(x, 1) for x in least],
        "least_mean_s": round(_mean(least), 1),
        "sooner_alone_s": [round(x, 1) for x in sooner],
        "larger_at_crossing_s": [round(x, 1) for x in larger],
        "larger_at_crossing_mean_s": round(_mean(larger), 1),
        "any_timing_s": [round(x, 1) for x in bound],
        "any_timing_mean_s": round(_mean(bound), 1),
        "any_timing_banded_s": [round(x, 1) for x in banded],
        "any_timing_banded_mean_s": round(_mean(banded), 1),
        "bound_timing": _bound_timing(both, crossed, DEFAULT_LOST_TIME_S),
        "due_gap_s": [round(x, 1) for x in _due_gaps(both, crossed)],
        "second_parts": _second_parts(both, crossed),
    }


def _second_parts(
    both: dict[str, Any], crossed_alone: dict[int, dict[str, float]]
) -> list[dict[str, float]]:
    """Per seed with a solo run: the second to cross's loss there split into its parts, which
    add up to it: how long after it was due alone the first passed (positive: the order was
    the wrong one), from then until its own green (the first's window after it passed and the
    clearance), the start-up, the cars ahead of it leaving, then itself; with how long before
    it was due the first was, and the first's green (``_first_green``)."""
    parts = []
    for seed, name, passed, green in zip(
        both["seed"], both["second"], both["crossed_s"], both["first_green_per_seed"],
        strict=True,
    ):  # fmt: skip
        alone = crossed_alone.get(seed)
        if alone is None or not name or not green:
            continue
        (first,) = set(passed) - {name}
        parts.append(
            {
                "due_gap_s": _due_gap(alone, name),
                "loss_s": passed[name] - alone[name],
                "order_s": passed[first] - alone[name],
                "to_green_s": green["second_green_after_s"],
                "start_up_s": green["second_start_up_s"],
                "ahead_veh": green["second_ahead_veh"],
                "queue_s": green["second_queue_s"],
                "after_s": green["second_after_s"],
                "first_green_s": green["green_s"],
                "first_ahead_veh": green["ahead_veh"],
            }
        )
    return parts


def _due_gaps(both: dict[str, Any], crossed_alone: dict[int, dict[str, float]]) -> list[float]:
    """Per seed of ``_crossing_bound``'s: how long after the first to cross the second was due
    there alone (negative: it was due sooner)."""
    return [_due_gap(seed.alone, seed.second) for seed in _bound_seeds(both, crossed_alone)]


def _due_gap(alone: dict[str, float], second: str) -> float:
    """How long after the first to cross the second was due there alone (``alone``: when
    each left it alone; negative: it was due sooner, the order the wrong one in hindsight)."""
    (first,) = set(alone) - {second}
    return alone[second] - alone[first]


def _crossing_bound(
    both: dict[str, Any],
    crossed_alone: dict[int, dict[str, float]],
    *,
    band_s: float = 0.0,
    start_up_s: float = DEFAULT_LOST_TIME_S,
    known_at: str | None = None,
    known: tuple[str, ...] = ("first",),
    late_alone: dict[int, dict[str, dict[str, float]]] | None = None,
) -> tuple[list[float], list[float]]:
    """Per seed, the larger of the two ambulances' losses at the crossing (their passing
    there less their passing alone), and the least any timing of the crossing's signal could
    have made it with the traffic that came (``simulator/crossing.py``, ``_bound_seeds``)."""
    larger, bound = [], []
    for seed in _bound_seeds(
        both, crossed_alone, band_s=band_s, known_at=known_at, known=known, late_alone=late_alone
    ):
        larger.append(max(seed.crossed[name] - seed.alone[name] for name in seed.names))
        first, second = seed.approaches
        bound.append(least_larger_delay(first, second, since_s=seed.since_s, start_up_s=start_up_s))
    return larger, bound


@dataclass(frozen=True, slots=True)
class _BoundSeed:
    """One seed's crossing as the bound sees it."""

    names: tuple[str, str]
    approaches: tuple[Approach, Approach]
    since_s: float
    crossed: dict[str, float]
    """When each left the crossing in the run."""
    alone: dict[str, float]
    """When each left it alone (its due time)."""
    second: str
    """The second to cross in the run."""


def _bound_seeds(
    both: dict[str, Any],
    crossed_alone: dict[int, dict[str, float]],
    *,
    band_s: float = 0.0,
    known_at: str | None = None,
    known: tuple[str, ...] = ("first",),
    late_alone: dict[int, dict[str, dict[str, float]]] | None = None,
) -> list[_BoundSeed]:
    """Per seed with both runs: the two ambulances' approaches, each due when it passed
    alone, the vehicles of its queue from ``BOUND_SINCE_S`` before the sooner of them; with
    ``band_s``, each ambulance's green held that long before it, its queue gone (a timing
    that knows its arrival only to the corridors' margin); with ``known_at`` (a lead of
    ``FORECAST_LEADS_S``), those ``known`` ("first", "second": to cross) held instead by how
    far their corridor's ETA that long before was off, that seed (NaN: ``band_s``); with
    ``late_alone`` too, each by how far its ETA was off when it drove alone (``_late_alone``):
    what the cloud knew of the unhindered arrival the bound is due at."""
    seeds = []
    # the first's were kept from 2026-12-06 on, the second's from 2026-12-07
    none: list[dict[str, float]] = [{}] * len(both["seed"])
    lates = zip(both.get("first_late_s") or none, both.get("second_late_s") or none, strict=True)
    for seed, crossed, queues, (least_green, clearance), second, late in zip(
        both["seed"], both["crossed_s"], both["crossing_queues"], both["crossing_timing_s"],
        both["second"], lates, strict=True,
    ):  # fmt: skip
        alone = crossed_alone.get(seed)
        if alone is None or len(queues) != 2:
            continue
        names = tuple(queues)
        # per ambulance, how late it came against its ETAs: in this run (by its role there)
        # or alone
        if late_alone is None:
            in_run = dict(zip(("first", "second"), late, strict=True))
            roles = {name: "second" if name == second else "first" for name in names}
            by_name = {name: in_run[roles[name]] for name in names if roles[name] in known}
        else:
            by_name = {name: late_alone.get(seed, {}).get(name, {}) for name in names}
        bands = {name: abs(by_name[name].get(known_at, math.nan)) for name in by_name if known_at}
        first, other = (
            Approach(
                np.array(queues[name]["arrivals_s"]),
                alone[name],
                queues[name]["headway_s"],
                least_green,
                clearance,
                band_s=_band(bands.get(name, math.nan), band_s),
            )
            for name in names
        )
        since = min(first.due_s, other.due_s) - BOUND_SINCE_S
        seeds.append(
            _BoundSeed((names[0], names[1]), (first, other), since, crossed, alone, second)
        )
    return seeds


def _band(known: float, otherwise: float) -> float:
    return known if math.isfinite(known) else otherwise


def _bound_timing(
    both: dict[str, Any], crossed_alone: dict[int, dict[str, float]], start_up_s: float
) -> dict[str, float]:
    """What the bound's timing of the crossing (``crossing_schedule``) did, to hold the
    corridors' (``_first_green``) against, medians over seeds: the first it let through's
    green from its onset until the first left, the vehicles ahead of it there, the green the
    other approach had just before it; the second's green after the first left and the
    vehicles ahead of it; and on how many seeds it let the same one through first as the
    corridors did."""
    figures, same = [], 0
    for seed in _bound_seeds(both, crossed_alone):
        greens = crossing_schedule(*seed.approaches, since_s=seed.since_s, start_up_s=start_up_s)
        if not greens:
            continue
        own = [max(i for i, g in enumerate(greens) if g.approach == k) for k in (0, 1)]
        first, second = (own[0], own[1]) if own[0] < own[1] else (own[1], own[0])
        opened = max(greens[first].start_s, seed.since_s)
        before = greens[first - 1] if first > 0 else None
        same += seed.names[greens[first].approach] != seed.second
        figures.append(
            {
                "green_s": greens[first].last_left_s - opened,
                "ahead_veh": float(greens[first].vehicles - 1),
                "other_before_s": before.last_left_s - max(before.start_s, seed.since_s)
                if before is not None
                else 0.0,
                "second_green_after_s": greens[second].start_s - greens[first].last_left_s,
                "second_ahead_veh": float(greens[second].vehicles - 1),
            }
        )
    return {**_medians(figures), "same_first": float(same), "seeds": float(len(figures))}


def banded_bounds(results: dict[str, Any], start_up_s: float) -> str:
    """Per engine of a run's JSON with ``grid`` and ``grid-solo``: the least any timing of
    the crossing could make the larger loss there when it knows each ambulance's arrival
    exactly or to 1, 2 or 3 s (``Approach.band_s``), and as well as their corridors knew them
    ``COMMIT_LEAD_S`` before (the first's; both), or each's when it drove alone
    ``ALONE_LEADS_S`` before; and known
    exactly where neither may stop (``least_larger_delay_without_stops``, a minute or two);
    mean and seeds over 10 s."""
    rows = [f"the crossing bound at a {start_up_s:.1f} s start-up, by how well arrivals are known"]
    for engine, run in results["cases"].get("grid", {}).items():
        solo = results["cases"]["grid-solo"][engine]["policies"]["corridor"]
        crossed = dict(zip(solo["seed"], solo["solo_crossed_s"], strict=True))
        both = run["policies"]["corridor"]
        cells = []
        for band_s in BANDS_S:
            _, bound = _crossing_bound(both, crossed, band_s=band_s, start_up_s=start_up_s)
            over = sum(x > 10.0 for x in bound)
            cells.append(f"{band_s:.0f} s: {_mean(bound):.1f} s ({over} over 10 s)")
        rolling = [
            least_larger_delay_without_stops(
                *seed.approaches, since_s=seed.since_s, start_up_s=start_up_s
            )
            for seed in _bound_seeds(both, crossed)
        ]
        over = sum(x > 10.0 for x in rolling)
        cells.append(
            f"exactly, neither stopping (slowed instead, and overtaken): {_mean(rolling):.1f} s "
            f"({over} over 10 s)"
        )
        lead = f"{COMMIT_LEAD_S:.0f}"
        for known, said in (
            (("first",), f"the first's as its ETA {lead} s before, the second's exactly"),
            (("first", "second"), f"both as their ETAs {lead} s before"),
        ):
            if not all(f"{role}_late_s" in both for role in known):
                continue
            _, bound = _crossing_bound(
                both, crossed, start_up_s=start_up_s, known_at=lead, known=known
            )
            over = sum(x > 10.0 for x in bound)
            cells.append(f"{said}: {_mean(bound):.1f} s ({over} over 10 s)")
        late_alone = (
            dict(zip(solo["seed"], solo["solo_late_s"], strict=True))
            if "solo_late_s" in solo
            else {}
        )
        for ahead in ALONE_LEADS_S if late_alone else ():
            _, bound = _crossing_bound(
                both, crossed, start_up_s=start_up_s, known_at=ahead, late_alone=late_alone
            )
            over = sum(x > 10.0 for x in bound)
            cells.append(
                f"each as its ETA {ahead} s before when it drove alone: "
                f"{_mean(bound):.1f} s ({over} over 10 s)"
            )
        rows.append(f"  {engine}: " + "; ".join(cells))
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--first-seed", type=int, default=1, help="seeds FIRST_SEED to FIRST_SEED + SEEDS - 1"
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes (one SUMO each)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=[e.value for e in Engine],
        default=[e.value for e in Engine],
        help="one only where the other's side did not change (SUMO's is deterministic)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=[p.value for p in COMPARED],
        default=[p.value for p in COMPARED],
        help="of the cases with traffic but ingolstadt21 (whose study runs all three)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument(
        "--bounds-from",
        type=Path,
        help="run nothing: from a JSON this benchmark wrote with grid and grid-solo, the "
        "crossing bound with ETA bands of 0-3 s at --start-up",
    )
    parser.add_argument("--start-up", type=float, default=DEFAULT_LOST_TIME_S)
    parser.add_argument(
        "--report-from",
        type=Path,
        help="run nothing: the report (and the trade-off's plot, into --out) again from a JSON "
        "this benchmark wrote",
    )
    args = parser.parse_args()
    if args.bounds_from is not None:
        saved = json.loads(args.bounds_from.read_text(), object_hook=_nan_where_null)
        print(banded_bounds(saved, args.start_up))
        return 0
    if args.report_from is not None:
        saved = json.loads(args.report_from.read_text(), object_hook=_nan_where_null)
        for engines in saved["cases"].values():  # a JSON from before the pairing was kept
            for engine in engines.values():
                _against_preemption(engine["policies"])
        _report(saved["cases"], saved["seeds"], args.out)
        return 0
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    tasks: list[tuple[str, str, list[int], list[str]]] = []
    for case in args.cases:
        for engine in args.engines:
            if case == "ingolstadt21":  # evaluate runs its seeds in one go
                tasks.append((case, engine, seeds, args.policies))
            else:
                tasks += [(case, engine, [seed], args.policies) for seed in seeds]
    tasks.sort(key=lambda task: (task[0] != "ingolstadt21", task[1] != "sumo"))  # longest first
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for case, engine, part in pool.map(_task, tasks):
            parts.setdefault((case, engine), []).append(part)
            print(f"  done {case} {engine} ({len(parts[(case, engine)])})", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    for (case, engine), found in parts.items():
        results.setdefault(case, {})[engine] = summarize(merge(found))
    for solo_case, key in SOLOS.items():
        for engine, solo in results.get(solo_case, {}).items():
            for case in GRIDS:
                if engine in results.get(case, {}):
                    corridor = results[case][engine]["policies"]["corridor"]
                    corridor[key] = crossing_cost(corridor, solo["policies"]["corridor"])
    args.out.mkdir(parents=True, exist_ok=True)  # first: the runs are kept if the report fails
    (args.out / "sumo_closed_loop.json").write_text(
        json_text({"seeds": args.seeds, "cases": results})
    )
    _report(results, args.seeds, args.out)
    return 0


def _report(results: dict[str, dict[str, Any]], seeds: int, out: Path) -> None:
    print(render(results, seeds))
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot_trade_off(results, out / "crossing_trade_off.png")
    if plotted is not None:
        print(f"{TRADE_OFF}: {plotted}")


NO_FIGURE = (
    "others_extra_veh_s",
    "others_extra_se_veh_s",
    "others_extra_jammed",
    "others_extra_rest",
)
"""The JSON's keys whose null means no figure; every other null was a number not finite
(``json_text`` writes nan as null)."""


def _nan_where_null(row: dict[str, Any]) -> dict[str, Any]:
    """A saved JSON object as ``summarize`` made it: nan where the JSON has null."""
    return {
        key: [math.nan if v is None else v for v in value] if isinstance(value, list)
        else math.nan if value is None and key not in NO_FIGURE
        else value
        for key, value in row.items()
    }  # fmt: skip


TARGET_LOSS_S = 10.0
"""Issue 13's targets at the grid's crossing: the larger loss there at most this, and..."""
TARGET_NEITHER_STOPS = 0.8
"""...neither ambulance stopping there on at least this share of seeds."""
TRADE_OFF = "the crossing's trade between stops and delay"


def trade_off(results: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, float, float]]]:
    """Per engine, each of ``GRIDS`` run beside ``grid-solo``: (case, share of seeds on which
    neither ambulance stopped at the crossing, the larger loss there), by that share; none
    where no engine ran two of them (no trade to show)."""
    points: dict[str, list[tuple[str, float, float]]] = {}
    for case in GRIDS:
        for engine, run in results.get(case, {}).items():
            corridor = run["policies"]["corridor"]
            if "crossing_cost" in corridor:
                point = (
                    case,
                    float(corridor["neither_stops_share"]),
                    float(corridor["crossing_cost"]["larger_at_crossing_mean_s"]),
                )
                points.setdefault(engine, []).append(point)
    if not any(len(found) >= 2 for found in points.values()):
        return {}
    return {engine: sorted(found, key=lambda p: p[1]) for engine, found in points.items()}


def say_trade_off(points: dict[str, list[tuple[str, float, float]]]) -> str:
    """The verdict on the trade: per engine, whether any setting meets both crossing targets,
    and the least loss among those that keep the stops target."""
    said = []
    for engine, found in points.items():
        both = [p for p in found if p[1] >= TARGET_NEITHER_STOPS and p[2] <= TARGET_LOSS_S]
        keeping = [p for p in found if p[1] >= TARGET_NEITHER_STOPS]
        least = min(found, key=lambda p: p[2])
        clause = (
            f"{engine}: {len(both)} of {len(found)} settings meet both; "
            f"least loss {least[2]:.1f} s ({least[0]}, neither stops {least[1]:.0%})"
        )
        if keeping:
            best = min(keeping, key=lambda p: p[2])
            clause += f", least with the stops target kept {best[2]:.1f} s ({best[0]})"
        said.append(clause)
    return f"{TRADE_OFF}: " + "; ".join(said)


def plot_trade_off(results: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """The larger loss at the crossing against the share of seeds on which neither ambulance
    stopped there, one line per engine through the advice settings run, the targets' corner
    shaded: where no line enters it, the two targets pull against each other. Dashed, the
    crossing bound (the traffic that came known, a stop allowed): not a physical limit the
    targets lie beyond. None where fewer than two settings were run beside ``grid-solo``."""
    points = trade_off(results)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5), layout="constrained")
    ax.fill_between(
        [100 * TARGET_NEITHER_STOPS, 102.0], 0.0, TARGET_LOSS_S, color="#0b5d1e", alpha=0.15,
        label="both targets",
    )  # fmt: skip
    for engine, found in points.items():
        shares = [100 * p[1] for p in found]
        losses = [p[2] for p in found]
        (line,) = ax.plot(shares, losses, marker="o", label=engine)
        cost = results.get("grid", {}).get(engine, {}).get("policies", {}).get("corridor", {})
        bound = cost.get("crossing_cost", {}).get("any_timing_mean_s")
        if bound is not None:
            ax.axhline(bound, color=line.get_color(), linestyle="--", linewidth=1.0,
                       label=f"{engine}: the least any timing could, stops allowed")  # fmt: skip
        for case, share, loss in found:
            ax.annotate(case.removeprefix("grid-") if case != "grid" else "grid (5 m/s)",
                        (100 * share, loss), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
    ax.set_xlim(-2.0, 102.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("seeds on which neither ambulance stops at the crossing (%)")
    ax.set_ylabel("the larger loss at the crossing (s)")
    ax.set_title(TRADE_OFF, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    plt.close(fig)
    return path


def _forecast_row(engines: dict[str, Any], policy: str, key: str, what: str) -> list[str]:
    """One report line of ``_errors`` per lead (``key``: ``forecasts``, ``first_late`` or
    ``second_late``), the engines side by side; none where no engine has them."""
    band = ", share within the band" if key in ("forecasts", "at_line") else ""
    return _per_engine(
        engines, policy, key, f"{what} (median / 90th percentile error, median late{band})",
        lambda by_lead: ", ".join(
            f"{lead} s before {a['median_abs_s']:.1f} / {a['p90_abs_s']:.1f} s "
            f"({a['median_s']:+.1f}" + (f"; {a['in_band']:.0%})" if "in_band" in a else ")")
            for lead, a in by_lead.items()
        ),
    )  # fmt: skip


def _per_engine(
    engines: dict[str, Any],
    policy: str,
    key: str,
    what: str,
    say: Callable[[dict[str, Any]], str],
) -> list[str]:
    """One report line: ``what``, then per engine that has figures ``key`` what ``say`` makes
    of them; none where no engine has them."""
    cells = [
        f"{name}: {say(figures)}"
        for name, e in engines.items()
        if (figures := e["policies"][policy].get(key))
    ]
    return [f"    {what}, " + "; ".join(cells)] if cells else []


def _say_others(row: dict[str, Any]) -> str:
    """Other traffic's extra vehicle-seconds and, seed by seed, its standard error."""
    extra, spread = row.get("others_extra_veh_s"), row.get("others_extra_se_veh_s")
    if extra is None:
        return ""
    return f"{extra:+,d}" + (f" ({spread:,d})" if spread is not None else "")


def _say_jammed(row: dict[str, Any]) -> str:
    jammed, rest = row["others_extra_jammed"], row.get("others_extra_rest")
    said = f"{jammed['mean_veh_s']:+,d} veh-s on {jammed['seeds']} seeds"
    return said + (f", {rest['mean_veh_s']:+,d} on the other {rest['seeds']}" if rest else "")


def _say_bound_timing(timing: dict[str, float]) -> str:
    return (
        f"the first's green {timing['green_s']:.0f} s before it left, "
        f"{timing['ahead_veh']:.0f} vehicles ahead of it, after {timing['other_before_s']:.0f} s "
        f"of green for the other approach; the second's green "
        f"{timing['second_green_after_s']:.0f} s after the first left, "
        f"{timing['second_ahead_veh']:.0f} vehicles ahead of it; the same one first as the "
        f"corridors on {timing['same_first']:.0f} of {timing['seeds']:.0f} seeds"
    )


def _say_sooner(cost: dict[str, Any]) -> str:
    """Where the second to cross would have got there first alone, and what it lost there."""
    sooner = [
        loss
        for ahead, loss in zip(cost["sooner_alone_s"], cost["at_crossing_s"], strict=True)
        if ahead > 0.0
    ]
    seeds = len(cost["at_crossing_s"])
    said = f"alone, it came sooner than the first on {len(sooner)} of {seeds} seeds"
    return said + (f", losing {_mean(sooner):.1f} s there at the crossing" if sooner else "")


def _by_tie(rows: Iterable[tuple[float, _T]]) -> tuple[list[_T], list[_T]]:
    """Per seed's (due gap, item): the items of the seeds whose order was a near tie
    (``NEAR_TIE_S``), and those of the others."""
    near: list[_T] = []
    other: list[_T] = []
    for gap, item in rows:
        (near if gap < NEAR_TIE_S else other).append(item)
    return near, other


def _say_ties(cost: dict[str, Any]) -> str:
    """The larger loss at the crossing, and the least any timing could make it, on the seeds
    where the order was a near tie (``NEAR_TIE_S``) and on the others."""
    gaps = cost.get("due_gap_s")
    if not gaps:
        return ""
    rows = zip(gaps, cost["larger_at_crossing_s"], cost["any_timing_s"], strict=True)
    near, other = _by_tie((gap, (larger, bound)) for gap, larger, bound in rows)

    def said(pairs: list[tuple[float, float]]) -> str:
        larger, bound = (_mean([pair[i] for pair in pairs]) for i in (0, 1))
        return f"{larger:.1f} s (any timing {bound:.1f} s)"

    return (
        f"; the larger loss on the {len(near)} seeds where the order was a near tie (the "
        f"second due alone within {NEAR_TIE_S:.0f} s after the first, or sooner) "
        f"{said(near) if near else '-'}, on the other {len(other)} {said(other) if other else '-'}"
    )


def _say_parts(cost: dict[str, Any]) -> str:
    """Where the second's loss at the crossing goes, near ties (``NEAR_TIE_S``) and the
    others apart (``_second_parts``)."""
    near, other = _by_tie((part["due_gap_s"], part) for part in cost.get("second_parts", []))

    def said(parts: list[dict[str, float]]) -> str:
        m = {key: _mean([p[key] for p in parts]) for key in parts[0]}
        return (
            f"{m['loss_s']:.1f} s = the first passing {m['order_s']:+.1f} s from when it was "
            f"due + {m['to_green_s']:.1f} s to its green + {m['start_up_s']:.1f} s start-up + "
            f"{m['queue_s']:.1f} s for the {m['ahead_veh']:.1f} cars ahead + "
            f"{m['after_s']:.1f} s after them (the first's green {m['first_green_s']:.0f} s "
            f"for {m['first_ahead_veh']:.0f} cars)"
        )

    rows = [f"{label} {said(parts)}" for label, parts in (
        (f"on the {len(near)} near ties", near), (f"on the other {len(other)}", other),
    ) if parts]  # fmt: skip
    return "; the second's loss at the crossing " + ", ".join(rows) if rows else ""


def render(results: dict[str, dict[str, Any]], seeds: int) -> str:
    rows = [f"closed loop, our engine and SUMO micro side by side ({seeds} seeds)"]
    gaps: list[float] = []
    for case, engines in results.items():
        if case in SOLOS:  # their trips are the grid's yardsticks (``crossing_cost``)
            continue
        rows += ["", f"  {case}", _header(engines)]
        for policy in next(iter(engines.values()))["policies"]:
            rows.append(_policy_row(engines, policy, gaps))
            rows += _jams_row(engines, policy) + _preemption_row(engines, policy)
            rows += _crossing_rows(engines, policy)
        if "sumo" in engines:
            sumo = engines["sumo"]
            teleports = sum(p["teleports"] for p in sumo["policies"].values())
            rows.append(
                f"  SUMO closed loop: {sumo['real_time_factor']:.0f}x real time; "
                f"{teleports} vehicles teleported"
            )
    rows += ["", f"verdict: in SUMO micro {_say_sumo(results)}{_say_gaps(gaps)}"]
    points = trade_off(results)
    if points:
        rows.append(f"verdict: {say_trade_off(points)}")
    return "\n".join(rows)


def _header(engines: dict[str, Any]) -> str:
    cells = " ".join(
        f"{e + ' s':>10} {'x free':>7} {'stops':>6} {'others +veh-s (se)':>22}" for e in engines
    )
    return f"  {'policy':18} {cells} {'sumo/ours':>10}"


def _policy_row(engines: dict[str, Any], policy: str, gaps: list[float]) -> str:
    """One policy's trip in each engine and their ratio (added to ``gaps``)."""
    cells = []
    for engine in engines.values():
        p = engine["policies"][policy]
        cells.append(
            f"{p['travel_time_s']:10.1f} {p['x_free_flow']:7.3f} {p['stops']:6.2f} "
            + f"{_say_others(p):>22}"
        )
    ratio = math.nan
    if "ours" in engines and "sumo" in engines:
        ratio = (
            engines["sumo"]["policies"][policy]["travel_time_s"]
            / engines["ours"]["policies"][policy]["travel_time_s"]
        )
        gaps.append(abs(ratio - 1.0))
    return f"  {policy:18} " + " ".join(cells) + f" {ratio:10.3f}"


def _preemption_row(engines: dict[str, Any], policy: str) -> list[str]:
    said = [
        f"{name}: {d['mean_veh_s']:+,d} veh-s"
        + (f" (se {d['se_veh_s']:,d})" if isinstance(d["se_veh_s"], int) else "")
        + f" on {d['seeds']} seeds"
        for name, e in engines.items()
        if (d := e["policies"][policy].get("others_over_local_preemption"))
    ]
    if not said:
        return []
    return [
        "    other traffic's extra, the corridor's less local preemption's seed by seed "
        "(the target: at most 0), " + "; ".join(said)
    ]


def _jams_row(engines: dict[str, Any], policy: str) -> list[str]:
    jams = [
        f"{name}: {_say_jammed(row)}"
        for name, e in engines.items()
        if (row := e["policies"][policy]).get("others_extra_jammed")
    ]
    if not jams:
        return []
    return [
        "    other traffic's extra on the seeds where more vehicles were teleported "
        "than without priority (a jam held each for SUMO's time to teleport), and "
        "on the rest, " + "; ".join(jams)
    ]


def _crossing_rows(engines: dict[str, Any], policy: str) -> list[str]:
    """The grid's lines on the crossing, each engine's figures side by side."""
    rows = []
    crossing = [
        f"{name}: the second loses {p['second_loss_s']:.1f} s on its last link, "
        f"{p['second_upstream_s']:.1f} s on its last two (least possible "
        f"{p['second_floor_s']:.1f} s), neither stops on {p['neither_stops_share']:.0%} of "
        f"seeds, both trips {p['both_trips_s']:.1f} s"
        for name, e in engines.items()
        if "second_loss_s" in (p := e["policies"][policy])
    ]
    if crossing:
        rows.append("    at the crossing, " + "; ".join(crossing))
    rows += _forecast_row(
        engines, policy, "first_late", "the first to cross's ETA there against when it came"
    )
    rows += _forecast_row(
        engines, policy, "second_late", "the second's ETA there against when it came"
    )
    rows += _per_engine(
        engines, policy, "first_green", "the first's green at the crossing (medians)",
        lambda g: (
            f"{g['green_s']:.0f} s before it left, {g['ahead_veh']:.0f} vehicles ahead "
            f"of it; its queue gone after "
            f"{g['queue_gone_s']:.0f} s (departures paused {PAUSE_S:.0f} s), "
            f"{g['after_veh']:.0f} more came and left, none in its last "
            f"{g['idle_s']:.0f} s; the second's green {g['second_green_after_s']:.0f} s "
            f"after the first left, {g['second_ahead_veh']:.0f} vehicles ahead of it"
        ),
    )  # fmt: skip
    rows += _per_engine(
        engines, policy, "crossing_cost",
        "the bound's timing of the crossing, the traffic that came known (medians)",
        lambda cost: _say_bound_timing(cost["bound_timing"]),
    )  # fmt: skip
    rows += _per_engine(
        engines, policy, "ahead_veh", "the queues its windows flush ahead of it",
        lambda a: (
            f"the cloud expected {a['expected_veh']:.1f} vehicles a stop line (median), "
            f"{a['left_veh']:.1f} left ahead of the vehicle from its green's start; "
            f"{a['ratio']:.2f}x ({a['stop_lines']} stop lines)"
        ),
    )  # fmt: skip
    rows += _forecast_row(
        engines,
        policy,
        "forecasts",
        "its ETAs against when it entered the link after the stop line",
    )
    rows += _forecast_row(
        engines, policy, "at_line", "... and against when it reached the stop line"
    )
    cost = [
        f"{name}: {_say_crossing_cost(c)}"
        for name, e in engines.items()
        if (c := e["policies"][policy].get("crossing_cost")) and c["second_extra_s"]
    ]
    if cost:
        rows.append(
            "    the second's trip less its trip alone (target: at most 10 s), " + "; ".join(cost)
        )
    rows += _per_engine(
        engines, policy, SAME_LEAD,
        "like for like, against each trip alone with the meeting's lead all the way "
        "(grid-solo-same-lead)",
        lambda c: (
            f"the larger loss at the crossing {c['larger_at_crossing_mean_s']:.1f} s, the "
            f"second's trip {c['mean_s']:.1f} s, both {c['both_extra_s']:.1f} s"
        ),
    )  # fmt: skip
    return rows


def _say_crossing_cost(c: dict[str, Any]) -> str:
    return (
        f"{c['mean_s']:.1f} s (median {c['median_s']:.1f}; per seed "
        f"{min(c['second_extra_s']):.1f} to {max(c['second_extra_s']):.1f}), both "
        f"{c['both_extra_s']:.1f} s; of it at the crossing {c['at_crossing_mean_s']:.1f} s "
        f"(the least, the first crossing when it did: {c['least_mean_s']:.1f} s), after "
        f"it {c['mean_s'] - c['at_crossing_mean_s']:.1f} s; the larger of the two at "
        f"the crossing {c['larger_at_crossing_mean_s']:.1f} s, the least any timing of "
        f"it could make that with the traffic that came {c['any_timing_mean_s']:.1f} s "
        f"({c['any_timing_banded_mean_s']:.1f} s with each green held the corridors' "
        f"margin before its ambulance); {_say_sooner(c)}{_say_ties(c)}{_say_parts(c)}"
    )


def _say_sumo(results: dict[str, dict[str, Any]]) -> str:
    """SUMO's corridor against free flow, in traffic and alone, and its ceilings."""
    corridor = {
        case: e["sumo"]["policies"]["corridor"]["x_free_flow"]
        for case, e in results.items()
        if "sumo" in e and "x_free_flow" in e["sumo"]["policies"].get("corridor", {})
    }
    ceiling = {
        case.removesuffix("-ceiling"): e["sumo"]["policies"]["green_all_the_way"]["x_free_flow"]
        for case, e in results.items()
        if "sumo" in e and "green_all_the_way" in e["sumo"]["policies"]
    }
    traffic = [x for case, x in corridor.items() if not case.endswith("-alone")]
    alone = [x for case, x in corridor.items() if case.endswith("-alone")]
    if traffic:
        said = f"the corridor takes {min(traffic):.2f}-{max(traffic):.2f}x free flow in traffic"
    elif any("sumo" in e for e in results.values()):
        said = "no corridor case ran"
    else:
        said = "nothing ran (--engines ours)"
    if alone:
        said += (
            f" and {min(alone):.2f}-{max(alone):.2f}x alone on the road (its driver's own "
            "ceiling: no signal timing does better)"
        )
    return said + "".join(
        f"; {case} with every signal green all the way {x:.2f}x (no signal control does "
        "better in that traffic)"
        for case, x in ceiling.items()
    )


def _say_gaps(gaps: list[float]) -> str:
    if not gaps:
        return "; one engine only: no comparison"
    return f"; the engines differ by up to {100 * max(gaps):.1f} % on a policy's mean trip"


if __name__ == "__main__":
    raise SystemExit(main())
