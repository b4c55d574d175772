"""``citybrain demo``: the closed loop on the saturated 21-intersection arterial, three policies
over the same seeds, as a table, a time-space diagram and (``--json``) one JSON object."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain.closed_loop import Outcome, Policy, Setup, indication_colour, run_policy


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
) -> Comparison:
    setup = setup or Setup()
    outcomes: dict[Policy, list[Outcome]] = {policy: [] for policy in Policy}
    for seed in seeds:
        for policy in Policy:
            if progress is not None:
                progress(f"seed {seed}: {policy}")
            outcomes[policy].append(run_policy(policy, seed, setup))
    first = outcomes[Policy.NO_PRIORITY][0]
    intersections = len(first.signals)
    return Comparison(setup, tuple(seeds), outcomes, intersections)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summary(comparison: Comparison) -> dict[str, Any]:
    """The JSON object scripts rely on (documented in the README)."""
    base = comparison.outcomes[Policy.NO_PRIORITY]
    free_flow = _mean([o.trip.free_flow_s for o in base])
    policies: dict[str, Any] = {}
    for policy, outcomes in comparison.outcomes.items():
        extra = [
            o.other_vehicle_seconds - b.other_vehicle_seconds
            for o, b in zip(outcomes, base, strict=True)
        ]
        travel = _mean([o.travel_time_s for o in outcomes])
        per_stop: dict[str, list[float]] = {}
        for outcome in outcomes:
            for line in outcome.trip.stop_lines:
                per_stop.setdefault(line.intersection, []).append(line.delay_s)
        policies[policy.value] = {
            "travel_time_s": round(travel, 2),
            "stops": round(_mean([float(o.trip.stops) for o in outcomes]), 2),
            "ratio_to_free_flow": round(travel / free_flow, 3),
            "other_vehicles_extra_delay_s": round(_mean(extra), 1)
            if policy is not Policy.NO_PRIORITY
            else 0.0,
            "recovery_s": round(_mean([o.recovered_s for o in outcomes]), 1),
            "recovery_max_s": round(_mean([o.recovered_max_s for o in outcomes]), 1),
            "plans_sent": round(_mean([float(o.plans_sent) for o in outcomes]), 1),
            "plans_refused": round(_mean([float(o.plans_refused) for o in outcomes]), 1),
            "delay_per_intersection_s": {k: round(_mean(v), 2) for k, v in per_stop.items()},
            "per_seed_travel_time_s": [round(o.travel_time_s, 2) for o in outcomes],
        }
    return {
        "scenario": f"{comparison.setup.network}-{comparison.setup.level}",
        "seeds": len(comparison.seeds),
        "intersections": comparison.intersections,
        "ambulance": {"free_flow_s": round(free_flow, 2)},
        "policies": policies,
    }


def render(data: dict[str, Any]) -> str:
    rows = [
        f"citybrain demo: an ambulance across the {data['intersections']}-intersection arterial "
        f"({data['scenario']}, {data['seeds']} seeds, the same traffic under each policy)",
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
    base = data["policies"]["no_priority"]["travel_time_s"]
    local = data["policies"]["local_preemption"]["travel_time_s"]
    ours = data["policies"]["corridor"]["travel_time_s"]
    rows += [
        "",
        f"  corridor vs no priority: {100 * (1 - ours / base):.0f} % less travel time; "
        f"vs local preemption: {100 * (1 - ours / local):.0f} % less",
        "  others +veh-s: extra vehicle-seconds all other traffic spent compared with no priority;",
        "  recovery: mean time from the ambulance passing a stop line until that signal is back",
        "  on its normal plan",
    ]
    return "\n".join(rows)


def time_space_diagram(outcomes: dict[Policy, Outcome], path: Path) -> Path:
    """Distance along the route against time: the ambulance under each policy over the signal
    bands (green/yellow/red of its movement) it met under the corridor policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corridor = outcomes[Policy.CORRIDOR]
    fig, ax = plt.subplots(figsize=(11, 7), dpi=110)
    distances = corridor.stop_line_m
    start = min(t for t, _ in corridor.trajectory) if corridor.trajectory else 0.0
    for node, series in corridor.signals.items():
        y = distances.get(node)
        if y is None or not series:
            continue
        for (t0, shown), (t1, _) in itertools.pairwise(series):
            ax.plot(
                [t0 - start, t1 - start],
                [y, y],
                color=indication_colour(shown),
                linewidth=4,
                solid_capstyle="butt",
            )
        ax.text(-8, y, node, fontsize=7, va="center", ha="right")
    styles = {
        Policy.NO_PRIORITY: ("#555555", "--"),
        Policy.LOCAL_PREEMPTION: ("#1f6fb2", "-."),
        Policy.CORRIDOR: ("#000000", "-"),
    }
    for policy, outcome in outcomes.items():
        if outcome.trajectory:
            times = [t - start for t, _ in outcome.trajectory]
            ax.plot(
                times,
                [d for _, d in outcome.trajectory],
                styles[policy][1],
                color=styles[policy][0],
                linewidth=1.8,
                label=f"{policy.value} ({outcome.travel_time_s:.0f} s)",
            )
    finish = max((t for o in outcomes.values() for t, _ in o.trajectory), default=start + 60.0)
    ax.set_xlim(-30.0, finish - start + 60.0)
    ax.set_xlabel("time since dispatch (s)")
    ax.set_ylabel("distance along the route (m)")
    ax.set_title(
        "Ambulance corridor: trajectories over the signal state of its movement (corridor run)"
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False))
