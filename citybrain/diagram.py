"""The time-space diagram a traffic engineer draws for a corridor: distance along the route
against time, one panel per policy, each ambulance trajectory over the signal bands of its own
run (the no-priority line must not be read against the corridor's greens), the green windows
the plans asked for, and the progression speed the arterial's green wave is timed for."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from citybrain.closed_loop import AMBULANCE, Journey, Outcome, Policy, indication_colour
from citybrain.report import plural

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

WINDOW_COLOUR = "#0b5d1e"
WINDOW_FILL = (0.04, 0.36, 0.12, 0.3)
PROGRESSION_COLOUR = "#7b3fa0"
TRAJECTORY_COLOUR = "#000000"
BAND_WIDTH = 4.0
WINDOW_HALF_HEIGHT_M = 45.0
Interval = tuple[float, float, str]
"""(start, end, colour) of one signal indication, relative to the ambulance's departure."""


def signal_intervals(series: Sequence[tuple[float, str]], start: float) -> Iterator[Interval]:
    """Runs of one indication in a per-second series, merged, so a 100 s green is one bar."""
    for colour, samples in itertools.groupby(
        itertools.pairwise(series), key=lambda pair: indication_colour(pair[0][1])
    ):
        run = list(samples)
        yield run[0][0][0] - start, run[-1][1][0] - start, colour


def progression_start(journey: Journey, start: float) -> tuple[float, float] | None:
    """(time, distance) of the first green onset at the first stop line after the ambulance
    left, on its normal plan: where the green wave's band begins."""
    lines = sorted(journey.stop_line_m.items(), key=lambda item: item[1])
    for node, distance in lines[:1]:
        for t0, t1, colour in signal_intervals(journey.signals.get(node, []), start):
            if colour == indication_colour("green") and t0 >= 0.0 and t1 > t0:
                return t0, distance
    return None


def time_space_diagram(
    outcomes: dict[Policy, Outcome], path: Path, *, vehicle: str = AMBULANCE
) -> Path:
    """One panel per policy, sharing both axes, the legend below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    journeys = {policy: outcome.journeys[vehicle] for policy, outcome in outcomes.items()}
    fig, axes = plt.subplots(
        1, len(journeys), figsize=(5.2 * len(journeys), 8.0), dpi=110, sharex=True, sharey=True
    )
    panels: list[Axes] = list(axes) if len(journeys) > 1 else [axes]
    reference = journeys.get(Policy.NO_PRIORITY, next(iter(journeys.values())))
    for ax, (policy, journey) in zip(panels, journeys.items(), strict=True):
        _panel(ax, policy, journey, reference)
    _stop_line_ticks(panels[0], reference)
    finish = max(_finish(journey) for journey in journeys.values())
    panels[0].set_xlim(-40.0, finish + 40.0)
    fig.suptitle(
        f"{vehicle}: distance along its route against time, under each policy over the "
        "signals of that run (its movement's green, yellow, red at each stop line)"
    )
    legend = _legend(reference.progression_mps)
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), frameon=False)
    fig.tight_layout(rect=(0.0, 0.05, 1.0, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _start(journey: Journey) -> float:
    return journey.trip.depart_s


def _finish(journey: Journey) -> float:
    return max((t for t, _ in journey.trajectory), default=_start(journey)) - _start(journey)


def _panel(ax: Axes, policy: Policy, journey: Journey, reference: Journey) -> None:
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Rectangle

    start = _start(journey)
    segments, colours = [], []
    for node, series in journey.signals.items():
        y = journey.stop_line_m[node]
        for t0, t1, colour in signal_intervals(series, start):
            segments.append([(t0, y), (t1, y)])
            colours.append(colour)
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=BAND_WIDTH))
    windows = [
        Rectangle(
            (open_at - start, journey.stop_line_m[node] - WINDOW_HALF_HEIGHT_M),
            close_at - open_at,
            2 * WINDOW_HALF_HEIGHT_M,
        )
        for node, (open_at, close_at) in journey.windows.items()
    ]
    ax.add_collection(
        PatchCollection(
            windows, facecolor=WINDOW_FILL, edgecolor=WINDOW_COLOUR, linewidth=1.4, zorder=3
        )
    )
    _progression(ax, reference)
    if journey.trajectory:
        ax.plot(
            [t - start for t, _ in journey.trajectory],
            [d for _, d in journey.trajectory],
            color=TRAJECTORY_COLOUR,
            linewidth=1.8,
        )
    ax.set_title(
        f"{policy.value}: {journey.travel_time_s:.0f} s, {plural(journey.trip.stops, 'stop')}",
        fontsize=10,
    )
    ax.set_xlabel("time since it left (s)")
    ax.grid(axis="x", alpha=0.3)


def _progression(ax: Axes, reference: Journey) -> None:
    """The green wave's speed, from its first green after the ambulance left."""
    origin = progression_start(reference, _start(reference))
    if origin is None or reference.progression_mps <= 0.0:
        return
    t0, y0 = origin
    top = max(reference.stop_line_m.values())
    ax.plot(
        [t0, t0 + (top - y0) / reference.progression_mps],
        [y0, top],
        color=PROGRESSION_COLOUR,
        linestyle="--",
        linewidth=1.2,
    )


def _stop_line_ticks(ax: Axes, journey: Journey) -> None:
    lines = sorted(journey.stop_line_m.items(), key=lambda item: item[1])
    ax.set_yticks([y for _, y in lines], [f"{node}  {y:,.0f} m" for node, y in lines])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("stop lines along the route (distance from its start)")


def _legend(progression_mps: float) -> list[Artist]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Line2D([], [], color=TRAJECTORY_COLOUR, linewidth=1.8, label="ambulance"),
        Patch(
            facecolor=WINDOW_FILL, edgecolor=WINDOW_COLOUR, label="green window the plan asked for"
        ),
        Line2D(
            [],
            [],
            color=PROGRESSION_COLOUR,
            linestyle="--",
            label=f"progression speed ({progression_mps * 3.6:.0f} km/h)",
        ),
        *(
            Line2D([], [], color=indication_colour(name), linewidth=BAND_WIDTH, label=name)
            for name in ("green", "yellow", "red")
        ),
    ]
