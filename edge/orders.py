"""The newest plan each intersection took, kept on disk across the edge's restarts.

An edge refuses a plan not newer (by ``(epoch, seq)``) than the last it took. Kept only in
memory, that mark would be gone after a restart, and a recorded plan still inside its
validity could be played back to it. One small file for the process's intersections,
replaced whole, at most every ``FLUSH_DELAY_S``: a corridor's burst of plans (one per agent)
costs one write, after the acks went out, not one write per plan before the next is read.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec

from citybrain.models.errors import ValidationError
from citybrain.models.files import read_struct, write_atomic
from citybrain.models.messages import MAX_SEQ, PlanOrder

log = logging.getLogger(__name__)

FILE_NAME = "plan-order.json"
FLUSH_DELAY_S = 0.05
"""How long a new mark may wait in memory: a kill -9 inside it loses that mark only."""
MAX_FILE_BYTES = 64 * 1024 * 1024


class PlanOrders:
    def __init__(self, state_directory: Path) -> None:
        state_directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.path = state_directory / FILE_NAME
        self._marks = self._read()
        self._flush: asyncio.TimerHandle | None = None

    def get(self, intersection: str) -> PlanOrder | None:
        return self._marks.get(intersection)

    def put(self, intersection: str, order: PlanOrder) -> None:
        """Kept now, written within ``FLUSH_DELAY_S`` (not fsynced: a plan's ack must not wait
        for the disk; after a power cut the mark may be a plan or two behind)."""
        self._marks[intersection] = order
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        marks = {node: list(order) for node, order in sorted(self._marks.items())}
        write_atomic(self.path, msgspec.json.encode(marks), sync=False)

    def _read(self) -> dict[str, PlanOrder]:
        if not self.path.exists():
            return {}
        try:
            raw = read_struct(
                "plan_order", self.path, dict[str, tuple[int, int]], max_bytes=MAX_FILE_BYTES
            )
        except ValidationError as error:
            log.error("unreadable plan orders (%s): starting afresh", error)
            return {}
        marks = {n: o for n, o in raw.items() if all(0 <= part <= MAX_SEQ for part in o)}
        if len(marks) < len(raw):
            log.error("plan orders out of range in %s: those intersections start afresh",
                      self.path)  # fmt: skip
        return marks
