"""SUMO interoperability: import a SUMO network, run the same demand in SUMO, compare.

``import_net`` (or ``read_net``, which also keeps the id mapping) reads a SUMO ``.net.xml``
(``sumo_xml``, a streaming reader) into our ``RoadNetwork``:

- Internal edges (``function="internal"``), crossings, walking areas and edges no passenger car
  may use are skipped. Every other edge becomes a ``Link``: SUMO's edge length (the lane length,
  stop line to stop line: it does not include the junction's internal lanes, which SUMO vehicles
  also drive), its speed, and one ``Lane`` per car lane, numbered from the kerb like SUMO's
  lane indices. A lane allows the turns of its connections (``s`` through, ``l``/``L`` left,
  ``r``/``R`` right, ``t``/``T`` U-turn); a lane without connections on an edge that has some
  gets its nearest neighbour's turns, and the lanes of an edge without any (a network exit)
  allow "through". U-turns at dead ends are kept, as SUMO routes through them; our random
  walks never choose a U-turn, so their routes still end at the network's edge.
- Junctions become ``Intersection``s. Each (incoming edge, outgoing edge) pair with a car
  connection is a ``Movement``.
- A junction a traffic light controls runs that light's own program (the one SUMO loads last):
  ``sumo_programs`` builds its signal groups from the program's link states, its conflicts
  from SUMO's junction foes and its timing plan from the phases, cycle and offset; a program it
  cannot represent safely gets a generated plan that respects every foe (said in ``notes``).
  A light that never stops a car at a junction leaves it unsignalized.
  ``signal_programs``/``write_signal_programs`` write our plans back over SUMO's link indices
  (phase boundaries snapped to the simulation step), so both simulators run the same timing.
- Junctions without a traffic light are unsignalized: their movements belong to a group
  ``free`` with no controller, so in our engine they always may proceed (SUMO applies its
  right-of-way rules there). A traffic light that controls several junctions whose plans have
  different cycles keeps SUMO's own program (``signal_programs`` says which), and so does one
  that controls no car movement we model (a dead end's U-turn, a crossing). Link indices shared
  by several connections show the first one's colour; indices of connections we do not model
  (crossings, bicycle-only links) stay red, as no such traffic is simulated.
- Ids are made valid for our model (``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``): other characters
  become ``_``, a leading non-alphanumeric gets an ``x`` prefix, long ids are shortened with a
  hash, clashes get a ``-2`` suffix. ``SumoNet`` maps both ways.

``export_for_sumo`` writes our pre-computed routes (``Trips``) as SUMO vehicles with the same
departure times, edges and speed factors, plus the signal programs. ``run_sumo`` runs SUMO
(microscopic, or mesoscopic with ``--mesosim --meso-junction-control``) and reads its
``--tripinfo-output`` and ``--statistic-output``; ``run_sumo_config`` runs a scenario
stand-alone as ``sumo -c`` does (``benchmarks/sumo_fidelity.py``); ``run_citybrain`` runs ours
the same way and ``compare`` does all of it on one network.

Travel times on both sides are measured from the *desired* departure (SUMO's ``depart`` minus
``departDelay``) to arrival at the end of the last edge, over the vehicles that arrived before
the end of the run; throughput is those arrivals per hour of simulated time.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from citybrain.models.checks import ID_PATTERN, check_count, check_number
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.network import (
    Approach,
    Detector,
    DetectorKind,
    Intersection,
    Lane,
    Link,
    Movement,
    Network,
    Turn,
)
from citybrain.models.signal import SignalGroup
from citybrain.signal_plans.timing import TimingPlan
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import (
    Trips,
    entry_links,
    random_trips,
    route_lengths_m,
    standing_mask,
)
from citybrain.simulator.engine import Simulation
from citybrain.simulator.kernels import ARRIVED, PENDING
from citybrain.simulator.networks import ADVANCE_DETECTOR_M, RoadNetwork
from citybrain.simulator.runner import Run
from citybrain.simulator.scoring import score
from citybrain.simulator.sumo_programs import (
    JunctionLayout,
    JunctionSignals,
    SignalsCache,
    bit_positions,
)
from citybrain.simulator.sumo_xml import (
    NetConnection,
    NetEdge,
    NetFile,
    NetJunction,
    NetProgram,
    read_net_file,
)

CAR = "passenger"
FREE_GROUP = "free"
"""Signal group of the movements of an unsignalized junction (no controller: always go)."""
PROGRAM_ID = "citybrain"
VEHICLE_TYPE = "citybrain_car"
ALWAYS_GREEN_S = 100.0
"""Length of the one-phase program of a traffic light none of whose junctions has a plan."""

TURNS = {
    "s": Turn.THROUGH,
    "l": Turn.LEFT,
    "L": Turn.LEFT,
    "r": Turn.RIGHT,
    "R": Turn.RIGHT,
    "t": Turn.UTURN,
    "T": Turn.UTURN,
}
"""SUMO connection directions; others (``invalid``) are not movements."""

_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_MAX_ID = 64


class SumoUnavailableError(CitybrainError):
    """sumolib or a SUMO binary is not installed (``pip install eclipse-sumo sumolib``)."""


class SumoError(CitybrainError):
    """A SUMO tool ran but failed; the message ends with the tail of its output."""


# --- finding SUMO ------------------------------------------------------------------------------


def _sumolib() -> Any:
    try:
        return importlib.import_module("sumolib")
    except ImportError:
        raise SumoUnavailableError(
            "sumolib is not installed: pip install sumolib (or the 'sumo' extra)"
        ) from None


def sumo_home() -> Path | None:
    """SUMO's installation folder: the ``eclipse-sumo`` package's, else ``$SUMO_HOME``."""
    try:
        package = importlib.import_module("sumo")
    except ImportError:
        package = None
    home = getattr(package, "SUMO_HOME", None) or os.environ.get("SUMO_HOME")
    return Path(home) if home else None


def find_binary(name: str = "sumo") -> Path | None:
    """A SUMO tool (``sumo``, ``netgenerate``, ``netconvert``...), or ``None`` if missing."""
    home = sumo_home()
    if home is not None:
        candidate = home / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def require_binary(name: str) -> Path:
    binary = find_binary(name)
    if binary is None:
        raise SumoUnavailableError(
            f"the SUMO tool {name!r} was not found: pip install eclipse-sumo"
        )
    return binary


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    home = sumo_home()
    if home is not None:
        env.setdefault("SUMO_HOME", str(home))
    return env


def sumo_version() -> str | None:
    """The first line of ``sumo --version`` (for example ``Eclipse SUMO sumo 1.28.0``)."""
    binary = find_binary("sumo")
    if binary is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - a resolved SUMO binary, fixed arguments
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:  # another machine's build, a hang
        raise SumoUnavailableError(
            f"{binary} does not run ({error}): pip install 'citybrain[sumo]', or point "
            "SUMO_HOME at a SUMO built for this machine"
        ) from None
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else None


def run_tool(command: Sequence[str], *, log: Path | None, timeout_s: float | None) -> float:
    """Run a SUMO tool; returns its wall time. Raises ``SumoError`` with its output's tail."""
    started = time.perf_counter()
    try:
        done = subprocess.run(  # noqa: S603 - a resolved SUMO binary and an argument list
            list(command),
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SumoError(f"{Path(command[0]).name} ran over {timeout_s} s") from None
    except OSError as error:
        raise SumoError(f"{Path(command[0]).name} does not run: {error}") from None
    wall = time.perf_counter() - started
    output = (done.stdout or "") + (done.stderr or "")
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n{output}")
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise SumoError(f"{Path(command[0]).name} {_ended(done.returncode)}:\n{tail}")
    return wall


def _ended(returncode: int) -> str:
    """How a tool's process ended: a crash by its signal's name, else its exit status."""
    if returncode < 0:
        try:
            return f"crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"


def netgenerate_grid(
    out: Path,
    *,
    rows: int,
    columns: int,
    spacing_m: float = 200.0,
    feeder_m: float = 150.0,
    lanes: int = 3,
    speed_mps: float = 13.9,
    traffic_lights: bool = True,
    turnarounds: bool = False,
    timeout_s: float | None = 600.0,
) -> Path:
    """A ``rows`` x ``columns`` SUMO grid like ``networks.grid``: junctions ``spacing_m`` apart,
    feeder edges of ``feeder_m`` to dead ends on every side, no U-turns unless
    ``turnarounds``, and a traffic light at every grid junction
    (``--default-junction-type traffic_light``) unless told otherwise."""
    check_count("rows", rows, ge=2, le=1000)
    check_count("columns", columns, ge=2, le=1000)
    check_number("spacing_m", spacing_m, ge=20.0, le=5000.0)
    check_number("feeder_m", feeder_m, ge=20.0, le=5000.0)
    check_count("lanes", lanes, ge=1, le=8)
    check_number("speed_mps", speed_mps, gt=0.0, le=70.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(require_binary("netgenerate")),
        "--grid",
        "--grid.x-number",
        str(columns),
        "--grid.y-number",
        str(rows),
        "--grid.length",
        f"{spacing_m:g}",
        "--grid.attach-length",
        f"{feeder_m:g}",
        "--default.lanenumber",
        str(lanes),
        "--default.speed",
        f"{speed_mps:g}",
        "--default-junction-type",
        "traffic_light" if traffic_lights else "priority",
        "--output-file",
        str(out),
    ]
    if not turnarounds:
        command.append("--no-turnarounds")
    run_tool(command, log=out.with_suffix(".log"), timeout_s=timeout_s)
    return out


# --- import ------------------------------------------------------------------------------------


class _Ids:
    """Valid, unique ids within one namespace, from arbitrary SUMO ids."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, raw: str) -> str:
        if ID_PATTERN.fullmatch(raw) is not None and raw not in self.used:
            self.used.add(raw)  # what the rules below would make of it, without their cost
            return raw
        base = _BAD_ID_CHARS.sub("_", raw) or "x"
        if not base[0].isalnum():
            base = "x" + base
        if len(base) > _MAX_ID:
            digest = hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:8]
            base = f"{base[: _MAX_ID - 9]}-{digest}"
        candidate, n = base, 2
        while candidate in self.used:
            suffix = f"-{n}"
            candidate = base[: _MAX_ID - len(suffix)] + suffix
            n += 1
        self.used.add(candidate)
        return candidate

    def make_all(self, raws: Sequence[str]) -> list[str]:
        return [self.make(raw) for raw in raws]

    @classmethod
    def mapping(cls, raws: Sequence[str]) -> dict[str, str]:
        """Each of ``raws`` and its id, in a namespace of their own."""
        return dict(zip(raws, cls().make_all(raws), strict=True))


@dataclass(frozen=True, slots=True)
class TlsLink:
    """One controlled connection of a SUMO traffic light, seen from our network."""

    index: int
    """SUMO's link index (position in the traffic light's state string)."""
    node: str
    movement: str
    through: bool
    foes: frozenset[int]
    """Link indices of this traffic light at the same junction that cross or merge with it."""


@dataclass(frozen=True)
class SumoNet:
    """A SUMO network imported into ours, and how the two name things."""

    path: Path
    road: RoadNetwork
    edge_of_link: Mapping[str, str]
    """Our link id -> SUMO edge id."""
    link_of_edge: Mapping[str, str]
    junction_of_node: Mapping[str, str]
    """Our intersection id -> SUMO junction id."""
    tls_links: Mapping[str, tuple[TlsLink, ...]]
    """SUMO traffic light id -> its controlled car connections that we imported."""
    tls_size: Mapping[str, int]
    """SUMO traffic light id -> length of its state string."""
    notes: tuple[str, ...]
    """What the import could not carry over as it is (skipped edges, signals made free...)."""


@dataclass(slots=True)
class EdgePair:
    """Car connections from one edge to another (one movement); one per movement of a big
    network, hence the slots."""

    connections: list[NetConnection]
    junction: str


def _edge_heading(edge: NetEdge) -> str:
    """Heading of travel at the end of ``edge`` (E, N, W or S), to name its approach."""
    dx, dy = edge.lanes[0].end_heading
    if abs(dx) >= abs(dy):
        return "E" if dx >= 0 else "W"
    return "N" if dy > 0 else "S"


def _fill_lane_turns(per_lane: list[set[Turn]]) -> tuple[Lane, ...]:
    return _lanes(tuple(frozenset(turns) for turns in per_lane))


@functools.lru_cache(maxsize=4096)
def _lanes(per_lane: tuple[frozenset[Turn], ...]) -> tuple[Lane, ...]:
    """An edge's lanes from its lanes' own turns. Cached: a city's edges share a few lane
    layouts, and sharing their (immutable) lanes saves a set per lane of a big network."""
    known = [i for i, turns in enumerate(per_lane) if turns]
    lanes = []
    for i, turns in enumerate(per_lane):
        if not turns:
            turns = (
                per_lane[min(known, key=lambda k: (abs(k - i), k))]
                if known
                else frozenset({Turn.THROUGH})
            )
        lanes.append(Lane(i, turns))
    return tuple(lanes)


def read_net(
    path: str | os.PathLike[str],
    *,
    saturation_flow_vphpl: float = 1800.0,
    begin_s: float = 0.0,
) -> SumoNet:
    """Import a SUMO ``.net.xml`` (see the module docstring for the rules). ``begin_s`` is the
    SUMO time our time 0 stands for (a scenario's ``begin``): it places the programs' offsets.
    Raises ``ValidationError`` for a missing or unreadable file, a network without car roads
    or without traffic lights."""
    check_number("saturation_flow_vphpl", saturation_flow_vphpl, gt=0.0, le=3600.0)
    check_number("begin_s", begin_s, ge=0.0)
    # As in read_net_file: millions of objects that live on, in no cycle; the collector's
    # passes over them would cost a third of the conversion and find nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        netfile = read_net_file(path)
        try:
            return _convert(netfile, saturation_flow_vphpl, begin_s)
        except ValidationError as error:
            raise ValidationError(f"{netfile.path}: {error.field}", error.reason) from None
    finally:
        if collecting:
            gc.enable()


def import_net(path: str | os.PathLike[str]) -> RoadNetwork:
    """A SUMO ``.net.xml`` as our ``RoadNetwork`` (``read_net`` also returns the id mapping)."""
    return read_net(path).road


def _car_edges(netfile: NetFile, notes: list[str]) -> list[NetEdge]:
    edges = []
    for edge in netfile.edges:
        if edge.function != "" or not any(lane.allows_car for lane in edge.lanes):
            continue
        if edge.from_junction == edge.to_junction:
            notes.append(f"edge {edge.id!r} starts and ends at one junction: skipped")
            continue
        edges.append(edge)
    if not edges:
        raise ValidationError("net", "no road edge for passenger cars (is this a .net.xml?)")
    if not netfile.programs:
        raise ValidationError(
            "net",
            "the network has no traffic lights (nothing to signalize: build it with "
            "netconvert/netgenerate --tls.guess or traffic_light junctions)",
        )
    return edges


def _car_pairs(
    netfile: NetFile, edges: Sequence[NetEdge], notes: list[str]
) -> tuple[dict[tuple[str, str], EdgePair], dict[str, tuple[Lane, ...]]]:
    """Car connections by (from edge, to edge), and each edge's lanes with their turns.
    U-turns at dead ends are kept: SUMO routes vehicles through them (a trip to the other
    side of a dead-end street), and route files would lose those vehicles without them. Our
    random walks never choose a U-turn, so theirs still end at the network's edge."""
    by_id = {edge.id: edge for edge in edges}
    neighbours: dict[str, set[str]] = {}
    for edge in edges:
        neighbours.setdefault(edge.from_junction, set()).add(edge.to_junction)
        neighbours.setdefault(edge.to_junction, set()).add(edge.from_junction)
    outgoing: dict[str, list[NetConnection]] = {}
    for connection in netfile.connections:
        outgoing.setdefault(connection.from_edge, []).append(connection)
    dead_end_uturns = 0
    pairs: dict[tuple[str, str], EdgePair] = {}
    lanes_of: dict[str, tuple[Lane, ...]] = {}
    for edge in edges:
        at_dead_end = len(neighbours[edge.to_junction]) <= 1
        per_lane: dict[int, set[Turn]] = {
            lane.index: set() for lane in edge.lanes if lane.allows_car
        }
        for connection in outgoing.get(edge.id, ()):
            turn = TURNS.get(connection.direction)
            target = by_id.get(connection.to_edge)
            if (
                turn is None
                or target is None
                or connection.from_lane not in per_lane
                or not connection.allows_car
                or not _lane_allows_car(target, connection.to_lane)
            ):
                continue
            if turn is Turn.UTURN and at_dead_end:
                dead_end_uturns += 1
            per_lane[connection.from_lane].add(turn)
            key = (edge.id, target.id)
            pairs.setdefault(key, EdgePair([], edge.to_junction)).connections.append(connection)
        if len(per_lane) > 16:
            raise ValidationError("edge", f"{edge.id!r} has {len(per_lane)} car lanes (16 max)")
        lanes_of[edge.id] = _fill_lane_turns([per_lane[i] for i in sorted(per_lane)])
    if dead_end_uturns:
        notes.append(
            f"{dead_end_uturns} U-turn lane connections at dead ends kept for route files "
            "(random walks end there)"
        )
    return pairs, lanes_of


def _lane_allows_car(edge: NetEdge, index: int) -> bool:
    return 0 <= index < len(edge.lanes) and edge.lanes[index].allows_car


def _convert(netfile: NetFile, saturation: float, begin_s: float) -> SumoNet:
    notes: list[str] = []
    edges = _car_edges(netfile, notes)
    pairs, lanes_of = _car_pairs(netfile, edges, notes)
    link_of_edge = _Ids.mapping([edge.id for edge in edges])
    junction_ids = list(dict.fromkeys(j for e in edges for j in (e.from_junction, e.to_junction)))
    node_of_junction = _Ids.mapping(junction_ids)
    for jid in junction_ids:
        if jid not in netfile.junctions:
            raise ValidationError("edge", f"junction {jid!r} is not defined")
    # Per movement, in the order of ``pairs`` (lists, not maps keyed by edge pairs: a big
    # network has millions of movements, and every pass over them looks these up).
    turns = [_turn(pair.connections) for pair in pairs.values()]
    mids = _Ids().make_all([f"{link_of_edge[a]}:{link_of_edge[b]}" for a, b in pairs])
    signals = _junction_signals(netfile, pairs, mids, node_of_junction, begin_s, notes)
    ways = [_junction_way(pair) for pair in pairs.values()]
    movements, groups = _movements(
        pairs, mids, turns, ways, signals, link_of_edge, node_of_junction
    )
    tls_links, tls_size = traffic_light_links(netfile, pairs, mids, turns, node_of_junction)
    del pairs, mids, turns  # millions of objects: gone before the network takes their place

    intersections = tuple(
        Intersection(
            node_of_junction[jid],
            netfile.junctions[jid].x,
            netfile.junctions[jid].y,
            signals.get(jid) is not None,
        )
        for jid in junction_ids
    )
    links = tuple(
        Link(
            link_of_edge[edge.id],
            node_of_junction[edge.from_junction],
            node_of_junction[edge.to_junction],
            max(edge.lanes[0].length_m, 0.1),
            lanes_of[edge.id],
            max(lane.speed_mps for lane in edge.lanes if lane.allows_car),
            saturation,
        )
        for edge in edges
    )
    approaches, detectors = _approaches(edges, signals, link_of_edge, node_of_junction)
    network = Network(intersections, links, approaches, movements, groups, detectors)
    plans = {
        node_of_junction[jid]: found.plan
        for jid, found in signals.items()
        if found is not None and found.plan is not None
    }
    name = netfile.path.name.removesuffix(".gz").removesuffix(".xml").removesuffix(".net")
    road = RoadNetwork(f"sumo-{name}", network, plans)
    return SumoNet(
        netfile.path,
        road,
        {link: edge for edge, link in link_of_edge.items()},
        link_of_edge,
        {node: jid for jid, node in node_of_junction.items()},
        tls_links,
        tls_size,
        tuple(notes),
    )


def _movements(
    pairs: Mapping[tuple[str, str], EdgePair],
    mids: Sequence[str],
    turns: Sequence[Turn],
    ways: Sequence[tuple[float | None, float | None]],
    signals: Mapping[str, JunctionSignals | None],
    link_of_edge: Mapping[str, str],
    node_of_junction: Mapping[str, str],
) -> tuple[tuple[Movement, ...], tuple[SignalGroup, ...]]:
    """Each pair's movement (``mids``, ``turns``, ``ways``: its id, turn, and speed and length
    across the junction), and the signal groups:
    the junctions' own, and a ``free`` one at each junction without a plan."""
    group_of: dict[str, str] = {}
    groups: list[SignalGroup] = []
    for jid, found in signals.items():
        for group, members in (found.groups if found is not None else {}).items():
            groups.append(SignalGroup(group, node_of_junction[jid], members, not members))
            group_of.update(dict.fromkeys(members, group))
    free: defaultdict[str, set[str]] = defaultdict(set)
    movements = []
    for (a, b), pair, mid, turn, (speed, length) in zip(
        pairs, pairs.values(), mids, turns, ways, strict=True
    ):
        node = node_of_junction[pair.junction]
        group = group_of.get(mid, FREE_GROUP)
        if group == FREE_GROUP:
            free[node].add(mid)
        movements.append(
            Movement(mid, node, link_of_edge[a], link_of_edge[b], turn, group, speed, length)
        )
    groups += [SignalGroup(FREE_GROUP, node, frozenset(ids)) for node, ids in free.items()]
    return tuple(movements), tuple(groups)


def _junction_way(pair: EdgePair) -> tuple[float | None, float | None]:
    """The mean speed limit (netconvert slows a turn for its curve) and length of the
    internal lanes the pair's connections take; None where not known."""
    return (
        _mean_known([c.via_speed_mps for c in pair.connections]),
        _mean_known([c.via_length_m for c in pair.connections]),
    )


def _mean_known(values: Sequence[float]) -> float | None:
    """The mean of the values that are not NaN; None if none is."""
    known = [value for value in values if not math.isnan(value)]
    return sum(known) / len(known) if known else None


def _turn(connections: Sequence[NetConnection]) -> Turn:
    """The turn most of a movement's connections make (of tied ones, the greatest name)."""
    directions = [TURNS[c.direction] for c in connections]
    kinds = set(directions)
    if len(kinds) == 1:
        return directions[0]
    return max(kinds, key=lambda t: (directions.count(t), t.value))


def _approaches(
    edges: Sequence[NetEdge],
    signals: Mapping[str, JunctionSignals | None],
    link_of_edge: Mapping[str, str],
    node_of_junction: Mapping[str, str],
) -> tuple[tuple[Approach, ...], tuple[Detector, ...]]:
    """An approach with a stop-bar and an advance loop on every link into a signal."""
    approach_ids, detector_ids = _Ids(), _Ids()
    approaches: list[Approach] = []
    detectors: list[Detector] = []
    for edge in edges:
        if signals.get(edge.to_junction) is None:
            continue
        node, link = node_of_junction[edge.to_junction], link_of_edge[edge.id]
        approach = approach_ids.make(f"{node}:{_edge_heading(edge)}")
        approaches.append(Approach(approach, node, link))
        length = max(edge.lanes[0].length_m, 0.1)
        detectors.append(
            Detector(detector_ids.make(f"{approach}:stop"), link, DetectorKind.STOP_BAR, 0.0)
        )
        detectors.append(
            Detector(
                detector_ids.make(f"{approach}:adv"),
                link,
                DetectorKind.ADVANCE,
                min(ADVANCE_DETECTOR_M, length),
            )
        )
    return tuple(approaches), tuple(detectors)


def _junction_signals(
    netfile: NetFile,
    pairs: Mapping[tuple[str, str], EdgePair],
    mids: Sequence[str],
    node_of_junction: Mapping[str, str],
    begin_s: float,
    notes: list[str],
) -> dict[str, JunctionSignals | None]:
    """Per junction a traffic light controls: its groups and plan from the light's own
    program (``sumo_programs``), or None where it never stops a car (imported unsignalized).
    ``mids``: the movement id of each pair."""
    at_junction: defaultdict[str, dict[str, list[NetConnection]]] = defaultdict(dict)
    for pair, mid in zip(pairs.values(), mids, strict=True):
        at_junction[pair.junction][mid] = pair.connections
    ends = {edge.id: edge.to_junction for edge in netfile.edges}
    controlled: defaultdict[str, defaultdict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for connection in netfile.connections:
        if connection.tl and connection.link_index >= 0:
            junction = ends.get(connection.from_edge)
            if junction is not None:
                controlled[junction][connection.tl].add(connection.link_index)
    out: dict[str, JunctionSignals | None] = {}
    kinds: dict[str, int] = {}
    cache = SignalsCache()
    for jid, by_light in controlled.items():
        if jid not in at_junction:
            continue
        tls = max(by_light, key=lambda t: len(by_light[t]))
        program = netfile.programs[tls][-1]  # SUMO runs the program loaded last
        kinds[program.type] = kinds.get(program.type, 0) + 1
        found = _signals_at(
            netfile.junctions[jid],
            node_of_junction[jid],
            (tls, program),
            at_junction[jid],
            by_light[tls],
            begin_s,
            cache,
        )
        if found.generated:
            notes.append(f"traffic light {tls!r} at {jid!r}: generated plan ({found.refusal})")
        if found.plan is None:
            notes.append(
                f"traffic light {tls!r} at {jid!r} never stops a car: imported unsignalized"
            )
            out[jid] = None
        else:
            out[jid] = found
    own = sum(1 for found in out.values() if found is not None and not found.generated)
    notes.insert(
        0,
        f"{own} of {len(out)} signalized junctions run their traffic light's own program",
    )
    for kind, count in sorted(kinds.items()):
        if kind != "static":
            notes.append(
                f"{count} {kind} programs run as the fixed-time program of their phases' durations"
            )
    return out


def _signals_at(
    junction: NetJunction,
    node: str,
    light: tuple[str, NetProgram],
    movements: Mapping[str, list[NetConnection]],
    indices: set[int],
    begin_s: float,
    cache: SignalsCache,
) -> JunctionSignals:
    """The junction (as SUMO has it, our id) under the traffic light (id, program)."""
    tls, program = light
    connections = [c for group in movements.values() for c in group]
    link_indices = tuple([c.link_index if c.tl == tls else -1 for c in connections])
    layout = JunctionLayout(
        tuple([len(group) for group in movements.values()]),
        link_indices,
        tuple([c.junction_index for c in connections]),
        junction.foes,
    )
    return cache.signals(
        node,
        list(movements),
        layout,
        program,
        other_links=tuple(sorted(indices.difference(link_indices))),
        begin_s=begin_s,
    )


def traffic_light_links(
    netfile: NetFile,
    pairs: Mapping[tuple[str, str], EdgePair],
    mids: Sequence[str],
    turns: Sequence[Turn],
    node_of_junction: Mapping[str, str],
) -> tuple[dict[str, tuple[TlsLink, ...]], dict[str, int]]:
    """Per traffic light: its controlled car connections we imported, with their foes.
    ``mids`` and ``turns``: each pair's movement id and turn."""
    pair_list = list(pairs.values())
    # per traffic light, its connections in the order of the pairs, and the pair of each
    raw: dict[str, tuple[list[NetConnection], list[int]]] = {}
    for position, pair in enumerate(pair_list):
        for connection in pair.connections:
            if not connection.tl or connection.link_index < 0:
                continue
            lists = raw.get(connection.tl)
            if lists is None:
                lists = raw[connection.tl] = ([], [])
            lists[0].append(connection)
            lists[1].append(position)
    tls_links: dict[str, tuple[TlsLink, ...]] = {}
    tls_size: dict[str, int] = {}
    link_foes = _LinkFoes(netfile.junctions)
    for tid, programs in netfile.programs.items():
        tls_size[tid] = max(len(phase.state) for p in programs for phase in p.phases)
        connections, positions = raw.get(tid, ([], []))
        junctions = [pair_list[p].junction for p in positions]
        at_junction: dict[str, list[int]] = {}
        if junctions and junctions.count(junctions[0]) == len(junctions):
            at_junction[junctions[0]] = list(range(len(junctions)))  # the usual: one junction
        else:
            for entry, jid in enumerate(junctions):
                at_junction.setdefault(jid, []).append(entry)
        foes: list[frozenset[int]] = [frozenset()] * len(connections)
        for jid, entries in at_junction.items():
            found = link_foes.of(
                jid,
                tuple([connections[e].link_index for e in entries]),
                tuple([connections[e].junction_index for e in entries]),
            )
            for entry, of_entry in zip(entries, found, strict=True):
                foes[entry] = of_entry
        tls_links[tid] = tuple(
            TlsLink(
                connection.link_index,
                node_of_junction[jid],
                mids[p],
                turns[p] is Turn.THROUGH,
                of_connection,
            )
            for connection, p, jid, of_connection in zip(
                connections, positions, junctions, foes, strict=True
            )
        )
    return tls_links, tls_size


class _LinkFoes:
    """The foes, as link indices, of a traffic light's connections at one junction: worked
    out once per numbering (a city's junctions share a few), and each set of foes kept once
    (millions of links, few distinct sets)."""

    def __init__(self, junctions: Mapping[str, NetJunction]) -> None:
        self.junctions = junctions
        self.found: dict[tuple[object, ...], tuple[frozenset[int], ...]] = {}
        self.interned: dict[frozenset[int], frozenset[int]] = {}

    def of(
        self, jid: str, link_indices: tuple[int, ...], requests: tuple[int, ...]
    ) -> tuple[frozenset[int], ...]:
        """The foes of the connections with these link and junction request indices."""
        rows = self.junctions[jid].foes
        key = (link_indices, requests, rows)
        found = self.found.get(key)
        if found is None:
            numbering = list(zip(link_indices, requests, strict=True))
            index_at = {at: index for index, at in numbering if at >= 0}
            out = []
            for index, at in numbering:
                mask = rows[at] if 0 <= at < len(rows) else 0
                foes = frozenset({index_at.get(bit, index) for bit in bit_positions(mask)})
                foes -= {index}
                out.append(self.interned.setdefault(foes, foes))
            found = self.found[key] = tuple(out)
        return found


# --- signal programs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalProgram:
    """A static SUMO program: phase 0 starts at ``offset_s`` (SUMO's meaning, as ours)."""

    tls: str
    offset_s: float
    phases: tuple[tuple[float, str], ...]
    """(duration, state) in order."""

    @property
    def cycle_s(self) -> float:
        return sum(duration for duration, _ in self.phases)


def _plan_events(plan: TimingPlan) -> list[float]:
    """Times within the cycle where some group of ``plan`` changes colour."""
    events = []
    for index, phase in enumerate(plan.phases):
        start = plan.phase_starts_s[index]
        end = start + plan.greens_s[index]
        events += [start, end, end + plan.intergreen_after_s(index)]
        events += [end + plan.signals.timings[g].yellow_s for g in phase.groups]
    return events


def group_colour(plan: TimingPlan, group: str, cycle_time_s: float) -> str:
    """``G``, ``y`` or ``r``: what ``group`` shows ``cycle_time_s`` after phase 0's green start.
    A group green in two consecutive phases stays green across the change (an overlap)."""
    cycle = plan.cycle_s
    count = len(plan.phases)
    for index, phase in enumerate(plan.phases):
        if group not in phase.groups:
            continue
        since = (cycle_time_s - plan.phase_starts_s[index]) % cycle
        green = plan.greens_s[index]
        if since < green:
            return "G"
        if since < green + plan.intergreen_after_s(index):
            if group in plan.phases[(index + 1) % count].groups:
                return "G"
            if since < green + plan.signals.timings[group].yellow_s:
                return "y"
    return "r"


def signal_programs(
    snet: SumoNet, *, resolution_s: float = 1.0
) -> tuple[dict[str, SignalProgram], tuple[str, ...]]:
    """Static SUMO programs reproducing our plans, per traffic light, with phase boundaries
    snapped to ``resolution_s`` (SUMO switches on step boundaries anyway), and notes on the
    traffic lights left to their own SUMO program."""
    check_number("resolution_s", resolution_s, gt=0.0, le=10.0)
    road = snet.road
    group_of = {m.id: m.signal_group for m in road.network.movements}
    programs: dict[str, SignalProgram] = {}
    kept: list[str] = []
    for tls, links in snet.tls_links.items():
        if not links:  # no car movement we model (a dead end's U-turn, a crossing only)
            continue
        nodes = list(dict.fromkeys(link.node for link in links))
        plans = {node: road.plans[node] for node in nodes if node in road.plans}
        cycles = {round(plan.cycle_s, 6) for plan in plans.values()}
        if len(cycles) > 1:
            kept.append(
                f"{tls}: joins junctions {nodes} whose plans have cycles {sorted(cycles)}, "
                "SUMO's program kept"
            )
            continue
        programs[tls] = _program(tls, links, plans, snet.tls_size[tls], group_of, resolution_s)
    return programs, tuple(kept)


def _program(
    tls: str,
    links: Sequence[TlsLink],
    plans: Mapping[str, TimingPlan],
    size: int,
    group_of: Mapping[str, str],
    resolution: float,
) -> SignalProgram:
    """One traffic light's program: its junctions' plans (one cycle) sampled between every
    colour change of any of them. Junctions without a plan are always green."""

    def snap(t: float) -> float:
        return round(t / resolution) * resolution

    if not plans:
        return SignalProgram(tls, 0.0, ((ALWAYS_GREEN_S, tls_state(links, size, {})),))
    first = next(iter(plans.values()))
    cycle = first.cycle_s
    origin = snap(first.offset_s) % cycle
    cuts = {0.0, cycle}
    for plan in plans.values():
        for event in _plan_events(plan):
            cuts.add(min(cycle, snap((event + plan.offset_s - origin) % cycle)))
    bounds = sorted(cuts)
    phases: list[tuple[float, str]] = []
    for begin, end in itertools.pairwise(bounds):
        if end - begin < 1e-9:
            continue
        middle = (begin + end) / 2.0
        colours: dict[int, str] = {}
        for link in links:
            own = plans.get(link.node)
            if own is None:
                colour = "G"
            else:
                local = (middle + origin - own.offset_s) % own.cycle_s
                colour = group_colour(own, group_of[link.movement], local)
            colours.setdefault(link.index, colour)
        state = tls_state(links, size, colours)
        if phases and phases[-1][1] == state:
            phases[-1] = (phases[-1][0] + end - begin, state)
        else:
            phases.append((end - begin, state))
    if len(phases) > 1 and phases[0][1] == phases[-1][1]:
        # the last interval runs on into the first: start the program at its beginning
        duration, state = phases.pop()
        phases[0] = (phases[0][0] + duration, state)
        origin = (origin - duration) % cycle
    return SignalProgram(tls, origin, tuple(phases))


def tls_state(links: Sequence[TlsLink], size: int, colours: Mapping[int, str]) -> str:
    """A SUMO state string from each link index's colour (missing: green): ``G`` green with
    priority, ``g`` green that yields to a foe green at the same time (turns yield to throughs,
    equals to each other), ``y``, ``r``. Indices we did not import (crossings, bicycle links)
    stay red."""
    chars = ["r"] * size
    for link in links:
        shown = colours.get(link.index, "G")
        if shown == "G" and any(
            colours.get(foe, "G") == "G" and not (link.through and not _is_through(links, foe))
            for foe in link.foes
        ):
            shown = "g"
        if chars[link.index] == "r" or shown == "g":
            chars[link.index] = shown
    return "".join(chars)


def _is_through(links: Sequence[TlsLink], index: int) -> bool:
    return any(link.through for link in links if link.index == index)


def write_signal_programs(
    snet: SumoNet, path: Path, *, resolution_s: float = 1.0
) -> tuple[str, ...]:
    """Write the programs of ``signal_programs`` as a SUMO ``additional`` file (loading it
    makes them the active programs); returns the notes on traffic lights left as they were."""
    programs, kept = signal_programs(snet, resolution_s=resolution_s)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<additional>"]
    for program in programs.values():
        lines.append(
            f'    <tlLogic id={quoteattr(program.tls)} type="static" '
            f'programID="{PROGRAM_ID}" offset="{program.offset_s:g}">'
        )
        for duration, state in program.phases:
            lines.append(f'        <phase duration="{duration:g}" state="{state}"/>')
        lines.append("    </tlLogic>")
    lines.append("</additional>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return kept


# --- demand ------------------------------------------------------------------------------------


def write_routes(snet: SumoNet, net: CompiledNetwork, trips: Trips, path: Path) -> int:
    """Write ``trips`` (routes over ``net``'s link indices) as SUMO vehicles, sorted by
    departure: same departure time, edges and speed factor, ``departLane="best"``,
    ``departSpeed="max"`` (those that start from a standstill, ``Trips.standing``, with
    SUMO's defaults: its first lane, speed 0), one car type of 5 m plus 2.5 m gap (our 7.5 m
    jam spacing). Returns how many vehicles were written."""
    edges = []
    for link_id in net.link_ids:
        edge = snet.edge_of_link.get(link_id)
        if edge is None:
            raise ValidationError("routes", f"link {link_id!r} is not from this SUMO network")
        edges.append(edge)
    order = np.argsort(trips.depart, kind="stable")
    standing = standing_mask(trips)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<routes>",
        f'    <vType id="{VEHICLE_TYPE}" vClass="{CAR}" length="5" minGap="2.5"/>',
    ]
    for v in order:
        v = int(v)
        start, length = int(trips.route_start[v]), int(trips.route_len[v])
        route = " ".join(edges[int(i)] for i in trips.route_links[start : start + length])
        name = trips.names.get(v, f"v{v}")
        moving = "" if standing[v] else 'departLane="best" departSpeed="max" '
        lines.append(
            f'    <vehicle id={quoteattr(name)} type="{VEHICLE_TYPE}" '
            f'depart="{trips.depart[v]:.2f}" {moving}'
            f'speedFactor="{trips.speed_factor[v]:.4f}">'
            f"<route edges={quoteattr(route)}/></vehicle>"
        )
    lines.append("</routes>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return trips.count


@dataclass(frozen=True)
class SumoInputs:
    net: Path
    routes: Path
    additional: Path
    vehicles: int
    notes: tuple[str, ...]
    """Traffic lights whose program is SUMO's own, not ours."""

    @property
    def same_signal_timing(self) -> bool:
        return not self.notes


def export_for_sumo(
    snet: SumoNet, net: CompiledNetwork, trips: Trips, out_dir: Path, *, resolution_s: float = 1.0
) -> SumoInputs:
    """Write ``routes.rou.xml`` (the same pre-computed routes) and ``signals.add.xml`` (our
    timing plans as SUMO programs) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    routes, additional = out_dir / "routes.rou.xml", out_dir / "signals.add.xml"
    count = write_routes(snet, net, trips, routes)
    kept = write_signal_programs(snet, additional, resolution_s=resolution_s)
    return SumoInputs(snet.path, routes, additional, count, kept)


# --- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimResult:
    simulator: str
    wall_s: float
    """End to end: for SUMO the process (loading the network and routes, writing outputs); for
    ours building the run and simulating (the Numba warm-up is ``warm_up_s``)."""
    loop_wall_s: float
    """The simulation loop alone (SUMO's own ``clockDuration``)."""
    simulated_s: float
    vehicles: int
    departed: int
    arrived: int
    mean_travel_time_s: float
    throughput_vph: float
    mean_route_length_m: float
    """Mean distance driven by the arrived vehicles, the junctions between their links included
    (SUMO: internal lanes; ours: ``compiled.mv_junction_m``)."""
    teleports: int = 0
    warm_up_s: float = 0.0
    running: int = 0
    """Vehicles still in the network at the end."""
    waiting: int = 0
    """Vehicles due that had not got into the network by the end."""
    stuck: int = 0
    """Ours: vehicles in the network delayed over ``scoring.STUCK_AFTER_S`` on one link (where
    SUMO would have teleported them; ours never teleports)."""

    @property
    def real_time_factor(self) -> float:
        return self.simulated_s / self.wall_s if self.wall_s > 0 else math.inf


def _number(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def run_sumo(
    net_file: Path,
    route_file: Path,
    *,
    duration_s: float,
    out_dir: Path,
    mesosim: bool = False,
    additional_files: Sequence[Path] = (),
    seed: int = 1,
    step_s: float = 1.0,
    meso_junction_control: bool = True,
    timeout_s: float | None = None,
    extra_args: Sequence[str] = (),
) -> SimResult:
    """Run SUMO from 0 to ``duration_s``; ``mesosim`` for its mesoscopic model (with
    ``--meso-junction-control``, so traffic lights hold vehicles by their phases)."""
    check_number("duration_s", duration_s, gt=0.0, le=30 * 86400.0)
    check_count("seed", seed)
    binary = require_binary("sumo")
    tag = "meso" if mesosim else "micro"
    out_dir.mkdir(parents=True, exist_ok=True)
    tripinfo, stats = out_dir / f"tripinfo-{tag}.xml", out_dir / f"statistic-{tag}.xml"
    command = [
        str(binary),
        "--net-file",
        str(net_file),
        "--route-files",
        str(route_file),
        "--begin",
        "0",
        "--end",
        f"{duration_s:g}",
        "--step-length",
        f"{step_s:g}",
        "--seed",
        str(seed),
        "--no-step-log",
        "--tripinfo-output",
        str(tripinfo),
        "--statistic-output",
        str(stats),
    ]
    if additional_files:
        command += ["--additional-files", ",".join(str(p) for p in additional_files)]
    if mesosim:
        command.append("--mesosim")
        if meso_junction_control:
            command.append("--meso-junction-control")
    command += list(extra_args)
    wall = run_tool(command, log=out_dir / f"sumo-{tag}.log", timeout_s=timeout_s)
    return _read_sumo_outputs(f"sumo-{tag}", wall, duration_s, tripinfo, stats)


def run_sumo_config(
    config: Path,
    *,
    begin_s: float,
    end_s: float,
    out_dir: Path,
    seed: int | None = None,
    timeout_s: float | None = None,
    extra_args: Sequence[str] = (),
) -> SimResult:
    """Run a SUMO scenario stand-alone, as ``sumo -c config`` does (its own network, routes,
    programs and time window ``begin_s``-``end_s``, which the caller reads from the
    configuration), only adding the outputs we read and ``seed`` when given (else SUMO's
    default seed)."""
    check_number("begin_s", begin_s, ge=0.0)
    check_number("end_s", end_s, gt=begin_s)
    binary = require_binary("sumo")
    out_dir.mkdir(parents=True, exist_ok=True)
    tripinfo, stats = out_dir / "tripinfo-config.xml", out_dir / "statistic-config.xml"
    command = [
        str(binary),
        "--configuration-file",
        str(config),
        "--no-step-log",
        "--tripinfo-output",
        str(tripinfo),
        "--statistic-output",
        str(stats),
    ]
    if seed is not None:
        check_count("seed", seed)
        command += ["--seed", str(seed)]
    command += list(extra_args)
    wall = run_tool(command, log=out_dir / "sumo-config.log", timeout_s=timeout_s)
    return _read_sumo_outputs("sumo", wall, end_s - begin_s, tripinfo, stats, begin_s=begin_s)


def _read_sumo_outputs(
    name: str, wall: float, duration_s: float, tripinfo: Path, stats: Path, *, begin_s: float = 0.0
) -> SimResult:
    """Travel time from the desired departure (``depart`` - ``departDelay``) to arrival, over
    the vehicles arriving by ``begin_s + duration_s`` (SUMO times), and the statistics."""
    xml = _sumolib().xml
    travel: list[float] = []
    distance: list[float] = []
    for trip in xml.parse(str(tripinfo), "tripinfo"):
        arrival = _number(trip.getAttributeSecure("arrival"), -1.0)
        if (
            arrival < 0
            or arrival > begin_s + duration_s + 1e-6
            or trip.getAttributeSecure("vaporized")
        ):
            continue
        wanted = _number(trip.getAttributeSecure("depart")) - _number(
            trip.getAttributeSecure("departDelay")
        )
        travel.append(arrival - wanted)
        distance.append(_number(trip.getAttributeSecure("routeLength")))
    found = {e.name: e for e in xml.parse(str(stats), ["performance", "vehicles", "teleports"])}

    def stat(element: str, attribute: str, default: float) -> float:
        node = found.get(element)
        return default if node is None else _number(node.getAttributeSecure(attribute), default)

    simulated = stat("performance", "duration", duration_s)
    return SimResult(
        name,
        wall,
        stat("performance", "clockDuration", wall),
        simulated,
        int(stat("vehicles", "loaded", 0)),
        int(stat("vehicles", "inserted", 0)),
        len(travel),
        float(np.mean(travel)) if travel else 0.0,
        len(travel) / simulated * 3600.0 if simulated > 0 else 0.0,
        float(np.mean(distance)) if distance else 0.0,
        int(stat("teleports", "total", 0)),
        running=int(stat("vehicles", "running", 0)),
        waiting=int(stat("vehicles", "waiting", 0)),
    )


def run_citybrain(
    net: CompiledNetwork, trips: Trips, *, duration_s: float, dt_s: float = 1.0
) -> SimResult:
    """Run our engine from 0 to ``duration_s``; the Numba kernels are warmed up first (one
    step of a throwaway simulation) and that time is reported apart."""
    check_number("duration_s", duration_s, gt=0.0, le=30 * 86400.0)
    started = time.perf_counter()
    Simulation(net, trips, dt_s=dt_s).advance(dt_s)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    run = Run(net, trips, dt_s=dt_s)
    looping = time.perf_counter()
    run.advance(duration_s)
    ended = time.perf_counter()
    result = score(run, scenario="sumo-compare", started_s=0.0)
    done = np.flatnonzero(run.sim.state == ARRIVED)
    distance = float(route_lengths_m(net, run.trips)[done].mean()) if done.size else 0.0
    return SimResult(
        "citybrain",
        ended - started,
        ended - looping,
        run.now,
        trips.count,
        int(np.count_nonzero(run.sim.state != PENDING)),
        int(np.count_nonzero(run.sim.state == ARRIVED)),
        result.mean_travel_time_s,
        result.throughput_vph,
        distance,
        0,
        warm,
        running=result.in_network,
        waiting=result.waiting_to_enter,
        stuck=result.stuck,
    )


# --- comparison --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    network: str
    junctions: int
    signalized: int
    links: int
    vehicles: int
    duration_s: float
    same_signal_timing: bool
    notes: tuple[str, ...]
    ours: SimResult
    others: tuple[SimResult, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            key: value for key, value in asdict(self).items() if key not in ("ours", "others")
        }
        out["notes"] = list(self.notes)
        out["results"] = {r.simulator: asdict(r) for r in (self.ours, *self.others)}
        out["versus_citybrain"] = {
            other.simulator: {
                "speed_ratio_wall": _ratio(other.wall_s, self.ours.wall_s),
                "speed_ratio_loop": _ratio(other.loop_wall_s, self.ours.loop_wall_s),
                "mean_travel_time_rel_diff": _ratio(
                    other.mean_travel_time_s - self.ours.mean_travel_time_s,
                    self.ours.mean_travel_time_s,
                ),
                "throughput_rel_diff": _ratio(
                    other.throughput_vph - self.ours.throughput_vph, self.ours.throughput_vph
                ),
            }
            for other in self.others
        }
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def compare(
    net_file: Path,
    *,
    duration_s: float,
    vehicles_per_hour_per_entry: float,
    out_dir: Path,
    seed: int = 1,
    modes: Sequence[str] = ("micro", "meso"),
    timeout_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Import ``net_file``, draw our random-trip demand on it (``vehicles_per_hour_per_entry``
    at every entry link), and run ours and SUMO (``micro`` and/or ``meso``) on the same routes
    and the same signal timing."""
    unknown = set(modes) - {"micro", "meso"}
    if unknown:
        raise ValidationError("modes", f"unknown SUMO modes {sorted(unknown)} (micro, meso)")
    check_number("vehicles_per_hour_per_entry", vehicles_per_hour_per_entry, ge=0.0, le=1e5)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    snet = read_net(net_file)
    road = snet.road.network
    say(
        f"imported {net_file.name}: {len(road.intersections)} junctions "
        f"({len(snet.road.plans)} signalized), {len(road.links)} links "
        f"in {time.perf_counter() - started:.1f} s"
    )
    net = compile_network(snet.road)
    entries = len(entry_links(road))
    trips = random_trips(
        net,
        seed=seed,
        duration_s=duration_s,
        vehicles_per_hour=entries * vehicles_per_hour_per_entry,
    )
    inputs = export_for_sumo(snet, net, trips, out_dir)
    say(f"demand: {trips.count} vehicles from {entries} entries; SUMO inputs in {out_dir}")
    for note in (*snet.notes, *inputs.notes):
        say(f"note: {note}")
    ours = run_citybrain(net, trips, duration_s=duration_s)
    say(
        f"citybrain: {ours.wall_s:.2f} s wall ({ours.warm_up_s:.2f} s Numba warm-up apart), "
        f"{ours.arrived} arrived"
    )
    others = []
    for mode in modes:
        result = run_sumo(
            inputs.net,
            inputs.routes,
            duration_s=duration_s,
            out_dir=out_dir,
            mesosim=mode == "meso",
            additional_files=(inputs.additional,),
            seed=seed,
            timeout_s=timeout_s,
        )
        say(f"{result.simulator}: {result.wall_s:.2f} s wall, {result.arrived} arrived")
        others.append(result)
    return Comparison(
        snet.road.name,
        len(road.intersections),
        len(snet.road.plans),
        len(road.links),
        trips.count,
        duration_s,
        inputs.same_signal_timing,
        (*snet.notes, *inputs.notes),
        ours,
        tuple(others),
    )
