"""Small files written whole or not at all (keys, trust stores, high-water marks)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new, never half.
    Without ``sync`` it survives the process being killed, not the machine losing power."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        if sync:
            file.flush()
            os.fsync(file.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)
