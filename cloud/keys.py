"""The cloud's plan-signing keys on disk, and their rotation.

A keyring is a directory only the cloud reads: one private key per file (``<key id>.pem``,
mode 0600), ``active`` naming the key that signs, and ``trust.json``, the trust store every
edge is given (public keys only). Rotation, without a moment in which edges refuse the cloud:

1. ``add``: a new key, trusted in ``trust.json`` but not yet signing; deploy that file;
2. ``use``: the cloud signs with the new key (restart it); the old one is still trusted;
3. ``revoke`` the old key: ``trust.json`` lists it as revoked (edges refuse it by name),
   its private key is deleted; deploy ``trust.json`` again.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from citybrain.models.checks import check_id
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_private_file, read_struct, write_atomic
from citybrain.models.signing import (
    MAX_TRUST_STORE_BYTES,
    KeyState,
    PlanSigner,
    TrustedKey,
    TrustStoreFile,
    encode_public_key,
)

TRUST_STORE = "trust.json"
ACTIVE = "active"


class Keyring:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def trust_store(self) -> Path:
        return self.directory / TRUST_STORE

    def create(self) -> str:
        """A new keyring with one key, which signs; its id."""
        if self.trust_store.exists():
            raise ValidationError("keys", f"{self.directory} already holds a keyring")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_store(TrustStoreFile())
        key_id = self.add(note="first key")
        self.use(key_id)
        return key_id

    def add(self, *, note: str = "") -> str:
        """A new key, trusted but not signing until ``use``."""
        store = self._read_store()
        signer = PlanSigner.generate()
        write_atomic(self.directory / f"{signer.key_id}.pem", signer.private_pem(), mode=0o600)
        entry = TrustedKey(
            key_id=signer.key_id, public_key=encode_public_key(signer.public_key), note=note
        )
        self._write_store(TrustStoreFile(keys=(*store.keys, entry)))
        return signer.key_id

    def use(self, key_id: str) -> None:
        check_id("key_id", key_id)
        self._entry(key_id, KeyState.TRUSTED)
        PlanSigner.load(self.directory / f"{key_id}.pem")  # it must be there and readable
        write_atomic(self.directory / ACTIVE, f"{key_id}\n".encode(), mode=0o600)

    def revoke(self, key_id: str) -> None:
        """Refused by name from now on (once edges have the new ``trust.json``)."""
        check_id("key_id", key_id)
        if key_id == self.active_id():
            raise ValidationError("key_id", f"{key_id} signs now: `use` another key first")
        store = self._read_store()
        self._entry(key_id, None)
        keys = tuple(
            msgspec.structs.replace(key, state=KeyState.REVOKED) if key.key_id == key_id else key
            for key in store.keys
        )
        self._write_store(TrustStoreFile(keys=keys))
        (self.directory / f"{key_id}.pem").unlink(missing_ok=True)

    def entries(self) -> tuple[TrustedKey, ...]:
        return self._read_store().keys

    def active_id(self) -> str:
        try:
            key_id = (self.directory / ACTIVE).read_text().strip()
        except OSError as error:
            message = f"{self.directory}: no active key ({error.strerror})"
            raise ValidationError("keys", message) from None
        check_id("key_id", key_id)
        return key_id

    def signer(self) -> PlanSigner:
        """The key that signs, checked to be trusted in the trust store edges get."""
        check_private_file(self.directory / ACTIVE)
        key_id = self.active_id()
        self._entry(key_id, KeyState.TRUSTED)
        return PlanSigner.load(self.directory / f"{key_id}.pem")

    def _entry(self, key_id: str, state: KeyState | None) -> TrustedKey:
        for key in self._read_store().keys:
            if key.key_id == key_id:
                if state is not None and key.state is not state:
                    raise ValidationError("key_id", f"{key_id} is {key.state}, not {state}")
                return key
        raise ValidationError("key_id", f"no key {key_id} in {self.trust_store}")

    def _read_store(self) -> TrustStoreFile:
        return read_struct(
            "keys", self.trust_store, TrustStoreFile, max_bytes=MAX_TRUST_STORE_BYTES
        )

    def _write_store(self, store: TrustStoreFile) -> None:
        write_atomic(self.trust_store, msgspec.json.format(msgspec.json.encode(store)), mode=0o644)
