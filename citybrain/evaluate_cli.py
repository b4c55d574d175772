"""``citybrain evaluate``: the three policies on any network and ambulance route."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from citybrain.simulator.cities import ACCEPTED_SPECS
from citybrain.simulator.cli import add_engine_option, output_folder


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="no priority, local preemption and the corridor on any network and route",
        description="Runs the three policies on the same seeded traffic and compares the "
        "ambulance's trip and everyone else's delay.",
    )
    evaluate.add_argument("--network", required=True, help=f"the network: {ACCEPTED_SPECS}")
    evaluate.add_argument(
        "--from", dest="origin", help="edge (SUMO id) or link the ambulance starts on"
    )
    evaluate.add_argument("--to", dest="destination", help="edge or link it drives to")
    evaluate.add_argument(
        "--depart", type=float, default=900.0, help="when it leaves, seconds into the run"
    )
    evaluate.add_argument(
        "--ambulances",
        type=Path,
        help="a JSON list of {name, origin, destination, depart_s} (instead of --from/--to)",
    )
    evaluate.add_argument(
        "--demand",
        help="a SUMO route file, a share of the scenario's (50%%, FILE@50%%) or a level "
        "(light, moderate, heavy, saturated); default: the scenario's own route files",
    )
    evaluate.add_argument("--seeds", type=int, default=5, help="seeds (1-1000)")
    evaluate.add_argument(
        "--after",
        type=float,
        default=1800.0,
        help="seconds the run goes on after the last departure",
    )
    add_engine_option(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--ceiling",
        action="store_true",
        help="also run green_all_the_way: every signal on the route green for the ambulance "
        "from dispatch, the best any signal control could do for it",
    )
    evaluate.add_argument(
        "--out", type=Path, default=Path("out/evaluate"), help="JSON and diagram go here"
    )


def main(args: argparse.Namespace) -> int:
    from citybrain import evaluate
    from citybrain.demo import json_text, write_json
    from citybrain.diagram import time_space_diagram
    from citybrain.models.errors import ValidationError

    if args.ambulances is not None:
        ambulances = evaluate.read_ambulances(args.ambulances, depart_s=args.depart)
    elif args.origin and args.destination:
        ambulances = (evaluate.Ambulance("AMB-1", args.origin, args.destination, args.depart),)
    else:
        raise ValidationError("route", "give --from EDGE --to EDGE, or --ambulances FILE")
    study = evaluate.Study(
        network=args.network,
        ambulances=ambulances,
        demand=args.demand,
        seeds=args.seeds,
        after_s=args.after,
        engine=args.engine,
        ceiling=args.ceiling,
    )
    out = output_folder(args.out)
    logging.getLogger("citybrain").setLevel(logging.WARNING)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = evaluate.evaluate(study, progress=progress)
    data = evaluate.to_json(result)
    write_json(data, out / "evaluate.json")
    first = {policy: outcomes[0] for policy, outcomes in result.comparison.outcomes.items()}
    for ambulance in ambulances:
        time_space_diagram(first, out / f"{ambulance.name}.png", vehicle=ambulance.name)
    if args.json:
        print(json_text(data))
    else:
        print(evaluate.render(data))
        print(f"\n  JSON and time-space diagrams (seed 0) in {out}/")
    return 0
