"""The cloud's storage: telemetry, corridors, every plan sent with its acks, reservations,
who asked for or cancelled each corridor, and alarms with who acknowledged them.

A package because each part changes for its own reasons: ``store.TelemetryStore`` is the seam
the service and the API talk to; ``postgres.PostgresStore`` is the real one (psycopg 3, async,
pooled, with day partitions or TimescaleDB) and ``memory.MemoryStore`` the fake beside it for
other components' tests. ``writer.TelemetryWriter`` sits between the service and a store: it
batches telemetry, writes it with COPY, and while the database is away keeps a bounded backlog in
memory and flushes it in order when the database is back. ``records`` holds what is stored and
the checks on it; ``errors`` the recoverable ``StorageUnavailable`` and the final
``StorageError``.

This module re-exports what the rest of citybrain imports from ``citybrain.cloud.storage``.
"""

from __future__ import annotations

from citybrain.cloud.storage.errors import StorageError, StorageUnavailable
from citybrain.cloud.storage.memory import MemoryStore
from citybrain.cloud.storage.postgres import PostgresStore, StoreSettings
from citybrain.cloud.storage.records import (
    AckReceived,
    ActionKind,
    OperatorAction,
    PlanSent,
    QueueMinute,
    Received,
    Reservation,
    check_storable,
)
from citybrain.cloud.storage.store import TelemetryStore
from citybrain.cloud.storage.writer import TelemetryWriter, WriterSettings

__all__ = [
    "AckReceived",
    "ActionKind",
    "MemoryStore",
    "OperatorAction",
    "PlanSent",
    "PostgresStore",
    "QueueMinute",
    "Received",
    "Reservation",
    "StorageError",
    "StorageUnavailable",
    "StoreSettings",
    "TelemetryStore",
    "TelemetryWriter",
    "WriterSettings",
    "check_storable",
]
