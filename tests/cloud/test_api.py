"""The operators' HTTP API against a fake ``Operations``: every endpoint and every refusal; then
its attacks (no token, a viewer's, an operator beyond their caps and limits, a flood) against
the real ``CloudService``."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from citybrain.cloud.alarms import Alarm, AlarmBook, AlarmKind
from citybrain.cloud.api import STATS, create_app, serve_api
from citybrain.cloud.auth import TokenFile, UserRole, add_user, revoke_user
from citybrain.cloud.core import CloudCore
from citybrain.cloud.corridor import PREEMPTED
from citybrain.cloud.events import EventHub
from citybrain.cloud.operations import (
    ClockReading,
    Conflict,
    CorridorOwner,
    Fleet,
    Health,
    HealthReport,
    HistoryPage,
    HistoryQuery,
    IntersectionStates,
    IntersectionView,
    NetworkMap,
    NetworkView,
    NotFound,
    Operations,
    Place,
    ServiceUnavailable,
    SignalState,
    VehicleSpot,
    history_page,
)
from citybrain.cloud.routing import UnreachableError
from citybrain.cloud.service import CloudService
from citybrain.cloud.storage import ActionKind, OperatorAction
from citybrain.models.errors import ValidationError
from citybrain.models.messages import (
    CorridorIntersection,
    CorridorRequest,
    CorridorState,
    CorridorStatus,
    Mode,
    Presence,
)
from citybrain.models.signing import PlanSigner
from citybrain.simulator.networks import grid

TERMINAL = {
    CorridorState.REJECTED,
    CorridorState.COMPLETED,
    CorridorState.CANCELLED,
    CorridorState.TIMED_OUT,
    CorridorState.FAILED,
}
KNOWN = ("A", "B", "C", "D", "Z")
ISLAND = "Z"
"""A known intersection no road leads to."""
LEG_S = 20.0


class FakeOperations(Operations):
    """In memory: corridors along the given intersections, one leg of ``LEG_S`` each; ``advance``
    moves a vehicle one stop line on, the way the service's status would."""

    def __init__(self) -> None:
        self.now = 100.0
        self.statuses: dict[str, CorridorStatus] = {}
        self.owners: dict[str, CorridorOwner] = {}
        self.requests: list[CorridorRequest] = []
        self.cancelled_by: list[str] = []
        self.health_status = Health.OK
        self.unavailable = False
        self.broken = False
        self._next = 1
        self.hub = EventHub()
        self.book = AlarmBook(prefix="A1")
        self.wall_s = 1_800_000_000.0
        """Wall time when the controllers' clock reads ``now`` (2027-01-15T08:00:00Z)."""

    def _check_up(self) -> None:
        if self.broken:
            raise RuntimeError("secret internal detail")
        if self.unavailable:
            raise ServiceUnavailable("starting: waiting for the broker")

    async def request_corridor(
        self, request: CorridorRequest, *, max_active: int | None = None
    ) -> CorridorStatus:
        """Limits are the service's: the tests against ``CloudService`` below show them."""
        self._check_up()
        self.requests.append(request)
        origin = request.origin or self._where(request.vehicle)
        route = request.route or (origin, request.destination or origin)
        for place in route:
            if place not in KNOWN:
                raise NotFound(f"unknown intersection {place!r}")
        if ISLAND in route:
            raise UnreachableError("destination", f"no route from {route[0]!r} to {ISLAND!r}")
        if request.priority == 1:
            raise ValidationError("depart_at", "must lie between now and the horizon")
        for status in self.statuses.values():
            if status.vehicle == request.vehicle and status.state not in TERMINAL:
                raise Conflict(f"{request.vehicle} already has corridor {status.corridor_id}")
        corridor_id = request.corridor_id or f"C{self._next}-{request.vehicle}"
        self._next += 1
        start = request.requested_at
        status = CorridorStatus(
            corridor_id=corridor_id,
            vehicle=request.vehicle,
            state=CorridorState.GRANTED,
            priority=request.priority,
            updated_at=self.now,
            route=route,
            intersections=tuple(
                CorridorIntersection(
                    intersection=place,
                    eta=start + LEG_S * hop,
                    eta_low=start + LEG_S * hop - 2.0,
                    eta_high=start + LEG_S * hop + 3.0,
                    window_open=start + LEG_S * hop - 8.0,
                    window_close=start + LEG_S * hop + 4.0,
                )
                for hop, place in enumerate(route, start=1)
            ),
        )
        self.statuses[corridor_id] = status
        self.owners[corridor_id] = CorridorOwner(
            corridor_id=corridor_id, requester=request.requester, incident=request.incident,
            priority=request.priority,
        )  # fmt: skip
        return status

    def _where(self, vehicle: str) -> str:
        """The fake fleet: AMB-7 is on its way into B, nobody else reported."""
        if vehicle != "AMB-7":
            raise ValidationError("origin", f"no position from {vehicle} in the last 30 s")
        return "B"

    async def fleet(self) -> Fleet:
        self._check_up()
        spot = VehicleSpot(
            vehicle="AMB-7", link="A-B", from_node="A", to_node="B", along=0.25, age_s=1.0
        )
        return Fleet(now=self.now, vehicles=(spot,))

    async def corridors(self, *, active_only: bool = False) -> list[CorridorStatus]:
        self._check_up()
        return [s for s in self.statuses.values() if not (active_only and s.state in TERMINAL)]

    async def corridor(self, corridor_id: str) -> CorridorStatus:
        self._check_up()
        if corridor_id not in self.statuses:
            raise NotFound(f"unknown corridor {corridor_id!r}")
        return self.statuses[corridor_id]

    async def owner(self, corridor_id: str) -> CorridorOwner:
        await self.corridor(corridor_id)
        return self.owners[corridor_id]

    async def cancel(self, corridor_id: str, *, reason: str, by: str) -> CorridorStatus:
        status = await self.corridor(corridor_id)
        if status.state in TERMINAL:
            raise Conflict(f"corridor {corridor_id} is already {status.state}")
        self.cancelled_by.append(by)
        return self._set(status, state=CorridorState.CANCELLED, reason=reason)

    async def network(self) -> NetworkView:
        self._check_up()
        active = sum(1 for s in self.statuses.values() if s.state not in TERMINAL)
        return NetworkView(
            now=self.now, intersections=len(KNOWN), online=4, reporting=3, corridors_active=active
        )

    async def intersection(self, intersection: str) -> IntersectionView:
        self._check_up()
        if intersection not in KNOWN:
            raise NotFound(f"unknown intersection {intersection!r}")
        if intersection == ISLAND:
            return IntersectionView(
                intersection=intersection,
                presence=None,
                mode=None,
                telemetry_age_s=None,
                queues_veh={},
            )
        return IntersectionView(
            intersection=intersection,
            presence=Presence.ONLINE,
            mode=Mode.NORMAL,
            telemetry_age_s=0.8,
            queues_veh={f"{intersection}:N": 3.5, f"{intersection}:S": 0.0},
            plan_id="normal",
        )

    async def health(self) -> HealthReport:
        self._check_up()
        return HealthReport(
            status=self.health_status,
            broker=self.health_status is Health.OK,
            database=True,
            telemetry_backlog=0,
            corridors_active=len(self.statuses),
            intersections_online=4,
        )

    async def clock_reading(self) -> ClockReading:
        return ClockReading(controller_s=self.now, wall_s=self.wall_s, rate=1.0)

    async def network_map(self) -> NetworkMap:
        self._check_up()
        places = tuple(
            Place(id=node, x_m=100.0 * i, y_m=0.0, controlled=node != ISLAND)
            for i, node in enumerate(KNOWN)
        )
        return NetworkMap(places=places, roads=((0, 1), (1, 2), (2, 3)))

    async def intersection_states(self) -> IntersectionStates:
        self._check_up()
        return IntersectionStates(
            now=self.now, time="2027-01-15T08:00:00.000Z", ids=KNOWN,
            states=(SignalState.NORMAL, SignalState.PRIORITY, SignalState.OFFLINE,
                    SignalState.STALE, SignalState.UNKNOWN),
            queue_veh=(3.5, 0.0, 1.0, 2.0, 0.0),
        )  # fmt: skip

    async def corridor_history(self, query: HistoryQuery) -> HistoryPage:
        self._check_up()
        return history_page(list(self.statuses.values()), query)

    async def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        return self.book.alarms(active_only=active_only)

    async def acknowledge_alarm(self, alarm_id: str, *, by: str) -> Alarm:
        try:
            return self.book.acknowledge(alarm_id, by=by, at=self.wall_s)
        except KeyError:
            raise NotFound(f"no alarm {alarm_id!r}") from None

    @property
    def events(self) -> EventHub:
        return self.hub

    async def metrics(self) -> bytes:
        return b"# fake\n"

    def raise_alarm(self) -> Alarm:
        alarm = self.book.raise_(AlarmKind.EDGE_OFFLINE, "B", "B went offline", at=self.wall_s)
        assert alarm is not None
        return alarm

    def advance(self, corridor_id: str) -> None:
        """The vehicle passes its next stop line (confirmed); past the last one, completed."""
        status = self.statuses[corridor_id]
        self.now += LEG_S
        rows = list(status.intersections)
        pending = [i for i, row in enumerate(rows) if row.actual_arrival is None]
        if not pending:
            self._set(status, state=CorridorState.COMPLETED)
            return
        rows[pending[0]] = msgspec.structs.replace(
            rows[pending[0]], actual_arrival=rows[pending[0]].eta + 1.0, confirmed=True
        )
        self._set(status, state=CorridorState.ACTIVE, intersections=tuple(rows))

    def _set(self, status: CorridorStatus, **changes: Any) -> CorridorStatus:
        updated = msgspec.structs.replace(status, updated_at=self.now, **changes)
        self.statuses[status.corridor_id] = updated
        return updated


REQUEST = {
    "vehicle": "AMB-7", "origin": "A", "destination": "D", "priority": 8, "incident": "medical",
}  # fmt: skip

Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class Tokens:
    """A token file with one user of each kind, and their tokens."""

    path: Path
    op: str
    """An operator, uncapped for medical and fire, who may do much (the fake's tests use it)."""
    medic: str
    """An operator capped at 6 for medical incidents, with at most 2 live corridors."""
    viewer: str
    admin: str

    @classmethod
    def make(cls, directory: Path) -> Tokens:
        path = directory / "tokens.json"
        return cls(
            path=path,
            op=add_user(path, "op", UserRole.OPERATOR, caps={"medical": 10, "fire": 10},
                        max_active=100, requests_per_minute=1000),
            medic=add_user(path, "medic", UserRole.OPERATOR, caps={"medical": 6}, max_active=2),
            viewer=add_user(path, "viewer", UserRole.VIEWER),
            admin=add_user(path, "admin", UserRole.ADMIN, requests_per_minute=1000),
        )  # fmt: skip


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def api(
    ops: Operations, tokens: Path, token: str | None, **options: Any
) -> AsyncIterator[Client]:
    """A client of the API over ``ops``, sending ``token`` with every call (when given)."""
    server = TestServer(create_app(ops, tokens=TokenFile(tokens), **options))
    async with TestClient(server, headers=None if token is None else bearer(token)) as client:
        yield client


def run_as(
    scenario: Callable[[Client, FakeOperations, Tokens], Awaitable[None]],
    *,
    user: str | None = "op",
    **options: Any,
) -> None:
    """The scenario with a client that authenticates as ``user`` (None: sends no token)."""

    async def main() -> None:
        ops = FakeOperations()
        with tempfile.TemporaryDirectory() as directory:
            tokens = Tokens.make(Path(directory))
            token = None if user is None else getattr(tokens, user)
            async with api(ops, tokens.path, token, **options) as client:
                await scenario(client, ops, tokens)

    asyncio.run(main())


def run(scenario: Callable[[Client, FakeOperations], Awaitable[None]], **options: Any) -> None:
    """The scenario with a client of the operator ``op``."""

    async def as_op(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        await scenario(client, ops)

    run_as(as_op, **options)


async def error_of(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """The error object of a refusal, after checking its status, code and shape."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert set(error) <= {"code", "message", "field"}
    return error


async def post_json(
    client: Client, path: str, body: object, token: str | None = None
) -> aiohttp.ClientResponse:
    """POST ``body`` as JSON, as the client's user or as the holder of ``token``."""
    headers = JSON if token is None else {**JSON, **bearer(token)}
    return await client.post(path, data=msgspec.json.encode(body), headers=headers)


JSON = {"Content-Type": "application/json"}


# ---- POST /v1/corridors ---------------------------------------------------------------------


def test_a_request_is_granted_with_201_and_the_corridor_status() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await post_json(client, "/v1/corridors", REQUEST)
        assert response.status == 201
        status = msgspec.json.decode(await response.read(), type=CorridorStatus)
        assert status.vehicle == "AMB-7"
        assert status.state is CorridorState.GRANTED
        assert status.route == ("A", "D")
        assert status.priority == 8
        assert ops.requests[-1].requested_at == ops.now, "filled from the service's clock"

    run(scenario)


def test_a_given_requested_at_is_kept_and_a_route_passed_on() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        body = {**REQUEST, "route": ["A", "B", "C"], "requested_at": 42.5, "future_field": [1]}
        response = await post_json(client, "/v1/corridors", body)
        assert response.status == 201
        assert ops.requests[-1].requested_at == 42.5
        assert ops.requests[-1].route == ("A", "B", "C")
        assert (await response.json())["route"] == ["A", "B", "C"]

    run(scenario)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{not json", "$", "not valid JSON"),
        (b"", "$", "body is required"),
        (b"[1, 2]", "$", "Expected `object`"),
        (b'"AMB-7"', "$", "Expected `object`"),
        (b'{"vehicle": "\xff"}', "$", "UTF-8"),
        (b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "$", "nested too deeply"),
        (msgspec.json.encode({**REQUEST, "priority": 11}), "$.priority", "<= 10"),
        (msgspec.json.encode({**REQUEST, "priority": "high"}), "$.priority", "Expected `int`"),
        (msgspec.json.encode({**REQUEST, "vehicle": "AMB 7"}), "$.vehicle", "not a valid id"),
        (msgspec.json.encode({**REQUEST, "route": ["A", "B/C"]}), "$.route[1]", "not a valid id"),
        (msgspec.json.encode({**REQUEST, "requested_at": -1}), "$.requested_at", ">= 0"),
        (msgspec.json.encode({**REQUEST, "requested_at": None}), "$.requested_at", "null"),
        (msgspec.json.encode({**REQUEST, "v": 2}), "$.v", "schema version"),
        (
            msgspec.json.encode({"origin": "A", "destination": "D", "requester": "op"}),
            "$",
            "vehicle",
        ),
        (msgspec.json.encode({**REQUEST, "destination": None}), "$.destination", "route"),
    ],
)
def test_a_malformed_or_invalid_body_is_refused_with_400_naming_the_field(
    body: bytes, field: str, words: str
) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await client.post("/v1/corridors", data=body, headers=JSON)
        error = await error_of(response, 400, "invalid")
        assert error["field"] == field
        assert words in error["message"]
        assert not ops.statuses

    run(scenario)


def test_a_refusal_from_the_service_is_400_with_the_body_path() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await post_json(client, "/v1/corridors", {**REQUEST, "priority": 1})
        error = await error_of(response, 400, "invalid")
        assert error["field"] == "$.depart_at"

    run(scenario)


def test_an_unknown_intersection_is_400_unknown_intersection() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await post_json(client, "/v1/corridors", {**REQUEST, "destination": "Q"})
        error = await error_of(response, 400, "unknown_intersection")
        assert "'Q'" in error["message"]

    run(scenario)


def test_an_unreachable_destination_is_422_unreachable() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await post_json(client, "/v1/corridors", {**REQUEST, "destination": ISLAND})
        error = await error_of(response, 422, "unreachable")
        assert error["field"] == "$.destination"
        assert "no route" in error["message"]

    run(scenario)


def test_a_second_corridor_for_the_same_vehicle_is_409_duplicate() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        assert (await post_json(client, "/v1/corridors", REQUEST)).status == 201
        response = await post_json(client, "/v1/corridors", {**REQUEST, "destination": "C"})
        error = await error_of(response, 409, "duplicate")
        assert "C1-AMB-7" in error["message"]

    run(scenario)


def test_an_unavailable_service_is_503_with_retry_after() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        ops.unavailable = True
        response = await post_json(client, "/v1/corridors", {**REQUEST, "requested_at": 1.0})
        error = await error_of(response, 503, "unavailable")
        assert response.headers["Retry-After"] == "2"
        assert "broker" in error["message"]
        response = await post_json(client, "/v1/corridors", REQUEST)  # fails reading the clock
        await error_of(response, 503, "unavailable")
        await error_of(await client.get("/v1/corridors"), 503, "unavailable")

    run(scenario)


def test_a_body_over_the_limit_is_413_whether_announced_or_streamed() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        big = msgspec.json.encode({**REQUEST, "requester": "x" * 5000})
        await error_of(await client.post("/v1/corridors", data=big, headers=JSON), 413, "too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        response = await client.post("/v1/corridors", data=chunks(), headers=JSON)
        error = await error_of(response, 413, "too_large")
        assert "4096 byte limit" in error["message"]
        assert ops.requests == []

    run(scenario, max_body_bytes=4096)


def test_the_default_limit_is_64_kib() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        route = [f"X{i:05d}" for i in range(8000)]
        body = msgspec.json.encode({**REQUEST, "route": route})
        assert len(body) > 64 * 1024
        response = await client.post("/v1/corridors", data=body, headers=JSON)
        await error_of(response, 413, "too_large")

    run(scenario)


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}],
)
def test_a_body_that_is_not_declared_json_is_415(headers: dict[str, str]) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await client.post(
            "/v1/corridors", data=msgspec.json.encode(REQUEST), headers=headers
        )
        await error_of(response, 415, "unsupported_media_type")
        assert ops.requests == []

    run(scenario)


def test_a_json_content_type_with_a_charset_is_accepted() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await client.post(
            "/v1/corridors",
            data=msgspec.json.encode(REQUEST),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert response.status == 201

    run(scenario)


# ---- reading and cancelling corridors -------------------------------------------------------


def test_list_all_or_only_active_corridors() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        for vehicle in ("AMB-1", "AMB-2"):
            assert (await post_json(client, "/v1/corridors", {**REQUEST, "vehicle": vehicle})).ok
        await client.post("/v1/corridors/C1-AMB-1/cancel")
        every = await (await client.get("/v1/corridors")).json()
        assert [c["corridor_id"] for c in every["corridors"]] == ["C1-AMB-1", "C2-AMB-2"]
        for flag in ("true", "1", "TRUE"):
            active = await (await client.get(f"/v1/corridors?active={flag}")).json()
            assert [c["corridor_id"] for c in active["corridors"]] == ["C2-AMB-2"]
        inactive = await (await client.get("/v1/corridors?active=false")).json()
        assert len(inactive["corridors"]) == 2
        error = await error_of(await client.get("/v1/corridors?active=maybe"), 400, "invalid")
        assert error["field"] == "active"

    run(scenario)


def test_an_empty_list_is_an_empty_array() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await client.get("/v1/corridors")
        assert response.status == 200
        assert await response.json() == {"corridors": []}

    run(scenario)


def test_show_a_corridor_or_404_for_an_unknown_id() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        await post_json(client, "/v1/corridors", REQUEST)
        response = await client.get("/v1/corridors/C1-AMB-7")
        assert response.status == 200
        status = msgspec.json.decode(await response.read(), type=CorridorStatus)
        assert [row.intersection for row in status.intersections] == ["A", "D"]
        error = await error_of(await client.get("/v1/corridors/C9-NOPE"), 404, "not_found")
        assert "C9-NOPE" in error["message"]

    run(scenario)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/corridors/bad$id",
        "/v1/corridors/a%20b",
        "/v1/corridors/-leading",
        "/v1/corridors/" + "x" * 65,
        "/v1/corridors/bad$id/cancel",
        "/v1/intersections/bad$id",
    ],
)
def test_an_invalid_id_is_refused_before_it_reaches_the_service(path: str) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        ops.broken = True  # any call through to the service would be a 500
        send = client.post if path.endswith("/cancel") else client.get
        error = await error_of(await send(path), 400, "invalid")
        assert error["field"] in ("corridor_id", "intersection")
        assert "not a valid id" in error["message"]

    run(scenario)


def test_cancel_with_and_without_a_reason() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        for vehicle in ("AMB-1", "AMB-2"):
            await post_json(client, "/v1/corridors", {**REQUEST, "vehicle": vehicle})
        response = await post_json(
            client, "/v1/corridors/C1-AMB-1/cancel", {"reason": "false call"}
        )
        assert response.status == 200
        body = await response.json()
        assert (body["state"], body["reason"]) == ("cancelled", "false call")
        response = await client.post("/v1/corridors/C2-AMB-2/cancel")
        assert (await response.json())["reason"] == "cancelled by operator"

    run(scenario)


def test_cancel_refusals() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        await post_json(client, "/v1/corridors", REQUEST)
        path = "/v1/corridors/C1-AMB-7/cancel"
        error = await error_of(await post_json(client, path, {"reason": "  "}), 400, "invalid")
        assert error["field"] == "$.reason"
        error = await error_of(await post_json(client, path, {"reason": 5}), 400, "invalid")
        assert error["field"] == "$.reason"
        too_long = {"reason": "x" * 600}
        await error_of(await post_json(client, path, too_long), 400, "invalid")
        await error_of(await client.post(path, data=b"{", headers=JSON), 400, "invalid")
        response = await client.post(path, data=b"why", headers={"Content-Type": "text/plain"})
        await error_of(response, 415, "unsupported_media_type")
        await error_of(await client.post("/v1/corridors/C5-X/cancel"), 404, "not_found")
        assert (await client.post(path)).status == 200
        error = await error_of(await client.post(path), 409, "conflict")
        assert "already cancelled" in error["message"]

    run(scenario)


# ---- network, intersections, health --------------------------------------------------------


def test_network_view() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        await post_json(client, "/v1/corridors", REQUEST)
        response = await client.get("/v1/network")
        assert response.status == 200
        view = msgspec.json.decode(await response.read(), type=NetworkView)
        assert view == NetworkView(
            now=100.0, intersections=5, online=4, reporting=3, corridors_active=1
        )

    run(scenario)


def test_a_corridor_by_vehicle_and_destination_starts_where_the_vehicle_is() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        fleet = await (await client.get("/v1/vehicles")).json()
        assert fleet["vehicles"][0]["vehicle"] == "AMB-7"
        assert fleet["vehicles"][0]["along"] == 0.25
        body = {"vehicle": "AMB-7", "destination": "D", "priority": 5, "incident": "medical"}
        response = await post_json(client, "/v1/corridors", body)
        assert response.status == 201
        assert (await response.json())["route"] == ["B", "D"]
        assert ops.requests[-1].origin is None
        unheard = {**body, "vehicle": "AMB-8"}
        error = await error_of(await post_json(client, "/v1/corridors", unheard), 400, "invalid")
        assert "no position from AMB-8" in error["message"]

    run(scenario)


def test_intersection_view_known_never_heard_of_and_unknown() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        body = await (await client.get("/v1/intersections/B")).json()
        assert body["presence"] == "online"
        assert body["queues_veh"] == {"B:N": 3.5, "B:S": 0.0}
        silent = await (await client.get(f"/v1/intersections/{ISLAND}")).json()
        assert (silent["presence"], silent["telemetry_age_s"]) == (None, None)
        error = await error_of(await client.get("/v1/intersections/Q"), 404, "not_found")
        assert "'Q'" in error["message"]

    run(scenario)


@pytest.mark.parametrize(
    ("health", "status"), [(Health.OK, 200), (Health.DEGRADED, 200), (Health.DOWN, 503)]
)
def test_health_is_503_only_when_down(health: Health, status: int) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        ops.health_status = health
        response = await client.get("/v1/health")
        assert response.status == status
        report = msgspec.json.decode(await response.read(), type=HealthReport)
        assert report.status is health

    run(scenario)


# ---- what is not an endpoint, and what goes wrong inside -----------------------------------


def test_an_unexpected_error_is_a_generic_500_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        ops.broken = True
        for path in ("/v1/network", "/v1/health"):
            response = await client.get(path)
            error = await error_of(response, 500, "internal")
            assert error["message"].startswith("internal error")
            text = await response.text()
            assert "secret" not in text
            assert "Traceback" not in text
        assert client.app[STATS].errors["internal"] == 2

    with caplog.at_level(logging.ERROR, logger="citybrain.cloud.api"):
        run(scenario)
    assert "secret internal detail" in caplog.text, "the log has the detail"


def test_refusals_are_counted_by_code() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        await client.post("/v1/corridors", data=b"{", headers=JSON)
        await client.get("/v1/corridors/nope")
        errors = client.app[STATS].errors
        assert (errors["invalid"], errors["not_found"]) == (1, 1)

    run(scenario)


def test_unknown_paths_and_methods_answer_in_json() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        await error_of(await client.get("/v2/corridors"), 404, "not_found")
        await error_of(await client.get("/"), 404, "not_found")
        response = await client.delete("/v1/corridors/C1-AMB-7")
        await error_of(response, 405, "method_not_allowed")
        assert "GET" in response.headers["Allow"]
        await error_of(await client.put("/v1/network"), 405, "method_not_allowed")

    run(scenario)


def test_serve_api_on_a_free_port_until_cleanup(tmp_path: Path) -> None:
    tokens = Tokens.make(tmp_path)

    async def main() -> None:
        runner = await serve_api(FakeOperations(), "127.0.0.1", 0, tokens=TokenFile(tokens.path))
        host, port = runner.addresses[0][:2]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{port}/v1/health") as response,
            ):
                assert response.status == 200
        finally:
            await runner.cleanup()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as session:
                await session.get(f"http://{host}:{port}/v1/health")

    asyncio.run(main())


# ---- attacks: who may call, and for what (fake service) -------------------------------------

ENDPOINTS = [
    ("POST", "/v1/corridors"),
    ("GET", "/v1/corridors"),
    ("GET", "/v1/corridors/C1-AMB-7"),
    ("POST", "/v1/corridors/C1-AMB-7/cancel"),
    ("GET", "/v1/network"),
    ("GET", "/v1/intersections/B"),
    ("GET", "/v1/vehicles"),
]


@pytest.mark.security
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_but_health_refuses_a_call_without_a_token(method: str, path: str) -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        await post_json(client, "/v1/corridors", REQUEST, tokens.op)
        before = dict(ops.statuses)
        response = await client.request(method, path, data=msgspec.json.encode(REQUEST))
        error = await error_of(response, 401, "unauthorized")
        assert "Bearer" in error["message"]
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="citybrain"'
        assert ops.statuses == before
        assert len(ops.requests) == 1

    run_as(scenario, user=None)


@pytest.mark.security
@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer cbt_" + "A" * 43,  # well-formed, never issued
        "Bearer " + "x" * 5000,
        "Bearer ",
        "Basic b3A6c2VjcmV0",
        "cbt_no_scheme",
    ],
)
def test_an_unknown_or_malformed_token_is_401_invalid_token(authorization: str) -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        for method, path in [*ENDPOINTS, ("GET", "/v1/health")]:
            response = await client.request(
                method, path, data=msgspec.json.encode(REQUEST),
                headers={**JSON, "Authorization": authorization},
            )  # fmt: skip
            await error_of(response, 401, "unauthorized")
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert ops.requests == []

    run_as(scenario, user=None)


@pytest.mark.security
def test_a_revoked_token_is_refused_from_the_next_call() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        assert (await client.get("/v1/network")).status == 200
        revoke_user(tokens.path, "op")
        error = await error_of(await client.get("/v1/network"), 401, "unauthorized")
        assert "revoked" in error["message"]
        response = await client.get("/v1/network", headers=bearer(tokens.medic))
        assert response.status == 200, "the others' tokens still work"

    run_as(scenario)


@pytest.mark.security
def test_a_token_file_others_can_read_or_write_fails_closed() -> None:
    """Someone loosened the file's mode while the API runs: it refuses every call (503) until
    the mode is fixed, rather than trust users others could have written in."""

    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        tokens.path.chmod(0o644)
        await error_of(await client.get("/v1/network"), 503, "unavailable")
        tokens.path.chmod(0o600)
        assert (await client.get("/v1/network")).status == 200

    run_as(scenario)


def test_health_without_a_token_tells_the_status_only() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        ops.health_status = Health.DOWN
        response = await client.get("/v1/health")
        assert response.status == 503
        assert await response.json() == {"status": "down"}
        response = await client.get("/v1/health", headers=bearer(tokens.viewer))
        assert response.status == 503
        report = msgspec.json.decode(await response.read(), type=HealthReport)
        assert report.status is Health.DOWN

    run_as(scenario, user=None)


@pytest.mark.security
def test_a_viewer_reads_but_may_not_request_or_cancel() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        await post_json(client, "/v1/corridors", REQUEST, tokens.admin)
        for path in ("/v1/corridors", "/v1/corridors/C1-AMB-7", "/v1/network", "/v1/health"):
            assert (await client.get(path)).status == 200, path
        response = await post_json(client, "/v1/corridors", {**REQUEST, "vehicle": "AMB-8"})
        error = await error_of(response, 403, "forbidden")
        assert "viewer" in error["message"]
        response = await client.post("/v1/corridors/C1-AMB-7/cancel")
        await error_of(response, 403, "forbidden")
        response = await client.post("/v1/corridors", data=b"{", headers=JSON)
        await error_of(response, 403, "forbidden")  # refused before the body is read
        assert [r.vehicle for r in ops.requests] == ["AMB-7"]
        assert ops.statuses["C1-AMB-7"].state is CorridorState.GRANTED

    run_as(scenario, user="viewer")


@pytest.mark.security
@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"priority": 7}, "$.priority", "above medic's cap of 6"),
        ({"priority": 10}, "$.priority", "above medic's cap of 6"),
        ({"incident": "fire", "priority": 2}, "$.incident", "'fire' incidents, only for medical"),
        ({"incident": None}, "$.incident", "name the incident type (medical)"),
    ],
)
def test_an_operator_beyond_their_caps_is_403(
    changes: dict[str, Any], field: str, words: str
) -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        body = {k: v for k, v in {**REQUEST, **changes}.items() if v is not None}
        error = await error_of(await post_json(client, "/v1/corridors", body), 403, "forbidden")
        assert error["field"] == field
        assert words in error["message"]
        assert ops.requests == []
        granted = await post_json(client, "/v1/corridors", {**REQUEST, "priority": 6})
        assert granted.status == 201, "within the cap"
        uncapped = {**body, "vehicle": "AMB-9", "priority": 10}
        assert (await post_json(client, "/v1/corridors", uncapped, tokens.admin)).status == 201

    run_as(scenario, user="medic")


@pytest.mark.security
def test_the_requester_is_the_authenticated_user_whatever_the_body_says() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        body = {**REQUEST, "priority": 5, "requester": "chief"}
        assert (await post_json(client, "/v1/corridors", body)).status == 201
        assert ops.requests[-1].requester == "medic"
        assert (await client.post("/v1/corridors/C1-AMB-7/cancel")).status == 200
        assert ops.cancelled_by == ["medic"]

    run_as(scenario, user="medic")


@pytest.mark.security
def test_an_operator_cancels_their_own_and_what_they_could_have_requested() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        corridors = [
            ({**REQUEST, "vehicle": "E-1", "incident": "fire", "priority": 3}, tokens.op),
            ({**REQUEST, "vehicle": "M-9", "priority": 9}, tokens.op),
            ({**REQUEST, "vehicle": "M-5", "priority": 5}, tokens.op),
            ({**REQUEST, "vehicle": "M-2", "priority": 2}, tokens.medic),
        ]
        for body, token in corridors:
            assert (await post_json(client, "/v1/corridors", body, token)).status == 201
        for refused in ("C1-E-1", "C2-M-9"):
            response = await client.post(f"/v1/corridors/{refused}/cancel")
            error = await error_of(response, 403, "forbidden")
            assert "requested by op" in error["message"]
        for allowed in ("C3-M-5", "C4-M-2"):
            assert (await client.post(f"/v1/corridors/{allowed}/cancel")).status == 200
        assert ops.cancelled_by == ["medic", "medic"]

    run_as(scenario, user="medic")


@pytest.mark.security
def test_requests_over_a_users_rate_are_429_with_retry_after() -> None:
    """The medic may make 12 requests a minute (the operator's default): the 13th, a burst
    later, is refused before anything is read, and says when to try again."""

    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        for index in range(12):
            response = await client.post(f"/v1/corridors/C{index}-X/cancel")
            await error_of(response, 404, "not_found")
        response = await post_json(client, "/v1/corridors", {**REQUEST, "priority": 5})
        await error_of(response, 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 5
        assert ops.requests == []
        response = await post_json(client, "/v1/corridors", REQUEST, tokens.op)
        assert response.status == 201, "another user's rate is their own"

    run_as(scenario, user="medic")


# ---- attacks against the real service ------------------------------------------------------

FLOOD_ROAD = grid(8, 8)


@dataclass
class Live:
    """The API over a real ``CloudService`` (its broker connection faked as up), with what it
    sends to the audit trail."""

    client: Client
    service: CloudService
    tokens: Tokens
    audited: list[object]

    def actions(self, corridor_id: str) -> list[OperatorAction]:
        return [
            r
            for r in self.audited
            if isinstance(r, OperatorAction) and r.corridor_id == corridor_id
        ]


def run_live(scenario: Callable[[Live], Awaitable[None]]) -> None:
    async def main() -> None:
        core = CloudCore(FLOOD_ROAD.network, FLOOD_ROAD.plans, wall_clock=time.monotonic)
        audited: list[object] = []

        async def audit(record: object, at: float) -> None:
            audited.append(record)

        service = CloudService(core, signer=PlanSigner.generate(), audit_sink=audit)
        service.connected.set()
        service.clock.seen("g0_0", 1000.0)
        with tempfile.TemporaryDirectory() as directory:
            tokens = Tokens.make(Path(directory))
            async with api(service, tokens.path, None) as client:
                await scenario(Live(client, service, tokens, audited))

    asyncio.run(main())


def _pairs() -> list[tuple[str, str]]:
    """Neighbouring signalized intersections of the grid, each pair once per direction."""
    plans = FLOOD_ROAD.plans
    links = FLOOD_ROAD.network.links
    return [(link.from_node, link.to_node) for link in links
            if link.from_node in plans and link.to_node in plans]  # fmt: skip


@pytest.mark.security
def test_a_flood_of_low_priority_corridors_does_not_lock_out_an_ambulance() -> None:
    """64 bogus priority-3 corridors fill the table: another at priority 3 or below is still
    503, but a genuine priority-9 ambulance is granted, and the newest bogus corridor is
    cancelled (``preempted``), counted and audited with whose request pre-empted it."""

    async def scenario(live: Live) -> None:
        client, tokens = live.client, live.tokens
        flood = add_user(tokens.path, "flood", UserRole.OPERATOR, caps={"medical": 3},
                         max_active=100, requests_per_minute=1000)  # fmt: skip
        dispatch = add_user(tokens.path, "dispatch", UserRole.OPERATOR, caps={"medical": 9})
        pairs = _pairs()
        for index in range(64):
            a, b = pairs[index * 3]
            body = {"vehicle": f"BOGUS-{index}", "origin": a, "route": [a, b], "priority": 3,
                    "incident": "medical"}  # fmt: skip
            response = await post_json(client, "/v1/corridors", body, flood)
            assert response.status == 201, await response.text()
        for priority in (3, 2):
            extra = {"vehicle": f"EXTRA-{priority}", "origin": "g0_0", "route": ["g0_0", "g0_1"],
                     "priority": priority, "incident": "medical"}  # fmt: skip
            response = await post_json(client, "/v1/corridors", extra, flood)
            await error_of(response, 503, "unavailable")
        ambulance = {"vehicle": "AMB-1", "origin": "g0_0", "route": ["g0_0", "g0_1", "g0_2"],
                     "priority": 9, "incident": "medical"}  # fmt: skip
        response = await post_json(client, "/v1/corridors", ambulance, dispatch)
        assert response.status == 201, await response.text()
        granted = msgspec.json.decode(await response.read(), type=CorridorStatus)
        assert granted.state is CorridorState.GRANTED
        statuses = await live.service.corridors()
        ended = [s for s in statuses if s.state not in {CorridorState.GRANTED}]
        assert [(s.vehicle, s.state, s.reason) for s in ended] == [
            ("BOGUS-63", CorridorState.CANCELLED, PREEMPTED)
        ]
        assert len(await live.service.corridors(active_only=True)) == 64
        assert live.service.counters["corridors_preempted"] == 1
        await asyncio.sleep(0)  # the audit records are written in the background
        (preempt,) = [a for a in live.actions(ended[0].corridor_id) if a.kind is ActionKind.PREEMPT]
        assert (preempt.actor, preempt.reason) == (
            "dispatch",
            f"preempted by {granted.corridor_id}",
        )

    run_live(scenario)


@pytest.mark.security
def test_an_operator_cannot_hold_more_live_corridors_than_their_limit() -> None:
    async def scenario(live: Live) -> None:
        pairs = _pairs()

        async def request(index: int) -> aiohttp.ClientResponse:
            a, b = pairs[index]
            body = {"vehicle": f"M-{index}", "origin": a, "route": [a, b], "priority": 5,
                    "incident": "medical"}  # fmt: skip
            return await post_json(live.client, "/v1/corridors", body, live.tokens.medic)

        first = await (await request(0)).json()
        assert (await request(1)).status == 201
        error = await error_of(await request(2), 429, "too_many_corridors")
        assert "medic has 2 live corridors" in error["message"]
        path = f"/v1/corridors/{first['corridor_id']}/cancel"
        assert (await live.client.post(path, headers=bearer(live.tokens.medic))).status == 200
        assert (await request(2)).status == 201, "room again once one ended"

    run_live(scenario)


@pytest.mark.security
def test_requests_and_cancels_are_audited_with_who_made_them() -> None:
    async def scenario(live: Live) -> None:
        body = {"vehicle": "AMB-2", "origin": "g0_0", "route": ["g0_0", "g0_1"],
                "priority": 6, "incident": "medical", "requester": "chief"}  # fmt: skip
        response = await post_json(live.client, "/v1/corridors", body, live.tokens.medic)
        corridor_id = (await response.json())["corridor_id"]
        assert (await live.service.owner(corridor_id)).requester == "medic"
        response = await live.client.post(
            f"/v1/corridors/{corridor_id}/cancel", data=b'{"reason": "false alarm"}',
            headers={**JSON, **bearer(live.tokens.admin)},
        )  # fmt: skip
        assert (await response.json())["reason"] == "false alarm"
        await asyncio.sleep(0)
        actions = [(a.kind, a.actor, a.incident, a.priority, a.reason)
                   for a in live.actions(corridor_id)]  # fmt: skip
        assert actions == [
            (ActionKind.REQUEST, "medic", "medical", 6, None),
            (ActionKind.CANCEL, "admin", "medical", 6, "false alarm"),
        ]

    run_live(scenario)
