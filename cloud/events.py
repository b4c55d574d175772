"""The live stream: what the service publishes as it happens (intersection states once a
second, corridor statuses, alarms), fanned out to every subscriber (the console, other
clients of ``GET /v1/events``).

Publishing never waits: each subscriber has a bounded queue, and one that falls behind loses
its oldest events and is told so (``lost``), so a slow browser never slows the service.
Events are encoded once, whatever the number of subscribers.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from citybrain.models.checks import check_count

SUBSCRIBER_QUEUE = 256
"""Events a subscriber may fall behind by before it loses the oldest."""
MAX_SUBSCRIBERS = 256
_ENCODER = msgspec.json.Encoder()


class EventKind(enum.StrEnum):
    INTERSECTIONS = "intersections"
    """``IntersectionStates``: every intersection, once a second."""
    VEHICLES = "vehicles"
    """``Fleet``: the vehicles heard from lately, once a second while there are any."""
    CORRIDOR = "corridor"
    """``CorridorStatus`` as published on the corridor's MQTT topic."""
    ALARM = "alarm"
    """``Alarm``: raised, cleared or acknowledged."""


LATEST_ONLY = frozenset({EventKind.INTERSECTIONS, EventKind.VEHICLES})
"""Kinds whose latest event says all (a new subscriber is handed it at once)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event, encoded: ``id`` grows by one per event published, so a gap is a loss."""

    id: int
    kind: EventKind
    data: bytes

    def sse(self) -> bytes:
        """As a server-sent event (``text/event-stream``): JSON holds no raw newline."""
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.kind.encode(), self.data)


class TooManySubscribers(Exception):  # noqa: N818 - reads as a state
    """Every stream slot is taken."""


class Subscription:
    """One subscriber's events, oldest first; ``lost`` counts those it fell too far behind."""

    def __init__(self, hub: EventHub, size: int) -> None:
        self._hub = hub
        self._events: deque[Event] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.lost = 0

    def offer(self, event: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.lost += 1
        self._events.append(event)
        self._ready.set()

    async def next_batch(self, timeout_s: float) -> list[Event]:
        """What is waiting (waiting up to ``timeout_s`` for something); [] on the timeout."""
        if not self._events:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return []
        batch = list(self._events)
        self._events.clear()
        return batch

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(
        self, *, queue_size: int = SUBSCRIBER_QUEUE, max_subscribers: int = MAX_SUBSCRIBERS
    ) -> None:
        check_count("queue_size", queue_size, ge=1)
        check_count("max_subscribers", max_subscribers, ge=1)
        self._queue_size = queue_size
        self._max = max_subscribers
        self._subscribers: set[Subscription] = set()
        self._last_id = 0
        self._latest: dict[EventKind, Event] = {}
        """The last event of each kind whose latest alone matters (intersection states)."""

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: EventKind, value: object) -> Event:
        self._last_id += 1
        event = Event(self._last_id, kind, _ENCODER.encode(value))
        if kind in LATEST_ONLY:
            self._latest[kind] = event
        for subscriber in self._subscribers:
            subscriber.offer(event)
        return event

    def subscribe(self) -> Subscription:
        """A new subscriber, handed the latest intersection states at once (no blank map
        until the next second)."""
        if len(self._subscribers) >= self._max:
            raise TooManySubscribers(f"{self._max} streams are open")
        subscription = Subscription(self, self._queue_size)
        self._subscribers.add(subscription)
        for event in self._latest.values():
            subscription.offer(event)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def stream(
        self, subscription: Subscription, *, keepalive_s: float
    ) -> AsyncIterator[bytes]:
        """The subscription as SSE bytes, with a comment every ``keepalive_s`` of silence (so
        proxies keep the connection and the client notices a dead one)."""
        while True:
            batch = await subscription.next_batch(keepalive_s)
            yield b"".join(event.sse() for event in batch) if batch else b": keepalive\n\n"
