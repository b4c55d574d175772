"""Named scenarios: a network, a demand level and optionally emergency vehicles, built from a
seed."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from citybrain.models.checks import check_count, check_number, check_unique
from citybrain.models.errors import ValidationError
from citybrain.simulator import netfile, sumo
from citybrain.simulator.cities import ACCEPTED_SPECS, resolve_scenario
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import Peak, Trips, entry_links, fixed_route, random_trips
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
# On grid:10x10, "heavy" is served at steady state from about 1,500 s (some 4,400 vehicles in
# the grid, arrivals matching demand, no link full); "saturated" is not: the grid keeps filling
# for as long as demand lasts (links at storage after two hours).
GRID_ENTRY_VPH = {
    Level.LIGHT: 200.0,
    Level.MODERATE: 400.0,
    Level.HEAVY: 650.0,
    Level.SATURATED: 1000.0,
}

_GRID = re.compile(r"grid:(\d+)x(\d+)")

AMBULANCE_SPEED_FACTOR = 1.3
"""An ambulance's desired speed over the speed limit, on free road."""
CONTINUED_SEED_OFFSET = 1_000_003
"""The seed of a scenario's continued demand is its own plus this: a stream apart."""

Direction = Literal["eastbound", "westbound"]
"""Which way ``AMB-1`` crosses the main route. The arterial's offsets make an eastbound green
wave, so westbound it drives against the progression and meets far more reds."""


def load_network(spec: str) -> RoadNetwork:
    """``arterial``, ``arterial:N``, ``grid:RxC``, the path of a network file of ours, or a
    SUMO scenario (`cities.resolve_scenario`: ``resco:NAME``, a ``.sumocfg``, a
    ``.net.xml[.gz]``), whose network `sumo.read_net` imports."""
    return load_network_and_sumo(spec)[0]


def load_network_and_sumo(spec: str) -> tuple[RoadNetwork, sumo.SumoNet | None]:
    """``load_network``, and for a SUMO scenario its import (which SUMO runs it on)."""
    if spec == "arterial":
        return arterial(), None
    if spec.startswith("arterial:"):
        count = spec.split(":", 1)[1]
        if not count.isdigit():
            raise ValidationError("network", f"expected arterial:N, got {spec!r}")
        return arterial(int(count)), None
    match = _GRID.fullmatch(spec)
    if match:
        return grid(int(match.group(1)), int(match.group(2))), None
    scenario = resolve_scenario(spec)
    if scenario is not None:
        snet = sumo.read_net(scenario.net_file, begin_s=scenario.begin_s)
        return snet.road, snet
    path = Path(spec)
    if not path.is_file():
        raise ValidationError(
            "network", f"{spec!r} is neither a known spec nor a file; expected {ACCEPTED_SPECS}"
        )
    if path.name.endswith((".xml", ".xml.gz", ".sumocfg")):  # not XML: `resolve_scenario`
        raise ValidationError("network", f"{spec}: empty or not XML; expected {ACCEPTED_SPECS}")
    try:
        return netfile.load(path), None
    except ValidationError as error:
        if path.suffix == ".json":
            raise
        raise ValidationError(error.field, f"{error.reason}; expected {ACCEPTED_SPECS}") from None


@dataclass(frozen=True)
class Scenario:
    name: str
    net: CompiledNetwork
    trips: Trips
    duration_s: float
    seed: int
    sumo_net: sumo.SumoNet | None = None
    """The SUMO network it came from (a SUMO scenario): SUMO runs it on its own ``.net.xml``;
    ours are exported (`sumo_export`)."""


@dataclass(frozen=True, slots=True)
class AmbulanceSpec:
    """An emergency vehicle on a fixed route (link ids) leaving at ``depart_s``."""

    name: str
    route: tuple[str, ...]
    depart_s: float
    speed_factor: float = AMBULANCE_SPEED_FACTOR


def build(
    network: str | RoadNetwork,
    *,
    level: Level,
    duration_s: float,
    seed: int,
    peak: bool = False,
    ambulance_at_s: float | None = None,
    ambulance_direction: Direction = "eastbound",
    ambulances: Sequence[AmbulanceSpec] = (),
    continued_s: float = 0.0,
) -> Scenario:
    """Seeded random demand on ``network`` (a spec for `load_network`, or a network already
    loaded), then ``AMB-1`` along the main route (`main_route`, ``ambulance_direction``) at
    ``ambulance_at_s`` and ``ambulances``, in that order, after the traffic (so they never
    change the traffic a seed gives). ``continued_s``: the same demand goes on that long
    after ``duration_s`` (a system left running for people to explore), drawn apart so that
    the first ``duration_s`` hold the very traffic they hold without it."""
    check_number("duration_s", duration_s, gt=0.0, le=7 * 86400.0)
    check_number("continued_s", continued_s, ge=0.0, le=7 * 86400.0)
    check_count("seed", seed)
    road, snet = load_network_and_sumo(network) if isinstance(network, str) else (network, None)
    net = compile_network(road)
    nodes = road.network.intersection_by_id
    entries = list(entry_links(road.network))
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
    if continued_s > 0.0:
        later = random_trips(
            net,
            seed=seed + CONTINUED_SEED_OFFSET,
            duration_s=continued_s,
            vehicles_per_hour=sum(weights.values()),
            origin_weights=weights,
        )
        trips = Trips.concat([trips, dataclasses.replace(later, depart=later.depart + duration_s)])
    specs = list(ambulances)
    if ambulance_at_s is not None:
        route = tuple(main_route(road, ambulance_direction))
        specs.insert(0, AmbulanceSpec("AMB-1", route, ambulance_at_s))
    check_unique("ambulances", [spec.name for spec in specs])
    if specs:
        vehicles = [
            fixed_route(
                net,
                spec.route,
                depart_s=spec.depart_s,
                name=spec.name,
                speed_factor=spec.speed_factor,
            )
            for spec in specs
        ]
        trips = Trips.concat([trips, *vehicles])
    return Scenario(f"{road.name}-{level}", net, trips, duration_s, seed, snet)


class Meeting(enum.StrEnum):
    """How the ambulances of a grid case meet at its junction ``g{row}_{column}``."""

    CROSSING = "crossing"
    """AMB-1 along the row west to east, AMB-2 along the column south to north: different
    phases, taken in turn."""
    HEAD_ON = "head-on"
    """AMB-2 along the row east to west: the opposing through, one phase for both."""
    CONVOY = "convoy"
    """AMB-2 behind AMB-1 on its route, ``CONVOY_GAP_S`` later (two crews sent to one call)."""
    THREE_WAY = "three-way"
    """Head on, and AMB-3 along the column as well: two vehicles served by one phase against
    one served by another."""


CONVOY_GAP_S = 20.0
"""How long after AMB-1 the second of a convoy leaves: close enough for one green to serve
both at every signal, the case where its corridor must cost the first nothing."""


def crossing_ambulances(
    road: RoadNetwork,
    *,
    row: int,
    column: int,
    at_s: float,
    speed_factor: float = AMBULANCE_SPEED_FACTOR,
    meeting: Meeting = Meeting.CROSSING,
) -> tuple[AmbulanceSpec, ...]:
    """Ambulances that meet at junction ``g{row}_{column}`` of a ``grid`` as ``meeting`` says,
    AMB-1 along ``row`` west to east leaving at ``at_s``, the others leaving so that at free
    flow they reach that junction's stop line at the same moment (a convoy's second
    ``CONVOY_GAP_S`` after the first), where their corridors compete for it or share its
    green."""
    nodes = road.network.intersection_by_id
    rows = sum(1 for n in nodes if n.startswith("bW"))
    columns = sum(1 for n in nodes if n.startswith("bS"))
    check_count("row", row, le=max(rows - 1, 0))
    check_count("column", column, le=max(columns - 1, 0))
    east = _links(road, [f"bW{row}", *(f"g{row}_{c}" for c in range(columns)), f"bE{row}"])
    west = _links(
        road, [f"bE{row}", *(f"g{row}_{c}" for c in reversed(range(columns))), f"bW{row}"]
    )
    north = _links(road, [f"bS{column}", *(f"g{r}_{column}" for r in range(rows)), f"bN{column}"])
    others = {
        Meeting.CROSSING: [north],
        Meeting.HEAD_ON: [west],
        Meeting.CONVOY: [east],
        Meeting.THREE_WAY: [west, north],
    }[meeting]
    crossing = f"g{row}_{column}"
    first = _free_flow_to(road, east, crossing, speed_factor)
    gap = CONVOY_GAP_S if meeting is Meeting.CONVOY else 0.0
    return (
        AmbulanceSpec("AMB-1", tuple(east), at_s, speed_factor),
        *(
            AmbulanceSpec(
                f"AMB-{number}",
                tuple(route),
                at_s + gap + first - _free_flow_to(road, route, crossing, speed_factor),
                speed_factor,
            )
            for number, route in enumerate(others, start=2)
        ),
    )


def _links(road: RoadNetwork, chain: Sequence[str]) -> list[str]:
    links = [f"{a}-{b}" for a, b in itertools.pairwise(chain)]
    missing = [link for link in links if link not in road.network.link_by_id]
    if missing:
        raise ValidationError(
            "ambulance", f"this network has no such route (missing {missing[:3]})"
        )
    return links


def _free_flow_to(road: RoadNetwork, route: Sequence[str], node: str, speed_factor: float) -> float:
    """Seconds from the start of ``route`` to the stop line at ``node`` on free road."""
    seconds = 0.0
    for link_id in route:
        link = road.network.link_by_id[link_id]
        seconds += link.length_m / (link.speed_limit_mps * speed_factor)
        if link.to_node == node:
            return seconds
    raise ValidationError("crossing", f"the route does not reach {node!r}")


def main_route(road: RoadNetwork, direction: Direction = "eastbound") -> list[str]:
    """Along the arterial from a station on an end cross street, turning right onto the
    arterial there so every signalized junction is crossed: eastbound from south of the first
    junction to the east end, westbound from north of the last one to the west end. On a grid,
    along its first row, between its boundary nodes."""
    nodes = road.network.intersection_by_id
    if "west" in nodes and "east" in nodes:
        # by position, not name: past a99 the names no longer sort along the street
        junctions = sorted(road.plans, key=lambda n: nodes[n].x_m)
        if direction == "eastbound":
            chain = [f"{junctions[0]}s", *junctions, "east"]
        else:
            chain = [f"{junctions[-1]}n", *reversed(junctions), "west"]
    else:
        columns = sorted(
            (n for n in road.plans if n.startswith("g0_")), key=lambda n: int(n.split("_")[1])
        )
        chain = ["bW0", *columns, "bE0"]
        if direction == "westbound":
            chain.reverse()
    return _links(road, chain)
