"""``citybrain cloud serve``: the cloud service as its own process.

    citybrain cloud serve --network arterial --broker 127.0.0.1:1883 --dsn postgresql://...
    citybrain cloud serve --network city.json --role ingest --share-group ingest --dsn ...
    citybrain cloud serve --config deploy/cloud/leader.toml --dsn ...

``--config`` names a TOML file of the same options (``security init`` writes one per role);
flags given on the command line win over it.

A leader keeps the city's state, runs the corridors and answers operators on its HTTP API;
ingest workers only store telemetry taken through a shared subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import gc
import logging
import signal
import time
import tomllib
from pathlib import Path
from typing import Any, Final

from citybrain.cloud.epoch import next_epoch
from citybrain.cloud.keys import Keyring
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.models.signing import PlanSigner

log = logging.getLogger("citybrain.cloud")


def add_commands(commands: Any) -> None:
    cloud = commands.add_parser("cloud", help="the cloud service")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)
    serve = sub.add_parser("serve", help="run the cloud service until SIGTERM")
    serve.add_argument(
        "--config", type=Path, help="a TOML file of these options (flags win over it)"
    )
    serve.add_argument("--network", help="arterial[:N] (default arterial), grid:RxC or a file")
    serve.add_argument("--broker", help="host:port of the broker (default 127.0.0.1:1883)")
    serve.add_argument(
        "--username", help="broker user name (password from --password-file, else from "
        "CITYBRAIN_MQTT_PASSWORD)",
    )  # fmt: skip
    serve.add_argument(
        "--password-file", type=Path, help="the broker password, read at each connection"
    )
    serve.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, help="TLS to the broker (default off)"
    )
    serve.add_argument("--ca-file", type=Path, help="the CA of the broker's certificate")
    serve.add_argument("--cert-file", type=Path, help="a client certificate, if the broker asks")
    serve.add_argument("--key-file", type=Path, help="the client certificate's private key")
    serve.add_argument(
        "--region", help="the region served (default live, the demo's); '+' takes every region "
        "and learns each intersection's from its first message",
    )  # fmt: skip
    serve.add_argument("--role", choices=["leader", "ingest"], help="default leader")
    serve.add_argument("--share-group", help="take telemetry through $share/<group>/...")
    serve.add_argument("--client-id", help="MQTT client id, unique (default citybrain-cloud)")
    serve.add_argument("--dsn", help="PostgreSQL connection string (no storage without one)")
    serve.add_argument(
        "--keys", type=Path, help="the plan-signing keyring (`citybrain security init`); "
        "a leader needs it",
    )  # fmt: skip
    serve.add_argument(
        "--state-dir", type=Path,
        help="where the cloud keeps its epoch, so plans stay newer across restarts (default "
        "citybrain-cloud-state)",
    )  # fmt: skip
    serve.add_argument("--api", help="host:port of the operator API (default 127.0.0.1:8080)")
    serve.add_argument(
        "--tokens", type=Path, help="the operator API's token file (`citybrain security token "
        "add`); a leader needs it",
    )  # fmt: skip
    serve.add_argument(
        "--rate", type=float, help="controller seconds per wall second (default 1, as in the "
        "field; a simulation's pace)",
    )  # fmt: skip


SERVE_DEFAULTS: Final[dict[str, Any]] = {
    "network": "arterial", "broker": "127.0.0.1:1883", "region": "live", "role": "leader",
    "client_id": "citybrain-cloud", "api": "127.0.0.1:8080", "rate": 1.0, "tls": False,
    "state_dir": Path("citybrain-cloud-state"),
}  # fmt: skip
CONFIG_KEYS: Final[dict[str, type]] = {
    "network": str, "broker": str, "username": str, "password_file": Path, "tls": bool,
    "ca_file": Path, "cert_file": Path, "key_file": Path, "region": str, "role": str,
    "share_group": str, "client_id": str, "dsn": str, "keys": Path, "state_dir": Path,
    "api": str, "tokens": Path, "rate": float,
}  # fmt: skip
"""What ``--config`` may set: every ``serve`` option (a password only through its file)."""


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args))
    except CitybrainError as error:
        log.error("stopped: %s", error)
        return 2


def _host_port(text: str, name: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValidationError(name, f"expected host:port, got {text!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> int:
    import os

    from citybrain.cloud.api import serve_api
    from citybrain.cloud.auth import TokenFile
    from citybrain.cloud.clock import ControllerClock
    from citybrain.cloud.core import CloudCore, CoreSettings
    from citybrain.cloud.corridor import Settings
    from citybrain.cloud.service import (
        CloudService,
        Role,
        ServiceSettings,
    )
    from citybrain.cloud.storage import PostgresStore, TelemetryWriter
    from citybrain.simulator.scenarios import load_network

    args = configured(args)
    broker_host, broker_port = _host_port(args.broker, "broker")
    api_host, api_port = _host_port(args.api, "api")
    road = load_network(args.network)
    role = Role(args.role)
    signer, epoch = _signing(args) if role is Role.LEADER else (None, 0)
    tokens = None
    if role is Role.LEADER:
        if args.tokens is None:
            raise ValidationError("tokens", "a leader's API authenticates: give --tokens FILE")
        tokens = TokenFile(args.tokens)
    core = CloudCore(
        road.network, road.plans, wall_clock=time.monotonic,
        settings=CoreSettings(corridor=Settings(epoch=epoch)),
    )  # fmt: skip
    settings = ServiceSettings(
        broker_host=broker_host, broker_port=broker_port, username=args.username,
        password=None if args.password_file else os.environ.get("CITYBRAIN_MQTT_PASSWORD"),
        password_file=args.password_file, tls=args.tls, ca_file=args.ca_file,
        cert_file=args.cert_file, key_file=args.key_file, client_id=args.client_id,
        region=args.region, role=role, share_group=args.share_group,
    )  # fmt: skip
    store = await PostgresStore.open(args.dsn) if args.dsn else None
    writer = TelemetryWriter(store) if store is not None else None
    service = CloudService(
        core, signer=signer, settings=settings, storage=writer,
        clock=ControllerClock(rate=args.rate),
    )  # fmt: skip
    if writer is not None:
        writer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = await serve_api(service, api_host, api_port, tokens=tokens) if tokens else None
    if api is not None:
        host, port = api.addresses[0][:2]
        log.info(
            "operator console on http://%s:%d/console/ (sign in with an API token)", host, port
        )
    log.info(
        "cloud %s: %d intersections, broker %s, storage %s, API %s",
        role, len(core.seen), args.broker, store.flavor if store else "none",
        args.api if api else "off",
    )  # fmt: skip
    # What start-up built (the network, the core, numba, the libraries) lives as long as the
    # process: out of the collector's sight, a full collection takes ~1 ms instead of ~57 ms,
    # which otherwise lands in some corridor request's latency.
    gc.freeze()
    try:
        await service.run(stop)
    finally:
        if api is not None:
            await api.cleanup()
        if writer is not None:
            await writer.close()
        if store is not None:
            await store.close()
    return 0


def _signing(args: argparse.Namespace) -> tuple[PlanSigner, int]:
    """A leader's signing key and its epoch, taken (and recorded) before any plan leaves."""
    if args.keys is None:
        raise ValidationError("keys", "a leader signs its plans: give --keys DIR")
    signer = Keyring(args.keys).signer()
    return signer, next_epoch(args.state_dir / "epoch", wall_s=time.time())


def configured(args: argparse.Namespace) -> argparse.Namespace:
    """The ``serve`` options: the defaults, then ``--config``'s file, then the flags given."""
    values = dict(SERVE_DEFAULTS)
    if args.config is not None:
        values |= read_config(args.config)
    values |= {key: getattr(args, key) for key in CONFIG_KEYS if getattr(args, key) is not None}
    return argparse.Namespace(**(vars(args) | values))


def read_config(path: Path) -> dict[str, Any]:
    """A ``--config`` file's options, checked; its paths are taken from its own folder."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ValidationError(str(path), f"cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValidationError(str(path), str(error)) from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        kind = CONFIG_KEYS.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValidationError(f"{path}: {key}", f"unknown option{hint}")
        values[key] = _config_value(f"{path}: {key}", value, kind, path.parent.absolute())
    if values.get("role", "leader") not in ("leader", "ingest"):
        raise ValidationError(f"{path}: role", f"leader or ingest, not {values['role']!r}")
    return values


def _config_value(name: str, value: Any, kind: type, base: Path) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wanted = str if kind is Path else kind
    if not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool)):
        raise ValidationError(name, f"expected {wanted.__name__}, got {value!r}")
    if value == "":
        raise ValidationError(name, "is empty")
    return base / str(value) if kind is Path else value
