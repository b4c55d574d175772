"""The cloud's epoch: a number larger in every process than in any before it.

Plans are ordered by ``(epoch, seq)``: a restarted cloud's ``seq`` starts again at 1 and its
plans must still be newer than all the edges took before. The epoch is kept in a file and is
never below the wall clock's seconds, so a lost or restored state file still yields a newer
epoch (as long as the clock is not set back past the last start).
"""

from __future__ import annotations

from pathlib import Path

from citybrain.models.errors import ValidationError
from citybrain.models.files import write_atomic
from citybrain.models.messages import MAX_SEQ


def next_epoch(path: Path, *, wall_s: float) -> int:
    """Take the next epoch and record it before any plan of it can leave."""
    last = _read(path)
    epoch = max(last + 1, int(wall_s))
    if epoch > MAX_SEQ:
        raise ValidationError("epoch", f"{path}: epoch would pass {MAX_SEQ}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{epoch}\n".encode(), mode=0o600)
    return epoch


def _read(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    except OSError as error:
        raise ValidationError("epoch", f"{path}: {error.strerror}") from None
    if not text.isdigit() or int(text) > MAX_SEQ:
        raise ValidationError("epoch", f"{path}: {text[:40]!r} is not an epoch")
    return int(text)
