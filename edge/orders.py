"""The newest plan each intersection took, kept on disk across the edge's restarts.

An edge refuses a plan not newer (by ``(epoch, seq)``) than the last it took. Kept only in
memory, that mark would be gone after a restart, and a recorded plan still inside its
validity could be played back to it. One small file per intersection, replaced whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

from citybrain.models.checks import ID_PATTERN
from citybrain.models.files import write_atomic
from citybrain.models.messages import MAX_SEQ, PlanOrder

log = logging.getLogger(__name__)

FOLDER = "plan-order"


class PlanOrders:
    def __init__(self, state_directory: Path) -> None:
        self.directory = state_directory / FOLDER
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)

    def get(self, intersection: str) -> PlanOrder | None:
        path = self._path(intersection)
        try:
            epoch, seq = (int(part) for part in path.read_text().split())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.error("%s: unreadable plan order in %s (%s): starting afresh", intersection,
                      path, error)  # fmt: skip
            return None
        if not (0 <= epoch <= MAX_SEQ and 0 <= seq <= MAX_SEQ):
            log.error("%s: plan order out of range in %s: starting afresh", intersection, path)
            return None
        return (epoch, seq)

    def put(self, intersection: str, order: PlanOrder) -> None:
        """Survives the process being killed (not fsynced: a plan's ack must not wait for
        the disk; after a power cut the mark may be a plan or two behind)."""
        write_atomic(self._path(intersection), f"{order[0]} {order[1]}\n".encode(), sync=False)

    def _path(self, intersection: str) -> Path:
        if ID_PATTERN.fullmatch(intersection) is None:  # never a path of its own
            raise ValueError(f"{intersection!r} is not an intersection id")
        return self.directory / intersection
