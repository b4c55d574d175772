"""`citybrain preview`: the signal-plan side of a corridor along a coordinated arterial, without
the simulator: windows, transitions, the wire format and the edge's safety check.

Every number it prints is computed from the seeded scenario below; the queues are sampled
(Poisson). The closed loop on the simulator is ``citybrain demo``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from citybrain.models.checks import check_count, check_number
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.messages import SignalPlan
from citybrain.models.signal import Indication
from citybrain.models.traffic import travel_time_s
from citybrain.signal_plans.library import (
    MAIN_THROUGHS,
    lead_lead_plan,
    nema_eight_group,
    progression_offset_s,
)
from citybrain.signal_plans.priority import plan_message, priority_window
from citybrain.signal_plans.state import (
    ControllerState,
    SignalStep,
    normal_periods,
    normal_state_at,
)
from citybrain.signal_plans.timing import TimingPlan
from citybrain.signal_plans.transitions import Transition, plan_green_window, takeover_state
from citybrain.signal_plans.validator import SafetyLimits, Verdict, check_plan, check_steps

AMBULANCE_GROUP = MAIN_THROUGHS[0]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    intersections: int = 8
    seed: int = 7
    speed_limit_mps: float = 13.9
    """50 km/h: the speed the arterial's green wave is timed for."""
    ambulance_speed_mps: float = 16.7
    mean_queue_veh: float = 8.0
    lanes: int = 2
    saturation_flow_vphpl: float = 1800.0

    def __post_init__(self) -> None:
        check_count("intersections", self.intersections, ge=1, le=60)
        check_count("seed", self.seed)
        check_number("speed_limit_mps", self.speed_limit_mps, gt=0.0, le=40.0)
        check_number("ambulance_speed_mps", self.ambulance_speed_mps, gt=0.0, le=40.0)
        check_number("mean_queue_veh", self.mean_queue_veh, ge=0.0, le=100.0)
        check_count("lanes", self.lanes, ge=1, le=6)


@dataclass(frozen=True, slots=True)
class StopLine:
    intersection: str
    distance_m: float
    eta_s: float
    queue_veh: int
    timing_plan: TimingPlan
    state: ControllerState
    """The controller's state when the plan takes over (its steps are checked against it)."""
    open_at_s: float
    close_at_s: float
    normal_wait_s: float
    """Red time the vehicle would wait at this stop line under the normal plan (queues aside)."""
    transition: Transition
    plan: SignalPlan | None
    payload_bytes: int
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class DemoResult:
    settings: DemoSettings
    departure_s: float
    stop_lines: tuple[StopLine, ...]
    unsafe_checks: tuple[tuple[str, Verdict], ...]


def run(settings: DemoSettings) -> DemoResult:
    rng = random.Random(settings.seed)
    departure = 3600.0 + rng.uniform(0.0, 100.0)
    distance = 0.0
    lines: list[StopLine] = []
    for index in range(settings.intersections):
        distance += rng.uniform(350.0, 550.0)
        name = f"X{index + 1:02d}"
        signals = nema_eight_group(name)
        base = lead_lead_plan(signals)
        offset = progression_offset_s(distance, settings.speed_limit_mps, base.cycle_s)
        plan = lead_lead_plan(signals, offset_s=offset)
        eta = departure + travel_time_s(distance, settings.ambulance_speed_mps)
        queue = _poisson(rng, settings.mean_queue_veh)
        window = priority_window(
            eta,
            queue_veh=float(queue),
            lanes=settings.lanes,
            saturation_flow_vphpl=settings.saturation_flow_vphpl,
        )
        state = normal_state_at(plan, departure)
        transition = plan_green_window(
            plan, state, AMBULANCE_GROUP, window.open_at_s, window.close_at_s
        )
        message = None
        payload = 0
        at_takeover = takeover_state(plan, state, transition)
        verdict = check_steps(at_takeover, transition.steps)
        if transition.steps:
            # sent once it can take over before it is too old (the cabinet gets it then)
            issued = max(departure, transition.starts_at_s - SafetyLimits().max_plan_age_s)
            outgoing = plan_message(
                transition, plan_id=f"demo-{name}", intersection=name, seq=1, issued_at_s=issued
            )
            encoded = DEFAULT_CODEC.encode(outgoing)
            payload = len(encoded)
            message = DEFAULT_CODEC.decode(encoded, SignalPlan)
            verdict = check_plan(message, at_takeover, now_s=issued, last_order=None)
        lines.append(
            StopLine(
                name,
                distance,
                eta,
                queue,
                plan,
                at_takeover,
                window.open_at_s,
                window.close_at_s,
                _normal_wait_s(plan, eta),
                transition,
                message,
                payload,
                verdict,
            )
        )
    return DemoResult(settings, departure, tuple(lines), _unsafe_checks(lines))


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of a demo queue."""
    if mean == 0.0:
        return 0
    limit, count, product = pow(2.718281828459045, -mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _normal_wait_s(plan: TimingPlan, eta_s: float) -> float:
    if normal_state_at(plan, eta_s).groups[AMBULANCE_GROUP].indication is Indication.GREEN:
        return 0.0
    for period in normal_periods(plan, eta_s, eta_s + 2 * plan.cycle_s):
        if (
            AMBULANCE_GROUP in plan.phases[period.phase_index].groups
            and period.green_start_s > eta_s
        ):
            return period.green_start_s - eta_s
    raise RuntimeError("the normal plan never serves the ambulance's group")


def _unsafe_checks(lines: list[StopLine]) -> tuple[tuple[str, Verdict], ...]:
    """Tamper with a real plan the ways a faulty or hostile sender might; show the refusals."""
    line = next((ln for ln in lines if ln.transition.steps), None)
    if line is None:
        return ()
    steps = list(line.transition.steps)
    out: list[tuple[str, Verdict]] = []
    ends_yellow = next(
        (i for i in range(1, len(steps)) if steps[i - 1].yellow - steps[i].yellow), None
    )
    if ends_yellow is not None:
        early = steps[ends_yellow]
        steps[ends_yellow] = SignalStep(early.at_s - 1.0, early.green, early.yellow)
        out.append(("yellow cut short by 1 s", check_steps(line.state, steps)))
    state = line.state
    signals = state.signals
    greens = state.greens or frozenset({"2"})
    intruder = min(g for g in signals.groups - greens if signals.conflicts_of[g] & greens)
    clash = SignalStep(state.at_s + 1.0, greens | {intruder})
    out.append((f"{intruder!r} green beside {sorted(greens)}", check_steps(state, [clash])))
    if state.greens:
        dropped = SignalStep(state.at_s + 60.0, frozenset())
        out.append(
            (
                f"{sorted(state.greens)} from green to red with no yellow",
                check_steps(state, [dropped]),
            )
        )
    return tuple(out)


def render(result: DemoResult) -> str:
    """The human-readable report: one row per stop line, then totals and the safety refusals."""
    settings = result.settings
    t0 = result.departure_s
    lines = result.stop_lines
    rows = [
        f"citybrain preview: ambulance corridor along a {settings.intersections}-intersection "
        f"coordinated arterial (seed {settings.seed})",
        f"  plans: 4-phase lead-lead, 100 s cycle, offsets for a "
        f"{settings.speed_limit_mps * 3.6:.0f} km/h green wave; the ambulance drives "
        f"{settings.ambulance_speed_mps * 3.6:.0f} km/h",
        f"  queues ahead of it are sampled (Poisson, mean {settings.mean_queue_veh:g} veh over "
        f"{settings.lanes} lanes); the closed loop on the simulator is `citybrain demo`",
        "",
        f"  {'stop':5} {'dist m':>7} {'ETA s':>7} {'queue':>5} {'window s':>13} {'normal':>9} "
        f"{'action':>11} {'green at':>9} {'lead s':>6} {'steps':>5} {'bytes':>5}  edge check",
    ]
    for line in lines:
        move = line.transition
        normal = "green" if line.normal_wait_s == 0.0 else f"red {line.normal_wait_s:4.1f}"
        verdict = "accepted" if line.verdict.accepted else f"REJECTED {line.verdict.code}"
        rows.append(
            f"  {line.intersection:5} {line.distance_m:7.0f} {line.eta_s - t0:7.1f} "
            f"{line.queue_veh:5d} {line.open_at_s - t0:6.1f}-{line.close_at_s - t0:6.1f} "
            f"{normal:>9} {move.strategy.value:>11} {move.green_from_s - t0:9.1f} "
            f"{line.eta_s - move.green_from_s:6.1f} {len(move.steps):5d} "
            f"{line.payload_bytes:5d}  {verdict}"
        )
    reds = [line for line in lines if line.normal_wait_s > 0.0]
    late = [line for line in lines if line.transition.late_by_s(line.open_at_s) > 0.0]
    late_text = ", ".join(
        f"{line.intersection} by {line.transition.late_by_s(line.open_at_s):.1f} s" for line in late
    )
    accepted = sum(1 for line in lines if line.verdict.accepted)
    rows += [
        "",
        "  times are seconds after departure; 'lead s': how long before arrival the green begins",
        f"  normal plan: red at {len(reds)} of {len(lines)} stop lines, "
        f"{sum(line.normal_wait_s for line in reds):.1f} s of red waiting (queues not counted)",
        f"  corridor: window open in time at {len(lines) - len(late)} of {len(lines)}"
        + (f"; late: {late_text}" if late else ""),
        f"  edge safety check: {accepted} of {len(lines)} plans accepted",
        "",
        "  tampered plans, as an edge would see them:",
    ]
    for label, refusal in result.unsafe_checks:
        outcome = "ACCEPTED" if refusal.accepted else f"rejected [{refusal.code}] {refusal.reason}"
        rows.append(f"    {label}: {outcome}")
    return "\n".join(rows)
