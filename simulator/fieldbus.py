"""The simulator's field bus: how an edge agent talks to its (emulated) signal cabinet.

One TCP port serves the whole simulated city. Each line the client sends is one JSON request
naming an intersection; each line the server sends back is the response with the same ``id``.
See ``docs/fieldbus.md``. The protocol Structs live in ``models.fieldbus`` (the edge's client in
``edge.drivers`` speaks them too); here are ``FieldBusCore``, which answers a request from a
``Run`` and ``now`` with no I/O, and the asyncio ``FieldBusServer`` that frames and clocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass

import msgspec

from citybrain.models.checks import check_count, check_number
from citybrain.models.codec import message_error
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.fieldbus import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    ApproachConfig,
    ApproachCounts,
    Clock,
    DetectorReading,
    Failure,
    FieldBusError,
    GroundTruth,
    Hello,
    Op,
    PlanOutcome,
    Request,
    Response,
)
from citybrain.models.network import DetectorKind, Network
from citybrain.models.settings import is_loopback
from citybrain.signal_plans.config import IntersectionConfig, reading_from_state
from citybrain.simulator.runner import SimulationRun

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
"""Connections served at once; one more is answered ``too_many_connections`` and closed, so
that a client opening sockets in a loop cannot take the server's file descriptors (an edge
process shares one connection among all its agents)."""
IDLE_TIMEOUT_S = 300.0
"""A connection that sends no whole request, or reads no answer, for this long is closed: a
half-sent line would otherwise hold its buffer for ever (edges poll every second)."""

FD_HEADROOM = 64
"""File descriptors the process needs besides the connections (the run, SUMO, logs): below
twice ``max_connections`` (as many again being refused in a burst) plus this, accepting
fails with EMFILE before the cap can refuse."""
HANG_UP_S = 1.0
"""How long a closing link may take to hand over what is left to send before it is cut."""

TOO_MANY_CONNECTIONS = "too_many_connections"
IDLE = "idle"
NOT_READING = "not_reading"
SIMULATION_FAILED = "simulation_failed"
"""The error code once the simulation behind the cabinets has failed (SUMO's error): not a
request's fault, and asking again does not help."""

_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(Request).decode


class FieldBusCore:
    """Answers requests against a run; advancing time is the clock's business, not this one's.

    ``advance`` requests are honoured only when the clock is not paced (as-fast-as-possible
    runs, where the experiment drives the clock).
    """

    def __init__(self, run: SimulationRun, *, paced: bool) -> None:
        self.run = run
        self.paced = paced
        self.rejected: Counter[str] = Counter()
        """Requests refused, by error code (``internal`` and ``simulation_failed`` too)."""
        self.halted: str | None = None
        """Why the simulation can go no further, once it has failed: said to every request
        that needs it, never retried."""
        self._configs: dict[str, msgspec.Raw] = {}
        self._approaches: _ApproachIndex | None = None

    def handle(self, line: bytes) -> Response | AdvanceBy:
        """The response to one request line, or for an ``advance`` what the server steps
        (``advanced`` then gives its response)."""
        try:
            request = _decode_request(line)
        except msgspec.ValidationError as error:
            failure = message_error(error)
            return self.refuse(_guess_id(line), "bad_request", str(failure))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
            return self.refuse(_guess_id(line), "bad_request", f"not JSON: {error}")
        try:
            if request.op is Op.ADVANCE:
                return self._advance_by(request)
            return Response(id=request.id, ok=True, result=self._answer(request))
        except Exception as error:  # a bug here must not take the cabinet down
            return self._failure(request.id, error)

    def advanced(self, advance: AdvanceBy, error: Exception | None) -> Response:
        """The response to an ``advance`` the server stepped, ``error`` if a step failed (or
        the simulation failed meanwhile, reading it for another request)."""
        if error is not None:
            return self._failure(advance.request_id, error)
        if self.halted is not None:
            return self.refuse(advance.request_id, SIMULATION_FAILED, self.halted)
        return Response(
            id=advance.request_id, ok=True, result=msgspec.Raw(_encode(Clock(time=self.run.now)))
        )

    def refuse(self, request_id: int, code: str, message: str) -> Response:
        """An error response, counted (``count_refusal``)."""
        self.count_refusal(code, message)
        return Response(id=request_id, ok=False, error=Failure(code, message))

    def count_refusal(self, code: str, message: str) -> None:
        """Count what was refused by its code; the first of each code and every hundredth
        after it are logged (a client repeating a mistake does not flood the log)."""
        self.rejected[code] += 1
        count = self.rejected[code]
        if count == 1 or count % 100 == 0:
            log.warning("field bus: refused (%s, %d so far): %s", code, count, message)

    def _failure(self, request_id: int, error: Exception) -> Response:
        if isinstance(error, FieldBusError):
            return self.refuse(request_id, error.code, error.message)
        if isinstance(error, ValidationError):
            return self.refuse(request_id, "invalid", str(error))
        if isinstance(error, CitybrainError):  # the simulation itself failed (SUMO's error)
            return self.refuse(request_id, SIMULATION_FAILED, self.halt(error))
        log.error("field bus: request %s failed", request_id, exc_info=error)
        return self.refuse(request_id, "internal", "the cabinet failed to answer")

    def halt(self, error: Exception) -> str:
        """The simulation failed (said once): it goes no further."""
        if self.halted is None:
            self.halted = str(error) or type(error).__name__
            log.error("field bus: the simulation failed and stops here: %s", self.halted)
        return self.halted

    def _advance_by(self, request: Request) -> AdvanceBy:
        if self.paced:
            raise FieldBusError("paced_clock", "the clock runs by itself in paced mode")
        seconds = request.seconds
        if seconds is None or not 0.0 < seconds <= 3600.0:
            raise FieldBusError("invalid", "advance needs 0 < seconds <= 3600")
        if self.halted is not None:
            raise FieldBusError(SIMULATION_FAILED, self.halted)
        return AdvanceBy(request.id, seconds)

    def _answer(self, request: Request) -> msgspec.Raw:
        run = self.run
        if request.op is Op.HELLO:
            hello = Hello(
                protocol=PROTOCOL_VERSION,
                time=run.now,
                paced=self.paced,
                intersections=len(run.controllers),
                names=sorted(run.controllers),
            )
            return msgspec.Raw(_encode(hello))
        node = request.intersection
        if node is None or node not in run.controllers:
            raise FieldBusError("unknown_intersection", f"no cabinet at {node!r}")
        if request.op is Op.CONFIG:
            if node not in self._configs:  # a cabinet's configuration does not change
                self._configs[node] = msgspec.Raw(_encode(self._config(node).to_wire()))
            return self._configs[node]
        return msgspec.Raw(_encode(self._read_or_command(request, node)))

    def _read_or_command(self, request: Request, node: str) -> msgspec.Struct:
        run = self.run
        controller = run.controllers[node]
        if request.op is Op.SIGNALS:
            running = controller.running
            return reading_from_state(
                controller.state_at(run.now),
                plan_id=None if running is None else running.plan_id,
                mode="normal" if running is None else "priority",
            )
        if request.op is Op.DETECTORS:
            readings = run.detectors.read(node)
            return DetectorReading(
                time=run.now,
                approaches=[
                    ApproachCounts(
                        approach=r.approach,
                        interval_s=r.interval_s,
                        stop_bar_count=r.stop_bar_count,
                        stop_bar_occupancy=r.stop_bar_occupancy,
                        advance_count=r.advance_count,
                        advance_occupancy=r.advance_occupancy,
                    )
                    for r in readings.values()
                ],
            )
        if request.op is Op.GROUND_TRUTH:
            return GroundTruth(time=run.now, queues=run.detectors.true_queues(node))
        if request.op is Op.RELEASE:
            outcome = run.release(node)
        else:
            plan = request.plan
            if plan is None:
                raise FieldBusError("invalid", "a plan request carries a plan")
            outcome = run.command(node, plan)
        verdict = outcome.verdict
        return PlanOutcome(
            time=run.now,
            status=outcome.status,
            reason_code=None if verdict.code is None else verdict.code.value,
            reason=verdict.reason or None,
        )

    def _config(self, node: str) -> IntersectionConfig:
        if self._approaches is None:
            self._approaches = _ApproachIndex(self.run.net.road.network)
        return IntersectionConfig(self.run.controllers[node].plan, self._approaches.at(node))


class _ApproachIndex:
    """Which groups serve each link and where its advance loop sits, indexed once so that
    every cabinet of a large city reading its configuration costs one pass over the network."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.groups: dict[str, set[str]] = {}
        for movement in network.movements:
            self.groups.setdefault(movement.from_link, set()).add(movement.signal_group)
        self.setback: dict[str, float] = {}
        for detector in network.detectors:  # the last one listed, as the engine places it
            if detector.kind is DetectorKind.ADVANCE:
                self.setback[detector.link_id] = detector.distance_from_stop_line_m
        self.approaches: dict[str, list[tuple[str, str]]] = {}
        for approach in network.approaches:
            self.approaches.setdefault(approach.intersection_id, []).append(
                (approach.id, approach.link_id)
            )

    def at(self, node: str) -> tuple[ApproachConfig, ...]:
        """The approaches of ``node`` that a signal serves (a link whose only turn was left
        out, a dead-end U-turn, has nothing to estimate). A link without an advance loop
        counts arrivals at its upstream end, as the engine does."""
        out = []
        for approach, link_id in self.approaches.get(node, []):
            groups = self.groups.get(link_id)
            if not groups:
                continue
            link = self.network.link(link_id)
            out.append(
                ApproachConfig(
                    approach=approach,
                    link=link_id,
                    lanes=len(link.lanes),
                    length_m=link.length_m,
                    speed_limit_mps=link.speed_limit_mps,
                    saturation_flow_vphpl=link.saturation_flow_vphpl,
                    advance_setback_m=self.setback.get(link_id, link.length_m),
                    groups=sorted(groups),
                )
            )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class AdvanceBy:
    """An ``advance`` to carry out: step the run by ``seconds``, a step at a time, other
    clients served between the steps (a SUMO step of a city takes milliseconds, an hour of
    them a minute)."""

    request_id: int
    seconds: float


def _guess_id(line: bytes) -> int:
    """The request id, when a malformed request still carries a readable one (else -1)."""
    try:
        value = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return -1
    if (
        isinstance(value, dict)
        and isinstance(value.get("id"), int)
        and not isinstance(value.get("id"), bool)
    ):
        return int(value["id"])
    return -1


class FieldBusServer:
    """Serves a run on ``host:port`` and keeps its clock: paced (``speed`` x real time) or, with
    ``speed=None``, as fast as possible, advanced only by clients' ``advance`` requests."""

    def __init__(
        self,
        run: SimulationRun,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        allow_remote: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        if speed is not None and not 0.0 < speed <= 10_000.0:
            raise ValidationError("speed", "paced speed must be in (0, 10000]")
        if not allow_remote and not is_loopback(host):
            raise ValidationError(
                "host",
                f"{host!r} is not this machine's loopback: the field bus has no authentication "
                "(a cabinet's local wire), so anyone reaching it could command the cabinets; "
                "allow_remote (sim serve --allow-remote) serves it beyond this machine",
            )
        check_count("max_connections", max_connections, ge=1, le=100_000)
        check_number("idle_timeout_s", idle_timeout_s, gt=0.0, le=86_400.0)
        self.core = FieldBusCore(run, paced=speed is not None)
        self.host, self.port, self.speed = host, port, speed
        self.max_connections, self.idle_timeout_s = max_connections, idle_timeout_s
        self._server: asyncio.Server | None = None
        self._clock: asyncio.Task[None] | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """Every connection's task, those being refused too (``stop`` ends them all)."""
        self._admitted = 0
        """Connections served, against ``max_connections``: each until its socket closed."""
        self._stopping = False
        """Set by ``stop``: a connection accepted after it hangs up at once."""
        self._advancing = asyncio.Lock()
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_LINE_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        allowed, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = 2 * self.max_connections + FD_HEADROOM  # as many again being refused
        if allowed != resource.RLIM_INFINITY and allowed < needed:
            log.warning(
                "field bus: this process may open %d files, too few for %d connections (and "
                "the run's own): raise ulimit -n or lower max_connections",
                allowed,
                self.max_connections,
            )
        if self.speed is not None:
            self._clock = asyncio.create_task(self._tick(self.speed))
        log.info(
            "field bus on %s:%d (%s)", self.host, self.port, "paced" if self.speed else "stepped"
        )
        return self.port

    async def stop(self) -> None:
        """Stop the clock, stop listening and hang up on every client at once, an advance
        in progress too: a stopped cabinet answers nobody (``Server.close`` alone leaves
        accepted connections served, and a client that reads nothing would hold a polite
        close for ever). A connection accepted meanwhile hangs up on itself (``_stopping``)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        for session, writer in self._sessions.items():
            writer.transport.abort()
            session.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _tick(self, speed: float) -> None:
        """The paced clock; a simulation that fails stops it, said once and to every
        request that needs the simulation after (``FieldBusCore.halted``)."""
        run = self.core.run
        step = run.sim.dt
        origin_wall, origin_sim = time.monotonic(), run.now
        while self.core.halted is None:
            due = origin_wall + (run.now + step - origin_sim) / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                run.advance(step)
            except Exception as error:  # said; the cabinets stay up, the clock stops
                self.core.halt(error)

    async def _advance(self, advance: AdvanceBy) -> Response:
        """Step the run by ``advance.seconds``, yielding between steps so that every other
        client is answered meanwhile; one advance at a time, each from where the last
        ended, as when they ran whole."""
        run = self.core.run
        async with self._advancing:
            until = run.now + advance.seconds
            try:
                while run.now < until - 1e-9 and self.core.halted is None:
                    run.advance(min(run.sim.dt, until - run.now))
                    await asyncio.sleep(0)
            except Exception as error:  # answered; the cabinets stay up
                return self.core.advanced(advance, error)
        return self.core.advanced(advance, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        session = asyncio.current_task()
        if self._stopping:  # accepted as the server stopped
            writer.transport.abort()
            return
        if session is not None:
            self._sessions[session] = writer
        full = self._admitted >= self.max_connections
        self._admitted += not full
        try:
            if full:
                message = f"{self.max_connections} connections open already: {peer} closed"
                await self._send(writer, self.core.refuse(-1, TOO_MANY_CONNECTIONS, message))
                return
            while (line := await self._request(reader, writer, peer)) is not None:
                if line.strip():
                    answer = self.core.handle(line)
                    if isinstance(answer, AdvanceBy):
                        answer = await self._advance(answer)
                    await self._send(writer, answer)
                await asyncio.sleep(0)  # a client with many lines buffered takes turns
        except TimeoutError:
            message = f"{peer} read no answer in {self.idle_timeout_s:g} s: link closed"
            self.core.count_refusal(NOT_READING, message)
            writer.transport.abort()  # closing would wait for it to read what is buffered
        except (OSError, asyncio.CancelledError):
            return  # the link failed (any socket error), or the server stopped
        finally:
            try:
                await _hang_up(writer)
            finally:  # its place is free once its socket is
                self._admitted -= not full
                if session is not None:
                    self._sessions.pop(session, None)

    async def _request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> bytes | None:
        """The next request line; None where the link is to close (the client hung up, sent
        a line over the limit or nothing whole for ``idle_timeout_s``: the last two said)."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):  # blank lines do not count
                while not (line := await reader.readuntil(b"\n")).strip():
                    await asyncio.sleep(0)  # others' turn
                return line
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            message = f"request over {MAX_LINE_BYTES} bytes from {peer}: link closed"
            await self._send(writer, self.core.refuse(-1, "too_large", message))
        except TimeoutError:
            message = f"no whole request from {peer} in {self.idle_timeout_s:g} s: link closed"
            await self._send(writer, self.core.refuse(-1, IDLE, message))
        return None

    async def _send(self, writer: asyncio.StreamWriter, response: Response) -> None:
        """One response line; a client that reads none for ``idle_timeout_s`` (its socket's
        buffers full) raises ``TimeoutError``, and is hung up on."""
        writer.write(_encode(response) + b"\n")
        async with asyncio.timeout(self.idle_timeout_s):
            await writer.drain()


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Close the link, giving what is left to send ``HANG_UP_S``; then cut it (a client that
    reads nothing would keep a polite close, its socket and its buffers, for ever)."""
    writer.close()
    try:
        async with asyncio.timeout(HANG_UP_S):
            await writer.wait_closed()
    except (TimeoutError, OSError, asyncio.CancelledError):
        # cancelled by ``stop``: a connection's task ends quietly all the same (asyncio
        # logs one that ends cancelled as an unhandled error)
        writer.transport.abort()
