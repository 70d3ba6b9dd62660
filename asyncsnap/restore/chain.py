"""Restoring a chain (issue 25): the full backup as any restore does, then each
increment's changes applied in order (docs/format.md, "Incremental backups").

The chain is opened and checked before anything is restored (``storage.chain``).
``apply_increments`` applies each increment in one transaction of its own,
table by table, its lines in order, through a PL/pgSQL function made per table in the
session's ``pg_temp`` (``apply_function_sql``): the lines go to the server as they are
stored, a JSON array a segment, their values read with the same declared types and casts
as a restore's rows (``TableLoad``). A segment is a run of lines the client took for one
kind (``segments``): a run of inserts, of updates or of deletes by primary key is one
statement when that is sure to end as the changes one by one would (the server checks
every line; the client's guess only picks which statement is tried), else the segment
goes one change a statement. Every update and delete must find exactly its row, or the
increment fails and rolls back: a target that is not the chain's state is said, never
silently patched.

While changes are applied no trigger, rule or foreign-key action fires (the session is a
replica: ``session_replication_role``, which needs a superuser, as pg_restore's
``--disable-triggers`` does; ALWAYS and REPLICA triggers and rules are switched off for
the transaction).
"""

from __future__ import annotations

import re
import secrets

import asyncpg

from .. import _rows
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
        said_applied(increment, applied, emit)
    return total


def said_applied(increment: Backup, changes: int, emit: EventCallback) -> None:
    """An increment's changes are in the target (applied, or replayed as its rows loaded)."""
    emit(Notice(f"applied {backup_name(increment.path)}: {changes:,} changes"))


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
                for kind, segment in segments(bytes(block)):
                    applied += await _call(conn, function, segment, upto, kind)
            reader.finish()  # its hash and count match the manifest, or nothing commits
        finally:
            reader.close()
    return applied


# A run of lines of one kind shorter than this goes with its neighbours, one change a
# statement: a call of its own would cost more than it saves.
SHORTEST_RUN = 32
# How a line of each kind starts, as asyncsnap writes it (all three the same length).
_STARTS = {b'{"op":"%s"' % op.encode(): op for op in ("insert", "update", "delete")}
_START = len(next(iter(_STARTS)))


def _kind_of(line: bytes) -> str:
    return _STARTS.get(line[:_START], "mixed")


def segments(block: bytes) -> list[tuple[str, bytes]]:
    """``block``'s lines (each ending in a newline) cut into runs, in order, each with
    the kind it looks like (``insert``, ``update`` or ``delete``, by the op a line
    starts with as asyncsnap writes them), or ``mixed``: runs shorter than
    ``SHORTEST_RUN``, lines of other ops, and runs of updates that name a row twice,
    together. Only a guess that picks the statement the server tries first; the server
    checks every line."""
    kind = _kind_of(block)
    if kind != "mixed" and block.count(b"\n" + block[:_START]) == _rows.count_lines(block) - 1:
        # the common case: one kind throughout
        return [("mixed" if _names_a_row_twice(kind, block) else kind, block)]
    runs: list[tuple[str, list[bytes]]] = []
    for line in block.splitlines(keepends=True):
        kind = _kind_of(line)
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(line)
        else:
            runs.append((kind, [line]))
    out: list[tuple[str, bytes]] = []
    # The lines of neighbouring mixed runs, joined once (a concatenation each was
    # quadratic: 13 s for a 4 MiB block whose ops alternate).
    mixed: list[bytes] = []
    for kind, lines in runs:
        run = b"" if kind == "mixed" or len(lines) < SHORTEST_RUN else b"".join(lines)
        if not run or _names_a_row_twice(kind, run):
            mixed.extend(lines)
            continue
        if mixed:
            out.append(("mixed", b"".join(mixed)))
            mixed = []
        out.append((kind, run))
    if mixed:
        out.append(("mixed", b"".join(mixed)))
    return out


# A line's key as asyncsnap writes it: the fields before it hold no text of the database's.
_KEY = re.compile(rb',"key":(.*?),"row":')


def _names_a_row_twice(kind: str, run: bytes) -> bool:
    """Whether ``run`` is a run of updates that names a row twice (a counter row updated
    again and again), which cannot be one statement: it goes one change at a time
    without the server trying it first (which parsed and joined every line to find
    out). Keys written alike are equal; any other way to name a row twice is left to the
    server's check."""
    if kind != "update":
        return False
    keys = _KEY.findall(run)
    return len(keys) != _rows.count_lines(run) or len(set(keys)) != len(keys)


async def _call(
    conn: asyncpg.Connection, function: str, lines: bytes, upto: int | None, kind: str
) -> int:
    """Change lines applied: sent as a JSON array of them."""
    array = b"[" + lines.rstrip(b"\n").replace(b"\n", b",") + b"]"
    try:
        done: int = await conn.fetchval(
            f"SELECT {function}($1::pg_catalog.json, $2::pg_catalog.pg_lsn, $3)",
            array,
            upto,
            kind,
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

    def record(self, source: str, alias: str) -> str:
        """The json object ``source`` (an SQL expression) as a typed record named
        ``alias``."""
        if not self.names:  # a table without columns: nothing to read
            return f"(SELECT 1 AS asyncsnap_nothing) AS {alias}"
        return f"pg_catalog.json_to_record({source}) AS {alias}({self.fields()})"

    def fields(self) -> str:
        """Every column a line holds, as a record or the row type declares it."""
        return ", ".join(self.declared(n) for n in self.names)

    def declared(self, name: str) -> str:
        """The column ``name`` as a line's value is read: its type, or text for the
        columns restored from their text form (``value`` casts those)."""
        kind = "pg_catalog.text" if name in self.load.text_columns else self.types[name]
        return f"{quote_ident(name)} {kind}"

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
    key = columns.record("line_key", "k")
    by_text = " AND ".join(
        f"(NOT line_keys ? {_literal(c)} OR "
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
            f"IF line_keys ?& ARRAY[{', '.join(map(_literal, primary))}]"
            f" THEN SELECT t.tableoid, t.ctid INTO found_table, found_row FROM {target} t, "
            f"{key} WHERE {by_key}; ELSE {text_search} END IF;"
        )
    # (the key read from the line once: each ``->`` on a json value parses it again)
    return (
        "found_row := NULL; line_key := ch->'key'; line_keys := line_key::pg_catalog.jsonb; "
        f"{search} IF found_row IS NULL THEN RAISE EXCEPTION "
        "'% of %: no row with the key % (the change at % #%)', ch->>'op', "
        f"{_literal(load.source.qualified)}, line_key, line_lsn, ch->>'n'; END IF;"
    )


def _one_statement(load: TableLoad, columns: _Columns, target: str, row_type: str) -> str:
    """PL/pgSQL that applies a segment the client took for a run of one kind (``kind``)
    in one statement, and returns, when that is sure to end as the changes one by one
    would; else it falls through to the loop, which goes one change at a time and says
    which one fails. The server checks every line: the client's guess only picks which
    statement is tried.

    - inserts: every line an insert with a row, none past ``upto``: one INSERT, in the
      lines' order.
    - updates (a primary key the lines hold, and the target's own primary key on the
      same columns, so that a key finds one row at most): each line an update whose key
      and new row name the same row by the primary key's equality (the key did not
      change), the TOASTed values it did not send kept as the loop keeps them. Rows
      updated once each end the same in any order: the statement must update exactly as
      many rows as there are lines, so a row not found, or named twice, or a line that
      is not such an update, undoes it, as does a unique constraint objecting to its
      order.
    - deletes (the same key): each line a delete; exactly as many rows deleted as lines.

    Each statement runs in a subtransaction: any error in it (a unique constraint, a line
    that is not what it starts as, a value its type refuses) undoes it, and the loop then
    applies the segment, or fails on the change that cannot apply, with its own error:
    what a segment ends as never depends on which way it went.

    A segment's lines are parsed once, each row into ``row_type`` (a composite of the
    declared types: the values as the loop reads them)."""
    if not columns.names:
        return ""
    inserts = _inserts(load, columns, row_type)
    primary = list(load.source.primary_key)
    # A row found by the key must be the only one: the target's own primary key must be
    # on exactly these columns (a target without it, restored into with --data-only,
    # could hold two rows where a line names one, covering another line's miss in the
    # count of rows changed).
    if (
        not primary
        or not all(c in columns.names for c in primary)
        or set(columns.equals) != set(primary)
    ):
        return inserts
    updates, deletes = _by_key(columns, target, row_type, primary)
    return (
        inserts
        + f"""
    IF kind = 'update' THEN{updates}
    ELSIF kind = 'delete' THEN{deletes}
    END IF;"""
    )


# Which lines a one-statement path applies: those the loop would apply.
_LATER = "(upto IS NOT NULL AND c.lsn >= upto)"
_APPLIES = f"c.lsn IS NOT NULL AND NOT {_LATER}"
_LENGTH = "pg_catalog.json_array_length(changes)"


def _inserts(load: TableLoad, columns: _Columns, row_type: str) -> str:
    """A run of inserts as one INSERT, in the lines' order, once every line is checked to
    be an insert with a row object, none past ``upto``."""
    names = columns.names
    fields = (
        'op pg_catalog.text, lsn pg_catalog.pg_lsn, key pg_catalog.json, "row" '
        f"{row_type}, unchanged pg_catalog.json"
    )
    in_order = (
        f"ROWS FROM (pg_catalog.json_to_recordset(changes) AS ({fields})) WITH ORDINALITY"
        ' AS c(op, lsn, key, "row", unchanged, i)'
    )
    overriding = " OVERRIDING SYSTEM VALUE" if load.overriding else ""
    return f"""
    IF kind = 'insert' THEN
        BEGIN
            IF NOT EXISTS (
                    SELECT 1 FROM pg_catalog.json_to_recordset(changes) AS c(op pg_catalog.text,
                        lsn pg_catalog.pg_lsn, "row" pg_catalog.json)
                    WHERE c.op IS DISTINCT FROM 'insert' OR c.lsn IS NULL OR {_LATER}
                       OR pg_catalog.json_typeof(c."row") IS DISTINCT FROM 'object') THEN
                INSERT INTO {_target(load)} ({", ".join(quote_ident(c) for c in names)})
                    {overriding}
                    SELECT {", ".join(columns.value('(c."row")', c) for c in names)}
                    FROM {in_order} ORDER BY c.i;
                RETURN {_LENGTH};
            END IF;
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- undone: one change at a time below, which says what fails
        END;
    END IF;"""


def _by_key(columns: _Columns, target: str, row_type: str, primary: list[str]) -> tuple[str, str]:
    """A run of updates, and one of deletes, by the primary key ``primary``, each as one
    statement that must change exactly one row a line."""
    # The key's primary-key columns, typed as the row's (a key without them gives nulls,
    # which match no row: the statement is then undone).
    key = (
        "pg_catalog.json_to_record(c.key) AS k("
        + ", ".join(columns.declared(k) for k in primary)
        + ")"
    )
    # An update's row read from its json, which must be an object: parsed as a column
    # of the row type, a string would be read as a record literal, where the loop refuses
    # the line ("has no row"); json_populate_record fails on it, and the loop then says so.
    updated = (
        "pg_catalog.json_to_recordset(changes) AS c(op pg_catalog.text, lsn pg_catalog.pg_lsn,"
        ' key pg_catalog.json, "row" pg_catalog.json, unchanged pg_catalog.json), '
        f'pg_catalog.json_populate_record(NULL::{row_type}, c."row") AS r'
    )
    deleted = (
        "pg_catalog.json_to_recordset(changes) AS c(op pg_catalog.text, lsn pg_catalog.pg_lsn,"
        " key pg_catalog.json)"
    )
    same_row = " AND ".join(
        columns.equal(columns.value("k", k), columns.value("r", k), k) for k in primary
    )
    match = " AND ".join(
        columns.equal(f"t.{quote_ident(k)}", f"q.{quote_ident(k)}", k) for k in primary
    )
    # A column the source did not send (an unchanged TOASTed value) keeps the target's.
    sets = ", ".join(
        f"{quote_ident(n)} = CASE WHEN q.asyncsnap_skip OPERATOR(pg_catalog.?) {_literal(n)}"
        f" THEN t.{quote_ident(n)} ELSE q.{quote_ident(n)} END"
        for n in columns.settable
    )
    typed = ", ".join(f"{columns.value('r', n)} AS {quote_ident(n)}" for n in columns.names)
    keys = ", ".join(f"{columns.value('k', k)} AS {quote_ident(k)}" for k in primary)
    updates = _undone_unless_one_row_a_line(
        f"UPDATE {target} t SET {sets} FROM (SELECT {typed}, "
        "c.unchanged::pg_catalog.jsonb AS asyncsnap_skip "
        f"FROM {updated}, {key} WHERE c.op = 'update' AND {_APPLIES} AND {same_row}) q "
        f"WHERE {match};"
    )
    deletes = _undone_unless_one_row_a_line(
        f"DELETE FROM {target} t USING (SELECT {keys} FROM {deleted}, {key} "
        f"WHERE c.op = 'delete' AND {_APPLIES}) q WHERE {match};"
    )
    return updates, deletes


def _undone_unless_one_row_a_line(statement: str) -> str:
    return f"""
        BEGIN
            {statement}
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = {_LENGTH} THEN
                RETURN n;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'asyncsnap: not one row a line';
        EXCEPTION WHEN OTHERS THEN  -- (never a cancel: OTHERS leaves query_canceled out)
            NULL;  -- undone: one change at a time below, which says what fails
        END;"""


def apply_function_sql(function: str, load: TableLoad, equals: dict[str, str] | None = None) -> str:
    """A PL/pgSQL function (and the row type it reads rows into, ``{function}_row``)
    that applies a JSON array of one table's change lines in order, each update and
    delete to exactly one row (else it raises), and returns how many it applied; its
    ``kind`` is what the client took the lines for (``segments``). Names are quoted
    identifiers; no value of a line reaches SQL text. ``equals``: the primary key's
    equality operators by column (``primary_key_equality``)."""
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
            f"FROM {columns.record('line_row', 'p')};"
        )
        sets = ", ".join(
            f"{quote_ident(c)} = CASE WHEN u.skip ? {_literal(c)} THEN t.{quote_ident(c)} "
            f"ELSE {columns.value('p', c)} END"
            for c in columns.settable
        )
        update = (
            f"UPDATE {target} t SET {sets} FROM {columns.record('line_row', 'p')}, "
            f"(SELECT (ch->'unchanged')::pg_catalog.jsonb AS skip) u WHERE {this_row};"
        )
    else:
        insert = f"INSERT INTO {_target(load)} DEFAULT VALUES;"
        update = "NULL;  -- a table without columns: the row found is the row"
    find = _find_row(load, columns, target)
    qualified = _literal(load.source.qualified)
    # A line must be what the format says it is: an op it names, never a guess from
    # what is missing (a line without "row" is not an insert of nulls).
    has_row = (
        "line_row := ch->'row'; "
        "IF pg_catalog.json_typeof(line_row) IS DISTINCT FROM 'object' THEN RAISE EXCEPTION "
        f"'% of %: the line has no row (the change at % #%)', ch->>'op', {qualified}, "
        "line_lsn, ch->>'n'; END IF;"
    )
    row_type = f"{function}_row"
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
    line_lsn pg_catalog.text;
    line_key pg_catalog.json;
    line_keys pg_catalog.jsonb;
    line_row pg_catalog.json;
BEGIN
    {_one_statement(load, columns, target, row_type)}
    FOR ch IN SELECT e FROM pg_catalog.json_array_elements(changes) AS e LOOP
        line_lsn := ch->>'lsn';  -- (null too when the line is not an object)
        IF line_lsn IS NULL THEN
            RAISE EXCEPTION 'a change of %: not a change line with an lsn: %',
                {qualified}, pg_catalog.left(ch::pg_catalog.text, 200);
        END IF;
        IF upto IS NOT NULL AND line_lsn::pg_catalog.pg_lsn >= upto THEN
            CONTINUE;  -- restore --to: committed at or after the point asked for
        END IF;
        CASE ch->>'op'
        WHEN 'insert' THEN
            {has_row}
            {insert}
        WHEN 'update' THEN
            {has_row}
            {find}
            {update}
        WHEN 'delete' THEN
            {find}
            DELETE FROM {target} t WHERE {this_row};
        WHEN 'truncate' THEN
            DELETE FROM {target};
        ELSE
            RAISE EXCEPTION 'a change of %: unknown op %', {qualified}, ch->>'op';
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
    # The row type the one-statement paths parse a segment's rows into.
    declared = columns.fields() or "asyncsnap_nothing pg_catalog.int4"
    return (
        f"CREATE TYPE {row_type} AS ({declared});\n"
        f"CREATE FUNCTION {function}(changes pg_catalog.json, upto pg_catalog.pg_lsn,"
        " kind pg_catalog.text) RETURNS pg_catalog.int8\n"
        f"LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS {tag}{body}{tag}"
    )


def _literal(text: str) -> str:
    """A string literal (standard_conforming_strings is on in every session of ours)."""
    return "'" + text.replace("'", "''") + "'"
