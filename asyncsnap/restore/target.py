"""The target of a restore: held, so that two restores cannot interleave, and read and
checked before anything is loaded (the kind of restore, the tables, their rights,
triggers, rules and types: ``plan_rows``).

Two restores into one database at once used to both succeed with every row loaded twice,
or fail half-way in post-data: each checked that the tables were empty (or dropped them,
with --clean) before the other had loaded anything. A restore now holds the target:

- **one restore per database.** The connection that coordinates a restore takes a
  session-level advisory lock of the target database before it looks at anything, and
  keeps it until the restore (post-data, sequences, ``--compare`` included) is over, or
  its session ends. A second restore into the same database fails at once with
  ``TargetLocked`` (exit 6), naming the session that holds it: waiting would only load
  the same rows again after the first one, into tables that are then not empty. With
  ``--create`` the database does not exist yet: the name to create is held first, on
  the connection to the maintenance database, until the new database is held.
- **writers kept out while a table is checked and loaded.** Into existing tables (and
  into the tables a whole restore has just created) a load's transaction locks its table
  ``IN EXCLUSIVE MODE`` (reads go on, writes wait) before it checks that the table is
  empty, so no other session can insert between the check and the rows
  (``hold_empty``). A table split at dump time loads over several connections;
  its first file is loaded in the transaction that checked, and the other files once
  that one has committed (their COPY waits for the lock): after that, the table holds
  the backup's rows, and a writer that comes then writes into a restored table.

Advisory locks belong to one database (PostgreSQL's lock tag includes it), so the key
needs no database name; they are only seen by sessions that ask for the same key, and
asyncsnap is the only one that does (``LOCK_CLASS`` spells "asnp").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import asyncpg

from ..batches import batched
from ..catalog import (
    advisory_lock_holder,
    casts_to,
    current_oids_and_rows,
    describe_tables,
    existing_tables,
    list_tables,
    references_from_outside,
    sql_name,
    table_rights,
    triggers_and_rules,
    type_named,
    view_dependencies,
)
from ..errors import (
    PermissionDenied,
    RestoreFailed,
    SchemaMismatch,
    TargetLocked,
    TargetNotEmpty,
    some_names,
)
from ..format import Backup
from .options import Mode, RestoreOptions
from .plan import (
    Kind,
    KindChoice,
    RestorePlan,
    Retyped,
    Switch,
    TableLoad,
    chosen_tables,
    kind_from_options,
    kind_from_target,
    matviews_wanted,
    order_loads,
    plan_loads,
)

# pg_try_advisory_lock(key1, key2): key1 says what is held, key2 which one.
LOCK_CLASS = 0x61736E70  # "asnp": a restore is running into this database (key2 0)
CREATE_CLASS = LOCK_CLASS + 1  # a restore is creating the database named by key2's hash


def name_key(name: str) -> int:
    """The advisory lock's second key for a database name: 31 bits of its SHA-256 (two
    names that share them only make one of two --create runs wait its turn)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> 1


async def hold_database(conn: asyncpg.Connection, database: str) -> None:
    """Hold the database ``conn`` is connected to (named ``database``, for the message)
    for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore holds it.
    """
    await _hold(
        conn, LOCK_CLASS, 0, f"another asyncsnap restore is running into database {database}"
    )


async def hold_name(conn: asyncpg.Connection, name: str) -> None:
    """Hold the name of a database that --create will make (on a connection to another
    database of the server), for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore --create holds the name.
    """
    await _hold(
        conn,
        CREATE_CLASS,
        name_key(name),
        f"another asyncsnap restore --create is making database {name}",
    )


async def _hold(conn: asyncpg.Connection, key1: int, key2: int, what: str) -> None:
    if await conn.fetchval("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", key1, key2):
        return
    holder = await advisory_lock_holder(conn, key1, key2)
    who = ""
    if holder is not None:
        parts = [f"pid {holder.pid}"]
        if holder.user:
            parts.append(f"user {holder.user}")
        if holder.since:
            parts.append(f"connected since {holder.since} UTC")
        who = f" ({', '.join(parts)})"
    raise TargetLocked(
        f"{what}{who}",
        hint="wait for it to end and run this one again; two restores at once would load "
        "the rows twice",
    )


# The kind of restore, by what the target holds ----------------------------------------


async def choose_kind(conn: asyncpg.Connection, backup: Backup, o: RestoreOptions) -> KindChoice:
    """The kind of restore, the reason in words, and the backup's tables the target has
    (the rule: ``plan``).

    :raises UsageError, SchemaMismatch, TargetNotEmpty: when the options or the target
        rule every kind out.
    """
    decided = kind_from_options(backup, o)
    if decided is not None:
        return decided
    existing = await existing_tables(conn, [t.key for t in backup.tables])
    return kind_from_target(chosen_tables(backup, o.selection), existing, o)


# The rows' plan, every table read and checked -----------------------------------------


async def plan_rows(
    conn: asyncpg.Connection, backup: Backup, o: RestoreOptions, *, kind: Kind
) -> RestorePlan:
    """What loads where and in what order (``plan.order_loads``), from the target's
    tables as they are now; refuses, before anything is loaded, a table this role may not
    write, one that has rows (unless --truncate or --append), and one --truncate could not
    empty.

    :raises SchemaMismatch, PermissionDenied, TargetNotEmpty, RestoreFailed, UsageError:
        naming the tables.
    """
    selection = o.selection
    listed = await list_tables(conn)
    described = await describe_tables(conn, [t for t in listed if t.is_table])
    loads = plan_loads(
        backup, described, selection, ignore_missing_columns=o.ignore_missing_columns
    )
    loads = await with_switches(conn, loads, o.mode)
    loads = [replace(ld, retyped=await _retyped(conn, ld)) for ld in loads]
    # whether --clean could take the database back instead (for hints)
    clean_applies = backup.schema is not None and not o.data_only and not selection.filters
    await _check_empty(conn, loads, o.mode, clean_applies=clean_applies)
    if o.mode == "truncate":
        await _check_truncatable(conn, loads)
    # Materialized views that were populated at dump time and exist here as such, refreshed
    # once the rows they read are in, dependencies first.
    wanted = matviews_wanted(backup, selection)
    here = {t.key for t in listed if t.relkind == "m"}
    plan = order_loads(
        loads,
        described,
        backup,
        selection,
        mode=o.mode,
        disable_triggers=o.disable_triggers,
        matviews=[k for k in wanted if k in here],
        view_dependencies=await view_dependencies(conn) if wanted else (),
    )
    if kind == "whole" and o.clean:
        # pg_restore --clean replaces large objects too.
        plan = replace(plan, replace_large_objects=True)
    return plan


async def with_switches(
    conn: asyncpg.Connection, loads: list[TableLoad], mode: Mode
) -> list[TableLoad]:
    """The loads with their target's triggers and rules; refuses, before anything is
    loaded, a table whose triggers or rules this role cannot switch off (only the owner
    can, and letting them fire would change the rows or other tables), and one it may not
    INSERT into (or, with --truncate, TRUNCATE)."""
    oids = [ld.target.oid for ld in loads]
    found = await triggers_and_rules(conn, oids)
    rights = await table_rights(conn, oids)
    gone = [ld.target.qualified for ld in loads if ld.target.oid not in rights]
    if gone:  # dropped (or replaced) by another session since they were listed
        raise SchemaMismatch(
            f"{some_names(gone)} changed while the restore was planning (dropped or "
            "replaced by another session)",
            hint="nothing was loaded; run the restore again",
        )
    missing = [
        f"{ld.target.qualified} ({verb})"
        for ld in loads
        for verb, key in (("INSERT", "can_insert"), ("TRUNCATE", "can_truncate"))
        if (verb == "INSERT" or mode == "truncate") and not getattr(rights[ld.target.oid], key)
    ]
    if missing:
        raise PermissionDenied(
            f"permission denied: this role may not write {some_names(missing)}",
            hint="restore as the tables' owner, or GRANT the privileges named",
        )
    result = [
        replace(load, switches=tuple(Switch(*sw) for sw in found.get(load.target.oid, ())))
        for load in loads
    ]
    refused = [
        ld.target.qualified for ld in result if ld.quiets and not rights[ld.target.oid].owned
    ]
    if refused:
        raise PermissionDenied(
            f"{some_names(refused)} have triggers or rules that loading would fire, and only "
            "their owner can switch them off for the load",
            hint="restore as the tables' owner (or a member of its role)",
        )
    unlockable = [
        ld.target.qualified
        for ld in loads
        if mode == "refuse" and not rights[ld.target.oid].can_lock
    ]
    if unlockable:
        # hold_empty keeps other writers out while it checks and loads: LOCK TABLE IN
        # EXCLUSIVE MODE needs one of these privileges.
        raise PermissionDenied(
            f"this role may not lock {some_names(unlockable)} against other writers while "
            "checking they are empty (that needs UPDATE, DELETE or TRUNCATE on them)",
            hint="GRANT one of those, restore as the tables' owner, or pass --append to load "
            "without the emptiness check",
        )
    return result


async def _retyped(conn: asyncpg.Connection, load: TableLoad) -> tuple[Retyped, ...]:
    """The load's written columns whose type here is not the backup's, with the check
    each value must pass. The backup's type name is resolved by the server
    (``to_regtype``, a parameter: a manifest's text never becomes SQL) and written back
    by ``format_type``; whether the target's type casts to it is asked of the server."""
    here = {c.name: c for c in load.target.columns}
    found = []
    for column in load.source.columns:
        target = here.get(column.name)
        if column.name not in load.columns or target is None or target.type == column.type:
            continue
        back_to = await type_named(conn, column.type)
        if back_to is not None and not await casts_to(conn, target.type, back_to):
            back_to = None  # no cast back: the text itself is compared
        found.append(Retyped(column.name, column.type, target.type, back_to))
    return tuple(found)


_EMPTY_BATCH = 200


async def _check_empty(
    conn: asyncpg.Connection, loads: list[TableLoad], mode: Mode, *, clean_applies: bool = False
) -> None:
    """Refuse tables that have rows (the default mode), before anything is loaded; the
    load's transaction checks again under its lock (``hold_empty``). ``clean_applies``:
    --clean could replace the database's tables instead (not with --data-only or -t/-T,
    which it refuses), so the hint names it."""
    if mode != "refuse":
        return
    busy = []
    # A round trip per _EMPTY_BATCH tables, not per table (ten thousand small tables).
    for batch in batched(loads, _EMPTY_BATCH):
        filled = await conn.fetchval(
            "SELECT ARRAY["
            + ", ".join(
                f"EXISTS (SELECT 1 FROM ONLY {sql_name(ld.target.schema, ld.target.name)})"
                for ld in batch
            )
            + "]"
        )
        busy += [ld.target.qualified for ld, rows in zip(batch, filled, strict=True) if rows]
    if busy:
        raise TargetNotEmpty(
            f"the target already has rows in {some_names(busy)}",
            hint="pass --truncate to replace their rows or --append to add to them"
            + (
                ", or --clean to take the whole database back to the backup"
                if clean_applies
                else ""
            ),
        )


async def _check_truncatable(conn: asyncpg.Connection, loads: list[TableLoad]) -> None:
    """--truncate empties the selected tables in one statement; a table outside the
    selection that references one of them would make it fail (after the plan said yes)."""
    references = await references_from_outside(conn, [ld.target.oid for ld in loads])
    if references:
        pairs = [f"{r.referencing} references {r.referenced}" for r in references]
        raise RestoreFailed(
            f"cannot truncate: {some_names(pairs, sep='; ')}",
            hint="include the referencing tables with -t, or empty them yourself "
            "(asyncsnap never truncates tables you did not select)",
        )


async def hold_empty(conn: asyncpg.Connection, loads: Sequence[TableLoad]) -> None:
    """In the caller's transaction: lock the loads' tables against other writers until it
    ends (``EXCLUSIVE``: reads go on, INSERTs wait), then check that each is still the
    table the plan read and has no rows. The plan's check (``_check_empty``) ran outside
    any transaction, so another session (a second restore, an application) could have
    written since; under the lock none can until the rows are in.

    :raises SchemaMismatch: when a table was dropped or replaced since the plan.
    :raises TargetNotEmpty: when a table has rows now.
    """
    names = [sql_name(ld.target.schema, ld.target.name) for ld in loads]
    await conn.execute(f"LOCK TABLE {', '.join('ONLY ' + n for n in names)} IN EXCLUSIVE MODE")
    # The oids and the rows in one round trip (the LOCK found every name, so each
    # EXISTS has a table to read, perhaps a replaced one, which the oids tell).
    oids, filled = await current_oids_and_rows(conn, names)
    replaced = [ld.target.qualified for ld, oid in zip(loads, oids, strict=True)
                if oid != ld.target.oid]  # fmt: skip
    if replaced:
        raise SchemaMismatch(
            f"{some_names(replaced)} changed while the restore was planning (dropped or "
            "replaced by another session)",
            hint="nothing of it was loaded; run the restore again",
        )
    busy = [ld.target.qualified for ld, rows in zip(loads, filled, strict=True) if rows]
    if busy:
        raise TargetNotEmpty(
            f"the target has rows in {some_names(busy)}, written by another session after "
            "the restore checked it",
            hint="nothing of it was loaded; find the writer, or pass --truncate to replace "
            "the rows or --append to add to them",
        )
