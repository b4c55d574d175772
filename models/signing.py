"""Plan signatures: Ed25519 over a canonical encoding, key ids, and the trust store edges check.

The cloud signs every plan it sends; every edge verifies it against its trust store before any
other check. A plan is signed over its canonical encoding: the plan's JSON with every field
but ``signature`` (``key_id`` and ``epoch`` included), keys sorted, no whitespace, msgspec's
shortest round-trip floats. The verifier re-encodes the plan it decoded, so fields it does
not know (a newer sender's) are not covered, and such a plan fails verification: closed, not
open. A key id is the first 16 hex digits of the SHA-256 of the raw public key, so it cannot
name another key than the one it was derived from.

Here, in ``models``, because the cloud signs and the edges verify and the two meet only through
``models`` (the one place beyond DESIGN's numpy/msgspec that imports ``cryptography``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from citybrain.models.checks import check_id
from citybrain.models.errors import ValidationError
from citybrain.models.files import check_private_file, read_struct
from citybrain.models.messages import SignalPlan

_CANONICAL = msgspec.json.Encoder(order="sorted")
MAX_TRUSTED_KEYS = 64
MAX_TRUST_STORE_BYTES = 64 * 1024


class KeyState(enum.StrEnum):
    TRUSTED = "trusted"
    """Plans signed with it are accepted."""
    REVOKED = "revoked"
    """Retired or compromised: plans signed with it are refused (``revoked_key``)."""


class SignatureProblem(enum.StrEnum):
    """Why a plan's signature was refused; these are the ack's ``reason_code`` values."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"


@dataclass(frozen=True, slots=True)
class SignatureRefusal:
    problem: SignatureProblem
    reason: str


def canonical(plan: SignalPlan) -> bytes:
    """The bytes a signature covers: the plan without its signature, keys sorted."""
    return _CANONICAL.encode(msgspec.structs.replace(plan, signature=None))


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PlanSigner:
    """The cloud's signing key: ``sign`` returns the plan with its key id and signature."""

    def __init__(self, *, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.key_id = key_id_of(private_key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    def sign(self, plan: SignalPlan) -> SignalPlan:
        keyed = msgspec.structs.replace(plan, key_id=self.key_id, signature=None)
        signature = self._private_key.sign(canonical(keyed))
        return msgspec.structs.replace(keyed, signature=_b64encode(signature))

    @classmethod
    def load(cls, path: Path) -> PlanSigner:
        """Read a PEM private key, refusing a file anyone but its owner may read."""
        check_private_file(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as error:
            raise ValidationError(
                "signing_key", f"{path}: not a PEM private key ({error})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValidationError("signing_key", f"{path}: not an Ed25519 key")
        return cls(private_key=key)

    @classmethod
    def generate(cls) -> PlanSigner:
        return cls(private_key=Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class TrustedKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    public_key: str
    """The raw Ed25519 public key, base64url."""
    state: KeyState = KeyState.TRUSTED
    note: str = ""

    def __post_init__(self) -> None:
        check_id("key_id", self.key_id)
        if len(self.note) > 512:
            raise ValidationError("note", "longer than 512 characters")


class TrustStoreFile(msgspec.Struct, frozen=True, kw_only=True):
    """The trust store as deployed on every edge (JSON)."""

    v: int = 1
    keys: tuple[TrustedKey, ...] = ()

    def __post_init__(self) -> None:
        if self.v != 1:
            raise ValidationError("v", f"unsupported trust store version {self.v}")
        if len(self.keys) > MAX_TRUSTED_KEYS:
            raise ValidationError("keys", f"more than {MAX_TRUSTED_KEYS} keys")
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValidationError("keys", "a key id is listed twice")


class TrustStore:
    """The cloud keys an edge accepts plans from, and those it refuses by name (revoked)."""

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        self.trusted: dict[str, Ed25519PublicKey] = {}
        self.revoked: set[str] = set()
        for key in keys:
            public = _public_key(key)
            if key_id_of(public) != key.key_id:
                raise ValidationError("key_id", f"{key.key_id} does not match its public key")
            if key.state is KeyState.TRUSTED:
                self.trusted[key.key_id] = public
            else:
                self.revoked.add(key.key_id)

    @classmethod
    def of(cls, keys: Mapping[str, Ed25519PublicKey]) -> TrustStore:
        return cls(
            TrustedKey(key_id=key_id, public_key=encode_public_key(public))
            for key_id, public in keys.items()
        )

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        content = read_struct("trust_store", path, TrustStoreFile, max_bytes=MAX_TRUST_STORE_BYTES)
        store = cls(content.keys)
        if not store.trusted:
            raise ValidationError("trust_store", f"{path}: trusts no key")
        return store

    def verify(self, plan: SignalPlan) -> SignatureRefusal | None:
        """None when a trusted key signed exactly this plan, else why not."""
        if plan.signature is None or plan.key_id is None:
            return SignatureRefusal(SignatureProblem.UNSIGNED, "the plan is not signed")
        if plan.key_id in self.revoked:
            return SignatureRefusal(
                SignatureProblem.REVOKED_KEY, f"key {plan.key_id} has been revoked"
            )
        public = self.trusted.get(plan.key_id)
        if public is None:
            return SignatureRefusal(SignatureProblem.UNKNOWN_KEY, f"no trusted key {plan.key_id}")
        try:
            public.verify(_b64decode(plan.signature), canonical(plan))
        except (InvalidSignature, binascii.Error, ValueError):
            return SignatureRefusal(
                SignatureProblem.BAD_SIGNATURE, "the signature does not match the plan"
            )
        return None


def encode_public_key(public: Ed25519PublicKey) -> str:
    """The raw public key, base64url, as the trust store lists it."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64encode(raw)


def _public_key(key: TrustedKey) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(_b64decode(key.public_key))
    except (binascii.Error, ValueError):
        raise ValidationError("public_key", f"{key.key_id}: not a raw Ed25519 key") from None
