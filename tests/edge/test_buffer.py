"""The telemetry buffer: order, bounds, drop counts, durability and recovery."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from citybrain.edge.buffer import (
    FILE_NAME,
    Buffered,
    TelemetryBuffer,
    TelemetryBufferError,
)
from citybrain.models.errors import CitybrainError, ValidationError

TOPIC = "cb/v1/r1/x/{}/telemetry"
BIG = 1 << 30


def open_buffer(path: Path, *, max_messages: int = 1000, max_bytes: int = BIG) -> TelemetryBuffer:
    return TelemetryBuffer.open(path, max_messages=max_messages, max_bytes=max_bytes)


def fill(buffer: TelemetryBuffer, agent: str, count: int, start: int = 0) -> list[int]:
    return [
        buffer.append(agent, TOPIC.format(agent), b"m%d" % n, float(n))
        for n in range(start, start + count)
    ]


def payloads(buffer: TelemetryBuffer, agent: str) -> list[bytes]:
    return [message.payload for message in buffer.peek(agent, 1_000_000)]


# --- order and acknowledgement -----------------------------------------------------------------


def test_messages_come_back_in_insertion_order(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        ids = fill(buffer, "x1", 5)
        assert ids == sorted(ids)
        assert len(set(ids)) == 5
        assert buffer.peek("x1", 2) == [
            Buffered(ids[0], "x1", TOPIC.format("x1"), b"m0", 0.0),
            Buffered(ids[1], "x1", TOPIC.format("x1"), b"m1", 1.0),
        ]
        assert [m.payload for m in buffer.peek("x1", 2, after_id=ids[1])] == [b"m2", b"m3"]
        assert buffer.size("x1") == 5
        assert buffer.total_bytes == 5 * (len(TOPIC.format("x1")) + 2)


def test_agents_have_separate_queues(tmp_path: Path) -> None:
    with open_buffer(tmp_path, max_messages=3) as buffer:
        for n in range(4):
            fill(buffer, "x1", 1, start=n)
            fill(buffer, "x2", 1, start=10 + n)
        assert payloads(buffer, "x1") == [b"m1", b"m2", b"m3"]
        assert payloads(buffer, "x2") == [b"m11", b"m12", b"m13"]
        assert buffer.peek("x3", 10) == []
        assert buffer.size("x3") == 0
        assert buffer.dropped("x3") == 0


def test_ack_deletes_up_to_the_id(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        ids = fill(buffer, "x1", 5)
        fill(buffer, "x2", 2)
        assert buffer.ack("x1", ids[2]) == 3
        assert payloads(buffer, "x1") == [b"m3", b"m4"]
        assert buffer.size("x1") == 2
        assert buffer.ack("x1", ids[2]) == 0  # a repeated ack is harmless
        assert buffer.ack("x2", ids[4]) == 0  # ids of another agent do not touch this one...
        assert buffer.size("x2") == 2  # ...even though x2's ids are all larger than ids[4]
        assert buffer.ack("nobody", 10**9) == 0
        assert buffer.total_bytes == 4 * (len(TOPIC.format("x1")) + 2)


def test_ids_are_never_reused_so_a_late_ack_cannot_delete_new_messages(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        old = fill(buffer, "x1", 3)
        buffer.ack("x1", old[-1])
    with open_buffer(tmp_path) as buffer:
        new = fill(buffer, "x1", 1)
        assert new[0] > old[-1]
        assert buffer.ack("x1", old[-1]) == 0
        assert buffer.size("x1") == 1


def test_append_many_is_one_transaction_and_refuses_bad_messages_first(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        ids = buffer.append_many([("x1", "t", b"a", 1.0), ("x2", "t", b"b", 1.0)])
        assert len(ids) == 2
        with pytest.raises(ValidationError, match="at_s"):
            buffer.append_many([("x1", "t", b"c", 2.0), ("x1", "t", b"d", float("nan"))])
        assert payloads(buffer, "x1") == [b"a"]
        assert buffer.append_many([]) == []


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (("bad/id", "t", b"p", 0.0), "agent: 'bad/id' is not a valid id"),
        (("x1", "", b"p", 0.0), "topic: expected 1-512 characters"),
        (("x1", "t" * 513, b"p", 0.0), "topic: expected 1-512 characters"),
        (("x1", "t", "text", 0.0), "payload: expected bytes, got str"),
        (("x1", "t", b"p", float("inf")), "at_s: must be a finite number"),
        (("x1", "t", b"p" * 2000, 0.0), "payload: 2001 bytes is over max_bytes"),
    ],
)
def test_bad_messages_are_refused(
    tmp_path: Path, message: tuple[str, str, bytes, float], match: str
) -> None:
    with (
        open_buffer(tmp_path, max_bytes=2000) as buffer,
        pytest.raises(ValidationError, match=match),
    ):
        buffer.append(*message)


def test_memoryview_and_bytearray_payloads_are_stored_as_bytes(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        buffer.append("x1", "t", memoryview(b"abc"), 0.0)
        buffer.append("x1", "t", bytearray(b"de"), 0)
        assert payloads(buffer, "x1") == [b"abc", b"de"]
        assert buffer.total_bytes == 2 + 5


# --- bounds ------------------------------------------------------------------------------------


def test_past_max_messages_the_oldest_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), open_buffer(tmp_path, max_messages=5) as buffer:
        fill(buffer, "x1", 8)
        assert buffer.size("x1") == 5
        assert buffer.dropped("x1") == 3
        assert payloads(buffer, "x1") == [b"m3", b"m4", b"m5", b"m6", b"m7"]
        buffer.append_many([("x1", "t", b"n%d" % n, 9.0) for n in range(7)])  # over in one batch
        assert payloads(buffer, "x1") == [b"n2", b"n3", b"n4", b"n5", b"n6"]
        assert buffer.dropped("x1") == 10
    warnings = [r for r in caplog.records if "telemetry buffer full for x1" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then counted: no log flood in a long outage


def test_past_max_bytes_the_oldest_of_any_agent_are_dropped(tmp_path: Path) -> None:
    with open_buffer(tmp_path, max_bytes=100) as buffer:
        buffer.append("x1", "t", b"a" * 39, 0.0)  # 40 bytes with the topic
        buffer.append("x2", "t", b"b" * 39, 1.0)
        assert buffer.dropped("x1") == 0
        buffer.append("x2", "t", b"c" * 39, 2.0)  # 120 bytes: x1's, the oldest, goes
        assert (buffer.size("x1"), buffer.dropped("x1")) == (0, 1)
        assert (buffer.size("x2"), buffer.dropped("x2")) == (2, 0)
        assert buffer.total_bytes == 80
        buffer.append("x1", "t", b"d" * 99, 3.0)  # 100 bytes: everything older goes
        assert (buffer.size("x2"), buffer.dropped("x2")) == (0, 2)
        assert payloads(buffer, "x1") == [b"d" * 99]
        assert buffer.total_bytes == 100


def test_drop_counts_and_messages_survive_reopening(tmp_path: Path) -> None:
    with open_buffer(tmp_path, max_messages=4) as buffer:
        fill(buffer, "x1", 6)
        fill(buffer, "x2", 2)
    with open_buffer(tmp_path, max_messages=4) as buffer:
        assert buffer.dropped("x1") == 2
        assert payloads(buffer, "x1") == [b"m2", b"m3", b"m4", b"m5"]
        assert buffer.size("x2") == 2
        fill(buffer, "x1", 1, start=6)
        assert buffer.dropped("x1") == 3
    with open_buffer(tmp_path, max_messages=2) as buffer:  # a smaller bound applies on append
        assert buffer.size("x1") == 4
        fill(buffer, "x1", 1, start=7)
        assert payloads(buffer, "x1") == [b"m6", b"m7"]
        assert buffer.dropped("x1") == 6


# --- durability and recovery -------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from citybrain.edge.buffer import TelemetryBuffer

buffer = TelemetryBuffer.open(Path(sys.argv[1]), max_messages=100, max_bytes=1 << 30)
n = 0
while True:
    buffer.append("x1", "cb/v1/r1/x/x1/telemetry", b"%d" % n, float(n))
    print(n, flush=True)
    n += 1
"""


def test_a_killed_process_loses_nothing_it_committed(tmp_path: Path) -> None:
    with subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        reported = -1
        for line in child.stdout:
            reported = int(line)
            if reported >= 300:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        reported = max([reported, *(int(line) for line in child.stdout if line.strip())])
    assert child.returncode == -signal.SIGKILL
    with open_buffer(tmp_path, max_messages=100) as buffer:
        appended = buffer.size("x1") + buffer.dropped("x1")
        assert appended in (reported + 1, reported + 2)  # the last may be committed, unreported
        assert buffer.size("x1") == 100
        assert payloads(buffer, "x1") == [b"%d" % n for n in range(appended - 100, appended)]


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with open_buffer(tmp_path), pytest.raises(TelemetryBufferError, match="in use") as caught:
        open_buffer(tmp_path)
    assert isinstance(caught.value, BufferError)
    assert isinstance(caught.value, CitybrainError)
    open_buffer(tmp_path).close()  # released on close


def test_a_closed_buffer_refuses_work(tmp_path: Path) -> None:
    buffer = open_buffer(tmp_path)
    buffer.close()
    buffer.close()
    with pytest.raises(TelemetryBufferError, match="closed"):
        buffer.append("x1", "t", b"p", 0.0)


def test_a_corrupt_file_is_moved_aside_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database, " * 100)
    with caplog.at_level(logging.ERROR), open_buffer(tmp_path) as buffer:
        assert buffer.corrupt_files == 1
        assert len(buffer.recovered) == 1
        moved = buffer.recovered[0]
        assert moved.name.startswith(f"{FILE_NAME}.corrupt-")
        assert moved.read_bytes().startswith(b"this is not a database")
        fill(buffer, "x1", 2)
        assert buffer.size("x1") == 2
    assert any(
        "is corrupt" in r.getMessage() and str(moved) in r.getMessage() for r in caplog.records
    )
    (tmp_path / FILE_NAME).write_bytes(b"garbage again " * 100)
    with open_buffer(tmp_path) as buffer:
        assert buffer.corrupt_files == 2
        assert buffer.recovered[0] != moved


def test_corruption_found_while_running_is_recovered_and_counted(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        for n in range(40):
            buffer.append_many([(f"x{a}", "t", os.urandom(2000), float(n)) for a in range(5)])
        path = tmp_path / FILE_NAME
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with path.open("r+b") as handle:  # every page past the schema and the agents table
            handle.seek(2 * 4096)
            handle.write(b"\xff" * (path.stat().st_size - 2 * 4096))
        other.execute("PRAGMA user_version = 1")  # a change that makes SQLite drop its cache
        other.close()
        assert buffer.peek("x1", 10) == []  # the peek met the corruption, recovered, retried
        assert len(buffer.recovered) == 1
        assert buffer.size("x1") == 0
        assert buffer.dropped("x1") == 40  # lost with the file, counted as dropped
        fill(buffer, "x1", 1)
    with open_buffer(tmp_path) as buffer:
        assert (buffer.size("x1"), buffer.dropped("x1"), buffer.dropped("x4")) == (1, 40, 40)


def test_a_newer_schema_is_left_alone(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(TelemetryBufferError, match="schema 99, newer"):
        open_buffer(tmp_path)
    assert not list(tmp_path.glob("*.corrupt-*"))
    with sqlite3.connect(tmp_path / FILE_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (99,)


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(TelemetryBufferError, match=r"telemetry buffer .*file"):
        open_buffer(tmp_path / "file")


def test_a_full_disk_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        fill(buffer, "x1", 1)
        pages = buffer._conn.execute("PRAGMA page_count").fetchone()[0]
        buffer._conn.execute(f"PRAGMA max_page_count = {pages}")  # a full disk
        with pytest.raises(TelemetryBufferError, match="append failed: the disk is full"):
            buffer.append_many([("x1", "t", os.urandom(5000), 1.0) for _ in range(10)])
        assert buffer.size("x1") == 1
        assert payloads(buffer, "x1") == [b"m0"]


# --- scale -------------------------------------------------------------------------------------


def test_a_thousand_agents_in_one_file(tmp_path: Path) -> None:
    agents = [f"x{n:04d}" for n in range(1000)]
    payload = b"p" * 300  # about one telemetry message
    ticks = 5
    with open_buffer(tmp_path, max_messages=3) as buffer:
        start = time.perf_counter()
        for tick in range(ticks):
            buffer.append_many([(a, TOPIC.format(a), payload, float(tick)) for a in agents])
        rate = ticks * len(agents) / (time.perf_counter() - start)
        print(f"\nappend_many, 1000 agents x {ticks} ticks: {rate:,.0f} messages/s")
        assert rate > 2000  # 1,000 agents at 1 Hz need 1,000/s
        for agent in agents:
            assert [m.at_s for m in buffer.peek(agent, 10)] == [2.0, 3.0, 4.0]
            assert buffer.dropped(agent) == 2
    with open_buffer(tmp_path, max_messages=3) as buffer:
        assert sum(buffer.size(a) for a in agents) == 3000


def test_appends_from_several_threads(tmp_path: Path) -> None:
    with open_buffer(tmp_path) as buffer:
        ids: list[int] = []

        def work(agent: str) -> None:
            ids.extend(fill(buffer, agent, 100))

        threads = [threading.Thread(target=work, args=(f"x{n % 2}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(ids)) == 400
        assert buffer.size("x0") == buffer.size("x1") == 200
        for agent in ("x0", "x1"):
            peeked = [m.id for m in buffer.peek(agent, 1000)]
            assert peeked == sorted(peeked)
