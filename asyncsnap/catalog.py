"""What exists in the database, read inside the dump's snapshot.

All catalog SQL lives here. Every function takes a connection that is already inside the
coordinator's REPEATABLE READ transaction, so what it returns describes the same moment
the data is read at.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import asyncpg

from .errors import PermissionDenied, some_names

TableKind = Literal["table", "partitioned", "partition"]


@dataclass(frozen=True)
class TypeInfo:
    """One row of pg_type, enough to decide how a column's values are encoded."""

    oid: int
    schema: str
    name: str
    typtype: str  # b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    category: str  # pg_type.typcategory; 'A' for arrays
    base_type: int  # for domains: the type underneath
    element: int  # for arrays: the element type


@dataclass(frozen=True)
class Column:
    """A table column as the manifest describes it."""

    name: str
    type: str  # format_type(atttypid, atttypmod)
    type_oid: int
    not_null: bool
    generated: str | None  # "stored" or None
    identity: str | None  # "always", "by default" or None


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key of a table; the referenced table may be outside the selection."""

    name: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]
    deferrable: bool
    initially_deferred: bool


@dataclass(frozen=True)
class Table:
    """A table, partitioned table or partition, with the estimates used for planning."""

    oid: int
    schema: str
    name: str
    kind: TableKind
    parent: tuple[str, str] | None  # (schema, name) of the partitioned parent
    est_rows: int  # pg_class.reltuples, never negative; an estimate for progress only
    table_bytes: int  # heap + TOAST, no indexes (estimate until describe_tables)
    readable: bool  # the role has SELECT on it
    heap_pages: int = 0  # main fork pages, exact once describe_tables ran (after locking)
    columns: tuple[Column, ...] = ()
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def qualified(self) -> str:
        """``schema.name`` as text for people (not SQL: see ``sql_name``)."""
        return f"{self.schema}.{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def has_data(self) -> bool:
        """Partitioned parents hold no rows themselves; their partitions do."""
        return self.kind != "partitioned"


@dataclass(frozen=True)
class Sequence:
    """A sequence owned by or used as a default of an exported table, with its state."""

    schema: str
    name: str
    table: tuple[str, str]
    column: str
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class ServerInfo:
    version: str  # server_version, e.g. "15.18 (Debian ...)"
    version_num: int  # server_version_num, e.g. 150018
    database: str
    user: str
    host: str | None  # None over a Unix socket
    port: int | None


@dataclass
class Catalog:
    server: ServerInfo
    tables: list[Table]
    types: dict[int, TypeInfo] = field(default_factory=dict)


def quote_ident(name: str) -> str:
    """Quote an identifier for SQL, always (no keyword list to keep in sync)."""
    return '"' + name.replace('"', '""') + '"'


def sql_name(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


async def read_server_info(conn: asyncpg.Connection) -> ServerInfo:
    row = await conn.fetchrow(
        """
        SELECT current_setting('server_version') AS version,
               current_setting('server_version_num')::int AS version_num,
               current_database() AS database,
               current_user AS "user",
               host(inet_server_addr()) AS host,
               inet_server_port() AS port
        """
    )
    assert row is not None
    return ServerInfo(**dict(row))


_TABLES_SQL = """
SELECT c.oid,
       n.nspname AS schema,
       c.relname AS name,
       c.relkind::text AS relkind,
       c.relispartition,
       pn.nspname AS parent_schema,
       pc.relname AS parent_name,
       greatest(c.reltuples, 0)::bigint AS est_rows,
       -- relpages, not pg_table_size(): size functions lock the table, and this runs
       -- before our lock_timeout-bounded LOCKs (it would wait behind a migration).
       (c.relpages::bigint + coalesce(tc.relpages, 0))
           * current_setting('block_size')::bigint AS table_bytes,
       has_table_privilege(c.oid, 'SELECT') AS readable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_'
  -- tables that belong to an extension are the extension's to recreate (as pg_dump)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""


async def list_tables(conn: asyncpg.Connection) -> list[Table]:
    """Every user table and partition (without columns: see ``describe_tables``)."""
    tables = []
    for r in await conn.fetch(_TABLES_SQL):
        kind: TableKind
        if r["relkind"] == "p":
            kind = "partitioned"
        elif r["relispartition"]:
            kind = "partition"
        else:
            kind = "table"
        parent = (r["parent_schema"], r["parent_name"]) if r["parent_name"] else None
        tables.append(
            Table(
                oid=r["oid"],
                schema=r["schema"],
                name=r["name"],
                kind=kind,
                parent=parent,
                est_rows=r["est_rows"],
                table_bytes=r["table_bytes"],
                readable=r["readable"],
            )
        )
    return tables


_COLUMNS_SQL = """
SELECT a.attrelid AS oid, a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       a.atttypid AS type_oid, a.attnotnull AS not_null,
       a.attgenerated::text AS generated, a.attidentity::text AS identity
FROM pg_attribute a
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_CONSTRAINTS_SQL = """
SELECT con.conrelid AS oid, con.conname AS name, con.contype::text AS kind,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.ord) AS columns,
       rn.nspname AS ref_schema, rc.relname AS ref_table,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.ord) AS ref_columns,
       con.condeferrable AS deferrable, con.condeferred AS initially_deferred
FROM pg_constraint con
LEFT JOIN pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.conrelid = ANY($1::oid[]) AND con.contype IN ('p', 'f')
  -- on partitions, a foreign key inherited from the parent is the parent's
  AND (con.contype = 'p' OR con.conparentid = 0)
ORDER BY con.conrelid, con.conname
"""

_SIZES_SQL = """
SELECT c.oid, pg_table_size(c.oid) AS table_bytes,
       pg_relation_size(c.oid, 'main') / current_setting('block_size')::bigint AS heap_pages
FROM pg_class c WHERE c.oid = ANY($1::oid[])
"""

_TYPES_SQL = """
SELECT t.oid, n.nspname AS schema, t.typname AS name,
       t.typtype::text AS typtype, t.typcategory::text AS category,
       t.typbasetype AS base_type, t.typelem AS element
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
"""


async def describe_tables(conn: asyncpg.Connection, tables: list[Table]) -> list[Table]:
    """Return ``tables`` with columns, keys and exact sizes filled in.

    Call it after the tables are locked: the size functions take a lock of their own.
    """
    oids = [t.oid for t in tables]
    sizes = {
        r["oid"]: (r["table_bytes"], r["heap_pages"]) for r in await conn.fetch(_SIZES_SQL, oids)
    }
    columns: dict[int, list[Column]] = {}
    for r in await conn.fetch(_COLUMNS_SQL, oids):
        columns.setdefault(r["oid"], []).append(
            Column(
                name=r["name"],
                type=r["type"],
                type_oid=r["type_oid"],
                not_null=r["not_null"],
                generated={"s": "stored"}.get(r["generated"]),
                identity={"a": "always", "d": "by default"}.get(r["identity"]),
            )
        )
    pkeys: dict[int, tuple[str, ...]] = {}
    fkeys: dict[int, list[ForeignKey]] = {}
    for r in await conn.fetch(_CONSTRAINTS_SQL, oids):
        if r["kind"] == "p":
            pkeys[r["oid"]] = tuple(r["columns"])
        else:
            fkeys.setdefault(r["oid"], []).append(
                ForeignKey(
                    name=r["name"],
                    columns=tuple(r["columns"]),
                    ref_schema=r["ref_schema"],
                    ref_table=r["ref_table"],
                    ref_columns=tuple(r["ref_columns"]),
                    deferrable=r["deferrable"],
                    initially_deferred=r["initially_deferred"],
                )
            )
    return [
        replace(
            t,
            columns=tuple(columns.get(t.oid, ())),
            primary_key=pkeys.get(t.oid, ()),
            foreign_keys=tuple(fkeys.get(t.oid, ())),
            table_bytes=sizes.get(t.oid, (t.table_bytes, 0))[0],
            heap_pages=sizes.get(t.oid, (0, t.heap_pages))[1],
        )
        for t in tables
    ]


async def read_types(conn: asyncpg.Connection) -> dict[int, TypeInfo]:
    return {r["oid"]: TypeInfo(**dict(r)) for r in await conn.fetch(_TYPES_SQL)}


_SEQUENCES_SQL = """
-- sequences owned by a column (serial, OWNED BY) or by an identity column
SELECT s.oid, sn.nspname AS schema, s.relname AS name,
       d.refobjid AS table_oid, a.attname AS column,
       has_sequence_privilege(s.oid, 'SELECT') AS readable
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i') AND d.refobjid = ANY($1::oid[])
UNION
-- sequences named in a column default (nextval('some_seq'))
SELECT s.oid, sn.nspname, s.relname, ad.adrelid, a.attname,
       has_sequence_privilege(s.oid, 'SELECT')
FROM pg_attrdef ad
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                AND d.refclassid = 'pg_class'::regclass
JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
WHERE ad.adrelid = ANY($1::oid[])
ORDER BY schema, name, table_oid, "column"
"""


async def read_sequences(
    conn: asyncpg.Connection, tables: list[Table], *, skip_unreadable: bool = False
) -> tuple[list[Sequence], list[tuple[str, str]]]:
    """State of every sequence tied to ``tables``, and the sequences skipped as unreadable.

    A sequence the role may not SELECT is an error naming every such sequence, unless
    ``skip_unreadable``: then it is left out and returned as ``(schema, name)``.

    Sequences are not transactional: the value read is the current one, which is never
    behind any value used by a row in the snapshot (those were taken before it). Restoring
    it is therefore safe, as with pg_dump.
    """
    by_oid = {t.oid: t for t in tables}
    found = await conn.fetch(_SEQUENCES_SQL, list(by_oid))
    unreadable = [r for r in found if not r["readable"]]
    if unreadable and not skip_unreadable:
        names = [f"{r['schema']}.{r['name']}" for r in unreadable]
        owner = by_oid[unreadable[0]["table_oid"]].qualified
        raise PermissionDenied(
            f"permission denied for sequence {names[0]} (of table {owner})"
            if len(names) == 1
            else f"permission denied for sequences {some_names(names)}",
            hint="GRANT SELECT ON SEQUENCE to this role, leave the tables out with -T, "
            "or --skip-unreadable",
        )
    result = []
    for r in found:
        if not r["readable"]:
            continue
        state = await conn.fetchrow(
            f"SELECT last_value, is_called FROM {sql_name(r['schema'], r['name'])}"
        )
        assert state is not None
        result.append(
            Sequence(
                schema=r["schema"],
                name=r["name"],
                table=by_oid[r["table_oid"]].key,
                column=r["column"],
                last_value=state["last_value"],
                is_called=state["is_called"],
            )
        )
    # One sequence can serve several columns: report it once.
    skipped = sorted({(r["schema"], r["name"]) for r in unreadable})
    return result, skipped


async def sample_page_weights(
    conn: asyncpg.Connection, table: Table, *, pages: int
) -> list[tuple[int, int]]:
    """``(page, bytes)`` for a sample of about ``pages`` of the table's heap pages: the
    stored size of every value on the page, TOASTed ones included (``pg_column_size`` reads
    the TOAST pointer, it does not fetch the value). Read in the caller's snapshot, after
    the lock. TABLESAMPLE SYSTEM reads whole pages, so the cost follows ``pages``."""
    if not table.columns or table.heap_pages == 0:
        return []
    percent = min(100.0, 100.0 * pages / table.heap_pages)
    sizes = " + ".join(f"coalesce(pg_column_size({quote_ident(c.name)}), 0)" for c in table.columns)
    rows = await conn.fetch(
        f"SELECT (ctid::text::point)[0]::bigint AS page, sum(24 + {sizes})::bigint AS weight "
        f"FROM ONLY {sql_name(table.schema, table.name)} "
        f"TABLESAMPLE SYSTEM ({percent:.6f}) REPEATABLE (0) GROUP BY 1"
    )
    return [(r["page"], r["weight"]) for r in rows]
