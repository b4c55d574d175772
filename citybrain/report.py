"""What ``citybrain demo`` says besides its tables: progress with what is left, a verdict per
table that names where the corridor wins and where it loses, and why the live run differs from
the in-process one, in the runs' own figures."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

OURS = "corridor"
OTHERS = {"no_priority": "no priority", "local_preemption": "local preemption"}


def plural(count: float, noun: str) -> str:
    """``1 stop``, ``3 stops``, ``0.7 stops``."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {noun}" if count == 1 else f"{shown} {noun}s"


# ---- progress -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    steps: int
    """How many steps it reports (runs); 0 for one long step (the live system)."""
    about: str
    """Its usual length, for the plan printed first."""


@dataclass
class Progress:
    """Progress lines: which stage of how many, which step of how many, and the time left
    from the pace of the steps so far."""

    stages: Sequence[Stage]
    write: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    _stage: int = -1
    _done: int = 0
    _began: float = 0.0
    _steps_began: list[float] = field(default_factory=list)

    def plan(self, title: str) -> None:
        parts = [f"{i}. {stage.name} ({stage.about})" for i, stage in enumerate(self.stages, 1)]
        self.write(f"{title}: {len(self.stages)} stages: {'; '.join(parts)}")

    def begin(self, name: str) -> None:
        self._stage = [stage.name for stage in self.stages].index(name)
        self._done = 0
        self._began = self.clock()

    def step(self, text: str) -> None:
        """A step starts; the estimate comes from the steps that ended before it."""
        stage = self.stages[self._stage]
        now = self.clock()
        left = stage.steps - self._done
        estimate = ""
        if self._done:
            seconds = (now - self._began) / self._done * left
            estimate = f", about {duration(seconds)} left"
        self._done += 1
        self.write(f"{self._prefix()} run {self._done} of {stage.steps}: {text}{estimate}")

    def note(self, text: str) -> None:
        self.write(f"{self._prefix()} {text}")

    def _prefix(self) -> str:
        return f"[{self._stage + 1}/{len(self.stages)} {self.stages[self._stage].name}]"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# ---- verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of a table, per policy; lower is better unless ``higher_is_better``."""

    label: str
    values: dict[str, float]
    unit: str = ""
    digits: int = 1
    tolerance: float = 0.5
    """Differences up to this are noise, not a loss."""
    against: tuple[str, ...] = tuple(OTHERS)
    """The policies it is fairly compared with (recovery and the cost to others are 0 by
    definition without priority, so only local preemption is a rival there)."""

    def show(self, policy: str) -> str:
        value = self.values[policy]
        sign = "+" if self.unit == " veh-s" and value > 0 else ""
        return f"{sign}{value:,.{self.digits}f}{self.unit}"

    def beaten_by(self) -> str | None:
        """The rival that does best on this figure, where it beats ours."""
        best = min(self.against, key=lambda name: self.values[name])
        return best if self.values[OURS] - self.values[best] > self.tolerance else None


def losses(figures: Sequence[Figure]) -> list[str]:
    """``label ours (rival: theirs)`` for each figure a rival does better on."""
    out = []
    for figure in figures:
        rival = figure.beaten_by()
        if rival is not None:
            out.append(
                f"{figure.label} {figure.show(OURS)} ({OTHERS[rival]}: {figure.show(rival)})"
            )
    return out


def _lead(travel: dict[str, dict[str, float]], cost: Figure) -> str:
    """``the corridor is fastest (AMB-1 386 s: -35 % / -20 % against no priority / local
    preemption) at +12,848 veh-s to other traffic``."""
    slower = [v for v, t in travel.items() if any(t[OURS] >= t[name] for name in OTHERS)]
    gains = "; ".join(
        f"{v} {t[OURS]:.0f} s: "
        + " / ".join(f"{100 * (t[OURS] / t[n] - 1):+.0f} %" for n in OTHERS)
        for v, t in travel.items()
    )
    head = f"NOT fastest for {', '.join(slower)}" if slower else "fastest"
    return (
        f"the corridor is {head} ({gains} against {' / '.join(OTHERS.values())}) at "
        f"{cost.show(OURS)} to other traffic"
    )


def _verdict(lead: str, lost: list[str]) -> str:
    tail = "it loses on " + "; ".join(lost) if lost else "it loses on no figure in this table"
    return f"  verdict: {lead}; {tail}"


def _column(policies: dict[str, Any], key: str, vehicle: str | None = None) -> dict[str, float]:
    return {
        name: float(p[vehicle][key] if vehicle is not None else p[key])
        for name, p in policies.items()
    }


def _run_figures(policies: dict[str, Any]) -> list[Figure]:
    """The figures of the whole run, which only local preemption is a rival on."""
    local = ("local_preemption",)
    return [
        Figure("cost to others", _column(policies, "other_vehicles_extra_delay_s"), " veh-s", 0,
               tolerance=1.0, against=local),
        Figure("recovery", _column(policies, "recovery_s"), " s", against=local),
    ]  # fmt: skip


def arterial_verdict(data: dict[str, Any]) -> str:
    """One line: is the corridor fastest, by how much, at what cost, and every figure it
    loses on."""
    policies = data["policies"]
    travel = {"the ambulance": _column(policies, "travel_time_s")}
    figures = [Figure("stops", _column(policies, "stops"), tolerance=0.05), *_run_figures(policies)]
    return _verdict(_lead(travel, figures[1]), losses(figures))


def grid_verdict(data: dict[str, Any]) -> str:
    """One line for the grid: each ambulance's trip, and every figure (the crossing's
    included) on which the corridor does worse than a rival."""
    policies, crossing = data["policies"], data["crossing"]
    vehicles = list(data["ambulances"])
    travel = {v: _column(policies, "travel_time_s", v) for v in vehicles}
    figures = []
    for v in vehicles:
        figures += [
            Figure(f"{v}'s stops", _column(policies, "stops", v), tolerance=0.05),
            Figure(f"{v}'s loss at {crossing}", _column(policies, "delay_at_crossing_s", v), " s"),
            Figure(
                f"{v}'s stops at {crossing}", _column(policies, "stops_at_crossing", v),
                tolerance=0.05,
            ),
        ]  # fmt: skip
    run = _run_figures(policies)
    return _verdict(_lead(travel, run[0]), losses([*figures, *run]))


# ---- live against in-process --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedRun:
    """What the in-process runs measured on the live run's seed."""

    corridor_s: float
    corridor_stops: int
    no_priority_s: float
    delay_per_intersection_s: dict[str, float]


def live_difference(live: dict[str, Any], in_process: SeedRun) -> list[str]:
    """Why the live corridor took longer or shorter than the in-process one on the same seed:
    where the ambulance lost the difference, and what differs in how the cloud saw and drove
    the lights (all from the two runs' figures)."""
    amb = live["ambulance"]
    ours, base = amb["corridor"], amb["no_priority"]
    same = math.isclose(base["travel_time_s"], in_process.no_priority_s, abs_tol=0.5)
    traffic = (
        f"without a corridor {base['travel_time_s']:.1f} s in both: the same traffic"
        if same
        else f"without a corridor {base['travel_time_s']:.1f} s live, "
        f"{in_process.no_priority_s:.1f} s in-process: not the same traffic"
    )
    gap = ours["travel_time_s"] - in_process.corridor_s
    lines = [
        f"  live against in-process, seed 1 ({traffic}): with its corridor "
        f"{ours['travel_time_s']:.1f} s and {plural(ours['stops'], 'stop')} live, "
        f"{in_process.corridor_s:.1f} s and {plural(in_process.corridor_stops, 'stop')} "
        f"in-process ({gap:+.1f} s live)"
    ]
    where = _where(ours["delay_per_intersection_s"], in_process.delay_per_intersection_s)
    if where:
        lines.append(f"    where: {where}")
    lines.append(
        "    what differs live: the cloud plans from the edges' queue estimates (loop counts), "
        f"sent every {live['telemetry_period_sim_s']:g} simulated s, where in-process it reads the "
        "exact queues every second; its plans take over "
        f"{live['takeover_lead_sim_s']:g} simulated s after it makes them (the wall-clock "
        f"margin for the plan path, p99 {live['plan_latency_ms']['p99']:.0f} ms)"
    )
    return lines


def _where(live: dict[str, float], in_process: dict[str, float], shown: int = 4) -> str:
    """The stop lines where the two runs' delays differ most, by at least a second."""
    diffs = {
        node: live[node] - in_process.get(node, 0.0)
        for node in live
        if abs(live[node] - in_process.get(node, 0.0)) >= 1.0
    }
    ranked = sorted(diffs.items(), key=lambda item: -abs(item[1]))[:shown]
    return ", ".join(f"{node} {diff:+.1f} s" for node, diff in ranked) + (
        " (live minus in-process delay at the stop line)" if ranked else ""
    )


def impact_lines(impact: dict[str, Any]) -> list[str]:
    """The cloud's own estimate of its corridor's impact (what the console shows after a
    corridor), set against the runs' measurement, with how far off it was."""
    saved, cross = impact["time_saved_s"], impact["cross_delay_veh_s"]
    if saved["estimated"] is None:
        return ["  the cloud estimated no corridor's impact (none completed)"]

    def off(figure: dict[str, float]) -> str:
        if not figure["measured"]:
            return "n/a"
        return f"{(figure['estimated'] - figure['measured']) / abs(figure['measured']):+.0%}"

    recovery = (
        f"cross streets back to their level {impact['recovery_s']:.0f} s after the ambulance "
        f"(mean of the {plural(impact['recovered_seeds'], 'seed')} where all recovered in the run)"
        if impact["recovery_s"] is not None
        else "cross streets not all back to their level before the runs ended"
    )
    return [
        f"  the cloud's own estimate (the console's impact; the runs measured without it): time "
        f"saved {saved['estimated']:.0f} s (runs {saved['measured']:.0f} s, {off(saved)});",
        f"  cost to the route's cross streets {cross['estimated']:+,.0f} veh-s (runs "
        f"{cross['measured']:+,.0f}, {off(cross)}); {recovery}",
    ]
