"""How SUMO micro's drivers discharge a standing queue at green, against what the network
declares (issue 13): the crossing bound (``simulator/crossing.py``) takes each approach's
saturation headway from the network (1,800 veh/h a lane: 2.0 s) and a 2 s start-up lost time,
and a slower discharge in SUMO would raise what any timing of the crossing could do there.

    .venv/bin/python benchmarks/sumo_discharge.py [--seeds 1] [--out out/bench]

The demo grid's traffic (``closed_loop.GRID``, heavy demand) without priority, in SUMO under
our emulated controllers; per lane of every signal, at each onset of green with at least four
vehicles standing at the line (nose to tail, less than 15 m apart), when each of them crossed
the stop line (left the lane for the junction), until the green ended or one changed lanes.
Reported: the mean departure time of the k-th vehicle after the onset, the headway from the
fifth vehicle on (saturation) and the start-up the bound's model implies (it lets the first
vehicle leave that long after the onset and each next one a headway later: the k-th departure
less k - 1 saturation headways, from the fifth on), over all signals and at the crossing
(``g4_5``). Departures are seen at SUMO's steps (1 s), each counted half a step before the end
of the step it happened in. A table, one verdict line, JSON in ``OUT/sumo_discharge.json``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from citybrain.closed_loop import GRID, setup_scenario
from citybrain.demo import json_text
from citybrain.models.traffic import DEFAULT_LOST_TIME_S, saturation_headway_s
from citybrain.simulator.runner import Engine
from citybrain.simulator.sumo_run import libsumo_module, open_run

CROSSING = "g4_5"
LEAST_QUEUE = 4
"""Vehicles standing at the line for an onset to count."""
QUEUE_GAP_M = 15.0
"""A larger gap between standing vehicles ends the queue (the rest arrived later)."""
SATURATED_FROM = 5
"""The HCM's rule: headways from the fifth queued vehicle on are at saturation."""


@dataclass
class _Onset:
    tls: str
    lane: str
    at_s: float
    queue: list[str]
    left_s: list[float] = field(default_factory=list)


class Probe:
    """Watches every signalized lane each step (``SumoRun.advance``'s ``on_step``)."""

    def __init__(self, lib: ModuleType, step_s: float) -> None:
        self.lib, self.step_s = lib, step_s
        self.lanes: dict[tuple[str, str], list[int]] = defaultdict(list)
        for tls in lib.trafficlight.getIDList():
            for index, links in enumerate(lib.trafficlight.getControlledLinks(tls)):
                for incoming, _, _ in links:
                    self.lanes[(tls, incoming)].append(index)
        self.signals = sorted({tls for tls, _ in self.lanes})
        self.green: dict[tuple[str, str], bool] = {}
        self.open: dict[tuple[str, str], _Onset] = {}
        self.done: list[_Onset] = []

    def __call__(self, now_s: float) -> None:
        states = {tls: self.lib.trafficlight.getRedYellowGreenState(tls) for tls in self.signals}
        for key, indices in self.lanes.items():
            green = any(states[key[0]][i] in "Gg" for i in indices)
            was = self.green.get(key, True)
            self.green[key] = green
            if key in self.open:
                self._follow(key, green, now_s)
            if green and not was:
                self._start(key, now_s)

    def _start(self, key: tuple[str, str], now_s: float) -> None:
        lib, lane = self.lib, key[1]
        length = lib.lane.getLength(lane)
        standing = sorted(
            (length - lib.vehicle.getLanePosition(v), v)
            for v in lib.lane.getLastStepVehicleIDs(lane)
            if lib.vehicle.getSpeed(v) < 0.1
        )
        queue, behind = [], 0.0
        for gap, vehicle in standing:
            if gap - behind > QUEUE_GAP_M:
                break
            queue.append(vehicle)
            behind = gap
        if len(queue) >= LEAST_QUEUE:
            self.open[key] = _Onset(key[0], lane, now_s, queue)

    def _follow(self, key: tuple[str, str], green: bool, now_s: float) -> None:
        onset = self.open[key]
        while green and len(onset.left_s) < len(onset.queue):
            vehicle = onset.queue[len(onset.left_s)]
            where = self.lib.vehicle.getLaneID(vehicle)
            if where == onset.lane:
                break  # queued vehicles leave in order: the rest are still behind it
            if where.startswith(":") or where.rsplit("_", 1)[0] != onset.lane.rsplit("_", 1)[0]:
                onset.left_s.append(now_s - 0.5 * self.step_s)
            else:  # changed lanes before the line: the queue measured ends there
                onset.queue = onset.queue[: len(onset.left_s)]
        if not green or len(onset.left_s) == len(onset.queue):
            del self.open[key]
            if len(onset.left_s) >= LEAST_QUEUE:
                self.done.append(onset)


def measure(seed: int) -> list[_Onset]:
    """Every queue discharge at green in one seed's grid run without priority."""
    scenario = setup_scenario(GRID, seed)
    with open_run(Engine.SUMO, scenario) as run:
        probe = Probe(libsumo_module(), run.sim.dt)
        run.advance(GRID.warmup_s + GRID.after_s, on_step=probe)
    return probe.done


def summarize(onsets: list[_Onset]) -> dict[str, Any]:
    """Mean departure after the onset per queue position, saturation headway, start-up."""
    by_position: dict[int, list[float]] = defaultdict(list)
    headways, lost = [], []
    for onset in onsets:
        after = [t - onset.at_s for t in onset.left_s]
        for k, t in enumerate(after, 1):
            by_position[k].append(t)
        headways += [b - a for a, b in itertools.pairwise(after[SATURATED_FROM - 2 :])]
    headway = statistics.fmean(headways) if headways else float("nan")
    for onset in onsets:
        after = [t - onset.at_s for t in onset.left_s]
        lost += [t - (k - 1) * headway for k, t in enumerate(after, 1) if k >= SATURATED_FROM]
    return {
        "onsets": len(onsets),
        "departure_s": {
            k: round(statistics.fmean(ts), 2)
            for k, ts in sorted(by_position.items())
            if len(ts) >= 10
        },
        "saturation_headway_s": round(headway, 3),
        "headways": len(headways),
        "start_up_lost_s": round(statistics.fmean(lost), 2) if lost else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()
    onsets: list[_Onset] = []
    for seed in range(1, args.seeds + 1):
        onsets += measure(seed)
        print(f"  seed {seed}: {len(onsets)} queue discharges so far", flush=True)
    results = {
        "every signal": summarize(onsets),
        CROSSING: summarize([o for o in onsets if o.tls == CROSSING]),
    }
    declared = saturation_headway_s(1800.0)
    print(f"SUMO micro discharging standing queues at green, demo grid, {args.seeds} seed(s)")
    print(f"  {'where':14} {'onsets':>7} {'headway s':>10} {'start-up s':>11}  departures 1..8 (s)")
    for where, r in results.items():
        first = [f"{r['departure_s'][k]:.1f}" for k in range(1, 9) if k in r["departure_s"]]
        print(
            f"  {where:14} {r['onsets']:7d} {r['saturation_headway_s']:10.2f} "
            f"{r['start_up_lost_s']:11.2f}  {' '.join(first)}"
        )
    every = results["every signal"]
    print(
        f"verdict: SUMO discharges {every['saturation_headway_s']:.2f} s a vehicle a lane "
        f"against the {declared:.2f} s the network declares "
        f"({every['saturation_headway_s'] / declared:.2f}x), start-up "
        f"{every['start_up_lost_s']:.1f} s against the bound's {DEFAULT_LOST_TIME_S:.1f} s"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sumo_discharge.json").write_text(json_text({"seeds": args.seeds, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
