"""The cloud's picture of the network: per-approach queues and per-link travel times, each with
its age and where it came from. Pure: inputs are telemetry messages and ``now``.

A value older than ``stale_after_s`` is not trusted: the state falls back to the historical
value (or zero queue / free-flow time when there is none) and says so in ``source``.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from citybrain.models.checks import check_count, check_number
from citybrain.models.errors import ValidationError
from citybrain.models.messages import Telemetry
from citybrain.models.network import Network
from citybrain.models.traffic import DEFAULT_LOST_TIME_S


class Source(enum.IntEnum):
    LIVE = 0
    HISTORICAL = 1
    """Stale or missing live data: the historical value stands in."""
    DEFAULT = 2
    """Nothing known: zero queue."""


class RefusedError(ValidationError):
    """Input that does not fit the city or whoever sent it, refused; ``code`` names the reason,
    which the service counts (``rejected_<code>`` in its health detail)."""

    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class _Counted:
    """The last telemetry taken from an intersection: its seq, and when (``now_s``)."""

    seq: int
    at_s: float


@dataclass(frozen=True)
class QueueView:
    """Queues per link (the approach it is), as the optimizer should use them now."""

    queue_veh: NDArray[np.float64]
    age_s: NDArray[np.float64]
    source: NDArray[np.int8]

    def confidence(self) -> NDArray[np.float64]:
        """1 where the value is live telemetry, 0 where a fallback stands in."""
        return np.where(self.source == Source.LIVE, 1.0, 0.0)


class NetworkState:
    def __init__(
        self,
        network: Network,
        *,
        stale_after_s: float = 10.0,
        historical_queue_veh: NDArray[np.float64] | None = None,
        max_seq_jump: int = 300,
        max_seq_rate_hz: float = 10.0,
    ) -> None:
        check_number("stale_after_s", stale_after_s, gt=0.0, le=3600.0)
        check_count("max_seq_jump", max_seq_jump, ge=1)
        check_number("max_seq_rate_hz", max_seq_rate_hz, ge=0.0, le=1000.0)
        self.network = network
        self.stale_after = stale_after_s
        self.max_seq_jump = max_seq_jump
        """How far telemetry's seq may leap past the last one taken (messages lost on the
        way), plus ``max_seq_rate_hz`` per second since it: an edge sends at most 10 a second,
        so a long gap (a broker's queue overflowed) does not silence it."""
        self.max_seq_rate_hz = max_seq_rate_hz
        self.link_index = {link.id: i for i, link in enumerate(network.links)}
        self.approach_link = {a.id: self.link_index[a.link_id] for a in network.approaches}
        self.approach_node = {a.id: a.intersection_id for a in network.approaches}
        n = len(network.links)
        self.queue = np.zeros(n)
        self.updated = np.full(n, -np.inf)
        self.flow_vph = np.zeros(n)
        """Arrivals per approach (telemetry's flow), to predict how queues grow."""
        if historical_queue_veh is not None:
            if historical_queue_veh.shape != (n,) or not np.all(np.isfinite(historical_queue_veh)):
                raise ValidationError("historical_queue_veh", f"expected {n} finite values")
            if np.any(historical_queue_veh < 0):
                raise ValidationError("historical_queue_veh", "queues cannot be negative")
        self.historical = historical_queue_veh
        self._changed: set[int] = set()
        """Links whose queue was set since ``take_changed`` last ran."""
        self._stale_at: list[tuple[float, int]] = []
        """(when it goes stale, link) of every update, a heap: a queue seen from a later
        ``now`` changes then too (the fallback stands in)."""
        self._counted: dict[str, _Counted] = {}
        self._born: set[str] = set()
        """Intersections whose edge announced itself since their last telemetry taken."""
        lanes = np.array([len(link.lanes) for link in network.links], dtype=np.float64)
        saturation = np.array([link.saturation_flow_vphpl for link in network.links])
        self.discharge_s_per_veh = 3600.0 / (saturation * lanes)

    def ingest(self, message: Telemetry, now_s: float) -> None:
        """Take one telemetry message; refuse (``RefusedError``) one from an unknown intersection,
        with an unknown or foreign approach, or a seq not newer than the last or leaping past
        it. Nothing is half-applied."""
        node = message.intersection
        if node not in self.network.intersection_by_id:
            raise RefusedError(
                "unknown_intersection", "intersection", f"unknown intersection {node!r}"
            )
        self._check_seq(node, message.seq, now_s)
        updates = []
        for reading in message.approaches:
            link = self.approach_link.get(reading.approach)
            if link is None or self.approach_node[reading.approach] != node:
                unknown = f"{node}: unknown approach {reading.approach!r}"
                raise RefusedError("unknown_approach", "approaches", unknown)
            updates.append((link, reading.queue_veh, reading.flow_vph))
        for link, queue, flow in updates:
            self.queue[link] = queue
            self.flow_vph[link] = flow
            self._touched(link, now_s)
        self._counted[node] = _Counted(message.seq, now_s)
        self._born.discard(node)

    def born(self, node: str) -> None:
        """The intersection's edge announced itself (its birth status): its next telemetry
        may leap, since a restarted edge counts on from the wall clock in milliseconds."""
        self._born.add(node)

    def _check_seq(self, node: str, seq: int, now_s: float) -> None:
        """A seq already seen is a redelivery or a replay. One far past the last is refused
        too (unless the edge was born since): a single forged 2**53-1 would otherwise make
        every genuine message after it look old, and silence the intersection."""
        last = self._counted.get(node)
        if last is None:
            return
        if seq <= last.seq:
            raise RefusedError("seq_old", "seq", f"{node}: seq {seq} is not newer than {last.seq}")
        allowed = self.max_seq_jump + self.max_seq_rate_hz * max(0.0, now_s - last.at_s)
        if node not in self._born and seq - last.seq > allowed:
            raise RefusedError(
                "seq_jump", "seq", f"{node}: seq {seq} leaps {seq - last.seq} past {last.seq}"
            )

    def set_queue(
        self, link_id: str, queue_veh: float, now_s: float, *, flow_vph: float | None = None
    ) -> None:
        """Direct update (for in-process harnesses that read ground truth)."""
        check_number("queue_veh", queue_veh, ge=0.0, le=2000.0)
        link = self.link_index[link_id]
        self.queue[link] = queue_veh
        if flow_vph is not None:
            self.flow_vph[link] = check_number("flow_vph", flow_vph, ge=0.0, le=20_000.0)
        self._touched(link, now_s)

    def _touched(self, link: int, now_s: float) -> None:
        self.updated[link] = now_s
        self._changed.add(link)
        heapq.heappush(self._stale_at, (now_s + self.stale_after, link))

    def take_changed(self, now_s: float) -> NDArray[np.int64]:
        """The links whose queue, seen from ``now_s``, may differ from when this was last
        called: those set since, and those gone stale meanwhile. For the one consumer that
        keeps per-movement times up to date (the corridor manager's ready times), so it
        updates what changed instead of checking every movement on every query."""
        while self._stale_at and self._stale_at[0][0] < now_s:
            self._changed.add(heapq.heappop(self._stale_at)[1])
        links = np.fromiter(sorted(self._changed), dtype=np.int64, count=len(self._changed))
        self._changed.clear()
        return links

    def inflow_veh_per_s(
        self, now_s: float, *, links: NDArray[np.int64] | None = None
    ) -> NDArray[np.float64]:
        """Arrival rate per link (or per link of ``links``) where telemetry is live, 0 where
        it is not."""
        chosen = slice(None) if links is None else links
        return np.where(self.live(now_s, links=links), self.flow_vph[chosen] / 3600.0, 0.0)

    def live(self, now_s: float, *, links: NDArray[np.int64] | None = None) -> NDArray[np.bool_]:
        """Per link (or per link of ``links``): whether its telemetry is recent enough to
        trust (``stale_after_s``)."""
        chosen = slice(None) if links is None else links
        return now_s - self.updated[chosen] <= self.stale_after

    def queues(self, now_s: float, *, links: NDArray[np.int64] | None = None) -> QueueView:
        """Every link's queue seen from ``now_s`` (or those of ``links``): live telemetry, else
        the historical fallback, else none."""
        chosen = slice(None) if links is None else links
        age = now_s - self.updated[chosen]
        live = age <= self.stale_after
        source = np.where(
            live, Source.LIVE, Source.HISTORICAL if self.historical is not None else Source.DEFAULT
        )
        fallback = self.historical[chosen] if self.historical is not None else 0.0
        queue = np.where(live, self.queue[chosen], fallback)
        return QueueView(queue, age, source.astype(np.int8))

    def flush_time_s(
        self,
        now_s: float,
        *,
        lost_time_s: float = DEFAULT_LOST_TIME_S,
        links: NDArray[np.int64] | None = None,
    ) -> NDArray[np.float64]:
        """Per link (or per link of ``links``): green needed to discharge its queue over all
        its lanes (0 when empty)."""
        queue = self.queues(now_s, links=links).queue_veh
        discharge = self.discharge_s_per_veh if links is None else self.discharge_s_per_veh[links]
        return np.where(queue > 0, lost_time_s + queue * discharge, 0.0)
