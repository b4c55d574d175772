"""``citybrain cloud check-config`` and ``serve``'s settings: the file, the environment, the
flags (each winning over the one before), one line per problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from citybrain.cli import _parser, main
from citybrain.cloud.settings import load_settings
from citybrain.cloud_cli import SERVE_DEFAULTS, flags

EXAMPLE = Path(__file__).resolve().parents[2] / "cloud" / "deploy" / "cloud.example.toml"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The example in a folder with the files it names, as ``security init`` writes them."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "tokens.json").write_text('{"v": 1, "users": []}\n')
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "leader.pass").write_text("s3cret\n")
    (tmp_path / "leader.pass").chmod(0o600)
    path = tmp_path / "cloud.toml"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o640)
    return path


def test_check_config_accepts_the_example_and_prints_the_effective_settings(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cloud", "check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config file: {config}\n")
    assert f"  password_file = {config.parent / 'leader.pass'}\n" in out
    assert "  token_file = " in out
    assert "s3cret" not in out
    assert out.endswith("mqtt: 127.0.0.1:8883 (TLS) as cloud-leader, client id citybrain-cloud\n")


def test_flags_win_over_the_environment_and_the_file(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYBRAIN_CLOUD__BROKER__HOST", "env.example")
    monkeypatch.setenv("CITYBRAIN_CLOUD__CLOCK__RATE", "4")
    monkeypatch.setenv("CITYBRAIN_CLOUD__DATABASE__DSN", "postgresql://cb:hidden@db/cb")
    command = ["cloud", "check-config", "--config", str(config), "--broker", "flag.example:1884"]
    assert main([*command, "--rate", "8", "--client-id", "c2", "--role", "ingest"]) == 0
    out = capsys.readouterr().out
    assert "  host = flag.example  (from --broker)\n" in out
    assert "  port = 1884  (from --broker)\n" in out
    assert "  client_id = c2  (from --client-id)\n" in out
    assert "  rate = 8.0  (from --rate)\n" in out
    assert "role = ingest  (from --role)\n" in out
    assert "  dsn = postgresql://cb:********@db/cb  (from CITYBRAIN_CLOUD__DATABASE__DSN)\n" in out
    assert "hidden" not in out


def test_bad_settings_are_one_line_each_and_exit_2(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text(config.read_text().replace("[clock]\nrate = 1.0", "[clock]\nrate = 0"))
    monkeypatch.setenv("CITYBRAIN_CLOUD__BROKER__PROT", "1")
    assert main(["cloud", "check-config", "--config", str(config), "--api", "nowhere"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "citybrain: bad settings: environment CITYBRAIN_CLOUD__BROKER__PROT: broker.prot: "
        "unknown key 'prot'; did you mean 'port'?",
        "citybrain: bad settings: option --api: api: expected host:port, got 'nowhere'",
        f"citybrain: bad settings: {config}: clock.rate: must be > 0.0, got 0.0",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[broker\n", "(syntax): "),
        ("[broker]\nhots = 'x'\n", "broker.hots: unknown key 'hots'; did you mean 'host'?"),
        ("[broker]\nport = 'x'\n", "broker.port: expected an integer, got a string 'x'"),
    ],
)
def test_serve_with_bad_settings_says_why_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(text)
    assert main(["cloud", "serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"citybrain: bad settings: {path}: {line}")


def test_without_a_file_the_defaults_refuse_an_anonymous_leader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["cloud", "serve", "--network", "arterial:2"]) == 2
    fields = [line.split(": ")[3] for line in capsys.readouterr().err.splitlines()]
    assert fields == ["broker.username", "signing.keys", "api.token_file"]


def test_every_serve_flag_still_sets_its_setting(tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["cloud", "serve", "--network", "grid:2x2", "--broker", "b.example:8883",
         "--username", "u", "--password-file", "p", "--tls", "--ca-file", "ca",
         "--cert-file", "c", "--key-file", "k", "--allow-insecure", "--region", "r1",
         "--role", "ingest", "--share-group", "g", "--client-id", "i1", "--dsn", "postgresql://",
         "--keys", "keys", "--state-dir", "state", "--api", "127.0.0.1:0", "--tokens", "t",
         "--rate", "2"]
    )  # fmt: skip
    given = {key: value for key, (_flag, value) in flags(args).items()}
    here = Path.cwd()
    assert given == {
        "broker": "b.example:8883", "api": "127.0.0.1:0", "network": "grid:2x2", "region": "r1",
        "role": "ingest", "broker.username": "u", "broker.password_file": str(here / "p"),
        "broker.tls": True, "broker.ca_file": str(here / "ca"),
        "broker.cert_file": str(here / "c"), "broker.key_file": str(here / "k"),
        "broker.client_id": "i1", "broker.share_group": "g", "database.dsn": "postgresql://",
        "signing.keys": str(here / "keys"), "signing.state_dir": str(here / "state"),
        "api.token_file": str(here / "t"), "clock.rate": 2.0, "broker.allow_insecure": True,
    }  # fmt: skip


def test_the_flags_defaults_are_the_settings_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text("[broker]\nallow_insecure = true\n")
    settings = load_settings(path, {}, {"role": ("--role", "ingest")})
    shown = {
        "network": settings.network, "region": settings.region, "role": "leader",
        "client_id": settings.broker.client_id, "rate": settings.clock.rate,
        "broker": f"{settings.broker.host}:{settings.broker.port}",
        "api": f"{settings.api.host}:{settings.api.port}", "tls": settings.broker.tls,
        "state_dir": settings.signing.state_dir.relative_to(Path.cwd()),
    }  # fmt: skip
    assert shown == SERVE_DEFAULTS
