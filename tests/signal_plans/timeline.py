"""An independent check of display steps, written apart from the validator on purpose.

It rebuilds each group's coloured intervals over time and checks them interval by interval,
so a bug shared with ``check_steps`` would have to be made twice to go unnoticed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from citybrain.models.signal import Indication
from citybrain.signal_plans.state import ControllerState, SignalStep

TOLERANCE = 1e-6


@dataclass
class Span:
    colour: Indication
    start: float
    end: float


def spans(
    state: ControllerState, steps: Sequence[SignalStep], horizon: float
) -> dict[str, list[Span]]:
    out = {g: [Span(s.indication, s.since_s, horizon)] for g, s in state.groups.items()}
    for step in steps:
        for group, runs in out.items():
            colour = step.indication(group)
            if colour is not runs[-1].colour:
                runs[-1].end = step.at_s
                runs.append(Span(colour, step.at_s, horizon))
    return out


def violations(state: ControllerState, steps: Sequence[SignalStep]) -> list[str]:
    signals = state.signals
    horizon = (steps[-1].at_s if steps else state.at_s) + 1000.0
    timeline = spans(state, steps, horizon)
    found: list[str] = []
    for group, runs in timeline.items():
        timing = signals.timings[group]
        for before, after in itertools.pairwise(runs):
            order = (before.colour, after.colour)
            if order not in {
                (Indication.GREEN, Indication.YELLOW),
                (Indication.YELLOW, Indication.RED),
                (Indication.RED, Indication.GREEN),
            }:
                found.append(f"{group}: {before.colour} then {after.colour} at {after.start}")
            length = before.end - before.start
            if before.colour is Indication.YELLOW and length < timing.yellow_s - TOLERANCE:
                found.append(f"{group}: yellow of {length}")
            if before.colour is Indication.GREEN and length < timing.min_green_s - TOLERANCE:
                found.append(f"{group}: green of {length}")
    opened = {
        g: [(r.start, r.end) for r in runs if r.colour is not Indication.RED]
        for g, runs in timeline.items()
    }
    cleared = {
        g: [r.start for r in runs if r.colour is Indication.RED] for g, runs in timeline.items()
    }
    for pair in signals.conflict_pairs:
        a, b = sorted(pair)
        for start_a, end_a in opened[a]:
            for start_b, end_b in opened[b]:
                if min(end_a, end_b) - max(start_a, start_b) > TOLERANCE:
                    found.append(f"{a} and {b} open together from {max(start_a, start_b)}")
        for first, second in ((a, b), (b, a)):
            clearance = signals.timings[first].red_clearance_s
            for red_from in cleared[first]:
                for start, _ in opened[second]:
                    if red_from < start < red_from + clearance - TOLERANCE and start > state.at_s:
                        found.append(f"{second} starts {start} inside {first}'s red clearance")
    return found
