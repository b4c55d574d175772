"""The live system end to end, as ``citybrain demo`` runs it, on a short arterial: the embedded
amqtt broker (the path taken where Mosquitto is not installed) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from citybrain import live
from citybrain.live import LiveOptions, LiveResult, free_port, run_live

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


def test_the_live_system_runs_a_corridor_and_stores_every_telemetry_message(
    postgres: Any,
) -> None:
    options = LiveOptions(
        network="arterial:4", warmup_s=300.0, after_s=420.0, speed=10.0, broker="amqtt",
        dsn=postgres.create_database(),
    )  # fmt: skip
    result = asyncio.run(run_live(options))
    live = result.summary()
    assert live["broker"] == "amqtt (embedded)"
    assert live["edges"] == 4
    assert live["telemetry_messages"] > 4 * 40
    assert live["telemetry_rows"] == live["telemetry_messages"]
    assert live["plans_sent"] > 0
    assert live["plans_acked"] >= 0.9 * live["plans_sent"]
    assert live["rejected_messages"] == 0
    amb = live["ambulance"]
    assert amb["corridor"]["travel_time_s"] < amb["no_priority"]["travel_time_s"]
    assert live["plan_latency_ms"]["p50"] < 1000.0


def test_kept_running_the_live_system_answers_its_api_until_interrupted(postgres: Any) -> None:
    options = LiveOptions(
        network="arterial:2", warmup_s=300.0, after_s=360.0, speed=20.0, broker="amqtt",
        dsn=postgres.create_database(), keep_running=True,
    )  # fmt: skip
    said: list[str] = []
    answers: list[int] = []

    def ready(result: LiveResult) -> None:
        """Results are ready while everything still runs: the operator can sign in."""
        assert result.summary()["edges"] == 2
        asyncio.get_running_loop().create_task(_sign_in_then_interrupt(said, answers))

    result = asyncio.run(run_live(options, progress=said.append, ready=ready))
    assert answers == [200]
    assert result.summary()["ambulance"]["corridor"]["travel_time_s"] > 0
    assert any(line.startswith("console: http://127.0.0.1:") for line in said)
    (kept,) = [line for line in said if line.startswith("it stays up until Ctrl-C; ")]
    assert "traffic goes on for 240 min of simulated time (12 min at 20x)" in kept


async def _sign_in_then_interrupt(said: list[str], answers: list[int]) -> None:
    api = [line.split()[2] for line in said if line.startswith("cloud API: ")][-1]
    console = [line for line in said if line.startswith("console: ")][-1]
    token = Path(console.rsplit(" ", 1)[1].rstrip(")")).read_text().strip()
    await asyncio.sleep(0.5)  # past the point where Ctrl-C is awaited
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{api}/v1/me", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        answers.append(response.status)
    os.kill(os.getpid(), signal.SIGINT)


def test_a_free_port_is_below_the_ephemeral_range_so_no_client_can_take_it() -> None:
    first, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < first for port in ports)
    assert len(ports) > 1, "the same port every time: parallel tests would collide"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


@pytest.mark.parametrize("range_text", ["1024 65535", "", "not ports"])
def test_a_free_port_is_still_found_when_the_range_leaves_no_room_or_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, range_text: str
) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(range_text)
    monkeypatch.setattr(live, "_EPHEMERAL_RANGE", ranges)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
