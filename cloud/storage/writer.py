"""Between the service and a store, so that neither the service loop nor a database outage
holds the other up: ``TelemetryWriter`` batches telemetry (and audit records), writes it with
COPY, and while the database is away keeps a bounded backlog in memory and flushes it in order
when the database is back, so a restart of the database loses nothing within the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from citybrain.cloud.storage.errors import StorageError, StorageUnavailable
from citybrain.cloud.storage.records import AuditRecord, Received, check_records, check_storable
from citybrain.cloud.storage.store import TelemetryStore
from citybrain.models.checks import check_count, check_number
from citybrain.models.messages import Telemetry
from citybrain.models.retry import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_size: int = 2000
    """Messages per COPY transaction."""
    max_delay_s: float = 0.1
    """A partial batch is written once its oldest message has waited this long."""
    max_pending: int = 500_000
    """Messages and records held at most (waiting and being written); beyond it the oldest
    waiting ones are dropped and counted. At 1,000 intersections x 1 Hz, over 8 minutes."""
    retry_min_s: float = 0.05
    retry_max_s: float = 2.0

    def __post_init__(self) -> None:
        check_count("batch_size", self.batch_size, ge=1, le=1_000_000)
        check_number("max_delay_s", self.max_delay_s, gt=0.0, le=60.0)
        check_count("max_pending", self.max_pending, ge=self.batch_size)
        check_number("retry_min_s", self.retry_min_s, gt=0.0, le=60.0)
        check_number("retry_max_s", self.retry_max_s, ge=self.retry_min_s, le=600.0)


Pending = Received | AuditRecord


class TelemetryWriter:
    """Batches telemetry (and audit records) into a store, in order, through outages.

    ``put_nowait`` never waits: past ``max_pending`` the oldest waiting item is dropped and
    counted, so a service loop that must keep serving corridors is never held up by the
    database. ``put`` waits for room instead (backpressure), for a producer that can slow down.
    A recoverable failure (``StorageUnavailable``) is retried with jittered exponential backoff
    while new items queue behind the batch; anything else stops the writer, and the next
    ``put``, ``flush`` or ``close`` raises ``StorageError``.
    """

    def __init__(
        self,
        store: TelemetryStore,
        settings: WriterSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or WriterSettings()
        self._store = store
        self._clock = clock
        self._queue: deque[Pending] = deque()
        self._since = 0.0
        """When the oldest waiting item arrived, or the last batch left (monotonic s)."""
        self._in_flight = 0
        self._shedding = 0
        """Items dropped since the last commit (one warning per episode, not per item)."""
        self._accepted = 0
        self._settled = 0
        """Items accepted so far, and of them those committed or dropped."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        """Telemetry messages committed (duplicates included)."""
        self.duplicates = 0
        """Of those, messages the database already had (redeliveries)."""
        self.recorded = 0
        """Audit records committed."""
        self.dropped = 0
        self.retries = 0
        """Writes that found the database away and were tried again."""
        self.available = True
        """False while the last attempt to write found the database away."""
        self.latencies: deque[float] = deque(maxlen=8192)
        """Seconds each recent batch took to commit, for health reports and benchmarks."""

    @property
    def store(self) -> TelemetryStore:
        """Where the writer writes: also where corridor history and alarms are read."""
        return self._store

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def __aenter__(self) -> TelemetryWriter:
        self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _usable(self) -> None:
        if self._failure is not None:
            raise StorageError(f"the writer stopped: {self._failure}") from self._failure
        if self._closing:
            raise StorageError("the writer is closed")

    def put_nowait(self, message: Telemetry, received_at: float | None = None) -> None:
        """Queue a message (received now unless told); never waits, may drop the oldest."""
        self._usable()
        received = self._clock() if received_at is None else received_at
        check_storable(message, received)
        self._append((message, received))

    async def put(self, message: Telemetry, received_at: float | None = None) -> None:
        """Queue a message, waiting first while ``max_pending`` items are held."""
        self._usable()
        received = self._clock() if received_at is None else received_at
        check_storable(message, received)
        while self.pending >= self.settings.max_pending:
            await self._settled_to(self._settled + 1)
            self._usable()
        self._append((message, received))

    def put_record(self, record: AuditRecord) -> None:
        """Queue a plan sent, an ack, a corridor state, reservations or an operator's action;
        never waits."""
        self._usable()
        check_records((record,))
        self._append(record)

    def _append(self, item: Pending) -> None:
        self._queue.append(item)
        self._accepted += 1
        if len(self._queue) == 1:
            self._since = time.monotonic()
            self._kick.set()
        elif len(self._queue) >= self.settings.batch_size:
            self._kick.set()
        if self.pending > self.settings.max_pending:
            self._queue.popleft()
            if not self._shedding:
                log.warning("storage backlog full (%d): dropping the oldest", self.pending)
            self._shedding += 1
            self.dropped += 1
            self._settled += 1
            self._release()

    async def flush(self) -> None:
        """Return once everything queued before the call is committed (or was dropped)."""
        self._usable()
        self._kick.set()
        await self._settled_to(self._accepted)

    async def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then stop. If the database stays away past ``timeout``, the
        rest is lost: counted as dropped and logged."""
        if self.pending:
            self.start()  # never started: what was queued is still written
        task, self._task = self._task, None
        self._closing = True
        self._kick.set()
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                lost = self.pending
                self._queue.clear()
                self._in_flight = 0
                self.dropped += lost
                self._settled += lost
                log.error("storage writer closed with %d items unwritten (database away)", lost)
                self._fail_waiters(StorageUnavailable("the writer closed before writing these"))
        if self._failure is not None:
            raise StorageError(f"the writer stopped: {self._failure}") from self._failure

    # -- waiting on progress --

    async def _settled_to(self, target: int) -> None:
        if self._settled >= target:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    def _release(self) -> None:
        if not self._waiters:
            return
        keep = []
        for target, future in self._waiters:
            if future.done():
                continue
            if self._settled >= target:
                future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def _fail_waiters(self, error: BaseException) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []

    # -- the loop --

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                await self._commit(*batch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("storage writer stopped on an error that retrying cannot fix")
            self._failure = error
            self._fail_waiters(StorageError(f"the writer stopped: {error}"))

    async def _next_batch(self) -> tuple[list[Received], list[AuditRecord]] | None:
        """The oldest items of one kind, once a batch is full, the oldest waited
        ``max_delay_s``, or someone flushes; None when closing with nothing left."""
        while not self._queue:
            if self._closing:
                return None
            self._kick.clear()
            await self._kick.wait()
        urgent = self._closing or self._waiters
        wait = self._since + self.settings.max_delay_s - time.monotonic()
        if len(self._queue) < self.settings.batch_size and not urgent and wait > 0:
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._kick.wait()
        queue, size = self._queue, self.settings.batch_size
        of_telemetry = isinstance(queue[0], tuple)
        telemetry: list[Received] = []
        records: list[AuditRecord] = []
        while queue and len(telemetry) + len(records) < size:
            item = queue[0]
            if isinstance(item, tuple) != of_telemetry:
                break
            if isinstance(item, tuple):
                telemetry.append(item)
            else:
                records.append(item)
            queue.popleft()
        self._in_flight = len(telemetry) + len(records)
        self._since = time.monotonic()
        return telemetry, records

    async def _commit(self, telemetry: list[Received], records: list[AuditRecord]) -> None:
        backoff = Backoff(first_s=self.settings.retry_min_s, max_s=self.settings.retry_max_s)
        down_since: float | None = None
        while True:
            started = time.perf_counter()
            try:
                if telemetry:
                    new = await self._store.write_telemetry(telemetry)
                    self.written += len(telemetry)
                    self.duplicates += len(telemetry) - new
                else:
                    await self._store.record(records)
                    self.recorded += len(records)
            except StorageUnavailable as error:
                if down_since is None:
                    down_since = time.monotonic()
                    if self.available:
                        log.warning("database unavailable, buffering: %s", error)
                self.available = False
                self.retries += 1
                await backoff.sleep()
                continue
            break
        self.latencies.append(time.perf_counter() - started)
        if self._shedding:
            log.warning("storage backlog: %d items dropped before this commit", self._shedding)
            self._shedding = 0
        self._in_flight = 0
        self._settled += len(telemetry) + len(records)
        if not self.available:
            log.info(
                "database back after %.1f s; %d items still queued",
                time.monotonic() - (down_since or time.monotonic()),
                len(self._queue),
            )
        self.available = True
        self._release()
