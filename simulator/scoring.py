"""What a run measured: per vehicle, per approach and intersection, queues over time, and for
each emergency vehicle its trip stop line by stop line against free flow; and where the
vehicles that did not arrive are (waiting to enter, stuck in a jam, still driving)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from citybrain.simulator.demand import free_flow_times_s, hop_metres
from citybrain.simulator.kernels import ARRIVED, PENDING
from citybrain.simulator.runner import SimulationRun


@dataclass(frozen=True, slots=True)
class StopLineDelay:
    intersection: str
    link: str
    entered_s: float
    left_s: float
    delay_s: float


@dataclass(frozen=True, slots=True)
class EmergencyTrip:
    vehicle: str
    depart_s: float
    arrived_s: float | None
    travel_time_s: float | None
    free_flow_s: float
    stops: int
    stop_lines: tuple[StopLineDelay, ...]


@dataclass(frozen=True, slots=True)
class ApproachScore:
    approach: str
    intersection: str
    departures: int
    mean_delay_s: float
    max_queue_veh: int


STUCK_AFTER_S = 300.0
"""A vehicle delayed this long on one link is stuck (SUMO's default ``--time-to-teleport``;
our engine never teleports, so a gridlock shows as stuck vehicles instead)."""


@dataclass(frozen=True)
class RunScore:
    """A run's summary. The means are over the arrived vehicles, 0.0 when none arrived
    (``arrived`` then says so, and ``lines`` prints it instead of the means)."""

    scenario: str
    duration_s: float
    vehicles: int
    arrived: int
    in_network: int
    not_departed: int
    mean_travel_time_s: float
    mean_delay_s: float
    mean_stops: float
    throughput_vph: float
    approaches: tuple[ApproachScore, ...]
    intersections: dict[str, float]
    emergency: tuple[EmergencyTrip, ...]
    waiting_to_enter: int
    """Of ``not_departed``: due, but their first link was full (the others leave later)."""
    stuck: int
    """Of ``in_network``: delayed over ``STUCK_AFTER_S`` on the link they are on."""

    def lines(self) -> list[str]:
        """The summary as text: counts, means (or that no vehicle arrived), emergency trips."""
        out = [
            f"{self.scenario}: {self.vehicles} vehicles, {self.arrived} arrived, "
            f"{self.in_network} still in the network, {self.not_departed} not departed"
        ]
        if self.waiting_to_enter:
            out.append(f"  {self.waiting_to_enter} due but not let in: their first link was full")
        if self.stuck:
            out.append(
                f"  {self.stuck} stuck: over {STUCK_AFTER_S:.0f} s of delay on one link "
                "(gridlock; SUMO would teleport them)"
            )
        if self.arrived:
            out.append(
                f"  mean travel time {self.mean_travel_time_s:.1f} s, delay "
                f"{self.mean_delay_s:.1f} s, stops {self.mean_stops:.2f}, "
                f"throughput {self.throughput_vph:.0f} veh/h"
            )
        else:
            out.append("  no vehicle arrived: no travel time, delay or stops to report")
        for trip in self.emergency:
            done = "not arrived" if trip.travel_time_s is None else f"{trip.travel_time_s:.1f} s"
            out.append(
                f"  {trip.vehicle}: {done} (free flow {trip.free_flow_s:.1f} s), {trip.stops} stops"
            )
        return out


def free_flow_times(run: SimulationRun) -> np.ndarray:
    """Per vehicle: route length (junctions included) over desired speed, signals and
    queues aside."""
    return free_flow_times_s(run.net, run.trips)


def score(run: SimulationRun, *, scenario: str, started_s: float) -> RunScore:
    sim, trips, net = run.sim, run.trips, run.net
    done = sim.state == ARRIVED
    travel = sim.arrived[done] - trips.depart[done]
    delay = travel - free_flow_times(run)[done]
    duration = sim.now - started_s
    queues = np.max(np.stack(run.samples), axis=0) if run.samples else sim.link_queued
    road = net.road.network
    approaches = []
    by_node: dict[str, list[tuple[int, float]]] = {}
    for approach in road.approaches:
        link = net.link_index[approach.link_id]
        n = int(sim.link_departures[link])
        mean = float(sim.link_delay[link] / n) if n else 0.0
        approaches.append(
            ApproachScore(approach.id, approach.intersection_id, n, mean, int(queues[link]))
        )
        by_node.setdefault(approach.intersection_id, []).append((n, mean))
    intersections = {
        node: (sum(n * d for n, d in parts) / total if (total := sum(n for n, _ in parts)) else 0.0)
        for node, parts in by_node.items()
    }
    return RunScore(
        scenario,
        duration,
        trips.count,
        int(done.sum()),
        sim.vehicles_in_network,
        int((sim.state == PENDING).sum()),
        float(travel.mean()) if travel.size else 0.0,
        float(delay.mean()) if delay.size else 0.0,
        float(sim.stops[done].mean()) if travel.size else 0.0,
        float(done.sum() / duration * 3600.0) if duration > 0 else 0.0,
        tuple(approaches),
        intersections,
        tuple(_emergency(run, index, name) for index, name in sorted(trips.names.items())),
        int(sim.n_waiting[0]),
        _stuck(run),
    )


def _stuck(run: SimulationRun) -> int:
    """Vehicles in the network delayed over ``STUCK_AFTER_S`` on their current link."""
    sim, trips, net = run.sim, run.trips, run.net
    on_road = sim.active[: sim.vehicles_in_network]
    hops = trips.route_start[on_road] + sim.hop[on_road]
    links = trips.route_links[hops]
    free = hop_metres(net, trips, hops) / (net.link_speed[links] * trips.speed_factor[on_road])
    return int(np.count_nonzero(sim.now - sim.hop_enter[hops] - free > STUCK_AFTER_S))


def _emergency(run: SimulationRun, v: int, name: str) -> EmergencyTrip:
    sim, trips, net = run.sim, run.trips, run.net
    start, length = int(trips.route_start[v]), int(trips.route_len[v])
    factor = float(trips.speed_factor[v])
    lines = []
    for hop in range(length):
        link = int(trips.route_links[start + hop])
        entered = float(run.sim.hop_enter[start + hop])
        left = float(sim.hop_enter[start + hop + 1]) if hop + 1 < length else float(sim.arrived[v])
        if np.isnan(entered) or np.isnan(left):
            break
        free = hop_metres(net, trips, np.array([start + hop]))[0] / (net.link_speed[link] * factor)
        node = net.road.network.link_by_id[net.link_ids[link]].to_node
        lines.append(StopLineDelay(node, net.link_ids[link], entered, left, left - entered - free))
    arrived = float(sim.arrived[v]) if sim.state[v] == ARRIVED else None
    free_flow = float(free_flow_times(run)[v])
    return EmergencyTrip(
        name,
        float(trips.depart[v]),
        arrived,
        None if arrived is None else arrived - float(trips.depart[v]),
        free_flow,
        int(sim.stops[v]),
        tuple(lines),
    )


def write(result: RunScore, run: SimulationRun, out: Path) -> list[Path]:
    """Write summary.json, vehicles.csv, approaches.csv and queues.csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = asdict(result)
    summary.pop("approaches")
    paths = [out / "summary.json", out / "vehicles.csv", out / "approaches.csv", out / "queues.csv"]
    paths[0].write_text(json.dumps(summary, indent=2, allow_nan=False))
    sim, trips = run.sim, run.trips
    free = free_flow_times(run)
    with paths[1].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "vehicle",
                "depart_s",
                "arrived_s",
                "travel_time_s",
                "free_flow_s",
                "delay_s",
                "stops",
                "emergency",
            ]
        )
        for v in np.flatnonzero(sim.state == ARRIVED):
            tt = sim.arrived[v] - trips.depart[v]
            writer.writerow(
                [
                    trips.names.get(int(v), int(v)),
                    f"{trips.depart[v]:.1f}",
                    f"{sim.arrived[v]:.1f}",
                    f"{tt:.1f}",
                    f"{free[v]:.1f}",
                    f"{tt - free[v]:.1f}",
                    int(sim.stops[v]),
                    bool(trips.emergency[v]),
                ]
            )
    with paths[2].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["approach", "intersection", "departures", "mean_delay_s", "max_queue_veh"])
        for a in result.approaches:
            writer.writerow(
                [a.approach, a.intersection, a.departures, f"{a.mean_delay_s:.2f}", a.max_queue_veh]
            )
    with paths[3].open("w", newline="") as handle:
        writer = csv.writer(handle)
        road = run.net.road.network
        links = [run.net.link_index[a.link_id] for a in road.approaches]
        writer.writerow(["time_s", *(a.id for a in road.approaches)])
        for t, sample in zip(run.sample_times, run.samples, strict=True):
            writer.writerow([f"{t:.0f}", *(int(sample[link]) for link in links)])
    return paths
