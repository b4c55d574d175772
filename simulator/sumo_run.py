"""SUMO micro in the closed loop: SUMO moves every vehicle, our controllers set its lights.

``SumoRun`` offers what ``runner.Run`` offers (``runner.SimulationRun``), so the closed loop,
scoring and the field bus run on it unchanged:

- **Vehicles**: our ``Trips`` become SUMO vehicles with explicit routes (``sumo.write_routes``:
  same departures, edges and speed factors, 5 m cars with a 2.5 m gap, SUMO's default driver
  imperfection ``sigma`` 0.5). Trips SUMO would route at insertion keep the route we drew, so
  both engines drive the same paths. An ambulance is an ordinary vehicle: speed factor 1.3,
  the same imperfection, it obeys red, nobody makes way for it.
- **Lights**: every step, each traffic light's state string is written from our emulated
  controllers (the same ``ControllerModel`` and safety checks as on our engine) through the
  group of each of its link indices (``trafficlight.setRedYellowGreenState``); links of
  traffic we do not model stay red. SUMO's own programs never run.
- **What is read back** (``SumoState``, our engine's arrays): per vehicle its state, route
  index, stops (a stop is a fall below 0.1 m/s, SUMO's halting speed), arrival, and for the
  tracked (emergency) vehicles the offset along the link (the link's length while crossing a
  junction; 0 for the others: nothing reads it); per link departures and delay;
  queues as SUMO's halting vehicles on the link's edge; detectors as SUMO induction loops on
  every car lane at our stop-bar and advance positions (counts summed over lanes, occupancy
  the busiest lane's, as steps occupied), feeding the same ``DetectorCards``.
- **Incidents**: a vehicle SUMO teleports (a jam over ``time_to_teleport_s``), one involved
  in a collision, and one that leaves before the end of its route are recorded
  (``incidents``); a removed vehicle's state is ``REMOVED``, never ``ARRIVED``.

libsumo runs one simulation per process: a second ``SumoRun`` while one is open is refused,
and ``close`` (or the ``with`` block) ends it. libsumo's errors surface as ``SumoError``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.signal import Indication
from citybrain.simulator.compiled import CompiledNetwork
from citybrain.simulator.controllers import EmulatedController
from citybrain.simulator.demand import Trips, hop_metres, route_hops
from citybrain.simulator.detectors import DetectorCards
from citybrain.simulator.engine import MAX_ADVANCE_S
from citybrain.simulator.kernels import ARRIVED, DRIVING, PENDING, QUEUED
from citybrain.simulator.runner import (
    ControlledRun,
    Engine,
    Run,
    SimulationRun,
    VehicleIncident,
)
from citybrain.simulator.scenarios import Scenario
from citybrain.simulator.sumo import (
    SumoError,
    SumoNet,
    SumoUnavailableError,
    TlsLink,
    find_binary,
    run_tool,
    sumo_version,
    tls_state,
    write_routes,
)
from citybrain.simulator.sumo_export import export_network
from citybrain.simulator.sumo_xml import read_net_file

REMOVED = 4
"""Vehicle state beyond the engine's: SUMO took it out before the end of its route."""
HALTING_MPS = 0.1
"""SUMO's halting speed: below it a vehicle stands (a queue, a stop)."""
LOOP_PERIOD_S = 365 * 86400.0
"""Induction loops aggregate over one interval longer than any run, so their interval
figures are cumulative."""
STOP_BAR_SETBACK_M = 0.5
"""A stop-bar loop sits this far before the lane's end (SUMO wants it on the lane)."""
INSTALL = "pip install 'citybrain[sumo]'"
OLDEST_SUMO = (1, 20)
"""The oldest SUMO the closed loop is built for (``pyproject.toml``'s ``sumo`` extra)."""
SEED_MAX = 2**31 - 1
"""SUMO's ``--seed`` is a C int: a larger one fails its command line."""
log = logging.getLogger(__name__)

LOAD_CHECK_TIMEOUT_S = 300.0
"""How long SUMO's binary may take to load a network again to say why libsumo could not."""
OPAQUE_LOAD_ERROR = "Process Error"
"""What libsumo raises where it wrote why to standard error (a file it cannot read, a loop on
a lane the network lacks): only then is the binary run again to say it (``_sumo_says``);
other load errors (a route over an edge the network lacks) carry SUMO's words themselves."""

_COLOUR = {Indication.GREEN: "G", Indication.YELLOW: "y", Indication.RED: "r"}
_active: SumoRun | None = None


def libsumo_module() -> ModuleType:
    """libsumo, checked against the SUMO tools' version (netconvert builds the networks it
    loads). Raises ``SumoUnavailableError`` saying how to install it."""
    try:
        libsumo = importlib.import_module("libsumo")
    except ImportError:
        raise SumoUnavailableError(f"libsumo is not installed: {INSTALL}") from None
    ours = str(libsumo.simulation.getVersion()[1]).split()[-1]
    if _release(ours) < OLDEST_SUMO:
        oldest = ".".join(map(str, OLDEST_SUMO))
        raise SumoUnavailableError(f"libsumo {ours} is older than SUMO {oldest}: {INSTALL} -U")
    tools = _tools_version()
    if tools is not None and tools != ours:
        raise SumoUnavailableError(
            f"libsumo {ours} and the SUMO tools {tools} differ: pip install "
            f"libsumo=={tools} (or both at one version: pip install libsumo==X eclipse-sumo==X)"
        )
    return libsumo


def _release(version: str) -> tuple[int, ...]:
    """``1.28.0`` (or a nightly's ``v1_28_0+0456-abc``) as (1, 28, 0): what follows the
    leading numbers is left out, and a version with none reads as (0,)."""
    numbers = []
    for part in version.removeprefix("v").replace("_", ".").split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers) or (0,)


def _tools_version() -> str | None:
    try:
        return importlib.metadata.version("eclipse-sumo")
    except importlib.metadata.PackageNotFoundError:
        line = sumo_version()
        return line.split()[-1] if line else None


class SumoState:
    """SUMO's vehicles as our engine's arrays (``runner.EngineState``). Per-vehicle and
    per-link counters are updated every step; queues, loops and the insertion backlog are
    read from SUMO when asked (once per step), and frozen when the run closes."""

    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        dt_s: float,
        loops: _Loops,
        libsumo: ModuleType,
        errors: Callable[[str], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.net, self.trips, self.dt = net, trips, dt_s
        self.now = 0.0
        self.loops = loops
        self._lib = libsumo
        self._errors = errors
        """The run's mapping of libsumo's exceptions to ``SumoError`` (``SumoRun._errors``)."""
        n = trips.count
        self.state = np.full(n, PENDING, dtype=np.int8)
        self.hop = np.zeros(n, dtype=np.int32)
        self.position = np.zeros(n, dtype=np.float64)
        self.stops = np.zeros(n, dtype=np.int32)
        self.arrived = np.full(n, np.nan)
        self.hop_enter = np.full(trips.route_links.shape[0], np.nan)
        self.link_departures = np.zeros(net.links, dtype=np.int64)
        self.link_delay = np.zeros(net.links, dtype=np.float64)
        self.in_network: set[int] = set()
        hops = route_hops(trips)
        owner = np.repeat(np.arange(n), trips.route_len)
        self.hop_free = np.zeros(trips.route_links.shape[0])
        """Free-flow seconds of each route entry at its vehicle's desired speed."""
        self.hop_free[hops] = hop_metres(net, trips, hops) / (
            net.link_speed[trips.route_links[hops]] * trips.speed_factor[owner]
        )
        self._read: dict[str, tuple[float, Any]] = {}
        self.frozen = False

    @property
    def vehicles_in_network(self) -> int:
        return len(self.in_network)

    @property
    def active(self) -> NDArray[np.int64]:
        return np.array(sorted(self.in_network), dtype=np.int64)

    def _cached(self, name: str, read: Callable[[], Any]) -> Any:
        found = self._read.get(name)
        if found is not None and (self.frozen or found[0] == self.now):
            return found[1]
        if self.frozen:
            raise SumoError(f"the SUMO run is closed: {name} was not read before it closed")
        with self._errors(f"reading {name}"):
            value = read()
        self._read[name] = (self.now, value)
        return value

    @property
    def n_waiting(self) -> NDArray[np.int64]:
        """Vehicles due that SUMO has not been able to insert (its insertion backlog)."""
        return self._cached(  # type: ignore[no-any-return]
            "n_waiting",
            lambda: np.array([len(self._lib.simulation.getPendingVehicles())], dtype=np.int64),
        )

    @property
    def link_queued(self) -> NDArray[np.int32]:
        """Vehicles standing (below SUMO's halting speed) on each link."""
        edge = self._lib.edge

        def read() -> NDArray[np.int32]:
            return np.array(
                [edge.getLastStepHaltingNumber(e) for e in self.loops.edges], dtype=np.int32
            )

        return self._cached("link_queued", read)  # type: ignore[no-any-return]

    @property
    def adv_count(self) -> NDArray[np.int64]:
        return self._cached("adv_count", lambda: self.loops.counts(self._lib, "adv"))  # type: ignore[no-any-return]

    @property
    def stop_count(self) -> NDArray[np.int64]:
        return self._cached("stop_count", lambda: self.loops.counts(self._lib, "stop"))  # type: ignore[no-any-return]

    @property
    def adv_occupied(self) -> NDArray[np.float64]:
        return self._cached(  # type: ignore[no-any-return]
            "adv_occupied", lambda: self.loops.occupied(self._lib, "adv", self.now / self.dt)
        )

    @property
    def stop_occupied(self) -> NDArray[np.float64]:
        return self._cached(  # type: ignore[no-any-return]
            "stop_occupied", lambda: self.loops.occupied(self._lib, "stop", self.now / self.dt)
        )

    def freeze(self) -> None:
        """Read everything read lazily once more, before SUMO goes away."""
        for name in ("n_waiting", "link_queued", "adv_count", "stop_count"):
            getattr(self, name)
        self.adv_occupied  # noqa: B018 - read to keep
        self.stop_occupied  # noqa: B018 - read to keep
        self.frozen = True


class _Loops:
    """The induction loops at our detectors' places: per link, the loop ids of each kind."""

    def __init__(self, net: CompiledNetwork, snet: SumoNet) -> None:
        self.edges = [snet.edge_of_link[link] for link in net.link_ids]
        self.ids: dict[str, list[list[str]]] = {
            "stop": [[] for _ in net.link_ids],
            "adv": [[] for _ in net.link_ids],
        }
        self.lines: list[str] = []
        self.passed: dict[str, NDArray[np.int64]] = {
            kind: np.zeros(len(net.link_ids), dtype=np.int64) for kind in self.ids
        }
        """The counts read so far (``counts`` never goes below them)."""
        lanes = {
            edge.id: [lane for lane in edge.lanes if lane.allows_car]
            for edge in read_net_file(snet.path).edges
        }
        for approach in net.road.network.approaches:
            link = net.link_index[approach.link_id]
            for lane in lanes[self.edges[link]]:
                end = max(lane.length_m - STOP_BAR_SETBACK_M, 0.0)
                advance = min(float(net.link_advance[link]), end)
                for kind, pos in (("stop", end), ("adv", advance)):
                    loop = f"{approach.id}:{kind}:{lane.index}"
                    self.ids[kind][link].append(loop)
                    self.lines.append(
                        f"    <inductionLoop id={quoteattr(loop)} lane={quoteattr(lane.id)} "
                        f'pos="{pos:.2f}" period="{LOOP_PERIOD_S:g}" file="NUL"/>'
                    )

    def write(self, path: Path) -> None:
        body = "\n".join(["<additional>", *self.lines, "</additional>"])
        path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n')

    def counts(self, libsumo: ModuleType, kind: str) -> NDArray[np.int64]:
        """Vehicles that passed each link's loops of ``kind`` since the start. SUMO forgets a
        vehicle it teleports off a loop (its interval count goes down by one); it did pass,
        and a count that went down would read as a negative flow, so a count never falls."""
        number = libsumo.inductionloop.getIntervalVehicleNumber
        read = np.array(
            [sum(number(loop) for loop in loops) for loops in self.ids[kind]], dtype=np.int64
        )
        np.maximum(self.passed[kind], read, out=self.passed[kind])
        return self.passed[kind].copy()

    def occupied(self, libsumo: ModuleType, kind: str, steps: float) -> NDArray[np.float64]:
        """Steps each link's busiest loop of ``kind`` was occupied since the start."""
        share = libsumo.inductionloop.getIntervalOccupancy
        return np.array(
            [
                max((share(loop) for loop in loops), default=0.0) / 100.0 * steps
                for loops in self.ids[kind]
            ]
        )


class _Lights:
    """Our controllers' displays as SUMO state strings, per traffic light."""

    def __init__(self, snet: SumoNet, controllers: dict[str, EmulatedController]) -> None:
        group_of = {m.id: m.signal_group for m in snet.road.network.movements}
        self.controllers = controllers
        self.lights: list[tuple[str, tuple[TlsLink, ...], int, list[tuple[str, str]]]] = [
            (
                tls,
                links,
                snet.tls_size[tls],
                [(link.node, group_of[link.movement]) for link in links],
            )
            for tls, links in snet.tls_links.items()
            if links
        ]
        self.shown: dict[str, str] = {}
        self._states: dict[tuple[str, tuple[str, ...]], str] = {}
        self._normal: dict[tuple[str, float], dict[str, str]] = {}

    def colours(self, node: str, now: float) -> dict[str, str]:
        """``G``/``y``/``r`` per group of ``node``'s controller now (none: always go). The
        normal plan repeats every cycle, so its colours are kept per cycle position."""
        controller = self.controllers.get(node)
        if controller is None:
            return {}
        if controller.running is None:
            plan = controller.plan
            key = (node, round((now - plan.offset_s) % plan.cycle_s, 6))
            found = self._normal.get(key)
            if found is None:
                found = self._normal[key] = self._read(controller, now)
            return found
        return self._read(controller, now)

    @staticmethod
    def _read(controller: EmulatedController, now: float) -> dict[str, str]:
        return {g: _COLOUR[s.indication] for g, s in controller.state_at(now).groups.items()}

    def changed(self, now: float) -> list[tuple[str, str]]:
        """(traffic light, state) of each light whose state differs from what it shows."""
        per_node: dict[str, dict[str, str]] = {}
        out = []
        for tls, links, size, served in self.lights:
            shown = []
            for node, group in served:
                colours = per_node.get(node)
                if colours is None:
                    colours = per_node[node] = self.colours(node, now)
                shown.append(colours.get(group, "G"))
            key = (tls, tuple(shown))
            state = self._states.get(key)
            if state is None:
                by_index: dict[int, str] = {}
                for link, colour in zip(links, shown, strict=True):
                    by_index.setdefault(link.index, colour)
                state = self._states[key] = tls_state(links, size, by_index)
            if self.shown.get(tls) != state:
                self.shown[tls] = state
                out.append((tls, state))
        return out


class SumoRun(ControlledRun):
    """A run in SUMO micro under our controllers (see the module docstring)."""

    sim: SumoState

    def __init__(
        self,
        net: CompiledNetwork,
        trips: Trips,
        *,
        sumo_net: SumoNet | None = None,
        seed: int = 0,
        dt_s: float = 1.0,
        sample_every_s: float = 60.0,
        time_to_teleport_s: float = 300.0,
        remove_jammed: bool = False,
        work_dir: Path | None = None,
    ) -> None:
        """``time_to_teleport_s``: SUMO's ``--time-to-teleport``; ``remove_jammed``: take a
        vehicle jammed that long out (``--time-to-teleport.remove``) instead of teleporting
        it. ``work_dir``: keep SUMO's inputs and log there (default: a temporary folder)."""
        global _active
        super().__init__(net, trips, start_s=0.0, sample_every_s=sample_every_s)
        check_count("seed", seed, le=SEED_MAX)
        check_number("dt_s", dt_s, ge=0.1, le=2.0)
        check_number("time_to_teleport_s", time_to_teleport_s, gt=0.0)
        if sumo_net is not None and sumo_net.road is not net.road:
            raise ValidationError("sumo_net", "the SUMO network is not the run's network")
        trips.check_on(net.links)
        libsumo = libsumo_module()
        if _active is not None or libsumo.simulation.isLoaded():
            raise SumoError(
                "libsumo runs one simulation per process and one is open: close it first"
            )
        if work_dir is not None and work_dir.exists() and not work_dir.is_dir():
            raise ValidationError("work_dir", f"{work_dir} is a file, not a folder")
        self._lib = libsumo
        self._own_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="citybrain-sumo-")) if work_dir is None else work_dir
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.closed = False
        try:
            if sumo_net is None:
                sumo_net = export_network(net.road, self.work_dir / "net")
            else:  # a file we did not write: SUMO may crash on it, taking this process along
                _check_sumo_loads(sumo_net.path, self.work_dir / "sumo-net-check.log")
            self.sumo_net = sumo_net
            loops = _Loops(net, sumo_net)
            self.sim = SumoState(net, trips, dt_s, loops, libsumo, self._errors)
            self.detectors = DetectorCards(self.sim)
            self._lights = _Lights(sumo_net, self.controllers)
            self._index = {trips.names.get(v, f"v{v}"): v for v in range(trips.count)}
            self._hop_of: dict[str, int] = {}
            """Route index of each vehicle in the network, by SUMO id."""
            self._halted: set[str] = set()
            self._teleporting: set[str] = set()
            self._caps: dict[str, float | None] = {}
            """Speed caps set on tracked vehicles (``set_speed_cap``), by SUMO id."""
            self._own_max: dict[str, float] = {}
            """Their maximum speed before the first cap."""
            self.remove_jammed = remove_jammed
            constants = libsumo.constants
            self._moving = (constants.VAR_ROUTE_INDEX, constants.VAR_SPEED)
            self._tracking = (*self._moving, constants.VAR_ROAD_ID, constants.VAR_LANEPOSITION)
            routes, additional = self.work_dir / "routes.rou.xml", self.work_dir / "loops.add.xml"
            write_routes(sumo_net, net, trips, routes)
            loops.write(additional)
            teleport: tuple[str, ...] = ("--time-to-teleport", f"{time_to_teleport_s:g}")
            if remove_jammed:
                teleport += ("--time-to-teleport.remove", "true")
            self._start(sumo_net.path, routes, additional, seed, dt_s, teleport)
            _active = self
            self._show_lights()
        except BaseException:  # libsumo freed: the next run in this process may start
            self._cleanup()
            raise

    def _start(
        self,
        net_file: Path,
        routes: Path,
        additional: Path,
        seed: int,
        dt_s: float,
        teleport: tuple[str, ...],
    ) -> None:
        binary = find_binary("sumo")
        command = [
            str(binary or "sumo"),
            *("--net-file", str(net_file), "--route-files", str(routes)),
            *("--additional-files", str(additional), "--begin", "0"),
            *("--step-length", f"{dt_s:g}", "--seed", str(seed)),
            *teleport,
            *("--no-step-log", "true", "--no-warnings", "true"),
        ]
        try:
            self._lib.start([*command, "--log", str(self.work_dir / "sumo.log")])
        except (self._lib.TraCIException, self._lib.FatalTraCIError) as error:
            said = str(error).strip()
            if said and said != OPAQUE_LOAD_ERROR:  # a route's unknown edge, say: SUMO's words
                raise SumoError(f"SUMO failed loading: {said}") from None
            # libsumo wrote why to standard error: SUMO's binary says it again (the run's log kept)
            check = [*command, "--log", str(self.work_dir / "sumo-check.log")]
            why = _sumo_says(check, log=None) or (
                "libsumo refused what SUMO's own binary loads (its words went to standard error)"
            )
            raise SumoError(f"SUMO failed loading: {why}") from None

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """libsumo's exceptions as ``SumoError``, with the tail of SUMO's log."""
        try:
            yield
        except (self._lib.TraCIException, self._lib.FatalTraCIError) as error:
            sumo_log = self.work_dir / "sumo.log"
            said = sumo_log.read_text(errors="replace") if sumo_log.is_file() else ""
            tail = said.strip().splitlines()[-8:]
            detail = "\n".join(tail)
            raise SumoError(
                f"SUMO failed {doing}: {error}" + (f"\n{detail}" if detail else "")
            ) from None

    # --- the run surface (runner.SimulationRun) -------------------------------------------

    def advance(self, seconds: float, *, on_step: Callable[[float], None] | None = None) -> None:
        """Run ``seconds`` of simulated time, one SUMO step at a time."""
        check_number("seconds", seconds, ge=0.0, le=MAX_ADVANCE_S)
        if self.closed:
            raise SumoError("the SUMO run is closed")
        end = self.now + seconds - 1e-9
        while self.now < end:
            self._sample()
            self._step()
            if on_step is not None:
                on_step(self.now)

    def set_speed_cap(self, vehicle: str, speed_mps: float | None) -> None:
        """From now on tracked ``vehicle`` keeps under ``speed_mps``: its maximum speed in
        SUMO (car following and its imperfection still apply); ``None``: its type's again.
        Kept until it departs if it has not yet."""
        if self.closed:  # libsumo may hold another run's vehicle of that name by now
            raise SumoError("the SUMO run is closed")
        self._tracked(vehicle, speed_mps)
        self._caps[vehicle] = speed_mps
        if vehicle in self._hop_of:
            self._apply_cap(vehicle)

    def _apply_cap(self, vehicle: str) -> None:
        lib, speed = self._lib, self._caps[vehicle]
        with self._errors("advising a speed"):
            # the first cap gives the vehicle a type of its own: its own maximum is kept
            if vehicle not in self._own_max:
                self._own_max[vehicle] = lib.vehicle.getMaxSpeed(vehicle)
            own = self._own_max[vehicle]
            lib.vehicle.setMaxSpeed(vehicle, own if speed is None else min(speed, own))

    def close(self) -> None:
        """End the SUMO simulation (what was read stays readable) and free libsumo."""
        if self.closed:
            return
        try:
            self.sim.freeze()
        finally:
            self._cleanup()

    def __enter__(self) -> SumoRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
            return
        # the error that ended the run is the one to see, not SUMO's failing to freeze after it
        with contextlib.suppress(SumoError):
            self.close()

    def _cleanup(self) -> None:
        global _active
        self.closed = True
        if _active is self or self._lib.simulation.isLoaded():
            with contextlib.suppress(self._lib.TraCIException, self._lib.FatalTraCIError):
                self._lib.close()
        if _active is self:
            _active = None
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- one step ------------------------------------------------------------------------------

    def _show_lights(self) -> None:
        now = self.now
        for node in list(self._running):
            controller = self.controllers[node]
            controller.update(now)
            if controller.running is None:
                self._running.discard(node)
        set_state = self._lib.trafficlight.setRedYellowGreenState
        with self._errors("setting a traffic light"):
            for tls, state in self._lights.changed(now):
                set_state(tls, state)

    def _step(self) -> None:
        lib, sim, trips = self._lib, self.sim, self.trips
        began = sim.now
        with self._errors("stepping"):
            lib.simulationStep()
            now = sim.now = float(lib.simulation.getTime())
            departed = lib.simulation.getDepartedIDList()
            arrived = lib.simulation.getArrivedIDList()
            teleports = lib.simulation.getStartingTeleportIDList()
            ended = lib.simulation.getEndingTeleportIDList()
            collisions = lib.simulation.getCollidingVehiclesIDList()
            results = lib.vehicle.getAllSubscriptionResults()
        index, hop_of, halted = self._index, self._hop_of, self._halted
        for vid in departed:
            v = index[vid]
            sim.state[v] = DRIVING
            sim.hop_enter[trips.route_start[v]] = began
            sim.in_network.add(v)
            hop_of[vid] = 0
            with self._errors("following a departed vehicle"):
                lib.vehicle.subscribe(vid, self._tracking if vid in self.tracked else self._moving)
            if vid in self._caps:
                self._apply_cap(vid)
        route_index, speed = self._moving
        # the hot loop: plain dicts and sets, arrays touched only when something changes
        for vid, values in results.items():
            hop = values[route_index]
            if hop != hop_of[vid]:
                self._leave(index[vid], hop_of[vid], hop, now)
                hop_of[vid] = hop
            if values[speed] < HALTING_MPS:
                if vid not in halted:
                    halted.add(vid)
                    v = index[vid]
                    sim.stops[v] += 1
                    sim.state[v] = QUEUED
            elif vid in halted:
                halted.discard(vid)
                sim.state[index[vid]] = DRIVING
        for name, v in self.tracked.items():
            values = results.get(name)
            if values is not None:
                link = trips.route_links[trips.route_start[v] + hop_of[name]]
                road, offset = values[self._tracking[2]], values[self._tracking[3]]
                full = float(self.net.link_length[link])
                sim.position[v] = full if road.startswith(":") else min(float(offset), full)
        for vid in teleports:
            self._teleporting.add(vid)
            self._incident(now, vid, "teleport", "jammed over the time to teleport")
        self._teleporting.difference_update(ended)
        for vid in collisions:
            self._incident(now, vid, "collision", "in a collision")
        for vid in arrived:
            v = index[vid]
            sim.in_network.discard(v)
            hop = hop_of.pop(vid)
            # SUMO lists a vehicle it took out for a jam (``remove_jammed``) as arrived, also on
            # its last link: it went standing still, which no vehicle reaching its end does
            jammed = self.remove_jammed and vid in halted
            halted.discard(vid)
            if jammed or not self._finished(v, hop, vid):
                sim.state[v] = REMOVED
                self._incident(now, vid, "removed", "left before the end of its route")
            else:
                sim.state[v] = ARRIVED
                sim.arrived[v] = now
        self._record_tracks()
        self._show_lights()

    def _finished(self, v: int, hop: int, vid: str) -> bool:
        """Whether vehicle ``v``, last seen on route entry ``hop``, reached its route's end:
        it was on its last link; or on the one before and the last is short enough to drive
        within the step; or a teleport (recorded) carried it there."""
        trips, last = self.trips, int(self.trips.route_len[v]) - 1
        if hop >= last or (vid in self._teleporting and not self.remove_jammed):
            return True
        link = trips.route_links[trips.route_start[v] + last]
        reach = self.net.link_speed[link] * trips.speed_factor[v] * self.sim.dt
        return hop == last - 1 and bool(self.net.link_length[link] <= reach)

    def _leave(self, v: int, hop: int, to: int, now: float) -> None:
        """Vehicle ``v`` went from route entry ``hop`` to ``to`` (one, or more in a jump)."""
        sim, first = self.sim, int(self.trips.route_start[v])
        for h in range(hop, to):
            link = self.trips.route_links[first + h]
            entered = sim.hop_enter[first + h]
            sim.link_departures[link] += 1
            sim.link_delay[link] += now - entered - sim.hop_free[first + h]
            sim.hop_enter[first + h + 1] = now
        sim.hop[v] = to

    def _incident(self, now: float, vid: str, kind: str, reason: str) -> None:
        v = self._index.get(vid)
        link = None
        if v is not None and self.sim.state[v] != PENDING:
            link = self.net.link_ids[
                self.trips.route_links[self.trips.route_start[v] + self.sim.hop[v]]
            ]
        self.incidents.append(VehicleIncident(now, vid, kind, link, reason))


def open_run(
    engine: Engine, scenario: Scenario
) -> contextlib.AbstractContextManager[SimulationRun]:
    """A run of ``scenario`` on ``engine`` for a ``with`` block (SUMO's is closed at its end;
    it runs on the scenario's own SUMO network if it came from one, seeded like its traffic)."""
    if engine is Engine.SUMO:
        return SumoRun(scenario.net, scenario.trips, sumo_net=scenario.sumo_net, seed=scenario.seed)
    return contextlib.nullcontext(Run(scenario.net, scenario.trips))


_loads: set[tuple[str, int, int, int]] = set()
"""Network files SUMO's binary loaded in this process (path, inode, size, modification time)."""


def _check_sumo_loads(net_file: Path, log_path: Path) -> None:
    """SUMO crashes on some networks it cannot run (one without connections: a segmentation
    fault, in libsumo the whole process with it), so a file we did not write is loaded first
    by SUMO's binary in a process of its own, once per file and process: such a network fails
    with our error, and what SUMO said."""
    try:
        stat = net_file.stat()
    except OSError as error:
        raise SumoError(f"SUMO cannot run network {net_file}: {error.strerror}") from None
    key = (str(net_file.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _loads:
        return
    binary = find_binary("sumo")
    if binary is None:  # libsumo without SUMO's binary: nothing to load it apart with
        log.warning("no sumo binary beside libsumo: %s is loaded unchecked", net_file.name)
        _loads.add(key)
        return
    said = _sumo_says([str(binary), "--net-file", str(net_file), "--no-step-log", "true"], log_path)
    if said is not None:
        raise SumoError(f"SUMO cannot run network {net_file.name}: {said}")
    _loads.add(key)


def _sumo_says(command: list[str], log: Path | None) -> str | None:
    """What SUMO's binary, run on ``command`` until time 0 in a process of its own, says is
    wrong (None where it loads): libsumo writes that to this process's standard error and
    raises an exception that says nothing ("Process Error"), or crashes with the process."""
    try:
        run_tool([*command, "--end", "0"], log=log, timeout_s=LOAD_CHECK_TIMEOUT_S)
    except SumoError as error:
        return str(error)
    return None
