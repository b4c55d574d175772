"""Bundled intersections and plans: the standard layouts scenarios and tests are built from.

``nema_eight_group`` is the usual four-leg layout with NEMA numbering: 2 and 6 are the main
street's throughs (rights go with them, crossings beside them), 1 and 5 its protected lefts,
4 and 8 the side street's throughs, 3 and 7 its lefts. Lefts are protected-only, so 1 conflicts
with 2 and 5 with 6 (each left crosses the opposing through), and every main-street group
conflicts with every side-street group.
"""

from __future__ import annotations

from itertools import product

from citybrain.models.checks import check_number
from citybrain.signal_plans.timing import GroupTiming, IntersectionSignals, Phase, TimingPlan

MAIN_LEFTS = ("1", "5")
MAIN_THROUGHS = ("2", "6")
SIDE_LEFTS = ("3", "7")
SIDE_THROUGHS = ("4", "8")

THROUGH_TIMING = GroupTiming(
    min_green_s=10.0, yellow_s=4.0, red_clearance_s=1.5, walk_s=7.0, ped_clearance_s=15.0
)
"""50 km/h approach (ITE yellow about 3.9 s), an 18 m crossing walked at 1.2 m/s."""
LEFT_TIMING = GroupTiming(min_green_s=5.0, yellow_s=3.5, red_clearance_s=1.5)


def nema_eight_group(intersection_id: str) -> IntersectionSignals:
    main = MAIN_LEFTS + MAIN_THROUGHS
    side = SIDE_LEFTS + SIDE_THROUGHS
    conflicts = [*product(main, side), ("1", "2"), ("5", "6"), ("3", "4"), ("7", "8")]
    timings = dict.fromkeys(MAIN_LEFTS + SIDE_LEFTS, LEFT_TIMING)
    timings |= dict.fromkeys(MAIN_THROUGHS + SIDE_THROUGHS, THROUGH_TIMING)
    return IntersectionSignals.build(intersection_id, timings, conflicts)


def lead_lead_plan(
    signals: IntersectionSignals,
    *,
    plan_id: str = "normal",
    main_left_s: float = 10.0,
    main_through_s: float = 39.0,
    side_left_s: float = 8.0,
    side_through_s: float = 22.0,
    offset_s: float = 0.0,
) -> TimingPlan:
    """Four phases, lefts leading: main lefts, main throughs, side lefts, side throughs.

    With the default splits the cycle is 100 s (79 s of green, 21 s of clearance).
    """
    phases = (
        Phase("main_lefts", frozenset(MAIN_LEFTS)),
        Phase("main_throughs", frozenset(MAIN_THROUGHS)),
        Phase("side_lefts", frozenset(SIDE_LEFTS)),
        Phase("side_throughs", frozenset(SIDE_THROUGHS)),
    )
    greens = (main_left_s, main_through_s, side_left_s, side_through_s)
    return TimingPlan(plan_id, signals, phases, greens, offset_s)


def progression_offset_s(distance_m: float, speed_mps: float, cycle_s: float) -> float:
    """Offset that starts a green wave: the main through turns green as a platoon leaving the
    first intersection at its green start arrives here at ``speed_mps``."""
    check_number("distance_m", distance_m, ge=0.0)
    check_number("speed_mps", speed_mps, gt=0.0)
    check_number("cycle_s", cycle_s, gt=0.0)
    return (distance_m / speed_mps) % cycle_s
