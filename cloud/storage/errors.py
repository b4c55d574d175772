"""The two ways storage fails, kept apart because callers answer them differently: every
store raises them and the writer decides on them, so they live below all of those.

``StorageUnavailable`` is recoverable (the database is unreachable, restarting or failing over;
try again later); ``StorageError`` is not (the database refused what was asked: a bug or a broken
schema), nor is ``migrations.SchemaError`` at open. Bad values are refused with
``ValidationError`` before they reach the database.
"""

from __future__ import annotations

from citybrain.models.errors import CitybrainError


class StorageUnavailable(CitybrainError, ConnectionError):  # noqa: N818 - reads as a state
    """The database cannot be reached now (down, restarting, failing over): retry later."""


class StorageError(CitybrainError, RuntimeError):
    """The database refused what was asked, or the writer stopped on such a refusal: retrying
    the same thing will not help."""
