"""``citybrain evaluate``: the three policies (no priority, local preemption, corridor) on any
network and ambulance route, over several seeds of the same traffic.

A network is anything ``load_network`` accepts: ``arterial``, ``grid:RxC``, a network file of
ours, a SUMO ``.net.xml`` or ``.sumocfg``, or ``resco:NAME``. The ambulance's route is the
shortest one (free-flow time) between two edges (SUMO edge ids, or our link ids). Demand is:

- the scenario's own route files (a ``.sumocfg`` or ``resco:NAME``), by default;
- a SUMO route file (``--demand city.rou.xml``);
- a share of either (``--demand 50%``, ``--demand city.rou.xml@50%``);
- or our generated demand at a level (``--demand heavy``), on networks without route files.

Seeds change what is random: the vehicles' speed factors, which vehicles a share keeps, and
generated demand. The result is the demo's ``policies`` object (per ambulance when there are
several), every seed's trips, whether each corridor held or gave up, and the cost to everyone
else; ``render`` prints it with a verdict line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from citybrain import report
from citybrain.closed_loop import COMPARED, FLOW_WINDOW_S, Outcome, Policy, Setup, run_policy
from citybrain.demo import Comparison, summary
from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import ValidationError
from citybrain.simulator import sumo
from citybrain.simulator.cities import SumoScenario, resolve_scenario
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import Trips, fixed_route
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.routes import read_routes, shortest_route, sumo_edge_ids
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import (
    AMBULANCE_SPEED_FACTOR,
    Level,
    Scenario,
    build,
    load_network,
)

_SHARE = re.compile(r"(?:(?P<file>.+)@)?(?P<percent>\d+(?:\.\d+)?)%")
POLICY_NAMES = tuple(policy.value for policy in COMPARED)
"""The policies every evaluation runs, as its JSON names them."""
MAX_SHARE_PERCENT = 1000.0
"""The most a route file's demand is scaled to (``--demand file@1000%``)."""
DEFAULT_LEVEL = Level.MODERATE


class AmbulanceFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line of ``--ambulances FILE`` (a JSON list of these)."""

    name: str
    origin: str
    destination: str
    depart_s: float | None = None
    """Seconds after the run starts; default: the study's ``depart_s``."""


@dataclass(frozen=True, slots=True)
class Ambulance:
    name: str
    origin: str
    """Edge (SUMO id) or link (our id) it starts on."""
    destination: str
    depart_s: float

    def __post_init__(self) -> None:
        check_id("ambulance.name", self.name)
        check_number("ambulance.depart_s", self.depart_s, ge=0.0, le=7 * 86400.0)
        if self.origin == self.destination:
            raise ValidationError(
                "ambulance.destination", f"{self.name} starts where it ends: no trip to time"
            )


@dataclass(frozen=True)
class Study:
    """What to evaluate: a network, ambulances, demand, seeds, and how long to run."""

    network: str
    ambulances: tuple[Ambulance, ...]
    demand: str | None = None
    seeds: int = 5
    after_s: float = 1800.0
    """How long the run goes on after the last ambulance leaves."""
    dispatch_lead_s: float = 60.0
    engine: Engine = Engine.OURS
    """What moves the vehicles: our engine, or SUMO micro under the same controllers."""
    ceiling: bool = False
    """Run the ceiling too (``green_all_the_way``: every signal on the route green for the
    ambulance from dispatch): the best any signal control could do for it."""

    def __post_init__(self) -> None:
        if not self.ambulances:
            raise ValidationError("ambulances", "give at least one ambulance")
        check_count("seeds", self.seeds, ge=1, le=1000)
        check_number("after_s", self.after_s, gt=0.0, le=86400.0)
        check_number("dispatch_lead_s", self.dispatch_lead_s, ge=0.0, le=600.0)
        names = [a.name for a in self.ambulances]
        if len(set(names)) != len(names):
            raise ValidationError("ambulances", "ambulance names must be unique")
        first = min(a.depart_s for a in self.ambulances)
        earliest = self.dispatch_lead_s + FLOW_WINDOW_S + 1.0
        if first < earliest:
            raise ValidationError(
                "depart_s",
                f"an ambulance leaves at {first:g} s: leave at least {earliest:g} s into the run "
                "(dispatch lead, two minutes of flows for the cloud)",
            )


def read_ambulances(path: Path, *, depart_s: float) -> tuple[Ambulance, ...]:
    """``--ambulances FILE``: a JSON list of ``{name, origin, destination, depart_s?}``."""
    try:
        entries = msgspec.json.decode(Path(path).read_bytes(), type=list[AmbulanceFile])
    except OSError as error:
        raise ValidationError("ambulances", f"{path}: {error.strerror or error}") from None
    except msgspec.ValidationError as error:
        raise ValidationError("ambulances", f"{path}: {error}") from None
    except msgspec.DecodeError as error:
        raise ValidationError("ambulances", f"{path}: not valid JSON ({error})") from None
    return tuple(
        Ambulance(
            e.name, e.origin, e.destination, e.depart_s if e.depart_s is not None else depart_s
        )
        for e in entries
    )


@dataclass(frozen=True)
class _Place:
    """The loaded network and how its demand is made, shared by every seed."""

    road: RoadNetwork
    net: CompiledNetwork
    snet: sumo.SumoNet | None
    scenario: SumoScenario | None
    route_files: tuple[Path, ...]
    share: float
    level: Level | None
    routes: dict[str, tuple[str, ...]]
    """Ambulance -> its route (link ids)."""
    sumo_edges: frozenset[str] | None
    """Every edge id of the SUMO network (read once), to tell edges we left out from unknown
    ones in its route files."""


def _load(study: Study) -> _Place:
    scenario = resolve_scenario(study.network)
    snet = (
        sumo.read_net(scenario.net_file, begin_s=scenario.begin_s) if scenario is not None else None
    )
    road = snet.road if snet is not None else load_network(study.network)
    net = compile_network(road)
    files, share, level = _demand(study.demand, scenario)
    links: Mapping[str, str] = snet.link_of_edge if snet is not None else {}
    routes = {}
    for ambulance in study.ambulances:
        start, end = (
            _link(road, links, place) for place in (ambulance.origin, ambulance.destination)
        )
        routes[ambulance.name] = shortest_route(net, start, end)
    edges = sumo_edge_ids(snet.path) if snet is not None and files else None
    return _Place(road, net, snet, scenario, files, share, level, routes, edges)


def _link(road: RoadNetwork, link_of_edge: Mapping[str, str], place: str) -> str:
    if place in link_of_edge:
        return str(link_of_edge[place])
    if place in road.network.link_by_id:
        return place
    raise ValidationError(
        "route", f"{place!r} is neither an edge of the SUMO network we imported nor a link"
    )


def _demand(
    demand: str | None, scenario: SumoScenario | None
) -> tuple[tuple[Path, ...], float, Level | None]:
    """(route files, share of their vehicles kept, generated level) from ``--demand``."""
    own = scenario.route_files if scenario is not None else ()
    if demand is None:
        return (own, 1.0, None) if own else ((), 1.0, DEFAULT_LEVEL)
    if demand in {level.value for level in Level}:
        return (), 1.0, Level(demand)
    match = _SHARE.fullmatch(demand)
    if match is not None:
        percent = float(match["percent"])
        if not 0.0 < percent <= MAX_SHARE_PERCENT:
            raise ValidationError(
                "demand", f"{demand!r}: a share is over 0% and at most {MAX_SHARE_PERCENT:g}%"
            )
        share = percent / 100.0
        files = (Path(match["file"]),) if match["file"] else own
        if not files:
            raise ValidationError(
                "demand", f"{demand!r}: a share of what? this network has no route files"
            )
        return _existing(files), share, None
    return _existing((Path(demand),)), 1.0, None


def _existing(files: Sequence[Path]) -> tuple[Path, ...]:
    for path in files:
        if not path.is_file():
            raise ValidationError(
                "demand",
                f"{str(path)!r} is not a route file, a share (50%, FILE@50%) or a level "
                f"({', '.join(level.value for level in Level)})",
            )
    return tuple(files)


def _scenario(study: Study, place: _Place, seed: int) -> Scenario:
    duration = max(a.depart_s for a in study.ambulances) + study.after_s
    ambulances = [
        fixed_route(
            place.net,
            place.routes[a.name],
            depart_s=a.depart_s,
            name=a.name,
            speed_factor=AMBULANCE_SPEED_FACTOR,
        )
        for a in study.ambulances
    ]
    if place.level is not None:
        traffic = build(place.road, level=place.level, duration_s=duration, seed=seed).trips
    else:
        begin = place.scenario.begin_s if place.scenario is not None else 0.0
        traffic = read_routes(
            place.route_files,
            link_of_edge=place.snet.link_of_edge if place.snet is not None else {},
            net=place.net,
            begin_s=begin,
            end_s=begin + duration,
            scale=place.share,
            seed=seed,
            sumo_edges=place.sumo_edges,
        ).trips
    trips = Trips.concat([traffic, *ambulances])
    return Scenario(place.road.name, place.net, trips, duration, seed, place.snet)


@dataclass(frozen=True)
class Evaluation:
    study: Study
    comparison: Comparison
    routes: dict[str, tuple[str, ...]]
    """Each ambulance's route: SUMO edge ids on a SUMO network, else our link ids."""


def evaluate(study: Study, *, progress: Callable[[str], None] | None = None) -> Evaluation:
    """Run every policy on every seed of ``study``; the same traffic under each policy."""
    place = _load(study)
    first = min(a.depart_s for a in study.ambulances)
    setup = Setup(
        network=study.network,
        warmup_s=first,
        after_s=max(a.depart_s for a in study.ambulances) - first + study.after_s,
        dispatch_lead_s=study.dispatch_lead_s,
    )
    policies = (*COMPARED, Policy.GREEN_ALL_THE_WAY) if study.ceiling else COMPARED
    outcomes: dict[Policy, list[Outcome]] = {policy: [] for policy in policies}
    for seed in range(study.seeds):
        scenario = _scenario(study, place, seed)
        for policy in policies:
            if progress is not None:
                progress(f"{study.network} seed {seed + 1}/{study.seeds}: {policy}")
            outcomes[policy].append(
                run_policy(policy, seed, setup, scenario=scenario, engine=study.engine)
            )
    nodes = {
        n for o in outcomes[Policy.NO_PRIORITY] for j in o.journeys.values() for n in j.stop_line_m
    }
    comparison = Comparison(setup, tuple(range(study.seeds)), outcomes, len(nodes))
    edges = place.snet.edge_of_link if place.snet is not None else {}
    named = {
        name: tuple(edges.get(link, link) for link in route) for name, route in place.routes.items()
    }
    return Evaluation(study, comparison, named)


def to_json(evaluation: Evaluation) -> dict[str, Any]:
    """The demo's ``policies`` object per ambulance, plus every seed's trips."""
    comparison = evaluation.comparison
    names = [a.name for a in evaluation.study.ambulances]
    per_vehicle = {name: summary(comparison, vehicle=name) for name in names}
    first = per_vehicle[names[0]]
    per_seed = []
    for index, seed in enumerate(comparison.seeds):
        row: dict[str, Any] = {"seed": seed}
        for policy, outcomes in comparison.outcomes.items():
            outcome = outcomes[index]
            row[policy.value] = {
                "travel_time_s": {
                    name: _finite(j.travel_time_s) for name, j in outcome.journeys.items()
                },
                "other_vehicle_seconds": round(outcome.other_vehicle_seconds, 1),
                "corridor": {name: state.value for name, state in outcome.corridors.items()},
                "lost": {name: j.lost for name, j in outcome.journeys.items() if j.lost},
            }
        per_seed.append(row)
    return {
        "network": evaluation.study.network,
        "engine": evaluation.study.engine.value,
        "demand": evaluation.study.demand or "the scenario's own",
        "seeds": len(comparison.seeds),
        "intersections": comparison.intersections,
        "ambulance": first["ambulance"],
        "policies": first["policies"],
        "ambulances": {
            name: {
                "route": list(evaluation.routes[name]),
                "free_flow_s": per_vehicle[name]["ambulance"]["free_flow_s"],
                "policies": per_vehicle[name]["policies"],
                "impact": per_vehicle[name]["impact"],
            }
            for name in names
        },
        "per_seed": per_seed,
    }


def _finite(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


def render(data: dict[str, Any]) -> str:
    """A table per ambulance and a verdict line that says where the corridor wins or loses."""
    rows = [
        f"citybrain evaluate: {data['network']}, demand {data['demand']}, {data['seeds']} seeds "
        "(the same traffic under each policy)"
    ]
    for name, ambulance in data["ambulances"].items():
        route = ambulance["route"]
        rows += [
            "",
            f"  {name}: {route[0]} -> {route[-1]} ({len(route)} links), free flow "
            f"{ambulance['free_flow_s']:.1f} s",
            f"  {'policy':18} {'travel s':>9} {'x free':>7} {'stops':>6} {'others +veh-s':>14} "
            f"{'slower seeds':>13}",
        ]
        slower = slower_seeds(data, name)
        for policy, p in ambulance["policies"].items():
            rows.append(
                f"  {policy:18} {p['travel_time_s']:9.1f} {p['ratio_to_free_flow']:7.2f} "
                f"{p['stops']:6.1f} {p['other_vehicles_extra_delay_s']:14.0f} "
                f"{slower.get(policy, 0):13d}"
            )
        rows.append("  " + verdict(data, name))
        rows += report.impact_lines(ambulance["impact"])
    unfinished = _unfinished(data)
    if unfinished:
        rows.append(f"  not arrived by the end of the run: {', '.join(unfinished)}")
    rows += [
        f"  lost to the engine, no real drive, left out of the means: {name} ({policy}, seed "
        f"{row['seed']}): {reason}"
        for row in data["per_seed"]
        for policy in POLICY_NAMES
        for name, reason in row[policy].get("lost", {}).items()
    ]
    rows += [
        "",
        "  slower seeds: seeds on which the policy's trip took longer than without priority;",
        "  others +veh-s: extra vehicle-seconds all other traffic spent compared with no priority",
    ]
    return "\n".join(rows)


def verdict(data: dict[str, Any], name: str) -> str:
    policies = data["ambulances"][name]["policies"]
    base = policies["no_priority"]["travel_time_s"]
    local = policies["local_preemption"]["travel_time_s"]
    ours = policies["corridor"]["travel_time_s"]
    slower = slower_seeds(data, name).get("corridor", 0)
    cost = policies["corridor"]["other_vehicles_extra_delay_s"]
    local_cost = policies["local_preemption"]["other_vehicles_extra_delay_s"]
    return (
        f"verdict: the corridor takes {100 * (1 - ours / base):.0f} % less time than no "
        f"priority and {100 * (1 - ours / local):.0f} % less than local preemption; "
        + ("never slower than no priority" if not slower else f"slower on {slower} seeds")
        + f"; others lose {cost:.0f} veh-s ({'at most' if cost <= local_cost else 'more than'} "
        f"local preemption's {local_cost:.0f})"
    )


def slower_seeds(data: dict[str, Any], name: str) -> dict[str, int]:
    """Per policy with priority, the seeds on which ``name``'s trip took longer than without
    priority (or never ended)."""
    out: dict[str, int] = {}
    for row in data["per_seed"]:
        base = row["no_priority"]["travel_time_s"][name]
        for policy in ("local_preemption", "corridor"):
            own = row[policy]["travel_time_s"][name]
            if own is None or (base is not None and own > base):
                out[policy] = out.get(policy, 0) + 1
    return out


def _unfinished(data: dict[str, Any]) -> list[str]:
    return [
        f"{name} ({policy}, seed {row['seed']})"
        for row in data["per_seed"]
        for policy in POLICY_NAMES
        for name, travel in row[policy]["travel_time_s"].items()
        if travel is None and name not in row[policy].get("lost", {})
    ]
