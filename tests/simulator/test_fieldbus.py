from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from typing import Any

import msgspec
import pytest

from citybrain.edge.drivers import FieldBusClient
from citybrain.models.errors import ValidationError
from citybrain.models.fieldbus import MAX_LINE_BYTES, FieldBusError, SignalReading
from citybrain.models.messages import AckStatus, GreenWindow, IntervalStep, SignalPlan
from citybrain.models.signal import Indication
from citybrain.signal_plans.config import CabinetConfig, IntersectionConfig, state_from_reading
from citybrain.signal_plans.state import normal_state_at
from citybrain.simulator import fieldbus
from citybrain.simulator.fieldbus import FieldBusCore, FieldBusServer
from citybrain.simulator.networks import ADVANCE_DETECTOR_M
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build


def _run() -> Run:
    scenario = build("arterial:3", level=Level.HEAVY, duration_s=900, seed=2)
    return Run(scenario.net, scenario.trips)


async def _raw(port: int, *lines: bytes) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2 * MAX_LINE_BYTES)
    answers = []
    for line in lines:
        writer.write(line)
        await writer.drain()
        answers.append(msgspec.json.decode(await reader.readline()))
    writer.close()
    return answers


def test_a_client_reads_signals_detectors_and_truth_and_drives_the_clock() -> None:
    async def scenario() -> None:
        run = _run()
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                hello = await client.hello()
                assert hello.intersections == 3
                assert await client.advance(600.0) == pytest.approx(600.0)
                shown = await client.signals("a01")
                assert shown.time == run.now
                assert set(shown.groups) == set("12345678")
                assert set(shown.groups.values()) <= set(Indication)
                readings = (await client.detectors("a01")).approaches
                assert {r.approach for r in readings} == {"a01:E", "a01:W", "a01:N", "a01:S"}
                assert sum(r.stop_bar_count for r in readings) > 0
                again = (await client.detectors("a01")).approaches
                assert all(r.interval_s == 0.0 for r in again)
                truth = await client.ground_truth("a01")
                assert truth.queues == run.detectors.true_queues("a01")
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_unsafe_plans_and_bad_requests_are_refused_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        run = _run()
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                await client.advance(300.0)
                now = run.now
                unsafe = SignalPlan(
                    plan_id="bad",
                    intersection="a01",
                    seq=1,
                    issued_at=now,
                    valid_from=now,
                    valid_until=now + 60,
                    steps=(IntervalStep(at=now + 1, green=("2", "4")),),
                )
                outcome = await client.send_plan("a01", unsafe)
                assert outcome.status is AckStatus.REJECTED
                assert outcome.reason_code in {"conflicting_greens", "no_yellow"}
                assert outcome.reason
                assert run.sim.override[run.net.controller_index["a01"]] == -1
                with pytest.raises(FieldBusError) as error:
                    await client.signals("nowhere")
                assert error.value.code == "unknown_intersection"
            answers = await _raw(
                port,
                b"not json\n",
                b'{"id": 7, "op": "teleport"}\n',
                b'{"id": 8, "op": "advance", "seconds": -5}\n',
                b'{"id": 9, "op": "signals", "intersection": "a02"}\n',
            )
            assert [a["ok"] for a in answers] == [False, False, False, True]
            assert answers[0]["id"] == -1
            assert answers[1]["id"] == 7
            oversize = await _raw(port, b"x" * (MAX_LINE_BYTES + 10) + b"\n")
            assert oversize[0]["error"]["code"] == "too_large"  # type: ignore[index]
            assert server.core.rejected == {
                "unknown_intersection": 1,
                "bad_request": 2,
                "invalid": 1,
                "too_large": 1,
            }
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                assert (await client.hello()).protocol == 1
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_paced_clock_runs_by_itself_and_refuses_advance() -> None:
    async def scenario() -> None:
        run = _run()
        server = FieldBusServer(run, speed=200.0)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                await asyncio.sleep(0.5)
                assert 40.0 <= run.now <= 160.0
                with pytest.raises(FieldBusError) as error:
                    await client.advance(10.0)
                assert error.value.code == "paced_clock"
        finally:
            await server.stop()

    asyncio.run(scenario())


def _answer(core: FieldBusCore, line: bytes) -> dict[str, Any]:
    response = msgspec.json.decode(msgspec.json.encode(core.handle(line)))
    assert isinstance(response, dict)
    return response


def test_config_gives_the_plan_the_cabinet_runs_and_its_approaches() -> None:
    run = _run()
    core = FieldBusCore(run, paced=False)
    answer = _answer(core, b'{"id": 3, "op": "config", "intersection": "a02"}')
    assert answer["ok"], answer
    wire = msgspec.json.decode(msgspec.json.encode(answer["result"]), type=CabinetConfig)
    config = IntersectionConfig.from_wire(wire)
    assert config.plan == run.controllers["a02"].plan
    network = run.net.road.network
    by_id = {a.approach: a for a in config.approaches}
    assert set(by_id) == {"a02:E", "a02:W", "a02:N", "a02:S"}
    east = by_id["a02:E"]
    link = network.link(east.link)
    assert link.to_node == "a02"
    assert (east.lanes, east.length_m, east.speed_limit_mps) == (3, link.length_m, 13.9)
    assert east.saturation_flow_vphpl == link.saturation_flow_vphpl
    assert east.advance_setback_m == ADVANCE_DETECTOR_M
    assert east.groups == ["2", "5"]  # through and right on 2, the left on 5
    assert by_id["a02:N"].groups == ["4", "7"]
    again = _answer(core, b'{"id": 4, "op": "config", "intersection": "a02"}')
    assert again["result"] == answer["result"]
    unknown = _answer(core, b'{"id": 5, "op": "config", "intersection": "zz"}')
    assert unknown["error"]["code"] == "unknown_intersection"


def test_signals_report_running_walks() -> None:
    run = _run()
    core = FieldBusCore(run, paced=False)
    plan = run.controllers["a01"].plan
    run.advance(400.0)
    while not any(s.walk_since_s for s in normal_state_at(plan, run.now).groups.values()):
        run.advance(1.0)
    answer = _answer(core, b'{"id": 1, "op": "signals", "intersection": "a01"}')["result"]
    state = normal_state_at(plan, run.now)
    walking = {g: s.walk_since_s for g, s in state.groups.items() if s.walk_since_s is not None}
    assert walking
    assert answer["walk_since"] == walking
    assert answer["mode"] == "normal"
    assert answer["plan_id"] is None
    reading = msgspec.json.decode(msgspec.json.encode(answer), type=SignalReading)
    assert state_from_reading(plan.signals, reading) == state


def test_stopping_the_server_hangs_up_on_its_clients() -> None:
    async def scenario() -> None:
        server = FieldBusServer(_run())
        port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"id": 1, "op": "hello"}\n')
        assert msgspec.json.decode(await reader.readline())["ok"]
        await server.stop()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()

    asyncio.run(scenario())


def test_release_brings_a_cabinet_back_to_its_normal_plan() -> None:
    async def scenario() -> None:
        run = _run()
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                await client.advance(600.0)
                now = run.now
                plan = SignalPlan(
                    plan_id="w1", intersection="a01", seq=1, issued_at=now, valid_from=now,
                    valid_until=now + 120.0,
                    windows=(GreenWindow(signal_group="4", open_at=now + 20, close_at=now + 60),),
                )  # fmt: skip
                assert (await client.send_plan("a01", plan)).status is AckStatus.ACCEPTED
                assert (await client.signals("a01")).mode == "priority"
                released = await client.release("a01")
                assert released.status is AckStatus.RELEASED
                await client.advance(150.0)
                shown = await client.signals("a01")
                assert shown.mode == "normal"
                normal = normal_state_at(run.controllers["a01"].plan, run.now).displays()
                assert shown.groups == normal
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_other_clients_are_answered_while_an_advance_steps_and_advances_add_up() -> None:
    """A long advance (SUMO's hour of a city takes a minute) no longer holds every other
    client: they are answered between its steps. Two advances at once run one after the
    other, as when each ran whole."""

    async def scenario() -> None:
        run = _run()
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with (
                FieldBusClient(host="127.0.0.1", port=port) as driver,
                FieldBusClient(host="127.0.0.1", port=port) as other,
                FieldBusClient(host="127.0.0.1", port=port) as reader,
            ):
                hour = asyncio.create_task(driver.advance(3600.0))
                more = asyncio.create_task(other.advance(100.0))
                await asyncio.sleep(0.01)
                shown = await reader.signals("a01")
                assert 0.0 < shown.time < 3600.0  # answered mid-advance
                assert not hour.done()
                assert sorted(await asyncio.gather(hour, more)) == [3600.0, 3700.0]
                assert run.now == 3700.0
        finally:
            await server.stop()

    asyncio.run(scenario())


class _BrokenEngineError(Exception):
    pass


def _failing_from(run: Run, at_s: float, error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` advances until ``at_s``, then raises ``error`` at every advance."""
    advance = run.advance

    def failing(seconds: float, **options: Any) -> None:
        if run.now >= at_s:
            raise error
        advance(seconds, **options)

    monkeypatch.setattr(run, "advance", failing)


def test_a_simulation_that_fails_is_said_and_not_retried_and_the_cabinets_stay_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine fails (SUMO's error, a ``CitybrainError``): the advance says why, with a
    code a client does not retry; every later advance says the same, reads still work."""
    from citybrain.simulator.sumo import SumoError

    async def scenario() -> None:
        run = _run()
        lost = SumoError("SUMO failed stepping: Vehicle 'AMB-1' has no valid route")
        _failing_from(run, 120.0, lost, monkeypatch)
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                for _ in range(2):
                    with pytest.raises(FieldBusError) as error:
                        await client.advance(600.0)
                    assert error.value.code == "simulation_failed"
                    assert "has no valid route" in error.value.message
                    assert not error.value.recoverable
                assert run.now == 120.0
                assert (await client.signals("a01")).time == 120.0
        finally:
            await server.stop()
        assert server.core.rejected == {"simulation_failed": 2}

    asyncio.run(scenario())


def test_a_paced_clock_whose_simulation_fails_stops_and_the_server_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        run = _run()
        _failing_from(run, 3.0, _BrokenEngineError("the engine broke"), monkeypatch)
        server = FieldBusServer(run, speed=1000.0)
        await server.start()
        for _ in range(100):
            if server.core.halted is not None:
                break
            await asyncio.sleep(0.01)
        assert server.core.halted == "the engine broke"
        assert run.now == 3.0
        await server.stop()  # the clock's error is not raised again here

    asyncio.run(scenario())


async def _hello(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has been answered once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"id": 1, "op": "hello"}\n')
    assert msgspec.json.decode(await asyncio.wait_for(reader.readline(), 2.0))["ok"]
    return reader, writer


async def _refused_then_closed(reader: asyncio.StreamReader) -> str:
    """The error code of the one line the server said before it hung up."""
    said = msgspec.json.decode(await asyncio.wait_for(reader.readline(), 2.0))
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    assert said["ok"] is False
    assert said["id"] == -1
    return str(said["error"]["code"])


@pytest.mark.security
def test_a_connection_over_the_cap_is_refused_and_the_others_are_still_served() -> None:
    """A client opening sockets in a loop cannot take the server's file descriptors: past
    ``max_connections`` each is told why and closed; a place that frees is served again."""

    async def scenario() -> None:
        server = FieldBusServer(_run(), max_connections=2)
        port = await server.start()
        try:
            held = [await _hello(port) for _ in range(2)]
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await _refused_then_closed(reader) == "too_many_connections"
                writer.close()
            _, first = held.pop()
            first.close()
            await first.wait_closed()
            for _ in range(300):  # the server sees the hang-up
                if server._admitted < 2:
                    break
                await asyncio.sleep(0.01)
            held.append(await _hello(port))
            for reader, writer in held:
                writer.write(b'{"id": 2, "op": "hello"}\n')
                assert msgspec.json.decode(await reader.readline())["ok"]
                writer.close()
        finally:
            await server.stop()
        assert server.core.rejected == {"too_many_connections": 3}

    asyncio.run(scenario())


@pytest.mark.security
def test_a_half_sent_request_or_an_unread_answer_does_not_hold_a_connection() -> None:
    """A client that sends part of a line and waits (slowloris), or pipelines requests and
    reads none of the answers, is closed after ``idle_timeout_s``; a client that keeps
    asking is served all along."""

    async def scenario() -> None:
        server = FieldBusServer(_run(), idle_timeout_s=0.3)
        port = await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b'{"id": 1, "op": "hel')
            busy_reader, busy = await _hello(port)
            for request_id in range(8):  # 0.4 s of asking, past the idle time
                busy.write(b'{"id": %d, "op": "hello"}\n' % request_id)
                assert msgspec.json.decode(await busy_reader.readline())["ok"]
                await asyncio.sleep(0.05)
            assert await _refused_then_closed(reader) == "idle"
            writer.close()
            _, flood = await asyncio.open_connection("127.0.0.1", port)
            flood.write(b'{"id": 1, "op": "config", "intersection": "a01"}\n' * 20_000)
            for _ in range(300):
                if server.core.rejected["not_reading"]:
                    break
                await asyncio.sleep(0.01)
            assert server.core.rejected["not_reading"] == 1
            flood.transport.abort()
            busy.close()
            _, fresh = await _hello(port)  # and the server goes on serving
            fresh.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


@pytest.mark.security
def test_blank_lines_do_not_keep_a_connection_from_its_idle_timeout() -> None:
    async def scenario() -> None:
        server = FieldBusServer(_run(), idle_timeout_s=0.3)
        port = await server.start()
        _, writer = await asyncio.open_connection("127.0.0.1", port)

        async def blank_lines() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(30):  # 3 s of them
                    writer.write(b"\n")
                    await writer.drain()
                    await asyncio.sleep(0.1)

        keeping = asyncio.create_task(blank_lines())
        try:
            for _ in range(150):  # 1.5 s; the answer may be lost to the reset that follows
                if server.core.rejected["idle"]:
                    break
                await asyncio.sleep(0.01)
            assert server.core.rejected["idle"] == 1
            assert not keeping.done() or keeping.exception() is None
        finally:
            keeping.cancel()
            writer.close()
            await server.stop()

    asyncio.run(scenario())


@pytest.mark.security
def test_a_link_closed_on_a_client_that_reads_nothing_is_cut_not_held() -> None:
    """A polite close waits until what is buffered has been sent, for ever where the client
    reads nothing: the server's socket, buffers and connection slot with it. ``_hang_up``
    gives it a second, then cuts the link."""

    async def scenario() -> None:
        accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

        async def keep(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accepted.put(writer)

        listening = await asyncio.start_server(keep, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        _, client = await asyncio.open_connection("127.0.0.1", port)  # and never reads
        served = await accepted.get()
        served.write(b"x" * (64 << 20))  # beyond any socket buffer: the rest stays queued
        assert served.transport.get_write_buffer_size() > 0
        started = time.monotonic()
        await asyncio.wait_for(fieldbus._hang_up(served), 5.0)
        assert time.monotonic() - started < fieldbus.HANG_UP_S + 1.0
        await asyncio.sleep(0.05)
        assert served.transport.get_extra_info("socket").fileno() == -1  # released
        client.close()
        listening.close()
        await listening.wait_closed()

    asyncio.run(scenario())


@pytest.mark.security
def test_stopping_the_server_hangs_up_at_once_on_a_client_that_reads_nothing_and_on_an_advance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that pipelines requests and reads none of the answers holds its session
    until the idle timeout (300 s); an advance of an hour steps for seconds. Stopping does
    not wait for either."""

    async def scenario() -> None:
        run = _run()
        step = run.advance

        def slow(seconds: float, **options: Any) -> None:
            time.sleep(0.001)  # a city's SUMO step
            step(seconds, **options)

        monkeypatch.setattr(run, "advance", slow)
        server = FieldBusServer(run)
        port = await server.start()
        _, flood = await asyncio.open_connection("127.0.0.1", port)
        flood.write(b'{"id": 1, "op": "config", "intersection": "a01"}\n' * 20_000)
        _, advancing = await asyncio.open_connection("127.0.0.1", port)
        advancing.write(b'{"id": 2, "op": "advance", "seconds": 3600}\n')
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 5.0)
        assert time.monotonic() - started < 2.0
        assert 0.0 < run.now < 3600.0
        assert not server._sessions
        assert server._admitted == 0
        flood.transport.abort()
        advancing.close()

    asyncio.run(scenario())


@pytest.mark.security
def test_a_link_that_fails_with_any_socket_error_gives_its_place_back() -> None:
    """A remote client's link can fail with an error other than a ConnectionError (no route
    to host): its place under the cap is freed all the same."""

    async def scenario() -> None:
        server = FieldBusServer(_run(), max_connections=1)
        port = await server.start()
        try:
            _, writer = await _hello(port)
            (served,) = server._sessions.values()
            served.transport._fatal_error(OSError(errno.EHOSTUNREACH, "No route to host"))  # type: ignore[attr-defined]
            for _ in range(300):
                if server._admitted == 0:
                    break
                await asyncio.sleep(0.01)
            assert server._admitted == 0
            _, again = await _hello(port)
            again.close()
            writer.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("turns", range(6))
def test_a_connection_accepted_as_the_server_stops_is_not_served(turns: int) -> None:
    """Accepted by the kernel, its task not started when ``stop`` looks at the sessions: it
    hangs up on itself rather than being served after the server stopped."""

    async def scenario() -> None:
        server = FieldBusServer(_run(), speed=1.0)
        port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(turns):
            await asyncio.sleep(0)
        await server.stop()
        await asyncio.sleep(0.2)
        assert not server._sessions
        assert server._admitted == 0
        with contextlib.suppress(ConnectionError):
            writer.write(b'{"id": 1, "op": "hello"}\n')
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()

    asyncio.run(scenario())


def test_too_few_file_descriptors_for_the_cap_are_said_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the cap plus the run's own, accepting fails (EMFILE) before the cap refuses."""
    monkeypatch.setattr("resource.getrlimit", lambda _: (200, 4096))

    async def scenario() -> None:
        server = FieldBusServer(_run())
        await server.start()
        await server.stop()

    with caplog.at_level("WARNING", logger="citybrain.simulator.fieldbus"):
        asyncio.run(scenario())
    assert "may open 200 files, too few for 256 connections" in caplog.text


ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (refused: the point)


@pytest.mark.security
@pytest.mark.parametrize("host", [ANY_ADDRESS, "::", "192.0.2.7", "cabinets.example.org"])
def test_the_field_bus_is_served_beyond_loopback_only_when_asked(host: str) -> None:
    """It has no authentication (a cabinet's local wire): on any other address anyone who
    reaches the port could command the cabinets, so that takes ``allow_remote``."""
    with pytest.raises(ValidationError, match="allow_remote"):
        FieldBusServer(_run(), host=host)
    assert FieldBusServer(_run(), host=host, allow_remote=True).host == host
    for local in ("127.0.0.1", "::1", "localhost"):
        assert FieldBusServer(_run(), host=local).host == local
