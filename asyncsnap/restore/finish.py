"""What a restore does once the rows are in: the sequences set, the materialized views
refreshed (both in the rows' transaction with --single-transaction), post-data and
ANALYZE for a whole restore, the database --create made given its own properties, last,
and the restore's end reported."""

from __future__ import annotations

import asyncpg

from ..catalog import relation_exists, sql_name
from ..connection import ConnectParams
from ..errors import RestoreFailed
from ..events import EventCallback, Notice, RestoreFinished
from ..format import Backup
from . import schema as restore_schema
from .create import CreatePlan, give_properties
from .plan import RestorePlan
from .result import RestoreResult


async def set_sequences(conn: asyncpg.Connection, plan: RestorePlan, emit: EventCallback) -> int:
    """Set the plan's sequences that exist here to the backup's state; how many."""
    count = 0
    for schema, name, value, is_called in plan.sequences:
        if not await relation_exists(conn, sql_name(schema, name)):
            emit(Notice(f"sequence {schema}.{name} does not exist in the target; not set"))
            continue
        await conn.execute(
            "SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, $3)",
            sql_name(schema, name),
            value,
            is_called,
        )
        count += 1
    return count


async def refresh_views(conn: asyncpg.Connection, plan: RestorePlan, emit: EventCallback) -> int:
    """Refresh the plan's materialized views, dependencies first; how many."""
    for schema, name in plan.refresh:
        await conn.execute(f"REFRESH MATERIALIZED VIEW {sql_name(schema, name)}")
        emit(Notice(f"refreshed materialized view {schema}.{name}"))
    return len(plan.refresh)


async def post_data(
    conn: asyncpg.Connection,
    params: ConnectParams,
    steps: restore_schema.SchemaSteps,
    backup: Backup,
    emit: EventCallback,
    *,
    jobs: int,
    schema_only: bool,
) -> None:
    """A whole restore's post-data (indexes, constraints, triggers, rules, policies),
    then, when rows were loaded, ANALYZE."""
    await restore_schema.post_data(conn, params, steps, jobs=jobs)
    emit(Notice("post-data created"))
    if not schema_only:
        await restore_schema.analyze(conn, backup)


async def database_properties(
    conn: asyncpg.Connection, creating: CreatePlan, emit: EventCallback
) -> None:
    """The created database's own properties. Last: settings, a connection limit or the
    ACL would apply to the restore's own sessions (and pg_restore -C, which sets them
    first, fails on a database with default_transaction_read_only).

    :raises RestoreFailed: as the server refuses one.
    """
    if not creating.properties:
        return
    try:
        await give_properties(conn, creating)
    except asyncpg.PostgresError as exc:
        raise RestoreFailed(
            f"setting the properties of database {creating.name} failed: {exc}",
            hint=getattr(exc, "hint", None),
        ) from exc
    emit(Notice(f"database {creating.name}: {creating.described.split('; then ')[-1]}"))


def report(result: RestoreResult, emit: EventCallback) -> RestoreResult:
    """Say the restore is over; the result."""
    emit(
        RestoreFinished(
            tables=len(result.tables),
            rows=result.rows,
            sequences=result.sequences,
            seconds=result.seconds,
        )
    )
    return result
