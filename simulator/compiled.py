"""A ``RoadNetwork`` flattened into the plain arrays the Numba kernels run on.

Index spaces: links ``0..L-1``, movements ``0..M-1``, signalized controllers ``0..S-1``. Each
controller's signal groups get bit numbers so a whole intersection's "may depart" state is one
integer mask. Timing plans become per-phase cycle positions, greens and group masks.

What the kernels' model needs from the network's layout is worked out here once: which lanes
each movement may use and so which movements share a queue (``mv_queue``), what each queue's
lanes store, how far a vehicle drives across each junction (``mv_junction_m``, from where the
links' lanes end short of their junctions) and which permitted turns give way to which
movements (``mv_yield``). A network whose links run from node to node with a lane per turn
(the generated arterial and grids) has no junction distances and no permitted turns.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M, DetectorKind, Link, Movement, Turn
from citybrain.models.traffic import saturation_headway_s
from citybrain.simulator.networks import RoadNetwork

TURN_CODES = {Turn.LEFT: 0, Turn.THROUGH: 1, Turn.RIGHT: 2, Turn.UTURN: 3}
MAX_GROUPS = 62


@dataclass(frozen=True)
class CompiledNetwork:
    road: RoadNetwork
    link_ids: tuple[str, ...]
    link_index: dict[str, int]
    link_length: NDArray[np.float64]
    link_lanes: NDArray[np.int32]
    link_speed: NDArray[np.float64]
    link_storage: NDArray[np.int32]
    link_advance: NDArray[np.float64]
    """Position (from the link's start) of the advance detector."""
    link_out_start: NDArray[np.int64]
    """CSR over movements leaving each link (movements are sorted by source link)."""
    movement_ids: tuple[str, ...]
    movement_index: dict[str, int]
    mv_from: NDArray[np.int32]
    mv_to: NDArray[np.int32]
    mv_turn: NDArray[np.int8]
    mv_controller: NDArray[np.int32]
    mv_bit: NDArray[np.int32]
    mv_lanes: NDArray[np.int32]
    mv_headway: NDArray[np.float64]
    """Saturation headway of a movement's own lanes (all of them discharging)."""
    mv_slower: NDArray[np.float64]
    """Its vehicles' headways over the stop line against a through's (1 or more): a turn
    taken slower than the link's speed (``Movement.junction_speed_mps``) is followed at
    about 1 s plus a car length at that speed (``turning_headway_factor``)."""
    mv_lane_mask: NDArray[np.int64]
    """Bit ``i`` set when the source link's lane ``i`` allows the movement's turn."""
    mv_queue: NDArray[np.int64]
    """The queue a movement's vehicles wait in: movements of one link that share a lane wait
    in one queue, in arrival order (a lane is one file of cars whatever their turn). A queue is
    numbered by its lowest movement, so a movement with lanes of its own is its own queue."""
    qu_lanes: NDArray[np.int32]
    """Per queue (at its number; 0 elsewhere): the lanes its movements share among them."""
    qu_mask: NDArray[np.int64]
    qu_headway: NDArray[np.float64]
    """Per queue: saturation headway of all its lanes together."""
    qu_storage: NDArray[np.int32]
    """Per queue: the vehicles its lanes store (their share of the link's storage)."""
    qu_single: NDArray[np.int64]
    """Per queue: its movement when it has one only, else -1 (it may then be skipped on red
    or a full next link without looking at its vehicles)."""
    qu_signal: NDArray[np.int64]
    """Per queue: a movement whose signal all its movements share, else -1."""
    mv_yield_start: NDArray[np.int64]
    """CSR over ``mv_yield``: per movement, the movements it gives way to when both may go."""
    mv_yield: NDArray[np.int32]
    """A left turn or U-turn at a signal gives way to the throughs and rights coming the
    other way and to those merging into its link, where its plan lets them go at the same
    time (a permitted turn, SUMO's ``g``; a protected one never meets them)."""
    mv_is_foe: NDArray[np.bool_]
    """Movements some other movement gives way to."""
    mv_junction_m: NDArray[np.float64]
    """Distance driven inside the junction between the stop line and the next link
    (``Network.junction_m``: SUMO's internal lanes where the map gives them, else half the
    part of each of the two links' junction-to-junction distance their lanes leave uncovered;
    links that run from node to node, like the generated ones, leave none)."""
    controller_ids: tuple[str, ...]
    controller_index: dict[str, int]
    group_bits: tuple[dict[str, int], ...]
    """Per controller: signal group id -> bit number."""
    ctl_cycle: NDArray[np.float64]
    ctl_offset: NDArray[np.float64]
    ctl_phase_start: NDArray[np.int64]
    """CSR over phases of each controller."""
    ph_begin: NDArray[np.float64]
    """Green start of each phase within the cycle."""
    ph_green: NDArray[np.float64]
    ph_mask: NDArray[np.int64]
    ph_clear: NDArray[np.float64]
    """Change interval after each phase (its intergreen)."""
    ph_keep: NDArray[np.int64]
    """Groups of each phase that are also green in the next one (overlaps)."""

    @property
    def links(self) -> int:
        return len(self.link_ids)

    @property
    def movements(self) -> int:
        return len(self.movement_ids)

    def movement_between(self, source: int, target: int) -> int:
        for m in range(self.link_out_start[source], self.link_out_start[source + 1]):
            if self.mv_to[m] == target:
                return m
        raise ValidationError(
            "route", f"no movement from link {self.link_ids[source]!r} to {self.link_ids[target]!r}"
        )


def compile_network(road: RoadNetwork) -> CompiledNetwork:
    net = road.network
    link_ids = tuple(link.id for link in net.links)
    link_index = {link_id: i for i, link_id in enumerate(link_ids)}
    links = net.links
    length = np.array([link.length_m for link in links], dtype=np.float64)
    lanes = np.array([len(link.lanes) for link in links], dtype=np.int32)
    advance = np.zeros(len(links), dtype=np.float64)
    for detector in net.detectors:
        if detector.kind is DetectorKind.ADVANCE:
            i = link_index[detector.link_id]
            advance[i] = length[i] - detector.distance_from_stop_line_m

    controller_ids = tuple(sorted(road.plans))
    controller_index = {node: i for i, node in enumerate(controller_ids)}
    group_bits: list[dict[str, int]] = []
    cycle = np.zeros(len(controller_ids), dtype=np.float64)
    offset = np.zeros(len(controller_ids), dtype=np.float64)
    phase_start = np.zeros(len(controller_ids) + 1, dtype=np.int64)
    begins: list[float] = []
    greens: list[float] = []
    masks: list[int] = []
    clears: list[float] = []
    keeps: list[int] = []
    for c, node in enumerate(controller_ids):
        plan = road.plans[node]
        bits = {group: bit for bit, group in enumerate(sorted(plan.signals.groups))}
        if len(bits) > MAX_GROUPS:
            raise ValidationError("signal_groups", f"{node!r} has more than {MAX_GROUPS} groups")
        group_bits.append(bits)
        cycle[c] = plan.cycle_s
        offset[c] = plan.offset_s
        for index, phase in enumerate(plan.phases):
            begins.append(plan.phase_starts_s[index])
            greens.append(plan.greens_s[index])
            masks.append(sum(1 << bits[g] for g in phase.groups))
            following = plan.phases[(index + 1) % len(plan.phases)]
            clears.append(plan.intergreen_after_s(index))
            keeps.append(sum(1 << bits[g] for g in phase.groups & following.groups))
        phase_start[c + 1] = len(begins)

    ordered = sorted(net.movements, key=lambda m: (link_index[m.from_link], m.id))
    movement_ids = tuple(m.id for m in ordered)
    mv_from = np.array([link_index[m.from_link] for m in ordered], dtype=np.int32)
    mv_to = np.array([link_index[m.to_link] for m in ordered], dtype=np.int32)
    mv_turn = np.array([TURN_CODES[m.turn] for m in ordered], dtype=np.int8)
    mv_controller = np.full(len(ordered), -1, dtype=np.int32)
    mv_bit = np.zeros(len(ordered), dtype=np.int32)
    mv_lanes = np.ones(len(ordered), dtype=np.int32)
    mv_headway = np.zeros(len(ordered), dtype=np.float64)
    mv_slower = np.ones(len(ordered), dtype=np.float64)
    x = {node.id: (node.x_m, node.y_m) for node in net.intersections}
    lane_mask = _lane_masks(ordered, net.link_by_id, x)
    for i, m in enumerate(ordered):
        source = net.link_by_id[m.from_link]
        serving = int(lane_mask[i]).bit_count()
        if serving == 0:
            raise ValidationError(
                "movement", f"no lane of {source.id!r} allows {m.id!r} ({m.turn})"
            )
        mv_lanes[i] = serving
        mv_headway[i] = saturation_headway_s(source.saturation_flow_vphpl) / serving
        mv_slower[i] = turning_headway_factor(m.junction_speed_mps, source.speed_limit_mps)
        if m.intersection_id in controller_index:
            c = controller_index[m.intersection_id]
            mv_controller[i] = c
            mv_bit[i] = group_bits[c][m.signal_group]
    out_start = np.zeros(len(links) + 1, dtype=np.int64)
    np.add.at(out_start, mv_from + 1, 1)
    out_start = np.cumsum(out_start)
    uncovered = np.array([net.uncovered_m[link.id] for link in links], dtype=np.float64)
    junction_m = np.array([net.junction_m(m) for m in ordered], dtype=np.float64)
    # a queue reaches back over the junction behind its link (SUMO's vehicles wait on its
    # internal lanes), and every lane holds at least the vehicle at its stop line, whose body
    # reaches back over that junction on a stub shorter than a car
    stored_m = np.maximum(length + uncovered / 2.0, JAM_SPACING_M)
    storage = np.floor(lanes * stored_m / JAM_SPACING_M).astype(np.int32)
    queue, qu_lanes, qu_mask, qu_headway = _lane_queues(
        out_start,
        lane_mask,
        3600.0 / np.array([link.saturation_flow_vphpl for link in links], dtype=np.float64),
    )
    qu_single, qu_signal = _queue_shortcuts(queue, mv_controller, mv_bit)
    qu_storage = np.floor(qu_lanes * stored_m[mv_from] / JAM_SPACING_M).astype(np.int32)
    yield_start, yield_to = _permissive_yields(road, ordered, x)
    is_foe = np.zeros(len(ordered), dtype=np.bool_)
    is_foe[yield_to] = True
    return CompiledNetwork(
        road,
        link_ids,
        link_index,
        length,
        lanes,
        np.array([link.speed_limit_mps for link in links], dtype=np.float64),
        storage,
        advance,
        out_start,
        movement_ids,
        {m: i for i, m in enumerate(movement_ids)},
        mv_from,
        mv_to,
        mv_turn,
        mv_controller,
        mv_bit,
        mv_lanes,
        mv_headway,
        mv_slower,
        lane_mask,
        queue,
        qu_lanes,
        qu_mask,
        qu_headway,
        qu_storage,
        qu_single,
        qu_signal,
        yield_start,
        yield_to,
        is_foe,
        junction_m,
        controller_ids,
        controller_index,
        tuple(group_bits),
        cycle,
        offset,
        phase_start,
        np.array(begins, dtype=np.float64),
        np.array(greens, dtype=np.float64),
        np.array(masks, dtype=np.int64),
        np.array(clears, dtype=np.float64),
        np.array(keeps, dtype=np.int64),
    )


REACTION_S = 1.0
"""What a driver keeps to the car ahead, beside its length, discharging from a queue."""


def turning_headway_factor(junction_mps: float | None, link_mps: float) -> float:
    """How much longer a queue's vehicle takes to clear the stop line when it crosses the
    junction at ``junction_mps`` than at the link's speed: a driver keeps about
    ``REACTION_S`` plus a car length to the one ahead, at the speed it drives (SUMO on
    Ingolstadt, one lane, 30 s of green: 1.92 s a car straight on, 2.42 s turning left at
    7.3 m/s, 2.58 s turning right at 6.5 m/s; this gives 1.32x and 1.40x of 13.9 m/s)."""
    if junction_mps is None or junction_mps >= link_mps:
        return 1.0
    return (REACTION_S + JAM_SPACING_M / junction_mps) / (REACTION_S + JAM_SPACING_M / link_mps)


def _lane_masks(
    ordered: Sequence[Movement],
    link_by_id: Mapping[str, Link],
    x: Mapping[str, tuple[float, float]],
) -> NDArray[np.int64]:
    """Per movement the lanes of its link it may use: those allowing its turn. Where several
    movements of a link make the same turn (a road forking into two "through" roads), they
    share those lanes out from the kerb, the rightmost target taking the lanes nearest the
    kerb, as a road's lanes fork (SUMO's lane index 0 is the rightmost lane)."""
    masks = np.zeros(len(ordered), dtype=np.int64)
    by_turn: dict[tuple[str, Turn], list[int]] = {}
    for i, m in enumerate(ordered):
        by_turn.setdefault((m.from_link, m.turn), []).append(i)
    for (link_id, turn), members in by_turn.items():
        source = link_by_id[link_id]
        lanes = [lane.index for lane in source.lanes if turn in lane.turns]
        if len(members) == 1 or len(lanes) <= 1:
            for i in members:
                masks[i] = sum(1 << lane for lane in lanes)
            continue
        heading = _bearing(x, source)
        members.sort(key=lambda i: _turning(heading, _bearing(x, link_by_id[ordered[i].to_link])))
        for rank, i in enumerate(members):
            first = rank * len(lanes) // len(members)
            last = max(first + 1, (rank + 1) * len(lanes) // len(members))
            masks[i] = sum(1 << lane for lane in lanes[first:last])
    return masks


def _bearing(x: Mapping[str, tuple[float, float]], link: Link) -> float:
    (ax, ay), (bx, by) = x[link.from_node], x[link.to_node]
    return math.atan2(by - ay, bx - ax)


def _turning(heading: float, onto: float) -> float:
    """Angle turned from ``heading`` onto ``onto``: negative to the right, positive left."""
    return (onto - heading + math.pi) % (2.0 * math.pi) - math.pi


def _lane_queues(
    out_start: NDArray[np.int64], lane_mask: NDArray[np.int64], headway: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.int64], NDArray[np.float64]]:
    """Per movement its queue (movements of a link joined while they share a lane); per queue
    its lanes, their mask and the saturation headway of all of them."""
    masks = lane_mask.tolist()
    starts = out_start.tolist()
    queue = list(range(len(masks)))
    qu_mask = [0] * len(masks)
    for first, last in itertools.pairwise(starts):
        groups: list[tuple[int, int]] = []  # (lowest movement, lane mask), in order
        for m in range(first, last):
            mask, lowest = masks[m], m
            for other in [g for g in groups if g[1] & mask]:
                groups.remove(other)
                mask |= other[1]
                lowest = min(lowest, other[0])
            groups.append((lowest, mask))
        for lowest, mask in groups:
            qu_mask[lowest] = mask
            for m in range(first, last):
                if masks[m] & mask:
                    queue[m] = lowest
    qu_lanes = np.array([mask.bit_count() for mask in qu_mask], dtype=np.int32)
    link_of = np.repeat(np.arange(len(starts) - 1), np.diff(out_start))
    qu_headway = np.where(qu_lanes > 0, headway[link_of] / np.maximum(qu_lanes, 1), 0.0)
    return (
        np.array(queue, dtype=np.int64),
        qu_lanes,
        np.array(qu_mask, dtype=np.int64),
        qu_headway.astype(np.float64),
    )


def _queue_shortcuts(
    queue: NDArray[np.int64], controller: NDArray[np.int32], bit: NDArray[np.int32]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per queue: its movement if it is the only one; a movement whose signal all share."""
    numbers = np.arange(queue.shape[0], dtype=np.int64)
    members = np.bincount(queue, minlength=queue.shape[0])
    single = np.where((queue == numbers) & (members == 1), numbers, -1)
    differs = (controller != controller[queue]) | (bit != bit[queue])
    mixed = np.bincount(queue, weights=differs, minlength=queue.shape[0]) > 0
    signal = np.where((queue == numbers) & ~mixed, numbers, -1)
    return single.astype(np.int64), signal.astype(np.int64)


PERMITTED_TURNS = frozenset({Turn.LEFT, Turn.UTURN})
OPPOSITE_RAD = math.radians(135.0)
"""Two approaches whose headings differ by more than this come from opposite sides."""


def _permissive_yields(
    road: RoadNetwork, ordered: Sequence[Movement], x: Mapping[str, tuple[float, float]]
) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """``mv_yield_start``/``mv_yield``: at each signalized junction, a left turn or U-turn
    gives way to the throughs and rights from the opposite approach and to the movements
    merging into its link, unless the plan declares their groups in conflict (then they are
    never green together and it is a protected turn)."""
    net = road.network
    index = {m.id: i for i, m in enumerate(ordered)}
    at_node: dict[str, list[Movement]] = {}
    for m in ordered:
        if m.intersection_id in road.plans:
            at_node.setdefault(m.intersection_id, []).append(m)
    gives_way: list[list[int]] = [[] for _ in ordered]
    for node, moves in at_node.items():
        signals = road.plans[node].signals
        for m in moves:
            if m.turn not in PERMITTED_TURNS:
                continue
            heading = _bearing(x, net.link_by_id[m.from_link])
            for f in moves:
                if (
                    f.from_link == m.from_link
                    or f.turn in PERMITTED_TURNS
                    or signals.conflict(m.signal_group, f.signal_group)
                ):
                    continue
                facing = abs(_turning(heading, _bearing(x, net.link_by_id[f.from_link])))
                if facing > OPPOSITE_RAD or f.to_link == m.to_link:
                    gives_way[index[m.id]].append(index[f.id])
    start = np.zeros(len(ordered) + 1, dtype=np.int64)
    start[1:] = np.cumsum([len(foes) for foes in gives_way])
    flat = [f for foes in gives_way for f in sorted(foes)]
    return start, np.array(flat, dtype=np.int32)
