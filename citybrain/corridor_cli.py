"""``citybrain corridor``: request, list, show, watch and cancel corridors over the operators' API.

A client of the HTTP contract in ``docs/api.md`` (it does not import the server, which pulls in
the routing kernels). Every call carries the user's bearer token, read from ``--token-file`` (a
file only its owner may read) or else from ``$CITYBRAIN_TOKEN``. Exit codes: 0 done
(``watch``: completed), 1 ``watch`` saw the corridor end otherwise, 2 the request was refused
(bad input, unknown id, duplicate, unreachable destination, no or a refused token), 3 the API
could not be reached or could not act (connection, timeout, 5xx).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from citybrain.models.checks import check_number
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_private_file
from citybrain.models.messages import CorridorIntersection, CorridorState, CorridorStatus

if TYPE_CHECKING:
    import aiohttp

API_ENV = "CITYBRAIN_API"
TOKEN_ENV = "CITYBRAIN_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_API = "http://127.0.0.1:8080"
TERMINAL = frozenset(
    {
        CorridorState.COMPLETED,
        CorridorState.REJECTED,
        CorridorState.CANCELLED,
        CorridorState.TIMED_OUT,
        CorridorState.FAILED,
    }
)
WATCH_PATIENCE_S = 30.0
"""How long ``watch`` keeps polling through an outage once it has seen the corridor."""
EXIT_ENDED, EXIT_REFUSED, EXIT_UNREACHABLE = 1, 2, 3
_TIME_WIDTH = 10


class _RefusedError(Exception):
    """Bad input, said by us or by the API (4xx): exit 2."""


class _UnreachableError(Exception):
    """No usable answer from the API (connection, timeout, 5xx): exit 3."""


class _ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str
    field: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail


class _CorridorList(msgspec.Struct, frozen=True):
    corridors: list[CorridorStatus]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        default=os.environ.get(API_ENV, DEFAULT_API),
        help=f"the operators' API (default: ${API_ENV} or {DEFAULT_API})",
    )
    common.add_argument(
        "--token-file", type=Path, help=f"the file holding your API token (default: ${TOKEN_ENV})"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    corridor = commands.add_parser(
        "corridor",
        help="emergency corridors through the operators' API",
        description="Exit codes: 0 done, 1 a watched corridor did not complete, 2 refused "
        "(bad input, unknown id, duplicate, unreachable), 3 API unreachable or failing.",
    )
    sub = corridor.add_subparsers(dest="corridor_command", required=True)
    request = sub.add_parser("request", parents=[common], help="request a corridor")
    request.add_argument("--vehicle", required=True)
    request.add_argument(
        "--from",
        dest="origin",
        help="intersection or link (default: where the vehicle's AVL unit last reported)",
    )
    request.add_argument("--to", dest="destination", help="intersection or link")
    request.add_argument(
        "--route", nargs="+", metavar="INTERSECTION", help="a fixed route, instead of --to"
    )
    request.add_argument("--priority", type=int, default=5, help="1 (lowest) to 10 (highest)")
    request.add_argument(
        "--incident", help="the incident type (medical, fire, ...): operators must give one"
    )
    listing = sub.add_parser("list", parents=[common], help="list corridors")
    listing.add_argument("--active", action="store_true", help="only those not yet ended")
    show = sub.add_parser("show", parents=[common], help="one corridor, stop line by stop line")
    show.add_argument("corridor_id")
    watch = sub.add_parser(
        "watch", parents=[common], help="follow a corridor until it ends (exit 0 if completed)"
    )
    watch.add_argument("corridor_id")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a corridor")
    cancel.add_argument("corridor_id")
    cancel.add_argument("--reason", default=None)


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (_RefusedError, ValidationError) as error:
        print(f"citybrain: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except _UnreachableError as error:
        print(f"citybrain: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    import aiohttp  # the cloud's client library: imported when a command talks to the API

    base = _base_url(args.api)
    check_number("timeout", args.timeout, gt=0.0, le=600.0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    token = _token(args.token_file)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = _Api(session, base, token)
        command = args.corridor_command
        if command == "request":
            body = {
                "vehicle": args.vehicle,
                "origin": args.origin,
                "destination": args.destination,
                "route": args.route,
                "priority": args.priority,
                "incident": args.incident,
            }
            raw = await api.call(
                "POST", "/v1/corridors", {k: v for k, v in body.items() if v is not None}
            )
            _print_status(raw, args.json, table=True)
        elif command == "list":
            raw = await api.call("GET", f"/v1/corridors?active={str(args.active).lower()}")
            _print_list(raw, args.json)
        elif command == "show":
            raw = await api.call("GET", f"/v1/corridors/{_quote(args.corridor_id)}")
            _print_status(raw, args.json, table=True)
        elif command == "cancel":
            reason = None if args.reason is None else {"reason": args.reason}
            path = f"/v1/corridors/{_quote(args.corridor_id)}/cancel"
            _print_status(await api.call("POST", path, reason), args.json, table=False)
        else:
            check_number("interval", args.interval, gt=0.0, le=60.0)
            return await _watch(api, args.corridor_id, args.interval, as_json=args.json)
    return 0


class _Api:
    """One HTTP call each, failures sorted into refused (exit 2) and unreachable (exit 3)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.token = token

    async def call(self, method: str, path: str, body: object = None) -> bytes:
        import aiohttp

        url = f"{self.base.rstrip('/')}{path}"
        data = None if body is None else msgspec.json.encode(body)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, url, data=data, headers=headers) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise _UnreachableError(f"cannot reach the API at {self.base}: {reason}") from None
        if status < 300:
            return payload
        try:
            detail = msgspec.json.decode(payload, type=_ErrorBody).error
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise _UnreachableError(f"unexpected answer from {self.base}: HTTP {status}") from None
        where = f" {detail.field}" if detail.field else ""
        text = f"{detail.code}{where}: {detail.message}"
        if status < 500:
            raise _RefusedError(text)
        raise _UnreachableError(f"the API at {self.base} failed: {text}")

    async def corridor(self, corridor_id: str) -> tuple[bytes, CorridorStatus]:
        raw = await self.call("GET", f"/v1/corridors/{_quote(corridor_id)}")
        return raw, _decode_status(raw)


async def _watch(api: _Api, corridor_id: str, interval_s: float, *, as_json: bool) -> int:
    """Poll until the corridor ends, printing what changed: the table first, then one line per
    change. Once the corridor has been seen, an outage is waited out for a while."""
    shown: CorridorStatus | None = None
    failing_since: float | None = None
    while True:
        try:
            raw, status = await api.corridor(corridor_id)
        except _UnreachableError as error:
            if shown is None:
                raise
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
                print(f"citybrain: {error}; retrying", file=sys.stderr, flush=True)
            elif now - failing_since > WATCH_PATIENCE_S:
                raise
            await asyncio.sleep(interval_s)
            continue
        failing_since = None
        if as_json:
            if shown is None or _changed(shown, status):
                print(raw.decode(), flush=True)
        else:
            for line in _changes(shown, status):
                print(line, flush=True)
        if status.state in TERMINAL:
            return 0 if status.state is CorridorState.COMPLETED else EXIT_ENDED
        shown = status
        await asyncio.sleep(interval_s)


def _changed(old: CorridorStatus, new: CorridorStatus) -> bool:
    return (old.state, old.reason, old.route, old.intersections) != (
        new.state,
        new.reason,
        new.route,
        new.intersections,
    )


def _changes(old: CorridorStatus | None, new: CorridorStatus) -> list[str]:
    if old is None or old.route != new.route or len(old.intersections) != len(new.intersections):
        return [_summary(new), *_table(new, lead=_TIME_WIDTH)]
    lines = []
    width = _width(new)
    if old.state is not new.state or old.reason != new.reason:
        because = f" ({new.reason})" if new.reason else ""
        lines.append(f"{new.updated_at:>{_TIME_WIDTH}.1f}  {old.state} -> {new.state}{because}")
    for before, now in zip(old.intersections, new.intersections, strict=True):
        if before != now:
            lines.append(f"{new.updated_at:>{_TIME_WIDTH}.1f}{_row(now, width)}")
    return lines


def _summary(status: CorridorStatus) -> str:
    route = " > ".join(status.route) if status.route else "-"
    because = f" ({status.reason})" if status.reason else ""
    return (
        f"{status.corridor_id}  vehicle {status.vehicle}  {status.state}{because}  "
        f"priority {status.priority}  route {route}  updated {status.updated_at:.1f}"
    )


def _table(status: CorridorStatus, *, lead: int = 0) -> list[str]:
    """The stop lines, one row each, after ``lead`` blank columns (``watch`` puts times there)."""
    if not status.intersections:
        return [f"{'':>{lead}}  (no stop lines planned)"]
    width = _width(status)
    header = f"{'':>{lead}}  {'intersection':<{width}}  {'eta':>10}  {'window':<23}  "
    return [
        header + f"{'arrival':>10}  confirmed",
        *(f"{'':>{lead}}{_row(row, width)}" for row in status.intersections),
    ]


def _width(status: CorridorStatus) -> int:
    return max([12, *(len(row.intersection) for row in status.intersections)])


def _row(row: CorridorIntersection, width: int) -> str:
    window = "-"
    if row.window_open is not None and row.window_close is not None:
        window = f"{row.window_open:.1f}-{row.window_close:.1f}"
    arrival = "-" if row.actual_arrival is None else f"{row.actual_arrival:.1f}"
    confirmed = "yes" if row.confirmed else "no"
    return (
        f"  {row.intersection:<{width}}  {row.eta:>10.1f}  {window:<23}  {arrival:>10}  {confirmed}"
    )


def _print_status(raw: bytes, as_json: bool, *, table: bool) -> None:
    if as_json:
        print(raw.decode())
        return
    status = _decode_status(raw)
    print(_summary(status))
    if table:
        print("\n".join(_table(status)))


def _print_list(raw: bytes, as_json: bool) -> None:
    if as_json:
        print(raw.decode())
        return
    try:
        corridors = msgspec.json.decode(raw, type=_CorridorList).corridors
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _UnreachableError(f"unexpected answer from the API: {error}") from None
    print("\n".join(_summary(status) for status in corridors) or "no corridors")


def _decode_status(raw: bytes) -> CorridorStatus:
    try:
        return msgspec.json.decode(raw, type=CorridorStatus)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise _UnreachableError(f"unexpected answer from the API: {error}") from None


def _base_url(text: str) -> str:
    try:
        url = urllib.parse.urlsplit(text)
        host = url.hostname
    except ValueError:
        host = None
    if not host or url.scheme not in ("http", "https"):
        raise _RefusedError(f"--api: expected an http:// or https:// address, got {text!r}")
    return text


def _token(path: Path | None) -> str:
    """The bearer token: the file's (private to its owner, like any secret), else the
    environment's."""
    if path is not None:
        check_private_file(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise _RefusedError(f"--token-file: cannot read {path}: {error}") from None
    else:
        text = os.environ.get(TOKEN_ENV, "")
    token = text.strip()
    if not token:
        where = f"{path} is empty" if path is not None else f"no --token-file and no ${TOKEN_ENV}"
        raise _RefusedError(f"the API needs your token: {where}")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise _RefusedError("the token holds characters no token has")
    return token


def _quote(corridor_id: str) -> str:
    """An id as one path segment: a malformed one reaches the API, which says what is wrong."""
    return urllib.parse.quote(corridor_id, safe="")
