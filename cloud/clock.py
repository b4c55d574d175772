"""The cloud's controller clock, which one message, or one compromised edge box, cannot move.

Controller time comes from edges' telemetry only. A report within the tolerance of the
clock's estimate moves it as usual; one beyond it, either way, is a vote for another time, and
the clock steps only when a majority of the intersections reporting lately agree (at least
two; in a one-intersection city, two reports in a row). A majority, not a fixed two: one edge
box speaks for all its intersections, so two of them agreeing may be one party.
"""

from __future__ import annotations

import enum
import math
import time
from collections import Counter, deque
from collections.abc import Callable

from citybrain.models.checks import check_number

ACTIVE_S = 30.0
"""An intersection counts towards the majority while it reported this recently (wall s)."""


class ClockVerdict(enum.StrEnum):
    FOLLOWED = "followed"
    """Within the tolerance: the clock takes it if it is the newest."""
    DISAGREED = "disagreed"
    """Beyond the tolerance: counted, not followed (a vote for that time)."""
    STEPPED = "stepped"
    """A majority agreed on a time beyond the tolerance: the clock stepped to it."""


class ControllerClock:
    """The cloud's estimate of controller time: the newest time reported within
    ``tolerance_s`` of the estimate, advanced since at ``rate`` (1 in the field; a simulation's
    pace) for at most ``hold_s`` of wall time, so it never runs ahead of controllers that fell
    behind. Tolerances are wall seconds, times ``rate``.

    A vote counts for ``vote_s``. A step back also needs the current time unconfirmed for
    ``vote_s``: edges replaying what they buffered in an outage report old times while the
    others are live, and the clock must not follow them back."""

    def __init__(
        self,
        *,
        rate: float = 1.0,
        hold_s: float = 1.0,
        tolerance_s: float = 5.0,
        vote_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        check_number("rate", rate, gt=0.0, le=10_000.0)
        check_number("hold_s", hold_s, gt=0.0, le=60.0)
        check_number("tolerance_s", tolerance_s, gt=0.0, le=3600.0)
        check_number("vote_s", vote_s, gt=0.0, le=3600.0)
        self.rate = rate
        self.hold_s = hold_s
        self.tolerance = tolerance_s * rate
        """Controller seconds."""
        self.vote_s = vote_s
        self._monotonic = monotonic
        self._at: tuple[float, float] | None = None
        self._confirmed = -math.inf
        """Wall time of the last report within the tolerance."""
        self._ballots = Ballots(width=self.tolerance, lifetime_s=vote_s)
        self._reporters = Reporters(ACTIVE_S)

    @property
    def known(self) -> bool:
        return self._at is not None

    def now(self) -> float:
        return self._estimate(self._monotonic())

    def _estimate(self, wall: float) -> float:
        if self._at is None:
            return 0.0
        at, since = self._at
        return at + min(wall - since, self.hold_s) * self.rate

    def seen(self, intersection: str, controller_time: float) -> ClockVerdict:
        """An intersection's telemetry told ``controller_time``."""
        wall = self._monotonic()
        self._reporters.seen(intersection, wall)
        if self._at is not None and abs(controller_time - self._estimate(wall)) > self.tolerance:
            return self._vote(intersection, controller_time, wall)
        self._ballots.withdraw(intersection)
        self._confirmed = wall
        if self._at is None or controller_time > self._at[0]:
            self._at = (controller_time, wall)
        return ClockVerdict.FOLLOWED

    def _vote(self, intersection: str, controller_time: float, wall: float) -> ClockVerdict:
        offset = controller_time - wall * self.rate  # the same for agreeing votes, any wall
        again = self._ballots.agrees(intersection, offset, wall)
        self._ballots.cast(intersection, offset, wall)
        back = controller_time < self._estimate(wall) and wall - self._confirmed <= self.vote_s
        active = self._reporters.active(wall)
        if active <= 1:
            quorum = again  # a one-intersection city: two reports in a row
        else:
            quorum = self._ballots.agreeing(offset, wall) >= max(2, active // 2 + 1)
        if back or not quorum:
            return ClockVerdict.DISAGREED
        self._at, self._confirmed = (controller_time, wall), wall
        self._ballots.clear()
        return ClockVerdict.STEPPED


class Ballots:
    """Votes for another time, one per intersection, filed by the offset they imply
    (controller time - wall x rate) in buckets one tolerance wide: votes within a tolerance of
    each other share a bucket or sit in neighbouring ones. Counting the votes that agree with
    one costs O(1) amortized, so a whole city voting at once (a simulation restarted, a clock
    stepped by NTP) stays linear."""

    def __init__(self, *, width: float, lifetime_s: float) -> None:
        self.width = width
        self.lifetime_s = lifetime_s
        self._of: dict[str, tuple[int, float]] = {}
        """Intersection -> (bucket, wall time) of its vote."""
        self._queues: dict[int, deque[tuple[str, float]]] = {}
        """Per bucket, votes in the order cast (some since withdrawn or recast)."""
        self._counts: Counter[int] = Counter()
        """Per bucket, the votes standing in it."""

    def cast(self, intersection: str, offset: float, wall: float) -> None:
        self.withdraw(intersection)
        bucket = math.floor(offset / self.width)
        self._of[intersection] = (bucket, wall)
        self._queues.setdefault(bucket, deque()).append((intersection, wall))
        self._counts[bucket] += 1

    def withdraw(self, intersection: str) -> None:
        vote = self._of.pop(intersection, None)
        if vote is not None:
            self._counts[vote[0]] -= 1  # its queue entry is dropped when it reaches the front

    def agrees(self, intersection: str, offset: float, wall: float) -> bool:
        """Whether the intersection's own standing vote is for about this time."""
        vote = self._of.get(intersection)
        if vote is None or wall - vote[1] > self.lifetime_s:
            return False
        return abs(vote[0] - math.floor(offset / self.width)) <= 1

    def agreeing(self, offset: float, wall: float) -> int:
        """Votes of the last ``lifetime_s`` for about this time (within one to two widths)."""
        bucket = math.floor(offset / self.width)
        return sum(self._fresh(near, wall) for near in (bucket - 1, bucket, bucket + 1))

    def clear(self) -> None:
        self._of.clear()
        self._queues.clear()
        self._counts.clear()

    def _fresh(self, bucket: int, wall: float) -> int:
        queue = self._queues.get(bucket)
        while queue:
            intersection, at = queue[0]
            standing = self._of.get(intersection) == (bucket, at)
            if standing and wall - at <= self.lifetime_s:
                break
            queue.popleft()
            if standing:  # too old to count: withdrawn
                del self._of[intersection]
                self._counts[bucket] -= 1
        if not queue:
            self._queues.pop(bucket, None)
            self._counts.pop(bucket, None)
            return 0
        return self._counts[bucket]


class Reporters:
    """How many intersections reported in the last ``window_s``; counted at most once a wall
    second, since a whole city's reports come in every second."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._count = 0
        self._counted_at = -math.inf

    def seen(self, intersection: str, wall: float) -> None:
        if intersection not in self._last:
            self._counted_at = -math.inf  # a newcomer counts at once
        self._last[intersection] = wall

    def active(self, wall: float) -> int:
        if wall - self._counted_at >= 1.0:
            self._count = sum(1 for at in self._last.values() if wall - at <= self.window_s)
            self._counted_at = wall
        return self._count
