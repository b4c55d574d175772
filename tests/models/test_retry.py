from __future__ import annotations

import asyncio
import random
import time

import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.retry import Backoff, retry


def test_waits_are_full_jitter_under_a_doubling_bound_up_to_the_cap() -> None:
    backoff = Backoff(first_s=1.0, max_s=5.0)
    bounds = []
    for _ in range(6):
        bound = backoff.delay_s
        wait = backoff.next_wait()
        assert 0.0 <= wait <= bound
        bounds.append(bound)
    assert bounds == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.failures == 6
    backoff.reset()
    assert (backoff.delay_s, backoff.failures) == (1.0, 0)


def test_waits_spread_so_clients_do_not_come_back_in_lockstep() -> None:
    waits = [Backoff(first_s=8.0, max_s=8.0).next_wait() for _ in range(200)]
    assert min(waits) < 2.0
    assert max(waits) > 6.0


@pytest.mark.parametrize(("first_s", "max_s"), [(0.0, 1.0), (2.0, 1.0), (float("nan"), 1.0)])
def test_bounds_are_checked(first_s: float, max_s: float) -> None:
    with pytest.raises(ValidationError):
        Backoff(first_s=first_s, max_s=max_s)


def test_a_stop_cuts_the_wait_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest wait

    async def scenario() -> tuple[bool, float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        backoff = Backoff(first_s=60.0, max_s=60.0)
        started = time.monotonic()
        stopped = await backoff.sleep(stop)
        return stopped, time.monotonic() - started

    stopped, took = asyncio.run(scenario())
    assert stopped
    assert took < 5.0


def test_retry_waits_out_what_it_is_told_to_and_resets_on_success() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "up"

    backoff = Backoff(first_s=0.001, max_s=0.01)
    result = asyncio.run(
        retry(flaky, backoff=backoff, retry_on=lambda e: isinstance(e, ConnectionError))
    )
    assert result == "up"
    assert len(calls) == 3
    assert backoff.failures == 0


def test_retry_lets_other_errors_through_and_gives_up_when_stopped() -> None:
    async def broken() -> None:
        raise KeyError("a bug")

    backoff = Backoff(first_s=0.001, max_s=0.01)
    with pytest.raises(KeyError):
        asyncio.run(retry(broken, backoff=backoff, retry_on=lambda e: isinstance(e, OSError)))

    async def never() -> int:
        raise OSError("down")

    async def stopped() -> int | None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await retry(never, backoff=backoff, retry_on=lambda e: True, stop=stop)

    assert asyncio.run(stopped()) is None
