"""SUMO interoperability: import a SUMO network, run the same demand in SUMO, compare.

``import_net`` (or ``read_net``, which also keeps the id mapping) reads a SUMO ``.net.xml``
with ``sumolib`` into our ``RoadNetwork``:

- Internal edges (``function="internal"``), crossings, walking areas and edges no passenger car
  may use are skipped. Every other edge becomes a ``Link``: SUMO's edge length (the lane length,
  stop line to stop line: it does not include the junction's internal lanes, which SUMO vehicles
  also drive), its speed, and one ``Lane`` per car lane, numbered from the kerb like SUMO's
  lane indices. A lane allows the turns of its connections (``s`` through, ``l``/``L`` left,
  ``r``/``R`` right, ``t``/``T`` U-turn); a lane without connections on an edge that has some
  gets its nearest neighbour's turns, and the lanes of an edge without any (a network exit)
  allow "through". U-turns at dead ends are left out, so that routes end at the network's edge
  (our random walks never choose a U-turn, except where it is the only way on).
- Junctions become ``Intersection``s; a junction is signalized if a traffic light controls one of
  its car connections. Each (incoming edge, outgoing edge) pair with a car connection is a
  ``Movement``.
- Signal groups are not read from SUMO: each movement of a signalized junction gets one of our
  NEMA eight groups from the heading of travel at the end of its incoming edge (the quadrant of
  its last lane segment: E, N, W or S) and its turn, exactly as ``networks.py`` lays out its own
  junctions (2/6 east/westbound throughs and rights, 5/1 their lefts, 4/8 north/southbound
  throughs and rights, 7/3 their lefts; U-turns go with the left). Every signalized junction then
  runs the lead-lead plan of ``networks._plan_for`` with an eastbound progression offset, like the
  generated grid. SUMO's own programs are therefore **not** reproduced; instead
  ``signal_programs``/``write_signal_programs`` write a SUMO ``additional`` file with one static
  ``tlLogic`` per traffic light that reproduces our plans over SUMO's link indices (phase
  boundaries snapped to the simulation step), so both simulators run the same timing.
- Junctions without a traffic light are unsignalized: their movements belong to a group
  ``free`` with no controller, so in our engine they always may proceed (SUMO applies its
  right-of-way rules there). A traffic light whose movements give fewer than two lead-lead phases
  (say, a mid-block signal on a straight road) is imported as unsignalized too and gets an
  always-green program on the SUMO side. A traffic light that controls several junctions whose
  plans have different cycles keeps SUMO's own program (``signal_programs`` says which), and so
  does one that controls no car movement we model (a dead end's U-turn, a crossing). Link
  indices shared by several connections show the first one's colour; indices of connections we
  do not model (crossings, bicycle-only links) stay red, as no such traffic is simulated.
- Ids are made valid for our model (``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``): other characters
  become ``_``, a leading non-alphanumeric gets an ``x`` prefix, long ids are shortened with a
  hash, clashes get a ``-2`` suffix. ``SumoNet`` maps both ways.

``export_for_sumo`` writes our pre-computed routes (``Trips``) as SUMO vehicles with the same
departure times, edges and speed factors, plus the signal programs. ``run_sumo`` runs SUMO
(microscopic, or mesoscopic with ``--mesosim --meso-junction-control``) and reads its
``--tripinfo-output`` and ``--statistic-output``; ``run_citybrain`` runs ours the same way and
``compare`` does all of it on one network.

Travel times on both sides are measured from the *desired* departure (SUMO's ``depart`` minus
``departDelay``) to arrival at the end of the last edge, over the vehicles that arrived before
the end of the run; throughput is those arrivals per hour of simulated time.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from citybrain.models.checks import check_count, check_number
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
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group, progression_offset_s
from citybrain.signal_plans.timing import TimingPlan
from citybrain.simulator.compiled import CompiledNetwork, compile_network
from citybrain.simulator.demand import Trips, random_trips
from citybrain.simulator.engine import Simulation
from citybrain.simulator.kernels import ARRIVED, PENDING
from citybrain.simulator.networks import (
    ADVANCE_DETECTOR_M,
    GROUPS_BY_HEADING,
    RoadNetwork,
    _plan_for,
)
from citybrain.simulator.runner import Run
from citybrain.simulator.scoring import score

CAR = "passenger"
FREE_GROUP = "free"
"""Signal group of the movements of an unsignalized junction (no controller: always go)."""
PROGRAM_ID = "citybrain"
VEHICLE_TYPE = "citybrain_car"
PROGRESSION_CYCLE_S = 100.0
"""Cycle the progression offsets are computed for (the full lead-lead plan's)."""

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


def _require_binary(name: str) -> Path:
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
    done = subprocess.run(  # noqa: S603 - a resolved SUMO binary, fixed arguments
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=60,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else None


def _run_tool(command: Sequence[str], *, log: Path | None, timeout_s: float | None) -> float:
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
    wall = time.perf_counter() - started
    output = (done.stdout or "") + (done.stderr or "")
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n{output}")
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise SumoError(f"{Path(command[0]).name} exited with {done.returncode}:\n{tail}")
    return wall


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
        str(_require_binary("netgenerate")),
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
    _run_tool(command, log=out.with_suffix(".log"), timeout_s=timeout_s)
    return out


# --- import ------------------------------------------------------------------------------------


class _Ids:
    """Valid, unique ids within one namespace, from arbitrary SUMO ids."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, raw: str) -> str:
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


@dataclass
class _Pair:
    """Car connections from one edge to another (one movement)."""

    connections: list[Any]
    junction: Any


def _edge_heading(edge: Any) -> str:
    """Heading of travel at the end of ``edge``: the quadrant of its last lane segment."""
    shape = list(edge.getLanes()[0].getShape())
    dx = dy = 0.0
    for (x0, y0), (x1, y1) in zip(shape[-2::-1], shape[::-1], strict=False):
        dx, dy = x1 - x0, y1 - y0
        if math.hypot(dx, dy) > 1e-6:
            break
    if math.hypot(dx, dy) <= 1e-6:
        (x0, y0), (x1, y1) = edge.getFromNode().getCoord(), edge.getToNode().getCoord()
        dx, dy = x1 - x0, y1 - y0
    if abs(dx) >= abs(dy):
        return "E" if dx >= 0 else "W"
    return "N" if dy > 0 else "S"


def _lead_lead_phase_count(groups: Iterable[str]) -> int:
    present = set(groups)
    reference = lead_lead_plan(nema_eight_group("reference"))
    return sum(1 for phase in reference.phases if phase.groups & present)


def _group_for(heading: str, turn: Turn) -> str:
    through, left = GROUPS_BY_HEADING[heading]
    return through if turn in (Turn.THROUGH, Turn.RIGHT) else left


def _fill_lane_turns(per_lane: list[set[Turn]]) -> tuple[Lane, ...]:
    known = [i for i, turns in enumerate(per_lane) if turns]
    lanes = []
    for i, turns in enumerate(per_lane):
        if not turns:
            turns = (
                set(per_lane[min(known, key=lambda k: (abs(k - i), k))])
                if known
                else {Turn.THROUGH}
            )
        lanes.append(Lane(i, frozenset(turns)))
    return tuple(lanes)


def read_net(
    path: str | os.PathLike[str],
    *,
    saturation_flow_vphpl: float = 1800.0,
    progression_speed_mps: float | None = None,
) -> SumoNet:
    """Import a SUMO ``.net.xml`` (see the module docstring for the rules).

    Offsets give an eastbound green wave at ``progression_speed_mps`` (default: the median
    speed of the links entering signalized junctions), as ``networks.grid`` does. Raises
    ``ValidationError`` for a missing or unreadable file, a network without car roads or
    without traffic lights, and ``SumoUnavailableError`` when sumolib is not installed.
    """
    source = Path(path)
    if not source.is_file():
        raise ValidationError("net", f"{source}: no such file")
    check_number("saturation_flow_vphpl", saturation_flow_vphpl, gt=0.0, le=3600.0)
    sumolib = _sumolib()
    try:
        net = sumolib.net.readNet(str(source), withPrograms=True)
    except Exception as error:  # sumolib raises whatever its parser meets on foreign input
        raise ValidationError(
            "net", f"{source}: not a readable SUMO network ({type(error).__name__}: {error})"
        ) from None
    try:
        return _convert(net, source, saturation_flow_vphpl, progression_speed_mps)
    except ValidationError as error:
        raise ValidationError(f"{source}: {error.field}", error.reason) from None


def import_net(path: str | os.PathLike[str]) -> RoadNetwork:
    """A SUMO ``.net.xml`` as our ``RoadNetwork`` (``read_net`` also returns the id mapping)."""
    return read_net(path).road


def _convert(net: Any, source: Path, saturation: float, progression_speed: float | None) -> SumoNet:
    notes: list[str] = []
    edges = []
    for edge in net.getEdges(withInternal=False):
        if edge.getFunction() != "" or not any(lane.allows(CAR) for lane in edge.getLanes()):
            continue
        if edge.getFromNode() is edge.getToNode():
            notes.append(f"edge {edge.getID()!r} starts and ends at one junction: skipped")
            continue
        edges.append(edge)
    if not edges:
        raise ValidationError("net", "no road edge for passenger cars (is this a .net.xml?)")
    if not net.getTrafficLights():
        raise ValidationError(
            "net",
            "the network has no traffic lights (nothing to signalize: build it with "
            "netconvert/netgenerate --tls.guess or traffic_light junctions)",
        )

    link_ids, node_ids = _Ids(), _Ids()
    link_of_edge = {edge.getID(): link_ids.make(edge.getID()) for edge in edges}
    junctions: dict[str, Any] = {}
    for edge in edges:
        for junction in (edge.getFromNode(), edge.getToNode()):
            junctions.setdefault(junction.getID(), junction)
    node_of_junction = {jid: node_ids.make(jid) for jid in junctions}

    # A U-turn at a dead end would send our random walks (and so the routes) back into the
    # network instead of ending them at its edge: those connections are left out.
    neighbours: dict[str, set[str]] = {}
    for edge in edges:
        a, b = edge.getFromNode().getID(), edge.getToNode().getID()
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    dead_end_uturns = 0
    pairs: dict[tuple[str, str], _Pair] = {}
    lanes_of: dict[str, tuple[Lane, ...]] = {}
    for edge in edges:
        at_dead_end = len(neighbours[edge.getToNode().getID()]) <= 1
        per_lane: list[set[Turn]] = []
        for lane in (lane for lane in edge.getLanes() if lane.allows(CAR)):
            turns: set[Turn] = set()
            for connection in lane.getOutgoing():
                target = connection.getTo()
                turn = TURNS.get(connection.getDirection())
                if (
                    turn is None
                    or target.getID() not in link_of_edge
                    or not connection.getToLane().allows(CAR)
                    or not connection.allows(CAR)
                ):
                    continue
                if turn is Turn.UTURN and at_dead_end:
                    dead_end_uturns += 1
                    continue
                turns.add(turn)
                key = (edge.getID(), target.getID())
                pairs.setdefault(key, _Pair([], edge.getToNode())).connections.append(connection)
            per_lane.append(turns)
        if len(per_lane) > 16:
            raise ValidationError(
                "edge", f"{edge.getID()!r} has {len(per_lane)} car lanes (16 max)"
            )
        lanes_of[edge.getID()] = _fill_lane_turns(per_lane)

    if dead_end_uturns:
        notes.append(
            f"{dead_end_uturns} U-turn lane connections at dead ends left out (routes end there)"
        )
    tls_of_junction: dict[str, set[str]] = {}
    for pair in pairs.values():
        for connection in pair.connections:
            if connection.getTLSID():
                tls_of_junction.setdefault(pair.junction.getID(), set()).add(connection.getTLSID())
    if not tls_of_junction:
        raise ValidationError("net", "no traffic light controls a car connection")

    heading = {edge.getID(): _edge_heading(edge) for edge in edges}
    turn_of: dict[tuple[str, str], Turn] = {}
    for key, pair in pairs.items():
        directions = [TURNS[c.getDirection()] for c in pair.connections]
        turn_of[key] = max(set(directions), key=lambda t: (directions.count(t), t.value))

    # Signal groups, and junctions whose lights cannot make a two-phase plan (imported as free).
    present: dict[str, set[str]] = {}
    for key, pair in pairs.items():
        jid = pair.junction.getID()
        if jid in tls_of_junction:
            present.setdefault(jid, set()).add(_group_for(heading[key[0]], turn_of[key]))
    signalized = set()
    for jid, found in present.items():
        if _lead_lead_phase_count(found) >= 2:
            signalized.add(jid)
        else:
            notes.append(
                f"traffic light junction {jid!r} only has groups {sorted(found)}, too few for "
                "a lead-lead plan: imported unsignalized, always green in SUMO"
            )

    intersections = tuple(
        Intersection(
            node_of_junction[jid],
            float(junction.getCoord()[0]),
            float(junction.getCoord()[1]),
            jid in signalized,
        )
        for jid, junction in junctions.items()
    )
    links = []
    for edge in edges:
        speed = max(lane.getSpeed() for lane in edge.getLanes() if lane.allows(CAR))
        links.append(
            Link(
                link_of_edge[edge.getID()],
                node_of_junction[edge.getFromNode().getID()],
                node_of_junction[edge.getToNode().getID()],
                max(float(edge.getLength()), 0.1),
                lanes_of[edge.getID()],
                float(speed),
                saturation,
            )
        )

    movement_ids = _Ids()
    movements: list[Movement] = []
    movement_of: dict[tuple[str, str], str] = {}
    members: dict[tuple[str, str], set[str]] = {}
    for key, pair in pairs.items():
        jid = pair.junction.getID()
        node = node_of_junction[jid]
        group = _group_for(heading[key[0]], turn_of[key]) if jid in signalized else FREE_GROUP
        mid = movement_ids.make(f"{link_of_edge[key[0]]}:{link_of_edge[key[1]]}")
        movement_of[key] = mid
        movements.append(
            Movement(mid, node, link_of_edge[key[0]], link_of_edge[key[1]], turn_of[key], group)
        )
        members.setdefault((node, group), set()).add(mid)
    groups = tuple(
        SignalGroup(group, node, frozenset(ids), group in ("2", "4", "6", "8"))
        for (node, group), ids in members.items()
    )

    approach_ids, detector_ids = _Ids(), _Ids()
    approaches: list[Approach] = []
    detectors: list[Detector] = []
    for edge in edges:
        jid = edge.getToNode().getID()
        if jid not in signalized:
            continue
        node, link = node_of_junction[jid], link_of_edge[edge.getID()]
        approach = approach_ids.make(f"{node}:{heading[edge.getID()]}")
        approaches.append(Approach(approach, node, link))
        length = max(float(edge.getLength()), 0.1)
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

    network = Network(
        intersections, tuple(links), tuple(approaches), tuple(movements), groups, tuple(detectors)
    )
    signal_nodes = [n for n in intersections if n.signalized]
    if progression_speed is None:
        signal_ids = {n.id for n in signal_nodes}  # once: built per link, half the import
        speeds = [link.speed_limit_mps for link in links if link.to_node in signal_ids]
        progression_speed = statistics.median(speeds) if speeds else 13.9
    check_number("progression_speed_mps", progression_speed, gt=0.0, le=70.0)
    x0 = min((n.x_m for n in signal_nodes), default=0.0)
    plans = {
        n.id: _plan_for(
            network,
            n.id,
            offset_s=progression_offset_s(n.x_m - x0, progression_speed, PROGRESSION_CYCLE_S),
        )
        for n in signal_nodes
    }
    name = source.name.removesuffix(".gz").removesuffix(".xml").removesuffix(".net")
    road = RoadNetwork(f"sumo-{name}", network, plans)

    tls_links, tls_size = _traffic_lights(net, pairs, movement_of, node_of_junction, turn_of)
    return SumoNet(
        source,
        road,
        {link: edge for edge, link in link_of_edge.items()},
        link_of_edge,
        {node: jid for jid, node in node_of_junction.items()},
        tls_links,
        tls_size,
        tuple(notes),
    )


def _traffic_lights(
    net: Any,
    pairs: Mapping[tuple[str, str], _Pair],
    movement_of: Mapping[tuple[str, str], str],
    node_of_junction: Mapping[str, str],
    turn_of: Mapping[tuple[str, str], Turn],
) -> tuple[dict[str, tuple[TlsLink, ...]], dict[str, int]]:
    """Per traffic light: its controlled car connections we imported, with their foes."""
    raw: dict[str, list[tuple[int, str, str, bool, Any, Any]]] = {}
    for key, pair in pairs.items():
        for connection in pair.connections:
            tls = connection.getTLSID()
            index = connection.getTLLinkIndex()
            if not tls or index < 0:
                continue
            raw.setdefault(tls, []).append(
                (
                    index,
                    node_of_junction[pair.junction.getID()],
                    movement_of[key],
                    turn_of[key] is Turn.THROUGH,
                    pair.junction,
                    connection,
                )
            )
    tls_links: dict[str, tuple[TlsLink, ...]] = {}
    tls_size: dict[str, int] = {}
    for tls in net.getTrafficLights():
        tid = tls.getID()
        size = 1 + max((c[2] for c in tls.getConnections()), default=-1)
        for program in tls.getPrograms().values():
            for phase in program.getPhases():
                size = max(size, len(phase.state))
        tls_size[tid] = size
        entries = raw.get(tid, [])
        junction_index: dict[int, int] = {}
        for position, entry in enumerate(entries):
            junction_index[position] = entry[4].getLinkIndex(entry[5])
        links = []
        for position, (index, node, movement, through, junction, _) in enumerate(entries):
            foes = set()
            for other, entry in enumerate(entries):
                if other == position or entry[4] is not junction:
                    continue
                if _are_foes(junction, junction_index[position], junction_index[other]):
                    foes.add(entry[0])
            foes.discard(index)
            links.append(TlsLink(index, node, movement, through, frozenset(foes)))
        tls_links[tid] = tuple(links)
    return tls_links, tls_size


def _are_foes(junction: Any, a: int, b: int) -> bool:
    if a < 0 or b < 0:
        return False
    try:
        return bool(junction.areFoes(a, b) or junction.areFoes(b, a))
    except (KeyError, IndexError):
        return False


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
        return SignalProgram(tls, 0.0, ((PROGRESSION_CYCLE_S, _state(links, size, {})),))
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
        state = _state(links, size, colours)
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


def _state(links: Sequence[TlsLink], size: int, colours: Mapping[int, str]) -> str:
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
    ``departSpeed="max"``, one car type of 5 m plus 2.5 m gap (our 7.5 m jam spacing).
    Returns how many vehicles were written."""
    edges = []
    for link_id in net.link_ids:
        edge = snet.edge_of_link.get(link_id)
        if edge is None:
            raise ValidationError("routes", f"link {link_id!r} is not from this SUMO network")
        edges.append(edge)
    order = np.argsort(trips.depart, kind="stable")
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
        lines.append(
            f'    <vehicle id={quoteattr(name)} type="{VEHICLE_TYPE}" '
            f'depart="{trips.depart[v]:.2f}" departLane="best" departSpeed="max" '
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
    """Mean distance driven by the arrived vehicles (SUMO's includes junction internal lanes)."""
    teleports: int = 0
    warm_up_s: float = 0.0

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
    binary = _require_binary("sumo")
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
    wall = _run_tool(command, log=out_dir / f"sumo-{tag}.log", timeout_s=timeout_s)
    return _read_sumo_outputs(f"sumo-{tag}", wall, duration_s, tripinfo, stats)


def _read_sumo_outputs(
    name: str, wall: float, duration_s: float, tripinfo: Path, stats: Path
) -> SimResult:
    xml = _sumolib().xml
    travel: list[float] = []
    distance: list[float] = []
    for trip in xml.parse(str(tripinfo), "tripinfo"):
        arrival = _number(trip.getAttributeSecure("arrival"), -1.0)
        if arrival < 0 or arrival > duration_s + 1e-6 or trip.getAttributeSecure("vaporized"):
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
    distance = 0.0
    if done.size:
        per_trip = np.add.reduceat(net.link_length[trips.route_links], trips.route_start)
        distance = float(per_trip[done].mean())
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
    nodes = road.intersection_by_id
    entries = sum(1 for link in road.links if not nodes[link.from_node].signalized)
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
