"""``citybrain security keys add|use|revoke|list``: the cloud's plan-signing keys.

    citybrain security keys add cloud/keys        # a new key, trusted, not yet signing
    citybrain security keys use cloud/keys KEY    # the cloud signs with KEY (restart it)
    citybrain security keys revoke cloud/keys OLD # OLD refused by name, its private key deleted
    citybrain security keys list cloud/keys

After ``add`` and ``revoke``, deploy the keyring's ``trust.json`` to every edge box (see
docs/security.md for the order that never leaves edges refusing the cloud).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from citybrain.cloud.keys import Keyring


def add_commands(security: Any) -> None:
    """``keys ...`` under ``citybrain security``."""
    keys = security.add_parser("keys", help="the cloud's plan-signing keys: add, use, revoke")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    add = sub.add_parser("add", help="a new key, trusted in trust.json, not yet signing")
    add.add_argument("keyring", type=Path, help="the keyring folder (cloud/keys)")
    add.add_argument("--note", default="", help="why, for whoever reads trust.json later")
    use = sub.add_parser("use", help="sign with this key from the cloud's next start")
    use.add_argument("keyring", type=Path)
    use.add_argument("key_id")
    revoke = sub.add_parser("revoke", help="refuse this key by name; its private key is deleted")
    revoke.add_argument("keyring", type=Path)
    revoke.add_argument("key_id")
    listing = sub.add_parser("list", help="the keys, their state, and which one signs")
    listing.add_argument("keyring", type=Path)


def main(args: argparse.Namespace) -> int:
    keyring = Keyring(args.keyring)
    command = args.keys_command
    if command == "add":
        key_id = keyring.add(note=args.note)
        print(key_id)
        print(f"added {key_id}: deploy {keyring.trust_store} to every edge, then `use` it",
              file=sys.stderr)  # fmt: skip
    elif command == "use":
        keyring.use(args.key_id)
        print(f"{args.key_id} signs from the cloud's next start", file=sys.stderr)
    elif command == "revoke":
        keyring.revoke(args.key_id)
        print(f"revoked {args.key_id}: deploy {keyring.trust_store} to every edge now",
              file=sys.stderr)  # fmt: skip
    else:
        active = keyring.active_id()
        for key in keyring.entries():
            signing = "  signing" if key.key_id == active else ""
            print(f"{key.key_id}  {key.state}{signing}  {key.note}".rstrip())
    return 0
