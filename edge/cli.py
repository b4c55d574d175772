"""``citybrain-edge``: run the agents of one box, check their configuration, diagnose links.

    citybrain-edge check-config --config /etc/citybrain/edge.toml
    citybrain-edge doctor --config /etc/citybrain/edge.toml
    citybrain-edge run --config /etc/citybrain/edge.toml

Settings come from the TOML file plus ``CITYBRAIN_EDGE__SECTION__KEY`` environment overrides
(see ``edge/deploy/README.md``). Exit codes: 0 fine, 1 a check failed, 2 bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as paho

from citybrain.edge.agent import load_trust, run_host
from citybrain.edge.drivers import FieldBusClient
from citybrain.edge.mqtt import paho_client
from citybrain.edge.settings import EdgeSettings, SettingsError, describe, load_settings
from citybrain.models.errors import CitybrainError

log = logging.getLogger("citybrain.edge")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citybrain-edge", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "check-config", "doctor"])
    parser.add_argument("--config", type=Path, help="the TOML settings file")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, os.environ)
    except SettingsError as error:
        print(f"citybrain-edge: bad settings: {error}", file=sys.stderr)
        return 2
    _logging(settings)
    if args.command == "check-config":
        print(describe(settings))
        return 0
    if args.command == "doctor":
        return asyncio.run(doctor(settings))
    return _run(settings)


def _logging(settings: EdgeSettings) -> None:
    handler = logging.StreamHandler()
    if settings.log.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level.upper())


def _run(settings: EdgeSettings) -> int:
    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # once the agents run, what start-up built lives as long as the process: out of the
        # collector's sight, full collections stay short (they would land in a plan's ack)
        await run_host(settings, stop, started=lambda _agents: gc.freeze())

    try:
        asyncio.run(serve())
    except CitybrainError as error:
        log.error("stopped: %s", error)
        return 1
    return 0


async def doctor(settings: EdgeSettings) -> int:
    """Check everything an agent needs and say plainly what is wrong."""
    checks: list[tuple[str, str | None]] = [
        ("buffer directory writable", _check_buffer(settings.buffer.path)),
        ("trust store of the cloud's keys", _check_trust(settings)),
    ]
    checks += await _check_controller(settings)
    checks.append(("broker round trip", await asyncio.to_thread(_check_broker, settings)))
    for name, problem in checks:
        print(
            f"{'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else "")
        )
    failed = sum(1 for _, problem in checks if problem is not None)
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


def _check_trust(settings: EdgeSettings) -> str | None:
    try:
        load_trust(settings)
    except SettingsError as error:
        return error.reason
    return None


def _check_buffer(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    return None


async def _check_controller(settings: EdgeSettings) -> list[tuple[str, str | None]]:
    controller = settings.controller
    if controller.driver == "fake":
        return [("controller link", None)]
    where = f"{controller.host}:{controller.port}"
    client = FieldBusClient(
        host=controller.host, port=controller.port, timeout_s=controller.timeout_s, reconnect=False
    )
    try:
        await client.connect()
        hello = await client.hello()
    except CitybrainError as error:
        await client.close()
        return [(f"controller link {where}", str(error))]
    results: list[tuple[str, str | None]] = [(f"controller link {where}", None)]
    try:
        names = settings.hosted(hello.names)
    except CitybrainError as error:
        await client.close()
        return [*results, ("hosted intersections", str(error))]
    problems = []
    for name in names:
        try:
            await client.config(name)
            reading = await client.signals(name)
            await client.detectors(name)
        except CitybrainError as error:
            problems.append(f"{name}: {error}")
            continue
        if reading.time != hello.time and abs(reading.time - hello.time) > 5.0 and hello.paced:
            problems.append(f"{name}: its clock is {reading.time - hello.time:+.1f} s off the bus")
    await client.close()
    shown = ", ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
    results.append((f"{len(names)} cabinets answer (config, signals, detectors)", shown or None))
    return results


def _check_broker(settings: EdgeSettings) -> str | None:
    """Connect, subscribe, publish at QoS 1 and receive it back, with the agents' credentials."""
    broker = settings.broker
    topic = f"cb/v1/{settings.region}/doctor/{os.getpid()}"
    received = threading.Event()
    connected = threading.Event()
    problem: list[str] = []
    try:
        client = paho_client(
            broker=broker,
            client_id=f"{broker.client_id_prefix}-doctor-{os.getpid()}",
            clean_session=True,
        )
    except (OSError, ValueError, CitybrainError) as error:
        return f"cannot connect to {broker.host}:{broker.port}: {error}"

    def on_connect(c: paho.Client, u: object, f: object, reason: object, p: object) -> None:
        if getattr(reason, "is_failure", False):
            problem.append(f"the broker refused the connection: {reason}")
        else:
            c.subscribe(topic, qos=1)
        connected.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda c, u, mid, codes, p: c.publish(topic, b"doctor", qos=1)
    client.on_message = lambda c, u, message: received.set()
    try:
        started = time.monotonic()
        client.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ValueError) as error:
        return f"cannot reach {broker.host}:{broker.port}: {error}"
    client.loop_start()
    try:
        if not connected.wait(5.0):
            return f"{broker.host}:{broker.port} accepted TCP but sent no CONNACK within 5 s"
        if problem:
            return problem[0]
        if not received.wait(5.0):
            return "connected, but a QoS 1 message to ourselves did not come back within 5 s"
        print(f"     broker round trip {1000 * (time.monotonic() - started):.1f} ms (with connect)")
        return None
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
