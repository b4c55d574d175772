"""Independent checks of an imported SUMO network against SUMO's own reading of it (sumolib):
our plans show what SUMO's programs show, and never run SUMO foes green together where SUMO's
program does not."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from citybrain.simulator import sumo

sumolib: Any = pytest.importorskip("sumolib")

GO, AMBER = set("GgOo"), set("yY")


def _class(chars: set[str]) -> str:
    return "G" if chars & GO else "y" if chars & AMBER else "r"


def _active_program(net: Any, tls: str) -> Any:
    return list(net.getTLS(tls).getPrograms().values())[-1]  # SUMO runs the last loaded


def colour_mismatches(net_path: Path, snet: sumo.SumoNet, *, begin_s: float = 0.0) -> list[str]:
    """Mid-way through every phase of every program, each of our movements at a junction
    with a plan shows SUMO's colour (go when any of its connections goes). Amber between two
    greens of a movement may show green (we keep it green)."""
    net = sumolib.net.readNet(str(net_path), withPrograms=True)
    movements = snet.road.network.movement_by_id
    out = []
    for tls, links in snet.tls_links.items():
        indices: dict[str, set[int]] = defaultdict(set)
        for link in links:
            indices[link.movement].add(link.index)
        program = _active_program(net, tls)
        phases = program.getPhases()
        start = float(program._offset)
        for number, phase in enumerate(phases):
            middle = start + float(phase.duration) / 2.0
            start += float(phase.duration)
            for movement, where in indices.items():
                plan = snet.road.plans.get(movements[movement].intersection_id)
                if plan is None:
                    continue
                theirs = _class({phase.state[i] for i in where})
                local = (middle - begin_s - plan.offset_s) % plan.cycle_s
                ours = sumo.group_colour(plan, movements[movement].signal_group, local)
                around = {
                    _class({phases[(number + d) % len(phases)].state[i] for i in where})
                    for d in (-1, 1)
                }
                if ours != theirs and not (theirs == "y" and ours == "G" and around == {"G"}):
                    out.append(f"{tls} phase {number} {movement}: SUMO {theirs}, ours {ours}")
    return out


def unsafe_pairs(net_path: Path, snet: sumo.SumoNet) -> list[str]:
    """Pairs of movements SUMO's junction declares foes and its program never shows green
    together that one of our phases runs green together, or that our conflicts allow to be
    (a priority plan could then show them together)."""
    net = sumolib.net.readNet(str(net_path), withPrograms=True)
    road = snet.road.network
    movement_of = {(m.from_link, m.to_link): m for m in road.movements}
    out = []
    for tls in net.getTrafficLights():
        program = _active_program(net, tls.getID())
        by_junction: dict[str, list[tuple[Any, Any, int]]] = defaultdict(list)
        for lane_in, lane_out, index in tls.getConnections():
            junction = lane_in.getEdge().getToNode()
            found = [c for c in lane_in.getOutgoing() if c.getToLane() is lane_out]
            if found:
                by_junction[junction.getID()].append((junction, found[0], index))
        for entries in by_junction.values():
            for (junction, a, ia), (_, b, ib) in itertools.combinations(entries, 2):
                la, lb = junction.getLinkIndex(a), junction.getLinkIndex(b)
                if la < 0 or lb < 0 or not (junction.areFoes(la, lb) or junction.areFoes(lb, la)):
                    continue
                ma, mb = (_movement(snet, movement_of, c) for c in (a, b))
                if ma is None or mb is None or ma.id == mb.id:
                    continue
                plan = snet.road.plans.get(ma.intersection_id)
                if plan is None:
                    continue
                together = any(
                    {ma.signal_group, mb.signal_group} <= phase.groups for phase in plan.phases
                )
                sumo_together = any(
                    p.state[ia] in GO and p.state[ib] in GO for p in program.getPhases()
                )
                if sumo_together:
                    continue
                if together:
                    out.append(f"{tls.getID()}: {ma.id} and {mb.id} green together")
                if not plan.signals.conflict(ma.signal_group, mb.signal_group):
                    out.append(f"{tls.getID()}: {ma.id} and {mb.id} not in conflict")
    return out


def _movement(snet: sumo.SumoNet, movement_of: dict[tuple[str, str], Any], c: Any) -> Any:
    source = snet.link_of_edge.get(c.getFrom().getID())
    target = snet.link_of_edge.get(c.getTo().getID())
    return movement_of.get((source, target)) if source and target else None
