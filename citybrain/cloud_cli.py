"""``citybrain cloud serve``: the cloud service as its own process; ``check-config``.

    citybrain cloud check-config --config /etc/citybrain/cloud.toml
    citybrain cloud serve --config /etc/citybrain/cloud.toml
    citybrain cloud serve --config deploy/cloud/leader.toml --dsn postgresql://...
    citybrain cloud serve --network city.json --role ingest --share-group ingest --dsn ...

Settings (``cloud/settings.py``, example ``cloud/deploy/cloud.example.toml``): the defaults,
then the ``--config`` file, then ``CITYBRAIN_CLOUD__SECTION__KEY`` environment variables, then
the flags given, each winning over the one before. Exit codes: 0 fine, 2 bad settings (one
line per problem) or the service stopped on an error.

A leader keeps the city's state, runs the corridors and answers operators on its HTTP API;
ingest workers only store telemetry taken through a shared subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from citybrain.models.errors import CitybrainError
from citybrain.models.settings import SettingsError

if TYPE_CHECKING:
    from citybrain.cloud.settings import CloudSettings
    from citybrain.models.signing import PlanSigner

log = logging.getLogger("citybrain.cloud")


def add_commands(commands: Any) -> None:
    cloud = commands.add_parser("cloud", help="the cloud service")
    sub = cloud.add_subparsers(dest="cloud_command", required=True)
    options = argparse.ArgumentParser(add_help=False)
    _add_options(options)
    sub.add_parser("serve", parents=[options], help="run the cloud service until SIGTERM")
    sub.add_parser(
        "check-config", parents=[options],
        help="print the effective settings (secrets masked), or each problem; exit 2 if any",
    )  # fmt: skip


def _add_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config", type=Path, help="the TOML settings file (environment and flags win over it)"
    )
    serve.add_argument("--network", help="arterial[:N] (default arterial), grid:RxC or a file")
    serve.add_argument("--broker", help="host:port of the broker (default 127.0.0.1:1883)")
    serve.add_argument(
        "--username", help="broker user name (password from --password-file, else from "
        "CITYBRAIN_CLOUD__BROKER__PASSWORD or CITYBRAIN_MQTT_PASSWORD)",
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
        "--allow-insecure", action="store_const", const=True,
        help="accept a broker session without a user name, or a password in clear text",
    )  # fmt: skip
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
"""The defaults of ``serve``'s options, as ``--help`` gives them: those of ``cloud/settings.py``
(a test holds them equal), written out so that ``citybrain --help`` need not import the cloud."""


def main(args: argparse.Namespace) -> int:
    from citybrain.cloud.settings import describe, load_settings

    try:
        settings = load_settings(args.config, os.environ, flags(args))
    except SettingsError as error:
        for line in str(error).splitlines():
            print(f"citybrain: bad settings: {line}", file=sys.stderr)
        return 2
    if args.cloud_command == "check-config":
        print(describe(settings))
        return 0
    if not getattr(args, "verbose", False):
        logging.getLogger("citybrain").setLevel(settings.log.level.upper())
    try:
        return asyncio.run(_serve(settings))
    except CitybrainError as error:
        log.error("stopped: %s", error)
        return 2


def flags(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """The settings the flags given set: key path -> (flag, value)."""
    from citybrain.cloud.settings import ADDRESSES, FLAT_KEYS, SCHEMA, flag_value

    given: dict[str, tuple[str, Any]] = {}
    for name in ADDRESSES:
        if getattr(args, name) is not None:
            given[name] = (f"--{name}", getattr(args, name))
    for name in (*SCHEMA.top, *FLAT_KEYS, "allow_insecure"):
        value = getattr(args, name, None)
        if value is not None:
            key = FLAT_KEYS.get(name, "broker.allow_insecure" if name == "allow_insecure" else name)
            given[key] = (f"--{name.replace('_', '-')}", flag_value(value))
    return given


async def _serve(settings: CloudSettings) -> int:
    from citybrain.cloud.api import serve_api
    from citybrain.cloud.auth import TokenFile
    from citybrain.cloud.clock import ControllerClock
    from citybrain.cloud.core import CloudCore
    from citybrain.cloud.service import CloudService, Role
    from citybrain.cloud.storage import PostgresStore, TelemetryWriter
    from citybrain.simulator.scenarios import load_network

    road = load_network(settings.network)
    role = Role(settings.role)
    signer, epoch = _signing(settings) if role is Role.LEADER else (None, 0)
    token_file = settings.api.token_file
    tokens = TokenFile(token_file) if role is Role.LEADER and token_file is not None else None
    core = CloudCore(
        road.network, road.plans, wall_clock=time.monotonic,
        settings=settings.corridor.core(epoch=epoch),
    )  # fmt: skip
    dsn = settings.database.dsn
    store = await PostgresStore.open(dsn) if dsn else None
    writer = TelemetryWriter(store) if store is not None else None
    service = CloudService(
        core, signer=signer, settings=settings.service(), storage=writer,
        clock=ControllerClock(rate=settings.clock.rate),
    )  # fmt: skip
    if writer is not None:
        writer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api_at = f"{settings.api.host}:{settings.api.port}"
    api = (
        await serve_api(service, settings.api.host, settings.api.port, tokens=tokens)
        if tokens
        else None
    )
    if api is not None:
        host, port = api.addresses[0][:2]
        log.info(
            "operator console on http://%s:%d/console/ (sign in with an API token)", host, port
        )
    log.info(
        "cloud %s: %d intersections, broker %s:%d, storage %s, API %s",
        role, len(core.seen), settings.broker.host, settings.broker.port,
        store.flavor if store else "none", api_at if api else "off",
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


def _signing(settings: CloudSettings) -> tuple[PlanSigner, int]:
    """A leader's signing key and its epoch, taken (and recorded) before any plan leaves."""
    from citybrain.cloud.epoch import next_epoch
    from citybrain.cloud.keys import Keyring

    keys = settings.signing.keys
    if keys is None:  # the settings refuse a leader without one
        raise CitybrainError("signing.keys: a leader signs its plans: give --keys DIR")
    signer = Keyring(keys).signer()
    return signer, next_epoch(settings.signing.state_dir / "epoch", wall_s=time.time())
