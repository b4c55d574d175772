"""A bounded, durable FIFO of outgoing telemetry per agent, for while the broker is away.

Messages are appended while the broker is unreachable, replayed in order after reconnecting and
deleted only once the broker acknowledged them (QoS 1 PUBACK): at-least-once, so a message can
arrive twice after a crash between the PUBACK and ``ack``, never not at all within the bounds.
Past a bound the oldest messages go first and are counted per agent, durably.

One SQLite file per process, not per agent: a process may host 1,000 agents, and one file means
one WAL, one lock, one descriptor and one transaction for a whole tick of telemetry
(``append_many``), where 1,000 files would each pay their own commit and checkpoint. Agents are
rows of a small table, messages are indexed by (agent, id). WAL with ``synchronous=NORMAL``: a
committed append survives the process being killed; a power cut may lose the last commits since
the previous checkpoint, never the file. A file SQLite reports corrupt is moved aside as
``telemetry.sqlite3.corrupt-<UTC time>`` and replaced by an empty one, at open or whenever an
operation meets the corruption; what it held is lost and counted as dropped when known.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

from citybrain.models.checks import check_count, check_id, check_number
from citybrain.models.errors import CitybrainError, ValidationError

FILE_NAME: Final = "telemetry.sqlite3"
LOCK_NAME: Final = "telemetry.lock"
CORRUPT_INFIX: Final = ".corrupt-"
SCHEMA_VERSION: Final = 1
MAX_TOPIC_CHARS: Final = 512
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""The WAL file is truncated back to this after a checkpoint, so a burst does not keep its size."""

_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a late ack cannot hit a newer row
    agent INTEGER NOT NULL REFERENCES agents (id),
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    at_s REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_agent ON messages (agent);  -- ordered by (agent, id)
PRAGMA user_version = {SCHEMA_VERSION};
"""

log = logging.getLogger(__name__)

T = TypeVar("T")
Payload = bytes | bytearray | memoryview
Outgoing = tuple[str, str, Payload, float]
"""One message to append: agent (its intersection id), topic, payload, enqueue time (s)."""


class TelemetryBufferError(CitybrainError, BufferError):
    """The buffer cannot do what was asked (disk full, file in use, unwritable directory)."""


@dataclass(frozen=True, slots=True)
class Buffered:
    """One buffered message; ``id`` grows with insertion order and is what ``ack`` takes."""

    id: int
    agent: str
    topic: str
    payload: bytes
    at_s: float


@dataclass(frozen=True, slots=True)
class _Agent:
    """What the process keeps in memory per agent, so bounds cost no query."""

    id: int
    count: int = 0
    nbytes: int = 0
    dropped: int = 0


class TelemetryBuffer:
    """Per-agent FIFOs in one SQLite file; safe to call from several threads."""

    def __init__(self, directory: Path, lock_fd: int, *, max_messages: int, max_bytes: int) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.recovered: list[Path] = []
        """Where corrupt files were moved to by this process."""
        self._lock_fd: int | None = lock_fd
        self._mutex = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._warned: set[str] = set()
        self._conn = self._connect()

    @classmethod
    def open(cls, directory: Path, *, max_messages: int, max_bytes: int) -> TelemetryBuffer:
        """Open (creating if needed) the buffer in ``directory``; one process at a time."""
        check_count("max_messages", max_messages, ge=1)
        check_count("max_bytes", max_bytes, ge=1)
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as error:
            raise TelemetryBufferError(f"telemetry buffer {directory}: {error}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise TelemetryBufferError(
                f"telemetry buffer {directory} is in use by another process"
            ) from None
        try:
            return cls(directory, lock_fd, max_messages=max_messages, max_bytes=max_bytes)
        except BaseException:
            os.close(lock_fd)
            raise

    def append(self, agent: str, topic: str, payload: Payload, at_s: float) -> int:
        """Buffer one message; returns its id."""
        return self.append_many([(agent, topic, payload, at_s)])[0]

    def append_many(self, messages: Iterable[Outgoing]) -> list[int]:
        """Buffer several messages (of any agents) in one transaction; returns their ids."""
        batch = [self._checked(*message) for message in messages]

        def operation(conn: sqlite3.Connection) -> tuple[list[int], dict[str, _Agent]]:
            work: dict[str, _Agent] = {}
            ids: list[int] = []
            for agent, topic, payload, at_s, size in batch:
                state = work.get(agent) or self._agents.get(agent) or self._new_agent(conn, agent)
                cursor = conn.execute(
                    "INSERT INTO messages (agent, topic, payload, at_s, size) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (state.id, topic, payload, at_s, size),
                )
                ids.append(_row_id(cursor))
                work[agent] = replace(state, count=state.count + 1, nbytes=state.nbytes + size)
            for agent in list(work):
                self._trim_agent(conn, agent, work)
            self._trim_bytes(conn, work)
            return ids, work

        return self._run("append", operation, write=True)

    def peek(self, agent: str, limit: int, *, after_id: int = 0) -> list[Buffered]:
        """The oldest ``limit`` messages of ``agent`` (with ids above ``after_id``), in order."""
        check_count("limit", limit, ge=1)

        def operation(conn: sqlite3.Connection) -> tuple[list[Buffered], dict[str, _Agent]]:
            state = self._agents.get(agent)
            if state is None:
                return [], {}
            rows = conn.execute(
                "SELECT id, topic, payload, at_s FROM messages "
                "WHERE agent = ? AND id > ? ORDER BY id LIMIT ?",
                (state.id, after_id, limit),
            ).fetchall()
            return [Buffered(row[0], agent, row[1], bytes(row[2]), row[3]) for row in rows], {}

        return self._run("peek", operation, write=False)

    def ack(self, agent: str, up_to_id: int) -> int:
        """Delete ``agent``'s messages up to ``up_to_id`` (the broker has them); returns how
        many. Call it only once every message up to that id got its PUBACK."""

        def operation(conn: sqlite3.Connection) -> tuple[int, dict[str, _Agent]]:
            state = self._agents.get(agent)
            if state is None:
                return 0, {}
            count, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE agent = ? AND id <= ?",
                (state.id, up_to_id),
            ).fetchone()
            conn.execute("DELETE FROM messages WHERE agent = ? AND id <= ?", (state.id, up_to_id))
            left = replace(state, count=state.count - count, nbytes=state.nbytes - size)
            return count, {agent: left}

        return self._run("ack", operation, write=True)

    def size(self, agent: str) -> int:
        """How many messages of ``agent`` wait for the broker."""
        with self._mutex:
            state = self._agents.get(agent)
        return 0 if state is None else state.count

    def dropped(self, agent: str) -> int:
        """How many of ``agent``'s messages were dropped to keep within the bounds, ever."""
        with self._mutex:
            state = self._agents.get(agent)
        return 0 if state is None else state.dropped

    @property
    def total_bytes(self) -> int:
        """Topic and payload bytes buffered for all agents (the file is larger)."""
        with self._mutex:
            return sum(state.nbytes for state in self._agents.values())

    @property
    def corrupt_files(self) -> int:
        """Corrupt files moved aside in the buffer directory and still kept there."""
        found = self.directory.glob(f"{FILE_NAME}{CORRUPT_INFIX}*")
        return sum(1 for path in found if not path.name.endswith("-wal"))

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL) and release the directory."""
        with self._mutex:
            if self._lock_fd is None:
                return
            try:
                self._conn.close()
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> TelemetryBuffer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _checked(
        self, agent: str, topic: str, payload: Payload, at_s: float
    ) -> tuple[str, str, bytes, float, int]:
        """Refuse a bad message before it can fail a whole batch's transaction."""
        check_id("agent", agent)
        if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_CHARS:
            raise ValidationError("topic", f"expected 1-{MAX_TOPIC_CHARS} characters")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ValidationError("payload", f"expected bytes, got {type(payload).__name__}")
        data = bytes(payload)
        check_number("at_s", at_s)
        size = len(topic.encode("utf-8")) + len(data)
        if size > self.max_bytes:
            raise ValidationError("payload", f"{size} bytes is over max_bytes ({self.max_bytes})")
        return agent, topic, data, float(at_s), size

    def _run(
        self,
        what: str,
        operation: Callable[[sqlite3.Connection], tuple[T, dict[str, _Agent]]],
        *,
        write: bool,
    ) -> T:
        """Run ``operation`` (in a transaction if ``write``), then adopt the agents' new state.

        A corrupt file is moved aside and the operation retried once on the new file; any other
        SQLite failure rolls back, leaves the memory state as it was and raises.
        """
        with self._mutex:
            if self._lock_fd is None:
                raise TelemetryBufferError(f"telemetry buffer {self.path} is closed")
            try:
                result, work = self._attempt(operation, write=write)
            except sqlite3.Error as error:
                if not _is_corrupt(error):
                    raise self._failure(what, error) from error
                self._recover(f"{what}: {error}")
                try:
                    result, work = self._attempt(operation, write=write)
                except sqlite3.Error as again:
                    raise self._failure(what, again) from again
            self._agents.update(work)
            return result

    def _attempt(
        self,
        operation: Callable[[sqlite3.Connection], tuple[T, dict[str, _Agent]]],
        *,
        write: bool,
    ) -> tuple[T, dict[str, _Agent]]:
        if not write:
            return operation(self._conn)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            outcome = operation(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        return outcome

    def _failure(self, what: str, error: sqlite3.Error) -> TelemetryBufferError:
        reason = "the disk is full" if _code(error) == sqlite3.SQLITE_FULL else str(error)
        return TelemetryBufferError(f"telemetry buffer {self.path}: {what} failed: {reason}")

    def _connect(self) -> sqlite3.Connection:
        """Connect and load the agents' state, moving a corrupt file aside first if need be."""
        try:
            try:
                return self._prepare()
            except sqlite3.Error as error:
                if not _is_corrupt(error):
                    raise
                self._move_aside(str(error))
                return self._prepare()
        except sqlite3.Error as error:
            raise TelemetryBufferError(f"telemetry buffer {self.path}: {error}") from error

    def _prepare(self, carried: dict[str, int] | None = None) -> sqlite3.Connection:
        """Open the file, create the schema, insert ``carried`` drop counts into a new file,
        and load every agent's state (reading every message row: a cheap check at start)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise TelemetryBufferError(
                    f"telemetry buffer {self.path} has schema {version}, newer than this "
                    f"software's {SCHEMA_VERSION}; move it away or upgrade"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.executescript(_SCHEMA)
            if carried:
                conn.executemany(
                    "INSERT INTO agents (name, dropped) VALUES (?, ?)", carried.items()
                )
            rows = conn.execute(
                "SELECT a.name, a.id, COUNT(m.id), COALESCE(SUM(m.size), 0), a.dropped "
                "FROM agents AS a LEFT JOIN messages AS m ON m.agent = a.id GROUP BY a.id"
            ).fetchall()
        except BaseException:
            conn.close()
            raise
        self._agents = {name: _Agent(*state) for name, *state in rows}
        return conn

    def _recover(self, reason: str) -> None:
        """Replace a file found corrupt while running, keeping the drop counts and adding
        the messages lost with it."""
        lost = {name: state.dropped + state.count for name, state in self._agents.items()}
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._move_aside(reason)
        try:
            self._conn = self._prepare(lost)
        except sqlite3.Error as error:
            raise TelemetryBufferError(f"telemetry buffer {self.path}: {error}") from error

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{FILE_NAME}{CORRUPT_INFIX}{stamp}")
        number = 1
        while target.exists():
            target = self.path.with_name(f"{FILE_NAME}{CORRUPT_INFIX}{stamp}.{number}")
            number += 1
        try:
            self.path.rename(target)
            wal = self.path.with_name(f"{FILE_NAME}-wal")
            if wal.exists():
                wal.rename(target.with_name(f"{target.name}-wal"))
            self.path.with_name(f"{FILE_NAME}-shm").unlink(missing_ok=True)
        except OSError as error:
            raise TelemetryBufferError(
                f"telemetry buffer {self.path} is corrupt ({reason}) and cannot be moved "
                f"aside: {error}"
            ) from None
        self.recovered.append(target)
        log.error(
            "telemetry buffer %s is corrupt (%s): moved it to %s and started an empty one",
            self.path,
            reason,
            target,
        )

    def _new_agent(self, conn: sqlite3.Connection, agent: str) -> _Agent:
        return _Agent(_row_id(conn.execute("INSERT INTO agents (name) VALUES (?)", (agent,))))

    def _trim_agent(self, conn: sqlite3.Connection, agent: str, work: dict[str, _Agent]) -> None:
        """Drop ``agent``'s oldest messages beyond ``max_messages``."""
        state = work[agent]
        excess = state.count - self.max_messages
        if excess <= 0:
            return
        last, size = conn.execute(
            "SELECT MAX(id), SUM(size) FROM (SELECT id, size FROM messages "
            "WHERE agent = ? ORDER BY id LIMIT ?)",
            (state.id, excess),
        ).fetchone()
        conn.execute("DELETE FROM messages WHERE agent = ? AND id <= ?", (state.id, last))
        self._count_drops(conn, work, agent, excess, size)

    def _trim_bytes(self, conn: sqlite3.Connection, work: dict[str, _Agent]) -> None:
        """Drop the oldest messages of any agent while all together exceed ``max_bytes``."""
        states = {**self._agents, **work}
        excess = sum(state.nbytes for state in states.values()) - self.max_bytes
        if excess <= 0:
            return
        names = {state.id: name for name, state in states.items()}
        freed: dict[str, list[int]] = {}
        last = 0
        cursor = conn.execute("SELECT id, agent, size FROM messages ORDER BY id")
        while excess > 0:
            rows = cursor.fetchmany(256)
            if not rows:
                break
            for row_id, agent_id, size in rows:
                last = row_id
                counts = freed.setdefault(names[agent_id], [0, 0])
                counts[0] += 1
                counts[1] += size
                excess -= size
                if excess <= 0:
                    break
        cursor.close()
        conn.execute("DELETE FROM messages WHERE id <= ?", (last,))
        for agent, (count, size) in freed.items():
            work.setdefault(agent, states[agent])
            self._count_drops(conn, work, agent, count, size)

    def _count_drops(
        self, conn: sqlite3.Connection, work: dict[str, _Agent], agent: str, count: int, size: int
    ) -> None:
        state = work[agent]
        conn.execute("UPDATE agents SET dropped = dropped + ? WHERE id = ?", (count, state.id))
        work[agent] = replace(
            state,
            count=state.count - count,
            nbytes=state.nbytes - size,
            dropped=state.dropped + count,
        )
        if agent not in self._warned:
            self._warned.add(agent)
            log.warning(
                "telemetry buffer full for %s (bounds: %d messages per agent, %d bytes in all): "
                "dropping its oldest messages; further drops are counted, not logged",
                agent,
                self.max_messages,
                self.max_bytes,
            )


def _row_id(cursor: sqlite3.Cursor) -> int:
    row_id = cursor.lastrowid
    if row_id is None:  # pragma: no cover - INSERT always sets it
        raise TelemetryBufferError("SQLite returned no row id")
    return row_id


def _code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_corrupt(error: sqlite3.Error) -> bool:
    return _code(error) in _CORRUPT_CODES
