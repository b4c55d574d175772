"""Two ambulances meeting head on (issue 13): on the demo's 10 x 10 grid, AMB-1 along row 4
eastbound and AMB-2 along it westbound, both at g4_5's stop line at the same moment at free
flow (``Setup.opposing``). Both corridors pass every signal of the row, one on the main
through, the other on the opposing through: the phase both need is the same, so neither
should cost the other anything. Each trip under the corridor is held against the same seed's
trip with the other ambulance taken out (same traffic): the extra is what meeting cost it.

    .venv/bin/python benchmarks/opposing.py [--seeds 10] [--engine ours|sumo] [--jobs 2]
        [--out out/bench]

A table per seed, the mean extra per trip with its standard error, the stops, a verdict line;
JSON in ``OUT/opposing-ENGINE.json``. Each run in a process of its own (libsumo holds one
simulation per process).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from citybrain.closed_loop import GRID, Policy, run_policy, setup_scenario
from citybrain.simulator.runner import Engine

OPPOSING = replace(GRID, opposing=True)
AMBULANCES = ("AMB-1", "AMB-2")
TARGET_S = 5.0
"""The mean extra per trip at most, for meeting head on to count as free: two ambulances
that cross (different phases) may lose 10 s at the crossing (the issue's target); two that
need the same phase should lose no more than half that over their whole trips."""

Trip = tuple[float, int]
"""An ambulance's travel time and its stops."""
Seed = dict[str, dict[str, Trip]]
"""Per ambulance, its trip ``both`` (with the other) and ``alone``."""


def _run(task: tuple[str, int, str | None]) -> dict[str, Trip]:
    """One corridor run: both ambulances (``only`` None), or one with the other taken out."""
    engine, seed, only = task
    scenario = setup_scenario(OPPOSING, seed, only=only)
    outcome = run_policy(Policy.CORRIDOR, seed, OPPOSING, scenario=scenario, engine=Engine(engine))
    return {
        name: (journey.travel_time_s, journey.trip.stops)
        for name, journey in outcome.journeys.items()
    }


def measure(engine: str, seeds: list[int], jobs: int) -> dict[int, Seed]:
    """Per seed, each ambulance's trip with the other and alone."""
    tasks = [(engine, seed, only) for seed in seeds for only in (None, *AMBULANCES)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(_run, tasks))
    rows: dict[int, Seed] = {}
    for index, seed in enumerate(seeds):
        both, *alone = done[3 * index : 3 * index + 3]
        rows[seed] = {
            name: {"both": both[name], "alone": solo[name]}
            for name, solo in zip(AMBULANCES, alone, strict=True)
        }
        print(f"  seed {seed} done", file=sys.stderr)
    return rows


def render(engine: str, rows: dict[int, Seed]) -> str:
    lines = [
        f"two ambulances meeting head on, demo grid row 4, corridor, {engine}, "
        f"{len(rows)} seeds: each trip with the other against the same seed alone",
        "  seed   AMB-1 both / alone (stops)      AMB-2 both / alone (stops)",
    ]
    extras: list[float] = []
    stops = {"both": 0, "alone": 0}
    for seed, row in rows.items():
        cells = []
        for name in AMBULANCES:
            (both_s, both_stops), (alone_s, alone_stops) = row[name]["both"], row[name]["alone"]
            extras.append(both_s - alone_s)
            stops["both"] += both_stops
            stops["alone"] += alone_stops
            cells.append(f"{both_s:7.1f} / {alone_s:7.1f} s ({both_stops} / {alone_stops})")
        lines.append(f"  {seed:4}   " + "   ".join(cells))
    mean = statistics.fmean(extras)
    se = statistics.stdev(extras) / math.sqrt(len(extras)) if len(extras) > 1 else math.nan
    lines.append(
        f"  extra per trip: mean {mean:+.1f} s (se {se:.1f}), median "
        f"{statistics.median(extras):+.1f} s, worst {max(extras):+.1f} s; stops "
        f"{stops['both']} with the other against {stops['alone']} alone ({2 * len(rows)} trips)"
    )
    held = "holds" if mean <= TARGET_S else "does not hold"
    lines.append(
        f"verdict: meeting head on costs each ambulance {mean:+.1f} s on average "
        f"({held} at {TARGET_S:.0f} s); the worst trip lost {max(extras):.1f} s"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--engine", choices=[e.value for e in Engine], default=Engine.OURS.value)
    parser.add_argument("--jobs", type=int, default=2, help="processes (one SUMO each)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    if not 1 <= args.seeds <= 1000 or not 1 <= args.jobs <= 64:
        parser.error("--seeds must be in 1..1000 and --jobs in 1..64")
    rows = measure(args.engine, list(range(1, args.seeds + 1)), args.jobs)
    print(render(args.engine, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    saved = [{"seed": seed, **row} for seed, row in rows.items()]
    (args.out / f"opposing-{args.engine}.json").write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
