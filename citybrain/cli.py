"""The ``citybrain`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    demo = commands.add_parser("demo", help="plan an ambulance corridor along an arterial")
    demo.add_argument("--intersections", type=int, default=8, help="stop lines on the route (1-60)")
    demo.add_argument("--seed", type=int, default=7, help="scenario seed (same seed, same output)")
    from citybrain.simulator import cli as sim_cli

    sim_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "demo":
            from citybrain import demo

            settings = demo.DemoSettings(intersections=args.intersections, seed=args.seed)
            print(demo.render(demo.run(settings)))
        elif args.command == "sim":
            from citybrain.simulator import cli as sim_cli

            return sim_cli.main(args)
    except CitybrainError as error:
        print(f"citybrain: {error}", file=sys.stderr)
        return 2
    return 0
