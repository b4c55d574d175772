"""Our engine against SUMO (microscopic and mesoscopic) on the same grid, demand and timing.

Run: ``.venv/bin/python benchmarks/sumo_compare.py --rows 20 --cols 20 --duration 600
--demand moderate`` (needs ``pip install eclipse-sumo sumolib``).

``netgenerate`` builds a SUMO grid like ``networks.grid`` (junctions 200 m apart, 150 m feeders
to dead ends, 3 lanes, 13.9 m/s, a traffic light at every grid junction, no U-turns); it is
imported with ``citybrain.simulator.sumo.import_net``; our random-trip demand is drawn on it
(the scenario level's vehicles per hour at every entry, as ``citybrain sim run`` does for grids);
the same routes and our lead-lead timing plans are written for SUMO; then ours, SUMO and SUMO
meso run once each, in this order, in this process. Each simulator runs once per configuration:
timings on a shared 2-core machine are noisy, so both wall and simulated seconds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from citybrain.simulator.scenarios import GRID_ENTRY_VPH, Level
from citybrain.simulator.sumo import (
    Comparison,
    SimResult,
    compare,
    netgenerate_grid,
    sumo_version,
)

MODEL_DIFFERENCES = (
    "signal timing: the same lead-lead plans and offsets on both sides (written as SUMO static "
    "programs, phase changes snapped to 1 s); SUMO's own generated programs are not used",
    "ours is a spatial queue: vehicles drive links at desired speed, queue per lane group "
    "(movements sharing a lane share its queue) and discharge at 1,800 veh/h/lane after 2 s "
    "lost time, crossing until 2 s into the yellow; permitted turns wait for 4.5 s gaps; "
    "SUMO micro uses Krauss car following with acceleration, driver imperfection and lane "
    "changes; SUMO meso uses queues per edge segment with headway-based capacity",
    "SUMO vehicles drive the junctions' internal lanes; ours cross each junction over the "
    "distance its lanes leave uncovered between the junctions, at the link's speed (compare "
    "the mean route lengths)",
    "vehicles arrive at the end of their last link on both sides; travel time is measured from "
    "the desired departure, so insertion delays count on both sides",
)


def _row(result: SimResult) -> str:
    return (
        f"{result.simulator:<11} {result.wall_s:>9.3f} {result.loop_wall_s:>9.3f} "
        f"{result.simulated_s:>6.0f} {result.real_time_factor:>9.0f} {result.departed:>8d} "
        f"{result.arrived:>8d} {result.mean_travel_time_s:>8.1f} {result.throughput_vph:>9.0f} "
        f"{result.mean_route_length_m:>8.0f} {result.teleports:>6d}"
    )


def _report(comparison: Comparison) -> None:
    print()
    print(
        f"{comparison.network}: {comparison.junctions} junctions ({comparison.signalized} "
        f"signalized), {comparison.links} links, {comparison.vehicles} vehicles over "
        f"{comparison.duration_s:.0f} s"
    )
    print(
        f"{'simulator':<11} {'wall s':>9} {'loop s':>9} {'sim s':>6} {'x real':>9} "
        f"{'departed':>8} {'arrived':>8} {'mean TT':>8} {'veh/h':>9} {'route m':>8} {'telep.':>6}"
    )
    ours = comparison.ours
    for result in (ours, *comparison.others):
        print(_row(result))
    print(f"(citybrain Numba warm-up, not counted above: {ours.warm_up_s:.2f} s)")
    versus = comparison.to_dict()["versus_citybrain"]
    for name, figures in versus.items():
        wall, loop = figures["speed_ratio_wall"], figures["speed_ratio_loop"]
        tt, thr = figures["mean_travel_time_rel_diff"], figures["throughput_rel_diff"]
        print(
            f"ours vs {name}: x{wall:.1f} faster end to end, x{loop:.1f} simulation loop only; "
            f"{name} mean travel time {tt:+.1%}, throughput {thr:+.1%} relative to ours"
            if None not in (wall, loop, tt, thr)
            else f"ours vs {name}: {figures}"
        )
    timing = "same" if comparison.same_signal_timing else "NOT the same (see notes)"
    print(f"signal timing on both sides: {timing}")
    for note in comparison.notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    parser.add_argument("--demand", type=Level, choices=list(Level), default=Level.MODERATE)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--modes", default="micro,meso", help="SUMO models to run: micro, meso or both"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default out/sumo-compare/RxC)"
    )
    parser.add_argument("--json", type=Path, default=None, help="default <out>/comparison.json")
    args = parser.parse_args(argv)
    out = args.out or Path("out") / "sumo-compare" / f"{args.rows}x{args.cols}"
    json_path = args.json or out / "comparison.json"
    version = sumo_version()
    if version is None:
        print("SUMO not found: pip install eclipse-sumo sumolib", file=sys.stderr)
        return 2
    print(f"{version}; {os.cpu_count()} cores; work folder {out}")
    started = time.perf_counter()
    net_file = netgenerate_grid(
        out / f"grid{args.rows}x{args.cols}.net.xml", rows=args.rows, columns=args.cols
    )
    print(f"netgenerate: {net_file} in {time.perf_counter() - started:.1f} s")
    comparison = compare(
        net_file,
        duration_s=args.duration,
        vehicles_per_hour_per_entry=GRID_ENTRY_VPH[args.demand],
        out_dir=out,
        seed=args.seed,
        modes=[mode.strip() for mode in args.modes.split(",") if mode.strip()],
        progress=lambda message: print(f"[{time.perf_counter() - started:7.1f} s] {message}"),
    )
    _report(comparison)
    document = comparison.to_dict()
    document["command"] = " ".join(["python", "benchmarks/sumo_compare.py", *sys.argv[1:]])
    document["demand"] = str(args.demand)
    document["vehicles_per_hour_per_entry"] = GRID_ENTRY_VPH[args.demand]
    document["seed"] = args.seed
    document["sumo_version"] = version
    document["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    document["model_differences"] = list(MODEL_DIFFERENCES)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
