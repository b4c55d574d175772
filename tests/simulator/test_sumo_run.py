"""SUMO micro in the closed loop (``sumo_run``) and our networks exported to SUMO
(``sumo_export``). Skipped when libsumo or netconvert is missing."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from citybrain.closed_loop import COMPARED, Policy, Setup, run_policy
from citybrain.edge.drivers import FieldBusClient
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorState, GreenWindow, SignalPlan
from citybrain.models.signal import Indication
from citybrain.simulator import sumo, sumo_run
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import Trips, fixed_route
from citybrain.simulator.fieldbus import FieldBusServer
from citybrain.simulator.kernels import ARRIVED, QUEUED
from citybrain.simulator.runner import Engine
from citybrain.simulator.scenarios import Level, build, load_network, main_route
from citybrain.simulator.sumo_export import export_network, lane_pairs
from citybrain.simulator.sumo_run import REMOVED, SumoRun
from citybrain.simulator.sumo_xml import read_net_file

try:
    libsumo: Any = importlib.import_module("libsumo")
except ImportError:
    pytest.skip("libsumo is not installed (pip install 'citybrain[sumo]')", allow_module_level=True)
if sumo.find_binary("netconvert") is None:
    pytest.skip("the SUMO tool netconvert is not installed", allow_module_level=True)

pytestmark = pytest.mark.sumo

SHORT = Setup(network="arterial:5", level=Level.HEAVY, warmup_s=300.0, after_s=700.0)
"""Five signals over 7 km: the ambulance needs about 325 s at free flow."""


@pytest.mark.parametrize("policy", COMPARED)
def test_every_policy_runs_in_sumo_and_the_ambulance_arrives(policy: Policy) -> None:
    outcome = run_policy(policy, 1, SHORT, engine=Engine.SUMO)
    journey = outcome.journeys["AMB-1"]
    assert journey.trip.arrived_s is not None
    assert journey.travel_time_s >= 0.95 * journey.trip.free_flow_s
    assert len(journey.trip.stop_lines) == len(journey.route) - 1
    assert journey.trajectory[-1][1] > journey.trajectory[0][1]
    assert outcome.incidents == ()
    if policy is Policy.NO_PRIORITY:
        assert outcome.plans_sent == 0
    else:
        assert outcome.plans_sent > 0
        assert outcome.plans_refused == 0
    if policy is Policy.CORRIDOR:
        assert outcome.corridors == {"AMB-1": CorridorState.COMPLETED}


def _short_run(spec: str = "arterial:3", *, seconds: float = 600.0, **options: Any) -> SumoRun:
    scenario = build(spec, level=Level.HEAVY, duration_s=seconds, seed=3, ambulance_at_s=60.0)
    return SumoRun(scenario.net, scenario.trips, seed=3, **options)


def _sumo_colour(char: str) -> Indication:
    return {"G": Indication.GREEN, "g": Indication.GREEN, "y": Indication.YELLOW}.get(
        char, Indication.RED
    )


def test_our_controllers_displays_are_what_sumo_shows_a_priority_plan_included() -> None:
    with _short_run() as run:
        run.advance(120.0)
        now = run.now
        plan = SignalPlan(
            plan_id="p1",
            intersection="a02",
            seq=1,
            issued_at=now,
            valid_from=now,
            valid_until=now + 120.0,
            windows=(GreenWindow(signal_group="4", open_at=now + 15.0, close_at=now + 40.0),),
        )
        assert run.command("a02", plan).status.value == "accepted"
        group_of = {m.id: m.signal_group for m in run.net.road.network.movements}
        compared = seen_window = 0
        for _ in range(150):
            run.advance(1.0)
            for tls, links in run.sumo_net.tls_links.items():
                state = libsumo.trafficlight.getRedYellowGreenState(tls)
                shown = run.controllers[tls].state_at(run.now).groups
                for link in links:
                    ours = shown[group_of[link.movement]].indication
                    assert _sumo_colour(state[link.index]) is ours, (tls, link, run.now)
                    compared += 1
            if run.controllers["a02"].state_at(run.now).groups["4"].indication is Indication.GREEN:
                seen_window += 1
        assert compared > 1000
        assert seen_window >= 20  # the window ran, and SUMO showed it


def test_detectors_and_queues_come_from_sumo() -> None:
    with _short_run() as run:
        run.advance(400.0)
        truth = run.detectors.true_queues()
        readings = run.detectors.read()
        sim = run.sim
        assert sum(r.advance_count for r in readings.values()) > 100
        assert sum(r.stop_bar_count for r in readings.values()) > 100
        assert all(0.0 <= r.stop_bar_occupancy <= 1.0 for r in readings.values())
        halting = {
            a.id: libsumo.edge.getLastStepHaltingNumber(a.link_id)
            for a in run.net.road.network.approaches
        }
        assert truth == halting
        standing = {
            run._index[vid]
            for vid in libsumo.vehicle.getIDList()
            if libsumo.vehicle.getSpeed(vid) < sumo_run.HALTING_MPS
        }
        assert set(np.flatnonzero(sim.state == QUEUED).tolist()) == standing
        arrived = sim.state == ARRIVED
        assert np.all(np.isfinite(sim.arrived[arrived]))
        assert sim.vehicles_in_network == libsumo.vehicle.getIDCount()


def test_the_field_bus_serves_a_sumo_run() -> None:
    async def scenario(run: SumoRun) -> None:
        server = FieldBusServer(run)
        port = await server.start()
        try:
            async with FieldBusClient(host="127.0.0.1", port=port) as client:
                assert (await client.hello()).intersections == 3
                assert await client.advance(120.0) == pytest.approx(120.0)
                shown = await client.signals("a01")
                assert shown.time == run.now
                state = libsumo.trafficlight.getRedYellowGreenState("a01")
                assert any(c in "Gg" for c in state)
                readings = (await client.detectors("a01")).approaches
                assert {r.approach for r in readings} == {"a01:E", "a01:W", "a01:N", "a01:S"}
                truth = await client.ground_truth("a01")
                assert truth.queues == run.detectors.true_queues("a01")
        finally:
            await server.stop()

    with _short_run() as run:
        asyncio.run(scenario(run))


def test_a_generated_grid_exports_with_one_sumo_connection_per_movement(tmp_path: Path) -> None:
    road = load_network("grid:3x3")
    snet = export_network(road, tmp_path)
    netfile = read_net_file(snet.path)
    network = road.network
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for c in netfile.connections:
        pairs.setdefault((c.from_edge, c.to_edge), []).append((c.from_lane, c.to_lane))
    movements = {(m.from_link, m.to_link): m for m in network.movements}
    assert set(pairs) == set(movements)  # each movement one SUMO connection, and no other
    for key, lanes in pairs.items():
        m = movements[key]
        source, target = network.link_by_id[m.from_link], network.link_by_id[m.to_link]
        assert sorted(lanes) == lane_pairs(source, target, m.turn)
    edges = {e.id: e for e in netfile.edges}
    for link in network.links:
        edge = edges[link.id]
        assert len(edge.lanes) == len(link.lanes)
        assert edge.lanes[0].length_m == pytest.approx(link.length_m, abs=0.01)
        assert edge.lanes[0].speed_mps == pytest.approx(link.speed_limit_mps, abs=0.01)
    controlled = {link.movement for links in snet.tls_links.values() for link in links}
    signalized = {m.id for m in network.movements if m.intersection_id in road.plans}
    assert controlled == signalized
    programs, kept = sumo.signal_programs(snet)
    assert not kept
    assert set(programs) == set(road.plans)


def test_vehicles_sumo_teleports_or_removes_are_reported() -> None:
    with _short_run(time_to_teleport_s=5.0) as run:
        run.advance(200.0)  # waits at red over 5 s: SUMO teleports them
        teleports = [i for i in run.incidents if i.kind == "teleport"]
        assert teleports
        assert all(i.link in run.net.link_index for i in teleports)
        assert {i.kind for i in run.incidents} == {"teleport"}
    with _short_run(time_to_teleport_s=5.0, remove_jammed=True) as run:
        run.advance(200.0)  # the same waits: SUMO takes them out
        removed = [i for i in run.incidents if i.kind == "removed"]
        assert removed
        for incident in removed:
            v = run._index[incident.vehicle]
            assert run.sim.state[v] == REMOVED
            assert np.isnan(run.sim.arrived[v])


def _jamming(monkeypatch: pytest.MonkeyPatch, *, remove_jammed: bool, last_link: bool) -> None:
    """Runs whose ambulance SUMO jams at 360 s (its next two links, or its last one, made a
    crawl) until it teleports it or takes it out after 20 s."""
    from citybrain import closed_loop

    step = SumoRun._step

    def jam_the_ambulance(run: SumoRun) -> None:
        step(run)
        if run.now == 360.0 and "AMB-1" in libsumo.vehicle.getIDList():
            route = libsumo.vehicle.getRoute("AMB-1")
            hop = libsumo.vehicle.getRouteIndex("AMB-1")
            for edge in route[-1:] if last_link else route[hop : hop + 2]:
                libsumo.edge.setMaxSpeed(edge, 0.05)

    def jamming_run(engine: Engine, scenario: Any) -> SumoRun:
        return SumoRun(
            scenario.net, scenario.trips, sumo_net=scenario.sumo_net, seed=scenario.seed,
            time_to_teleport_s=20.0, remove_jammed=remove_jammed,
        )  # fmt: skip

    monkeypatch.setattr(SumoRun, "_step", jam_the_ambulance)
    monkeypatch.setattr(closed_loop, "open_run", jamming_run)


@pytest.mark.parametrize("last_link", [False, True], ids=["on its way", "on its last link"])
@pytest.mark.parametrize("remove_jammed", [False, True], ids=["teleported", "removed"])
def test_an_ambulance_sumo_teleports_or_removes_ends_its_corridor_failed(
    monkeypatch: pytest.MonkeyPatch, remove_jammed: bool, last_link: bool
) -> None:
    """The ambulance jammed on its route until SUMO teleports it or takes it out: the
    corridor fails saying so, and the trip is no travel time. SUMO lists a vehicle it took
    out as arrived, on its last link too: that one was counted arrived, its corridor done."""
    from citybrain.cloud.corridor import CorridorManager

    reasons: list[str] = []
    fail = CorridorManager.fail

    def failing(manager: CorridorManager, corridor_id: str, now_s: float, *, reason: str) -> Any:
        reasons.append(reason)
        return fail(manager, corridor_id, now_s, reason=reason)

    monkeypatch.setattr(CorridorManager, "fail", failing)
    _jamming(monkeypatch, remove_jammed=remove_jammed, last_link=last_link)
    outcome = run_policy(Policy.CORRIDOR, 1, SHORT, engine=Engine.SUMO)
    kind = "removed" if remove_jammed else "teleport"
    assert outcome.corridors == {"AMB-1": CorridorState.FAILED}
    assert len(reasons) == 1
    assert reasons[0].startswith(f"vehicle lost: AMB-1 {kind} on ")
    journey = outcome.journeys["AMB-1"]
    assert journey.lost is not None
    assert journey.lost.startswith(f"AMB-1 {kind} on ")
    assert np.isnan(journey.travel_time_s)


def test_the_ceiling_gives_the_signals_back_when_sumo_removes_its_ambulance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Green all the way holds every signal still ahead until the ambulance passes: one that
    SUMO took out never passes, and those signals were held green for it to the run's end."""
    from citybrain.closed_loop import _Driver

    sent: list[tuple[float, str, str]] = []
    send = _Driver._send

    def recording(driver: _Driver, node: str, plan: SignalPlan) -> Any:
        sent.append((driver.run.now, node, plan.kind.value))
        return send(driver, node, plan)

    monkeypatch.setattr(_Driver, "_send", recording)
    _jamming(monkeypatch, remove_jammed=True, last_link=False)
    outcome = run_policy(Policy.GREEN_ALL_THE_WAY, 1, SHORT, engine=Engine.SUMO)
    (removed,) = [i for i in outcome.incidents if i.vehicle == "AMB-1"]
    assert removed.kind == "removed"
    after = [(kind, node) for at, node, kind in sent if at >= removed.time_s]
    assert after, "nothing released"
    assert {kind for kind, _ in after} == {"release"}


def test_one_sumo_simulation_per_process() -> None:
    with _short_run() as run:
        with pytest.raises(sumo.SumoError, match="one simulation per process"):
            _short_run()
        run.advance(5.0)  # the first one goes on
    with _short_run() as again:  # closed: a new one may start
        again.advance(1.0)
    with pytest.raises(sumo.SumoError, match="closed"):
        again.advance(1.0)
    with _short_run() as other:  # a closed run's vehicle names are another run's now
        other.advance(70.0)
        own = libsumo.vehicle.getMaxSpeed("AMB-1")
        with pytest.raises(sumo.SumoError, match="closed"):
            again.set_speed_cap("AMB-1", 3.0)
        assert libsumo.vehicle.getMaxSpeed("AMB-1") == own


def test_a_run_that_fails_to_start_frees_libsumo_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its first lights failing: the run was never handed over, so nobody could close it,
    and every later run in the process was refused as a second simulation."""

    def failing(tls: str, state: str) -> None:
        raise libsumo.TraCIException(f"no light {tls!r}")

    with monkeypatch.context() as patched:
        patched.setattr(libsumo.trafficlight, "setRedYellowGreenState", failing)
        with pytest.raises(sumo.SumoError, match="setting a traffic light"):
            _short_run()
    assert not libsumo.simulation.isLoaded()
    with _short_run() as run:
        run.advance(1.0)


def test_bad_input_is_refused_with_our_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scenario = build("arterial:3", level=Level.LIGHT, duration_s=300, seed=1)
    snet = export_network(compile_network(load_network("arterial:3")).road, tmp_path)
    with pytest.raises(ValidationError, match="not the run's network"):
        SumoRun(scenario.net, scenario.trips, sumo_net=snet)
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValidationError, match="is a file"):
        SumoRun(scenario.net, scenario.trips, work_dir=tmp_path / "taken")
    # SUMO took a departure at NaN and failed when the vehicle was due, 200 s on
    nan_depart = scenario.trips.depart.copy()
    nan_depart[0] = np.nan
    with pytest.raises(ValidationError, match="departure times"):
        SumoRun(scenario.net, dataclasses.replace(scenario.trips, depart=nan_depart))
    assert not libsumo.simulation.isLoaded()
    # a route SUMO cannot drive: its error is ours, not a traceback from libsumo
    road = scenario.net.road
    route = main_route(road)
    good = fixed_route(scenario.net, route, depart_s=1.0, name="AMB-1")
    broken = Trips(
        good.depart,
        good.route_start,
        good.route_len,
        good.route_links[::-1].copy(),
        good.route_moves,
        good.speed_factor,
        good.emergency,
        good.names,
    )
    with (
        SumoRun(scenario.net, broken) as run,
        pytest.raises(sumo.SumoError, match="no valid route"),
    ):
        run.advance(10.0)
    assert not libsumo.simulation.isLoaded()
    real = importlib.import_module

    def missing(name: str, *args: Any) -> Any:
        if name == "libsumo":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(sumo.SumoUnavailableError, match=r"pip install 'citybrain\[sumo\]'"):
        SumoRun(scenario.net, scenario.trips)
    monkeypatch.setattr(importlib, "import_module", real)
    monkeypatch.setattr(sumo_run, "_tools_version", lambda: "1.0.0")
    with pytest.raises(sumo.SumoUnavailableError, match=r"differ: pip install libsumo==1\.0\.0"):
        SumoRun(scenario.net, scenario.trips)
    # both older than the closed loop is built for: said, even where the two agree
    monkeypatch.setattr(sumo_run, "_tools_version", lambda: "1.15.0")
    monkeypatch.setattr(libsumo.simulation, "getVersion", lambda: (21, "SUMO 1.15.0"))
    with pytest.raises(sumo.SumoUnavailableError, match=r"1\.15\.0 is older than SUMO 1\.20"):
        SumoRun(scenario.net, scenario.trips)
    monkeypatch.undo()
    # a seed SUMO's command line cannot take is refused before SUMO starts
    with pytest.raises(ValidationError, match="seed: must be <= 2147483647"):
        SumoRun(scenario.net, scenario.trips, seed=2**31)


@pytest.mark.parametrize(
    ("version", "release"),
    [("1.28.0", (1, 28, 0)), ("1.20", (1, 20)), ("v1_28_0+0456-1a2b", (1, 28, 0)),
     ("1.21rc1", (1, 21)), ("1.9.2", (1, 9, 2)), ("git", (0,))],
)  # fmt: skip
def test_sumo_versions_compare_by_their_numbers(version: str, release: tuple[int, ...]) -> None:
    assert sumo_run._release(version) == release


def test_a_file_sumo_cannot_load_says_what_sumo_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """libsumo writes why to standard error and raises "Process Error": the error said only
    that. Here a loop on a lane the network does not have."""

    def broken(self: Any, path: Path) -> None:
        loop = '<inductionLoop id="d0" lane="nowhere_0" pos="1" period="60" file="NUL"/>'
        path.write_text(f"<additional>{loop}</additional>")

    monkeypatch.setattr(sumo_run._Loops, "write", broken)
    with pytest.raises(
        sumo.SumoError, match=r"SUMO failed loading: sumo exited with 1:(.|\n)*nowhere_0"
    ):
        _short_run(seconds=60.0)
    assert not libsumo.simulation.isLoaded()
    monkeypatch.undo()
    with _short_run(seconds=60.0) as run:  # the next run in this process starts
        run.advance(1.0)


def test_the_error_that_ended_a_run_is_not_hidden_by_closing_it() -> None:
    """SUMO gone mid-run (here closed under the run's feet): the step's error is the one
    raised, not a second one from reading SUMO's state as the run closes."""
    with pytest.raises(sumo.SumoError, match="failed stepping"), _short_run() as run:
        run.advance(5.0)
        libsumo.close()
        run.advance(1.0)
    assert run.closed
    with _short_run() as run:
        run.advance(5.0)
        libsumo.close()
        with pytest.raises(sumo.SumoError, match="SUMO failed reading"):
            run.close()


def test_loop_counts_never_fall_when_sumo_forgets_a_vehicle_it_teleported() -> None:
    """SUMO drops a vehicle teleported off a loop from the loop's interval count; the count
    read back stays where it was (a fall would reach the cloud as a negative flow)."""
    with _short_run() as run:
        run.advance(200.0)
        loops = run.sim.loops
        real = loops.counts(libsumo, "adv")
        assert real.sum() > 0
        forgetful = ModuleType("libsumo")
        forgetful.inductionloop = SimpleNamespace(getIntervalVehicleNumber=lambda loop: 0)  # type: ignore[attr-defined]
        assert np.array_equal(loops.counts(forgetful, "adv"), real)


def test_a_speed_cap_holds_the_sumo_vehicle_under_it_until_lifted() -> None:
    """Speed advice followed in SUMO: capped before it leaves, the ambulance drives its first
    60 s at no more than 6 m/s, then at its own speed again; bad caps are refused."""
    scenario = build("arterial:3", level=Level.LIGHT, duration_s=400, seed=1)
    route = ["west-a01", "a01-a02", "a02-a03", "a03-east"]
    alone = fixed_route(scenario.net, route, depart_s=1.0, name="AMB-1", speed_factor=1.3)
    with SumoRun(scenario.net, alone) as run:
        for bad in ("nobody", "AMB-1"):
            with pytest.raises(ValidationError):
                run.set_speed_cap(bad, -1.0 if bad == "AMB-1" else 5.0)
        with pytest.raises(ValidationError, match="seconds"):
            run.advance(1e12)
        run.set_speed_cap("AMB-1", 6.0)
        run.advance(61.0)
        track = run.trajectories["AMB-1"]
        assert set(track.links) == {track.links[0]}  # its first link: 360 m of 2 km
        # SUMO inserts it at its own speed: held under the cap from its first step on
        capped = np.diff(track.positions[1:]) / np.diff(track.times[1:])
        assert 5.0 < capped.max() <= 6.0 + 0.01
        run.set_speed_cap("AMB-1", None)
        run.advance(20.0)
        freed = np.diff(track.positions[-10:]) / np.diff(track.times[-10:])
        assert freed.max() > 13.9


def test_a_load_error_libsumo_words_itself_is_kept_without_loading_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route over an edge the network lacks: libsumo's exception says so itself. It was
    dropped for SUMO's binary loading everything again (up to 300 s on a large network)."""
    real_start = sumo_run.SumoRun._start

    def bad_route(self: Any, net_file: Path, routes: Path, *rest: Any) -> None:
        vehicle = '<vehicle id="v" depart="0"><route edges="nowhere"/></vehicle>'
        routes.write_text(f"<routes>{vehicle}</routes>")
        real_start(self, net_file, routes, *rest)

    def no_second_load(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("loaded again")

    monkeypatch.setattr(sumo_run.SumoRun, "_start", bad_route)
    monkeypatch.setattr(sumo_run, "run_tool", no_second_load)
    with pytest.raises(sumo.SumoError, match="SUMO failed loading: The edge 'nowhere' within"):
        _short_run(seconds=60.0)
    assert not libsumo.simulation.isLoaded()


def test_a_network_sumo_crashes_on_fails_with_our_error_and_this_process_lives(
    tmp_path: Path,
) -> None:
    """A network whose connections through its junctions' insides are gone: our reader takes
    it, SUMO dies of a segmentation fault loading it, and libsumo took the whole process with
    it (the field bus, a benchmark)."""
    grid = sumo.netgenerate_grid(tmp_path / "grid.net.xml", rows=2, columns=2)
    bare = tmp_path / "bare.net.xml"
    bare.write_text(re.sub(r'<connection from=":[^>]*/>', "", grid.read_text()))
    imported = sumo.read_net(bare)
    net = compile_network(imported.road)
    with pytest.raises(
        sumo.SumoError, match=r"SUMO cannot run network bare\.net\.xml: sumo crashed \(SIGSEGV\)"
    ):
        SumoRun(net, _no_trips(), sumo_net=imported, work_dir=tmp_path / "run")
    assert not libsumo.simulation.isLoaded()
    assert "bare.net.xml" in (tmp_path / "run" / "sumo-net-check.log").read_text()


def test_a_network_file_gone_before_the_run_fails_with_our_error(tmp_path: Path) -> None:
    exported = export_network(load_network("arterial:3"), tmp_path / "net")
    imported = sumo.read_net(exported.path)
    exported.path.unlink()
    with pytest.raises(sumo.SumoError, match=r"SUMO cannot run network .*arterial-3\.net\.xml"):
        SumoRun(compile_network(imported.road), _no_trips(), sumo_net=imported)
    assert not libsumo.simulation.isLoaded()


def test_a_network_whose_ids_hold_xml_characters_runs(tmp_path: Path) -> None:
    """SUMO takes an edge id with an ampersand; our loop file wrote it unescaped, so SUMO
    could not read it and said only 'Process Error'."""
    exported = export_network(load_network("arterial:3"), tmp_path / "net")
    odd = tmp_path / "odd.net.xml"
    odd.write_text(exported.path.read_text().replace("a01-a02", "a01&amp;a02"))
    imported = sumo.read_net(odd)
    net = compile_network(imported.road)
    with SumoRun(net, _no_trips(), sumo_net=imported) as run:
        run.advance(5.0)


def _no_trips() -> Trips:
    return Trips(
        np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
        np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.bool_), {},
    )  # fmt: skip
