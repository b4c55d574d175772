"""The live system end to end, as ``citybrain demo`` runs it, on a short arterial: the embedded
amqtt broker (the path taken where Mosquitto is not installed) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from citybrain.live import LiveOptions, run_live

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


def test_the_live_system_runs_a_corridor_and_stores_every_telemetry_message(
    postgres: Any,
) -> None:
    options = LiveOptions(
        network="arterial:4", warmup_s=300.0, after_s=420.0, speed=10.0, broker="amqtt",
        dsn=postgres.create_database(),
    )  # fmt: skip
    result = asyncio.run(run_live(options))
    live = result.summary()
    assert live["broker"] == "amqtt (embedded)"
    assert live["edges"] == 4
    assert live["telemetry_messages"] > 4 * 40
    assert live["telemetry_rows"] == live["telemetry_messages"]
    assert live["plans_sent"] > 0
    assert live["plans_acked"] >= 0.9 * live["plans_sent"]
    assert live["rejected_messages"] == 0
    amb = live["ambulance"]
    assert amb["corridor"]["travel_time_s"] < amb["no_priority"]["travel_time_s"]
    assert live["plan_latency_ms"]["p50"] < 1000.0
