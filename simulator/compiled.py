"""A ``RoadNetwork`` flattened into the plain arrays the Numba kernels run on.

Index spaces: links ``0..L-1``, movements ``0..M-1``, signalized controllers ``0..S-1``. Each
controller's signal groups get bit numbers so a whole intersection's "may depart" state is one
integer mask. Timing plans become per-phase cycle positions, greens and group masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from citybrain.models.errors import ValidationError
from citybrain.models.network import JAM_SPACING_M, DetectorKind, Turn
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
    storage = np.maximum(1, np.floor(lanes * length / JAM_SPACING_M)).astype(np.int32)
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
    for i, m in enumerate(ordered):
        source = net.link_by_id[m.from_link]
        serving = source.lanes_allowing(m.turn)
        if serving == 0:
            raise ValidationError(
                "movement", f"no lane of {source.id!r} allows {m.id!r} ({m.turn})"
            )
        mv_lanes[i] = serving
        mv_headway[i] = saturation_headway_s(source.saturation_flow_vphpl) / serving
        if m.intersection_id in controller_index:
            c = controller_index[m.intersection_id]
            mv_controller[i] = c
            mv_bit[i] = group_bits[c][m.signal_group]
    out_start = np.zeros(len(links) + 1, dtype=np.int64)
    np.add.at(out_start, mv_from + 1, 1)
    out_start = np.cumsum(out_start)
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
