"""The ``citybrain`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from citybrain import __version__
from citybrain.models.errors import CitybrainError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citybrain",
        description="Edge-and-cloud traffic signal control with emergency corridors.",
    )
    parser.add_argument("--version", action="version", version=f"citybrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="an ambulance across the saturated arterial, then two whose routes cross on a "
        "10 x 10 grid, under three policies",
    )
    demo.add_argument("--seeds", type=int, default=3, help="seeds to average over (1-50)")
    demo.add_argument(
        "--grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the grid with two crossing ambulances (default: yes)",
    )
    demo.add_argument(
        "--peak",
        action="store_true",
        help="arterial demand with a peak (x1.5 mid-run, when the ambulance leaves)",
    )
    demo.add_argument(
        "--westbound",
        action="store_true",
        help="the arterial ambulance drives west, against the green wave, from a station on "
        "the last cross street (the run goes on 2,400 s after it leaves, not 900 s)",
    )
    demo.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the whole system live: broker, PostgreSQL, field bus, one edge agent "
        "per intersection, the cloud service and its API (default: yes)",
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="the live run's broker: Mosquitto when installed, else the embedded amqtt",
    )
    demo.add_argument(
        "--dsn", help="PostgreSQL for the live run (default: an embedded one started here)"
    )
    demo.add_argument(
        "--speed", type=float, default=5.0, help="the live simulator's pace (x real time)"
    )
    from citybrain.simulator import cli as sim_cli

    sim_cli.add_engine_option(demo, note=" (in the closed loops; the live run stays on ours)")
    demo.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="diagram and JSON go here")
    preview = commands.add_parser(
        "preview", help="the signal-plan side of a corridor, no simulator"
    )
    preview.add_argument("--intersections", type=int, default=8, help="stop lines on the route")
    preview.add_argument(
        "--seed", type=int, default=7, help="scenario seed (same seed, same output)"
    )
    from citybrain import cloud_cli, corridor_cli, evaluate_cli, security

    sim_cli.add_commands(commands)
    evaluate_cli.add_commands(commands)
    corridor_cli.add_commands(commands)
    cloud_cli.add_commands(commands)
    security.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "preview":
            from citybrain import preview

            settings = preview.DemoSettings(intersections=args.intersections, seed=args.seed)
            print(preview.render(preview.run(settings)))
        elif args.command == "demo":
            return _demo(args)
        elif args.command == "sim":
            from citybrain.simulator import cli as sim_cli

            return sim_cli.main(args)
        elif args.command == "evaluate":
            from citybrain import evaluate_cli

            return evaluate_cli.main(args)
        elif args.command == "corridor":
            from citybrain import corridor_cli

            return corridor_cli.main(args)
        elif args.command == "cloud":
            from citybrain import cloud_cli

            return cloud_cli.main(args)
        elif args.command == "security":
            from citybrain import security

            return security.main(args)
    except CitybrainError as error:
        print(f"citybrain: {error}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from citybrain import demo
    from citybrain.closed_loop import GRID, WESTBOUND, Setup
    from citybrain.models.checks import check_count

    check_count("seeds", args.seeds, ge=1, le=50)
    for noisy in ("citybrain", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def progress(text: str) -> None:
        print(f"  running {text}", file=sys.stderr, flush=True)

    seeds = range(1, args.seeds + 1)
    report = None if args.json else progress
    setup = replace(WESTBOUND, peak=args.peak) if args.westbound else Setup(peak=args.peak)
    comparison = demo.compare(seeds, setup=setup, progress=report, engine=args.engine)
    data = demo.summary(comparison)
    args.out.mkdir(parents=True, exist_ok=True)
    first = {policy: outcomes[0] for policy, outcomes in comparison.outcomes.items()}
    figures = [demo.time_space_diagram(first, args.out / "time_space.png")]
    if args.grid:
        grid = demo.compare(seeds, setup=GRID, progress=report, engine=args.engine)
        data["grid"] = demo.grid_summary(grid)
        first = {policy: outcomes[0] for policy, outcomes in grid.outcomes.items()}
        figures += [
            demo.time_space_diagram(first, args.out / f"grid_time_space_{v}.png", vehicle=v)
            for v in data["grid"]["ambulances"]
        ]
    if args.live:
        import asyncio

        from citybrain.live import LiveOptions, run_live

        options = LiveOptions(broker=args.broker, dsn=args.dsn, speed=args.speed)
        if report is not None:
            report(f"the live system (x{options.speed:g} real time, about 2 minutes)")
        live = asyncio.run(run_live(options, progress=report))
        data["live"] = live.summary()
    demo.write_json(data, args.out / "demo.json")
    if args.json:
        print(json.dumps(data))
    else:
        print(demo.render(data))
        if args.grid:
            print()
            print(demo.render_grid(data["grid"]))
        if args.live:
            print()
            print(demo.render_live(data["live"]))
        shown = ", ".join(str(f) for f in figures)
        print(f"\n  time-space diagrams (seed 1): {shown}; JSON: {args.out / 'demo.json'}")
    return 0
