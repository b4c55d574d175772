"""Controller drivers: the edge agent's one seam to its signal cabinet.

The agent codes against ``ControllerDriver`` (read the cabinet's configuration, displays and
detectors; send it a plan). ``FieldBusDriver`` speaks the simulator's field bus
(docs/fieldbus.md) through a ``FieldBusClient`` that many drivers share; ``FakeDriver`` is the
in-memory stand-in for tests. An NTCIP cabinet would be one more implementation. Like httpx's
transports: one small seam per external boundary, with a fake beside it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.codec import message_error
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.fieldbus import (
    MAX_LINE_BYTES,
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
    SignalReading,
)
from citybrain.models.messages import AckStatus, SignalPlan
from citybrain.models.retry import Backoff
from citybrain.signal_plans.config import CabinetConfig, IntersectionConfig, reading_from_state
from citybrain.signal_plans.state import NormalTimeline
from citybrain.signal_plans.timing import TimingPlan

log = logging.getLogger(__name__)

T = TypeVar("T")


class DriverError(CitybrainError):
    """The cabinet could not be read or commanded. ``recoverable``: the link failed (down, timed
    out) and the same call may work later, so the agent keeps its fail-safe and retries;
    otherwise retrying will not help (unknown intersection, a configuration that breaks the
    safety rules, a closed driver)."""

    def __init__(self, message: str, *, recoverable: bool, code: str | None = None) -> None:
        self.recoverable = recoverable
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the cabinet made of a plan: the status and reason the edge acks to the cloud."""

    status: AckStatus
    reason_code: str | None = None
    reason: str | None = None


class ControllerDriver(abc.ABC):
    """One signal cabinet as the edge agent sees it. Every call may raise ``DriverError``."""

    @property
    @abc.abstractmethod
    def intersection(self) -> str: ...

    @abc.abstractmethod
    async def config(self) -> IntersectionConfig:
        """The cabinet's signal groups, normal plan and approaches, decoded and validated."""

    @abc.abstractmethod
    async def signals(self) -> SignalReading: ...

    @abc.abstractmethod
    async def detectors(self) -> DetectorReading:
        """Counts and occupancy per approach since the previous read."""

    @abc.abstractmethod
    async def send_plan(self, plan: SignalPlan) -> CommandResult:
        """Hand a plan to the cabinet, which checks it again and answers with an ack status."""

    @abc.abstractmethod
    async def release(self) -> CommandResult:
        """Bring the cabinet back to its normal plan through a safe transition: the edge's own
        command when a lease runs out or the cloud is lost (no sequence number involved)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Retire the driver: later calls raise a non-recoverable ``DriverError``."""


class _Link:
    """One open connection and the requests waiting on it: a lost link fails exactly its own
    requests, never those of the connection that replaces it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: dict[int, asyncio.Future[msgspec.Raw]] = {}
        self.reader: asyncio.Task[None] | None = None

    def fail(self, code: str, message: str) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(FieldBusError(code, message))


class FieldBusClient:
    """The edge's side of the field bus: one connection that many drivers share.

    Requests are pipelined: each gets an id and a future, and one reader task resolves the
    futures by id, so a thousand drivers share a connection without waiting for each other's
    round trips. When the link drops, every pending request fails with a recoverable
    ``FieldBusError("disconnected")``, new requests fail fast with it, and (``reconnect``) the
    client reconnects by itself, with the shared backoff (``models.retry``: exponential, full
    jitter) so that many edges do not all come back at once. ``connect()`` may also be called
    at any time: it is a no-op on an open link and concurrent callers share one attempt.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        timeout_s: float = 5.0,
        reconnect: bool = True,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 5.0,
    ) -> None:
        check_number("timeout_s", timeout_s, gt=0.0, le=3600.0)
        check_number("backoff_min_s", backoff_min_s, gt=0.0, le=backoff_max_s)
        check_number("backoff_max_s", backoff_max_s, le=3600.0)
        self.host, self.port, self.timeout = host, port, timeout_s
        self.reconnect = reconnect
        self.backoff_min, self.backoff_max = backoff_min_s, backoff_max_s
        self.reconnects = 0
        self._link: _Link | None = None
        self._opened = False
        self._closed = False
        self._opening = asyncio.Lock()
        self._reconnecting: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._encode = msgspec.json.Encoder().encode
        self._decode_response = msgspec.json.Decoder(Response).decode
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}

    async def __aenter__(self) -> FieldBusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def connect(self) -> None:
        """Open the link (again, after ``close``); a recoverable ``FieldBusError`` when the
        cabinet cannot be reached."""
        self._closed = False
        await self._open()

    async def _open(self) -> None:
        async with self._opening:
            if self._link is not None:
                return
            try:
                async with asyncio.timeout(self.timeout):
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, limit=MAX_LINE_BYTES
                    )
            except (OSError, TimeoutError) as error:
                raise FieldBusError(
                    "disconnected", f"cannot reach {self.host}:{self.port}: {error!r}"
                ) from None
            if self._closed:  # closed while connecting
                writer.close()
                raise FieldBusError("closed", "the client was closed")
            link = self._link = _Link(writer)
            link.reader = asyncio.create_task(self._read(link, reader))
            self._opened = True

    async def close(self) -> None:
        """Close the link and stop reconnecting; pending requests fail with ``closed``."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        if self._reconnecting is not None:
            tasks.append(self._reconnecting)
            self._reconnecting = None
        link, self._link = self._link, None
        if link is not None:
            link.fail("closed", "the client was closed")
            link.writer.close()
            if link.reader is not None:
                tasks.append(link.reader)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if link is not None:
            with contextlib.suppress(ConnectionError):
                await link.writer.wait_closed()

    async def _read(self, link: _Link, reader: asyncio.StreamReader) -> None:
        reason = "the cabinet closed the connection"
        try:
            while True:
                response = self._decode_response(await reader.readuntil(b"\n"))
                future = link.pending.pop(response.id, None)
                if future is None or future.done():
                    # -1 answers a request the cabinet could not read; others were given up on
                    if response.id == -1:
                        log.warning("field bus %s: unmatched error %s", self.port, response.error)
                    continue
                if response.ok:
                    future.set_result(response.result)
                else:
                    failure = response.error or Failure("protocol", "an error without a reason")
                    future.set_exception(FieldBusError(failure.code, failure.message))
        except asyncio.IncompleteReadError:
            pass
        except (asyncio.LimitOverrunError, msgspec.DecodeError) as error:
            reason = f"unreadable answer: {error}"  # the stream cannot be trusted any more
        except OSError as error:
            reason = repr(error)
        finally:
            self._lost(link, reason)

    def _lost(self, link: _Link, reason: str) -> None:
        if self._link is link:
            self._link = None
            log.warning("field bus %s:%s lost: %s", self.host, self.port, reason)
        link.writer.close()
        link.fail("disconnected", reason)
        if self.reconnect and not self._closed and self._reconnecting is None:
            self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = Backoff(first_s=self.backoff_min, max_s=self.backoff_max)
        try:
            while not self._closed:
                await backoff.sleep()
                try:
                    await self._open()
                except FieldBusError as error:
                    log.debug("field bus: reconnect failed: %s", error)
                else:
                    self.reconnects += 1
                    return
        finally:
            if self._reconnecting is asyncio.current_task():
                self._reconnecting = None

    def _unavailable(self) -> FieldBusError:
        if self._closed:
            return FieldBusError("closed", "the client was closed")
        if self._opened:
            return FieldBusError("disconnected", f"{self.host}:{self.port} is not connected")
        return FieldBusError("not_connected", "connect first")

    async def request(self, op: Op, kind: type[T], **fields: Any) -> T:
        """Send one request and decode its result as ``kind``; ``FieldBusError`` otherwise."""
        link = self._link
        if link is None:
            raise self._unavailable()
        request_id = next(self._ids)
        line = self._encode(Request(id=request_id, op=op, **fields)) + b"\n"
        if len(line) > MAX_LINE_BYTES:
            raise FieldBusError("too_large", f"{op} request of {len(line)} bytes")
        future: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        try:
            async with asyncio.timeout(self.timeout):
                link.writer.write(line)
                await link.writer.drain()
                raw = await future
        except TimeoutError:
            raise FieldBusError("timeout", f"no answer to {op} in {self.timeout} s") from None
        except ConnectionError as error:
            raise FieldBusError("disconnected", repr(error)) from None
        finally:
            link.pending.pop(request_id, None)
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.json.Decoder(kind)
        try:
            result: T = decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            reason = message_error(error) if isinstance(error, msgspec.ValidationError) else error
            raise FieldBusError("protocol", f"{op} answer: {reason}") from None
        return result

    async def hello(self) -> Hello:
        return await self.request(Op.HELLO, Hello)

    async def signals(self, intersection: str) -> SignalReading:
        return await self.request(Op.SIGNALS, SignalReading, intersection=intersection)

    async def detectors(self, intersection: str) -> DetectorReading:
        return await self.request(Op.DETECTORS, DetectorReading, intersection=intersection)

    async def config(self, intersection: str) -> IntersectionConfig:
        """The cabinet's configuration; ``bad_config`` when it breaks the safety rules."""
        wire = await self.request(Op.CONFIG, CabinetConfig, intersection=intersection)
        try:
            config = IntersectionConfig.from_wire(wire)
        except ValidationError as error:
            raise FieldBusError("bad_config", f"{intersection}: {error}") from None
        if config.intersection != intersection:
            raise FieldBusError("protocol", f"asked {intersection}, {config.intersection} answered")
        return config

    async def send_plan(self, intersection: str, plan: SignalPlan) -> PlanOutcome:
        return await self.request(Op.PLAN, PlanOutcome, intersection=intersection, plan=plan)

    async def release(self, intersection: str) -> PlanOutcome:
        return await self.request(Op.RELEASE, PlanOutcome, intersection=intersection)

    async def ground_truth(self, intersection: str) -> GroundTruth:
        return await self.request(Op.GROUND_TRUTH, GroundTruth, intersection=intersection)

    async def advance(self, seconds: float) -> float:
        return (await self.request(Op.ADVANCE, Clock, seconds=seconds)).time


class FieldBusDriver(ControllerDriver):
    """A cabinet on the field bus. Drivers share a client (and its one connection): whoever
    made the client connects and closes it; a driver's ``close`` retires only the driver."""

    def __init__(self, client: FieldBusClient, intersection: str) -> None:
        self._client = client
        self._intersection = check_id("intersection", intersection)
        self._closed = False

    @property
    def intersection(self) -> str:
        return self._intersection

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        if self._closed:
            raise DriverError(f"{self._intersection}: closed", recoverable=False, code="closed")
        try:
            yield
        except FieldBusError as error:
            raise DriverError(
                f"{self._intersection}: {error}", recoverable=error.recoverable, code=error.code
            ) from error

    async def config(self) -> IntersectionConfig:
        with self._errors():
            return await self._client.config(self._intersection)

    async def signals(self) -> SignalReading:
        with self._errors():
            return await self._client.signals(self._intersection)

    async def detectors(self) -> DetectorReading:
        with self._errors():
            return await self._client.detectors(self._intersection)

    async def send_plan(self, plan: SignalPlan) -> CommandResult:
        with self._errors():
            outcome = await self._client.send_plan(self._intersection, plan)
        return CommandResult(outcome.status, outcome.reason_code, outcome.reason)

    async def release(self) -> CommandResult:
        with self._errors():
            outcome = await self._client.release(self._intersection)
        return CommandResult(outcome.status, outcome.reason_code, outcome.reason)

    async def close(self) -> None:
        self._closed = True


class FakeDriver(ControllerDriver):
    """An in-memory cabinet for testing what sits above the seam.

    It reports what the test sets: the normal plan's displays at ``now_s`` (``show`` pins a
    reading instead), the detector readings queued with ``queue_detectors`` (zero counts since
    the last read when none is queued), and the failures scripted with ``fail_next``; with a
    ``clock`` its time follows it instead of ``now_s``. It records
    every plan that reaches it in ``sent`` and answers ``result`` (default accepted). It neither
    checks nor runs plans: the displays do not follow them, and a test cannot mistake the fake
    for the cabinet's safety checks.
    """

    def __init__(
        self,
        intersection: str,
        plan: TimingPlan,
        approaches: list[ApproachConfig],
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self._config = IntersectionConfig(plan, tuple(approaches))
        if self._config.intersection != intersection:
            raise ValidationError(
                "intersection",
                f"the plan is for {self._config.intersection!r}, not {intersection!r}",
            )
        self.now_s = 0.0
        self._normal = NormalTimeline(plan)
        self.sent: list[SignalPlan] = []
        self.released = 0
        self.result = CommandResult(AckStatus.ACCEPTED)
        self.closed = False
        self._shown: SignalReading | None = None
        self._readings: deque[DetectorReading] = deque()
        self._failures: deque[DriverError] = deque()
        self._last_read_s = clock() if clock is not None else 0.0

    @property
    def intersection(self) -> str:
        return self._config.intersection

    def show(self, reading: SignalReading | None) -> None:
        """Report ``reading`` from now on; ``None`` goes back to the normal plan at ``now_s``."""
        self._shown = reading

    def queue_detectors(self, *readings: DetectorReading) -> None:
        self._readings.extend(readings)

    def fail_next(self, count: int = 1, error: DriverError | None = None) -> None:
        """The next ``count`` calls raise ``error`` (default: a recoverable link failure)."""
        check_count("count", count, ge=1)
        for _ in range(count):
            self._failures.append(
                error
                or DriverError(
                    f"{self.intersection}: link down (scripted)",
                    recoverable=True,
                    code="disconnected",
                )
            )

    async def _enter(self) -> None:
        await asyncio.sleep(0)  # a real driver suspends here; code above must cope with that
        if self._clock is not None:
            self.now_s = self._clock()
        if self.closed:
            raise DriverError(f"{self.intersection}: closed", recoverable=False, code="closed")
        if self._failures:
            raise self._failures.popleft()

    async def config(self) -> IntersectionConfig:
        await self._enter()
        return self._config

    async def signals(self) -> SignalReading:
        await self._enter()
        if self._shown is not None:
            return self._shown
        return reading_from_state(self._normal.state_at(self.now_s))

    async def detectors(self) -> DetectorReading:
        await self._enter()
        if self._readings:
            return self._readings.popleft()
        interval = max(0.0, self.now_s - self._last_read_s)
        self._last_read_s = self.now_s
        return DetectorReading(
            time=self.now_s,
            approaches=[
                ApproachCounts(
                    approach=a.approach,
                    interval_s=interval,
                    stop_bar_count=0,
                    stop_bar_occupancy=0.0,
                    advance_count=0,
                    advance_occupancy=0.0,
                )
                for a in self._config.approaches
            ],
        )

    async def send_plan(self, plan: SignalPlan) -> CommandResult:
        await self._enter()
        self.sent.append(plan)
        return self.result

    async def release(self) -> CommandResult:
        await self._enter()
        self.released += 1
        return CommandResult(AckStatus.RELEASED)

    async def close(self) -> None:
        self.closed = True
