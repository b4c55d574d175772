"""Cloud settings: every rule refuses with a line naming the source, the key and the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from citybrain.cloud.core import CoreSettings
from citybrain.cloud.service import Role, ServiceSettings
from citybrain.cloud.settings import (
    CloudSettings,
    InvalidSettingsError,
    describe,
    load_settings,
    mask_dsn,
)
from citybrain.models.errors import CitybrainError
from citybrain.models.settings import MASK, SettingsError

EXAMPLE = Path(__file__).resolve().parents[2] / "cloud" / "deploy" / "cloud.example.toml"
BROKER = '[broker]\nusername = "cloud-leader"\n'
LEADER = '[signing]\nkeys = "keys"\n[api]\ntoken_file = "tokens.json"\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """What ``security init`` puts in ``cloud/``: the files the example names."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "tokens.json").write_text('{"v": 1, "users": []}\n')
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    secret(tmp_path / "leader.pass")
    return tmp_path


def secret(path: Path, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def write(folder: Path, text: str, *, mode: int = 0o640, name: str = "cloud.toml") -> Path:
    return secret(folder / name, text, mode)


def problems(
    path: Path | None,
    environ: dict[str, str] | None = None,
    flags: dict[str, tuple[str, object]] | None = None,
) -> list[SettingsError]:
    with pytest.raises(InvalidSettingsError) as caught:
        load_settings(path, environ or {}, flags)
    for problem in caught.value.problems:
        assert str(problem) == f"{problem.source}: {problem.field}: {problem.reason}"
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]
    return list(caught.value.problems)


def refused(path: Path | None, environ: dict[str, str] | None = None) -> SettingsError:
    found = problems(path, environ)
    assert len(found) == 1, found
    return found[0]


def assert_names(error: SettingsError, source: str, key: str, reason: str) -> None:
    assert (error.source, error.field) == (source, key), str(error)
    assert reason in error.reason, str(error)


# --- what is accepted --------------------------------------------------------------------------


def test_the_example_is_valid_and_sets_up_a_leader_over_tls(folder: Path) -> None:
    path = folder / "cloud.toml"
    shutil.copy(EXAMPLE, path)
    settings = load_settings(path, {})
    assert settings.role == "leader"
    assert settings.broker.tls
    assert settings.broker.port == 8883
    assert settings.broker.password_file == folder / "leader.pass"
    assert settings.signing.keys == folder / "keys"
    assert settings.api.token_file == folder / "tokens.json"
    service = settings.service()
    assert isinstance(service, ServiceSettings)
    assert (service.broker_host, service.broker_port, service.role) == (
        "127.0.0.1",
        8883,
        Role.LEADER,
    )
    assert service.secret() == "s3cret"
    assert settings.corridor.core(epoch=7) == CoreSettings(
        corridor=CoreSettings().corridor.__class__(epoch=7)
    )


def test_an_ingest_worker_needs_no_keyring_nor_token_file(tmp_path: Path) -> None:
    text = 'role = "ingest"\n' + BROKER + 'share_group = "ingest"\nclient_id = "ingest-1"\n'
    settings = load_settings(write(tmp_path, text), {})
    service = settings.service()
    assert (service.role, service.share_group, service.client_id) == (
        Role.INGEST,
        "ingest",
        "ingest-1",
    )


def test_relative_paths_are_taken_from_the_file_s_folder_and_the_state_dir_from_systemd(
    folder: Path,
) -> None:
    settings = load_settings(
        write(folder, BROKER + LEADER), {"STATE_DIRECTORY": "/var/lib/citybrain-cloud"}
    )
    assert settings.signing.keys == folder / "keys"
    assert settings.signing.state_dir == Path("/var/lib/citybrain-cloud")


def test_the_flat_format_security_init_wrote_before_sections_is_read_as_them(folder: Path) -> None:
    text = "\n".join(
        [
            'network = "grid:2x2"',
            'region = "r1"',
            'role = "leader"',
            'client_id = "citybrain-cloud"',
            'broker = "mqtt.example.org:8883"',
            "tls = true",
            'ca_file = "ca.crt"',
            'username = "cloud-leader"',
            'password_file = "leader.pass"',
            'keys = "keys"',
            'tokens = "tokens.json"',
            'state_dir = "state"',
            'api = "10.0.0.7:9090"',
            'dsn = "postgresql://citybrain@db/citybrain"',
            "rate = 2",
            "",
        ]
    )
    settings = load_settings(write(folder, text), {})
    assert (settings.network, settings.region) == ("grid:2x2", "r1")
    assert (settings.broker.host, settings.broker.port) == ("mqtt.example.org", 8883)
    assert (settings.api.host, settings.api.port) == ("10.0.0.7", 9090)
    assert settings.api.token_file == folder / "tokens.json"
    assert settings.signing.state_dir == folder / "state"
    assert settings.database.dsn == "postgresql://citybrain@db/citybrain"
    assert settings.clock.rate == 2.0


def test_a_flat_key_and_the_same_key_in_its_table_are_refused(folder: Path) -> None:
    path = write(folder, 'username = "a"\n[broker]\nusername = "b"\n')
    assert_names(refused(path), str(path), "broker.username", "given twice")


# --- precedence --------------------------------------------------------------------------------


def test_the_environment_wins_over_the_file_and_flags_over_both(folder: Path) -> None:
    path = write(folder, BROKER + 'host = "file.example"\nport = 1000\n' + LEADER)
    environ = {
        "CITYBRAIN_CLOUD__BROKER__PORT": "2000",
        "CITYBRAIN_CLOUD__BROKER__HOST": "env.example",
        "CITYBRAIN_CLOUD__REGION": "r2",
        "CITYBRAIN_CLOUD__CORRIDOR__MARGIN_S": "5",
    }
    settings = load_settings(path, environ, {"broker.host": ("--broker", "flag.example")})
    assert settings.broker.host == "flag.example"
    assert settings.broker.port == 2000
    assert settings.region == "r2"
    assert settings.corridor.margin_s == 5.0
    text = describe(settings)
    assert "  host = flag.example  (from --broker)" in text
    assert "  port = 2000  (from CITYBRAIN_CLOUD__BROKER__PORT)" in text
    assert "region = r2  (from CITYBRAIN_CLOUD__REGION)" in text


def test_an_empty_variable_unsets_an_optional_key(folder: Path) -> None:
    path = write(folder, BROKER + LEADER + '[database]\ndsn = "postgresql://db/x"\n')
    settings = load_settings(path, {"CITYBRAIN_CLOUD__DATABASE__DSN": ""})
    assert settings.database.dsn is None


def test_the_older_password_variable_still_works_when_nothing_else_gives_one(
    folder: Path,
) -> None:
    path = write(folder, BROKER + LEADER)
    settings = load_settings(path, {"CITYBRAIN_MQTT_PASSWORD": "xyzzy-1"})
    assert settings.service().secret() == "xyzzy-1"
    assert f"  password = {MASK}  (from CITYBRAIN_MQTT_PASSWORD)" in describe(settings)
    assert "xyzzy" not in describe(settings)
    newer = {"CITYBRAIN_MQTT_PASSWORD": "xyzzy-1", "CITYBRAIN_CLOUD__BROKER__PASSWORD": "new"}
    assert load_settings(path, newer).service().secret() == "new"


# --- what is refused ---------------------------------------------------------------------------


def test_bad_toml_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker\nhost = 1\n")
    error = refused(path)
    assert_names(error, str(path), "(syntax)", "line 1")


def test_a_missing_or_world_writable_file_is_refused(tmp_path: Path) -> None:
    assert_names(
        refused(tmp_path / "nope.toml"), str(tmp_path / "nope.toml"), "(file)", "not found"
    )
    path = write(tmp_path, BROKER, mode=0o666)
    assert_names(refused(path), str(path), "(file)", "writable by every user")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("netwrok = 'grid:2x2'\n", "netwrok", "unknown key 'netwrok'; did you mean 'network'?"),
        ("[brokr]\nport = 1\n", "brokr", "did you mean 'broker'?"),
        ("[broker]\nprot = 1\n", "broker.prot", "unknown key 'prot'; did you mean 'port'?"),
        ("[clock]\nzzz = 1\n", "clock.zzz", "known: rate"),
        ("database = 5\n", "database", "expected a table [database]"),
        ("broker = 'nohostport'\n", "broker", "expected host:port"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    assert_names(refused(path), str(path), key, reason)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[broker]\nport = '1883'\n", "broker.port", "expected an integer, got a string '1883'"),
        ("[broker]\ntls = 'yes'\n", "broker.tls", "expected true or false"),
        ("[clock]\nrate = 'fast'\n", "clock.rate", "expected a number"),
        ("role = 'boss'\n", "role", "must be one of 'leader', 'ingest'"),
        ("[log]\nlevel = 'loud'\n", "log.level", "must be one of"),
        ("[signing]\nkeys = 5\n", "signing.keys", "expected a path"),
    ],
)
def test_wrong_types_are_named(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    found = [p for p in problems(path) if p.field == key]
    assert len(found) == 1
    assert_names(found[0], str(path), key, reason)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[broker]\nport = 70000\n", "broker.port", "must be <= 65535"),
        ("[api]\nport = -1\n", "api.port", "must be >= 0"),
        ("[clock]\nrate = 0\n", "clock.rate", "must be > 0.0"),
        ("[corridor]\nhorizon_s = 9999\n", "corridor.horizon_s", "must be <= 600.0"),
        ("[corridor]\nsend_attempts = 0\n", "corridor.send_attempts", "must be >= 1"),
        ("[corridor]\nhandover_s = 5\n", "corridor.handover_s", "must be >= 10.0"),
        ("[broker]\nreconnect_max_s = 0.1\n", "broker.reconnect_max_s", "must be >= 0.5"),
        ("region = 'r/1'\n", "region", "not a valid id"),
        ("[broker]\nclient_id = 'a b'\n", "broker.client_id", "not a valid id"),
    ],
)
def test_out_of_range_values_are_named(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    found = [p for p in problems(path) if p.field == key]
    assert len(found) == 1
    assert_names(found[0], str(path), key, reason)


def test_every_problem_is_reported_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nport = 0\n[clock]\nrate = -1\n")
    found = problems(
        path, {"CITYBRAIN_CLOUD__CORRIDOR__MARGIN_S": "lots"}, {"api.port": ("--api", 99999)}
    )
    assert [(p.source, p.field) for p in found] == [
        ("environment CITYBRAIN_CLOUD__CORRIDOR__MARGIN_S", "corridor.margin_s"),
        (str(path), "broker.port"),
        ("option --api", "api.port"),
        (str(path), "clock.rate"),
        (str(path), "signing.keys"),
    ]  # not api.token_file: the [api] section, refused, is not looked at further


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("CITYBRAIN_CLOUD__BROKR__PORT", "brokr.port"),
        ("CITYBRAIN_CLOUD__BROKER", "broker"),
        ("CITYBRAIN_CLOUD__BROKER__PROT", "broker.prot"),
    ],
)
def test_unknown_variables_are_errors(tmp_path: Path, name: str, key: str) -> None:
    found = [p for p in problems(write(tmp_path, BROKER), {name: "1"}) if p.field == key]
    assert len(found) == 1
    assert found[0].source == f"environment {name}"


# --- secure by default ------------------------------------------------------------------------


def test_the_defaults_refuse_an_anonymous_broker_session_and_a_leader_without_keys() -> None:
    found = {p.field: p for p in problems(None)}
    assert set(found) == {"broker.username", "signing.keys", "api.token_file"}
    assert "no anonymous client" in found["broker.username"].reason
    assert found["broker.username"].source == "(no config file)"


def test_an_anonymous_session_needs_allow_insecure_or_a_client_certificate(
    folder: Path,
) -> None:
    path = write(folder, "[broker]\nallow_insecure = true\n" + LEADER)
    assert load_settings(path, {}).broker.username is None
    secret(folder / "cloud.key")
    (folder / "cloud.crt").write_text("cert\n")
    text = '[broker]\ntls = true\ncert_file = "cloud.crt"\nkey_file = "cloud.key"\n' + LEADER
    settings = load_settings(write(folder, text), {})
    assert "as its client certificate" in describe(settings)


def test_a_password_in_clear_text_to_another_host_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BROKER + 'host = "mqtt.example.org"\n', mode=0o600)
    environ = {"CITYBRAIN_CLOUD__BROKER__PASSWORD": "pw"}
    found = [p for p in problems(path, environ) if p.field == "broker.password"]
    assert "in clear text" in found[0].reason
    assert found[0].source == "environment CITYBRAIN_CLOUD__BROKER__PASSWORD"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('password = "pw"', "broker.password"),
        ('[database]\ndsn = "postgresql://u:pw@db/x"', "database.dsn"),
        ("[database]\ndsn = \"host=db password='p w' dbname=x\"", "database.dsn"),
    ],
)
def test_a_secret_in_a_file_every_user_can_read_is_refused(
    folder: Path, line: str, key: str
) -> None:
    text = BROKER + line + "\n" + LEADER
    path = write(folder, text, mode=0o644)
    error = refused(path)
    assert_names(error, str(path), key, "every user can read; chmod o-r it")
    assert "CITYBRAIN_CLOUD__" in error.reason
    path.chmod(0o600)
    assert load_settings(path, {})


def test_a_password_file_or_key_others_can_read_is_refused(folder: Path) -> None:
    secret(folder / "leader.pass", mode=0o644)
    path = write(folder, BROKER + 'password_file = "leader.pass"\n' + LEADER)
    assert_names(refused(path), str(path), "broker.password_file", "readable by every user")


def test_check_config_output_masks_secrets_and_lists_every_key(folder: Path) -> None:
    path = write(folder, BROKER + 'password = "hunter2"\n' + LEADER, mode=0o600)
    environ = {"CITYBRAIN_CLOUD__DATABASE__DSN": "postgresql://cb:topsecret@db:5432/cb"}
    text = describe(load_settings(path, environ))
    assert "hunter2" not in text
    assert "topsecret" not in text
    assert f"  password = {MASK}" in text
    assert (
        f"  dsn = postgresql://cb:{MASK}@db:5432/cb  (from CITYBRAIN_CLOUD__DATABASE__DSN)" in text
    )
    for section in ("broker", "api", "signing", "database", "clock", "corridor", "log"):
        assert f"[{section}]" in text
    assert text.splitlines()[0] == f"config file: {path}"
    assert text.splitlines()[-1] == (
        "mqtt: 127.0.0.1:1883 (plain TCP) as cloud-leader, client id citybrain-cloud"
    )


def test_dsn_masking_leaves_a_dsn_without_password_alone() -> None:
    assert mask_dsn("postgresql://cb@db/x") == "postgresql://cb@db/x"
    assert mask_dsn("host=db password=p dbname=x") == f"host=db password={MASK} dbname=x"


def test_settings_built_in_code_are_held_to_the_same_rules(folder: Path) -> None:
    with pytest.raises(CitybrainError, match="no anonymous client"):
        CloudSettings()
    settings = load_settings(write(folder, BROKER + LEADER), {})
    assert settings.service().username == "cloud-leader"
