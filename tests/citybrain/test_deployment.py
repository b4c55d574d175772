"""The system as `citybrain security init` deploys it: Mosquitto with TLS, passwords and the ACL,
edge boxes with their own identities and trust store, the cloud leader as its own process with
its signing keyring, and an operator with a token. Faults are real: the cloud is killed with
SIGKILL and started again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.settings import load_settings
from citybrain.live import free_port
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

SPEED = 4.0
"""Simulated seconds per wall second."""

pytestmark = [pytest.mark.security, pytest.mark.broker, pytest.mark.slow]


async def _until(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.2)


class Cloud:
    """`citybrain cloud serve --config cloud/leader.toml` as its own process."""

    def __init__(self, broker: Any, tmp_path: Path) -> None:
        self.layout = broker.layout
        self.api = f"http://127.0.0.1:{free_port()}"
        self.command = [
            sys.executable, "-m", "citybrain", "cloud", "serve",
            "--config", str(self.layout.cloud / "leader.toml"),
            "--network", "arterial:4", "--broker", f"localhost:{broker.port}",
            "--api", self.api.removeprefix("http://"), "--rate", str(SPEED),
        ]  # fmt: skip
        self.log = tmp_path / "cloud.log"
        self.process: subprocess.Popen[bytes] | None = None
        token = (self.layout.root / "operators" / "dispatch.token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.command, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15.0)
            except subprocess.TimeoutExpired:
                self.kill()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.headers) as session,
            session.request(method, f"{self.api}{path}", json=body) as response,
        ):
            return response.status, await response.json()

    async def ready(self) -> bool:
        """The API answers and every intersection reports telemetry."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the cloud exited: {self.log.read_text()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError):
            status, body = await self.call("GET", "/v1/network")
            return status == 200 and body["reporting"] == body["intersections"]
        return False

    async def corridor(self, vehicle: str) -> dict[str, Any]:
        request = {
            "vehicle": vehicle, "origin": "a01s", "destination": "east", "priority": 8,
            "incident": "medical", "requester": "dispatch",
        }  # fmt: skip
        status, body = await self.call("POST", "/v1/corridors", request)
        assert status == 201, body
        corridor_id = body["corridor_id"]
        latest: dict[str, Any] = body

        async def confirmed() -> bool:
            nonlocal latest
            _, latest = await self.call("GET", f"/v1/corridors/{corridor_id}")
            return len(_due(latest)) >= 2 and all(i["confirmed"] for i in _due(latest))

        await _until(confirmed, 20.0, f"every window of {corridor_id} in the horizon confirmed")
        return latest


def _due(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The stop lines whose windows open within the rolling horizon (120 s): planned now."""
    return [
        line
        for line in status["intersections"]
        if line["window_open"] is not None and line["window_open"] <= status["updated_at"] + 120.0
    ]


@contextlib.asynccontextmanager
async def deployed_city(broker: Any, tmp_path: Path) -> AsyncIterator[Cloud]:
    scenario = build("arterial:4", level=Level.MODERATE, duration_s=3600, seed=5)
    run = Run(scenario.net, scenario.trips)
    run.advance(120.0)
    bus = FieldBusServer(run, speed=SPEED)
    bus_port = await bus.start()
    stop = asyncio.Event()
    hosts = []
    for box in broker.plan.boxes:
        settings = load_settings(
            broker.layout.edge(box) / "edge.toml",
            {
                "CITYBRAIN_EDGE__BROKER__PORT": str(broker.port),
                "CITYBRAIN_EDGE__CONTROLLER__PORT": str(bus_port),
                "CITYBRAIN_EDGE__BUFFER__PATH": str(tmp_path / f"state-{box}"),
                "CITYBRAIN_EDGE__LOG__LEVEL": "warning",
            },
        )
        agents: list[EdgeAgent] = []
        hosts.append(asyncio.create_task(run_host(settings, stop, started=agents.extend)))
    cloud = Cloud(broker, tmp_path)
    cloud.start()
    try:
        await _until(cloud.ready, 60.0, "the cloud up with every intersection reporting")
        yield cloud
    finally:
        cloud.stop()
        stop.set()
        for host in hosts:
            await asyncio.wait_for(host, 15.0)
        await bus.stop()


def test_a_cloud_killed_and_restarted_serves_the_next_corridor_fully_confirmed(
    secure_mosquitto: Any, tmp_path: Path
) -> None:
    """Without a durable epoch, a restarted cloud's plans start again at seq 1 and every
    edge refuses them as out of sequence (0 of N confirmed)."""

    async def scenario() -> None:
        async with deployed_city(secure_mosquitto, tmp_path) as cloud:
            first = await cloud.corridor("AMB-1")
            cloud.kill()
            cloud.start()
            await _until(cloud.ready, 60.0, "the restarted cloud up with every intersection")
            second = await cloud.corridor("AMB-2")
            assert second["corridor_id"] != first["corridor_id"]
            _, health = await cloud.call("GET", "/v1/health")
            detail = health["detail"]
            assert "acks_rejected" not in detail, detail

    asyncio.run(scenario())
