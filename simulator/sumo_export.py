"""Our own networks (``arterial``, ``grid:RxC``, network files) as SUMO networks.

SUMO can only run what it has as a ``.net.xml``. ``export_network`` writes a generated
``RoadNetwork`` as netconvert's plain XML and builds one:

- nodes at our coordinates, ``traffic_light`` (a light of the node's own id) where we
  signalize, ``priority`` elsewhere;
- one edge per link with our id, its lanes, speed and **length** (given explicitly, so SUMO
  drives the distance we do);
- one edge-to-edge connection per movement, from every lane whose turns include the
  movement's turn (our lanes are numbered from the kerb, as SUMO's are), to the target's
  kerb lanes for a right turn, its median lanes for a left or U-turn, the same index (capped)
  for a through; no other connection (no turnarounds);
- ``--no-internal-links``: our generated links run node to node and a vehicle crosses a
  junction in no distance (``compiled.mv_junction_m`` is 0); SUMO's internal lanes would add
  some 20 m per junction that our free-flow times do not have.

The result is a ``SumoNet`` over *our* road (identity id maps), whose traffic-light links are
read back from the built network: each SUMO connection's link index is tied to the movement of
its edge pair, so ``signal_programs``/``write_signal_programs``, ``write_routes`` and the SUMO
closed loop (``sumo_run``) work on it as on an imported network. Every SUMO connection must
belong to exactly one movement and every movement must have its connections, else
``SumoError`` names the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from citybrain.models.network import Lane, Link, Turn
from citybrain.simulator.networks import RoadNetwork
from citybrain.simulator.sumo import (
    EdgePair,
    SumoError,
    SumoNet,
    require_binary,
    run_tool,
    traffic_light_links,
)
from citybrain.simulator.sumo_xml import read_net_file

NETCONVERT_TIMEOUT_S = 600.0


def export_network(road: RoadNetwork, out_dir: Path) -> SumoNet:
    """Build ``out_dir/<name>.net.xml`` from ``road`` with netconvert and map it back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / road.name
    nodes, edges, connections = (
        stem.with_suffix(".nod.xml"),
        stem.with_suffix(".edg.xml"),
        stem.with_suffix(".con.xml"),
    )
    net_file = stem.with_suffix(".net.xml")
    write_plain(road, nodes, edges, connections)
    command = [
        str(require_binary("netconvert")),
        "--node-files",
        str(nodes),
        "--edge-files",
        str(edges),
        "--connection-files",
        str(connections),
        "--no-internal-links",
        "--no-turnarounds",
        "--offset.disable-normalization",
        "--output-file",
        str(net_file),
    ]
    run_tool(command, log=stem.with_suffix(".netconvert.log"), timeout_s=NETCONVERT_TIMEOUT_S)
    return map_back(road, net_file)


def write_plain(road: RoadNetwork, nodes: Path, edges: Path, connections: Path) -> None:
    """netconvert's plain node, edge and connection files for ``road``."""
    network = road.network
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    lines = [head, "<nodes>"]
    for node in network.intersections:
        kind = (
            f'type="traffic_light" tl={quoteattr(node.id)}'
            if node.signalized
            else 'type="priority"'
        )
        lines.append(
            f'    <node id={quoteattr(node.id)} x="{node.x_m:.3f}" y="{node.y_m:.3f}" {kind}/>'
        )
    nodes.write_text("\n".join([*lines, "</nodes>"]) + "\n")
    lines = [head, "<edges>"]
    for link in network.links:
        lines.append(
            f"    <edge id={quoteattr(link.id)} from={quoteattr(link.from_node)} "
            f'to={quoteattr(link.to_node)} numLanes="{len(link.lanes)}" '
            f'speed="{link.speed_limit_mps:.3f}" length="{link.length_m:.3f}"/>'
        )
    edges.write_text("\n".join([*lines, "</edges>"]) + "\n")
    lines = [head, "<connections>"]
    by_id = network.link_by_id
    for movement in network.movements:
        source, target = by_id[movement.from_link], by_id[movement.to_link]
        for from_lane, to_lane in lane_pairs(source, target, movement.turn):
            lines.append(
                f"    <connection from={quoteattr(source.id)} to={quoteattr(target.id)} "
                f'fromLane="{from_lane}" toLane="{to_lane}"/>'
            )
    connections.write_text("\n".join([*lines, "</connections>"]) + "\n")


def lane_pairs(source: Link, target: Link, turn: Turn) -> list[tuple[int, int]]:
    """(from lane, to lane) of a movement: every source lane allowing ``turn``, onto the
    target's kerb lanes for a right turn, its median lanes for a left or U-turn, the same
    index (capped at its lanes) for a through."""
    lanes: Sequence[Lane] = [lane for lane in source.lanes if turn in lane.turns]
    if not lanes:
        raise SumoError(f"link {source.id!r} has no lane for its {turn} movement")
    top = len(target.lanes) - 1
    out = []
    for rank, lane in enumerate(sorted(lanes, key=lambda lane: lane.index)):
        if turn is Turn.RIGHT:
            to = min(rank, top)
        elif turn in (Turn.LEFT, Turn.UTURN):
            to = max(0, top - (len(lanes) - 1 - rank))
        else:
            to = min(lane.index, top)
        out.append((lane.index, to))
    return out


def map_back(road: RoadNetwork, net_file: Path) -> SumoNet:
    """The ``SumoNet`` of ``road`` built as ``net_file`` (ids are ours on both sides)."""
    netfile = read_net_file(net_file)
    network = road.network
    movement_of = {(m.from_link, m.to_link): m for m in network.movements}
    ends = {edge.id: edge.to_junction for edge in netfile.edges if edge.function == ""}
    pairs: dict[tuple[str, str], EdgePair] = {}
    for connection in netfile.connections:
        key = (connection.from_edge, connection.to_edge)
        if connection.from_edge not in ends or connection.to_edge not in ends:
            continue  # internal lanes (none with --no-internal-links)
        if key not in movement_of:
            raise SumoError(f"{net_file}: SUMO connects {key[0]} to {key[1]}, no movement does")
        pairs.setdefault(key, EdgePair([], ends[connection.from_edge])).connections.append(
            connection
        )
    missing = [m.id for key, m in movement_of.items() if key not in pairs]
    if missing:
        raise SumoError(f"{net_file}: movements without a SUMO connection: {missing[:5]}")
    moves = [movement_of[key] for key in pairs]
    identity = {node.id: node.id for node in network.intersections}
    tls_links, tls_size = traffic_light_links(
        netfile, pairs, [m.id for m in moves], [m.turn for m in moves], identity
    )
    links = {link.id: link.id for link in network.links}
    return SumoNet(net_file, road, links, links, identity, tls_links, tls_size, ())
