"""Several ambulances meeting on the demo's 10 x 10 grid (issue 13), all at junction g4_5's
stop line at the same moment at free flow but a convoy's second (``Setup.meeting``; the
crossing of two, AMB-1 along row 4 and AMB-2 along column 5, has its own report in
``sumo_closed_loop.py``):

- ``head-on``: AMB-2 along row 4 the other way. Both corridors pass every signal of the row,
  one on the main through, the other on the opposing one: one phase serves both.
- ``convoy``: AMB-2 behind AMB-1 on its route, 20 s later: one green serves both.
- ``three-way``: head on, and AMB-3 along column 5: a phase serving two against one.

Each trip under the corridor is held against the same seed's trip with the others taken out
(same traffic): the extra is what meeting cost it, and its loss on the link into g4_5 less
the same alone is what the junction cost it.

    .venv/bin/python benchmarks/meeting.py [--meeting head-on] [--seeds 10]
        [--engine ours|sumo] [--jobs 2] [--out out/bench] [--report-from JSON]

A table per seed, the mean extra per trip with its standard error (over the seeds' means: one
seed's trips share its traffic), each ambulance's, the stops, the larger loss at the junction,
a verdict line (a convoy judged on what the second costs the first); JSON in
``OUT/meeting-MEETING-ENGINE.json``. Each run in a process of its own (libsumo holds one
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
from typing import Any

from citybrain.closed_loop import GRID, Journey, Policy, run_policy, setup_scenario
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import Meeting, crossing_ambulances, load_network

JUNCTION = "g4_5"
SAME_PHASE_TARGET_S = 5.0
"""The mean extra per trip at most where one phase serves every vehicle (head on, a convoy):
two ambulances that cross may lose 10 s at the crossing (the issue's target); two that need
the same phase should lose no more than half that over their whole trips."""
CROSSING_TARGET_S = 10.0
"""The larger loss at the junction at most where vehicles need different phases: the issue's
target for two that cross."""

Trip = tuple[float, int, float, int, int]
"""An ambulance's travel time, its stops, its loss on the link into the junction, the stop
lines its corridor sent a window for, and of those the ones it missed (``_missed``)."""
Seed = dict[str, dict[str, Trip]]
"""Per ambulance, its trip ``both`` (with the others) and ``alone``."""


def _run(task: tuple[str, str, int, str | None]) -> dict[str, Trip]:
    """One corridor run: every ambulance (``only`` None), or one with the others taken out."""
    engine, meeting, seed, only = task
    setup = replace(GRID, meeting=Meeting(meeting))
    scenario = setup_scenario(setup, seed, only=only)
    outcome = run_policy(Policy.CORRIDOR, seed, setup, scenario=scenario, engine=Engine(engine))
    return {
        name: (
            journey.travel_time_s,
            journey.trip.stops,
            journey.delay_at(JUNCTION),
            len(journey.windows),
            _missed(journey),
        )
        for name, journey in outcome.journeys.items()
    }


def _missed(journey: Journey) -> int:
    """Stop lines where the last window sent for the vehicle before it passed was never shown
    green, or where it passed after that window closed: a corridor that failed it there, what
    several corridors at one intersection must never cause."""
    missed = 0
    for line in journey.trip.stop_lines:
        window = journey.windows.get(line.intersection)
        if window is None:
            continue
        opens, closes = window
        shown = journey.signals[line.intersection]
        green = any(opens - 0.5 <= t <= closes + 0.5 and s == "green" for t, s in shown)
        missed += not green or line.left_s > closes + 0.5
    return missed


def measure(engine: str, meeting: Meeting, seeds: list[int], jobs: int) -> dict[int, Seed]:
    """Per seed, each ambulance's trip with the others and alone."""
    row, column = GRID.crossing or (4, 5)
    specs = crossing_ambulances(
        load_network(GRID.network), row=row, column=column, at_s=0.0, meeting=meeting
    )
    names = [spec.name for spec in specs]
    runs = (None, *names)
    tasks = [(engine, meeting.value, seed, only) for seed in seeds for only in runs]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(_run, tasks))
    rows: dict[int, Seed] = {}
    for index, seed in enumerate(seeds):
        both, *alone = done[len(runs) * index : len(runs) * (index + 1)]
        rows[seed] = {
            name: {"both": both[name], "alone": solo[name]}
            for name, solo in zip(names, alone, strict=True)
        }
        print(f"  seed {seed} done", file=sys.stderr)
    return rows


def render(engine: str, meeting: Meeting, rows: dict[int, Seed]) -> str:
    names = list(next(iter(rows.values())))
    lines = [
        f"ambulances meeting at {JUNCTION} ({meeting.value}), demo grid, corridor, {engine}, "
        f"{len(rows)} seeds: each trip with the others against the same seed alone",
        "  seed   " + "   ".join(f"{name} with / alone (stops)   at {JUNCTION}" for name in names),
    ]
    extras: dict[str, list[float]] = {name: [] for name in names}
    by_seed: list[float] = []  # each seed's mean extra: its trips share traffic, so one sample
    larger: list[float] = []
    stops = {"both": 0, "alone": 0}
    windows = {"sent": 0, "missed": 0}
    lost = 0
    for seed, row in rows.items():
        cells, losses, seed_extras = [], [], []
        for name in names:
            (both_s, both_stops, both_at, sent, missed), (alone_s, alone_stops, alone_at, *_) = (
                row[name]["both"],
                row[name]["alone"],
            )
            windows["sent"] += sent
            windows["missed"] += missed
            extra, loss = both_s - alone_s, both_at - alone_at
            cells.append(
                f"{both_s:6.1f} / {alone_s:6.1f} s ({both_stops} / {alone_stops}) {loss:+6.1f} s"
            )
            if math.isnan(extra):  # SUMO teleported or removed it, with or alone: no drive
                lost += 1
                continue
            extras[name].append(extra)
            seed_extras.append(extra)
            losses.append(loss)
            stops["both"] += both_stops
            stops["alone"] += alone_stops
        if seed_extras:
            by_seed.append(statistics.fmean(seed_extras))
            larger.append(max(losses))
        lines.append(f"  {seed:4}   " + "   ".join(cells))
    trips = [extra for name in names for extra in extras[name]]
    mean, larger_mean = statistics.fmean(trips), statistics.fmean(larger)
    lines.append(
        f"  extra per trip: mean {mean:+.1f} s (se {_se(by_seed):.1f}, over seeds), median "
        f"{statistics.median(trips):+.1f} s, worst {max(trips):+.1f} s; stops {stops['both']} "
        f"with the others against {stops['alone']} alone ({len(trips)} trips"
        + (f", {lost} lost to SUMO left out" if lost else "")
        + f"); the larger loss at {JUNCTION} {larger_mean:.1f} s a seed"
    )
    lines.append(
        "  each ambulance's extra: "
        + ", ".join(
            f"{name} {statistics.fmean(extras[name]):+.1f} s (se {_se(extras[name]):.1f})"
            for name in names
        )
    )
    lines.append(
        f"  windows: {windows['sent']} stop lines given one with the others, "
        f"{windows['missed']} never shown green or passed after it closed"
    )
    first = statistics.fmean(extras[names[0]])
    lines.append(_verdict(meeting, mean, first, larger_mean, max(trips)))
    return "\n".join(lines)


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def _verdict(meeting: Meeting, mean: float, first: float, larger: float, worst: float) -> str:
    if meeting is Meeting.THREE_WAY:
        held = "holds" if larger <= CROSSING_TARGET_S else "does not hold"
        return (
            f"verdict: where one phase serves two of them and another the third, the one that "
            f"waits loses {larger:.1f} s at {JUNCTION} ({held} at the crossing's "
            f"{CROSSING_TARGET_S:.0f} s); each trip {mean:+.1f} s on average"
        )
    if meeting is Meeting.CONVOY:
        held = "holds" if first <= SAME_PHASE_TARGET_S else "does not hold"
        return (
            f"verdict: the second of a convoy costs the first {first:+.1f} s on average ({held} "
            f"at {SAME_PHASE_TARGET_S:.0f} s); each trip {mean:+.1f} s"
        )
    held = "holds" if mean <= SAME_PHASE_TARGET_S else "does not hold"
    return (
        f"verdict: meeting {meeting.value} costs each ambulance {mean:+.1f} s on average "
        f"({held} at {SAME_PHASE_TARGET_S:.0f} s); the worst trip lost {worst:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = [m.value for m in Meeting if m is not Meeting.CROSSING]
    parser.add_argument("--meeting", choices=choices, default=Meeting.HEAD_ON.value)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--engine", choices=[e.value for e in Engine], default=Engine.OURS.value)
    parser.add_argument("--jobs", type=int, default=2, help="processes (one SUMO each)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument(
        "--report-from", type=Path, help="run nothing: the report again from a JSON this wrote"
    )
    args = parser.parse_args()
    if args.report_from is not None:
        saved = json.loads(args.report_from.read_text())
        rows = {int(seed["seed"]): _from_json(seed) for seed in saved["seeds"]}
        print(render(saved["engine"], Meeting(saved["meeting"]), rows))
        return 0
    if not 1 <= args.seeds <= 1000 or not 1 <= args.jobs <= 64:
        parser.error("--seeds must be in 1..1000 and --jobs in 1..64")
    meeting = Meeting(args.meeting)
    rows = measure(args.engine, meeting, list(range(1, args.seeds + 1)), args.jobs)
    print(render(args.engine, meeting, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [{"seed": seed, **_json_safe(row)} for seed, row in rows.items()]
    saved = {"meeting": meeting.value, "engine": args.engine, "seeds": seeds}
    path = args.out / f"meeting-{meeting.value}-{args.engine}.json"
    path.write_text(json.dumps(saved, indent=1, allow_nan=False))
    return 0


def _from_json(seed: dict[str, Any]) -> Seed:
    return {
        name: {
            run: (
                math.nan if travel is None else float(travel),
                int(stops),
                math.nan if at is None else float(at),
                int(sent),
                int(missed),
            )
            for run, (travel, stops, at, sent, missed) in runs.items()
        }
        for name, runs in seed.items()
        if name != "seed"
    }


def _json_safe(row: Seed) -> dict[str, dict[str, list[float | int | None]]]:
    """A lost trip's nan (no travel time, no junction reached) as null: JSON has no nan."""
    return {
        name: {
            run: [None if isinstance(v, float) and math.isnan(v) else v for v in trip]
            for run, trip in runs.items()
        }
        for name, runs in row.items()
    }


if __name__ == "__main__":
    raise SystemExit(main())
