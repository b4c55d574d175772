from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from citybrain.edge.orders import FLUSH_DELAY_S, PlanOrders


def test_marks_are_written_once_per_burst_and_read_back_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        orders = PlanOrders(tmp_path)
        for seq, node in enumerate(("a01", "a02", "a03"), start=1):
            orders.put(node, (7, seq))
        assert not orders.path.exists(), "a burst is written once, after it"
        await asyncio.sleep(FLUSH_DELAY_S * 3)
        assert orders.path.exists()
        written = orders.path.stat().st_mtime_ns
        orders.put("a01", (8, 1))
        orders.flush()  # at a clean stop: at once
        assert orders.path.stat().st_mtime_ns >= written

    asyncio.run(scenario())
    again = PlanOrders(tmp_path)
    assert again.get("a01") == (8, 1)
    assert again.get("a03") == (7, 3)
    assert again.get("a09") is None


@pytest.mark.parametrize("content", [b"{", b'{"a01": [1]}', b'{"a01": [-1, 2]}', b"[]"])
def test_an_unreadable_file_starts_afresh_and_says_so(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "plan-order.json").write_bytes(content)
    assert PlanOrders(tmp_path).get("a01") is None
    assert "afresh" in caplog.text
