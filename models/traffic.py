"""Small traffic models every part shares: saturation headway, queue discharge, travel time.

They are deliberately plain: the cloud's kernels and the simulator use the same numbers, so a
window computed in the cloud flushes exactly the queue the simulator builds.
"""

from __future__ import annotations

from citybrain.models.checks import check_count, check_number

DEFAULT_LOST_TIME_S = 2.0
"""Start-up lost time of a queue when its green begins (HCM uses 2 s)."""


def saturation_headway_s(saturation_flow_vphpl: float) -> float:
    """Seconds between successive departures of a discharging queue in one lane."""
    check_number("saturation_flow_vphpl", saturation_flow_vphpl, gt=0.0, le=3600.0)
    return 3600.0 / saturation_flow_vphpl


def queue_discharge_time_s(
    queue_veh: float,
    *,
    lanes: int,
    saturation_flow_vphpl: float,
    lost_time_s: float = DEFAULT_LOST_TIME_S,
) -> float:
    """Green time needed to discharge ``queue_veh`` vehicles spread over ``lanes`` lanes.

    An empty queue needs no green at all; a non-empty one pays the start-up lost time once.
    """
    check_number("queue_veh", queue_veh, ge=0.0)
    check_count("lanes", lanes, ge=1, le=16)
    check_number("lost_time_s", lost_time_s, ge=0.0, le=10.0)
    headway = saturation_headway_s(saturation_flow_vphpl)
    if queue_veh == 0.0:
        return 0.0
    return lost_time_s + queue_veh / lanes * headway


def travel_time_s(length_m: float, speed_mps: float) -> float:
    """Time to cover ``length_m`` at constant ``speed_mps``."""
    check_number("length_m", length_m, ge=0.0)
    check_number("speed_mps", speed_mps, gt=0.0)
    return length_m / speed_mps
