"""The network file format: round trips, and malformed files refused with the reason."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from citybrain.models.errors import ValidationError
from citybrain.models.network import Turn
from citybrain.simulator import netfile
from citybrain.simulator.networks import RoadNetwork, arterial, grid


@pytest.mark.parametrize(
    "road",
    [grid(3, 4), grid(1, 1), arterial(3), arterial(2, length_m=901.25, seed=4)],
    ids=lambda road: str(road.name),
)
def test_save_and_load_round_trip(road: RoadNetwork, tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    netfile.save(road, path)
    back = netfile.load(path)
    assert back.name == road.name
    assert back.network == road.network
    assert dict(back.plans) == dict(road.plans)
    for node, plan in road.plans.items():
        loaded = back.plans[node]
        assert loaded.cycle_s == plan.cycle_s
        assert loaded.offset_s == plan.offset_s
        assert loaded.phase_starts_s == plan.phase_starts_s
    assert back == road
    # saving what was loaded writes the same bytes
    again = tmp_path / "again.json"
    netfile.save(back, again)
    assert again.read_bytes() == path.read_bytes()


def test_a_junction_speed_and_length_make_the_round_trip(tmp_path: Path) -> None:
    road = arterial(1)
    movements = tuple(
        dataclasses.replace(m, junction_speed_mps=6.5, junction_m=12.25)
        if m.turn is Turn.RIGHT
        else m
        for m in road.network.movements
    )
    road = dataclasses.replace(road, network=dataclasses.replace(road.network, movements=movements))
    path = tmp_path / "net.json"
    netfile.save(road, path)
    back = netfile.load(path)
    assert back == road
    assert {m.junction_speed_mps for m in back.network.movements} == {6.5, None}
    assert {m.junction_m for m in back.network.movements} == {12.25, None}
    # files written before junction speeds and lengths were kept hold six fields a movement
    document = json.loads(path.read_text())
    document["movements"] = [movement[:6] for movement in document["movements"]]
    path.write_text(json.dumps(document))
    old = netfile.load(path).network.movements
    assert {(m.junction_speed_mps, m.junction_m) for m in old} == {(None, None)}


def test_round_trip_of_a_grid_with_ten_or_more_columns(tmp_path: Path) -> None:
    road = grid(1, 11)
    path = tmp_path / "net.json"
    netfile.save(road, path)
    back = netfile.load(path)
    assert set(back.network.signal_groups) == set(road.network.signal_groups)  # same content
    assert back.network == road.network  # ... in a different order


def _document(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "good.json"
    netfile.save(grid(1, 1), path)
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    return path


def _link(document: dict[str, Any], link_id: str) -> list[Any]:
    found: list[Any] = next(link for link in document["links"] if link[0] == link_id)
    return found


def test_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format": "citybrain-network", "version": 1,')
    with pytest.raises(ValidationError) as caught:
        netfile.load(path)
    assert "not valid JSON" in caught.value.reason
    assert str(path) in caught.value.field


@pytest.mark.parametrize(("key", "value"), [("format", "sumo-net"), ("version", 2)])
def test_wrong_format_or_version_is_refused(tmp_path: Path, key: str, value: object) -> None:
    document = _document(tmp_path)
    document[key] = value
    path = _write(tmp_path, document)
    with pytest.raises(ValidationError) as caught:
        netfile.load(path)
    assert caught.value.field == f"{path}:$.format"
    assert "citybrain-network v1" in caught.value.reason
    assert str(value) in caught.value.reason


def _missing_node(document: dict[str, Any]) -> None:
    _link(document, "bW0-g0_0")[2] = "ghost"


def _negative_length(document: dict[str, Any]) -> None:
    _link(document, "bW0-g0_0")[3] = -5.0


def _missing_link(document: dict[str, Any]) -> None:
    movement = next(m for m in document["movements"] if m[0] == "g0_0:ET")
    movement[3] = "nowhere"


def _wrong_type(document: dict[str, Any]) -> None:
    _link(document, "bW0-g0_0")[3] = "long"


def _missing_field(document: dict[str, Any]) -> None:
    del document["detectors"]


def _plan_of_unsignalized(document: dict[str, Any]) -> None:
    document["plans"][0]["node"] = "bW0"


@pytest.mark.parametrize(
    ("corrupt", "field_part", "reason_part"),
    [
        (_missing_node, "link.nodes", "'ghost'"),
        (_negative_length, "link.length_m", "-5.0"),
        (_missing_link, "movement.links", "'g0_0:ET'"),
        (_wrong_type, "$.links[", "float"),
        (_missing_field, "$", "detectors"),
        (_plan_of_unsignalized, "plans", "'g0_0' has no timing plan"),
    ],
)
def test_malformed_content_is_refused_naming_the_problem(
    tmp_path: Path,
    corrupt: Callable[[dict[str, Any]], None],
    field_part: str,
    reason_part: str,
) -> None:
    document = _document(tmp_path)
    corrupt(document)
    path = _write(tmp_path, document)
    with pytest.raises(ValidationError) as caught:
        netfile.load(path)
    assert caught.value.field.startswith(str(path))
    assert field_part in caught.value.field
    assert reason_part in caught.value.reason


def test_the_file_size_limit_is_checked_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "net.json"
    netfile.save(grid(1, 1), path)
    size = path.stat().st_size
    assert netfile.MAX_FILE_BYTES >= 100 * 1024 * 1024  # real networks fit
    monkeypatch.setattr(netfile, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(ValidationError, match="byte limit") as caught:
        netfile.load(path)
    assert f"{size} bytes" in caught.value.reason
    monkeypatch.setattr(netfile, "MAX_FILE_BYTES", size)
    assert netfile.load(path) == grid(1, 1)
