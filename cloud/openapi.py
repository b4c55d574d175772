"""The API's OpenAPI 3.1 document, generated: the schemas are msgspec's JSON Schema of the very
Structs the API decodes and encodes (``msgspec.json.schema_components``), so they cannot
disagree with the code; the paths are listed here beside the routes' docs (``docs/api.md``).

``python -m citybrain.cloud.openapi`` prints it; ``docs/openapi.json`` is that output, checked
in, and a test fails when the two drift apart.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from citybrain.cloud import api
from citybrain.cloud.alarms import Alarm
from citybrain.cloud.operations import (
    Fleet,
    HealthReport,
    IntersectionStates,
    IntersectionView,
    NetworkMap,
)
from citybrain.models.messages import MAX_PRIORITY, MIN_PRIORITY, CorridorRequest

VERSION = "1.3.0"
"""The API's version: 1.x while every change is additive."""
_REF = "#/components/schemas/{name}"
_API_FILLS = ("requester", "requested_at")
"""Required on the wire, filled by the API: the token's user, the controllers' clock."""


class AlarmList(msgspec.Struct, frozen=True, kw_only=True):
    alarms: list[Alarm]


_SCHEMAS: tuple[type, ...] = (
    CorridorRequest,
    api.CancelBody,
    api.CorridorReport,
    api.CorridorList,
    api.CorridorPage,
    api.NetworkReport,
    NetworkMap,
    IntersectionStates,
    IntersectionView,
    Fleet,
    HealthReport,
    api.HealthProbe,
    AlarmList,
    Alarm,
    api.ErrorBody,
    api.Me,
)

_ERRORS = {
    "400": "invalid or unknown_intersection (see docs/api.md)",
    "401": "unauthorized: no token, or an unknown or revoked one",
    "403": "forbidden: the user's role or caps do not allow it",
    "404": "not_found",
    "409": "duplicate or conflict",
    "413": "too_large",
    "415": "unsupported_media_type",
    "422": "unreachable",
    "429": "rate_limited or too_many_corridors",
    "503": "unavailable (Retry-After)",
}


def _ref(struct: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json(struct: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _operation(
    summary: str,
    ok: tuple[str, dict[str, Any]],
    *,
    errors: tuple[str, ...] = ("401",),
    body: type | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    public: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok[0]: ok[1]}
    for code in errors:
        responses[code] = _json(api.ErrorBody, _ERRORS[code])
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {
            "required": body is CorridorRequest,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if public:
        operation["security"] = []
    return operation


def _param(name: str, where: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"}
_ACTIVE = _param("active", "query", "only what has not ended (alarms: not acknowledged)",
                 {"type": "boolean"})  # fmt: skip


def _paths() -> dict[str, Any]:
    corridor = _param("corridor_id", "path", "the corridor's id", _ID)
    created = _json(api.CorridorReport, "granted")
    created["headers"] = {
        "Location": {"description": "the corridor's URL", "schema": {"type": "string"}}
    }
    history = (
        _param("state", "query", "only corridors in this state", {"type": "string"}),
        _param("vehicle", "query", "only this vehicle's", _ID),
        _param("since", "query", "updated at or after (controller s)", {"type": "number"}),
        _param("until", "query", "updated before (controller s)", {"type": "number"}),
        _param("limit", "query", "page size", {"type": "integer", "minimum": 1, "maximum": 500}),
        _param("after", "query", "the previous page's next", {"type": "string"}),
    )
    return {
        "/v1/corridors": {
            "post": _operation(
                "Request a corridor", ("201", created), body=CorridorRequest,
                errors=("400", "401", "403", "409", "413", "415", "422", "429", "503"),
            ),
            "get": _operation(
                "The corridors this service runs (live and ended)",
                ("200", _json(api.CorridorList, "the corridors")),
                errors=("400", "401"), parameters=(_ACTIVE,),
            ),
        },
        "/v1/corridors/{corridor_id}": {
            "get": _operation(
                "One corridor", ("200", _json(api.CorridorReport, "the corridor")),
                errors=("400", "401", "404"), parameters=(corridor,),
            ),
        },
        "/v1/corridors/{corridor_id}/cancel": {
            "post": _operation(
                "Cancel a corridor", ("200", _json(api.CorridorReport, "cancelled")),
                body=api.CancelBody, parameters=(corridor,),
                errors=("400", "401", "403", "404", "409", "413", "415", "429"),
            ),
        },
        "/v1/history/corridors": {
            "get": _operation(
                "Every corridor stored, newest first, a page at a time",
                ("200", _json(api.CorridorPage, "a page")), errors=("400", "401", "503"),
                parameters=history,
            ),
        },
        "/v1/network": {
            "get": _operation("The network at a glance", ("200", _json(api.NetworkReport, "")))
        },
        "/v1/map": {
            "get": _operation("The network's geometry", ("200", _json(NetworkMap, "")))
        },
        "/v1/intersections": {
            "get": _operation(
                "Every intersection's state", ("200", _json(IntersectionStates, ""))
            )
        },
        "/v1/vehicles": {
            "get": _operation(
                "Vehicles heard from in the last 5 minutes, where their AVL units put them",
                ("200", _json(Fleet, "")),
            )
        },
        "/v1/intersections/{intersection}": {
            "get": _operation(
                "One intersection", ("200", _json(IntersectionView, "")),
                errors=("400", "401", "404"),
                parameters=(_param("intersection", "path", "its id", _ID),),
            ),
        },
        "/v1/me": {"get": _operation("Who the token is", ("200", _json(api.Me, "")))},
        "/v1/alarms": {
            "get": _operation(
                "Alarms, newest first", ("200", _json(AlarmList, "")),
                errors=("400", "401"), parameters=(_ACTIVE,),
            ),
        },
        "/v1/alarms/{alarm_id}/ack": {
            "post": _operation(
                "Acknowledge an alarm (operators and admins)",
                ("200", _json(Alarm, "acknowledged (the first who and when stand)")),
                errors=("400", "401", "403", "404"),
                parameters=(_param("alarm_id", "path", "its id", _ID),),
            ),
        },
        "/v1/events": {
            "get": _operation(
                "The live stream (server-sent events: intersections, vehicles, corridor, alarm)",
                ("200", {"description": "events", "content": {"text/event-stream": {}}}),
                errors=("401", "503"),
            ),
        },
        "/v1/health": {
            "get": _operation(
                "Health (the status alone without a token)",
                ("200", _json(HealthReport, "ok or degraded")), errors=("401", "503"),
                public=True,
            ),
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                ("200", {"description": "Prometheus text format", "content": {"text/plain": {}}}),
            ),
        },
    }  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the operators' API."""
    _, components = msgspec.json.schema_components(_SCHEMAS, ref_template=_REF)
    request = components["CorridorRequest"]
    request["required"] = [name for name in request["required"] if name not in _API_FILLS]
    request["properties"]["priority"].update(minimum=MIN_PRIORITY, maximum=MAX_PRIORITY)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "citybrain operators' API",
            "version": VERSION,
            "description": "Emergency corridors, network state, alarms and the live stream. "
            "Times are controller seconds; `times` and `time` give them as RFC 3339 wall "
            'clock. Errors: `{"error": {"code", "message", "field"?}}` (docs/api.md).',
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def rendered() -> bytes:
    """The document as checked in: sorted keys, indented, one newline at the end."""
    return msgspec.json.format(msgspec.json.encode(document(), order="sorted"), indent=2) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(rendered())
