from __future__ import annotations

import asyncio

import msgspec
import pytest

from citybrain.models.messages import AckStatus, IntervalStep, SignalPlan
from citybrain.models.signal import Indication
from citybrain.simulator.fieldbus import (
    MAX_LINE_BYTES,
    FieldBusClient,
    FieldBusError,
    FieldBusServer,
)
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
                assert hello["intersections"] == 3
                assert await client.advance(600.0) == pytest.approx(600.0)
                shown = await client.signals("a01")
                assert set(shown) == set("12345678")
                assert set(shown.values()) <= set(Indication)
                readings = await client.detectors("a01")
                assert {r["approach"] for r in readings} == {"a01:E", "a01:W", "a01:N", "a01:S"}
                assert sum(r["stop_bar_count"] for r in readings) > 0
                again = await client.detectors("a01")
                assert all(r["interval_s"] == 0.0 for r in again)
                truth = await client.ground_truth("a01")
                assert truth == run.detectors.true_queues("a01")
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
                status, code, reason = await client.send_plan("a01", unsafe)
                assert status is AckStatus.REJECTED
                assert code in {"conflicting_greens", "no_yellow"}
                assert reason
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
            assert server.core.rejected >= 4
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                assert (await client.hello())["protocol"] == 1
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
