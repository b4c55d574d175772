"""The streaming SUMO network reader: SUMO's own networks read as sumolib reads them, the XML
outside SUMO's usual layout read the same way (through expat), and bad input refused with the
file, the element and the fault named."""

from __future__ import annotations

import dataclasses
import gzip
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator import sumo, sumo_xml
from citybrain.simulator.sumo_xml import (
    NetConnection,
    NetEdge,
    NetFile,
    NetJunction,
    NetLane,
    NetPhase,
    NetProgram,
    allows_car,
    read_net_file,
)

# A -> B -> C, a traffic light at B; with what the reader leaves out (internal edges, an
# internal junction, connections inside B: but for their lanes' speeds and lengths, which
# the connections through them keep) and what it ignores (location, type, param). The way
# AB_0 -> BC_0 crosses B on two internal lanes, 3.00 m then 2.50 m.
NET = """<?xml version="1.0" encoding="UTF-8"?>
<!-- hand-written: A -> B -> C -->
<net version="1.20" junctionCornerDetail="5" limitTurnSpeed="5.50">
    <location netOffset="0.00,0.00" convBoundary="0.00,0.00,200.00,0.00" projParameter="!"/>
    <type id="road" priority="1" numLanes="2" speed="13.89"/>
    <edge id=":B_0" function="internal">
        <lane id=":B_0_0" index="0" speed="6.51" length="3.00" shape="98.50,-1.60 101.50,-1.60"/>
    </edge>
    <edge id=":B_2" function="internal">
        <lane id=":B_2_0" index="0" speed="6.51" length="2.50" shape="101.50,-1.60 101.50,-4.80"/>
    </edge>
    <edge id="AB" from="A" to="B" priority="1">
        <lane id="AB_0" index="0" speed="13.89" length="98.50" shape="0.00,-1.60 50.00,-1.60 98.50,-1.60 98.50,-1.60"/>
    </edge>
    <edge id="BC" from="B" to="C" priority="1">
        <lane id="BC_0" index="0" speed="13.89" length="98.50" disallow="passenger" shape="101.50,-4.80 200.00,-4.80"/>
        <lane id="BC_1" index="1" speed="20.00" length="98.50" allow="bus passenger" shape="101.50,-1.60 200.00,-1.60"/>
    </edge>
    <tlLogic id="B" type="static" programID="0" offset="5">
        <phase duration="30" state="Gr" minDur="10" maxDur="50"/>
        <phase duration="3" state="yr"/>
        <phase duration="30" state="rG"/>
    </tlLogic>
    <junction id="A" type="dead_end" x="0.00" y="0.00" incLanes="" intLanes="" shape="0.00,0.00"/>
    <junction id="B" type="traffic_light" x="100.00" y="0.00" incLanes="AB_0" intLanes=":B_0_0 :B_1_0" shape="100.00,0.00">
        <request index="0" response="00" foes="10" cont="0"/>
        <request index="1" response="01" foes="01" cont="0"/>
    </junction>
    <junction id="C" type="dead_end" x="200.00" y="0.00" incLanes="BC_0 BC_1" intLanes="" shape="200.00,0.00"/>
    <junction id=":B_1_0" type="internal" x="100.00" y="-1.60" incLanes=":B_0_0" intLanes=""/>
    <connection from="AB" to="BC" fromLane="0" toLane="0" via=":B_0_0" tl="B" linkIndex="0" dir="s" state="O"/>
    <connection from="AB" to="BC" fromLane="0" toLane="1" via=":B_1_0" tl="B" linkIndex="1" dir="s" state="o" disallow="passenger"/>
    <connection from=":B_0" to="BC" fromLane="0" toLane="0" via=":B_2_0" dir="s" state="M"/>
    <connection from=":B_2" to="BC" fromLane="0" toLane="0" dir="s" state="M"/>
</net>
"""  # noqa: E501 - a SUMO network, one element a line as SUMO writes it


def _expected(path: Path) -> NetFile:
    phases = (NetPhase(30.0, "Gr", 10.0, 50.0), NetPhase(3.0, "yr", None, None))
    return NetFile(
        path=path,
        edges=(
            NetEdge("AB", "A", "B", "", (NetLane("AB_0", 0, 13.89, 98.5, True, (48.5, 0.0)),)),
            NetEdge(
                "BC",
                "B",
                "C",
                "",
                (
                    NetLane("BC_0", 0, 13.89, 98.5, False, (98.5, 0.0)),
                    NetLane("BC_1", 1, 20.0, 98.5, True, (98.5, 0.0)),
                ),
            ),
        ),
        junctions={
            "A": NetJunction("A", "dead_end", 0.0, 0.0, (), ()),
            "B": NetJunction("B", "traffic_light", 100.0, 0.0, (0b10, 0b01), (0b00, 0b01)),
            "C": NetJunction("C", "dead_end", 200.0, 0.0, (), ()),
        },
        connections=(
            NetConnection("AB", "BC", 0, 0, "s", "B", 0, 0, True, 6.51, 5.5),
            NetConnection("AB", "BC", 0, 1, "s", "B", 1, 1, False, math.nan, math.nan),
        ),
        programs={
            "B": (NetProgram("B", "0", "static", 5.0, (*phases, NetPhase(30.0, "rG", None, None))),)
        },
    )


def _write(tmp_path: Path, text: str, name: str = "net.net.xml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _same(read: NetFile, expected: NetFile) -> None:
    assert read.edges == expected.edges
    assert dict(read.junctions) == dict(expected.junctions)
    assert [_nan_as_none(c) for c in read.connections] == [
        _nan_as_none(c) for c in expected.connections
    ]
    assert dict(read.programs) == dict(expected.programs)


def _nan_as_none(connection: NetConnection) -> tuple[object, ...]:
    """A connection's fields, comparable (a nan is unequal even to itself)."""
    speed, length = connection.via_speed_mps, connection.via_length_m
    return (
        *dataclasses.astuple(connection)[:-2],
        None if math.isnan(speed) else speed,
        None if math.isnan(length) else length,
    )


def test_reads_a_hand_written_network(tmp_path: Path) -> None:
    path = _write(tmp_path, NET)
    net = read_net_file(path)
    assert net.path == path
    _same(net, _expected(path))


def test_the_scanner_reads_it_as_expat_does(tmp_path: Path) -> None:
    path = _write(tmp_path, NET)
    scanned = sumo_xml._read(path, sumo_xml._scan).result(path)  # no fallback to expat
    parsed = sumo_xml._read(path, sumo_xml._parse_with_expat).result(path)
    assert scanned == parsed


def test_reads_gzip(tmp_path: Path) -> None:
    path = tmp_path / "net.net.xml.gz"
    path.write_bytes(gzip.compress(NET.encode()))
    _same(read_net_file(path), _expected(path))


def test_records_are_frozen(tmp_path: Path) -> None:
    net = read_net_file(_write(tmp_path, NET))
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.connections[0].junction_index = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.edges[0].lanes[0].speed_mps = 1.0  # type: ignore[misc]
    assert type(net.edges[0].lanes[0]) is NetLane


# XML that SUMO does not write, read as the XML specification says: each variant of NET must
# read as NET does (through the scanner's fallback to expat where it needs one).
VARIANTS: dict[str, Callable[[str], str]] = {
    "single quotes": lambda text: text.replace('"', "'"),
    "references": lambda text: text.replace('priority="1">', 'priority="1" name="A &amp; B">'),
    "character references": lambda text: text.replace('id="AB"', 'id="&#65;B"'),
    "attributes on lines": lambda text: text.replace(' to="BC" ', '\n        to="BC"\n'),
    "spaces around =": lambda text: text.replace('id="BC_1"', 'id = "BC_1"'),
    "comments": lambda text: text.replace("<junction", "<!-- a - b -->\n    <junction"),
    "a lane with a child": lambda text: text.replace(
        'shape="101.50,-1.60 200.00,-1.60"/>',
        'shape="101.50,-1.60 200.00,-1.60"><param key="k" value="v"/></lane>',
    ),
    "no declaration, one line": lambda text: text[text.index("<net") :].replace("\n", " "),
    "a byte order mark": lambda text: "\ufeff" + text,
    "a latin-1 file": lambda text: text.replace("UTF-8", "ISO-8859-1"),
    "a doctype": lambda text: text.replace("<net ", "<!DOCTYPE net>\n<net ", 1),
    "CDATA": lambda text: text.replace("</net>", "<![CDATA[ <edge> ]]></net>"),
    "a processing instruction": lambda text: text.replace("<net ", "<?sumo x?>\n<net ", 1),
    "a comment after the root": lambda text: text + "<!-- done -->\n",
    "tabs": lambda text: text.replace("    ", "\t"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reads_xml_as_the_specification_says(tmp_path: Path, variant: str) -> None:
    text = VARIANTS[variant](NET)
    path = _write(tmp_path, text)
    if variant == "a latin-1 file":
        path.write_bytes(text.encode("latin-1"))
    _same(read_net_file(path), _expected(path))


def test_reads_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags, runs of internal elements and flat elements cut by the chunk boundaries."""
    monkeypatch.setattr(sumo_xml, "_CHUNK_BYTES", 97)
    path = _write(tmp_path, NET)
    scanned = sumo_xml._read(path, sumo_xml._scan).result(path)
    _same(scanned, _expected(path))


def test_a_reference_stops_a_run_of_connections(tmp_path: Path) -> None:
    """Connections laid out alike are matched by one pattern, which leaves references to the
    tag-by-tag reading."""
    text = NET.replace(' state="o" disallow="passenger"/>', ' state="&#111;"/>')
    path = _write(tmp_path, text)
    scanned = sumo_xml._read(path, sumo_xml._scan).result(path)
    assert scanned == sumo_xml._read(path, sumo_xml._parse_with_expat).result(path)
    assert [c.allows_car for c in scanned.connections] == [True, True]


def test_allows_car_as_sumo_reads_permissions() -> None:
    assert allows_car(None, None)
    assert allows_car("", "")  # empty means not given
    assert allows_car("bus passenger", None)
    assert not allows_car("bus", None)
    assert allows_car("all", None)
    assert not allows_car(None, "passenger taxi")
    assert not allows_car(None, "all")
    assert allows_car(None, "bus private")  # 'private' is a class of its own
    assert not allows_car("ignoring", None)
    assert not allows_car("bus", "truck")  # allow wins: disallow is ignored
    assert allows_car("passenger", "passenger")


# --- bad input ----------------------------------------------------------------------------------

BAD: list[tuple[str, Callable[[str], str], list[str]]] = [
    ("malformed", lambda t: t.replace("</junction>", "", 1), ["malformed XML", "line"]),
    (
        "program without phases",
        lambda t: re.sub(r"<phase [^>]*/>", "", t),
        ["<tlLogic id='B' programID='0'>", "has no phase"],
    ),
    ("not closed", lambda t: t.replace("</net>", ""), ["malformed XML"]),
    ("empty", lambda t: "", ["malformed XML"]),
    ("text", lambda t: "just text", ["malformed XML"]),
    ("not a network", lambda t: "<routes><vehicle id='x'/></routes>", ["<routes>", "SUMO network"]),
    (
        "length not a number",
        lambda t: t.replace('length="98.50" shape="0.00', 'length="nan" shape="0.00'),
        ["<lane id='AB_0'>", "<edge id='AB'>", "length", "'nan'", "line 13"],
    ),
    (
        "negative length",
        lambda t: t.replace('length="98.50" shape="0.00', 'length="-1" shape="0.00'),
        ["<lane id='AB_0'>", "length", "'-1'"],
    ),
    (
        "speed missing",
        lambda t: t.replace('id="BC_1" index="1" speed="20.00"', 'id="BC_1" index="1"'),
        ["<lane id='BC_1'>", "speed", "missing", "line 17"],
    ),
    (
        "lane without id",
        lambda t: t.replace('<lane id="BC_1" ', "<lane "),
        ["<lane id=None> of <edge id='BC'>", "id", "missing"],
    ),
    (
        "zero speed",
        lambda t: t.replace('speed="20.00"', 'speed="0"'),
        ["<lane id='BC_1'>", "speed", "positive"],
    ),
    (
        "lanes out of order",
        lambda t: t.replace('id="BC_1" index="1"', 'id="BC_1" index="3"'),
        ["<lane id='BC_1'>", "index", "out of order"],
    ),
    (
        "bad shape",
        lambda t: t.replace('shape="101.50,-4.80 200.00,-4.80"', 'shape="101.50 x,y"'),
        ["<lane id='BC_0'>", "shape"],
    ),
    (
        "unknown junction",
        lambda t: t.replace('from="B" to="C"', 'from="B" to="X"'),
        ["<edge id='BC'>", "to", "unknown junction 'X'"],
    ),
    ("edge without from", lambda t: t.replace('from="A" ', ""), ["<edge id='AB'>", "from"]),
    (
        "repeated edge",
        lambda t: t.replace('<edge id="BC"', '<edge id="AB"'),
        ["<edge id='AB'>", "not unique"],
    ),
    (
        "junction x not a number",
        lambda t: t.replace('x="100.00"', 'x="east"'),
        ["<junction id='B'>", " x", "'east'"],
    ),
    (
        "request bits",
        lambda t: t.replace('foes="10"', 'foes="1x"'),
        ["<request index='0'>", "<junction id='B'>", "foes", "'1x'"],
    ),
    (
        "requests out of order",
        lambda t: t.replace('<request index="1"', '<request index="2"'),
        ["<request index='2'>", "index", "out of order"],
    ),
    (
        "unknown edge",
        lambda t: t.replace('to="BC" fromLane="0" toLane="1"', 'to="ZZ" fromLane="0" toLane="1"'),
        ["<connection from='AB' to='ZZ'>", "unknown edge 'ZZ'", "line 32"],
    ),
    (
        "unknown lane",
        lambda t: t.replace('toLane="1"', 'toLane="5"'),
        ["<connection from='AB' to='BC'>", "toLane", "no lane 5"],
    ),
    (
        "link index not a number",
        lambda t: t.replace('linkIndex="1"', 'linkIndex="one"'),
        ["<connection from='AB' to='BC'>", "linkIndex", "'one'"],
    ),
    (
        "phase states",
        lambda t: t.replace('state="yr"', 'state="y"'),
        ["<phase> 1", "<tlLogic id='B' programID='0'>", "state", "1 links", "first phase 2"],
    ),
    (
        "phase duration",
        lambda t: t.replace('duration="3"', 'duration="inf"'),
        ["<phase> 1", "duration", "'inf'"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "words"), [(m, w) for _, m, w in BAD], ids=[n for n, _, _ in BAD]
)
def test_refuses_bad_input(tmp_path: Path, mutate: Callable[[str], str], words: list[str]) -> None:
    path = _write(tmp_path, mutate(NET))
    with pytest.raises(ValidationError) as caught:
        read_net_file(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_names_the_line_when_expat_reads(tmp_path: Path) -> None:
    text = NET.replace('length="98.50" shape="0.00', 'length="nan" shape="0.00')
    path = _write(tmp_path, text.replace('"', "'"))  # outside the scanner's subset
    with pytest.raises(
        ValidationError, match=r"line 13: <lane id='AB_0'> of <edge id='AB'> length"
    ):
        read_net_file(path)


def test_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        read_net_file(tmp_path / "missing.net.xml")


def test_refuses_a_broken_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "net.net.xml.gz"
    path.write_bytes(gzip.compress(NET.encode())[:-20])
    with pytest.raises(ValidationError, match=r"net\.net\.xml\.gz: unreadable"):
        read_net_file(path)


# --- SUMO's networks, against sumolib -------------------------------------------------------------

sumo_needed = pytest.mark.skipif(
    any(sumo.find_binary(tool) is None for tool in ("netgenerate", "netconvert")),
    reason="needs the SUMO tools netgenerate and netconvert",
)


def _tool(name: str, *arguments: str, out: Path) -> Path:
    binary = sumo.find_binary(name)
    assert binary is not None
    command = [str(binary), *arguments, "--output-file", str(out)]
    sumo.run_tool(command, log=out.with_suffix(".log"), timeout_s=120)
    return out


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SUMO's own output: a signalized 3-lane grid as our importer builds it, a random network
    (lane counts, priorities, buses forbidden), and a grid with sidewalks and crossings."""
    folder = tmp_path_factory.mktemp("sumo-xml")
    grid = sumo.netgenerate_grid(folder / "grid.net.xml", rows=3, columns=4)
    random = _tool(
        "netgenerate",
        *("--rand", "--rand.iterations", "60", "--seed", "7", "--random-lanenumber"),
        *("--tls.guess", "--default.disallow", "bus"),
        out=folder / "random.net.xml",
    )
    plain = _tool(
        "netgenerate",
        *("--grid", "--grid.number", "3", "--grid.length", "100", "--default.lanenumber", "2"),
        out=folder / "plain.net.xml",
    )
    walking = _tool(
        "netconvert",
        *("--sumo-net-file", str(plain), "--sidewalks.guess", "--crossings.guess"),
        *("--tls.guess",),
        out=folder / "walking.net.xml",
    )
    return {"grid": grid, "random": random, "walking": walking}


def _heading(shape: list[tuple[float, float]]) -> tuple[float, float]:
    for (x0, y0), (x1, y1) in zip(shape[-2::-1], shape[:0:-1], strict=True):
        if (x1 - x0, y1 - y0) != (0.0, 0.0):
            return (x1 - x0, y1 - y0)
    return (0.0, 0.0)


def _check_lanes(net: NetFile, sumo_net: Any) -> None:
    edges = {edge.id: edge for edge in net.edges}
    special = [e for e in sumo_net.getEdges(withInternal=True) if e.getFunction() != "internal"]
    assert set(edges) == {edge.getID() for edge in special}
    for sumo_edge in special:
        edge = edges[sumo_edge.getID()]
        assert edge.function == sumo_edge.getFunction()
        assert (edge.from_junction, edge.to_junction) == (
            sumo_edge.getFromNode().getID(),
            sumo_edge.getToNode().getID(),
        )
        assert len(edge.lanes) == len(sumo_edge.getLanes())
        for lane, sumo_lane in zip(edge.lanes, sumo_edge.getLanes(), strict=True):
            assert (lane.id, lane.index) == (sumo_lane.getID(), sumo_lane.getIndex())
            assert (lane.speed_mps, lane.length_m) == (sumo_lane.getSpeed(), sumo_lane.getLength())
            assert lane.allows_car == sumo_lane.allows("passenger")
            assert lane.end_heading == pytest.approx(_heading(sumo_lane.getShape()))


def _check_connections(net: NetFile, sumo_net: Any) -> int:
    """Every connection as sumolib reads it, with its junction index and right of way."""
    ours = {(c.from_edge, c.from_lane, c.to_edge, c.to_lane): c for c in net.connections}
    assert len(ours) == len(net.connections)
    seen = 0
    for node in sumo_net.getNodes():
        junction = net.junctions[node.getID()]
        assert (junction.type, (junction.x, junction.y)) == (node.getType(), node.getCoord())
        links = []
        for link in node.getConnections():
            if link.getFrom().getFunction():
                continue  # from a walking area: counted, not kept
            key = (link.getFrom().getID(), link.getFromLane().getIndex())
            connection = ours[(*key, link.getTo().getID(), link.getToLane().getIndex())]
            assert connection.junction_index == node.getLinkIndex(link)
            assert connection.direction == link.getDirection()
            assert connection.tl == (link.getTLSID() or "")
            assert connection.link_index == link.getTLLinkIndex()
            assert connection.allows_car == link.allows("passenger")
            assert connection.via_length_m == pytest.approx(
                _via_length(sumo_net, link.getViaLaneID()), nan_ok=True
            )
            links.append(link)
            seen += 1
        indices = [node.getLinkIndex(link) for link in links]
        if not node._foes:  # no <request> rows (an unregulated junction)
            assert junction.foes == ()
            continue
        for a, i in zip(links, indices, strict=True):
            for b, j in zip(links, indices, strict=True):
                if i >= 0 and j >= 0:
                    assert bool(junction.foes[i] >> j & 1) == node.areFoes(i, j)
                    assert bool(junction.response[j] >> i & 1) == node.forbids(a, b)
    return seen


def _via_length(sumo_net: Any, lane_id: str) -> float:
    """The internal lanes from ``lane_id`` on, as sumolib links them (a turn that waits
    inside its junction goes on from its first internal lane to a second)."""
    total = 0.0 if lane_id else math.nan
    while lane_id:
        lane = sumo_net.getLane(lane_id)
        total += lane.getLength()
        onward = [link.getViaLaneID() for link in lane.getOutgoing() if link.getViaLaneID()]
        lane_id = onward[0] if onward else ""
    return total


def test_a_connection_keeps_its_way_through_the_junction(tmp_path: Path) -> None:
    """Both internal lanes of a turn that waits inside its junction, end to end: the first
    connection crosses B on 3.00 m then 2.50 m; the second's internal lane is not in the
    file, so its length is not known."""
    for reader in (sumo_xml._scan, sumo_xml._parse_with_expat):
        path = _write(tmp_path, NET)
        read = sumo_xml._read(path, reader).result(path)
        assert read.connections[0].via_length_m == pytest.approx(5.5)
        assert math.isnan(read.connections[1].via_length_m)


def _check_programs(net: NetFile, sumo_net: Any) -> None:
    lights = sumo_net.getTrafficLights()
    assert set(net.programs) == {light.getID() for light in lights}
    for light in lights:
        programs = net.programs[light.getID()]
        assert [program.program_id for program in programs] == list(light.getPrograms())
        for program in programs:
            sumo_program = light.getPrograms()[program.program_id]
            assert (program.type, program.offset_s) == (sumo_program._type, sumo_program._offset)
            expected = [
                (phase.duration, phase.state, phase.minDur, phase.maxDur)
                for phase in sumo_program.getPhases()
            ]
            assert [
                (
                    p.duration_s,
                    p.state,
                    _or_minus_one(p.min_duration_s),
                    _or_minus_one(p.max_duration_s),
                )
                for p in program.phases
            ] == expected


def _or_minus_one(value: float | None) -> float:
    return -1 if value is None else value


@pytest.mark.sumo
@sumo_needed
@pytest.mark.parametrize("name", ["grid", "random", "walking"])
def test_reads_sumo_networks_as_sumolib(networks: dict[str, Path], name: str) -> None:
    sumolib: Any = pytest.importorskip("sumolib")
    path = networks[name]
    net = read_net_file(path)
    sumo_net = sumolib.net.readNet(
        str(path), withInternal=True, withPedestrianConnections=True, withPrograms=True
    )
    _check_lanes(net, sumo_net)
    assert _check_connections(net, sumo_net) == len(net.connections)
    _check_programs(net, sumo_net)
    assert set(net.junctions) == {node.getID() for node in sumo_net.getNodes()}


@pytest.mark.sumo
@sumo_needed
@pytest.mark.parametrize("name", ["grid", "random", "walking"])
def test_the_scanner_reads_sumo_output_alone(networks: dict[str, Path], name: str) -> None:
    """SUMO's output never needs expat, and both read it alike."""
    path = networks[name]
    scanned = sumo_xml._read(path, sumo_xml._scan).result(path)
    assert scanned == sumo_xml._read(path, sumo_xml._parse_with_expat).result(path)


@pytest.mark.sumo
@sumo_needed
def test_reads_sumo_output_in_small_chunks(
    networks: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of internal elements, flat edges and connection runs cut by chunk boundaries."""
    path = networks["walking"]
    whole = read_net_file(path)
    monkeypatch.setattr(sumo_xml, "_CHUNK_BYTES", 4093)
    assert sumo_xml._read(path, sumo_xml._scan).result(path) == whole


@pytest.mark.sumo
@sumo_needed
def test_walking_areas_have_no_junction_index(networks: dict[str, Path]) -> None:
    net = read_net_file(networks["walking"])
    walking_areas = {edge.id for edge in net.edges if edge.function == "walkingarea"}
    into = [c for c in net.connections if c.to_edge in walking_areas]
    assert into
    assert all(c.junction_index == -1 for c in into)
    assert all(c.junction_index >= 0 for c in net.connections if c not in into)


@pytest.mark.sumo
@sumo_needed
def test_grid_junction_logic(networks: dict[str, Path]) -> None:
    """A grid's junctions share their logic, and each link of a signalized junction has a row."""
    net = read_net_file(networks["grid"])
    signalized = [j for j in net.junctions.values() if j.type == "traffic_light"]
    assert len({id(j.foes) for j in signalized}) == 1 < len(signalized)
    ends = {edge.id: edge.to_junction for edge in net.edges}
    for connection in net.connections:
        junction = net.junctions[ends[connection.from_edge]]
        assert 0 <= connection.junction_index < len(junction.foes)
        assert connection.tl == junction.id
        assert connection.direction in ("s", "l", "r")
