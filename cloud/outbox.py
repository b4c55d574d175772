"""Everything the cloud service says, from the core's actions and the service's findings:
signed plans (QoS 1) and retained corridor statuses to the broker, coalesced; records to the
audit trail; corridor changes and alarms to the live stream.

Apart so that the dispatch, the tick and the operator endpoints, which all change the core,
hand its actions to one place that decides how they go out (and in what order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from citybrain.cloud.alarms import Alarm, AlarmBook, AlarmKind
from citybrain.cloud.core import CloudCore
from citybrain.cloud.corridor import TERMINAL, Action, PublishStatus, SendPlan
from citybrain.cloud.events import EventHub, EventKind
from citybrain.cloud.health import Trouble
from citybrain.cloud.storage import OperatorAction
from citybrain.models.codec import Codec
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorState, CorridorStatus, SignalPlan
from citybrain.models.signing import PlanSigner
from citybrain.models.topics import TopicKind, corridor_status_topic, intersection_topic

if TYPE_CHECKING:
    from citybrain.cloud.service import ServiceSettings

log = logging.getLogger(__name__)

ENDED_BADLY = frozenset({CorridorState.FAILED, CorridorState.TIMED_OUT, CorridorState.REJECTED})
"""Corridor states that raise an alarm: the vehicle did not get its corridor through."""

AuditSink = Callable[[object, float], Awaitable[None]]
"""Where plans, acks and corridor statuses go for the audit trail."""


class Outbox:
    def __init__(
        self,
        settings: ServiceSettings,
        core: CloudCore,
        *,
        signer: PlanSigner | None,
        codec: Codec,
        counters: Counter[str],
        enqueue: Callable[..., None],
        regions: dict[str, str],
        events: EventHub,
        alarm_book: AlarmBook,
        trouble: Trouble,
        audit_sink: AuditSink | None,
    ) -> None:
        """``enqueue(topic, payload, retain=...)`` hands a message to the broker session;
        ``regions`` (with region ``+``) is where each intersection's plans go, as the dispatch
        learns them."""
        self.settings = settings
        self.core = core
        self.signer = signer
        """Signs every plan as it leaves: edges refuse plans no trusted key signed."""
        self.codec = codec
        self.counters = counters
        self._enqueue = enqueue
        self.regions = regions
        self.events = events
        self.alarm_book = alarm_book
        self.trouble = trouble
        self.audit_sink = audit_sink
        self._background: set[asyncio.Task[None]] = set()
        self._statuses_due: dict[str, CorridorStatus] = {}
        """Corridor statuses waiting for the next status publish, the latest per corridor."""
        self._states_published: dict[str, CorridorState] = {}
        self._settling: asyncio.Task[None] | None = None

    def apply(self, actions: list[Action]) -> None:
        region = self.settings.region if self.settings.region != "+" else None
        for action in actions:
            if isinstance(action, SendPlan):
                self._settle_soon()
                where = region or self.regions.get(action.intersection)
                if where is None:
                    # never heard from: nothing to send to; its ack timeout plans around it
                    self.counters["plans_unroutable"] += 1
                    continue
                topic = intersection_topic(TopicKind.PLAN, where, action.intersection)
                signed = self._signer().sign(action.plan)
                self._enqueue(topic, self.codec.encode(signed), retain=False)
                self.counters["plans_sent"] += 1
                self.audit_soon(signed)
            elif isinstance(action, PublishStatus):
                status = action.status
                if self._states_published.get(status.corridor_id) is not status.state:
                    # a change of state goes out at once; updates within a state are coalesced
                    self._statuses_due.pop(status.corridor_id, None)
                    self._publish_status(status)
                    continue
                if not self._statuses_due:
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.settings.status_every_s, self._publish_statuses)
                self._statuses_due[status.corridor_id] = status

    def _signer(self) -> PlanSigner:
        if self.signer is None:
            raise RuntimeError("only a leader sends plans")
        return self.signer

    def _settle_soon(self) -> None:
        if self._settling is None or self._settling.done():
            self._settling = asyncio.get_running_loop().create_task(self._settle())

    async def _settle(self) -> None:
        """The twins take the plans just sent one intersection at a time, once their acks are
        in (``settle_after_s``) and between other work (each step is synchronous, so never
        inside another handler). Whoever reads a twin before then brings it up to date."""
        await asyncio.sleep(self.settings.settle_after_s)
        while self.core.settle_one():
            await asyncio.sleep(0)

    def _publish_statuses(self) -> None:
        due, self._statuses_due = self._statuses_due, {}
        for status in due.values():
            self._publish_status(status)

    def _publish_status(self, status: CorridorStatus) -> None:
        if status.state in TERMINAL:
            self._states_published.pop(status.corridor_id, None)  # nothing follows: forget it
        else:
            self._states_published[status.corridor_id] = status.state
        topic = corridor_status_topic(status.corridor_id)
        self._enqueue(topic, self.codec.encode(status), retain=True)
        self.audit_soon(status)
        self.events.publish(EventKind.CORRIDOR, status)
        if status.state in ENDED_BADLY:
            why = f": {status.reason}" if status.reason else ""
            self.raise_(
                AlarmKind.CORRIDOR_FAILED, status.corridor_id,
                f"corridor {status.corridor_id} ({status.vehicle}) {status.state}{why}",
            )  # fmt: skip

    # ---- alarms -----------------------------------------------------------------------------

    def raise_(self, kind: AlarmKind, subject: str, message: str) -> None:
        alarm = self.alarm_book.raise_(kind, subject, message, at=time.time())
        if alarm is not None:
            log.warning("cloud: alarm %s: %s", alarm.alarm_id, message)
            self.alarm_changed(alarm)

    def clear(self, kind: AlarmKind, subject: str) -> None:
        alarm = self.alarm_book.clear(kind, subject, at=time.time())
        if alarm is not None:
            self.alarm_changed(alarm)

    def alarm_changed(self, alarm: Alarm) -> None:
        self.events.publish(EventKind.ALARM, alarm)
        self.audit_soon(alarm)

    # ---- the audit trail --------------------------------------------------------------------

    def audit_soon(self, record: SignalPlan | CorridorStatus | OperatorAction | Alarm) -> None:
        if self.audit_sink is not None:
            task = asyncio.get_running_loop().create_task(self.audit(record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def audit(self, record: object) -> None:
        if self.audit_sink is None:
            return
        try:
            await self.audit_sink(record, time.time())
            self.trouble.storage_ok = True
        except ValidationError as error:
            self.counters["audit_invalid"] += 1
            log.warning("cloud: audit record refused: %s", error)
        except Exception as error:  # the audit trail must never stop a corridor
            self.trouble.storage_ok = False
            self.counters["audit_failed"] += 1
            log.warning("cloud: audit record not written: %s", error)
