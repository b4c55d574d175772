"""SUMO demand (``.rou.xml``) as our ``Trips``, with a report of what could not be carried over.

What is read, at the top level of ``<routes>`` (or ``<additional>``) files:

- ``vType``: ``vClass`` (default ``passenger``) and the speed factor: ``speedFactor`` as a
  number (the mean: SUMO keeps the class's deviation) or ``normc(mean,dev,min,max)``, and
  ``speedDev``. Without them SUMO's class defaults apply: passenger cars
  ``normc(1,0.1,0.2,2)``, trucks, coaches, taxis and delivery vans a deviation of 0.05, buses and
  emergency vehicles exactly 1 (measured with SUMO 1.28). Factors are drawn per vehicle from
  ``seed``. Buses, trucks, motorcycles and the other road classes are cars for us; pedestrians,
  bicycles, trams, trains and ships are dropped (``vehicle_class``). ``emergency`` vehicles become
  emergency vehicles, named by their SUMO id.
- ``vTypeDistribution``: member ``vType`` children with ``probability``, or ``vTypes`` with
  optional ``probabilities``; each vehicle draws its type.
- ``route`` (``id``, ``edges``), referenced by ``route=`` of later elements.
- ``vehicle``: ``depart`` and ``route=`` or an embedded ``<route edges>``; a ``speedFactor``
  number on the vehicle fixes its factor (as our SUMO export writes it).
- ``trip``: ``from``, ``to`` and optional ``via``, routed on our network by shortest free-flow
  time over its movements (SUMO's duarouter on an empty network does the same). A trip
  without ``via`` is routed again when it leaves, on the travel times of that moment
  (``Trips.reroute``, ``demand.DepartureRouter``), as SUMO routes trips at insertion; one with
  ``via`` keeps its free-flow route.
- ``flow``: ``begin`` (default 0), ``end`` (default 24 h after ``begin``), one of ``period``
  (or ``exp(rate)``: Poisson arrivals), ``vehsPerHour``, ``probability`` (a vehicle per second
  with this chance) or ``number`` alone (evenly spaced over ``begin``-``end``); ``number`` with a
  rate caps the count. Vehicles are named ``<flow id>.<i>`` as in SUMO. Route as for ``vehicle``
  or ``trip``.

``departSpeed`` (on the vehicle, flow or trip, else on its ``vType``): a vehicle without one,
or with 0, starts from a standstill (``Trips.standing``: it pays its pulling away and waits for
the one that started before it on its link, as SUMO inserts vehicles in their edge's first
lane by default; a ``departLane`` is not read, so one that spreads them over several lanes
still has them wait); any other value leaves at speed.

Everything else is ignored: ``departLane``, ``departPos``, ``arrivalPos``,
stops, a type's ``length``, ``maxSpeed`` and car-following parameters (our engine has one jam
spacing and drives at speed limit times speed factor), and other elements (persons,
containers...: counted in the report). Types and routes must be defined before use, in the same
file or an earlier one; files need not be sorted by departure.

Time: SUMO second ``begin_s`` is our 0; vehicles leaving before it or at/after ``end_s`` are
dropped. ``scale`` multiplies demand like SUMO's ``--scale``: each vehicle is kept
``floor(scale)`` times plus once more with probability ``scale - floor(scale)`` (seeded); copies
leave at the same time, named ``<id>.copy<k>``. (SUMO spaces a scaled flow's vehicles evenly
instead.)

Errors: a file that cannot be read or parsed, or whose structure is wrong (a missing or
non-numeric ``depart``, a negative or NaN one, an unknown type or route id, an unknown
``vClass``, a bad flow rate, a duplicate id) raises ``ValidationError`` naming the file and the
element. Problems of a single vehicle's route are dropped and counted instead, so a city's
demand imports in part: an edge absent from the SUMO network (``unknown_edge``), one we did not
import (``edge_not_imported``: pedestrian, rail or bus-only edges; told apart from unknown ones
when ``sumo_edges`` is given), consecutive edges with no movement between them in our import
(``broken_route``), a trip with no path (``no_path``).

``shortest_route`` routes one pair of links the way trips are routed (an ambulance's route).
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.demand import Trips

VEHICLE_CLASS = "vehicle_class"
OUTSIDE_TIME_WINDOW = "outside_time_window"
UNKNOWN_EDGE = "unknown_edge"
EDGE_NOT_IMPORTED = "edge_not_imported"
BROKEN_ROUTE = "broken_route"
NO_PATH = "no_path"
SCALED_OUT = "scale"
REASONS = (
    VEHICLE_CLASS,
    OUTSIDE_TIME_WINDOW,
    UNKNOWN_EDGE,
    EDGE_NOT_IMPORTED,
    BROKEN_ROUTE,
    NO_PATH,
    SCALED_OUT,
)
"""Why a vehicle read from a file is not in the demand, in the order they are checked."""
MAX_EXAMPLES = 5
"""Examples kept per drop reason in the report."""

CAR_CLASSES = frozenset(
    {
        "passenger", "private", "taxi", "bus", "coach", "delivery", "truck", "trailer",
        "emergency", "evehicle", "army", "authority", "vip", "hov", "motorcycle", "moped",
        "custom1", "custom2",
    }
)  # fmt: skip
"""SUMO classes that drive on roads among cars: they are cars for us."""
OTHER_CLASSES = frozenset(
    {
        "ignoring", "pedestrian", "bicycle", "scooter", "wheelchair", "tram", "rail_urban",
        "rail", "rail_electric", "rail_fast", "ship", "subway", "aircraft", "drone",
        "container", "cable_car",
    }
)  # fmt: skip
"""The other SUMO classes: vehicles of these are dropped."""
_SPEED_DEV = {"taxi": 0.05, "coach": 0.05, "delivery": 0.05, "truck": 0.05, "trailer": 0.05}
_SPEED_DEV |= dict.fromkeys(("bus", "emergency", "army", "authority", "ignoring"), 0.0)
"""SUMO's default speed deviation per class where it is not 0.1."""
_DEFAULT_TYPES = {
    "DEFAULT_VEHTYPE": "passenger",
    "DEFAULT_TAXITYPE": "taxi",
    "DEFAULT_BIKETYPE": "bicycle",
    "DEFAULT_PEDTYPE": "pedestrian",
    "DEFAULT_RAILTYPE": "rail",
}
_JUNCTION_EDGES = ("internal", "crossing", "walkingarea")
DAY_S = 86400.0
MAX_FLOW_VEHICLES = 1_000_000
"""A flow making more vehicles than this is refused (a typo in a rate, say)."""
SLOWEST_FACTOR = 0.05
"""Drawn speed factors are never below this (SUMO's ``normc`` bounds may reach 0)."""
_NORMC = re.compile(r"normc\(([^)]*)\)")
_SOURCES_PER_BATCH = 4_000_000
"""Shortest-path sources per batch times links: bounds the predecessor matrix."""


@dataclass(frozen=True, slots=True)
class SpeedFactor:
    """A truncated normal distribution of desired speed over the speed limit."""

    mean: float
    dev: float
    low: float = 0.2
    high: float = 2.0

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        """Draws, redrawn while outside ``low``-``high`` (then clipped), as SUMO does."""
        draws = rng.normal(self.mean, self.dev, n) if self.dev > 0 else np.full(n, self.mean)
        for _ in range(20):
            bad = (draws < self.low) | (draws > self.high)
            if not bad.any():
                break
            draws[bad] = rng.normal(self.mean, self.dev, int(bad.sum()))
        return np.clip(draws, max(self.low, SLOWEST_FACTOR), self.high)


@dataclass(frozen=True, slots=True)
class _VType:
    id: str
    vclass: str
    speed: SpeedFactor
    standing: bool | None = None
    """Its ``departSpeed``: whether its vehicles start from a standstill (None: not given)."""


@dataclass(frozen=True, slots=True)
class _TypeDistribution:
    members: tuple[_VType, ...]
    weights: NDArray[np.float64]


@dataclass(frozen=True)
class RouteReport:
    """What became of the vehicles in the route files: ``read + duplicated - sum(dropped) ==
    imported``."""

    files: tuple[str, ...]
    begin_s: float
    end_s: float | None
    scale: float
    read: int
    """Vehicles in the files (each vehicle of a flow counted)."""
    imported: int
    duplicated: int
    """Copies added by a ``scale`` above 1."""
    dropped: Mapping[str, int]
    """Reason (one of ``REASONS``) -> vehicles dropped for it."""
    examples: Mapping[str, tuple[str, ...]]
    """Reason -> up to ``MAX_EXAMPLES`` vehicles dropped for it, with the file and element."""
    ignored: Mapping[str, int]
    """Top-level elements not modelled (persons, containers...) -> count."""

    def lines(self) -> list[str]:
        end = "the end" if self.end_s is None else f"{self.end_s:g} s"
        out = [
            f"routes: {', '.join(self.files)}",
            f"SUMO time {self.begin_s:g} s (our 0) to {end}, scale {self.scale:g}",
            f"{self.read} vehicles read, {self.imported} imported"
            + (f" ({self.duplicated} copies added by scale)" if self.duplicated else ""),
        ]
        for reason in REASONS:
            if self.dropped.get(reason):
                out.append(f"  dropped, {reason}: {self.dropped[reason]}")
                out.extend(f"    e.g. {example}" for example in self.examples.get(reason, ()))
        if self.ignored:
            kinds = ", ".join(f"{tag} x{n}" for tag, n in sorted(self.ignored.items()))
            out.append(f"  ignored elements: {kinds}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass(frozen=True)
class RouteDemand:
    trips: Trips
    report: RouteReport
    vehicle_ids: tuple[str, ...]
    """SUMO id of each vehicle of ``trips`` (copies made by ``scale`` get a suffix)."""


@dataclass(slots=True)
class _Vehicle:
    """One vehicle read, before routing: ``stops`` are the route's edges, or for a trip its
    ``from``, ``via`` and ``to`` edges."""

    file: str
    tag: str
    id: str
    depart: float
    vtype: _VType
    speed_factor: float | None
    stops: tuple[str, ...]
    is_trip: bool
    standing: bool

    @property
    def where(self) -> str:
        return f"{self.file} <{self.tag} id={self.id!r}>"


@dataclass
class _Tally:
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, where: str, detail: str) -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"{where}: {detail}")


def read_routes(
    paths: Sequence[Path],
    *,
    link_of_edge: Mapping[str, str],
    net: CompiledNetwork,
    begin_s: float = 0.0,
    end_s: float | None = None,
    scale: float = 1.0,
    seed: int = 0,
    sumo_edges: Collection[str] | None = None,
) -> RouteDemand:
    """The vehicles of SUMO route files ``paths`` on ``net``, whose links ``link_of_edge``
    maps SUMO edges to (``sumo.read_net``'s mapping), sorted by departure. ``sumo_edges``, all
    edge ids of the SUMO network (``sumo_edge_ids``), tells edges we did not import from
    unknown ones. See the module docstring for what is read and what raises."""
    check_number("begin_s", begin_s, ge=0.0)
    if end_s is not None:
        check_number("end_s", end_s, gt=begin_s)
    check_number("scale", scale, ge=0.0, le=100.0)
    check_count("seed", seed)
    if not paths:
        raise ValidationError("paths", "no route file given")
    type_rng, flow_rng, scale_rng, speed_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    tally = _Tally()
    reader = _Reader(begin_s, math.inf if end_s is None else end_s, type_rng, flow_rng, tally)
    for path in paths:
        reader.read(Path(path))
    router = _Router(net, link_of_edge, sumo_edges)
    routed = router.route_all(reader.vehicles, tally)
    kept, copies = _scale(routed, scale, scale_rng, tally)
    trips, ids = _trips(kept, speed_rng)
    report = RouteReport(
        tuple(str(p) for p in paths),
        begin_s,
        end_s,
        scale,
        reader.read_count,
        trips.count,
        copies,
        dict(tally.dropped),
        {reason: tuple(shown) for reason, shown in tally.examples.items()},
        dict(reader.ignored),
    )
    return RouteDemand(trips, report, ids)


def sumo_edge_ids(net_path: Path) -> frozenset[str]:
    """The ids of a SUMO ``.net.xml``'s edges that a route may name (not its junctions'
    internal edges, crossings and walking areas), for ``read_routes``'s ``sumo_edges``."""
    return frozenset(
        element.get("id", "")
        for element in _top_level(Path(net_path), ("net",))
        if element.tag == "edge" and element.get("function") not in _JUNCTION_EDGES
    )


# --- reading -----------------------------------------------------------------------------------


def _top_level(path: Path, roots: tuple[str, ...]) -> Iterator[ET.Element]:
    """The root's children (of a plain or gzipped file), each complete when yielded and freed
    after: route files can be large."""
    if not path.is_file():
        raise ValidationError(str(path), "no such file")
    with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as opened:
        try:
            yield from _children(opened, str(path), roots)
        except (ET.ParseError, OSError, EOFError) as error:
            raise ValidationError(str(path), f"malformed XML: {error}") from None


def _children(
    opened: gzip.GzipFile | BufferedReader, name: str, roots: tuple[str, ...]
) -> Iterator[ET.Element]:
    depth = 0
    root: ET.Element | None = None
    # local files the operator names; expat >= 2.4 bounds entity expansion
    for event, element in ET.iterparse(opened, events=("start", "end")):  # noqa: S314
        if event == "start":
            if root is None:
                root = element
                if element.tag not in roots:
                    raise ValidationError(name, f"root <{element.tag}>, expected <{roots[0]}>")
            depth += 1
            continue
        depth -= 1
        if depth == 1 and root is not None:
            yield element
            root.clear()


def _where(path: Path, element: ET.Element) -> str:
    return f"{path} <{element.tag} id={element.get('id')!r}>"


def _number(
    element: ET.Element, name: str, where: str, default: float | None = None, **bounds: float
) -> float:
    """Attribute ``name`` as a finite number within ``bounds`` (``check_number``'s)."""
    text = element.get(name)
    if text is None:
        if default is None:
            raise ValidationError(where, f"{name} is missing")
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(where, f"{name}={text!r} is not a number") from None
    try:
        return check_number(name, value, **bounds)
    except ValidationError as error:
        raise ValidationError(where, f"{name}={text!r}: {error.reason}") from None


def _speed_factor(element: ET.Element, where: str, vclass: str) -> SpeedFactor:
    dev = _number(element, "speedDev", where, _SPEED_DEV.get(vclass, 0.1), ge=0.0)
    text = element.get("speedFactor")
    if text is None:
        return SpeedFactor(1.0, dev)
    match = _NORMC.fullmatch(text.replace(" ", ""))
    if match is None:
        return SpeedFactor(_number(element, "speedFactor", where, gt=0.0, le=10.0), dev)
    try:
        mean, dev, low, high = (float(value) for value in match.group(1).split(","))
    except ValueError:
        raise ValidationError(
            where, f"speedFactor={text!r} is not normc(mean,dev,min,max)"
        ) from None
    if not (0.0 < mean <= 10.0 and dev >= 0.0 and 0.0 <= low <= high):
        raise ValidationError(where, f"speedFactor={text!r}: not a valid distribution")
    return SpeedFactor(mean, dev, low, high)


class _Reader:
    """Route files, element by element: the types and routes defined so far, the vehicles
    kept (cars inside the time window) and what was read."""

    def __init__(
        self,
        begin_s: float,
        end_s: float,
        type_rng: np.random.Generator,
        flow_rng: np.random.Generator,
        tally: _Tally,
    ) -> None:
        self.begin_s, self.end_s = begin_s, end_s
        self.type_rng, self.flow_rng = type_rng, flow_rng
        self.tally = tally
        self.types: dict[str, _VType | _TypeDistribution] = {
            name: _VType(name, vclass, SpeedFactor(1.0, _SPEED_DEV.get(vclass, 0.1)))
            for name, vclass in _DEFAULT_TYPES.items()
        }
        self.routes: dict[str, tuple[str, ...]] = {}
        self.seen_ids: set[str] = set()
        self.vehicles: list[_Vehicle] = []
        self.read_count = 0
        self.ignored: Counter[str] = Counter()

    def read(self, path: Path) -> None:
        handlers: dict[str, Callable[[Path, ET.Element], None]] = {
            "vType": self.vtype,
            "vTypeDistribution": self.vtype_distribution,
            "route": self.route,
            "vehicle": self.vehicle,
            "trip": self.vehicle,
            "flow": self.flow,
        }
        for element in _top_level(path, ("routes", "additional")):
            handler = handlers.get(element.tag)
            if handler is None:
                self.ignored[element.tag] += 1
            else:
                handler(path, element)

    @staticmethod
    def _new_id(where: str, element: ET.Element, taken: Collection[str]) -> str:
        """The element's id, refused if missing or ``taken`` (SUMO's default types aside)."""
        name = element.get("id")
        if not name:
            raise ValidationError(where, f"a <{element.tag}> needs an id")
        if name in taken and name not in _DEFAULT_TYPES:
            raise ValidationError(where, f"id {name!r} is used twice")
        return name

    def vtype(self, path: Path, element: ET.Element) -> None:
        self._vtype(_where(path, element), element)

    def _vtype(self, where: str, element: ET.Element) -> _VType:
        name = self._new_id(where, element, self.types)
        vclass = element.get("vClass", "passenger")
        if vclass not in CAR_CLASSES | OTHER_CLASSES:
            raise ValidationError(where, f"unknown vClass {vclass!r}")
        speed = _speed_factor(element, where, vclass)
        vtype = _VType(name, vclass, speed, _depart_standing(element, where))
        self.types[name] = vtype
        return vtype

    def vtype_distribution(self, path: Path, element: ET.Element) -> None:
        where = _where(path, element)
        name = self._new_id(where, element, self.types)
        children = [c for c in element if c.tag == "vType"]
        if children:
            members = [self._vtype(_where(path, c), c) for c in children]
            weights = [_number(c, "probability", _where(path, c), 1.0, ge=0.0) for c in children]
        else:
            members = [self._plain_type(where, t) for t in element.get("vTypes", "").split()]
            weights = _floats(element, "probabilities", where) or [1.0] * len(members)
        if not members or len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ValidationError(where, "needs member types and as many probabilities >= 0")
        self.types[name] = _TypeDistribution(tuple(members), np.array(weights) / sum(weights))

    def route(self, path: Path, element: ET.Element) -> None:
        where = _where(path, element)
        self.routes[self._new_id(where, element, self.routes)] = _edges(element, where)

    def _type(self, where: str, name: str) -> _VType | _TypeDistribution:
        found = self.types.get(name)
        if found is None:
            raise ValidationError(where, f"unknown vType {name!r}")
        return found

    def _plain_type(self, where: str, name: str) -> _VType:
        found = self._type(where, name)
        if isinstance(found, _TypeDistribution):
            raise ValidationError(where, f"{name!r} is a distribution: it cannot be a member")
        return found

    def _types(self, where: str, name: str, n: int) -> list[_VType]:
        """The types of ``n`` vehicles of type ``name``, drawn if it is a distribution."""
        found = self._type(where, name)
        if isinstance(found, _VType):
            return [found] * n
        picks = self.type_rng.choice(len(found.members), size=n, p=found.weights)
        return [found.members[i] for i in picks]

    def _route_of(self, where: str, element: ET.Element) -> tuple[tuple[str, ...], bool]:
        """The element's edges (``route=`` or embedded) or trip ends, and whether a trip."""
        if "route" in element.attrib:
            edges = self.routes.get(element.get("route", ""))
            if edges is None:
                raise ValidationError(where, f"unknown route {element.get('route')!r}")
            return edges, False
        embedded = element.find("route")
        if embedded is not None:
            return _edges(embedded, where), False
        if "from" in element.attrib and "to" in element.attrib:
            via = tuple(element.get("via", "").split())
            return (element.get("from", ""), *via, element.get("to", "")), True
        raise ValidationError(
            where, "no route: give route=, an embedded <route edges> or from= and to="
        )

    def vehicle(self, path: Path, element: ET.Element) -> None:
        where = _where(path, element)
        name = self._new_id(where, element, ())
        depart = _number(element, "depart", where, ge=0.0)
        self._add(path, element, [name], np.array([depart]))

    def flow(self, path: Path, element: ET.Element) -> None:
        where = _where(path, element)
        name = self._new_id(where, element, ())
        times = _flow_times(element, where, self.flow_rng)
        self._add(path, element, [f"{name}.{i}" for i in range(times.size)], times)

    def _add(
        self, path: Path, element: ET.Element, ids: list[str], departs: NDArray[np.float64]
    ) -> None:
        """Vehicles ``ids`` of ``element`` leaving at ``departs``: kept if cars inside the time
        window, else counted as dropped."""
        where = _where(path, element)
        stops, is_trip = self._route_of(where, element)
        own = element.get("speedFactor")
        factor = None if own is None else _number(element, "speedFactor", where, gt=0.0, le=10.0)
        standing = _depart_standing(element, where)
        types = self._types(where, element.get("type", "DEFAULT_VEHTYPE"), len(ids))
        self.read_count += len(ids)
        for vid, depart, vtype in zip(ids, departs.tolist(), types, strict=True):
            if vid in self.seen_ids:
                raise ValidationError(where, f"vehicle id {vid!r} is used twice")
            self.seen_ids.add(vid)
            # the vehicle's own departSpeed, else its type's, else SUMO's default 0
            still = next(s for s in (standing, vtype.standing, True) if s is not None)
            vehicle = _Vehicle(
                str(path), element.tag, vid, depart, vtype, factor, stops, is_trip, still
            )
            if vtype.vclass not in CAR_CLASSES:
                self.tally.drop(VEHICLE_CLASS, vehicle.where, f"vClass {vtype.vclass!r}")
            elif not self.begin_s <= depart < self.end_s:
                self.tally.drop(OUTSIDE_TIME_WINDOW, vehicle.where, f"departs at {depart:g} s")
            else:
                vehicle.depart = depart - self.begin_s
                self.vehicles.append(vehicle)


DEPART_SPEED_WORDS = frozenset({"random", "max", "desired", "speedLimit", "last", "avg"})
"""SUMO's ``departSpeed`` values that are not a number: all leave at some speed."""


def _depart_standing(element: ET.Element, where: str) -> bool | None:
    """Whether the element's ``departSpeed`` has its vehicles start from a standstill (0),
    None where it gives none."""
    given = element.get("departSpeed")
    if given is None:
        return None
    if given in DEPART_SPEED_WORDS:
        return False
    return _number(element, "departSpeed", where, ge=0.0, le=100.0) == 0.0


def _floats(element: ET.Element, name: str, where: str) -> list[float]:
    text = element.get(name, "")
    try:
        return [float(value) for value in text.split()]
    except ValueError:
        raise ValidationError(where, f"{name}={text!r} is not a list of numbers") from None


def _edges(element: ET.Element, where: str) -> tuple[str, ...]:
    edges = tuple(element.get("edges", "").split())
    if not edges:
        raise ValidationError(where, "a route needs edges")
    return edges


def _flow_times(element: ET.Element, where: str, rng: np.random.Generator) -> NDArray[np.float64]:
    """Departure times of a flow's vehicles (see the module docstring for the rules)."""
    begin = _number(element, "begin", where, 0.0, ge=0.0)
    end = _number(element, "end", where, begin + DAY_S, ge=begin)
    number = int(_number(element, "number", where, -1.0, ge=0.0, le=MAX_FLOW_VEHICLES))
    rates = [name for name in ("period", "vehsPerHour", "probability") if name in element.attrib]
    if len(rates) > 1:
        raise ValidationError(where, f"give one of period, vehsPerHour, probability, not {rates}")
    if rates:
        times = _rate_times(element, rates[0], where, begin, end, rng)
        return times if number < 0 else times[:number]
    if number < 0:
        raise ValidationError(where, "needs period, vehsPerHour, probability or number")
    return begin + np.arange(number, dtype=np.float64) * ((end - begin) / max(number, 1))


def _rate_times(
    element: ET.Element,
    kind: str,
    where: str,
    begin: float,
    end: float,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Departures in ``begin``-``end`` at the rate given by attribute ``kind``."""
    text = element.get(kind, "")
    if kind == "probability":
        chance = _number(element, kind, where, ge=0.0, le=1.0)
        seconds = begin + np.arange(_flow_size(end - begin, where), dtype=np.float64)
        return seconds[rng.random(seconds.size) < chance]
    if kind == "period" and text.startswith("exp(") and text.endswith(")"):
        try:
            rate = check_number(kind, float(text[4:-1]), ge=0.0)
        except ValueError:
            raise ValidationError(where, f"period={text!r} is not exp(rate >= 0)") from None
        count = rng.poisson(_flow_size(rate * (end - begin), where))
        return np.sort(rng.uniform(begin, end, count))
    if kind == "period":
        period = _number(element, kind, where, gt=0.0)
    else:
        hourly = _number(element, kind, where, ge=0.0)
        period = 3600.0 / hourly if hourly > 0 else math.inf
    count = math.ceil((end - begin) / period) if period < math.inf else 0
    return begin + np.arange(_flow_size(count, where), dtype=np.float64) * period


def _flow_size(count: float, where: str) -> int:
    if count > MAX_FLOW_VEHICLES:
        raise ValidationError(where, f"about {count:.0f} vehicles, over {MAX_FLOW_VEHICLES}")
    return math.ceil(count)


# --- routing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Path:
    links: NDArray[np.int32]
    moves: NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class _Drop:
    reason: str
    detail: str


class _Router:
    """Turns edge lists into link and movement indices, and trips into shortest paths; each
    distinct route is worked out once."""

    def __init__(
        self,
        net: CompiledNetwork,
        link_of_edge: Mapping[str, str],
        sumo_edges: Collection[str] | None,
    ) -> None:
        for edge, link in link_of_edge.items():
            if link not in net.link_index:
                raise ValidationError(
                    "link_of_edge", f"edge {edge!r} maps to {link!r}, not a link of this network"
                )
        self.net = net
        self.index = {edge: net.link_index[link] for edge, link in link_of_edge.items()}
        self.sumo_edges = sumo_edges
        self.move_of = {
            (int(a), int(b)): m for m, (a, b) in enumerate(zip(net.mv_from, net.mv_to, strict=True))
        }

    def route_all(
        self, vehicles: Sequence[_Vehicle], tally: _Tally
    ) -> list[tuple[_Vehicle, _Path]]:
        legs = self._legs({v.stops for v in vehicles if v.is_trip})
        done: dict[tuple[tuple[str, ...], bool], _Path | _Drop] = {}
        routed = []
        for vehicle in vehicles:
            key = (vehicle.stops, vehicle.is_trip)
            if key not in done:
                done[key] = self._route(vehicle, legs)
            result = done[key]
            if isinstance(result, _Path):
                routed.append((vehicle, result))
            else:
                tally.drop(result.reason, vehicle.where, result.detail)
        return routed

    def _links(self, edges: Sequence[str]) -> list[int] | _Drop:
        """Link indices, or why not at the first edge we cannot use."""
        links = []
        for edge in edges:
            link = self.index.get(edge)
            if link is None:
                if self.sumo_edges is not None and edge in self.sumo_edges:
                    return _Drop(EDGE_NOT_IMPORTED, f"edge {edge!r} was not imported (no car lane)")
                return _Drop(UNKNOWN_EDGE, f"edge {edge!r} is not in the SUMO network")
            links.append(link)
        return links

    def _route(
        self, vehicle: _Vehicle, legs: Mapping[tuple[int, int], list[int] | None]
    ) -> _Path | _Drop:
        links = self._links(vehicle.stops)
        if isinstance(links, _Drop):
            return links
        if vehicle.is_trip:
            full = links[:1]
            for stop, pair in enumerate(itertools.pairwise(links)):
                leg = legs[pair]
                if leg is None:
                    ends = f"{vehicle.stops[stop]!r} to {vehicle.stops[stop + 1]!r}"
                    return _Drop(NO_PATH, f"no path from edge {ends} in our network")
                full.extend(leg[1:])
            links = full
        moves = [self.move_of.get(pair) for pair in itertools.pairwise(links)]
        if None in moves:
            gap = moves.index(None)
            ends = f"{vehicle.stops[gap]!r} to {vehicle.stops[gap + 1]!r}"
            return _Drop(BROKEN_ROUTE, f"no movement from edge {ends} in our network")
        return _Path(np.array(links, dtype=np.int32), np.array([*moves, -1], dtype=np.int32))

    def _legs(self, trips: Collection[tuple[str, ...]]) -> dict[tuple[int, int], list[int] | None]:
        """The paths of every leg (stop to next stop) of ``trips`` whose edges we have."""
        legs: set[tuple[int, int]] = set()
        for stops in trips:
            links = self._links(stops)
            if not isinstance(links, _Drop):
                legs.update(itertools.pairwise(links))
        return _shortest_paths(self.net, legs)


def shortest_route(net: CompiledNetwork, origin: str, destination: str) -> tuple[str, ...]:
    """Link ids from link ``origin`` to link ``destination`` (both included), shortest by
    free-flow time through ``net``'s movements, as trips are routed."""
    ends = []
    for role, link in (("origin", origin), ("destination", destination)):
        if link not in net.link_index:
            raise ValidationError("route", f"unknown {role} link {link!r}")
        ends.append(net.link_index[link])
    path = _shortest_paths(net, {(ends[0], ends[1])})[(ends[0], ends[1])]
    if path is None:
        raise ValidationError("route", f"{destination!r} cannot be reached from {origin!r}")
    return tuple(net.link_ids[i] for i in path)


def _shortest_paths(
    net: CompiledNetwork, legs: Collection[tuple[int, int]]
) -> dict[tuple[int, int], list[int] | None]:
    """Link paths (ends included) by free-flow time for each (from, to) link pair, or None
    where there is none; Dijkstra runs once per distinct origin, in batches."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    free_time = net.link_length / net.link_speed
    graph = csr_matrix(
        (free_time[net.mv_to], (net.mv_from, net.mv_to)), shape=(net.links, net.links)
    )
    origins = sorted({a for a, _ in legs})
    batch = max(1, _SOURCES_PER_BATCH // max(net.links, 1))
    paths: dict[tuple[int, int], list[int] | None] = {}
    for first in range(0, len(origins), batch):
        chunk = origins[first : first + batch]
        _, predecessors = dijkstra(graph, indices=chunk, return_predecessors=True)
        row_of = {origin: row for row, origin in enumerate(chunk)}
        for a, b in legs:
            if a in row_of:
                paths[(a, b)] = _walk_back(predecessors[row_of[a]], a, b)
    return paths


def _walk_back(predecessors: NDArray[np.int32], a: int, b: int) -> list[int] | None:
    path = [b]
    while path[-1] != a:
        previous = int(predecessors[path[-1]])
        if previous < 0:
            return None
        path.append(previous)
    return path[::-1]


# --- assembling --------------------------------------------------------------------------------


def _scale(
    routed: list[tuple[_Vehicle, _Path]], scale: float, rng: np.random.Generator, tally: _Tally
) -> tuple[list[tuple[_Vehicle, _Path, str]], int]:
    """Each vehicle ``floor(scale)`` times, plus once more with probability of the fraction;
    copies beyond the first named ``<id>.copy<k>``. Returns them and how many copies."""
    whole = math.floor(scale)
    quota = (whole + (rng.random(len(routed)) < scale - whole)).tolist()
    kept = []
    for (vehicle, path), times in zip(routed, quota, strict=True):
        if times == 0:
            tally.drop(SCALED_OUT, vehicle.where, f"left out by scale {scale:g}")
        for k in range(times):
            kept.append((vehicle, path, f"{vehicle.id}.copy{k}" if k else vehicle.id))
    return kept, sum(max(0, times - 1) for times in quota)


def _trips(
    kept: list[tuple[_Vehicle, _Path, str]], rng: np.random.Generator
) -> tuple[Trips, tuple[str, ...]]:
    """``Trips`` sorted by departure (file order among equal times), with speed factors drawn
    per vehicle in that order, and the vehicles' ids."""
    kept = sorted(kept, key=lambda item: item[0].depart)
    vehicles = [vehicle for vehicle, _, _ in kept]
    paths = [path for _, path, _ in kept]
    lengths = np.array([path.links.size for path in paths], dtype=np.int32)
    starts = np.zeros(len(kept), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    emergency = np.array([v.vtype.vclass == "emergency" for v in vehicles], dtype=np.bool_)
    # SUMO routes a trip when it inserts it, on the travel times of that moment
    reroute = np.array([v.is_trip and len(v.stops) == 2 for v in vehicles], dtype=np.bool_)
    standing = np.array([v.standing for v in vehicles], dtype=np.bool_)
    ids = tuple(name for _, _, name in kept)
    trips = Trips(
        np.array([v.depart for v in vehicles], dtype=np.float64),
        starts,
        lengths,
        np.concatenate([p.links for p in paths]) if paths else np.zeros(0, dtype=np.int32),
        np.concatenate([p.moves for p in paths]) if paths else np.zeros(0, dtype=np.int32),
        _speed_factors(vehicles, rng),
        emergency,
        {int(i): ids[i] for i in np.flatnonzero(emergency)},
        reroute if reroute.any() else None,
        standing if standing.any() else None,
    )
    return trips, ids


def _speed_factors(vehicles: Sequence[_Vehicle], rng: np.random.Generator) -> NDArray[np.float64]:
    """A vehicle's own factor, else a draw from its type's distribution."""
    factors = np.ones(len(vehicles))
    by_type: dict[SpeedFactor, list[int]] = {}
    for i, vehicle in enumerate(vehicles):
        if vehicle.speed_factor is None:
            by_type.setdefault(vehicle.vtype.speed, []).append(i)
        else:
            factors[i] = vehicle.speed_factor
    for distribution, members in by_type.items():
        factors[members] = distribution.sample(rng, len(members))
    return factors
