"""The operators' HTTP API: corridors, network and intersection state, health, over ``Operations``.

A thin aiohttp layer: it authenticates every call by its bearer token and authorizes it by the
user's role, caps and limits (``cloud/auth.py``), checks what it is given (size, content type,
ids, the request body through the project's ``Codec``), calls the seam, and turns every typed
error into a JSON error ``{"error": {"code", "message", "field"?}}`` with its status code. Bad
input never yields a 500; anything unexpected does, with a generic message, logged with its
traceback and counted. Endpoints, status codes and examples: ``docs/api.md``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import msgspec
from aiohttp import hdrs, web

from citybrain.cloud.auth import (
    MAX_TOKEN_CHARS,
    Forbidden,
    RateLimiter,
    TokenFile,
    User,
    check_cancel,
    check_request,
    check_write,
)
from citybrain.cloud.operations import (
    Conflict,
    Health,
    LimitReached,
    NotFound,
    Operations,
    ServiceUnavailable,
)
from citybrain.cloud.routing import UnreachableError
from citybrain.models.checks import check_id
from citybrain.models.codec import DEFAULT_MAX_PAYLOAD_BYTES, Codec, message_error
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import MAX_TEXT, CorridorRequest

T = TypeVar("T")

log = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("citybrain.cloud.api.access")

RETRY_AFTER_S = 2
"""Sent with every 503: the service is starting or a dependency is reconnecting."""
FILL_ROOM_BYTES = 256
"""Codec headroom over the body limit for the ``requested_at`` and ``requester`` the API sets."""
DEFAULT_CANCEL_REASON = "cancelled by operator"

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
_CHALLENGE = 'Bearer realm="citybrain"'

UserHandler = Callable[[web.Request, User], Awaitable[web.Response]]

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
    app.router.add_post("/v1/corridors", _authenticated(_request_corridor))
    app.router.add_get("/v1/corridors", _authenticated(_list_corridors))
    app.router.add_get("/v1/corridors/{corridor_id}", _authenticated(_show_corridor))
    app.router.add_post("/v1/corridors/{corridor_id}/cancel", _authenticated(_cancel_corridor))
    app.router.add_get("/v1/network", _authenticated(_network))
    app.router.add_get("/v1/intersections/{intersection}", _authenticated(_intersection))
    # open to a load balancer's probe, which tells its status only
    app.router.add_get("/v1/health", _health)
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
    return _json(status, status=201)


async def _list_corridors(request: web.Request, user: User) -> web.Response:
    active = request.query.get("active", "false").lower()
    if active not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid", f"expected true or false, got {active[:20]!r}", "active")
    corridors = await request.app[OPS].corridors(active_only=active in ("true", "1"))
    return _json({"corridors": corridors})


async def _show_corridor(request: web.Request, user: User) -> web.Response:
    corridor_id = _path_id(request, "corridor_id")
    return _json(await request.app[OPS].corridor(corridor_id))


async def _cancel_corridor(request: web.Request, user: User) -> web.Response:
    ops = request.app[OPS]
    _may_write(request, user)
    corridor_id = _path_id(request, "corridor_id")
    body = await _json_body(request, required=False)
    reason = _decode(_cancel_decoder, body).reason if body else DEFAULT_CANCEL_REASON
    check_cancel(user, await ops.owner(corridor_id))
    return _json(await ops.cancel(corridor_id, reason=reason, by=user.name))


async def _network(request: web.Request, user: User) -> web.Response:
    return _json(await request.app[OPS].network())


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


def _authenticated(handler: UserHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The endpoint for callers with a known bearer token, who are handed to ``handler``."""

    async def authenticated(request: web.Request) -> web.Response:
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
