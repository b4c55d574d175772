"""Prometheus metrics of the cloud service (``GET /metrics``, prometheus_client).

Counters the service keeps anyway (messages by kind, refusals by reason, acks by status) are
read when scraped, so the hot paths pay nothing for them; only what needs a distribution
(request-to-ack latency, tick duration) is observed as it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
TICK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MESSAGE_KINDS = ("telemetry", "acks", "published", "plans_sent", "plans_resent")
"""Counters of the service and its core that are message rates (``rate()`` them)."""


class _Readings(Collector):
    """What the service counts, turned into metric families at scrape time."""

    def __init__(
        self, counters: Callable[[], Mapping[str, int]], gauges: Callable[[], Mapping[str, float]]
    ) -> None:
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        counts = self._counters()
        messages = CounterMetricFamily(
            "citybrain_messages", "Messages handled or sent, by kind", labels=["kind"]
        )
        for kind in MESSAGE_KINDS:
            messages.add_metric([kind], counts.get(kind, 0))
        yield messages
        dropped = CounterMetricFamily(
            "citybrain_messages_dropped",
            "Messages refused or lost, by reason (rejected_* refusals, queue overflows)",
            labels=["reason"],
        )
        for name, value in sorted(counts.items()):
            if name.startswith("rejected_"):
                dropped.add_metric([name.removeprefix("rejected_")], value)
        for name in ("incoming_dropped", "outgoing_dropped", "publish_failed"):
            dropped.add_metric([name], counts.get(name, 0))
        yield dropped
        acks = CounterMetricFamily(
            "citybrain_plan_acks", "Plan acknowledgements by status", labels=["status"]
        )
        for status in ("accepted", "applied", "rejected", "expired", "released"):
            acks.add_metric([status], counts.get(f"acks_{status}", 0))
        yield acks
        yield CounterMetricFamily(
            "citybrain_plan_refusals",
            "Plans an edge or its cabinet refused or let expire",
            value=counts.get("acks_rejected", 0) + counts.get("acks_expired", 0),
        )
        for gauge, reading in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"citybrain_{gauge}", _GAUGE_HELP[gauge], value=reading)


_GAUGE_HELP = {
    "ingest_lag_messages": "Messages received from the broker and not yet handled",
    "database_backlog": "Telemetry and audit records waiting for the database",
    "corridors_active": "Corridors that have not ended",
    "intersections_online": "Intersections whose edge is online",
    "alarms_active": "Alarms not yet acknowledged",
    "event_subscribers": "Open live streams (GET /v1/events)",
}


class ServiceMetrics:
    """The registry ``GET /metrics`` serves, one per service (not the global one: tests and
    the demo run several services in one process)."""

    def __init__(
        self, counters: Callable[[], Mapping[str, int]], gauges: Callable[[], Mapping[str, float]]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_to_ack = Histogram(
            "citybrain_request_to_ack_seconds",
            "Corridor request to the acknowledgement of every first plan",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tick = Histogram(
            "citybrain_tick_seconds",
            "Duration of one tick (timeouts, plan retries)",
            buckets=TICK_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_Readings(counters, gauges))

    def exposition(self) -> bytes:
        """The text format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)
