"""The operator console in a real browser (Debian's chromium, driven headless by Playwright) on
the live system: a paced simulator on its field bus, real edge agents, a real Mosquitto, the
cloud service with its API, as ``citybrain/live.py`` wires them.

What a person does: sign in (a bad token keeps the login view), see every intersection, request
a corridor by picking origin and destination on the map, watch the acks arrive and the vehicle
move, cancel it, acknowledge an alarm, lose the stream and see it come back, open an unknown
corridor, and be sent back to the login view when the token is revoked. A viewer sees and
cannot act. Screenshots go to ``$CITYBRAIN_ARTIFACTS`` (default ``out/test-artifacts``)/console.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from citybrain.cloud.alarms import AlarmKind
from citybrain.cloud.api import serve_api
from citybrain.cloud.auth import TokenFile, UserRole, add_user, revoke_user
from citybrain.cloud.clock import ControllerClock
from citybrain.cloud.core import CloudCore, CoreSettings
from citybrain.cloud.corridor import Settings as CorridorSettings
from citybrain.cloud.keys import Keyring
from citybrain.cloud.operations import HistoryQuery
from citybrain.cloud.service import CloudService, ServiceSettings
from citybrain.cloud.storage import MemoryStore, TelemetryWriter
from citybrain.edge.agent import EdgeAgent, run_host
from citybrain.edge.settings import (
    BrokerSettings,
    BufferSettings,
    ControllerSettings,
    EdgeSettings,
    LogSettings,
    TelemetrySettings,
    TrustSettings,
)
from citybrain.live import avl_position
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import CorridorState, Presence, Status
from citybrain.models.topics import TopicKind, intersection_topic, vehicle_position_topic
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.networks import arterial
from citybrain.simulator.runner import Run
from citybrain.simulator.scenarios import Level, build

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CITYBRAIN_ARTIFACTS", "out/test-artifacts")) / "console"
REGION = "live"
SPEED = 8.0
DEPART_S = 300.0
AMBULANCE = "AMB-1"

pytestmark = [pytest.mark.browser, pytest.mark.broker]


def _browser_or_skip() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium runs these tests")
    pytest.importorskip("playwright.async_api", reason="pip install playwright (its driver)")


@dataclass
class LiveSystem:
    url: str
    service: CloudService
    run: Run
    route: list[str]
    tokens: Path
    operator: str
    viewer: str
    broker_port: int


@contextlib.asynccontextmanager
async def live_system(broker_port: int, tmp_path: Path) -> AsyncIterator[LiveSystem]:
    """Five intersections of arterial live, the ambulance leaving at ``DEPART_S`` and
    reporting its position while it has a corridor."""
    road = arterial(5, length_m=2000.0)
    scenario = build(road, level=Level.MODERATE, duration_s=DEPART_S + 900.0, seed=5,
                     ambulance_at_s=DEPART_S)  # fmt: skip
    run = Run(scenario.net, scenario.trips)
    run.advance(DEPART_S - 20.0)
    vehicle = scenario.trips.count - 1
    start = int(scenario.trips.route_start[vehicle])
    hops = int(scenario.trips.route_len[vehicle])
    links = [road.network.link_by_id[run.net.link_ids[int(i)]]
             for i in scenario.trips.route_links[start : start + hops]]  # fmt: skip
    route = [
        node
        for node in (links[0].from_node, *(link.to_node for link in links))
        if node in road.plans
    ]
    bus = FieldBusServer(run, speed=SPEED)
    bus_port = await bus.start()
    keys = Keyring(tmp_path / "keys")
    keys.create()
    core = CloudCore(
        road.network, road.plans, wall_clock=time.monotonic,
        settings=CoreSettings(
            emergency_speed_factor=float(scenario.trips.speed_factor[vehicle]),
            corridor=CorridorSettings(takeover_lead_s=0.1 * SPEED),
        ),
    )  # fmt: skip
    store = MemoryStore()
    writer = TelemetryWriter(store)
    writer.start()
    service = CloudService(
        core, signer=keys.signer(), storage=writer,
        settings=ServiceSettings(broker_port=broker_port, client_id="cloud", region=REGION),
        clock=ControllerClock(rate=SPEED),
    )  # fmt: skip
    edges = EdgeSettings(
        region=REGION, intersections="all",
        broker=BrokerSettings(host="127.0.0.1", port=broker_port, client_id_prefix="edge",
                              reconnect_min_s=0.2, reconnect_max_s=1.0, keepalive_s=5),
        controller=ControllerSettings(host="127.0.0.1", port=bus_port, poll_hz=20.0),
        telemetry=TelemetrySettings(period_s=0.5),
        buffer=BufferSettings(path=tmp_path / "edge-buffer"),
        trust=TrustSettings(store=keys.trust_store),
        log=LogSettings(level="warning"),
    )  # fmt: skip
    stop = asyncio.Event()
    agents: list[EdgeAgent] = []
    edge_task = asyncio.create_task(run_host(edges, stop, started=agents.extend))
    cloud_task = asyncio.create_task(service.run(stop))
    tokens = tmp_path / "tokens.json"
    operator = add_user(tokens, "dispatch", UserRole.OPERATOR, caps={"medical": 8})
    viewer = add_user(tokens, "watch", UserRole.VIEWER)
    api = await serve_api(service, "127.0.0.1", 0, tokens=TokenFile(tokens))
    host, port = api.addresses[0][:2]

    async def avl() -> None:
        async with aiomqtt.Client("127.0.0.1", broker_port, identifier="avl") as client:
            while True:
                position = avl_position(run, vehicle)
                if position is not None:  # on the road: its unit reports, corridor or not
                    topic = vehicle_position_topic(AMBULANCE)
                    await client.publish(topic, DEFAULT_CODEC.encode(position), 0)
                await asyncio.sleep(1.0 / SPEED)

    reporting = asyncio.create_task(avl())
    try:
        await _until(lambda: all(s.telemetry is not None for s in core.seen.values()), 30.0)
        yield LiveSystem(f"http://{host}:{port}", service, run, route, tokens, operator,
                         viewer, broker_port)  # fmt: skip
    finally:
        reporting.cancel()
        stop.set()
        await api.cleanup()
        await asyncio.wait_for(edge_task, 15.0)
        await asyncio.wait_for(cloud_task, 15.0)
        await bus.stop()
        await writer.close()


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _wait_js(page: Any, expression: str, *, timeout_s: float = 5.0) -> None:
    """Until ``expression`` is true in the page. Polled from here: Playwright's own polling
    evaluates strings with ``eval``, which the console's content policy rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {expression}")
        await asyncio.sleep(0.1)


async def _stored(live: Any, corridor_id: str, state: CorridorState) -> None:
    """Until the store has ``corridor_id`` in ``state`` (the writer runs in the background:
    on a loaded machine a fixed pause was not always enough)."""
    deadline = time.monotonic() + 10.0
    query = HistoryQuery(state=state)
    while corridor_id not in {
        c.corridor_id for c in (await live.service.corridor_history(query)).corridors
    }:
        if time.monotonic() > deadline:
            raise AssertionError(f"{corridor_id} not stored as {state} within 10 s")
        await asyncio.sleep(0.1)


async def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    print(f"screenshot: {path.resolve()}")


def test_an_operator_runs_a_corridor_and_an_alarm_from_the_console(
    mosquitto: Any, tmp_path: Path
) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    async def main() -> None:
        async with live_system(mosquitto.port, tmp_path) as live, async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 850})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{live.url}/console")

            # no token: the login view, not a blank page; a wrong one keeps it
            await expect(page.locator("#login")).to_be_visible()
            await expect(page.locator("#login-reason")).to_contain_text("Sign in")
            await page.fill("#token", "cbt_guessed")
            await page.click("#login-form button")
            await expect(page.locator("#login-reason")).to_contain_text("refused")
            await _shot(page, "1-login")
            await page.fill("#token", live.operator)
            await page.click("#login-form button")
            await expect(page.locator("#app")).to_be_visible()
            await expect(page.locator("#stream")).to_have_text("live", timeout=10_000)

            # every intersection drawn, each with its state from the live stream
            controlled = len(live.service.core.seen)
            await _wait_js(page, f"window.citybrain.map.drawn === {controlled}")
            await _wait_js(
                page,
                "(() => { const m = window.citybrain.map;"
                " return m.places.every((p, i) => !p.controlled || m.state[i] === 'normal'); })()",
                timeout_s=10.0,
            )
            await _shot(page, "2-network")

            # request a corridor by picking origin and destination on the map
            for node in (live.route[0], live.route[-1]):
                at = await page.evaluate(f"window.citybrain.map.screenOf({node!r})")
                await page.mouse.click(at["x"], at["y"])
            assert await page.input_value("[name=origin]") == live.route[0]
            assert await page.input_value("[name=destination]") == live.route[-1]
            await page.fill("[name=vehicle]", AMBULANCE)
            await page.fill("[name=priority]", "8")
            await page.click("#request-form button[type=submit]")
            await expect(page.locator("#request-result")).to_contain_text("granted")
            corridor_id = live.service.core.manager.by_vehicle[AMBULANCE]
            await expect(page.locator(f"[data-corridor='{corridor_id}']")).to_be_visible()

            # the acks arrive, then the vehicle passes stop lines and moves on the map
            rows = page.locator("#detail tr[data-intersection]")
            status = await live.service.corridor(corridor_id)
            await expect(rows).to_have_count(len(status.intersections))
            await expect(page.locator("#detail td.acked").first).to_be_visible(timeout=10_000)
            await _wait_js(
                page,
                "window.citybrain.map.routes.length === 1"
                " && window.citybrain.map.routes[0].vehicle !== null",
            )
            first = await page.evaluate("({...window.citybrain.map.routes[0].vehicle})")
            await _wait_js(
                page,
                "document.querySelectorAll('#detail tr[data-intersection] td:nth-child(4)')[0]"
                ".textContent !== ''",
                timeout_s=60.0,
            )
            later = await page.evaluate("({...window.citybrain.map.routes[0].vehicle})")
            assert later != first, "the vehicle moved along its route"
            await expect(page.locator("#time-space")).to_be_visible()
            await expect(page.locator("#detail-advice")).to_contain_text(
                re.compile(r"Speed advised to the crew: (its own|\d+ km/h)")
            )
            await expect(page.locator("#record")).to_contain_text("inside their green window")
            await expect(page.locator("#impact")).to_contain_text("cost to cross traffic")
            await _shot(page, "3-corridor")

            # cancel it from the page
            await page.click("#detail-cancel")
            await expect(page.locator("#detail-state")).to_have_text("cancelled")
            await expect(page.locator("#impact")).to_contain_text("did not complete")
            assert (await live.service.corridor(corridor_id)).state == "cancelled"
            await live.service.tick_once()  # its status goes to the store, in the background
            await _stored(live, corridor_id, CorridorState.CANCELLED)
            await page.select_option("#history-form [name=state]", "cancelled")
            await page.click("#history-form button")
            history = page.locator(f"[data-history='{corridor_id}']")
            await expect(history).to_contain_text("cancelled")

            # the same vehicle again, by vehicle and destination: from where it is now
            await page.locator(f"[data-vehicle='{AMBULANCE}'] button.use").click()
            assert await page.input_value("[name=origin]") == ""
            at = await page.evaluate(f"window.citybrain.map.screenOf({live.route[-1]!r})")
            await page.mouse.click(at["x"], at["y"])
            assert await page.input_value("[name=destination]") == live.route[-1]
            await page.click("#request-form button[type=submit]")
            await expect(page.locator("#request-result")).to_contain_text("granted")
            again = await live.service.corridor(live.service.core.manager.by_vehicle[AMBULANCE])
            assert again.route[0] != live.route[0], "it starts past the stop lines it passed"
            await _shot(page, "4-by-vehicle")
            await page.click("#detail-cancel")
            await expect(page.locator("#detail-state")).to_have_text("cancelled")

            # an edge goes offline: the alarm shows up live and the operator acknowledges it
            node = live.route[1]
            offline = Status(intersection=node, presence=Presence.OFFLINE, at=live.run.now)
            async with aiomqtt.Client("127.0.0.1", live.broker_port, identifier="lwt") as client:
                await client.publish(
                    intersection_topic(TopicKind.STATUS, REGION, node),
                    DEFAULT_CODEC.encode(offline), 1,
                )  # fmt: skip
            alarm = page.locator(".alarm", has_text=f"the edge of {node} went offline")
            await expect(alarm).to_be_visible(timeout=10_000)
            await _shot(page, "5-alarm")
            await alarm.locator("button.ack").click()
            await expect(alarm).to_contain_text("acknowledged by dispatch")
            alarms = await live.service.alarms()
            (stored,) = [a for a in alarms if (a.kind, a.subject) == (AlarmKind.EDGE_OFFLINE, node)]
            assert stored.acked_by == "dispatch"

            # a lost stream says so and comes back by itself
            await page.evaluate("window.citybrain.stream.drop()")
            await expect(page.locator("#stream")).to_contain_text("reconnecting")
            await expect(page.locator("#stream")).to_have_text("live", timeout=10_000)

            # an unknown corridor id is a clear message
            await page.goto(f"{live.url}/console/#/corridor/C404-NOPE")
            await expect(page.locator("#detail .notice")).to_contain_text("No corridor")
            await _shot(page, "6-unknown-corridor")

            # a revoked token: back to the login view
            revoke_user(live.tokens, "dispatch")
            await expect(page.locator("#login")).to_be_visible(timeout=30_000)
            await expect(page.locator("#login-reason")).to_contain_text("refused")
            await _shot(page, "7-revoked")
            assert errors == [], errors
            await browser.close()

    asyncio.run(main())


def test_a_viewer_sees_the_city_but_is_offered_no_act(mosquitto: Any, tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    async def main() -> None:
        async with live_system(mosquitto.port, tmp_path) as live, async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = await browser.new_page()
            await page.goto(f"{live.url}/console/")
            await page.fill("#token", live.viewer)
            await page.click("#login-form button")
            await expect(page.locator("#stream")).to_have_text("live", timeout=10_000)
            await expect(page.locator("#who")).to_have_text("watch (viewer)")
            await expect(page.locator("#request-panel")).to_be_hidden()
            controlled = len(live.service.core.seen)
            await _wait_js(page, f"window.citybrain.map.drawn === {controlled}")
            await live.service.survey()  # nothing to alarm yet; raise one as an edge would
            node = live.route[0]
            offline = Status(intersection=node, presence=Presence.OFFLINE, at=live.run.now)
            await live.service.handle(
                intersection_topic(TopicKind.STATUS, REGION, node), DEFAULT_CODEC.encode(offline)
            )
            alarm = page.locator(".alarm", has_text=f"the edge of {node} went offline")
            await expect(alarm).to_be_visible(timeout=10_000)
            await expect(alarm.locator("button")).to_have_count(0)
            # what an edge says is shown as text, never run as markup (a hostile refusal reason)
            hostile = '<img src=x onerror="window.pwned=1">'
            live.service._raise(AlarmKind.PLAN_REFUSED, node, hostile)
            await expect(page.locator(".alarm", has_text=hostile)).to_be_visible(timeout=10_000)
            assert await page.evaluate("window.pwned === undefined")
            assert await page.locator(".alarm img").count() == 0
            await _shot(page, "7-viewer")
            await browser.close()

    asyncio.run(main())
