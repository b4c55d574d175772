"""Edge settings: every rule refuses with a message naming the source, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from citybrain.edge.settings import (
    DEFAULT_STATE_DIR,
    EdgeSettings,
    SettingsError,
    describe,
    load_settings,
)
from citybrain.models.errors import CitybrainError, ValidationError
from citybrain.signal_plans.validator import SafetyLimits

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "deploy" / "edge.example.toml"
MINIMAL = 'region = "r1"\nintersections = ["x1", "x2"]\n'
INTERSECTIONS = {"CITYBRAIN_EDGE__INTERSECTIONS": "x0101,x0102"}


def write(tmp_path: Path, text: str, *, mode: int = 0o640, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def secret_file(tmp_path: Path, name: str, text: str = "s3cret\n", mode: int = 0o600) -> Path:
    return write(tmp_path, text, mode=mode, name=name)


def refused(path: Path | None, environ: dict[str, str] | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ or {})
    return caught.value


def assert_names(error: SettingsError, source: str, key: str, reason: str) -> None:
    text = str(error)
    assert error.source == source, text
    assert error.field == key, text
    assert reason in error.reason, text
    assert text == f"{source}: {key}: {error.reason}"


# --- what is accepted --------------------------------------------------------------------------


def test_a_file_with_only_region_and_intersections_is_valid_with_safe_defaults(
    tmp_path: Path,
) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert settings.region == "r1"
    assert settings.intersections == ("x1", "x2")
    assert settings.broker.host == "localhost"
    assert settings.broker.port == 1883
    assert not settings.broker.tls
    assert not settings.broker.tls_insecure
    assert settings.broker.keepalive_s == 60
    assert settings.broker.client_id("x1") == "cb-r1-x1"
    assert settings.controller.driver == "fieldbus"
    assert settings.controller.poll_hz == 10.0
    assert settings.telemetry.period_s == 1.0
    assert settings.telemetry.qos == 1
    assert settings.buffer.path == DEFAULT_STATE_DIR
    assert settings.buffer.max_messages == 86_400
    assert settings.safety.failsafe_after_s == 30.0
    assert settings.safety.limits() == SafetyLimits()
    assert settings.log.format == "text"
    assert settings.from_environment == frozenset()


def test_the_example_file_loads() -> None:
    settings = load_settings(EXAMPLE, {})
    assert settings.source == EXAMPLE
    assert settings.region == "hz-xihu"
    assert settings.intersections == ("x0101", "x0102")
    assert settings.broker.client_id("x0101") == "cb-hz-xihu-x0101"
    # Its commented defaults are the real ones.
    defaults = load_settings(None, {"CITYBRAIN_EDGE__REGION": "hz-xihu"} | INTERSECTIONS)
    for section in ("broker", "controller", "telemetry", "buffer", "trust", "safety", "log"):
        assert getattr(settings, section) == getattr(defaults, section), section


def test_all_intersections(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'region = "r1"\nintersections = "all"\n'), {})
    assert settings.intersections == "all"
    assert settings.hosted(["b", "a"]) == ("a", "b")
    assert "intersections = all (every intersection" in describe(settings)


def test_hosted_refuses_intersections_the_controller_does_not_report(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert settings.hosted(["x2", "x1", "x3"]) == ("x1", "x2")
    with pytest.raises(SettingsError, match="intersections: not reported by the controller"):
        settings.hosted(["x1"])


def test_every_setting_can_be_written_in_the_file(tmp_path: Path) -> None:
    secret_file(tmp_path, "ca.pem", mode=0o644)
    secret_file(tmp_path, "client.pem", mode=0o644)
    secret_file(tmp_path, "client.key")
    secret_file(tmp_path, "broker.pass", "hunter2\n")
    path = write(
        tmp_path,
        MINIMAL
        + """
[broker]
host = "mqtt.example.org"
tls = true
ca_file = "ca.pem"
cert_file = "client.pem"
key_file = "client.key"
username = "edge"
password_file = "broker.pass"
keepalive_s = 30
client_id_prefix = "hz"
reconnect_min_s = 0.5
reconnect_max_s = 30
[controller]
driver = "fake"
host = "10.1.2.3"
port = 5000
timeout_s = 1
poll_hz = 20
[telemetry]
period_s = 0.5
qos = 1
[buffer]
path = "buffer"
max_messages = 3600
max_bytes = 10_000_000
[safety]
max_lease_s = 200
max_window_s = 100
max_plan_age_s = 20
max_clock_skew_s = 1
failsafe_after_s = 15
[log]
level = "debug"
format = "json"
""",
    )
    settings = load_settings(path, {})
    assert settings.broker.port == 8883  # the TLS default
    assert settings.broker.ca_file == tmp_path / "ca.pem"  # relative to the file
    assert settings.broker.secret() == "hunter2"
    assert settings.broker.client_id("x2") == "hz-x2"
    assert settings.broker.reconnect_max_s == 30.0
    assert isinstance(settings.broker.reconnect_max_s, float)
    assert settings.controller.driver == "fake"
    assert settings.controller.poll_hz == 20.0
    assert settings.buffer.path == tmp_path / "buffer"
    assert settings.safety.limits() == SafetyLimits(
        max_lease_s=200, max_window_s=100, max_plan_age_s=20, max_clock_skew_s=1
    )
    assert settings.log.level == "debug"


def test_a_relative_config_path_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL + '[buffer]\npath = "buf"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(Path("edge.toml"), {}).buffer.path == tmp_path / "buf"


def test_the_buffer_defaults_to_systemds_state_directory(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, MINIMAL), {"STATE_DIRECTORY": "/var/lib/citybrain-edge-2:/other"}
    )
    assert settings.buffer.path == Path("/var/lib/citybrain-edge-2")


# --- environment overrides ---------------------------------------------------------------------


def test_environment_overrides_are_typed_and_marked(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, MINIMAL + "[broker]\nport = 1883\n"),
        {
            "CITYBRAIN_EDGE__BROKER__PORT": "1884",
            "CITYBRAIN_EDGE__BROKER__TLS": "no",
            "CITYBRAIN_EDGE__TELEMETRY__PERIOD_S": "2.5",
            "CITYBRAIN_EDGE__LOG__FORMAT": "json",
            "CITYBRAIN_EDGE__INTERSECTIONS": "a, b,c",
            "CITYBRAIN_EDGE__REGION": "r9",
            "CITYBRAIN_EDGE_NOT_OURS": "ignored",
            "PATH": "/usr/bin",
        },
    )
    assert settings.broker.port == 1884
    assert settings.broker.tls is False
    assert settings.telemetry.period_s == 2.5
    assert settings.log.format == "json"
    assert settings.intersections == ("a", "b", "c")
    assert settings.region == "r9"
    assert settings.broker.client_id("a") == "cb-r9-a"
    assert settings.from_environment == {
        "broker.port",
        "broker.tls",
        "telemetry.period_s",
        "log.format",
        "intersections",
        "region",
    }
    text = describe(settings)
    assert "port = 1884  (from CITYBRAIN_EDGE__BROKER__PORT)" in text
    assert "region = r9  (from CITYBRAIN_EDGE__REGION)" in text


@pytest.mark.parametrize(
    ("word", "expected"),
    [("true", True), ("1", True), ("YES", True), ("on", True), ("false", False), ("off", False)],
)
def test_environment_booleans(tmp_path: Path, word: str, expected: bool) -> None:
    ca = secret_file(tmp_path, "ca.pem", mode=0o644)
    settings = load_settings(
        write(tmp_path, MINIMAL),
        {"CITYBRAIN_EDGE__BROKER__TLS": word, "CITYBRAIN_EDGE__BROKER__CA_FILE": str(ca)}
        if expected
        else {"CITYBRAIN_EDGE__BROKER__TLS": word},
    )
    assert settings.broker.tls is expected


def test_an_empty_environment_value_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[broker]\nusername = "edge"\n')
    assert load_settings(path, {}).broker.username == "edge"
    settings = load_settings(path, {"CITYBRAIN_EDGE__BROKER__USERNAME": ""})
    assert settings.broker.username is None


def test_the_environment_alone_is_enough() -> None:
    settings = load_settings(
        None, {"CITYBRAIN_EDGE__REGION": "r1", "CITYBRAIN_EDGE__INTERSECTIONS": "all"}
    )
    assert settings.intersections == "all"
    assert settings.source is None


@pytest.mark.parametrize(
    ("name", "value", "key", "reason"),
    [
        ("CITYBRAIN_EDGE__BROKER__PORT", "18x3", "broker.port", "expected an integer, got '18x3'"),
        ("CITYBRAIN_EDGE__BROKER__TLS", "maybe", "broker.tls", "expected true or false"),
        ("CITYBRAIN_EDGE__TELEMETRY__PERIOD_S", "fast", "telemetry.period_s", "expected a number"),
        ("CITYBRAIN_EDGE__TELEMETRY__QOS", "0", "telemetry.qos", "must be one of 1, got 0"),
        ("CITYBRAIN_EDGE__BROKER__PROT", "1", "broker.prot", "did you mean 'port'?"),
        ("CITYBRAIN_EDGE__BROKR__PORT", "1", "brokr.port", "did you mean 'broker'?"),
        ("CITYBRAIN_EDGE__BROKER", "x", "broker", "names a section"),
        ("CITYBRAIN_EDGE__A__B__C", "x", "a.b.c", "SECTION__KEY"),
        ("CITYBRAIN_EDGE__BROKER__PORT", "0", "broker.port", "must be >= 1"),
        ("CITYBRAIN_EDGE__INTERSECTIONS", "a,,b", "intersections[1]", "not a valid id"),
        ("CITYBRAIN_EDGE__REGION", "a/b", "region", "not a valid id"),
    ],
)
def test_environment_errors_name_the_variable(
    tmp_path: Path, name: str, value: str, key: str, reason: str
) -> None:
    error = refused(write(tmp_path, MINIMAL), {name: value})
    assert_names(error, f"environment {name}", key, reason)


# --- file errors -------------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert_names(refused(path), str(path), "(file)", "not found")


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'region = "r1"\nintersections = [\n[broker]\n')
    assert_names(refused(path), str(path), "(syntax)", "line 3")


def test_a_world_writable_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, mode=0o666)
    assert_names(refused(path), str(path), "(file)", "writable by every user")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("regoin = 'r1'\n", "regoin", "unknown key 'regoin'; did you mean 'region'?"),
        ("[brokr]\nport = 1\n", "brokr", "did you mean 'broker'?"),
        ("[broker]\nprot = 1\n", "broker.prot", "unknown key 'prot'; did you mean 'port'?"),
        ("[telemetry]\nzzz = 1\n", "telemetry.zzz", "known: period_s, qos"),
        ("broker = 5\n", "broker", "expected a table [broker]"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, MINIMAL + text)
    assert_names(refused(path), str(path), key, reason)


@pytest.mark.parametrize(
    ("text", "key"), [('intersections = ["a"]\n', "region"), ('region = "r1"\n', "intersections")]
)
def test_region_and_intersections_are_required(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    assert_names(refused(path), str(path), key, "is required")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("region = 5\nintersections = ['a']\n", "region", "expected a string, got an integer 5"),
        ("region = 'r/1'\nintersections = ['a']\n", "region", "not a valid id"),
        ("region = 'r1'\nintersections = 'some'\n", "intersections", 'or "all"'),
        ("region = 'r1'\nintersections = [1, 2]\n", "intersections", 'or "all"'),
        ("region = 'r1'\nintersections = []\n", "intersections", "non-empty"),
        ("region = 'r1'\nintersections = ['a', 'a']\n", "intersections", "duplicate id 'a'"),
        ("region = 'r1'\nintersections = ['a', 'b c']\n", "intersections[1]", "not a valid id"),
    ],
)
def test_region_and_intersections_rules(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    assert_names(refused(path), str(path), key, reason)


@pytest.mark.parametrize(
    ("section", "line", "key", "reason"),
    [
        ("broker", "port = '1883'", "broker.port", "expected an integer, got a string '1883'"),
        ("broker", "port = 1883.0", "broker.port", "expected an integer, got a number"),
        ("broker", "port = 0", "broker.port", "must be >= 1, got 0"),
        ("broker", "port = 65536", "broker.port", "must be <= 65535"),
        ("broker", "tls = 'yes'", "broker.tls", "expected true or false, got a string"),
        ("broker", "host = ''", "broker.host", "not a host name"),
        ("broker", "host = 'a b'", "broker.host", "not a host name"),
        ("broker", "keepalive_s = 4", "broker.keepalive_s", "must be >= 5"),
        ("broker", "keepalive_s = 601", "broker.keepalive_s", "must be <= 600"),
        ("broker", "client_id_prefix = 'a/b'", "broker.client_id_prefix", "not a valid id"),
        ("broker", "reconnect_min_s = 0.05", "broker.reconnect_min_s", "must be >= 0.1"),
        ("broker", "reconnect_max_s = 0.5", "broker.reconnect_max_s", "must be >= 1.0"),
        ("broker", "reconnect_max_s = 601", "broker.reconnect_max_s", "must be <= 600"),
        ("broker", "ca_file = 'ca.pem'", "broker.ca_file", "only used with tls = true"),
        ("broker", "tls_insecure = true", "broker.tls_insecure", "only used with tls = true"),
        ("broker", "password = 'x'", "broker.username", "required with a password"),
        ("controller", "driver = 'serial'", "controller.driver", "one of 'fieldbus', 'fake'"),
        ("controller", "port = 70000", "controller.port", "must be <= 65535"),
        ("controller", "timeout_s = 0", "controller.timeout_s", "must be >= 0.1"),
        ("controller", "timeout_s = 31", "controller.timeout_s", "must be <= 30"),
        ("controller", "poll_hz = 0.5", "controller.poll_hz", "must be >= 1.0"),
        ("controller", "poll_hz = 51", "controller.poll_hz", "must be <= 50"),
        ("controller", "poll_hz = nan", "controller.poll_hz", "finite"),
        ("telemetry", "period_s = 0.05", "telemetry.period_s", "must be >= 0.1"),
        ("telemetry", "period_s = 61", "telemetry.period_s", "must be <= 60"),
        ("telemetry", "qos = 0", "telemetry.qos", "must be one of 1"),
        ("telemetry", "qos = true", "telemetry.qos", "must be one of 1"),
        ("buffer", "max_messages = 9", "buffer.max_messages", "must be >= 10"),
        ("buffer", "max_messages = 10_000_001", "buffer.max_messages", "must be <= 10000000"),
        ("buffer", "max_bytes = 1000", "buffer.max_bytes", "must be >= 1048576"),
        ("buffer", "path = ''", "buffer.path", "expected a path"),
        ("safety", "max_lease_s = 901", "safety.max_lease_s", "must be <= 900"),
        ("safety", "max_lease_s = 60", "safety.max_window_s", "exceeds max_lease_s (60.0)"),
        ("safety", "max_window_s = 0", "safety.max_window_s", "must be > 0.0"),
        ("safety", "max_plan_age_s = 0", "safety.max_plan_age_s", "must be > 0.0"),
        ("safety", "max_clock_skew_s = 11", "safety.max_clock_skew_s", "must be <= 10"),
        ("safety", "failsafe_after_s = 4", "safety.failsafe_after_s", "must be >= 5"),
        ("safety", "failsafe_after_s = 301", "safety.failsafe_after_s", "must be <= 300"),
        ("log", "level = 'trace'", "log.level", "must be one of 'debug', 'info'"),
        ("log", "format = 'xml'", "log.format", "must be one of 'json', 'text', got 'xml'"),
    ],
)
def test_value_rules(tmp_path: Path, section: str, line: str, key: str, reason: str) -> None:
    path = write(tmp_path, f"{MINIMAL}[{section}]\n{line}\n")
    assert_names(refused(path), str(path), key, reason)


def test_failsafe_must_not_outlast_a_lease(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + "[safety]\nmax_lease_s = 40\nmax_window_s = 40\nfailsafe_after_s = 41\n",
    )
    assert_names(refused(path), str(path), "safety.failsafe_after_s", "must not exceed")


def test_telemetry_cannot_be_faster_than_the_controller_poll(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[controller]\npoll_hz = 2\n[telemetry]\nperiod_s = 0.4\n")
    assert_names(refused(path), str(path), "telemetry.period_s", "shorter than one controller poll")


def test_a_buffer_path_that_is_a_file(tmp_path: Path) -> None:
    write(tmp_path, "", name="occupied")
    path = write(tmp_path, MINIMAL + "[buffer]\npath = 'occupied'\n")
    assert_names(refused(path), str(path), "buffer.path", "is not a directory")


# --- TLS and credentials -----------------------------------------------------------------------


def tls_file(tmp_path: Path, lines: str) -> Path:
    return write(tmp_path, f"{MINIMAL}[broker]\nhost = 'mqtt.example.org'\ntls = true\n{lines}\n")


def test_tls_insecure_needs_the_explicit_switch(tmp_path: Path) -> None:
    path = tls_file(tmp_path, "tls_insecure = true")
    assert_names(refused(path), str(path), "broker.tls_insecure", "allow_insecure = true")
    path = tls_file(tmp_path, "tls_insecure = true\nallow_insecure = true")
    assert load_settings(path, {}).broker.tls_insecure


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file", "password_file"])
def test_files_must_exist(tmp_path: Path, key: str) -> None:
    extra = "cert_file = 'c.pem'\n" if key == "key_file" else ""
    extra += "username = 'u'\n" if key == "password_file" else ""
    secret_file(tmp_path, "c.pem", mode=0o644)
    path = tls_file(tmp_path, f"{extra}{key} = 'missing.pem'")
    assert_names(refused(path), str(path), f"broker.{key}", "No such file")


def test_a_file_must_be_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "dir.pem").mkdir()
    path = tls_file(tmp_path, "ca_file = 'dir.pem'")
    assert_names(refused(path), str(path), "broker.ca_file", "not a regular file")


def test_a_world_writable_ca_file_is_refused(tmp_path: Path) -> None:
    secret_file(tmp_path, "ca.pem", mode=0o646)
    path = tls_file(tmp_path, "ca_file = 'ca.pem'")
    assert_names(refused(path), str(path), "broker.ca_file", "writable by every user")


@pytest.mark.parametrize("key", ["key_file", "password_file"])
def test_a_world_readable_secret_is_refused(tmp_path: Path, key: str) -> None:
    secret_file(tmp_path, "c.pem", mode=0o644)
    secret_file(tmp_path, "secret", mode=0o644)
    path = tls_file(tmp_path, f"cert_file = 'c.pem'\nusername = 'u'\n{key} = 'secret'")
    assert_names(refused(path), str(path), f"broker.{key}", "readable by every user")


def test_a_key_needs_its_certificate(tmp_path: Path) -> None:
    secret_file(tmp_path, "k.pem")
    path = tls_file(tmp_path, "key_file = 'k.pem'")
    assert_names(refused(path), str(path), "broker.key_file", "needs cert_file")


def test_password_and_password_file_exclude_each_other(tmp_path: Path) -> None:
    secret_file(tmp_path, "p")
    path = tls_file(tmp_path, "username = 'u'\npassword = 'x'\npassword_file = 'p'")
    path.chmod(0o600)
    assert_names(refused(path), str(path), "broker.password", "not both")


def test_an_empty_password_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[broker]\nusername = 'u'\npassword = ''\n", mode=0o600)
    assert_names(refused(path), str(path), "broker.password", "is empty")
    # An empty environment variable unsets it instead.
    settings = load_settings(path, {"CITYBRAIN_EDGE__BROKER__PASSWORD": ""})
    assert settings.broker.secret() is None


def test_an_empty_password_file_is_refused_when_read(tmp_path: Path) -> None:
    secret_file(tmp_path, "p", text="\n")
    settings = load_settings(tls_file(tmp_path, "username = 'u'\npassword_file = 'p'"), {})
    with pytest.raises(ValidationError, match=r"password_file: .* is empty"):
        settings.broker.secret()


def test_a_password_is_not_sent_in_clear_text_over_the_network(tmp_path: Path) -> None:
    text = f"{MINIMAL}[broker]\nhost = '10.0.0.5'\nusername = 'u'\npassword = 'x'\n"
    path = write(tmp_path, text, mode=0o600)
    assert_names(refused(path), str(path), "broker.password", "in clear text")
    assert load_settings(write(tmp_path, text + "allow_insecure = true\n", mode=0o600), {})
    for host in ("localhost", "127.0.0.1", "::1"):
        local = text.replace("10.0.0.5", host)
        assert load_settings(write(tmp_path, local, mode=0o600), {}).broker.host == host


def test_an_inline_password_needs_a_private_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"{MINIMAL}[broker]\nusername = 'u'\npassword = 'x'\n", mode=0o644)
    assert_names(refused(path), str(path), "broker.password", "every user can read")


# --- the summary and the error type ------------------------------------------------------------


def test_describe_masks_secrets_and_lists_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"{MINIMAL}[broker]\nusername = 'u'\npassword = 'hunter2'\n", mode=0o600)
    settings = load_settings(path, {})
    text = describe(settings)
    assert "hunter2" not in text
    assert "hunter2" not in repr(settings)
    assert "password = ********" in text
    assert "password_file = -" in text
    assert f"config file: {path}" in text
    assert "intersections = x1, x2 (2)" in text
    assert "mqtt client ids: cb-r1-<intersection>" in text
    for section in ("broker", "controller", "telemetry", "buffer", "trust", "safety", "log"):
        assert f"[{section}]" in text
    assert "failsafe_after_s = 30.0" in text


def test_settings_error_is_a_validation_error() -> None:
    error = SettingsError("edge.toml", "broker.port", "must be >= 1")
    assert isinstance(error, ValidationError)
    assert isinstance(error, CitybrainError)
    assert str(error) == "edge.toml: broker.port: must be >= 1"


def test_settings_built_in_code_follow_the_same_rules() -> None:
    with pytest.raises(ValidationError, match="intersections: duplicate id 'a'"):
        EdgeSettings(region="r1", intersections=("a", "a"))
    assert EdgeSettings(region="r1", intersections="all").broker.port == 1883
