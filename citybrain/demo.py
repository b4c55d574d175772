"""``citybrain demo``: the closed loop on the saturated 21-intersection arterial, then on a
10 x 10 grid where two ambulances' routes cross; three policies over the same seeds, as tables,
time-space diagrams and (``--json``) one JSON object."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain import report
from citybrain.closed_loop import (
    AMBULANCE,
    COMPARED,
    Journey,
    Outcome,
    Policy,
    Setup,
    check_impact,
    run_policy,
)
from citybrain.models.errors import ValidationError
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import load_network


@dataclass(frozen=True)
class Comparison:
    setup: Setup
    seeds: tuple[int, ...]
    outcomes: dict[Policy, list[Outcome]]
    intersections: int


def compare(
    seeds: Sequence[int],
    *,
    setup: Setup | None = None,
    progress: Callable[[str], None] | None = None,
    engine: Engine = Engine.OURS,
) -> Comparison:
    setup = setup or Setup()
    outcomes: dict[Policy, list[Outcome]] = {policy: [] for policy in COMPARED}
    for seed in seeds:
        for policy in COMPARED:
            if progress is not None:
                progress(f"seed {seed}, {policy}")
            outcome = run_policy(policy, seed, setup, engine=engine)
            late = [name for name, j in outcome.journeys.items() if j.trip.arrived_s is None]
            if late:
                # a trip cut short has no travel time; leaving it out of the means would
                # flatter that policy
                raise ValidationError(
                    "after_s",
                    f"{', '.join(late)} still driving when the run ended ({policy}, seed {seed}): "
                    "run longer after it leaves",
                )
            lost = [j.lost for j in outcome.journeys.values() if j.lost]
            if lost:
                # a trip the engine cut short or moved on is no drive to compare
                raise ValidationError(
                    "engine", f"{'; '.join(lost)} ({policy}, seed {seed}): no real trip to compare"
                )
            outcomes[policy].append(outcome)
    first = outcomes[Policy.NO_PRIORITY][0]
    intersections = len({node for j in first.journeys.values() for node in j.stop_line_m})
    return Comparison(setup, tuple(seeds), outcomes, intersections)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _scenario(setup: Setup) -> str:
    name = f"{setup.network}-{setup.level}" + ("-peak" if setup.peak else "")
    return name if setup.direction == "eastbound" else f"{name}-{setup.direction}"


def _journeys(outcomes: Sequence[Outcome], vehicle: str) -> list[Journey]:
    return [o.journeys[vehicle] for o in outcomes]


def _trip_figures(journeys: Sequence[Journey], free_flow: float) -> dict[str, Any]:
    travel = _mean([j.travel_time_s for j in journeys])
    return {
        "travel_time_s": round(travel, 2),
        "stops": round(_mean([float(j.trip.stops) for j in journeys]), 2),
        "ratio_to_free_flow": round(travel / free_flow, 3),
    }


def _corridor_states(outcomes: Sequence[Outcome], vehicle: str) -> dict[str, int]:
    """How the vehicle's corridor ended, over the seeds (none without one)."""
    ended = Counter(o.corridors[vehicle].value for o in outcomes if vehicle in o.corridors)
    return dict(sorted(ended.items()))


def _extra_delay(comparison: Comparison, policy: Policy) -> float:
    """Extra vehicle-seconds of all but the emergency vehicles compared with no priority."""
    if policy is Policy.NO_PRIORITY:
        return 0.0
    base = comparison.outcomes[Policy.NO_PRIORITY]
    extra = [
        o.other_vehicle_seconds - b.other_vehicle_seconds
        for o, b in zip(comparison.outcomes[policy], base, strict=True)
    ]
    return round(_mean(extra), 1)


def summary(comparison: Comparison, *, vehicle: str = AMBULANCE) -> dict[str, Any]:
    """The JSON object scripts rely on (documented in the README), for one ambulance."""
    base = _journeys(comparison.outcomes[Policy.NO_PRIORITY], vehicle)
    free_flow = _mean([j.trip.free_flow_s for j in base])
    policies: dict[str, Any] = {}
    for policy, outcomes in comparison.outcomes.items():
        journeys = _journeys(outcomes, vehicle)
        per_stop: dict[str, list[float]] = {}
        for journey in journeys:
            for line in journey.trip.stop_lines:
                per_stop.setdefault(line.intersection, []).append(line.delay_s)
        policies[policy.value] = {
            **_trip_figures(journeys, free_flow),
            "corridor_states": _corridor_states(outcomes, vehicle),
            "other_vehicles_extra_delay_s": _extra_delay(comparison, policy),
            "recovery_s": round(_mean([j.recovered_s for j in journeys]), 1),
            "recovery_max_s": round(_mean([j.recovered_max_s for j in journeys]), 1),
            "plans_sent": round(_mean([float(o.plans_sent) for o in outcomes]), 1),
            "plans_refused": round(_mean([float(o.plans_refused) for o in outcomes]), 1),
            "delay_per_intersection_s": {k: round(_mean(v), 2) for k, v in per_stop.items()},
            "per_seed_travel_time_s": [round(j.travel_time_s, 2) for j in journeys],
        }
    return {
        "scenario": _scenario(comparison.setup),
        "seeds": len(comparison.seeds),
        "intersections": comparison.intersections,
        "ambulance": {"free_flow_s": round(free_flow, 2)},
        "policies": policies,
        "impact": impact_summary(comparison, vehicle),
    }


@functools.lru_cache(maxsize=4)
def _road(network: str) -> RoadNetwork:
    """A network loaded once for all of a comparison's ambulances (a city takes seconds)."""
    return load_network(network)


def impact_summary(comparison: Comparison, vehicle: str = AMBULANCE) -> dict[str, Any]:
    """The corridor's impact as the cloud estimated it (the console's figures), beside what the
    runs measured against no priority, averaged over the seeds."""
    road = _road(comparison.setup.network)
    pairs = zip(
        comparison.outcomes[Policy.CORRIDOR], comparison.outcomes[Policy.NO_PRIORITY], strict=True
    )
    checks = [c for o, b in pairs if (c := check_impact(o, b, vehicle, road)) is not None]
    estimates = [c.estimate for c in checks]

    def figure(pairs: list[tuple[float | None, float]]) -> dict[str, float | None]:
        """Means over the seeds with an estimate (a corridor that did not complete has no
        time saved)."""
        known = [(e, m) for e, m in pairs if e is not None]
        return {
            "estimated": round(_mean([e for e, _ in known]), 1) if known else None,
            "measured": round(_mean([m for _, m in known]), 1) if known else None,
        }

    recoveries = [e.recovery_s for e in estimates if e.recovery_s is not None]
    return {
        "time_saved_s": figure([(c.estimate.time_saved_s, c.time_saved_s) for c in checks]),
        "cross_delay_veh_s": figure(
            [(c.estimate.cross_delay_veh_s, c.cross_delay_veh_s) for c in checks]
        ),
        "recovery_s": round(_mean(recoveries), 1) if recoveries else None,
        "recovered_seeds": len(recoveries),
    }


def grid_summary(comparison: Comparison) -> dict[str, Any]:
    """The ``grid`` member of the JSON object: every ambulance's trip per policy, what it met
    at the intersection where the routes cross, and the cost to everyone else."""
    base = comparison.outcomes[Policy.NO_PRIORITY]
    vehicles = list(base[0].journeys)
    if len(base[0].crossings) != 1:
        raise ValidationError(
            "meeting",
            "the grid report is of two routes that cross once; benchmarks/meeting.py "
            f"reports ambulances meeting otherwise (these share {len(base[0].crossings)})",
        )
    (crossing,) = base[0].crossings
    free_flow = {v: _mean([j.trip.free_flow_s for j in _journeys(base, v)]) for v in vehicles}
    policies: dict[str, Any] = {}
    for policy, outcomes in comparison.outcomes.items():
        figures: dict[str, Any] = {}
        for vehicle in vehicles:
            journeys = _journeys(outcomes, vehicle)
            figures[vehicle] = {
                **_trip_figures(journeys, free_flow[vehicle]),
                "corridor_states": _corridor_states(outcomes, vehicle),
                "delay_at_crossing_s": round(_mean([j.delay_at(crossing) for j in journeys]), 2),
                "stops_at_crossing": round(
                    _mean([float(j.stops_at[crossing]) for j in journeys]), 2
                ),
                "per_seed_travel_time_s": [round(j.travel_time_s, 2) for j in journeys],
            }
        every = [j for o in outcomes for j in o.journeys.values()]
        clear = [all(j.stops_at[crossing] == 0 for j in o.journeys.values()) for o in outcomes]
        policies[policy.value] = {
            **figures,
            "other_vehicles_extra_delay_s": _extra_delay(comparison, policy),
            "both_through_crossing_without_stopping": round(_mean([float(c) for c in clear]), 2),
            "recovery_s": round(_mean([j.recovered_s for j in every]), 1),
            "plans_sent": round(_mean([float(o.plans_sent) for o in outcomes]), 1),
            "plans_refused": round(_mean([float(o.plans_refused) for o in outcomes]), 1),
        }
    first = base[0].journeys
    return {
        "scenario": _scenario(comparison.setup),
        "seeds": len(comparison.seeds),
        "intersections": comparison.intersections,
        "crossing": crossing,
        "ambulances": {
            v: {
                "free_flow_s": round(free_flow[v], 2),
                "depart_s": round(first[v].trip.depart_s, 2),
                "route": list(first[v].route),
            }
            for v in vehicles
        },
        "policies": policies,
    }


def render(data: dict[str, Any]) -> str:
    rows = [
        f"citybrain demo: an ambulance across the {data['intersections']}-intersection arterial "
        f"({data['scenario']}, {report.plural(data['seeds'], 'seed')}, the same traffic under "
        "each policy)",
        f"  free-flow time at ambulance speed: {data['ambulance']['free_flow_s']:.1f} s",
        "",
        f"  {'policy':18} {'travel s':>9} {'x free':>7} {'stops':>6} {'others +veh-s':>14} "
        f"{'recovery s':>11}",
    ]
    for name, p in data["policies"].items():
        rows.append(
            f"  {name:18} {p['travel_time_s']:9.1f} {p['ratio_to_free_flow']:7.2f} "
            f"{p['stops']:6.1f} {p['other_vehicles_extra_delay_s']:14.0f} {p['recovery_s']:11.1f}"
        )
    rows += _unfinished_corridors(data["policies"])
    rows += [
        "",
        report.arterial_verdict(data),
        "  others +veh-s: extra vehicle-seconds all other traffic spent compared with no priority;",
        "  recovery: mean time from the ambulance passing a stop line until that signal is back",
        "  on its normal plan",
        *report.impact_lines(data["impact"]),
    ]
    return "\n".join(rows)


def _unfinished_corridors(policies: dict[str, Any], vehicle: str = "") -> list[str]:
    """A line where a corridor ended otherwise than completed on some seed: its table's
    figures hold trips that had no corridor all the way (a JSON written before these were
    kept has none to say)."""
    corridor = policies["corridor"]
    states = (corridor[vehicle] if vehicle else corridor).get("corridor_states", {})
    other = {state: n for state, n in states.items() if state != "completed"}
    if not other:
        return []
    said = ", ".join(f"{state} on {report.plural(n, 'seed')}" for state, n in other.items())
    return [f"  {vehicle or 'the'} corridor did not complete: {said}"]


def render_grid(data: dict[str, Any]) -> str:
    vehicles = list(data["ambulances"])
    crossing = data["crossing"]
    rows = [
        f"citybrain demo: {len(vehicles)} ambulances whose routes cross at {crossing} "
        f"({data['scenario']}, {report.plural(data['seeds'], 'seed')}, the same traffic under "
        "each policy)",
    ]
    for vehicle, info in data["ambulances"].items():
        rows.append(
            f"  {vehicle}: {info['route'][0]} -> {info['route'][-1]}, leaves at "
            f"{info['depart_s']:.1f} s, free flow {info['free_flow_s']:.1f} s"
        )
    rows += [
        "",
        f"  {'policy':18} {'vehicle':8} {'travel s':>9} {'x free':>7} {'stops':>6} "
        f"{'at ' + crossing + ' s':>11} {'stops there':>12}",
    ]
    for name, p in data["policies"].items():
        for vehicle in vehicles:
            v = p[vehicle]
            rows.append(
                f"  {name if vehicle == vehicles[0] else '':18} {vehicle:8} "
                f"{v['travel_time_s']:9.1f} {v['ratio_to_free_flow']:7.2f} {v['stops']:6.1f} "
                f"{v['delay_at_crossing_s']:11.1f} {v['stops_at_crossing']:12.1f}"
            )
        clear = 100 * p["both_through_crossing_without_stopping"]
        rows.append(
            f"  {'':18} others +veh-s {p['other_vehicles_extra_delay_s']:.0f} | neither stops at "
            f"{crossing}: {clear:.0f} % of seeds | plans {p['plans_sent']:.0f} sent, "
            f"{p['plans_refused']:.0f} refused"
        )
    for vehicle in vehicles:
        rows += _unfinished_corridors(data["policies"], vehicle)
    rows += [
        "",
        report.grid_verdict(data),
        f"  at {crossing} s: seconds the ambulance lost on its last link before {crossing}'s "
        "stop line (a stop",
        "  at the stop line before costs 4.5-7.5 s of it, pulling away and the braking its wait "
        "did not absorb); under the corridor policy",
        "  both windows share one plan and the controller serves them in turn",
    ]
    return "\n".join(rows)


def json_text(data: dict[str, Any], *, indent: int | None = 2) -> str:
    """``data`` as JSON, a number that is not finite as null (a trip that did not end before
    its run did, a mean over seeds where none did: JSON has no nan)."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json_text(data))


def seed_run(comparison: Comparison, *, vehicle: str = AMBULANCE) -> report.SeedRun:
    """The first seed's corridor and no-priority trips: what the live run is set against."""
    corridor = comparison.outcomes[Policy.CORRIDOR][0].journeys[vehicle]
    base = comparison.outcomes[Policy.NO_PRIORITY][0].journeys[vehicle]
    return report.SeedRun(
        corridor_s=corridor.travel_time_s,
        corridor_stops=corridor.trip.stops,
        no_priority_s=base.travel_time_s,
        delay_per_intersection_s={
            line.intersection: line.delay_s for line in corridor.trip.stop_lines
        },
    )


def render_live(live: dict[str, Any], in_process: report.SeedRun | None = None) -> str:
    """The live run: the same arterial with every part running for real; set against the
    in-process run of the same seed when that ran the same scenario."""
    amb = live["ambulance"]
    latency = live["plan_latency_ms"]
    rows = [
        f"live: {live['edges']} edge agents, {live['broker']}, {live['database']}, the "
        f"cloud service and its HTTP API (seed 1, {live['wall_s']:.0f} s)",
        f"  ambulance with its corridor: {amb['corridor']['travel_time_s']:.1f} s, "
        f"{report.plural(amb['corridor']['stops'], 'stop')}; without: "
        f"{amb['no_priority']['travel_time_s']:.1f} s, "
        f"{report.plural(amb['no_priority']['stops'], 'stop')}; time saved "
        f"{amb['time_saved_s']:.1f} s",
        f"  cross traffic: {live['other_vehicles_extra_delay_s']:+,.0f} vehicle-seconds",
        f"  telemetry: {live['telemetry_messages']} messages received, "
        f"{live['telemetry_rows']} rows in the database; malformed refused: "
        f"{live['rejected_messages']}",
        f"  plans: {live['plans_sent']} sent, {live['plans_acked']} acknowledged; request to "
        f"every first plan acknowledged: {latency['p50']:.1f} ms",
    ]
    if in_process is not None:
        rows += report.live_difference(live, in_process)
    return "\n".join(rows)
