"""``citybrain demo`` as a report: the plan of stages first, progress with what is left, and each
section printed as soon as it is computed (the arterial's table does not wait for the live run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citybrain.report import Progress, SeedRun, Stage
from citybrain.simulator.runner import Engine

if TYPE_CHECKING:
    from citybrain.closed_loop import Outcome, Policy, Setup
    from citybrain.demo import Comparison
    from citybrain.live import LiveOptions


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--keep-running",
        action="store_true",
        help="after the live run, leave the broker, cloud service (API and console), edges and "
        "simulator up until Ctrl-C, to explore",
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


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _stdout(text: str) -> None:
    print(text, flush=True)


def _stages(args: argparse.Namespace, live_wall_s: float) -> list[Stage]:
    runs = 3 * args.seeds
    stages = [Stage("arterial", runs, f"{runs} runs")]
    if args.grid:
        stages.append(Stage("grid", runs, f"{runs} runs"))
    if args.live:
        stages.append(Stage("live system", 0, f"about {live_wall_s / 60:.0f} min"))
    return stages


def main(args: argparse.Namespace) -> int:
    from citybrain import demo, diagram, live
    from citybrain.closed_loop import Setup
    from citybrain.simulator.cli import output_folder

    options = _checked(args)
    output_folder(args.out)
    progress = None if args.json else Progress(_stages(args, live.wall_s(options)), _stderr)
    show: Callable[[str], None] = (lambda text: None) if args.json else _stdout
    if progress is not None:
        progress.plan("citybrain demo")
    setup = _arterial_setup(args)
    arterial = _compare(progress, "arterial", setup, args)
    data = {"engine": args.engine.value, **demo.summary(arterial)}
    figure = diagram.time_space_diagram(_first(arterial), args.out / "time_space.png")
    show(f"\n{demo.render(data)}\n  time-space diagram (seed 1): {figure}")
    if args.grid:
        data["grid"] = _grid(progress, args, show)
    if args.live:
        # the live run is set against the in-process one only when both ran the same scenario
        same = setup == Setup() and args.engine is Engine.OURS
        seed_run = demo.seed_run(arterial) if same else None
        data["live"] = _live(progress, options, seed_run, show, args.json)
    demo.write_json(data, args.out / "demo.json")
    if args.json:
        print(demo.json_text(data, indent=None))
    else:
        show(f"\n  JSON: {args.out / 'demo.json'}")
    return 0


def _checked(args: argparse.Namespace) -> LiveOptions:
    """Refuse what cannot work before minutes of runs: a bad seed count, --keep-running
    without the live system, a database that does not answer."""
    from citybrain import live
    from citybrain.models.checks import check_count
    from citybrain.models.errors import ValidationError

    check_count("seeds", args.seeds, ge=1, le=50)
    if args.keep_running and not args.live:
        raise ValidationError(
            "keep_running", "--keep-running keeps the live system up: drop --no-live"
        )
    if args.live and args.dsn:
        live.check_database(args.dsn)
    return live.LiveOptions(
        broker=args.broker, dsn=args.dsn, speed=args.speed, keep_running=args.keep_running
    )


def _arterial_setup(args: argparse.Namespace) -> Setup:
    from citybrain.closed_loop import WESTBOUND, Setup

    if args.westbound:
        return replace(WESTBOUND, peak=args.peak)
    return Setup(peak=args.peak)


def _grid(
    progress: Progress | None, args: argparse.Namespace, show: Callable[[str], None]
) -> dict[str, Any]:
    """The grid stage: its table and one diagram per ambulance as soon as it is done."""
    from citybrain import demo, diagram
    from citybrain.closed_loop import GRID

    grid = _compare(progress, "grid", GRID, args)
    data = demo.grid_summary(grid)
    figures = [
        diagram.time_space_diagram(_first(grid), args.out / f"grid_time_space_{v}.png", vehicle=v)
        for v in data["ambulances"]
    ]
    shown = ", ".join(map(str, figures))
    show(f"\n{demo.render_grid(data)}\n  time-space diagrams (seed 1): {shown}")
    return data


def _compare(
    progress: Progress | None, stage: str, setup: Setup, args: argparse.Namespace
) -> Comparison:
    from citybrain import demo

    if progress is not None:
        progress.begin(stage)
    step = progress.step if progress is not None else None
    seeds = range(1, args.seeds + 1)
    return demo.compare(seeds, setup=setup, progress=step, engine=args.engine)


def _first(comparison: Comparison) -> dict[Policy, Outcome]:
    return {policy: outcomes[0] for policy, outcomes in comparison.outcomes.items()}


def _live(
    progress: Progress | None,
    options: LiveOptions,
    seed_run: SeedRun | None,
    show: Callable[[str], None],
    quiet: bool,
) -> dict[str, Any]:
    """The live stage; with ``--keep-running`` its section is printed while it stays up."""
    import asyncio

    from citybrain import demo, live

    say: Callable[[str], None] | None = None
    if progress is not None:
        progress.begin("live system")
        say = progress.note
    elif options.keep_running:
        say = _stderr  # even with --json, a person must learn where the system is

    def ready(result: live.LiveResult) -> None:
        show("\n" + demo.render_live(result.summary(), seed_run))

    result = asyncio.run(live.run_live(options, progress=say, ready=ready))
    if not options.keep_running and not quiet:
        ready(result)
    return result.summary()
