"""What the cloud service does with each message off the broker: decode it (the codec), check
that its topic speaks for the intersection and region it names, hand it to the core, and
turn what changed into alarms and audit records.

Whatever does not fit (malformed, oversized, from an unknown intersection or another region,
a seq that leaps, a position off the network) is refused and counted by its reason. No
broker here: the session calls ``handle`` with a topic and a payload, so tests and the
session's drain feed it the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from citybrain.cloud.alarms import AlarmKind
from citybrain.cloud.clock import ClockVerdict, ControllerClock
from citybrain.cloud.core import CloudCore
from citybrain.cloud.health import Trouble
from citybrain.cloud.outbox import Outbox
from citybrain.cloud.session import Role
from citybrain.cloud.state import RefusedError
from citybrain.cloud.storage import StorageError, check_storable
from citybrain.models.checks import check_number
from citybrain.models.codec import Codec
from citybrain.models.errors import MessageError, TopicError, ValidationError
from citybrain.models.messages import (
    AckStatus,
    PlanAck,
    Presence,
    Status,
    Telemetry,
    VehiclePosition,
)
from citybrain.models.topics import Topic, TopicKind, parse_topic

if TYPE_CHECKING:
    from citybrain.cloud.service import ServiceSettings

log = logging.getLogger(__name__)

MAX_TIME_S = 253_402_300_799.0
"""9999-12-31T23:59:59Z: later times are not times any clock or database here can hold."""
QUIET_REFUSALS = frozenset(
    {"seq_old", "fleet_position_time", "fleet_position_link", "position_stale", "position_behind"}
)
"""Refusals of what changes nothing and comes in normal operation (a QoS 1 redelivery; the
unit of a vehicle without a corridor at a depot off the network, or with its clock off; a
corridor vehicle's position matched back onto the link it left): counted by reason, but
never a burst."""

TelemetrySink = Callable[[Telemetry, float], Awaitable[None]]
"""Where telemetry goes to be stored (awaits when the writer's queue is full)."""


class Dispatcher:
    def __init__(
        self,
        settings: ServiceSettings,
        core: CloudCore,
        *,
        codec: Codec,
        clock: ControllerClock,
        counters: Counter[str],
        lock: asyncio.Lock,
        outbox: Outbox,
        trouble: Trouble,
        regions: dict[str, str],
        telemetry_sink: TelemetrySink | None,
    ) -> None:
        """``lock``: held while the core changes, shared with the tick and the operators;
        ``regions`` (with region ``+``) is filled here, for the outbox to address plans."""
        self.settings = settings
        self.core = core
        self.codec = codec
        self.clock = clock
        self.counters = counters
        self._lock = lock
        self.outbox = outbox
        self.trouble = trouble
        self.regions = regions
        """With region ``+``: intersection -> the region of its first accepted message."""
        self.telemetry_sink = telemetry_sink

    async def handle(self, topic: str, payload: bytes) -> None:
        """One message off the broker. Never raises: every refusal is counted by its reason
        (``rejected_<reason>``), and a message that makes a handler fail is counted too."""
        try:
            await self._take(topic, payload)
        except RefusedError as error:
            self._refused(error.code, topic, error)
        except (MessageError, TopicError) as error:
            kind = "oversized" if error.field == "$" and "bytes" in error.reason else "malformed"
            self._refused(kind, topic, error)
        except ValidationError as error:
            self._refused("invalid", topic, error)
        except StorageError as error:  # the writer stopped: keep serving corridors
            self.trouble.storage_ok = False
            self.counters["storage_failed"] += 1
            log.error("cloud: telemetry not stored: %s", error)
        except Exception:  # one message must not end the session (and every corridor)
            self.counters["handle_failed"] += 1
            self.trouble.failures.add()
            log.exception("cloud: handling a message on %s failed", topic[:120])

    async def _take(self, topic: str, payload: bytes) -> None:
        where = parse_topic(topic)
        if where.kind is not TopicKind.TELEMETRY and self.settings.role is Role.INGEST:
            self.counters["ignored"] += 1
            return
        if where.kind is TopicKind.TELEMETRY:
            telemetry = self.codec.decode(payload, Telemetry)
            self._addressed(where, telemetry.intersection)
            await self._telemetry(telemetry)
        elif where.kind is TopicKind.STATUS:
            status = self.codec.decode(payload, Status)
            self._addressed(where, status.intersection)
            await self._status(status)
        elif where.kind is TopicKind.ACK:
            ack = self.codec.decode(payload, PlanAck)
            self._addressed(where, ack.intersection)
            await self._ack(ack)
        elif where.kind is TopicKind.VEHICLE_POSITION:
            position = self.codec.decode(payload, VehiclePosition)
            if where.vehicle != position.vehicle:
                raise RefusedError("wrong_vehicle", "vehicle", "the body names another vehicle")
            await self._position(position)
        else:
            self.counters["ignored"] += 1
            return
        self._learn_region(where)

    def _learn_region(self, where: Topic) -> None:
        """With region ``+``, an intersection's plans go to its first accepted message's."""
        node, region = where.intersection, where.region
        if self.settings.region == "+" and node is not None and region is not None:
            self.regions.setdefault(node, region)

    def _refused(self, reason: str, topic: str, error: ValidationError) -> None:
        self.counters[f"rejected_{reason}"] += 1
        if reason not in QUIET_REFUSALS:
            self.trouble.rejections.add()
        log.debug("cloud: refused a message on %s (%s): %s", topic[:120], reason, error)

    def _addressed(self, where: Topic, body_intersection: str) -> None:
        """A message speaks for the intersection of its topic, which the city must have, in
        its region: one edge's broker rights do not let it speak for another, nor move an
        intersection's plans to another region (with ``+``, its first accepted message's)."""
        node = where.intersection
        if node != body_intersection:
            raise RefusedError("wrong_intersection", "intersection", "the body names another")
        if node not in self.core.seen:
            raise RefusedError("unknown_intersection", "intersection", f"unknown {node!r}")
        home = self.regions.get(node) if self.settings.region == "+" else self.settings.region
        if home is not None and where.region != home:
            raise RefusedError("region_mismatch", "region", f"{node} is in region {home!r}")

    async def _telemetry(self, message: Telemetry) -> None:
        received = time.time()
        check_storable(message, received)  # an absurd time is refused before anything moves
        if self.settings.role is Role.LEADER:
            async with self._lock:
                self.core.on_telemetry(message, self.clock.now())
            verdict = self.clock.seen(message.intersection, message.controller_time)
            if verdict is not ClockVerdict.FOLLOWED:
                self.counters[f"clock_{verdict}"] += 1
        self.counters["telemetry"] += 1
        if self.telemetry_sink is not None:
            await self.telemetry_sink(message, received)

    async def _status(self, status: Status) -> None:
        async with self._lock:
            self.outbox.apply(self.core.on_status(status, self.clock.now()))
        node = status.intersection
        if status.presence is Presence.OFFLINE:
            self.outbox.raise_(AlarmKind.EDGE_OFFLINE, node, f"the edge of {node} went offline")
        else:
            self.outbox.clear(AlarmKind.EDGE_OFFLINE, node)

    async def _ack(self, ack: PlanAck) -> None:
        check_number("at", ack.at, le=MAX_TIME_S)
        self.counters["acks"] += 1
        unmatched = self.core.counters["acks_unmatched"]
        copies = self.core.counters["acks_of_copies"]
        async with self._lock:
            self.outbox.apply(self.core.on_ack(ack, self.clock.now()))
        if self.core.counters["acks_unmatched"] > unmatched:
            self.trouble.unmatched.add()
        elif self.core.counters["acks_of_copies"] == copies:  # about a plan this cloud sent
            node = ack.intersection
            if ack.status in (AckStatus.REJECTED, AckStatus.EXPIRED):
                why = ack.reason or ack.reason_code or "no reason given"
                self.outbox.raise_(
                    AlarmKind.PLAN_REFUSED, node, f"{node} {ack.status} a plan: {why}"
                )
            else:
                self.outbox.clear(AlarmKind.PLAN_REFUSED, node)
                self.outbox.clear(AlarmKind.PLAN_UNCONFIRMED, node)
        await self.outbox.audit(ack)

    async def _position(self, position: VehiclePosition) -> None:
        """Positions never move the clock: anyone with a GPS unit could send one."""
        async with self._lock:
            now = self.clock.now()
            self.outbox.apply(
                self.core.on_position(position, now, tolerance_s=self.clock.tolerance)
            )
