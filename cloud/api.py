"""The operators' HTTP API: corridors, network and intersection state, health, alarms, the live
stream (server-sent events), Prometheus metrics, the OpenAPI document and the console page, over
``Operations``.

A thin aiohttp layer: it authenticates every call by its bearer token and authorizes it by the
user's role, caps and limits (``cloud/auth.py``), checks what it is given (size, content type,
ids, the request body through the project's ``Codec``), calls the seam, and turns every typed
error into a JSON error ``{"error": {"code", "message", "field"?}}`` with its status code. Bad
input never yields a 500; anything unexpected does, with a generic message, logged with its
traceback and counted. Endpoints, status codes and examples: ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from citybrain.cloud.alarms import rfc3339
from citybrain.cloud.auth import (
    MAX_TOKEN_CHARS,
    Forbidden,
    RateLimiter,
    TokenFile,
    User,
    UserRole,
    check_cancel,
    check_request,
    check_write,
)
from citybrain.cloud.events import TooManySubscribers
from citybrain.cloud.operations import (
    ClockReading,
    Conflict,
    Health,
    HistoryQuery,
    LimitReached,
    NetworkView,
    NotFound,
    Operations,
    ServiceUnavailable,
)
from citybrain.cloud.routing import UnreachableError
from citybrain.models.checks import check_id
from citybrain.models.codec import DEFAULT_MAX_PAYLOAD_BYTES, Codec, message_error
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import MAX_TEXT, CorridorRequest, CorridorState, CorridorStatus

T = TypeVar("T")

log = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("citybrain.cloud.api.access")

RETRY_AFTER_S = 2
"""Sent with every 503: the service is starting or a dependency is reconnecting."""
FILL_ROOM_BYTES = 256
"""Codec headroom over the body limit for the ``requested_at`` and ``requester`` the API sets."""
DEFAULT_CANCEL_REASON = "cancelled by operator"
KEEPALIVE_S = 15.0
"""A comment on an idle event stream this often: proxies keep it, clients see it alive."""
RECONNECT_MS = 2000
"""What an event stream tells its client to wait before reconnecting."""
CONSOLE_DIR = Path(__file__).parent / "console"
_CONSOLE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The console runs only its own files: no inline script, no other origin, no framing."""
_CONSOLE_FILES = {
    path.name: {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}[path.suffix]
    for path in CONSOLE_DIR.iterdir()
    if path.suffix in (".js", ".css", ".html")
}
"""The console's files, listed at start: the only ones ``/console/{name}`` serves."""

_JSON = "application/json"
_ENCODER = msgspec.json.Encoder()
# Responses go out through msgspec, not the Codec: its 64 KiB bound is for what we accept, and a
# list of corridors may legitimately be larger.


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None
    """A JSON path (``$.priority``) for a body field; the parameter's name for a path or query
    parameter; absent when no single field is to blame."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorDetail


class IntersectionTimes(msgspec.Struct, frozen=True, kw_only=True):
    """One stop line's controller times as RFC 3339 wall clock (``null`` where unset)."""

    intersection: str
    eta: str
    window_open: str | None
    window_close: str | None
    actual_arrival: str | None


class CorridorTimes(msgspec.Struct, frozen=True, kw_only=True):
    updated_at: str
    intersections: tuple[IntersectionTimes, ...]


class CorridorReport(CorridorStatus, frozen=True, kw_only=True):
    """A ``CorridorStatus`` with its times also as wall clock (``times``), converted at the
    controllers' current offset and pace."""

    times: CorridorTimes


class NetworkReport(NetworkView, frozen=True, kw_only=True):
    time: str
    """``now`` as RFC 3339 wall clock."""


class CorridorList(msgspec.Struct, frozen=True, kw_only=True):
    corridors: list[CorridorReport]


class CorridorPage(msgspec.Struct, frozen=True, kw_only=True):
    corridors: list[CorridorReport]
    next: str | None
    """Pass as ``after`` for the next page; ``null`` on the last one."""


class Me(msgspec.Struct, frozen=True, kw_only=True):
    """Who the token is: what the console shows and offers (the API checks every act)."""

    name: str
    role: UserRole
    caps: dict[str, int]


class HealthProbe(msgspec.Struct, frozen=True, kw_only=True):
    """What ``GET /v1/health`` tells a caller without a token (a load balancer's probe)."""

    status: Health


class CancelBody(msgspec.Struct, frozen=True, kw_only=True):
    """The optional body of ``POST /v1/corridors/{id}/cancel``."""

    reason: str = DEFAULT_CANCEL_REASON

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValidationError("reason", "must not be blank")
        if len(self.reason) > MAX_TEXT:
            raise ValidationError("reason", f"longer than {MAX_TEXT} characters")


@dataclasses.dataclass
class ApiStats:
    """What the API refused or failed, by error code (``internal`` counts the unexpected)."""

    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class ApiError(Exception):
    """A refusal with its status and code, raised by a handler and answered by the middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


OPS: web.AppKey[Operations] = web.AppKey("ops", Operations)
CODEC: web.AppKey[Codec] = web.AppKey("codec", Codec)
STATS: web.AppKey[ApiStats] = web.AppKey("stats", ApiStats)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)
TOKENS: web.AppKey[TokenFile] = web.AppKey("tokens", TokenFile)
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)
STREAMS = web.AppKey[set[asyncio.Task[object]]]("streams")
"""The handlers of open event streams, cancelled when the server shuts down."""
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)
_CHALLENGE = 'Bearer realm="citybrain"'

UserHandler = Callable[[web.Request, User], Awaitable[web.StreamResponse]]

_cancel_decoder = msgspec.json.Decoder(CancelBody)
_raw_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def create_app(
    ops: Operations, *, tokens: TokenFile, max_body_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> web.Application:
    """The API over ``ops`` for the users of ``tokens``; bodies over ``max_body_bytes`` are
    refused with 413 unread."""
    codec = Codec(max_payload_bytes=max_body_bytes + FILL_ROOM_BYTES)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    app[OPS] = ops
    app[CODEC] = codec
    app[STATS] = ApiStats()
    app[MAX_BODY] = max_body_bytes
    app[TOKENS] = tokens
    app[LIMITER] = RateLimiter()
    app[STREAMS] = set()
    app[OPENAPI] = _openapi_document()
    app.on_shutdown.append(_end_streams)
    app.on_response_prepare.append(_security_headers)
    app.router.add_post("/v1/corridors", _authenticated(_request_corridor))
    app.router.add_get("/v1/corridors", _authenticated(_list_corridors))
    app.router.add_get("/v1/corridors/{corridor_id}", _authenticated(_show_corridor))
    app.router.add_post("/v1/corridors/{corridor_id}/cancel", _authenticated(_cancel_corridor))
    app.router.add_get("/v1/history/corridors", _authenticated(_corridor_history))
    app.router.add_get("/v1/network", _authenticated(_network))
    app.router.add_get("/v1/map", _authenticated(_map))
    app.router.add_get("/v1/intersections", _authenticated(_intersection_states))
    app.router.add_get("/v1/vehicles", _authenticated(_fleet))
    app.router.add_get("/v1/intersections/{intersection}", _authenticated(_intersection))
    app.router.add_get("/v1/alarms", _authenticated(_alarms))
    app.router.add_post("/v1/alarms/{alarm_id}/ack", _authenticated(_acknowledge_alarm))
    app.router.add_get("/v1/events", _authenticated(_events))
    app.router.add_get("/v1/me", _authenticated(_me))
    app.router.add_get("/metrics", _authenticated(_metrics))
    # open: a load balancer's probe (which tells its status only), the API's description, and
    # the console's files (which hold no data: every call the page makes needs a token)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/console", _to_console)
    app.router.add_get("/console/", _console_page)
    app.router.add_get("/console/{name}", _console_file)
    return app


async def serve_api(
    ops: Operations,
    host: str,
    port: int,
    *,
    tokens: TokenFile,
    max_body_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> web.AppRunner:
    """Serve the API until ``await runner.cleanup()``; port 0 picks a free port, which
    ``runner.addresses`` then tells."""
    app = create_app(ops, tokens=tokens, max_body_bytes=max_body_bytes)
    runner = web.AppRunner(app, access_log=ACCESS_LOG)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("operators' API on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


# ---- handlers -----------------------------------------------------------------------------


async def _request_corridor(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    _may_write(request, user)
    body = await _json_body(request, required=True)
    fields = _decode(_raw_object_decoder, body)
    # The corridor is asked for by whoever holds the token, whatever the body says.
    fields["requester"] = msgspec.Raw(_ENCODER.encode(user.name))
    if "requested_at" not in fields:
        # Operators do not know the controllers' clock; the service does.
        now = (await ops.network()).now
        fields["requested_at"] = msgspec.Raw(_ENCODER.encode(now))
    corridor_request = request.app[CODEC].decode(_ENCODER.encode(fields), CorridorRequest)
    check_request(user, corridor_request)
    try:
        status = await ops.request_corridor(corridor_request, max_active=user.max_active)
    except NotFound as error:
        raise ApiError(400, "unknown_intersection", str(error)) from None
    except Conflict as error:
        raise ApiError(409, "duplicate", str(error)) from None
    response = _json(_report(status, await ops.clock_reading()), status=201)
    response.headers[hdrs.LOCATION] = f"/v1/corridors/{status.corridor_id}"
    return response


async def _list_corridors(request: web.Request, user: User) -> web.Response:
    active = request.query.get("active", "false").lower()
    if active not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid", f"expected true or false, got {active[:20]!r}", "active")
    ops = request.app[OPS]
    corridors = await ops.corridors(active_only=active in ("true", "1"))
    clock = await ops.clock_reading()
    return _json(CorridorList(corridors=[_report(c, clock) for c in corridors]))


async def _show_corridor(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    corridor_id = _path_id(request, "corridor_id")
    return _json(_report(await ops.corridor(corridor_id), await ops.clock_reading()))


async def _corridor_history(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    page = await ops.corridor_history(_history_query(request))
    clock = await ops.clock_reading()
    corridors = [_report(c, clock) for c in page.corridors]
    return _json(CorridorPage(corridors=corridors, next=page.next))


def _history_query(request: web.Request) -> HistoryQuery:
    """The query parameters of ``GET /v1/history/corridors``, each refused by its name."""
    query = request.query
    unknown = set(query) - {"state", "vehicle", "since", "until", "limit", "after"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(400, "invalid", f"unknown query parameter {name[:40]!r}", name[:40])
    state = None
    if "state" in query:
        try:
            state = CorridorState(query["state"])
        except ValueError:
            allowed = ", ".join(s.value for s in CorridorState)
            raise ApiError(400, "invalid", f"expected one of {allowed}", "state") from None
    after = None
    if "after" in query:
        stamp, _, corridor_id = query["after"].partition("~")
        after = (_number(stamp, "after"), _checked_id("after", corridor_id))
    try:
        return HistoryQuery(
            state=state,
            vehicle=query.get("vehicle"),
            since=_number(query["since"], "since") if "since" in query else None,
            until=_number(query["until"], "until") if "until" in query else None,
            limit=int(_number(query.get("limit", "100"), "limit", integer=True)),
            after=after,
        )
    except ValidationError as error:
        raise ApiError(400, "invalid", error.reason, error.field) from None


def _number(text: str, name: str, *, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, "invalid", f"expected {kind}, got {text[:20]!r}", name) from None
    if not math.isfinite(value):
        raise ApiError(400, "invalid", "expected a finite number", name)
    return value


def _checked_id(name: str, value: str) -> str:
    try:
        return check_id(name, value)
    except ValidationError as error:
        raise ApiError(400, "invalid", error.reason, name) from None


async def _cancel_corridor(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    _may_write(request, user)
    corridor_id = _path_id(request, "corridor_id")
    body = await _json_body(request, required=False)
    reason = _decode(_cancel_decoder, body).reason if body else DEFAULT_CANCEL_REASON
    check_cancel(user, await ops.owner(corridor_id))
    status = await ops.cancel(corridor_id, reason=reason, by=user.name)
    return _json(_report(status, await ops.clock_reading()))


async def _network(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    view, clock = await ops.network(), await ops.clock_reading()
    fields = msgspec.structs.asdict(view)
    return _json(NetworkReport(**fields, time=rfc3339(clock.wall_of(view.now))))


async def _map(request: web.Request, user: User) -> web.Response:
    return _json(await request.app[OPS].network_map())


async def _intersection_states(request: web.Request, user: User) -> web.Response:
    return _json(await request.app[OPS].intersection_states())


async def _fleet(request: web.Request, user: User) -> web.Response:
    return _json(await request.app[OPS].fleet())


async def _alarms(request: web.Request, user: User) -> web.Response:
    active = request.query.get("active", "false").lower()
    if active not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid", f"expected true or false, got {active[:20]!r}", "active")
    return _json({"alarms": await request.app[OPS].alarms(active_only=active in ("true", "1"))})


async def _acknowledge_alarm(request: web.Request, user: User) -> web.Response:
    """An operator's act: a viewer sees alarms but may not acknowledge them."""
    check_write(user, "acknowledge alarms")
    alarm_id = _path_id(request, "alarm_id")
    return _json(await request.app[OPS].acknowledge_alarm(alarm_id, by=user.name))


async def _events(request: web.Request, user: User) -> web.StreamResponse:
    """Server-sent events until the client goes, the token is revoked, or the server stops;
    ``docs/api.md`` has the event kinds."""
    hub = request.app[OPS].events
    try:
        subscription = hub.subscribe()
    except TooManySubscribers as error:
        raise ApiError(503, "unavailable", str(error)) from None
    task = asyncio.current_task()
    streams = request.app[STREAMS]
    if task is not None:
        streams.add(task)
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: "text/event-stream",
            hdrs.CACHE_CONTROL: "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: %d\n\n" % RECONNECT_MS)
        async for chunk in hub.stream(subscription, keepalive_s=KEEPALIVE_S):
            if _still_valid(request) is None:
                break  # revoked or removed: the stream ends with the token
            await response.write(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
        if task is not None:
            streams.discard(task)
    return response


def _still_valid(request: web.Request) -> User | None:
    try:
        return _authenticate(request)
    except ApiError:
        return None


async def _me(request: web.Request, user: User) -> web.Response:
    return _json(Me(name=user.name, role=user.role, caps=user.caps))


async def _metrics(request: web.Request, user: User) -> web.Response:
    body = await request.app[OPS].metrics()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=_JSON)


async def _to_console(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={hdrs.LOCATION: "/console/"})


async def _console_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CONSOLE_DIR / "index.html")


async def _console_file(request: web.Request) -> web.FileResponse:
    """One of the console's own files, by name: nothing else of the disk is reachable."""
    name = request.match_info["name"]
    kind = _CONSOLE_FILES.get(name)
    if kind is None:
        raise ApiError(404, "not_found", f"no console file {name[:60]!r}")
    return web.FileResponse(CONSOLE_DIR / name, headers={hdrs.CONTENT_TYPE: kind})


async def _end_streams(app: web.Application) -> None:
    """Open event streams end with the server, instead of holding its shutdown."""
    streams = app[STREAMS]
    for task in tuple(streams):
        task.cancel()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/console"):
        response.headers["Content-Security-Policy"] = _CONSOLE_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers[hdrs.CACHE_CONTROL] = "no-cache"


def _openapi_document() -> bytes:
    """The OpenAPI document of this module's own types (imported here: it imports them)."""
    from citybrain.cloud.openapi import document

    return _ENCODER.encode(document())


def _report(status: CorridorStatus, clock: ClockReading) -> CorridorReport:
    """``status`` with its controller times also as RFC 3339 wall clock."""

    def wall(controller_s: float | None) -> str | None:
        return None if controller_s is None else rfc3339(clock.wall_of(controller_s))

    times = CorridorTimes(
        updated_at=rfc3339(clock.wall_of(status.updated_at)),
        intersections=tuple(
            IntersectionTimes(
                intersection=row.intersection,
                eta=rfc3339(clock.wall_of(row.eta)),
                window_open=wall(row.window_open),
                window_close=wall(row.window_close),
                actual_arrival=wall(row.actual_arrival),
            )
            for row in status.intersections
        ),
    )
    return CorridorReport(**msgspec.structs.asdict(status), times=times)


async def _intersection(request: web.Request, user: User) -> web.Response:
    intersection = _path_id(request, "intersection")
    return _json(await request.app[OPS].intersection(intersection))


async def _health(request: web.Request) -> web.Response:
    """The whole report for a user; the status alone, not the counters behind it, for a
    caller without a token (a probe). A token that is sent must be good."""
    probe = hdrs.AUTHORIZATION not in request.headers
    if not probe:
        _authenticate(request)
    report = await request.app[OPS].health()
    status = 503 if report.status is Health.DOWN else 200
    return _json(HealthProbe(status=report.status) if probe else report, status=status)


# ---- who is asking ------------------------------------------------------------------------


def _authenticated(
    handler: UserHandler,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The endpoint for callers with a known bearer token, who are handed to ``handler``."""

    async def authenticated(request: web.Request) -> web.StreamResponse:
        return await handler(request, _authenticate(request))

    return authenticated


def _authenticate(request: web.Request) -> User:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        raise _unauthorized("send Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("expected Authorization: Bearer <token>", invalid=True)
    try:
        user = request.app[TOKENS].authenticate(token) if len(token) <= MAX_TOKEN_CHARS else None
    except ValidationError as error:  # fail closed until the token file is usable again
        log.error("cannot check tokens: %s", error)
        raise ApiError(503, "unavailable", "the API cannot check tokens now") from None
    if user is None:
        raise _unauthorized("unknown or revoked token", invalid=True)
    return user


def _unauthorized(message: str, *, invalid: bool = False) -> ApiError:
    challenge = f'{_CHALLENGE}, error="invalid_token"' if invalid else _CHALLENGE
    return ApiError(401, "unauthorized", message, headers={hdrs.WWW_AUTHENTICATE: challenge})


def _may_write(request: web.Request, user: User) -> None:
    """A request that changes corridors: not from a viewer, and within its user's rate."""
    check_write(user)
    wait_s = request.app[LIMITER].take(user, time.monotonic())
    if wait_s > 0.0:
        raise ApiError(
            429,
            "rate_limited",
            f"{user.name} may make {user.requests_per_minute} requests a minute",
            headers={hdrs.RETRY_AFTER: str(math.ceil(wait_s))},
        )


# ---- plumbing -----------------------------------------------------------------------------


async def _json_body(request: web.Request, *, required: bool) -> bytes:
    """The body, refused unread when too large or not JSON (a JSON content type also keeps a
    browser from posting here cross-site without a preflight)."""
    if request.content_length is not None and request.content_length > request.app[MAX_BODY]:
        raise web.HTTPRequestEntityTooLarge(request.app[MAX_BODY], request.content_length)
    if not request.body_exists:
        if required:
            raise ApiError(400, "invalid", "a JSON body is required", "$")
        return b""
    if request.content_type != _JSON:
        raise ApiError(415, "unsupported_media_type", f"send {_JSON}, not {request.content_type}")
    return await request.read()


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a body that is not a wire message, failing the way the ``Codec`` does."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        raise message_error(error) from None
    except msgspec.DecodeError as error:
        raise MessageError("$", f"not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise MessageError("$", f"text is not valid UTF-8: {error.reason}") from None
    except RecursionError:
        raise MessageError("$", "JSON nested too deeply") from None


def _path_id(request: web.Request, name: str) -> str:
    """A path parameter checked against the id pattern before it reaches the service."""
    try:
        return check_id(name, request.match_info[name])
    except ValidationError as error:
        raise ApiError(400, "invalid", error.reason, name) from None


def _json(value: object, *, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(value), status=status, content_type=_JSON)


def _error(error: ApiError) -> web.Response:
    detail = ErrorDetail(code=error.code, message=error.message, field=error.field)
    response = _json(ErrorBody(error=detail), status=error.status)
    if error.status == 503:
        response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_S)
    response.headers.update(error.headers)
    return response


def _refusal(error: Exception, request: web.Request) -> ApiError | None:
    """The answer to a typed error from a check, aiohttp or the service; ``None`` if unexpected."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Forbidden):
        field = None if error.field is None else _body_path(error.field)
        return ApiError(403, "forbidden", str(error), field)
    if isinstance(error, LimitReached):
        return ApiError(429, "too_many_corridors", str(error))
    if isinstance(error, UnreachableError):
        return ApiError(422, "unreachable", error.reason, _body_path(error.field))
    if isinstance(error, ValidationError):
        return ApiError(400, "invalid", error.reason, _body_path(error.field))
    if isinstance(error, NotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, Conflict):
        return ApiError(409, "conflict", str(error))
    if isinstance(error, ServiceUnavailable):
        return ApiError(503, "unavailable", str(error) or "the service cannot act now")
    if isinstance(error, web.HTTPNotFound):
        return ApiError(404, "not_found", f"no endpoint {request.path[:200]}")
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return ApiError(405, "method_not_allowed", f"{request.method} not allowed; use {allowed}")
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return ApiError(413, "too_large", f"body over the {request.app[MAX_BODY]} byte limit")
    if isinstance(error, web.HTTPClientError):
        return ApiError(error.status, "bad_request", error.reason)
    return None


def _body_path(field: str) -> str:
    """The JSON path of a body field: the Codec gives ``$.a[0].b``, other checks ``a[0].b``."""
    return field if field.startswith("$") else f"$.{field}"


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as error:
        refusal = _refusal(error, request)
        if refusal is None:
            log.exception("unexpected error on %s %s", request.method, request.path)
            refusal = ApiError(500, "internal", "internal error; the service log has the detail")
        request.app[STATS].errors[refusal.code] += 1
        response = _error(refusal)
        if isinstance(error, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = error.headers["Allow"]
        return response
