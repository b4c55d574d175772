"""Timing plans, safety constraints, transitions and priority-plan building (pure, no I/O)."""
