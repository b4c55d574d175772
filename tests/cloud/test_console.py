"""What the console and operators' tools rely on, against the API over a fake ``Operations``:
the OpenAPI document (served, and the checked-in copy in step), wall-clock times, ``Location``,
history pages, alarms (a viewer sees, an operator acts), the live stream, metrics, and the
console's files (served without data, with a strict content policy)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from citybrain.cloud import openapi
from citybrain.cloud.api import CONSOLE_DIR
from citybrain.cloud.auth import revoke_user
from citybrain.cloud.events import EventHub, EventKind
from citybrain.cloud.operations import HistoryQuery, history_page
from citybrain.models.messages import CorridorRequest, CorridorState

from .test_api import (
    REQUEST,
    Client,
    FakeOperations,
    Tokens,
    bearer,
    error_of,
    post_json,
    run,
    run_as,
)

DOCUMENT = Path(__file__).parents[2] / "docs" / "openapi.json"


# ---- OpenAPI --------------------------------------------------------------------------------


def test_the_checked_in_openapi_document_is_the_generated_one() -> None:
    """Fails when a message or an endpoint changed and docs/openapi.json was not regenerated:
    ``python -m citybrain.cloud.openapi > docs/openapi.json``."""
    assert DOCUMENT.read_bytes() == openapi.rendered()


def test_openapi_is_served_without_a_token_and_describes_every_route() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        response = await client.get("/openapi.json")
        assert response.status == 200
        document = await response.json()
        assert document["openapi"] == "3.1.0"
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in client.app.router.routes()
            if (route.resource is not None and route.resource.canonical.startswith("/v1/"))
            or (route.resource is not None and route.resource.canonical == "/metrics")
        }
        described = {(method, path) for path, item in document["paths"].items() for method in item}
        assert {r for r in routes if r[0] != "head"} == described
        schemas = document["components"]["schemas"]
        assert schemas["CorridorRequest"]["required"] == ["vehicle"]  # origin: its position
        assert "origin" in schemas["CorridorRequest"]["properties"]
        assert "times" in schemas["CorridorReport"]["required"]
        assert set(schemas["ErrorDetail"]["properties"]) == {"code", "message", "field"}

    run_as(scenario, user=None)


# ---- wall clock and Location ------------------------------------------------------------------


def _wall(text: str) -> float:
    assert text.endswith("Z"), "RFC 3339 in UTC"
    return datetime.datetime.fromisoformat(text).timestamp()


def test_a_granted_corridor_has_a_location_and_its_times_as_rfc3339() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await post_json(client, "/v1/corridors", REQUEST)
        assert response.status == 201
        body = await response.json()
        assert response.headers["Location"] == f"/v1/corridors/{body['corridor_id']}"
        shown = await (await client.get(response.headers["Location"])).json()
        assert shown["corridor_id"] == body["corridor_id"]
        times = body["times"]
        assert _wall(times["updated_at"]) == ops.wall_s + (body["updated_at"] - ops.now)
        for row, wall in zip(body["intersections"], times["intersections"], strict=True):
            assert wall["intersection"] == row["intersection"]
            assert _wall(wall["eta"]) == pytest.approx(ops.wall_s + row["eta"] - ops.now)
            assert _wall(wall["window_open"]) == pytest.approx(
                ops.wall_s + row["window_open"] - ops.now
            )
            assert wall["actual_arrival"] is None
        network = await (await client.get("/v1/network")).json()
        assert _wall(network["time"]) == ops.wall_s

    run(scenario)


# ---- history ----------------------------------------------------------------------------------


def test_history_pages_through_every_corridor_newest_first_with_filters() -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        for n in range(7):
            body = {**REQUEST, "vehicle": f"AMB-{n}"}
            assert (await post_json(client, "/v1/corridors", body)).status == 201
            ops.now += 10.0
        await client.post("/v1/corridors/C3-AMB-2/cancel")
        seen: list[str] = []
        after = None
        while True:
            query = "limit=3" + (f"&after={after}" if after else "")
            page = await (await client.get(f"/v1/history/corridors?{query}")).json()
            seen += [c["corridor_id"] for c in page["corridors"]]
            assert all("times" in c for c in page["corridors"])
            after = page["next"]
            if after is None:
                break
        assert seen == ["C3-AMB-2", *(f"C{n + 1}-AMB-{n}" for n in (6, 5, 4, 3, 1, 0))]
        cancelled = await (await client.get("/v1/history/corridors?state=cancelled")).json()
        assert [c["vehicle"] for c in cancelled["corridors"]] == ["AMB-2"]
        one = await (await client.get("/v1/history/corridors?vehicle=AMB-4")).json()
        assert [c["vehicle"] for c in one["corridors"]] == ["AMB-4"]
        window = await (await client.get("/v1/history/corridors?since=100&until=130")).json()
        assert [c["vehicle"] for c in window["corridors"]] == ["AMB-1", "AMB-0"]

    run(scenario)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("state=lost", "state"),
        ("since=nan", "since"),
        ("since=5&until=1", "until"),
        ("after=12.5~bad%20id", "after"),
        ("after=x~C1", "after"),
        ("vehicle=%20", "vehicle"),
        ("sort=asc", "sort"),
    ],
)
def test_bad_history_queries_are_400_naming_the_parameter(query: str, field: str) -> None:
    async def scenario(client: Client, ops: FakeOperations) -> None:
        response = await client.get(f"/v1/history/corridors?{query}")
        assert (await error_of(response, 400, "invalid"))["field"] == field

    run(scenario)


def test_history_in_memory_matches_the_query_semantics() -> None:
    ops = FakeOperations()

    async def fill() -> None:
        for n in range(3):
            await ops.request_corridor(
                msgspec.convert(
                    {**REQUEST, "vehicle": f"V{n}", "requester": "op", "requested_at": 1.0},
                    type=CorridorRequest,
                )
            )
            ops.now += 1.0

    asyncio.run(fill())
    page = history_page(list(ops.statuses.values()), HistoryQuery(limit=2))
    assert [c.vehicle for c in page.corridors] == ["V2", "V1"]
    assert page.next is not None
    stamp, _, corridor_id = page.next.partition("~")
    rest = history_page(
        list(ops.statuses.values()), HistoryQuery(limit=2, after=(float(stamp), corridor_id))
    )
    assert [c.vehicle for c in rest.corridors] == ["V0"]
    assert rest.next is None
    only = HistoryQuery(state=CorridorState.CANCELLED)
    assert history_page(list(ops.statuses.values()), only).corridors == []


# ---- alarms: a viewer sees, an operator acts ----------------------------------------------------


def test_an_operator_acknowledges_an_alarm_and_who_and_when_are_kept() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        alarm = ops.raise_alarm()
        listed = await (await client.get("/v1/alarms?active=true")).json()
        assert [a["alarm_id"] for a in listed["alarms"]] == [alarm.alarm_id]
        response = await client.post(f"/v1/alarms/{alarm.alarm_id}/ack")
        assert response.status == 200
        acked = await response.json()
        assert acked["acked_by"] == "op"
        assert acked["acked_at"] == ops.wall_s
        assert _wall(acked["acked_time"]) == ops.wall_s
        ops.wall_s += 60.0
        again = await client.post(f"/v1/alarms/{alarm.alarm_id}/ack", headers=bearer(tokens.admin))
        assert (await again.json())["acked_by"] == "op", "the first who and when stand"
        assert (await (await client.get("/v1/alarms?active=true")).json()) == {"alarms": []}
        assert len((await (await client.get("/v1/alarms")).json())["alarms"]) == 1
        await error_of(await client.post("/v1/alarms/A1-99/ack"), 404, "not_found")
        await error_of(await client.post("/v1/alarms/bad%20id/ack"), 400, "invalid")

    run_as(scenario)


def test_a_viewer_sees_alarms_but_cannot_acknowledge_them() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        alarm = ops.raise_alarm()
        listed = await (await client.get("/v1/alarms")).json()
        assert [a["alarm_id"] for a in listed["alarms"]] == [alarm.alarm_id]
        error = await error_of(
            await client.post(f"/v1/alarms/{alarm.alarm_id}/ack"), 403, "forbidden"
        )
        assert "viewer" in error["message"]
        assert ops.book.alarms()[0].acked_by is None

    run_as(scenario, user="viewer")


def test_without_a_token_nothing_is_shown_or_done() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        alarm = ops.raise_alarm()
        for method, path in [
            ("GET", "/v1/alarms"),
            ("POST", f"/v1/alarms/{alarm.alarm_id}/ack"),
            ("GET", "/v1/events"),
            ("GET", "/v1/map"),
            ("GET", "/v1/intersections"),
            ("GET", "/v1/history/corridors"),
            ("GET", "/v1/me"),
            ("GET", "/metrics"),
        ]:
            response = await client.request(method, path)
            await error_of(response, 401, "unauthorized")
        assert ops.book.alarms()[0].acked_by is None

    run_as(scenario, user=None)


# ---- the live stream --------------------------------------------------------------------------


async def _events(client: Client, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The first ``count`` events of a stream, parsed."""
    response = await client.get("/v1/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events: list[dict[str, Any]] = []
    block: dict[str, Any] = {}
    async with asyncio.timeout(timeout_s):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in block:
                    events.append(block)
                    if len(events) == count:
                        response.close()
                        return events
                block = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                block[name] = value
    raise AssertionError("the stream ended")


def test_the_stream_sends_the_latest_states_at_once_then_every_event_in_order() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        hub = ops.hub
        hub.publish(EventKind.INTERSECTIONS, await ops.intersection_states())
        reading = asyncio.create_task(_events(client, 3))
        while hub.subscribers == 0:
            await asyncio.sleep(0.01)
        hub.publish(EventKind.ALARM, ops.raise_alarm())
        hub.publish(EventKind.CORRIDOR, {"corridor_id": "C1"})
        events = await reading
        assert [e["event"] for e in events] == ["intersections", "alarm", "corridor"]
        assert [int(e["id"]) for e in events] == [1, 2, 3]
        states = msgspec.json.decode(events[0]["data"])
        assert states["ids"] == ["A", "B", "C", "D", "Z"]
        assert msgspec.json.decode(events[1]["data"])["kind"] == "edge_offline"
        await asyncio.sleep(0.05)
        assert hub.subscribers == 0, "a client that goes leaves no subscription behind"

    run_as(scenario, user="viewer")


def test_a_revoked_token_ends_its_stream() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        response = await client.get("/v1/events")
        assert response.status == 200
        while ops.hub.subscribers == 0:
            await asyncio.sleep(0.01)
        revoke_user(tokens.path, "viewer")
        ops.hub.publish(EventKind.ALARM, ops.raise_alarm())
        async with asyncio.timeout(5.0):
            rest = await response.content.read()
        assert b"event: alarm" not in rest
        assert ops.hub.subscribers == 0

    run_as(scenario, user="viewer")


def test_a_slow_subscriber_loses_its_oldest_events_not_the_service_its_pace() -> None:
    hub = EventHub(queue_size=4)
    subscription = hub.subscribe()
    for n in range(10):
        hub.publish(EventKind.CORRIDOR, {"n": n})
    assert subscription.lost == 6

    async def take() -> list[int]:
        return [e.id for e in await subscription.next_batch(0.1)]

    assert asyncio.run(take()) == [7, 8, 9, 10]


def test_streams_beyond_the_limit_are_503() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        ops.hub = EventHub(max_subscribers=1)
        first = await client.get("/v1/events")
        assert first.status == 200
        await error_of(await client.get("/v1/events"), 503, "unavailable")
        first.close()

    run_as(scenario, user="viewer")


# ---- metrics ----------------------------------------------------------------------------------


def test_metrics_need_a_token_and_are_prometheus_text() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        assert await response.read() == b"# fake\n"

    run_as(scenario, user="viewer")


# ---- the console's files ----------------------------------------------------------------------


def test_the_console_is_served_with_a_strict_policy_and_holds_no_data() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        response = await client.get("/console", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/console/"
        page = await client.get("/console/")
        assert page.status == 200
        assert page.content_type == "text/html"
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["X-Frame-Options"] == "DENY"
        html = await page.text()
        assert "http://" not in html, "no CDN, nothing remote"
        assert "https://" not in html, "no CDN, nothing remote"
        for name in ("app.js", "api.js", "map.js", "console.css"):
            asset = await client.get(f"/console/{name}")
            assert asset.status == 200, name
            assert "https://" not in await asset.text(), f"{name} loads nothing remote"
        await error_of(await client.get("/console/../api.py"), 404, "not_found")
        await error_of(await client.get("/console/..%2fapi.py"), 404, "not_found")
        await error_of(
            await client.get("/console/%2e%2e%2f%2e%2e%2fpyproject.toml"), 404, "not_found"
        )
        await error_of(await client.get("/console/nothing.js"), 404, "not_found")

    run_as(scenario, user=None)


def test_every_console_file_is_shipped_in_the_package() -> None:
    names = {path.name for path in CONSOLE_DIR.iterdir()}
    assert {"index.html", "app.js", "api.js", "map.js", "console.css"} <= names


def test_me_tells_the_console_who_the_token_is() -> None:
    async def scenario(client: Client, ops: FakeOperations, tokens: Tokens) -> None:
        me = await (await client.get("/v1/me", headers=bearer(tokens.medic))).json()
        assert me == {"name": "medic", "role": "operator", "caps": {"medical": 6}}
        viewer = await (await client.get("/v1/me", headers=bearer(tokens.viewer))).json()
        assert viewer["role"] == "viewer"

    run_as(scenario)
