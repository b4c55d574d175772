"""Waiting out a server that is away (a broker, a controller link, a database), one policy for
every retry loop: exponential backoff with full jitter.

Full jitter (each wait uniform in ``[0, delay]``, the delay doubling up to a cap) is what keeps
a city of clients that lost the same server from coming back in lockstep and knocking it over
again. The loops stay the caller's, in aiomqtt 2.x's style (``while``: try the session, on a
loss ``await backoff.sleep(stop)``); this module owns only how long to wait. Only the standard
library: the edge, the cloud and the simulator's clients all import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from citybrain.models.checks import check_number

T = TypeVar("T")


class Backoff:
    """The waits between attempts: the n-th is uniform in ``[0, min(max_s, first_s x 2^n)]``,
    back to ``first_s`` after ``reset`` (call it once an attempt succeeded)."""

    def __init__(self, *, first_s: float, max_s: float) -> None:
        check_number("first_s", first_s, gt=0.0, le=max_s)
        check_number("max_s", max_s, le=86_400.0)
        self.first_s = first_s
        self.max_s = max_s
        self.delay_s = first_s
        """The bound of the next wait."""
        self.failures = 0
        """Attempts failed since the last ``reset``."""

    def reset(self) -> None:
        self.delay_s = self.first_s
        self.failures = 0

    def next_wait(self) -> float:
        """The next wait in seconds; counts a failure and doubles the bound."""
        wait = random.uniform(0.0, self.delay_s)  # noqa: S311 - jitter, not cryptography
        self.delay_s = min(self.max_s, self.delay_s * 2.0)
        self.failures += 1
        return wait

    async def sleep(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the next wait, or less if ``stop`` is set meanwhile; whether it is set."""
        wait = self.next_wait()
        if stop is None:
            await asyncio.sleep(wait)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        return stop.is_set()


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_on: Callable[[Exception], bool],
    stop: asyncio.Event | None = None,
) -> T | None:
    """``call`` until it returns; an exception ``retry_on`` accepts is waited out with
    ``backoff``, any other propagates. None when ``stop`` is set first."""
    while stop is None or not stop.is_set():
        try:
            result = await call()
        except Exception as error:
            if not retry_on(error):
                raise
            if await backoff.sleep(stop):
                return None
            continue
        backoff.reset()
        return result
    return None
