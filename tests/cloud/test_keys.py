from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from citybrain.cloud.epoch import next_epoch
from citybrain.cloud.keys import Keyring
from citybrain.models.errors import ValidationError
from citybrain.models.messages import PlanKind, SignalPlan
from citybrain.models.signing import KeyState, SignatureProblem, TrustStore

RELEASE = SignalPlan(
    plan_id="p1", intersection="a01", seq=1, issued_at=1.0, valid_from=1.0, valid_until=9.0,
    kind=PlanKind.RELEASE,
)  # fmt: skip


def test_a_new_keyring_signs_with_a_key_its_trust_store_trusts(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    key_id = ring.create()
    assert stat.S_IMODE((tmp_path / "keys" / f"{key_id}.pem").stat().st_mode) == 0o600
    signer = ring.signer()
    assert signer.key_id == key_id
    assert TrustStore.load(ring.trust_store).verify(signer.sign(RELEASE)) is None
    with pytest.raises(ValidationError, match="already holds"):
        ring.create()


@pytest.mark.security
def test_rotation_never_leaves_a_moment_when_edges_refuse_the_cloud(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    old = ring.create()
    old_signer = ring.signer()
    new = ring.add(note="2027 rotation")
    edges = TrustStore.load(ring.trust_store)  # the store deployed after `add`
    assert edges.verify(old_signer.sign(RELEASE)) is None  # the old key still signs
    ring.use(new)
    assert ring.signer().key_id == new
    assert edges.verify(ring.signer().sign(RELEASE)) is None  # the new one already trusted
    with pytest.raises(ValidationError, match="signs now"):
        ring.revoke(new)
    ring.revoke(old)
    assert not (tmp_path / f"{old}.pem").exists()  # its private key is gone
    assert {key.key_id: key.state for key in ring.entries()} == {
        old: KeyState.REVOKED,
        new: KeyState.TRUSTED,
    }
    refusal = TrustStore.load(ring.trust_store).verify(old_signer.sign(RELEASE))
    assert refusal is not None
    assert refusal.problem is SignatureProblem.REVOKED_KEY
    with pytest.raises(ValidationError, match="revoked, not trusted"):
        ring.use(old)


@pytest.mark.security
def test_a_readable_active_key_is_refused(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    key_id = ring.create()
    os.chmod(tmp_path / f"{key_id}.pem", 0o644)
    with pytest.raises(ValidationError, match="lets others read it"):
        ring.signer()


def test_epochs_grow_across_restarts_and_never_fall_behind_the_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "state" / "epoch"
    first = next_epoch(path, wall_s=1_000.0)
    assert first == 1_000
    assert next_epoch(path, wall_s=1_000.0) == 1_001  # restarted within the same second
    assert next_epoch(path, wall_s=999.0) == 1_002  # the clock was set back
    path.unlink()
    assert next_epoch(path, wall_s=5_000.0) == 5_000  # state lost: the clock still orders it
    path.write_text("garbage")
    with pytest.raises(ValidationError, match="not an epoch"):
        next_epoch(path, wall_s=6_000.0)
