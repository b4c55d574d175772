from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from citybrain.models.codec import DEFAULT_CODEC
from citybrain.models.errors import ValidationError
from citybrain.models.messages import GreenWindow, SignalPlan
from citybrain.models.signing import (
    PlanSigner,
    SignatureProblem,
    TrustedKey,
    TrustStore,
    TrustStoreFile,
    canonical,
    encode_public_key,
)

SIGNER = PlanSigner.generate()
TRUST = TrustStore.of({SIGNER.key_id: SIGNER.public_key})


def _plan(**changes: object) -> SignalPlan:
    fields: dict[str, object] = {
        "plan_id": "C1-AMB-1-a01-1", "intersection": "a01", "seq": 1, "epoch": 7,
        "issued_at": 100.25, "valid_from": 100.35, "valid_until": 160.0,
        "windows": (GreenWindow(signal_group="2", open_at=110.1, close_at=130.0),),
    }  # fmt: skip
    fields.update(changes)
    return SignalPlan(**fields)  # type: ignore[arg-type]


def test_a_signed_plan_verifies_after_the_wire_round_trip() -> None:
    signed = SIGNER.sign(_plan())
    assert signed.key_id == SIGNER.key_id
    received = DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(signed), SignalPlan)
    assert TRUST.verify(received) is None


def test_the_canonical_encoding_covers_every_field_but_the_signature() -> None:
    plan = SIGNER.sign(_plan())
    assert b'"signature":null' in canonical(plan)
    assert canonical(plan) == canonical(msgspec.structs.replace(plan, signature="x"))
    for change in ({"seq": 2}, {"epoch": 8}, {"valid_until": 160.5}, {"corridor_id": "C2"},
                   {"key_id": "0123456789abcdef"}, {"intersection": "a02"}):  # fmt: skip
        assert canonical(msgspec.structs.replace(plan, **change)) != canonical(plan), change


@pytest.mark.security
@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ({"signature": None}, SignatureProblem.UNSIGNED),
        ({"key_id": None}, SignatureProblem.UNSIGNED),
        ({"seq": 2**53 - 1}, SignatureProblem.BAD_SIGNATURE),
        ({"epoch": 2**40}, SignatureProblem.BAD_SIGNATURE),
        ({"valid_until": 400.0}, SignatureProblem.BAD_SIGNATURE),
        ({"signature": "not base64 !"}, SignatureProblem.BAD_SIGNATURE),
        ({"signature": "AAAA"}, SignatureProblem.BAD_SIGNATURE),
        ({"key_id": "0123456789abcdef"}, SignatureProblem.UNKNOWN_KEY),
    ],
)
def test_tampered_plans_are_refused(tamper: dict[str, object], problem: SignatureProblem) -> None:
    forged = msgspec.structs.replace(SIGNER.sign(_plan()), **tamper)
    refusal = TRUST.verify(forged)
    assert refusal is not None
    assert refusal.problem is problem
    assert refusal.reason


def test_a_key_id_must_match_its_public_key() -> None:
    other = PlanSigner.generate()
    lying = TrustedKey(key_id=SIGNER.key_id, public_key=encode_public_key(other.public_key))
    with pytest.raises(ValidationError, match="does not match"):
        TrustStore([lying])


def test_trust_store_files_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    key = TrustedKey(key_id=SIGNER.key_id, public_key=encode_public_key(SIGNER.public_key))
    path.write_bytes(msgspec.json.encode(TrustStoreFile(keys=(key,))))
    assert TrustStore.load(path).verify(SIGNER.sign(_plan())) is None
    for content, message in (
        (b"{", "trust.json"),
        (msgspec.json.encode(TrustStoreFile()), "trusts no key"),
        (msgspec.json.encode({"v": 1, "keys": [{"key_id": "k", "public_key": "AA"}]}), "raw"),
        (b" " * 70_000, "larger"),
    ):
        path.write_bytes(content)
        with pytest.raises(ValidationError, match=message):
            TrustStore.load(path)
    with pytest.raises(ValidationError, match="No such file"):
        TrustStore.load(tmp_path / "missing.json")


@pytest.mark.security
def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(SIGNER.private_pem())
    os.chmod(path, 0o640)
    with pytest.raises(ValidationError, match="chmod 600"):
        PlanSigner.load(path)
    os.chmod(path, 0o600)
    assert PlanSigner.load(path).key_id == SIGNER.key_id
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValidationError, match="not a PEM private key"):
        PlanSigner.load(path)
