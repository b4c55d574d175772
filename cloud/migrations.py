"""The cloud database's schema, as numbered migrations applied in order at start.

Each migration has two texts, one per flavor: on TimescaleDB the time series are hypertables with
compression settings and a continuous aggregate of queues per minute; on plain PostgreSQL they are
tables partitioned by range of ``ts`` (one partition per UTC day, created by the store as rows
arrive) with BRIN indexes on time. Both flavors have the same tables, columns and unique keys, so
every query but one (queues per minute: the aggregate or ``date_bin``) is the same SQL.

``migrate`` holds a transaction-level advisory lock for the whole run, so services starting
together apply each migration once; it records every version with its flavor in
``schema_migrations``, and a database keeps the flavor it was created with.

The migrations live in this module rather than in ``.sql`` files so that they are packaged with
the code that depends on them, with nothing to add to the package data.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg.rows import TupleRow

from citybrain.models.errors import CitybrainError

log = logging.getLogger(__name__)

MIGRATION_LOCK: Final = 0x6369_7479_6272_6E01
"""``pg_advisory_xact_lock`` key ("citybrn" + 1) taken while migrating."""


class Flavor(enum.StrEnum):
    TIMESCALEDB = "timescaledb"
    POSTGRESQL = "postgresql"


class SchemaError(CitybrainError, RuntimeError):
    """The database's schema cannot be used by this build (newer, other flavor, no extension)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    postgresql: str
    timescaledb: str

    def sql(self, flavor: Flavor) -> str:
        return self.timescaledb if flavor is Flavor.TIMESCALEDB else self.postgresql


# One row per message and one per approach: the approach rows carry no seq (they are deduplicated
# through their message, see ``PostgresStore.write_telemetry``). The unique key includes ``ts``
# because both partitioned tables and hypertables require the partitioning column in it; a
# redelivered message has the same ``ts``, so it still catches every duplicate.
_TELEMETRY_COLUMNS = """
    ts timestamptz NOT NULL,
    intersection text NOT NULL,
    seq bigint NOT NULL,
    mode text NOT NULL,
    plan_id text,
    received_at timestamptz NOT NULL,
    CONSTRAINT telemetry_key UNIQUE (intersection, seq, ts)
"""
_APPROACH_COLUMNS = """
    ts timestamptz NOT NULL,
    intersection text NOT NULL,
    approach text NOT NULL,
    queue_veh real NOT NULL,
    occupancy real NOT NULL,
    flow_vph real NOT NULL
"""

_TIME_SERIES_POSTGRESQL = f"""
CREATE TABLE telemetry ({_TELEMETRY_COLUMNS}) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts);
CREATE TABLE approach_samples ({_APPROACH_COLUMNS}) PARTITION BY RANGE (ts);
CREATE INDEX approach_samples_ts_brin ON approach_samples USING brin (ts);
CREATE INDEX approach_samples_by_intersection ON approach_samples (intersection, ts);
"""

_TIME_SERIES_TIMESCALEDB = f"""
CREATE TABLE telemetry ({_TELEMETRY_COLUMNS});
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => INTERVAL '1 day');
CREATE TABLE approach_samples ({_APPROACH_COLUMNS});
SELECT create_hypertable('approach_samples', 'ts', chunk_time_interval => INTERVAL '1 day');
CREATE INDEX approach_samples_by_intersection ON approach_samples (intersection, ts);
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'intersection',
    timescaledb.compress_orderby = 'ts, seq'
);
ALTER TABLE approach_samples SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'intersection, approach',
    timescaledb.compress_orderby = 'ts'
);
CREATE MATERIALIZED VIEW approach_queue_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, intersection, approach,
       avg(queue_veh) AS avg_queue, max(queue_veh) AS max_queue, count(*) AS samples
FROM approach_samples
GROUP BY minute, intersection, approach
WITH NO DATA;
"""  # noqa: S608 - built from module constants only

# Bodies are ``json``, not ``jsonb``: kept byte for byte as msgspec wrote them, and ``json``
# accepts a ``\\u0000`` in free text where ``jsonb`` refuses it.
_AUDIT = """
CREATE TABLE corridors (
    corridor_id text PRIMARY KEY,
    vehicle text NOT NULL,
    state text NOT NULL,
    priority smallint NOT NULL,
    updated_at timestamptz NOT NULL,
    status json NOT NULL
);
CREATE TABLE plans (
    intersection text NOT NULL,
    plan_id text NOT NULL,
    seq bigint NOT NULL,
    corridor_id text,
    kind text NOT NULL,
    valid_from timestamptz NOT NULL,
    valid_until timestamptz NOT NULL,
    sent_at timestamptz NOT NULL,
    body json NOT NULL,
    PRIMARY KEY (intersection, plan_id)
);
CREATE INDEX plans_by_corridor ON plans (corridor_id, sent_at);
CREATE TABLE plan_acks (
    intersection text NOT NULL,
    plan_id text NOT NULL,
    seq bigint NOT NULL,
    status text NOT NULL,
    at timestamptz NOT NULL,
    reason_code text,
    reason text,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (intersection, plan_id, status, at)
);
CREATE TABLE reservations (
    corridor_id text NOT NULL,
    intersection text NOT NULL,
    signal_group text NOT NULL,
    open_at timestamptz NOT NULL,
    close_at timestamptz NOT NULL,
    CHECK (close_at > open_at)
);
CREATE INDEX reservations_by_corridor ON reservations (corridor_id);
CREATE INDEX reservations_by_intersection ON reservations (intersection, open_at);
"""

# Who asked: one row per corridor requested, cancelled or pre-empted through the API.
_OPERATOR_ACTIONS = """
CREATE TABLE operator_actions (
    at timestamptz NOT NULL,
    actor text NOT NULL,
    kind text NOT NULL,
    corridor_id text NOT NULL,
    vehicle text NOT NULL,
    priority smallint NOT NULL,
    incident text,
    reason text,
    PRIMARY KEY (corridor_id, kind, at)
);
CREATE INDEX operator_actions_by_actor ON operator_actions (actor, at);
"""

# Alarms, with who acknowledged them; and corridors listed newest first (history pages).
_ALARMS = """
CREATE TABLE alarms (
    alarm_id text PRIMARY KEY,
    kind text NOT NULL,
    severity text NOT NULL,
    subject text NOT NULL,
    message text NOT NULL,
    raised_at timestamptz NOT NULL,
    cleared_at timestamptz,
    acked_by text,
    acked_at timestamptz,
    CHECK ((acked_by IS NULL) = (acked_at IS NULL))
);
CREATE INDEX alarms_by_time ON alarms (raised_at);
CREATE INDEX corridors_by_time ON corridors (updated_at, corridor_id);
CREATE INDEX corridors_by_vehicle ON corridors (vehicle, updated_at);
"""

MIGRATIONS: Final = (
    Migration(1, "time series", _TIME_SERIES_POSTGRESQL, _TIME_SERIES_TIMESCALEDB),
    Migration(2, "corridors, plans, acks, reservations", _AUDIT, _AUDIT),
    Migration(3, "operators' actions", _OPERATOR_ACTIONS, _OPERATOR_ACTIONS),
    Migration(4, "alarms; corridors by time", _ALARMS, _ALARMS),
)


async def migrate(conn: psycopg.AsyncConnection[TupleRow], *, timescale: bool | None) -> Flavor:
    """Bring the schema up to date and return its flavor.

    ``timescale``: None uses TimescaleDB when the extension can be created, True requires it,
    False never uses it. A database already migrated keeps its flavor; asking for the other one
    raises ``SchemaError``. The whole run is one transaction: it applies completely or not at all.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, flavor text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version, flavor FROM schema_migrations")
        applied: dict[int, str] = {int(v): str(f) for v, f in await cursor.fetchall()}
        latest = MIGRATIONS[-1].version
        if applied and max(applied) > latest:
            raise SchemaError(
                f"the database schema is at version {max(applied)}, newer than this build's "
                f"{latest}: upgrade the cloud service"
            )
        if applied:
            flavor = Flavor(applied[min(applied)])
            if timescale is not None and timescale != (flavor is Flavor.TIMESCALEDB):
                raise SchemaError(f"the database was created for {flavor}; it stays {flavor}")
            if flavor is Flavor.TIMESCALEDB:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        else:
            flavor = await _choose_flavor(conn, timescale)
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            log.info("applying migration %d (%s, %s)", migration.version, migration.name, flavor)
            await conn.execute(migration.sql(flavor))
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, flavor) VALUES (%s, %s, %s)",
                (migration.version, migration.name, flavor.value),
            )
    return flavor


async def _choose_flavor(conn: psycopg.AsyncConnection[TupleRow], timescale: bool | None) -> Flavor:
    if timescale is False:
        return Flavor.POSTGRESQL
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    )
    row = await cursor.fetchone()
    if row is not None and row[0]:
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves the run usable
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.DatabaseError as error:
            if timescale:
                raise SchemaError(f"cannot create the timescaledb extension: {error}") from error
            log.warning("timescaledb is installed but unusable (%s): plain PostgreSQL", error)
        else:
            return Flavor.TIMESCALEDB
    elif timescale:
        raise SchemaError("the timescaledb extension is not installed on this server")
    return Flavor.POSTGRESQL
