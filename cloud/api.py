"""The operators' HTTP API: corridors, network and intersection state, health, over ``Operations``.

A thin aiohttp layer: it checks what it is given (size, content type, ids, the request body
through the project's ``Codec``), calls the seam, and turns every typed error into a JSON error
``{"error": {"code", "message", "field"?}}`` with its status code. Bad input never yields a
500; anything unexpected does, with a generic message, logged with its traceback and counted.
Endpoints, status codes and examples: ``docs/api.md``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from citybrain.cloud.operations import Conflict, Health, NotFound, Operations, ServiceUnavailable
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
FILL_ROOM_BYTES = 64
"""Codec headroom over the body limit for the ``requested_at`` the API may add to a body."""
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

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


OPS: web.AppKey[Operations] = web.AppKey("ops", Operations)
CODEC: web.AppKey[Codec] = web.AppKey("codec", Codec)
STATS: web.AppKey[ApiStats] = web.AppKey("stats", ApiStats)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)

_cancel_decoder = msgspec.json.Decoder(CancelBody)
_raw_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def create_app(
    ops: Operations, *, max_body_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> web.Application:
    """The API over ``ops``; bodies over ``max_body_bytes`` are refused with 413 unread."""
    codec = Codec(max_payload_bytes=max_body_bytes + FILL_ROOM_BYTES)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    app[OPS] = ops
    app[CODEC] = codec
    app[STATS] = ApiStats()
    app[MAX_BODY] = max_body_bytes
    app.router.add_post("/v1/corridors", _request_corridor)
    app.router.add_get("/v1/corridors", _list_corridors)
    app.router.add_get("/v1/corridors/{corridor_id}", _show_corridor)
    app.router.add_post("/v1/corridors/{corridor_id}/cancel", _cancel_corridor)
    app.router.add_get("/v1/network", _network)
    app.router.add_get("/v1/intersections/{intersection}", _intersection)
    app.router.add_get("/v1/health", _health)
    return app


async def serve_api(
    ops: Operations, host: str, port: int, *, max_body_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> web.AppRunner:
    """Serve the API until ``await runner.cleanup()``; port 0 picks a free port, which
    ``runner.addresses`` then tells."""
    runner = web.AppRunner(create_app(ops, max_body_bytes=max_body_bytes), access_log=ACCESS_LOG)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("operators' API on %s", ", ".join(f"{a[0]}:{a[1]}" for a in runner.addresses))
    return runner


# ---- handlers -----------------------------------------------------------------------------


async def _request_corridor(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    body = await _json_body(request, required=True)
    fields = _decode(_raw_object_decoder, body)
    if "requested_at" not in fields:
        # Operators do not know the controllers' clock; the service does.
        now = (await ops.network()).now
        fields["requested_at"] = msgspec.Raw(_ENCODER.encode(now))
        body = _ENCODER.encode(fields)
    corridor_request = request.app[CODEC].decode(body, CorridorRequest)
    try:
        status = await ops.request_corridor(corridor_request)
    except NotFound as error:
        raise ApiError(400, "unknown_intersection", str(error)) from None
    except Conflict as error:
        raise ApiError(409, "duplicate", str(error)) from None
    return _json(status, status=201)


async def _list_corridors(request: web.Request) -> web.Response:
    active = request.query.get("active", "false").lower()
    if active not in ("true", "false", "1", "0"):
        raise ApiError(400, "invalid", f"expected true or false, got {active[:20]!r}", "active")
    corridors = await request.app[OPS].corridors(active_only=active in ("true", "1"))
    return _json({"corridors": corridors})


async def _show_corridor(request: web.Request) -> web.Response:
    corridor_id = _path_id(request, "corridor_id")
    return _json(await request.app[OPS].corridor(corridor_id))


async def _cancel_corridor(request: web.Request) -> web.Response:
    corridor_id = _path_id(request, "corridor_id")
    body = await _json_body(request, required=False)
    reason = _decode(_cancel_decoder, body).reason if body else DEFAULT_CANCEL_REASON
    return _json(await request.app[OPS].cancel(corridor_id, reason=reason))


async def _network(request: web.Request) -> web.Response:
    return _json(await request.app[OPS].network())


async def _intersection(request: web.Request) -> web.Response:
    intersection = _path_id(request, "intersection")
    return _json(await request.app[OPS].intersection(intersection))


async def _health(request: web.Request) -> web.Response:
    report = await request.app[OPS].health()
    return _json(report, status=503 if report.status is Health.DOWN else 200)


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
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _refusal(error: Exception, request: web.Request) -> ApiError | None:
    """The answer to a typed error from a check, aiohttp or the service; ``None`` if unexpected."""
    if isinstance(error, ApiError):
        return error
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
