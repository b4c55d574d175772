"""Named scenarios: a network, a demand level and optionally an ambulance, built from a seed."""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.simulator import netfile
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import Peak, Trips, fixed_route, random_trips
from citybrain.simulator.networks import RoadNetwork, arterial, grid


class Level(enum.StrEnum):
    LIGHT = "light"
    MODERATE = "moderate"
    HEAVY = "heavy"
    SATURATED = "saturated"


# Vehicles per hour entering on each main-road entry / each cross-street or grid entry. The
# arterial's main through gets about 1,400 veh/h of capacity per direction (2 lanes, 39 s of
# 100 s green plus end lag); "saturated" sends about 1,900 veh/h through or right into it
# (v/c about 1.3), so queues grow and spill back.
MAIN_ENTRY_VPH = {
    Level.LIGHT: 400.0,
    Level.MODERATE: 800.0,
    Level.HEAVY: 1200.0,
    Level.SATURATED: 2200.0,
}
SIDE_ENTRY_VPH = {
    Level.LIGHT: 60.0,
    Level.MODERATE: 120.0,
    Level.HEAVY: 200.0,
    Level.SATURATED: 300.0,
}
GRID_ENTRY_VPH = {
    Level.LIGHT: 200.0,
    Level.MODERATE: 400.0,
    Level.HEAVY: 650.0,
    Level.SATURATED: 1000.0,
}

_GRID = re.compile(r"grid:(\d+)x(\d+)")


def load_network(spec: str) -> RoadNetwork:
    """``arterial``, ``arterial:N``, ``grid:RxC`` or the path of a network file."""
    if spec == "arterial":
        return arterial()
    if spec.startswith("arterial:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit():
            raise ValidationError("network", f"expected arterial:N, got {spec!r}")
        return arterial(int(count))
    match = _GRID.fullmatch(spec)
    if match:
        return grid(int(match.group(1)), int(match.group(2)))
    path = Path(spec)
    if not path.is_file():
        raise ValidationError(
            "network", f"{spec!r} is neither arterial[:N], grid:RxC nor an existing network file"
        )
    return netfile.load(path)


@dataclass(frozen=True)
class Scenario:
    name: str
    net: CompiledNetwork
    trips: Trips
    duration_s: float
    seed: int


def build(
    network: str,
    *,
    level: Level,
    duration_s: float,
    seed: int,
    peak: bool = False,
    ambulance_at_s: float | None = None,
) -> Scenario:
    check_number("duration_s", duration_s, gt=0.0, le=7 * 86400.0)
    check_count("seed", seed)
    road = load_network(network)
    net = compile_network(road)
    nodes = road.network.intersection_by_id
    entries = [link for link in road.network.links if not nodes[link.from_node].signalized]
    if not entries:
        raise ValidationError("network", "the network has no entry link for demand")
    is_arterial = "west" in nodes and "east" in nodes
    weights: dict[str, float] = {}
    for link in entries:
        if is_arterial:
            main = link.from_node in ("west", "east")
            weights[link.id] = (MAIN_ENTRY_VPH if main else SIDE_ENTRY_VPH)[level]
        else:
            weights[link.id] = GRID_ENTRY_VPH[level]
    shape = Peak(duration_s / 2, duration_s / 6, 1.5) if peak else None
    trips = random_trips(
        net,
        seed=seed,
        duration_s=duration_s,
        vehicles_per_hour=sum(weights.values()),
        peak=shape,
        origin_weights=weights,
    )
    if ambulance_at_s is not None:
        trips = Trips.concat(
            [trips, fixed_route(net, _main_route(road), depart_s=ambulance_at_s, name="AMB-1")]
        )
    return Scenario(f"{road.name}-{level}", net, trips, duration_s, seed)


def _main_route(road: RoadNetwork) -> list[str]:
    """Along the arterial from a station on the first cross street (south of the first
    junction, turning east there, so every signalized junction is crossed) to its east end;
    or along the grid's first row."""
    nodes = road.network.intersection_by_id
    if "west" in nodes and "east" in nodes:
        junctions = sorted(n for n in road.plans)
        chain = [f"{junctions[0]}s", *junctions, "east"]
    else:
        columns = sorted(
            (n for n in road.plans if n.startswith("g0_")), key=lambda n: int(n.split("_")[1])
        )
        chain = ["bW0", *columns, "bE0"]
    links = [f"{a}-{b}" for a, b in itertools.pairwise(chain)]
    missing = [link for link in links if link not in road.network.link_by_id]
    if missing:
        raise ValidationError(
            "ambulance", f"this network has no main route (missing {missing[:3]})"
        )
    return links
