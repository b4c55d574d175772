"""What signing and verifying a plan costs, per plan, against the edge's own check of it.

Run: ``.venv/bin/python -m pytest benchmarks/test_plan_signing.py --benchmark-only -s``.

The plan is the shape the corridor manager sends: two green windows, realistic ids. Timed one
plan at a time (``time.perf_counter_ns`` around each call, 3,000 calls after a warm-up), so the
median and p99 are per plan. Peers in the same run: the edge's safety check of the same plan
(decode, ``check_plan``, ``plan_green_windows``, ``check_steps``: what every plan cost before
signatures) and an HMAC-SHA256 over the same canonical bytes (the cheap symmetric alternative,
which we do not use: every edge would hold the key that forges plans for all the others).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from citybrain.edge.core import EdgeCore
from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.fieldbus import ApproachConfig
from citybrain.models.messages import GreenWindow, SignalPlan
from citybrain.models.signing import PlanSigner, TrustStore, canonical
from citybrain.signal_plans.config import IntersectionConfig, reading_from_state
from citybrain.signal_plans.library import lead_lead_plan, nema_eight_group
from citybrain.signal_plans.state import normal_state_at

CALLS = 3_000
NOW = 1_000.0
TARGET_P99_MS = 1.0
"""Signing plus verifying must stay far below the plan path's budget (p99 <= 50 ms)."""


def _plan() -> SignalPlan:
    return SignalPlan(
        plan_id="Ctz3k1x.12-AMB-7-a05-3", intersection="a05", seq=3, epoch=1_796_406_262,
        issued_at=NOW, valid_from=NOW + 0.1, valid_until=NOW + 95.0, corridor_id="Ctz3k1x.12-AMB-7",
        windows=(
            GreenWindow(signal_group="2", open_at=NOW + 20.0, close_at=NOW + 41.5),
            GreenWindow(signal_group="4", open_at=NOW + 52.0, close_at=NOW + 75.0),
        ),
    )  # fmt: skip


def _per_call_ms(call: Callable[[], object]) -> np.ndarray:
    for _ in range(200):
        call()
    times = np.empty(CALLS)
    for index in range(CALLS):
        started = time.perf_counter_ns()
        call()
        times[index] = (time.perf_counter_ns() - started) / 1e6
    return times


def test_signing_and_verifying_a_plan(benchmark: Any) -> None:
    signer = PlanSigner.generate()
    trust = TrustStore.of({signer.key_id: signer.public_key})
    plan = _plan()
    signed = signer.sign(plan)
    payload = DEFAULT_CODEC.encode(signed)
    timing = lead_lead_plan(nema_eight_group("a05"), offset_s=0.0)
    approaches = tuple(
        ApproachConfig(
            approach=f"a05:{side}", link=f"{side}-a05", lanes=2, length_m=300.0,
            speed_limit_mps=13.9, saturation_flow_vphpl=1800.0, advance_setback_m=60.0,
            groups=list(groups),
        )
        for side, groups in (("W", "52"), ("E", "16"), ("S", "74"), ("N", "38"))
    )  # fmt: skip
    config = IntersectionConfig(timing, approaches)
    core = EdgeCore(config, trust=trust)
    core.on_signals(reading_from_state(normal_state_at(timing, NOW)), NOW)
    secret = secrets.token_bytes(32)

    def edge_check() -> None:
        verdict = core._check(DEFAULT_CODEC.decode(payload, SignalPlan), NOW)
        assert verdict.accepted, verdict

    def verify() -> None:
        assert trust.verify(signed) is None

    figures = {
        "sign (cloud)": _per_call_ms(lambda: signer.sign(plan)),
        "verify (edge)": _per_call_ms(verify),
        "peer: edge safety check": _per_call_ms(edge_check),
        "peer: HMAC-SHA256": _per_call_ms(
            lambda: hmac.new(secret, canonical(signed), hashlib.sha256).digest()
        ),
    }
    benchmark.pedantic(verify, rounds=200, iterations=1)
    print(f"\nper plan, {CALLS} calls each (ms)")
    print(f"{'':26} {'median':>8} {'p99':>8}")
    for name, times in figures.items():
        p50, p99 = np.percentile(times, [50, 99])
        print(f"{name:26} {p50:8.3f} {p99:8.3f}")
        benchmark.extra_info[name] = {"p50_ms": p50, "p99_ms": p99}
    sign, check = figures["sign (cloud)"], figures["peer: edge safety check"]
    verify_ms = figures["verify (edge)"]
    hmac_ms = figures["peer: HMAC-SHA256"]
    both_p99 = float(np.percentile(sign, 99) + np.percentile(verify_ms, 99))
    print(
        f"verdict: verifying costs x{np.median(verify_ms) / np.median(check):.2f} the edge's "
        f"safety check of the same plan (median); Ed25519 is "
        f"x{np.median(verify_ms) / np.median(hmac_ms):.0f} slower than an HMAC, which would let "
        f"any edge forge plans for all; sign + verify p99 {both_p99:.3f} ms "
        f"(limit {TARGET_P99_MS} ms)"
    )
    assert both_p99 <= TARGET_P99_MS
