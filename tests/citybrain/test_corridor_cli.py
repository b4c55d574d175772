"""``citybrain corridor ...`` against the real API served on a free port over a fake service,
as the operator ``op`` of ``tests/cloud/test_api.py``'s token file.

The API runs on its own event loop in a thread, because the CLI's ``main`` runs its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from citybrain import corridor_cli
from citybrain.cli import main
from citybrain.cloud.api import serve_api
from citybrain.cloud.auth import TokenFile
from citybrain.cloud.operations import ServiceUnavailable
from citybrain.models.messages import CorridorState, CorridorStatus
from tests.cloud.test_api import FakeOperations, Tokens


class WatchedOperations(FakeOperations):
    """Each read of a watched corridor moves its vehicle one stop line on, as time would; the
    reads numbered in ``outages`` (from 1) find the service unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: set[str] = set()
        self.outages: set[int] = set()
        self.reads = 0

    async def corridor(self, corridor_id: str) -> CorridorStatus:
        if corridor_id in self.watched:
            self.reads += 1
            if self.reads in self.outages:
                raise ServiceUnavailable("broker reconnecting")
            if self.statuses[corridor_id].state is not CorridorState.COMPLETED:
                self.advance(corridor_id)
        return await super().corridor(corridor_id)


class Served:
    """The API over ``ops`` on a free loopback port, on a loop in a thread of its own."""

    def __init__(self, ops: FakeOperations, directory: Path) -> None:
        self.ops = ops
        self.tokens = Tokens.make(directory)
        self.token_file = directory / "op.token"
        self.token_file.write_text(self.tokens.op + "\n")
        self.token_file.chmod(0o600)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        serving = serve_api(ops, "127.0.0.1", 0, tokens=TokenFile(self.tokens.path))
        started = asyncio.run_coroutine_threadsafe(serving, self.loop)
        self.runner: web.AppRunner = started.result(5)
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.delenv("CITYBRAIN_TOKEN", raising=False)
    server = Served(WatchedOperations(), tmp_path)
    try:
        yield server
    finally:
        server.stop()


def corridor(served: Served, *args: str) -> int:
    return main(["corridor", *args, "--api", served.url, "--token-file", str(served.token_file)])


def output(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


AMB7 = ("--vehicle", "AMB-7", "--from", "A", "--to", "D", "--incident", "medical")


def test_request_prints_the_corridor_and_its_stop_lines(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert corridor(served, "request", *AMB7, "--priority", "8") == 0
    out, err = output(capsys)
    assert out[0].startswith("C1-AMB-7  vehicle AMB-7  granted  priority 8  route A > D")
    assert "intersection" in out[1]
    assert "window" in out[1]
    assert out[2].split() == ["A", "120.0", "112.0-124.0", "-", "no"]
    assert len(out) == 4
    assert err == ""
    request = served.ops.requests[0]
    assert (request.requester, request.requested_at) == ("op", served.ops.now)
    assert request.incident == "medical"


def test_request_with_a_fixed_route_and_json_output(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--vehicle", "AMB-7", "--from", "A", "--route", "A", "B", "C", "--json",
            "--incident", "fire")  # fmt: skip
    assert corridor(served, "request", *args) == 0
    out, _ = output(capsys)
    body = json.loads(out[0])
    assert body["route"] == ["A", "B", "C"]
    assert served.ops.requests[0].destination is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--priority", "11"), "invalid $.priority: must be <= 10"),
        (("--priority", "0"), "invalid $.priority: must be >= 1"),
        (("--vehicle", "AMB 7"), "invalid $.vehicle"),
        (("--to", "Q"), "unknown_intersection: unknown intersection 'Q'"),
        (("--to", "Z"), "unreachable $.destination: no route"),
    ],
)
def test_a_refused_request_is_one_line_on_stderr_and_exit_2(
    served: Served, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], words: str
) -> None:
    assert corridor(served, "request", *AMB7, *args) == 2
    out, err = output(capsys)
    assert out == []
    assert err.count("\n") == 1
    assert err.startswith("citybrain: ")
    assert words in err


def test_a_duplicate_request_exits_2(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert corridor(served, "request", *AMB7) == 0
    assert corridor(served, "request", *AMB7) == 2
    _, err = output(capsys)
    assert "duplicate: AMB-7 already has corridor C1-AMB-7" in err


def test_list_all_and_active(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert corridor(served, "list") == 0
    assert output(capsys)[0] == ["no corridors"]
    for vehicle in ("AMB-1", "AMB-2"):
        args = ("--vehicle", vehicle, "--from", "A", "--to", "C", "--incident", "medical")
        assert corridor(served, "request", *args) == 0
    assert corridor(served, "cancel", "C1-AMB-1") == 0
    output(capsys)
    assert corridor(served, "list") == 0
    out, _ = output(capsys)
    assert [line.split()[0] for line in out] == ["C1-AMB-1", "C2-AMB-2"]
    assert corridor(served, "list", "--active") == 0
    out, _ = output(capsys)
    assert [line.split()[0] for line in out] == ["C2-AMB-2"]
    assert corridor(served, "list", "--active", "--json") == 0
    out, _ = output(capsys)
    assert [c["vehicle"] for c in json.loads(out[0])["corridors"]] == ["AMB-2"]


def test_show_a_corridor_or_exit_2_for_an_unknown_or_malformed_id(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    corridor(served, "request", *AMB7)
    output(capsys)
    assert corridor(served, "show", "C1-AMB-7") == 0
    out, _ = output(capsys)
    assert out[0].startswith("C1-AMB-7")
    assert [line.split()[0] for line in out[2:]] == ["A", "D"]
    assert corridor(served, "show", "C9-NONE") == 2
    assert "not_found: unknown corridor 'C9-NONE'" in output(capsys)[1]
    assert corridor(served, "show", "a/b") == 2
    assert "invalid corridor_id: 'a/b' is not a valid id" in output(capsys)[1]


def test_cancel_with_a_reason(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    corridor(served, "request", *AMB7)
    output(capsys)
    assert corridor(served, "cancel", "C1-AMB-7", "--reason", "false alarm") == 0
    out, _ = output(capsys)
    assert out == [out[0]]
    assert "cancelled (false alarm)" in out[0]
    assert corridor(served, "cancel", "C1-AMB-7") == 2, "already cancelled"
    assert "conflict" in output(capsys)[1]


def test_watch_follows_the_vehicle_until_completed(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(served.ops, WatchedOperations)
    corridor(served, "request", *AMB7)
    output(capsys)
    served.ops.watched.add("C1-AMB-7")
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01") == 0
    out, err = output(capsys)
    assert err == ""
    assert "active" in out[0]
    assert out[2].split() == ["A", "120.0", "112.0-124.0", "121.0", "yes"], "first poll: A passed"
    assert out[3].split() == ["D", "140.0", "132.0-144.0", "-", "no"]
    assert out[4].split() == ["140.0", "D", "140.0", "132.0-144.0", "141.0", "yes"]
    assert out[5].split() == ["160.0", "active", "->", "completed"]
    assert len(out) == 6


def test_watch_waits_out_a_short_outage(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert isinstance(served.ops, WatchedOperations)
    corridor(served, "request", *AMB7)
    output(capsys)
    served.ops.watched.add("C1-AMB-7")
    served.ops.outages = {2, 3}
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01") == 0
    out, err = output(capsys)
    assert err.count("\n") == 1
    assert "broker reconnecting; retrying" in err
    assert out[-1].split()[1:] == ["active", "->", "completed"]


def test_watch_gives_up_after_a_long_outage(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(served.ops, WatchedOperations)
    monkeypatch.setattr(corridor_cli, "WATCH_PATIENCE_S", 0.0)
    corridor(served, "request", *AMB7)
    served.ops.watched.add("C1-AMB-7")
    served.ops.outages = set(range(2, 100))
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01") == 3
    assert served.ops.reads == 3
    assert "unavailable: broker reconnecting" in output(capsys)[1]


def test_watch_exits_3_at_once_when_the_first_read_fails(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(served.ops, WatchedOperations)
    corridor(served, "request", *AMB7)
    served.ops.watched.add("C1-AMB-7")
    served.ops.outages = {1}
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01") == 3
    assert served.ops.reads == 1


def test_watch_json_prints_one_status_per_change(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(served.ops, WatchedOperations)
    corridor(served, "request", *AMB7)
    output(capsys)
    served.ops.watched.add("C1-AMB-7")
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01", "--json") == 0
    states = [json.loads(line)["state"] for line in output(capsys)[0]]
    assert states == ["active", "active", "completed"]


def test_watch_exits_1_when_the_corridor_ends_otherwise(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    corridor(served, "request", *AMB7)
    corridor(served, "cancel", "C1-AMB-7", "--reason", "patient transferred")
    output(capsys)
    assert corridor(served, "watch", "C1-AMB-7", "--interval", "0.01") == 1
    out, _ = output(capsys)
    assert "cancelled (patient transferred)" in out[0]


def test_an_unavailable_service_exits_3(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.ops.unavailable = True
    assert corridor(served, "list") == 3
    _, err = output(capsys)
    assert "unavailable: starting: waiting for the broker" in err


def test_an_unreachable_api_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Served(FakeOperations(), tmp_path)
    url = server.url
    server.stop()
    monkeypatch.setenv("CITYBRAIN_TOKEN", server.tokens.op)
    assert main(["corridor", "list", "--api", url]) == 3
    _, err = output(capsys)
    assert err.startswith(f"citybrain: cannot reach the API at {url}")
    assert err.count("\n") == 1


def test_the_api_address_and_token_come_from_the_environment(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYBRAIN_API", served.url)
    monkeypatch.setenv("CITYBRAIN_TOKEN", served.tokens.viewer)
    assert main(["corridor", "list"]) == 0
    assert output(capsys)[0] == ["no corridors"]
    assert main(["corridor", "request", *AMB7]) == 2
    assert "forbidden: viewer is a viewer" in output(capsys)[1]


@pytest.mark.security
def test_without_a_good_token_nothing_is_asked_and_the_cli_says_why(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = ["corridor", "list", "--api", served.url]
    assert main(listing) == 2
    assert "the API needs your token: no --token-file and no $CITYBRAIN_TOKEN" in output(capsys)[1]
    monkeypatch.setenv("CITYBRAIN_TOKEN", "cbt_guessed")
    assert main(listing) == 2
    assert "unauthorized: unknown or revoked token" in output(capsys)[1]
    served.token_file.chmod(0o644)
    assert corridor(served, "list") == 2
    assert "chmod 600" in output(capsys)[1]
    served.token_file.write_text("\n")
    served.token_file.chmod(0o600)
    assert corridor(served, "list") == 2
    assert f"{served.token_file} is empty" in output(capsys)[1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("list", "--api", "ftp://x"), "--api: expected an http:// or https:// address"),
        (("list", "--api", "127.0.0.1:8080"), "--api"),
        (("list", "--timeout", "0"), "timeout: must be > 0.0"),
        (("watch", "C1", "--interval", "-1"), "interval: must be > 0.0"),
    ],
)
def test_bad_options_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    words: str,
) -> None:
    monkeypatch.setenv("CITYBRAIN_TOKEN", "cbt_token")
    assert main(["corridor", *args]) == 2
    assert words in output(capsys)[1]
