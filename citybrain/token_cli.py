"""``citybrain security token add|list|revoke``: the operator API's users and their tokens.

    citybrain security token add tokens.json alice --role operator --cap medical=8 --cap fire=9
    citybrain security token list tokens.json
    citybrain security token revoke tokens.json alice

``add`` prints the new token alone on stdout (so that it can go straight into a file) and
stores only its hash; a running API takes every change at its next request.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from citybrain.cloud.auth import User, UserRole, add_user, read_users, revoke_user
from citybrain.models.errors import ValidationError


def add_commands(security: Any) -> None:
    """``token ...`` under ``citybrain security``."""
    token = security.add_parser("token", help="the operator API's users and bearer tokens")
    sub = token.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", help="add a user; prints their token, shown only this once")
    add.add_argument("file", type=Path, help="the token file (made, mode 0600, if missing)")
    add.add_argument("name", help="the user, recorded as the requester of their corridors")
    add.add_argument("--role", choices=[r.value for r in UserRole], required=True)
    add.add_argument(
        "--cap", action="append", default=[], metavar="INCIDENT=PRIORITY",
        help="an operator's highest priority for an incident type (repeat; at least one)",
    )  # fmt: skip
    add.add_argument("--max-active", type=int, help="corridors live at once (role default)")
    add.add_argument(
        "--per-minute", type=int, help="corridor requests and cancels a minute (role default)"
    )
    listing = sub.add_parser("list", help="the users (never their tokens)")
    listing.add_argument("file", type=Path)
    revoke = sub.add_parser("revoke", help="remove a user: their token stops working at once")
    revoke.add_argument("file", type=Path)
    revoke.add_argument("name")


def main(args: argparse.Namespace) -> int:
    if args.users_command == "add":
        token = add_user(
            args.file, args.name, UserRole(args.role), caps=_caps(args.cap),
            max_active=args.max_active, requests_per_minute=args.per_minute,
        )  # fmt: skip
        print(token)
        print(f"added {args.name} ({args.role}) to {args.file}", file=sys.stderr)
    elif args.users_command == "list":
        users = read_users(args.file).users
        print("\n".join(_row(user) for user in users) or "no users")
    else:
        revoke_user(args.file, args.name)
        print(f"revoked {args.name}", file=sys.stderr)
    return 0


def _caps(texts: list[str]) -> dict[str, int]:
    caps: dict[str, int] = {}
    for text in texts:
        incident, _, priority = text.partition("=")
        if not incident or not priority.isdigit():
            raise ValidationError("cap", f"expected INCIDENT=PRIORITY, got {text!r}")
        if incident in caps:
            raise ValidationError("cap", f"{incident} is given twice")
        caps[incident] = int(priority)
    return caps


def _row(user: User) -> str:
    caps = ",".join(f"{k}={v}" for k, v in sorted(user.caps.items())) or "-"
    created = datetime.datetime.fromtimestamp(user.created_at, datetime.UTC)
    return (
        f"{user.name:<20} {user.role:<8} caps {caps:<24} max active {user.max_active:<4} "
        f"per minute {user.requests_per_minute:<5} created {created:%Y-%m-%d %H:%M} UTC"
    )
