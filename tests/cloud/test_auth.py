"""The operator API's users: the token file, the decisions on what each may do, and the
``citybrain security token`` commands."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from citybrain.cli import main
from citybrain.cloud.auth import (
    TOKEN_PREFIX,
    Forbidden,
    RateLimiter,
    TokenFile,
    User,
    UserRole,
    add_user,
    check_cancel,
    check_request,
    read_users,
    revoke_user,
    token_hash,
)
from citybrain.cloud.operations import CorridorOwner
from citybrain.models.errors import ValidationError
from citybrain.models.messages import CorridorRequest


def _user(role: UserRole = UserRole.OPERATOR, **changes: Any) -> User:
    fields: dict[str, Any] = {
        "name": "medic", "role": role, "token_sha256": token_hash("t"),
        "caps": {"medical": 6} if role is UserRole.OPERATOR else {}, "max_active": 2,
        "requests_per_minute": 6, "created_at": 0.0,
    }  # fmt: skip
    return User(**{**fields, **changes})


def _request(priority: int = 5, incident: str | None = "medical") -> CorridorRequest:
    return CorridorRequest(
        vehicle="AMB-1", origin="A", destination="B", priority=priority, requester="medic",
        requested_at=0.0, incident=incident,
    )  # fmt: skip


# ---- the token file ----------------------------------------------------------------------------


def test_a_user_added_gets_a_token_the_file_keeps_only_the_hash_of(tmp_path: Path) -> None:
    path = tmp_path / "api" / "tokens.json"
    token = add_user(path, "medic", UserRole.OPERATOR, caps={"medical": 8, "fire": 9})
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert token_hash(token) in text
    (user,) = read_users(path).users
    assert (user.name, user.role, user.caps) == (
        "medic",
        UserRole.OPERATOR,
        {"medical": 8, "fire": 9},
    )
    assert (user.max_active, user.requests_per_minute) == (4, 12), "the operator's defaults"
    found = TokenFile(path).authenticate(token)
    assert found is not None
    assert found.name == "medic"
    assert TokenFile(path).authenticate(token + "x") is None
    assert add_user(path, "other", UserRole.OPERATOR, caps={"medical": 1}) != token


@pytest.mark.security
@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640, 0o620, 0o602])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens.json"
    add_user(path, "admin", UserRole.ADMIN)
    path.chmod(mode)
    for use in (
        lambda: TokenFile(path),
        lambda: read_users(path),
        lambda: add_user(path, "another", UserRole.VIEWER),
    ):
        with pytest.raises(ValidationError, match="chmod 600"):
            use()


def test_a_token_file_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a regular file"):
        TokenFile(tmp_path)
    with pytest.raises(ValidationError, match="No such file"):
        TokenFile(tmp_path / "missing.json")


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "medic", "role": "operator", "token_sha256": token_hash("t"),
        "caps": {"medical": 6}, "max_active": 2, "requests_per_minute": 6, "created_at": 0.0,
    }  # fmt: skip
    return {**entry, **changes}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "malformed"),
        ({"v": 2, "users": []}, "unsupported token file version 2"),
        ({"users": [_entry(role="root")]}, "role"),
        ({"users": [_entry(cap={"medical": 6})]}, "unknown field `cap`"),
        ({"users": [_entry(caps={})]}, "an operator needs a cap"),
        ({"users": [_entry(role="viewer")]}, "only operators have caps"),
        ({"users": [_entry(caps={"medical": 11})]}, "caps.medical: must be <= 10"),
        ({"users": [_entry(caps={"bad type": 5})]}, "not a valid id"),
        ({"users": [_entry(name="me dic")]}, "not a valid id"),
        ({"users": [_entry(token_sha256="AB" * 32)]}, "64 lowercase hex digits"),
        ({"users": [_entry(requests_per_minute=0)]}, "requests_per_minute: must be >= 1"),
        ({"users": [_entry(), _entry(token_sha256=token_hash("u"))]}, "listed twice"),
        ({"users": [_entry(), _entry(name="other")]}, "two users share a token"),
    ],
)
def test_a_malformed_token_file_is_refused_saying_what_is_wrong(
    tmp_path: Path, content: object, words: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(0o600)
    with pytest.raises(ValidationError) as refused:
        TokenFile(path)
    assert words in str(refused.value)
    assert str(path) in str(refused.value)


def test_names_are_unique_and_only_known_users_are_revoked(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_user(path, "medic", UserRole.OPERATOR, caps={"medical": 6})
    with pytest.raises(ValidationError, match="already has a token"):
        add_user(path, "medic", UserRole.ADMIN)
    with pytest.raises(ValidationError, match="no user 'nobody'"):
        revoke_user(path, "nobody")
    revoke_user(path, "medic")
    assert read_users(path).users == ()


def test_the_api_sees_users_added_and_revoked_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_user(path, "admin", UserRole.ADMIN)
    tokens = TokenFile(path)
    medic = add_user(path, "medic", UserRole.OPERATOR, caps={"medical": 6})
    assert tokens.authenticate(medic) is not None
    revoke_user(path, "medic")
    assert tokens.authenticate(medic) is None


# ---- decisions ---------------------------------------------------------------------------------


@pytest.mark.security
@pytest.mark.parametrize(
    ("role", "priority", "incident", "refusal"),
    [
        (UserRole.OPERATOR, 6, "medical", None),
        (UserRole.OPERATOR, 1, "medical", None),
        (UserRole.OPERATOR, 7, "medical", ("priority", "above medic's cap of 6")),
        (UserRole.OPERATOR, 2, "fire", ("incident", "'fire' incidents, only for medical")),
        (UserRole.OPERATOR, 2, None, ("incident", "name the incident type")),
        (UserRole.VIEWER, 1, "medical", (None, "viewers may not")),
        (UserRole.ADMIN, 10, None, None),
        (UserRole.ADMIN, 10, "anything", None),
    ],
)
def test_who_may_request_what(
    role: UserRole, priority: int, incident: str | None, refusal: tuple[str | None, str] | None
) -> None:
    request = _request(priority, incident)
    if refusal is None:
        check_request(_user(role), request)
        return
    with pytest.raises(Forbidden) as refused:
        check_request(_user(role), request)
    assert refused.value.field == refusal[0]
    assert refusal[1] in str(refused.value)


@pytest.mark.security
@pytest.mark.parametrize(
    ("role", "owner", "allowed"),
    [
        (UserRole.OPERATOR, CorridorOwner(corridor_id="C1", requester="medic", incident="fire",
                                      priority=9), True),  # their own, whatever it is
        (UserRole.OPERATOR, CorridorOwner(corridor_id="C1", requester="op", incident="medical",
                                      priority=6), True),  # one they could have requested
        (UserRole.OPERATOR, CorridorOwner(corridor_id="C1", requester="op", incident="medical",
                                      priority=7), False),
        (UserRole.OPERATOR, CorridorOwner(corridor_id="C1", requester="op", incident="fire",
                                      priority=1), False),
        (UserRole.OPERATOR, CorridorOwner(corridor_id="C1", requester="op", incident=None,
                                      priority=1), False),
        (UserRole.VIEWER, CorridorOwner(corridor_id="C1", requester="medic", incident=None,
                                    priority=1), False),
        (UserRole.ADMIN, CorridorOwner(corridor_id="C1", requester="op", incident=None,
                                   priority=10), True),
    ],
)  # fmt: skip
def test_who_may_cancel_what(role: UserRole, owner: CorridorOwner, allowed: bool) -> None:
    if allowed:
        check_cancel(_user(role), owner)
    else:
        with pytest.raises(Forbidden):
            check_cancel(_user(role), owner)


@pytest.mark.security
def test_the_rate_limit_allows_a_burst_then_refills_evenly_per_user() -> None:
    limiter = RateLimiter()
    medic, other = _user(), _user(name="other")
    assert [limiter.take(medic, 100.0) for _ in range(6)] == [0.0] * 6
    assert limiter.take(medic, 100.0) == pytest.approx(10.0), "6 a minute: one every 10 s"
    assert limiter.take(other, 100.0) == 0.0
    assert limiter.take(medic, 105.0) == pytest.approx(5.0)
    assert limiter.take(medic, 110.0) == 0.0
    assert limiter.take(medic, 1000.0) == 0.0
    assert [limiter.take(medic, 1000.0) for _ in range(6)][-1] > 0.0, "the burst stays 6"


# ---- the commands ------------------------------------------------------------------------------


def test_token_commands_add_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.json"
    command = ["security", "token", "add", str(path), "medic", "--role", "operator",
               "--cap", "medical=8", "--cap", "fire=9", "--max-active", "3"]  # fmt: skip
    assert main(command) == 0
    token = capsys.readouterr().out.strip()
    user = TokenFile(path).authenticate(token)
    assert user is not None
    assert (user.caps, user.max_active) == ({"medical": 8, "fire": 9}, 3)
    assert main(["security", "token", "add", str(path), "boss", "--role", "admin"]) == 0
    capsys.readouterr()
    assert main(["security", "token", "list", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "medic" in listed
    assert "fire=9,medical=8" in listed
    assert "boss" in listed
    assert token not in listed
    assert token_hash(token) not in listed
    assert main(["security", "token", "revoke", str(path), "medic"]) == 0
    assert TokenFile(path).authenticate(token) is None


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--cap", "medical"], "expected INCIDENT=PRIORITY"),
        (["--cap", "medical=8", "--cap", "medical=9"], "medical is given twice"),
        (["--cap", "medical=11"], "must be <= 10"),
        ([], "an operator needs a cap"),
    ],
)
def test_token_add_refuses_bad_caps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    path = tmp_path / "tokens.json"
    assert main(["security", "token", "add", str(path), "medic", "--role", "operator", *extra]) == 2
    assert words in capsys.readouterr().err
    assert not path.exists()
