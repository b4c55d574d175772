"""Emulated signal controllers: each runs its normal plan and, when told, a priority plan,
checking every command the way a cabinet's conflict monitor would (``ControllerModel``).

A controller on its normal plan costs nothing here (the kernel runs the plan); one running a
priority plan sets its intersection's override mask every step until it is back on its normal
timeline.
"""

from __future__ import annotations

from citybrain.models.signal import Indication
from citybrain.signal_plans.controller import ControllerModel, Outcome
from citybrain.signal_plans.timing import TimingPlan
from citybrain.signal_plans.validator import SafetyLimits

__all__ = ["EmulatedController", "Outcome"]


class EmulatedController(ControllerModel):
    def __init__(
        self, plan: TimingPlan, *, end_lag_s: float, limits: SafetyLimits | None = None
    ) -> None:
        super().__init__(plan, limits=limits)
        self.end_lag = end_lag_s

    def override_mask(self, now_s: float, bits: dict[str, int]) -> int | None:
        """The groups that may proceed now, or ``None`` when the normal plan rules."""
        self.update(now_s)
        running = self.running
        if running is None or now_s < running.start.at_s:
            return None
        mask = 0
        for group, state in self.state_at(now_s).groups.items():
            lagging = state.indication is Indication.YELLOW and now_s - state.since_s < self.end_lag
            if state.indication is Indication.GREEN or lagging:
                mask |= 1 << bits[group]
        return mask
