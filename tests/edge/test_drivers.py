from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest

from citybrain.edge.drivers import (
    CommandResult,
    ControllerDriver,
    DriverError,
    FakeDriver,
    FieldBusClient,
    FieldBusDriver,
)
from citybrain.models.fieldbus import (
    ApproachConfig,
    ApproachCounts,
    DetectorReading,
    FieldBusError,
    SignalReading,
)
from citybrain.models.messages import AckStatus, GreenWindow, IntervalStep, SignalPlan
from citybrain.models.signal import Indication
from citybrain.signal_plans.config import IntersectionConfig, state_from_reading, to_wire
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.state import normal_state_at
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

HOST = "127.0.0.1"


def _run(network: str = "arterial:3") -> Run:
    scenario = build(network, level=Level.MODERATE, duration_s=900, seed=4)
    return Run(scenario.net, scenario.trips)


@asynccontextmanager
async def _serving(run: Run, port: int = 0) -> AsyncIterator[FieldBusServer]:
    server = FieldBusServer(run, host=HOST, port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def _scripted(
    answer: Callable[[int], bytes | None], received: asyncio.Event | None = None
) -> AsyncIterator[tuple[int, Callable[[], Awaitable[None]]]]:
    """A cabinet that answers each request with ``answer(id)`` (``None``: never answers), and a
    function that hangs up on every client and stops listening."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while line := await reader.readline():
            if received is not None:
                received.set()
            reply = answer(msgspec.json.decode(line)["id"])
            if reply is not None:
                writer.write(reply + b"\n")

    server = await asyncio.start_server(serve, HOST, 0)

    async def hang_up() -> None:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()

    try:
        yield server.sockets[0].getsockname()[1], hang_up
    finally:
        await hang_up()


async def _eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_many_concurrent_requests_share_one_connection_and_each_gets_its_own_answer() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            await client.advance(300.0)
            drivers = [FieldBusDriver(client, node) for node in ("a01", "a02", "a03")] * 100
            calls: list[Awaitable[object]] = []
            for driver in drivers:
                calls += [driver.signals(), driver.config(), driver.detectors()]
            answers = await asyncio.gather(*calls)
            for index, driver in enumerate(drivers):
                shown, config, counts = answers[3 * index : 3 * index + 3]
                assert isinstance(shown, SignalReading)
                assert (
                    shown.groups
                    == run.controllers[driver.intersection].state_at(run.now).displays()
                )
                assert isinstance(config, IntersectionConfig)
                assert config.intersection == driver.intersection
                assert isinstance(counts, DetectorReading)
                assert all(a.approach.startswith(driver.intersection) for a in counts.approaches)
            assert server.connections == 1

    asyncio.run(scenario())


def test_a_thousand_drivers_on_one_connection() -> None:
    async def scenario() -> None:
        run = _run("grid:10x10")
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            nodes = sorted(run.controllers)
            drivers = [FieldBusDriver(client, nodes[i % len(nodes)]) for i in range(1000)]
            readings = await asyncio.gather(*(d.signals() for d in drivers))
            for driver, reading in zip(drivers, readings, strict=True):
                expected = run.controllers[driver.intersection].state_at(run.now).displays()
                assert reading.groups == expected
            assert server.connections == 1

    asyncio.run(scenario())


def test_config_is_the_plan_the_cabinet_runs() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            for node, controller in run.controllers.items():
                config = await FieldBusDriver(client, node).config()
                assert config.plan == controller.plan
                assert to_wire(config.plan) == to_wire(controller.plan)
                assert {a.approach for a in config.approaches} == {
                    a.id for a in run.net.road.network.approaches if a.intersection_id == node
                }

    asyncio.run(scenario())


def test_a_signals_reading_becomes_the_cabinets_controller_state() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            driver = FieldBusDriver(client, "a02")
            signals = (await driver.config()).signals
            for _ in range(30):
                await client.advance(7.0)
                state = state_from_reading(signals, await driver.signals())
                assert state == run.controllers["a02"].state_at(run.now)

    asyncio.run(scenario())


def test_a_plan_sent_through_the_driver_is_run_by_the_cabinet() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            driver = FieldBusDriver(client, "a01")
            now = await client.advance(400.0)
            plan = SignalPlan(
                plan_id="corridor-1",
                intersection="a01",
                seq=1,
                issued_at=now,
                valid_from=now,
                valid_until=now + 120.0,
                windows=(GreenWindow(signal_group="4", open_at=now + 40.0, close_at=now + 60.0),),
            )
            result = await driver.send_plan(plan)
            assert result == CommandResult(AckStatus.ACCEPTED)
            await client.advance(45.0)
            shown = await driver.signals()
            assert shown.groups["4"] is Indication.GREEN
            assert (shown.mode, shown.plan_id) == ("priority", "corridor-1")
            again = await driver.send_plan(plan)  # same seq: the cabinet refuses a replay
            assert again.status is AckStatus.REJECTED
            assert again.reason_code
            assert again.reason

    asyncio.run(scenario())


def test_unsafe_plans_come_back_rejected_not_as_errors() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            now = await client.advance(300.0)
            unsafe = SignalPlan(
                plan_id="bad",
                intersection="a01",
                seq=1,
                issued_at=now,
                valid_from=now,
                valid_until=now + 60,
                steps=(IntervalStep(at=now + 1, green=("2", "4")),),
            )
            result = await FieldBusDriver(client, "a01").send_plan(unsafe)
            assert result.status is AckStatus.REJECTED

    asyncio.run(scenario())


def test_an_unknown_intersection_is_not_recoverable() -> None:
    async def scenario() -> None:
        async with _serving(_run()) as server, FieldBusClient(host=HOST, port=server.port) as c:
            with pytest.raises(DriverError) as error:
                await FieldBusDriver(c, "nowhere").signals()
            assert (error.value.code, error.value.recoverable) == ("unknown_intersection", False)
            assert (await FieldBusDriver(c, "a01").signals()).groups  # the link is still up

    asyncio.run(scenario())


def test_a_lost_link_fails_pending_requests_recoverably_and_the_client_reconnects() -> None:
    async def scenario() -> None:
        received = asyncio.Event()
        async with _scripted(lambda _: None, received) as (port, hang_up):
            client = FieldBusClient(host=HOST, port=port, backoff_min_s=0.01, backoff_max_s=0.05)
            await client.connect()
            driver = FieldBusDriver(client, "a01")
            pending = asyncio.create_task(driver.signals())
            await received.wait()
            await hang_up()
            with pytest.raises(DriverError) as error:
                await pending
            assert (error.value.code, error.value.recoverable) == ("disconnected", True)
            with pytest.raises(DriverError) as error:  # while down: fail fast, recoverably
                await driver.signals()
            assert error.value.recoverable
        # The cabinet comes back on the same port: the client finds it by itself.
        run = _run()
        async with _serving(run, port):

            async def answered() -> bool:
                try:
                    return bool((await driver.signals()).groups)
                except DriverError as error:
                    assert error.recoverable
                    return False

            await _eventually(answered)
            assert client.reconnects == 1
        await client.close()

    asyncio.run(scenario())


def test_a_server_stopped_under_load_fails_only_recoverably_and_connect_restores_it() -> None:
    async def scenario() -> None:
        run = _run()
        async with _serving(run) as server:
            port = server.port
            client = FieldBusClient(host=HOST, port=port, reconnect=False)
            await client.connect()
            drivers = [FieldBusDriver(client, n) for n in ("a01", "a02", "a03")] * 50
            calls = [asyncio.create_task(d.signals()) for d in drivers]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert failures  # the server went away with requests in flight
        assert all(isinstance(f, DriverError) and f.recoverable for f in failures), failures
        for driver, outcome in zip(drivers, outcomes, strict=True):
            if isinstance(outcome, SignalReading):  # answered before the stop: and rightly
                assert (
                    outcome.groups
                    == run.controllers[driver.intersection].state_at(run.now).displays()
                )
        assert not client.connected
        async with _serving(run, port):
            await client.connect()
            assert (await drivers[0].signals()).groups
            await client.close()

    asyncio.run(scenario())


def test_a_silent_cabinet_times_out_recoverably() -> None:
    async def scenario() -> None:
        async with (
            _scripted(lambda _: None) as (port, _),
            FieldBusClient(host=HOST, port=port, timeout_s=0.1) as client,
        ):
            with pytest.raises(DriverError) as error:
                await FieldBusDriver(client, "a01").detectors()
            assert (error.value.code, error.value.recoverable) == ("timeout", True)
            assert client.connected

    asyncio.run(scenario())


def test_a_cabinet_configured_against_the_safety_rules_is_refused() -> None:
    plan = lead_lead_plan(nema_eight_group("a01"))
    wire = to_wire(plan)
    unsafe = msgspec.structs.replace(
        wire, groups=(msgspec.structs.replace(wire.groups[0], yellow_s=2.0), *wire.groups[1:])
    )
    result = msgspec.json.encode({"plan": unsafe, "approaches": []})

    def answer(request_id: int) -> bytes:
        return b'{"id": %d, "ok": true, "result": %s}' % (request_id, result)

    async def scenario() -> None:
        async with _scripted(answer) as (port, _), FieldBusClient(host=HOST, port=port) as client:
            with pytest.raises(DriverError) as error:
                await FieldBusDriver(client, "a01").config()
            assert (error.value.code, error.value.recoverable) == ("bad_config", False)
            assert "yellow_s" in str(error.value)
            with pytest.raises(DriverError) as error:
                await FieldBusDriver(client, "a01").signals()  # not a reading: refused too
            assert error.value.code == "protocol"

    asyncio.run(scenario())


def test_an_oversize_request_is_refused_before_it_is_sent() -> None:
    async def scenario() -> None:
        async with _serving(_run()) as server, FieldBusClient(host=HOST, port=server.port) as c:
            with pytest.raises(FieldBusError) as error:
                await c.signals("x" * 300_000)
            assert error.value.code == "too_large"
            assert (await c.hello()).intersections == 3

    asyncio.run(scenario())


def test_closed_drivers_and_clients_refuse_calls_for_good() -> None:
    async def scenario() -> None:
        async with _serving(_run()) as server:
            client = FieldBusClient(host=HOST, port=server.port)
            with pytest.raises(FieldBusError) as early:
                await client.hello()
            assert (early.value.code, early.value.recoverable) == ("not_connected", False)
            await client.connect()
            driver, other = FieldBusDriver(client, "a01"), FieldBusDriver(client, "a02")
            await driver.close()
            with pytest.raises(DriverError) as error:
                await driver.signals()
            assert (error.value.code, error.value.recoverable) == ("closed", False)
            assert (await other.signals()).groups  # the shared client is untouched
            await client.close()
            with pytest.raises(DriverError) as error:
                await other.signals()
            assert (error.value.code, error.value.recoverable) == ("closed", False)

    asyncio.run(scenario())


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_round_trip_figures() -> None:
    """Signals round trips on loopback, 2,000 each way: one driver in turn, then 100
    concurrent drivers on the same connection. Run with ``-s`` to see the figures."""

    async def timed(driver: FieldBusDriver, count: int, out: list[float]) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await driver.signals()
            out.append(time.perf_counter() - started)

    async def scenario() -> None:
        run = _run("grid:10x10")
        async with _serving(run) as server, FieldBusClient(host=HOST, port=server.port) as client:
            nodes = sorted(run.controllers)
            alone: list[float] = []
            await timed(FieldBusDriver(client, nodes[0]), 2000, alone)
            shared: list[float] = []
            started = time.perf_counter()
            await asyncio.gather(*(timed(FieldBusDriver(client, n), 20, shared) for n in nodes))
            wall = time.perf_counter() - started
        assert len(alone) == len(shared) == 2000
        for name, samples in (("1 driver", alone), ("100 drivers", shared)):
            print(
                f"\n{name}: median {statistics.median(samples) * 1e6:.0f} us, "
                f"p99 {_percentile(samples, 0.99) * 1e6:.0f} us"
            )
        print(f"100 drivers: {2000 / wall:.0f} requests/s over one connection")
        assert statistics.median(alone) < 0.05

    asyncio.run(scenario())


# --- The fake -------------------------------------------------------------------------------

PLAN = lead_lead_plan(nema_eight_group("X"), offset_s=7.0)
APPROACHES = [
    ApproachConfig(
        approach=f"X:{heading}",
        link=f"{heading}-X",
        lanes=3,
        length_m=200.0,
        speed_limit_mps=13.9,
        saturation_flow_vphpl=1800.0,
        advance_setback_m=60.0,
        groups=groups,
    )
    for heading, groups in (("E", ["2", "5"]), ("W", ["1", "6"]), ("N", ["4", "7"]))
]


def _fake() -> FakeDriver:
    return FakeDriver("X", PLAN, APPROACHES)


def test_the_fake_is_a_driver_and_shows_the_normal_plan_at_its_clock() -> None:
    async def scenario() -> None:
        fake = _fake()
        driver: ControllerDriver = fake
        assert driver.intersection == "X"
        config = await driver.config()
        assert (config.plan, list(config.approaches)) == (PLAN, APPROACHES)
        for at in (0.0, 33.0, 250.5):
            fake.now_s = at
            shown = state_from_reading(PLAN.signals, await driver.signals())
            assert shown == normal_state_at(PLAN, at)
        pinned = SignalReading(
            time=9.0, groups={"2": Indication.GREEN}, since={"2": None}, mode="priority"
        )
        fake.show(pinned)
        assert await driver.signals() is pinned
        fake.show(None)
        assert (await driver.signals()).time == 250.5

    asyncio.run(scenario())


def test_the_fake_reports_queued_detector_readings_then_empty_ones() -> None:
    async def scenario() -> None:
        fake = _fake()
        counts = ApproachCounts(
            approach="X:E",
            interval_s=1.0,
            stop_bar_count=2,
            stop_bar_occupancy=0.5,
            advance_count=3,
            advance_occupancy=0.1,
        )
        first = DetectorReading(time=1.0, approaches=[counts])
        fake.queue_detectors(first)
        assert await fake.detectors() is first
        fake.now_s = 5.0
        empty = await fake.detectors()
        assert [a.approach for a in empty.approaches] == ["X:E", "X:W", "X:N"]
        assert {(a.interval_s, a.stop_bar_count, a.advance_count) for a in empty.approaches} == {
            (5.0, 0, 0)
        }
        assert {a.interval_s for a in (await fake.detectors()).approaches} == {0.0}

    asyncio.run(scenario())


def test_the_fake_records_plans_without_judging_them_and_fails_on_cue() -> None:
    async def scenario() -> None:
        fake = _fake()
        unsafe = SignalPlan(
            plan_id="bad",
            intersection="X",
            seq=1,
            issued_at=0.0,
            valid_from=0.0,
            valid_until=60.0,
            steps=(IntervalStep(at=1.0, green=("2", "4")),),
        )
        assert await fake.send_plan(unsafe) == CommandResult(AckStatus.ACCEPTED)
        fake.result = CommandResult(AckStatus.REJECTED, "stale", "issued too long ago")
        assert (await fake.send_plan(unsafe)).status is AckStatus.REJECTED
        assert fake.sent == [unsafe, unsafe]
        fake.fail_next(2)
        for _ in range(2):
            with pytest.raises(DriverError) as error:
                await fake.send_plan(unsafe)
            assert error.value.recoverable
        assert len(fake.sent) == 2  # a plan lost on the way never reached the cabinet
        fake.fail_next(error=DriverError("gone", recoverable=False, code="unknown_intersection"))
        with pytest.raises(DriverError) as error:
            await fake.signals()
        assert not error.value.recoverable
        assert (await fake.signals()).groups
        await fake.close()
        with pytest.raises(DriverError) as error:
            await fake.config()
        assert (error.value.code, error.value.recoverable) == ("closed", False)

    asyncio.run(scenario())


def test_the_fake_refuses_a_plan_for_another_intersection() -> None:
    with pytest.raises(ValueError, match="intersection"):
        FakeDriver("Y", PLAN, APPROACHES)
