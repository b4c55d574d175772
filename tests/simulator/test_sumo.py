"""SUMO interoperability: importing SUMO networks, exporting our demand and signal timing, and
running SUMO (micro and meso) next to our engine. Skipped without sumolib and the SUMO tools
(``pip install eclipse-sumo sumolib``)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from citybrain.models.checks import check_id
from citybrain.models.errors import ValidationError
from citybrain.models.network import Turn
from citybrain.simulator import sumo
from citybrain.simulator.compiled import compile_network
from citybrain.simulator.demand import random_trips
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.routes import read_routes

sumolib: Any = pytest.importorskip("sumolib")
for _tool in ("sumo", "netgenerate", "netconvert"):
    if sumo.find_binary(_tool) is None:
        pytest.skip(f"the SUMO tool {_tool!r} is not installed", allow_module_level=True)

pytestmark = pytest.mark.sumo

DIRECTIONS = {"s": Turn.THROUGH, "l": Turn.LEFT, "r": Turn.RIGHT, "t": Turn.UTURN}


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sumo-grid") / "grid3x3.net.xml"
    return sumo.netgenerate_grid(out, rows=3, columns=3)


@pytest.fixture(scope="module")
def imported(grid_file: Path) -> sumo.SumoNet:
    return sumo.read_net(grid_file)


def _netconvert(folder: Path, nodes: str, edges: str) -> Path:
    """A SUMO network from plain node and edge XML (for ids netgenerate never makes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "n.nod.xml").write_text(f"<nodes>{nodes}</nodes>")
    (folder / "e.edg.xml").write_text(f"<edges>{edges}</edges>")
    out = folder / "plain.net.xml"
    binary = sumo.find_binary("netconvert")
    assert binary is not None
    command = [str(binary), "--node-files", str(folder / "n.nod.xml")]
    command += ["--edge-files", str(folder / "e.edg.xml"), "--no-turnarounds", "-o", str(out)]
    sumo.run_tool(command, log=folder / "netconvert.log", timeout_s=120)
    return out


def test_import_gives_a_road_network(grid_file: Path) -> None:
    road = sumo.import_net(grid_file)
    assert isinstance(road, RoadNetwork)
    assert road.name == "sumo-grid3x3"
    compiled = compile_network(road)
    assert compiled.links == len(road.network.links)


def test_links_match_the_sumo_edges(grid_file: Path, imported: sumo.SumoNet) -> None:
    net = sumolib.net.readNet(str(grid_file))
    edges = [e for e in net.getEdges(withInternal=False) if e.getFunction() == ""]
    network = imported.road.network
    assert len(network.links) == len(edges) == 48
    for edge in edges:
        link = network.link(imported.link_of_edge[edge.getID()])
        assert imported.edge_of_link[link.id] == edge.getID()
        assert link.length_m == pytest.approx(edge.getLength())
        assert link.speed_limit_mps == pytest.approx(edge.getSpeed())
        assert len(link.lanes) == edge.getLaneNumber() == 3
        assert imported.junction_of_node[link.from_node] == edge.getFromNode().getID()
        assert imported.junction_of_node[link.to_node] == edge.getToNode().getID()
        for lane, sumo_lane in zip(link.lanes, edge.getLanes(), strict=True):
            turns = {DIRECTIONS[c.getDirection()] for c in sumo_lane.getOutgoing()}
            assert lane.turns == (turns or {Turn.THROUGH})
    pairs = {
        (c.getFrom().getID(), c.getTo().getID())
        for edge in edges
        for lane in edge.getLanes()
        for c in lane.getOutgoing()
    }
    movements = {
        (imported.edge_of_link[m.from_link], imported.edge_of_link[m.to_link])
        for m in network.movements
    }
    assert movements == pairs


def test_a_movement_crosses_its_junction_at_sumo_s_internal_lane_speed(
    grid_file: Path, imported: sumo.SumoNet
) -> None:
    """netconvert slows turns for their curve: the speed a movement crosses its junction at
    is the mean of its connections' internal lanes', as sumolib reads them."""
    net = sumolib.net.readNet(str(grid_file), withInternal=True)
    slowed = 0
    for movement in imported.road.network.movements:
        source = net.getEdge(imported.edge_of_link[movement.from_link])
        target = imported.edge_of_link[movement.to_link]
        vias = [
            c.getViaLaneID()
            for lane in source.getLanes()
            for c in lane.getOutgoing()
            if c.getTo().getID() == target and c.getViaLaneID()
        ]
        speeds = [net.getLane(via).getSpeed() for via in vias]
        assert movement.junction_speed_mps == pytest.approx(sum(speeds) / len(speeds))
        slowed += movement.junction_speed_mps < source.getSpeed() - 0.1
    turns = sum(m.turn in (Turn.LEFT, Turn.RIGHT) for m in imported.road.network.movements)
    assert slowed >= turns > 0  # every turn slowed (netgenerate's default limitTurnSpeed)


def test_a_movement_crosses_its_junction_on_sumo_s_internal_lanes(
    grid_file: Path, imported: sumo.SumoNet
) -> None:
    """The way a movement drives across its junction is its connections' internal lanes end
    to end, as sumolib links them (a left turn that waits inside the junction crosses it on
    two), in the mean over its lanes; not the estimate from the node coordinates."""
    net = sumolib.net.readNet(str(grid_file), withInternal=True)
    network = imported.road.network
    split = 0
    for movement in network.movements:
        source = net.getEdge(imported.edge_of_link[movement.from_link])
        target = imported.edge_of_link[movement.to_link]
        lengths = []
        for lane in source.getLanes():
            for c in lane.getOutgoing():
                if c.getTo().getID() != target or not c.getViaLaneID():
                    continue
                via = net.getLane(c.getViaLaneID())
                onward = [k.getViaLaneID() for k in via.getOutgoing() if k.getViaLaneID()]
                second = net.getLane(onward[0]).getLength() if onward else 0.0
                lengths.append(via.getLength() + second)
                split += bool(onward)
        assert movement.junction_m == pytest.approx(sum(lengths) / len(lengths))
        assert network.junction_m(movement) == movement.junction_m
    assert split > 0  # left turns that wait inside their junction


def test_junctions_and_signal_plans(grid_file: Path, imported: sumo.SumoNet) -> None:
    net = sumolib.net.readNet(str(grid_file), withPrograms=True)
    road = imported.road
    network = road.network
    assert len(network.intersections) == 21
    for junction in net.getNodes():
        node = network.intersection(
            next(n for n, j in imported.junction_of_node.items() if j == junction.getID())
        )
        assert node.signalized == (junction.getType() == "traffic_light")
        assert (node.x_m, node.y_m) == pytest.approx(junction.getCoord())
    assert sorted(road.plans) == sorted(f"{c}{r}" for c in "ABC" for r in range(3))
    for node_id, plan in road.plans.items():
        (program,) = net.getTLS(node_id).getPrograms().values()
        assert plan.plan_id == "sumo"
        assert plan.cycle_s == pytest.approx(sum(float(p.duration) for p in program.getPhases()))
        assert len([a for a in network.approaches if a.intersection_id == node_id]) == 4


def _sumo_colours(program: Any, at_s: float) -> str:
    """SUMO's state string ``at_s`` into its program (phase 0 starts at its offset)."""
    cycle = sum(float(p.duration) for p in program.getPhases())
    t = (at_s - float(program._offset)) % cycle
    for phase in program.getPhases():
        if t < float(phase.duration):
            return str(phase.state)
        t -= float(phase.duration)
    raise AssertionError("past the cycle")


def test_our_plans_show_what_sumo_s_programs_show(grid_file: Path, imported: sumo.SumoNet) -> None:
    """Mid-way through every SUMO phase each controlled car link shows the same colour in our
    plan (our 0.5 s all-red comes out of the end of a green, never its middle)."""
    net = sumolib.net.readNet(str(grid_file), withPrograms=True)
    group_of = {m.id: m.signal_group for m in imported.road.network.movements}
    for tls, links in imported.tls_links.items():
        plan = imported.road.plans[tls]
        (program,) = net.getTLS(tls).getPrograms().values()
        begin = float(program._offset)
        for phase in program.getPhases():
            middle = begin + float(phase.duration) / 2.0
            for link in links:
                ours = sumo.group_colour(
                    plan, group_of[link.movement], (middle - plan.offset_s) % plan.cycle_s
                )
                theirs = phase.state[link.index]
                assert ours == {"g": "G"}.get(theirs, theirs), (tls, link, middle)
            begin += float(phase.duration)


def test_conflicts_are_sumo_s_foes(grid_file: Path, imported: sumo.SumoNet) -> None:
    """Every conflict we hold is a SUMO foe pair, and every SUMO foe pair the program never
    shows green together is a conflict (permitted turns, SUMO's ``g``, stay compatible)."""
    net = sumolib.net.readNet(str(grid_file), withPrograms=True)
    group_of = {m.id: m.signal_group for m in imported.road.network.movements}
    for tls, links in imported.tls_links.items():
        signals = imported.road.plans[tls].signals
        junction = net.getNode(tls)
        (program,) = net.getTLS(tls).getPrograms().values()
        connection_of = {c[2]: c for c in net.getTLS(tls).getConnections()}
        for a, b in itertools.combinations(links, 2):
            ga, gb = group_of[a.movement], group_of[b.movement]
            if ga == gb:
                continue
            ia = _junction_index(junction, connection_of[a.index])
            ib = _junction_index(junction, connection_of[b.index])
            foes = junction.areFoes(ia, ib) or junction.areFoes(ib, ia)
            together = any(
                p.state[a.index] in "Gg" and p.state[b.index] in "Gg" for p in program.getPhases()
            )
            if signals.conflict(ga, gb):
                assert foes or any(
                    _are_foes(junction, connection_of, x, y)
                    for x in links
                    for y in links
                    if group_of[x.movement] == ga and group_of[y.movement] == gb
                )
            elif foes:
                assert together, (tls, a, b)


def _junction_index(junction: Any, connection: tuple[Any, Any, int]) -> int:
    lane_in, lane_out, _ = connection
    found = [c for c in lane_in.getOutgoing() if c.getToLane() is lane_out]
    return int(junction.getLinkIndex(found[0]))


def _are_foes(junction: Any, connection_of: dict[int, Any], x: Any, y: Any) -> bool:
    ix = _junction_index(junction, connection_of[x.index])
    iy = _junction_index(junction, connection_of[y.index])
    return bool(junction.areFoes(ix, iy) or junction.areFoes(iy, ix))


def test_signal_programs_reproduce_our_plans(grid_file: Path, imported: sumo.SumoNet) -> None:
    net = sumolib.net.readNet(str(grid_file), withPrograms=True)
    programs, kept = sumo.signal_programs(imported)
    assert kept == ()
    assert sorted(programs) == sorted(imported.road.plans)
    group_of = {m.id: m.signal_group for m in imported.road.network.movements}
    for tls, program in programs.items():
        plan = imported.road.plans[tls]
        sumo_length = len(next(iter(net.getTLS(tls).getPrograms().values())).getPhases()[0].state)
        assert program.cycle_s == pytest.approx(plan.cycle_s)
        assert all(len(state) == sumo_length for _, state in program.phases)
        links = imported.tls_links[tls]
        begin = program.offset_s
        for duration, state in program.phases:
            for t in (begin + 0.5, begin + duration - 0.5):
                local = (t - plan.offset_s) % plan.cycle_s
                for link in links:
                    # boundaries are snapped to whole seconds: allow the colour 1 s away
                    nearby = {
                        sumo.group_colour(plan, group_of[link.movement], (local + d) % plan.cycle_s)
                        for d in (-1.0, 0.0, 1.0)
                    }
                    assert state[link.index].replace("g", "G") in nearby
                green = {link.index for link in links if state[link.index] == "G"}
                for link in links:
                    if link.index in green:
                        assert not (link.foes & green), "two priority greens cross"
            begin += duration


def test_ids_are_sanitized(tmp_path: Path) -> None:
    long_in = "a_very_long_edge_identifier_that_goes_on_beyond_sixty_four_characters_in"
    long_out = long_in.removesuffix("in") + "out"
    net_file = _netconvert(
        tmp_path,
        '<node id="c/1" x="0" y="0" type="traffic_light"/><node id="-w#0" x="-200" y="0"/>'
        '<node id="e@0" x="200" y="0"/><node id="n_0" x="0" y="200"/>'
        '<node id="s.0" x="0" y="-200"/>',
        '<edge id="-in#1" from="-w#0" to="c/1" numLanes="2"/>'
        '<edge id="in#1" from="c/1" to="-w#0" numLanes="2"/>'
        '<edge id="east/in" from="e@0" to="c/1"/><edge id="east/out" from="c/1" to="e@0"/>'
        f'<edge id="{long_in}" from="n_0" to="c/1"/><edge id="{long_out}" from="c/1" to="n_0"/>'
        '<edge id="s+in" from="s.0" to="c/1"/>',
    )
    imported = sumo.read_net(net_file)
    network = imported.road.network
    ids = [
        *(n.id for n in network.intersections),
        *(link.id for link in network.links),
        *(m.id for m in network.movements),
        *(a.id for a in network.approaches),
        *(d.id for d in network.detectors),
    ]
    for value in ids:
        check_id("id", value)
    assert imported.link_of_edge["-in#1"] == "x-in_1"
    assert imported.link_of_edge["in#1"] == "in_1"
    assert imported.link_of_edge[long_in] != imported.link_of_edge[long_out]
    assert len(imported.link_of_edge[long_in]) <= 64
    assert imported.junction_of_node["c_1"] == "c/1"
    assert set(imported.edge_of_link.values()) == set(imported.link_of_edge)
    assert list(imported.road.plans) == ["c_1"]


def test_a_light_with_one_phase_becomes_unsignalized(tmp_path: Path) -> None:
    net_file = _netconvert(
        tmp_path,
        '<node id="a" x="0" y="0"/><node id="b" x="200" y="0" type="traffic_light"/>'
        '<node id="c" x="400" y="0"/>',
        '<edge id="ab" from="a" to="b"/><edge id="bc" from="b" to="c"/>'
        '<edge id="cb" from="c" to="b"/><edge id="ba" from="b" to="a"/>',
    )
    imported = sumo.read_net(net_file)
    assert imported.road.plans == {}
    assert not imported.road.network.intersection("b").signalized
    assert any("'b'" in note and "unsignalized" in note for note in imported.notes)
    programs, kept = sumo.signal_programs(imported)
    assert kept == ()
    assert all(set(state) <= {"G", "g"} for _, state in programs["b"].phases)


def test_routes_end_at_dead_ends_even_with_turnarounds(tmp_path: Path) -> None:
    net_file = sumo.netgenerate_grid(
        tmp_path / "uturns.net.xml", rows=2, columns=2, lanes=2, turnarounds=True
    )
    imported = sumo.read_net(net_file)
    assert any("U-turn" in note for note in imported.notes)
    network = imported.road.network
    uturns = [m for m in network.movements if m.turn is Turn.UTURN]
    signalized = {n.id for n in network.intersections if n.signalized}
    inside = [m for m in uturns if m.intersection_id in signalized]
    assert inside, "U-turns inside the grid are kept"
    assert all(m.signal_group.startswith("L") for m in inside), "controlled by the light"
    # U-turns at the dead ends are kept too (route files use them), with no signal
    at_dead_ends = [m for m in uturns if m.intersection_id not in signalized]
    assert at_dead_ends
    assert all(m.signal_group == sumo.FREE_GROUP for m in at_dead_ends)
    assert sorted(imported.road.plans) == ["A0", "A1", "B0", "B1"]
    programs, kept = sumo.signal_programs(imported)
    assert kept == ()
    grid_lights = ["A0", "A1", "B0", "B1"]
    assert set(grid_lights) <= set(programs)
    # netgenerate puts a light on the dead ends too: it never stops their U-turn, so SUMO
    # gets an always-green program there, as our unsignalized dead end runs
    for tls in set(programs) - set(grid_lights):
        assert all(set(state) <= {"G", "g"} for _, state in programs[tls].phases)
    net = compile_network(imported.road)
    trips = random_trips(net, seed=5, duration_s=600.0, vehicles_per_hour=3000.0)
    nodes = network.intersection_by_id
    for v in range(trips.count):
        start, length = trips.route_start[v], trips.route_len[v]
        links = [network.links[i] for i in trips.route_links[start : start + length]]
        assert not nodes[links[-1].to_node].signalized
        assert all(nodes[link.to_node].signalized for link in links[:-1])
    # a route file may turn at a dead end, as SUMO routes it: that trip is kept
    file = tmp_path / "turn.rou.xml"
    file.write_text('<routes><trip id="t" depart="0" from="A0bottom0" to="bottom0A0"/></routes>')
    demand = read_routes([file], link_of_edge=imported.link_of_edge, net=net)
    assert demand.report.dropped == {}
    start, length = demand.trips.route_start[0], demand.trips.route_len[0]
    route = [net.link_ids[i] for i in demand.trips.route_links[start : start + length]]
    assert [imported.edge_of_link[link] for link in route] == ["A0bottom0", "bottom0A0"]


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        sumo.read_net(tmp_path / "missing.net.xml")


def test_malformed_xml_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.net.xml"
    broken.write_text('<net version="1.20"><edge id="a" from="x"')
    with pytest.raises(ValidationError, match="malformed XML") as caught:
        sumo.read_net(broken)
    assert str(broken) in str(caught.value)


def test_a_file_without_roads_is_refused(tmp_path: Path) -> None:
    routes = tmp_path / "routes.net.xml"
    routes.write_text('<routes><vehicle id="v" depart="0"/></routes>')
    with pytest.raises(ValidationError, match="not a SUMO network"):
        sumo.read_net(routes)


def test_a_network_without_traffic_lights_is_refused(tmp_path: Path) -> None:
    plain = sumo.netgenerate_grid(
        tmp_path / "priority.net.xml", rows=2, columns=2, traffic_lights=False
    )
    with pytest.raises(ValidationError, match="no traffic lights") as caught:
        sumo.read_net(plain)
    assert str(plain) in caught.value.field


def test_routes_are_the_same_edges_in_sumo(
    grid_file: Path, imported: sumo.SumoNet, tmp_path: Path
) -> None:
    net = compile_network(imported.road)
    trips = random_trips(net, seed=3, duration_s=300.0, vehicles_per_hour=2000.0)
    inputs = sumo.export_for_sumo(imported, net, trips, tmp_path)
    assert inputs.vehicles == trips.count > 0
    assert inputs.same_signal_timing
    sumo_net = sumolib.net.readNet(str(grid_file))
    vehicles = list(sumolib.xml.parse(str(inputs.routes), "vehicle"))
    assert len(vehicles) == trips.count
    departs = [float(v.depart) for v in vehicles]
    assert departs == sorted(departs)
    for vehicle in vehicles:
        index = int(vehicle.id.removeprefix("v"))
        start, length = trips.route_start[index], trips.route_len[index]
        ours = [net.link_ids[i] for i in trips.route_links[start : start + length]]
        edges = vehicle.route[0].edges.split()
        assert edges == [imported.edge_of_link[link] for link in ours]
        for a, b in itertools.pairwise(edges):
            assert sumo_net.getEdge(a).getConnections(sumo_net.getEdge(b))
        assert vehicle.departLane == "best"
        assert vehicle.departSpeed == "max"
        assert float(vehicle.speedFactor) == pytest.approx(trips.speed_factor[index], abs=1e-4)


@pytest.mark.slow
def test_a_tiny_comparison_reports_finite_numbers(grid_file: Path, tmp_path: Path) -> None:
    comparison = sumo.compare(
        grid_file,
        duration_s=180.0,
        vehicles_per_hour_per_entry=400.0,
        out_dir=tmp_path,
        seed=2,
    )
    assert comparison.same_signal_timing
    assert [r.simulator for r in comparison.others] == ["sumo-micro", "sumo-meso"]
    for result in (comparison.ours, *comparison.others):
        assert result.simulated_s == pytest.approx(180.0)
        assert result.vehicles == comparison.vehicles > 0
        assert 0 < result.arrived <= result.departed <= result.vehicles
        for value in (
            result.wall_s,
            result.loop_wall_s,
            result.mean_travel_time_s,
            result.throughput_vph,
            result.mean_route_length_m,
        ):
            assert math.isfinite(value)
            assert value >= 0.0
        assert result.mean_travel_time_s > 0.0
    document = comparison.to_dict()
    json.dumps(document, allow_nan=False)
    for figures in document["versus_citybrain"].values():
        assert all(v is not None and math.isfinite(v) for v in figures.values())


def test_sumo_errors_are_reported(grid_file: Path, tmp_path: Path) -> None:
    missing_routes = tmp_path / "none.rou.xml"
    with pytest.raises(sumo.SumoError, match="exited"):
        sumo.run_sumo(grid_file, missing_routes, duration_s=10.0, out_dir=tmp_path)


@pytest.mark.parametrize("binary", ["not-this-machine", "hangs"])
def test_a_sumo_that_does_not_run_is_said_with_how_to_install_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary: str
) -> None:
    """Another machine's build (exec format error) or a binary that never answers: our
    error, saying what to do, not an OSError or a timeout from subprocess."""
    tool = tmp_path / "sumo"
    if binary == "hangs":
        tool.write_text("#!/bin/sh\nsleep 30\n")
        monkeypatch.setattr(subprocess, "run", _timing_out)
    else:
        tool.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))  # an ELF header for no machine
    tool.chmod(0o755)
    monkeypatch.setattr(sumo, "find_binary", lambda name="sumo": tool)
    with pytest.raises(sumo.SumoUnavailableError, match=r"does not run .*pip install"):
        sumo.sumo_version()
    with pytest.raises(sumo.SumoError, match=r"does not run|ran over"):
        sumo.run_tool([str(tool), "--version"], log=None, timeout_s=1.0)


def _timing_out(command: list[str], **options: Any) -> Any:
    raise subprocess.TimeoutExpired(command, options.get("timeout") or 0.0)
