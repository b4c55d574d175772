"""Hypothesis strategies for intersections, plans and controller states, shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, TimingPlan


@st.composite
def timings(draw: st.DrawFn, *, crossing: bool) -> GroupTiming:
    walk = draw(st.sampled_from([4.0, 7.0])) if crossing else 0.0
    return GroupTiming(
        min_green_s=draw(st.sampled_from([4.0, 5.0, 7.0, 10.0, 12.0])),
        yellow_s=draw(st.sampled_from([3.0, 3.5, 4.0, 4.5, 6.0])),
        red_clearance_s=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
        walk_s=walk,
        ped_clearance_s=draw(st.sampled_from([8.0, 12.0, 15.0])) if crossing else 0.0,
    )


@st.composite
def signal_layouts(draw: st.DrawFn) -> IntersectionSignals:
    """The NEMA eight-group layout with drawn timings (crossings on the throughs)."""
    base = nema_eight_group("X")
    drawn = {
        group: draw(timings(crossing=group in {"2", "4", "6", "8"}))
        for group in sorted(base.groups)
    }
    pairs = [tuple(sorted(pair)) for pair in base.conflict_pairs]
    return IntersectionSignals.build("X", drawn, [(a, b) for a, b in pairs])


@st.composite
def timing_plans(draw: st.DrawFn) -> TimingPlan:
    signals = draw(signal_layouts())
    probe = lead_lead_plan(
        signals, main_left_s=60, main_through_s=60, side_left_s=60, side_through_s=60
    )
    greens = [
        probe.shortest_green_s(index) + draw(st.integers(0, 30))
        for index in range(len(probe.phases))
    ]
    plan = lead_lead_plan(
        signals,
        main_left_s=greens[0],
        main_through_s=greens[1],
        side_left_s=greens[2],
        side_through_s=greens[3],
    )
    offset = draw(st.floats(0.0, plan.cycle_s, exclude_max=True, allow_nan=False))
    return lead_lead_plan(
        signals,
        main_left_s=greens[0],
        main_through_s=greens[1],
        side_left_s=greens[2],
        side_through_s=greens[3],
        offset_s=offset,
    )
