"""The ``citybrain`` command."""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
import warnings
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
    from citybrain import demo_cli

    demo_cli.add_command(commands)
    preview = commands.add_parser(
        "preview", help="the signal-plan side of a corridor, no simulator"
    )
    preview.add_argument("--intersections", type=int, default=8, help="stop lines on the route")
    preview.add_argument(
        "--seed", type=int, default=7, help="scenario seed (same seed, same output)"
    )
    from citybrain import cloud_cli, corridor_cli, evaluate_cli, security
    from citybrain.simulator import cli as sim_cli

    sim_cli.add_commands(commands)
    evaluate_cli.add_commands(commands)
    corridor_cli.add_commands(commands)
    cloud_cli.add_commands(commands)
    security.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(verbose=args.verbose)
    try:
        return _run(args)
    except CitybrainError as error:
        print(f"citybrain: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("citybrain: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        busy = _address_in_use(error)
        if busy is None:
            raise
        print(f"citybrain: {_in_use_advice(busy, args)}", file=sys.stderr)
        return 2


def _configure_logging(*, verbose: bool) -> None:
    """Our own INFO lines; other libraries' (embedded PostgreSQL's command lines, aiohttp's
    access log, platformdirs' warning) only with ``-v``, which shows everything."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger("citybrain").setLevel(logging.INFO)
        warnings.filterwarnings("ignore", module="platformdirs")


def _run(args: argparse.Namespace) -> int:
    if args.command == "preview":
        from citybrain import preview

        settings = preview.DemoSettings(intersections=args.intersections, seed=args.seed)
        print(preview.render(preview.run(settings)))
        return 0
    if args.command == "demo":
        from citybrain import demo_cli

        if not args.verbose:  # a report, not a log
            logging.getLogger("citybrain").setLevel(logging.WARNING)
        return demo_cli.main(args)
    if args.command == "sim":
        from citybrain.simulator import cli as sim_cli

        return sim_cli.main(args)
    if args.command == "evaluate":
        from citybrain import evaluate_cli

        return evaluate_cli.main(args)
    if args.command == "corridor":
        from citybrain import corridor_cli

        return corridor_cli.main(args)
    if args.command == "cloud":
        from citybrain import cloud_cli

        return cloud_cli.main(args)
    from citybrain import security

    return security.main(args)


ADDRESS = re.compile(r"\('([^']*)', (\d+)\)")
PORT_OPTIONS = {"sim": "--port", "cloud": "--api"}


def _address_in_use(error: BaseException) -> OSError | None:
    """The bind that failed because the address is taken, also inside a task group."""
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _address_in_use(inner)
            if found is not None:
                return found
    return None


def _in_use_advice(error: OSError, args: argparse.Namespace) -> str:
    match = ADDRESS.search(str(error))
    where = f"{match.group(1)}:{match.group(2)}" if match else "the address asked for"
    option = PORT_OPTIONS.get(args.command)
    other = f"choose another port with {option}" if option else "choose another port"
    return f"{where} is already in use by another program: stop that program, or {other}"
