"""Restoring a chain (issue 25): the full backup as any restore does, then each
increment's changes applied in order (docs/format.md, "Incremental backups").

The chain is opened and checked before anything is restored (``storage.chain``).
``apply_increments`` applies each increment in one transaction of its own,
table by table, its lines in order, through a PL/pgSQL function made per table in the
session's ``pg_temp`` (``apply_function_sql``): the lines go to the server as they are
stored, a JSON array a batch, and each change is one statement there, its values read
with the same declared types and casts as a restore's rows (``TableLoad``). Every update
and delete must find exactly its row, or the increment fails and rolls back: a target
that is not the chain's state is said, never silently patched.

While changes are applied no trigger, rule or foreign-key action fires (the session is a
replica: ``session_replication_role``, which needs a superuser, as pg_restore's
``--disable-triggers`` does; ALWAYS and REPLICA triggers and rules are switched off for
the transaction).
"""

from __future__ import annotations

import secrets

import asyncpg

from ..catalog import quote_ident, sql_name
from ..errors import PermissionDenied, RestoreFailed
from ..events import EventCallback, Notice
from ..format import Backup, BackupTable
from ..storage.backup import DataFileReader
from ..storage.chain import Chain, backup_name
from .plan import TableLoad, cast_target


async def check_can_apply(conn: asyncpg.Connection) -> None:
    """Applying changes needs ``session_replication_role``: refused before anything is
    restored when this role cannot set it."""
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(
            "applying a chain's increments needs a superuser: no trigger, rule or foreign "
            "key action may fire while the changes are applied (session_replication_role)",
            hint="restore the chain as a superuser, or restore its full backup alone",
        ) from exc


async def apply_increments(
    conn: asyncpg.Connection,
    chain: Chain,
    loads: list[TableLoad],
    emit: EventCallback,
) -> int:
    """Every increment of ``chain`` applied to the tables ``loads`` restored, in order,
    each in one transaction; how many changes were applied."""
    by_key = {load.source.key: load for load in loads}
    made: dict[tuple[str, str], str] = {}
    total = 0
    for increment in chain.increments:
        applied = 0
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            # Deferrable constraints checked at the commit, as the source's statements
            # (which changed several rows at once) had them checked at their ends.
            await conn.execute("SET CONSTRAINTS ALL DEFERRED")
            for table in increment.tables:
                load = by_key.get(table.key)
                if load is None or not table.files:
                    continue
                function = made.get(table.key)
                if function is None:
                    function = made[table.key] = f"pg_temp.asyncsnap_apply_{len(made)}"
                    equals = await primary_key_equality(conn, load.target.oid)
                    await conn.execute(apply_function_sql(function, load, equals))
                for switch in load.switches:
                    if switch.state in ("A", "R"):  # these fire in a replica session
                        await conn.execute(switch.off(_target(load)))
                applied += await _apply_table(conn, increment, table, function, chain.upto)
                for switch in load.switches:
                    if switch.state in ("A", "R"):
                        await conn.execute(switch.back(_target(load)))
        total += applied
        emit(Notice(f"applied {backup_name(increment.path)}: {applied:,} changes"))
    return total


async def primary_key_equality(conn: asyncpg.Connection, table: int) -> dict[str, str]:
    """The equality operator of each primary-key column of ``table``, from its index's
    operator classes, as ``OPERATOR(schema.=)``: the one its index finds rows by."""
    rows = await conn.fetch(
        "SELECT a.attname, pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname) AS op"
        " FROM pg_catalog.pg_index i,"
        " ROWS FROM (pg_catalog.unnest(i.indkey::pg_catalog.int2[]),"
        "   pg_catalog.unnest(i.indclass::pg_catalog.oid[])) AS k(attnum, opclass)"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum"
        " JOIN pg_catalog.pg_opclass c ON c.oid = k.opclass"
        " JOIN pg_catalog.pg_amop p ON p.amopfamily = c.opcfamily"
        "  AND p.amoplefttype = c.opcintype AND p.amoprighttype = c.opcintype"
        "  AND p.amopstrategy = 3 AND p.amopmethod = c.opcmethod"
        " JOIN pg_catalog.pg_operator o ON o.oid = p.amopopr"
        " JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace"
        " WHERE i.indrelid = $1 AND i.indisprimary",
        table,
    )
    return {r["attname"]: r["op"] for r in rows}


async def _apply_table(
    conn: asyncpg.Connection,
    increment: Backup,
    table: BackupTable,
    function: str,
    upto: int | None,
) -> int:
    applied = 0
    for entry in table.files:
        reader = DataFileReader(increment, entry, identities=list(increment.identities) or None)
        try:
            for block in reader:  # whole lines, each ending in a newline (none inside)
                applied += await _call(conn, function, bytes(block), upto)
            reader.finish()  # its hash and count match the manifest, or nothing commits
        finally:
            reader.close()
    return applied


async def _call(conn: asyncpg.Connection, function: str, block: bytes, upto: int | None) -> int:
    """A block of change lines applied: sent as a JSON array of them."""
    array = b"[" + block.rstrip(b"\n").replace(b"\n", b",") + b"]"
    try:
        done: int = await conn.fetchval(
            f"SELECT {function}($1::pg_catalog.json, $2::pg_catalog.pg_lsn)", array, upto
        )
    except asyncpg.RaiseError as exc:
        raise RestoreFailed(
            f"an increment does not apply: {exc}",
            hint="the target is not the chain's state before it (changed since the full "
            "backup was restored?); the increment was rolled back",
        ) from exc
    return done


def _target(load: TableLoad) -> str:
    return sql_name(load.target.schema, load.target.name)


class _Columns:
    """How a table's values are read from a line's objects: declared as the restore
    declares them (the column's type, or text cast to it for ``text`` encodings)."""

    def __init__(self, load: TableLoad, equals: dict[str, str] | None = None) -> None:
        self.load = load
        # The columns a change line holds: those the restore writes, but not the ones
        # generated at the source (the slot does not send them; the target computes
        # them, or, where they are plain columns there, keeps what the full backup gave).
        generated = {c.name for c in load.source.columns if c.generated is not None}
        self.names = [n for n in load.columns if n not in generated]
        # The columns an update may set: a GENERATED ALWAYS identity column only ever
        # takes its default (the source could not have changed it either).
        always = {c.name for c in load.target.columns if c.identity == "always"}
        self.settable = [n for n in self.names if n not in always]
        self.types = {c.name: c.type for c in load.target.columns}
        self.bare = {c.name: cast_target(c.bare_type or c.type) for c in load.target.columns}
        # The primary key's equality operators, schema-qualified (an extension's type
        # has its operator in its own schema, which the function's search_path lacks).
        self.equals = equals or {}

    def equal(self, left: str, right: str, name: str) -> str:
        return f"{left} {self.equals.get(name, 'OPERATOR(pg_catalog.=)')} {right}"

    def record(self, key: str, alias: str, line: str = "ch") -> str:
        """The object ``key`` of the line ``line`` (a json value) as a typed record named
        ``alias``."""
        if not self.names:  # a table without columns: nothing to read
            return f"(SELECT 1 AS asyncsnap_nothing) AS {alias}"
        declared = ", ".join(
            f"{quote_ident(n)} pg_catalog.text"
            if n in self.load.text_columns
            else f"{quote_ident(n)} {self.types[n]}"
            for n in self.names
        )
        return f"pg_catalog.json_to_record({line}->{_literal(key)}) AS {alias}({declared})"

    def value(self, alias: str, name: str) -> str:
        col = f"{alias}.{quote_ident(name)}"
        return f"{col}::{self.bare[name]}" if name in self.load.text_columns else col


def _find_row(load: TableLoad, columns: _Columns, target: str) -> str:
    """PL/pgSQL that sets ``found_table`` and ``found_row`` to the row a change's key
    names, or raises: by the primary key's equality (its index finds the row) when the
    key holds the primary key's columns; else (REPLICA IDENTITY FULL, or an identity
    index that is not the primary key) the first row whose columns named in the key have
    the key's values, compared as their text (exact, and for every type, also those
    without an equality operator)."""
    key = columns.record("key", "k")
    by_text = " AND ".join(
        f"(NOT (ch->'key')::pg_catalog.jsonb ? {_literal(c)} OR "
        f"t.{quote_ident(c)}::pg_catalog.text IS NOT DISTINCT FROM "
        f"({columns.value('k', c)})::pg_catalog.text)"
        for c in columns.names
    )
    text_search = (
        f"SELECT t.tableoid, t.ctid INTO found_table, found_row FROM {target} t, {key} "
        f"WHERE {by_text or 'true'} LIMIT 1;"
    )
    primary = list(load.source.primary_key)
    if not primary or not all(c in columns.names for c in primary):
        search = text_search
    else:
        by_key = " AND ".join(
            columns.equal(f"t.{quote_ident(c)}", columns.value("k", c), c) for c in primary
        )
        search = (
            f"IF (ch->'key')::pg_catalog.jsonb ?& ARRAY[{', '.join(map(_literal, primary))}]"
            f" THEN SELECT t.tableoid, t.ctid INTO found_table, found_row FROM {target} t, "
            f"{key} WHERE {by_key}; ELSE {text_search} END IF;"
        )
    return (
        f"found_row := NULL; {search} IF found_row IS NULL THEN RAISE EXCEPTION "
        "'% of %: no row with the key % (the change at % #%)', ch->>'op', "
        f"{_literal(load.source.qualified)}, ch->'key', ch->>'lsn', ch->>'n'; END IF;"
    )


def _whole_block(load: TableLoad, columns: _Columns, target: str) -> str:
    """PL/pgSQL that applies a block in one statement when that is sure to end as the
    changes one by one would, and returns: a block of inserts only (one INSERT, in the
    lines' order), or of updates only, each naming its row by the primary key, none
    changing it, none leaving a value unchanged, no row named twice (rows updated once
    each end the same in any order). The update is checked to find every row; when it
    does not, or a unique constraint objects to its order, it is undone (its block is a
    subtransaction) and the block goes one change at a time, which says which one."""
    names = columns.names
    if not names:
        return ""
    cols = ", ".join(quote_ident(c) for c in names)
    overriding = " OVERRIDING SYSTEM VALUE" if load.overriding else ""
    values = ", ".join(columns.value("p", c) for c in names)
    # (the lines are "c" here: "ch" is the function's variable, which SQL would confuse)
    rows = "pg_catalog.json_array_elements(changes) WITH ORDINALITY AS e(c, i), " + (
        columns.record("row", "p", "c")
    )
    later = "(upto IS NOT NULL AND (c->>'lsn')::pg_catalog.pg_lsn >= upto)"
    inserts = f"""
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.json_array_elements(changes) AS e(c)
                   WHERE c->>'op' <> 'insert' OR {later}) THEN
        INSERT INTO {_target(load)} ({cols}){overriding}
            SELECT {values} FROM {rows} ORDER BY e.i;
        RETURN pg_catalog.json_array_length(changes);
    END IF;"""
    primary = list(load.source.primary_key)
    if not primary or not all(c in names for c in primary):
        return inserts
    same_key = " AND ".join(
        f"c->'key'->>{_literal(k)} IS NOT DISTINCT FROM c->'row'->>{_literal(k)}" for k in primary
    )
    has_key = f"(c->'key')::pg_catalog.jsonb ?& ARRAY[{', '.join(map(_literal, primary))}]"
    keys = ", ".join(columns.value("p", k) for k in primary)
    match = " AND ".join(
        columns.equal(f"t.{quote_ident(k)}", f"q.{quote_ident(k)}", k) for k in primary
    )
    sets = ", ".join(f"{quote_ident(n)} = q.{quote_ident(n)}" for n in columns.settable)
    typed = ", ".join(f"{columns.value('p', n)} AS {quote_ident(n)}" for n in names)
    return (
        inserts
        + f"""
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.json_array_elements(changes) AS e(c)
                   WHERE c->>'op' <> 'update' OR {later}
                      OR pg_catalog.json_array_length(c->'unchanged') <> 0
                      OR NOT {has_key} OR NOT ({same_key}))
       AND (SELECT pg_catalog.count(DISTINCT ({keys})) FROM {rows})
           = pg_catalog.json_array_length(changes) THEN
        BEGIN
            UPDATE {target} t SET {sets} FROM (SELECT {typed} FROM {rows}) q WHERE {match};
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = pg_catalog.json_array_length(changes) THEN
                RETURN n;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'asyncsnap: a row not found';
        EXCEPTION WHEN unique_violation OR exclusion_violation OR raise_exception THEN
            NULL;  -- undone: one change at a time below
        END;
    END IF;"""
    )


def apply_function_sql(function: str, load: TableLoad, equals: dict[str, str] | None = None) -> str:
    """A PL/pgSQL function that applies a JSON array of one table's change lines in
    order, each update and delete to exactly one row (else it raises), and returns how
    many it applied. Names are quoted identifiers; no value of a line reaches SQL text.
    ``equals``: the primary key's equality operators by column (``primary_key_equality``)."""
    # A partitioned target (the restore loads a partition's rows through its root): the
    # row is found in whichever partition holds it (tableoid and ctid name it), and an
    # insert is routed.
    target = ("" if load.target.kind == "partitioned" else "ONLY ") + _target(load)
    columns = _Columns(load, equals)
    names = columns.names
    this_row = "t.tableoid = found_table AND t.ctid = found_row"
    if names:
        cols = ", ".join(quote_ident(c) for c in names)
        overriding = " OVERRIDING SYSTEM VALUE" if load.overriding else ""
        values = ", ".join(columns.value("p", c) for c in names)
        insert = (
            f"INSERT INTO {_target(load)} ({cols}){overriding} SELECT {values} "
            f"FROM {columns.record('row', 'p')};"
        )
        sets = ", ".join(
            f"{quote_ident(c)} = CASE WHEN u.skip ? {_literal(c)} THEN t.{quote_ident(c)} "
            f"ELSE {columns.value('p', c)} END"
            for c in columns.settable
        )
        update = (
            f"UPDATE {target} t SET {sets} FROM {columns.record('row', 'p')}, "
            f"(SELECT (ch->'unchanged')::pg_catalog.jsonb AS skip) u WHERE {this_row};"
        )
    else:
        insert = f"INSERT INTO {_target(load)} DEFAULT VALUES;"
        update = "NULL;  -- a table without columns: the row found is the row"
    find = _find_row(load, columns, target)
    # A column may be named like a variable: in SQL, the name is the variable's (every
    # column here is written qualified by its table's alias).
    body = f"""
#variable_conflict use_variable
DECLARE
    ch pg_catalog.json;
    found_table pg_catalog.oid;
    found_row pg_catalog.tid;
    done pg_catalog.int8 := 0;
    n pg_catalog.int8;
BEGIN
    {_whole_block(load, columns, target)}
    FOR ch IN SELECT e FROM pg_catalog.json_array_elements(changes) AS e LOOP
        IF upto IS NOT NULL AND (ch->>'lsn')::pg_catalog.pg_lsn >= upto THEN
            CONTINUE;  -- restore --to: committed at or after the point asked for
        END IF;
        CASE ch->>'op'
        WHEN 'insert' THEN
            {insert}
        WHEN 'update' THEN
            {find}
            {update}
        WHEN 'delete' THEN
            {find}
            DELETE FROM {target} t WHERE {this_row};
        WHEN 'truncate' THEN
            DELETE FROM {target};
        ELSE
            RAISE EXCEPTION 'a change of %: unknown op %',
                {_literal(load.source.qualified)}, ch->>'op';
        END CASE;
        done := done + 1;
    END LOOP;
    RETURN done;
END
"""
    # The body's quote: a tag no name in it holds (a name is the database's, maybe hostile).
    tag = "$asyncsnap$"
    while tag in body:
        tag = f"$asyncsnap_{secrets.token_hex(8)}$"
    return (
        f"CREATE FUNCTION {function}(changes pg_catalog.json, upto pg_catalog.pg_lsn)"
        " RETURNS pg_catalog.int8\n"
        f"LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS {tag}{body}{tag}"
    )


def _literal(text: str) -> str:
    """A string literal (standard_conforming_strings is on in every session of ours)."""
    return "'" + text.replace("'", "''") + "'"
