"""The simulator's field bus: how an edge agent talks to its (emulated) signal cabinet.

One TCP port serves the whole simulated city. Each line the client sends is one JSON request
naming an intersection; each line the server sends back is the response with the same ``id``.
Requests of one connection are answered in order. See ``docs/fieldbus.md``.

Three layers, each small: the protocol Structs; ``FieldBusCore`` that answers a request from a
``Run`` and ``now`` with no I/O; and the asyncio ``FieldBusServer`` / ``FieldBusClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import time
from typing import Any

import msgspec

from citybrain.models.codec import message_error
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.messages import AckStatus, SignalPlan
from citybrain.models.signal import Indication
from citybrain.simulator.runner import Run

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 256 * 1024


class Op(enum.StrEnum):
    HELLO = "hello"
    SIGNALS = "signals"
    DETECTORS = "detectors"
    PLAN = "plan"
    GROUND_TRUTH = "ground_truth"
    ADVANCE = "advance"


class Request(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    op: Op
    intersection: str | None = None
    plan: SignalPlan | None = None
    seconds: float | None = None


class Failure(msgspec.Struct, frozen=True):
    code: str
    message: str


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: int
    ok: bool
    result: dict[str, Any] | None = None
    error: Failure | None = None


class FieldBusError(CitybrainError):
    """The cabinet refused a request: ``code`` says why (recoverable)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class FieldBusCore:
    """Answers requests against a run; advancing time is the clock's business, not this one's.

    ``advance`` requests are honoured only when the clock is not paced (as-fast-as-possible
    runs, where the experiment drives the clock).
    """

    def __init__(self, run: Run, *, paced: bool) -> None:
        self.run = run
        self.paced = paced
        self.rejected = 0
        self.failed = 0

    def handle(self, line: bytes) -> Response:
        try:
            request = msgspec.json.decode(line, type=Request)
        except msgspec.ValidationError as error:
            self.rejected += 1
            failure = message_error(error)
            return Response(
                id=_guess_id(line), ok=False, error=Failure("bad_request", str(failure))
            )
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
            self.rejected += 1
            return Response(
                id=_guess_id(line), ok=False, error=Failure("bad_request", f"not JSON: {error}")
            )
        try:
            return Response(id=request.id, ok=True, result=self._answer(request))
        except FieldBusError as error:
            self.rejected += 1
            return Response(id=request.id, ok=False, error=Failure(error.code, str(error)))
        except ValidationError as error:
            self.rejected += 1
            return Response(id=request.id, ok=False, error=Failure("invalid", str(error)))
        except Exception:  # a bug here must not take the cabinet (or the connection) down
            self.failed += 1
            log.exception("field bus: request %s failed", request.id)
            return Response(
                id=request.id, ok=False, error=Failure("internal", "the cabinet failed to answer")
            )

    def _answer(self, request: Request) -> dict[str, Any]:
        run = self.run
        if request.op is Op.HELLO:
            return {
                "protocol": PROTOCOL_VERSION,
                "time": run.now,
                "paced": self.paced,
                "intersections": len(run.controllers),
            }
        if request.op is Op.ADVANCE:
            if self.paced:
                raise FieldBusError("paced_clock", "the clock runs by itself in paced mode")
            seconds = request.seconds
            if seconds is None or not 0.0 < seconds <= 3600.0:
                raise FieldBusError("invalid", "advance needs 0 < seconds <= 3600")
            run.advance(seconds)
            return {"time": run.now}
        node = request.intersection
        if node is None or node not in run.controllers:
            raise FieldBusError("unknown_intersection", f"no cabinet at {node!r}")
        controller = run.controllers[node]
        if request.op is Op.SIGNALS:
            shown = controller.state_at(run.now)
            return {
                "time": run.now,
                "groups": {g: s.indication.value for g, s in sorted(shown.groups.items())},
                "since": {g: s.since_s for g, s in sorted(shown.groups.items())},
                "plan_id": controller.running.plan_id if controller.running else None,
                "mode": "priority" if controller.running else "normal",
            }
        if request.op is Op.DETECTORS:
            readings = run.detectors.read(node)
            return {
                "time": run.now,
                "approaches": [dataclasses.asdict(r) for r in readings.values()],
            }
        if request.op is Op.GROUND_TRUTH:
            return {"time": run.now, "queues": run.detectors.true_queues(node)}
        plan = request.plan
        if plan is None:
            raise FieldBusError("invalid", "a plan request carries a plan")
        outcome = run.command(node, plan)
        verdict = outcome.verdict
        return {
            "time": run.now,
            "status": outcome.status.value,
            "reason_code": None if verdict.code is None else verdict.code.value,
            "reason": verdict.reason or None,
        }


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
        self, run: Run, *, host: str = "127.0.0.1", port: int = 0, speed: float | None = None
    ) -> None:
        if speed is not None and not 0.0 < speed <= 10_000.0:
            raise ValidationError("speed", "paced speed must be in (0, 10000]")
        self.core = FieldBusCore(run, paced=speed is not None)
        self.host, self.port, self.speed = host, port, speed
        self._server: asyncio.Server | None = None
        self._clock: asyncio.Task[None] | None = None
        self.connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_LINE_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.speed is not None:
            self._clock = asyncio.create_task(self._tick(self.speed))
        log.info(
            "field bus on %s:%d (%s)", self.host, self.port, "paced" if self.speed else "stepped"
        )
        return self.port

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _tick(self, speed: float) -> None:
        run = self.core.run
        step = run.sim.dt
        origin_wall, origin_sim = time.monotonic(), run.now
        while True:
            due = origin_wall + (run.now + step - origin_sim) / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            run.advance(step)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    self.core.rejected += 1
                    response = Response(
                        id=-1,
                        ok=False,
                        error=Failure("too_large", f"request over {MAX_LINE_BYTES} bytes"),
                    )
                    writer.write(msgspec.json.encode(response) + b"\n")
                    await writer.drain()
                    log.warning("field bus: oversize request from %s, closing", peer)
                    return
                except asyncio.IncompleteReadError:
                    return
                if line.strip():
                    writer.write(msgspec.json.encode(self.core.handle(line)) + b"\n")
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class FieldBusClient:
    """An edge agent's side of the field bus: one connection, requests answered in order."""

    def __init__(self, *, host: str, port: int, timeout_s: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> FieldBusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=MAX_LINE_BYTES), self.timeout
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = self._reader = None

    async def request(self, op: Op, **fields: Any) -> dict[str, Any]:
        if self._reader is None or self._writer is None:
            raise FieldBusError("not_connected", "connect first")
        request = Request(id=next(self._ids), op=op, **fields)
        async with self._lock:
            self._writer.write(msgspec.json.encode(request) + b"\n")
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readuntil(b"\n"), self.timeout)
        response = msgspec.json.decode(line, type=Response)
        if response.id != request.id:
            raise FieldBusError("protocol", f"answer {response.id} to request {request.id}")
        if not response.ok or response.result is None:
            failure = response.error or Failure("unknown", "no result")
            raise FieldBusError(failure.code, failure.message)
        return response.result

    async def hello(self) -> dict[str, Any]:
        return await self.request(Op.HELLO)

    async def signals(self, intersection: str) -> dict[str, Indication]:
        result = await self.request(Op.SIGNALS, intersection=intersection)
        return {g: Indication(v) for g, v in result["groups"].items()}

    async def detectors(self, intersection: str) -> list[dict[str, Any]]:
        result = await self.request(Op.DETECTORS, intersection=intersection)
        approaches: list[dict[str, Any]] = result["approaches"]
        return approaches

    async def send_plan(
        self, intersection: str, plan: SignalPlan
    ) -> tuple[AckStatus, str | None, str | None]:
        result = await self.request(Op.PLAN, intersection=intersection, plan=plan)
        return AckStatus(result["status"]), result["reason_code"], result["reason"]

    async def ground_truth(self, intersection: str) -> dict[str, int]:
        result = await self.request(Op.GROUND_TRUTH, intersection=intersection)
        queues: dict[str, int] = result["queues"]
        return queues

    async def advance(self, seconds: float) -> float:
        return float((await self.request(Op.ADVANCE, seconds=seconds))["time"])
