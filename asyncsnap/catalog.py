"""What exists in the database, read inside the dump's snapshot.

All catalog SQL lives here. Every function takes a connection that is already inside the
coordinator's REPEATABLE READ transaction (or, on restore, a target connection), so what
it returns describes the same moment the data is read at.

Every function, type and cast is schema-qualified (``pg_catalog.format_type``,
``::pg_catalog.oid``), as in pg_dump; with the session's ``search_path = ''`` the
operators (``=``, ``IN``, ``~``) can only resolve in ``pg_catalog`` (session.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import asyncpg

from .batches import batched
from .errors import PermissionDenied, some_names

TableKind = Literal["table", "partitioned", "partition"]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """One row of pg_type, enough to decide how a column's values are encoded."""

    oid: int
    schema: str
    name: str
    typtype: str  # b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    category: str  # pg_type.typcategory; 'A' for arrays
    base_type: int  # for domains: the type underneath
    element: int  # for arrays: the element type


@dataclass(frozen=True, slots=True)
class Column:
    """A table column as the manifest describes it."""

    name: str
    type: str  # pg_catalog.format_type(atttypid, atttypmod), qualified where not pg_catalog
    type_oid: int
    not_null: bool
    generated: str | None  # "stored", "virtual" (PostgreSQL 18+) or None
    identity: str | None  # "always", "by default" or None
    type_mod: int = -1  # atttypmod, for the definition check (``Signature``)
    # format_type(atttypid, NULL): the type without its modifier. A restore casts text to
    # it, and the INSERT's assignment to the column then applies the modifier as COPY
    # would (an explicit cast to varchar(5) would cut a longer value silently).
    bare_type: str = ""
    # pg_type.typdelim of the element type, for an array (through one domain): what
    # array_in expects between elements (";" for box, "," for every other built-in type).
    array_delimiter: str = ","


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """A foreign key of a table; the referenced table may be outside the selection."""

    name: str
    columns: tuple[str, ...]
    ref_schema: str
    ref_table: str
    ref_columns: tuple[str, ...]
    deferrable: bool
    initially_deferred: bool


class SchemaQualified:
    """``qualified`` and ``key`` for anything named by a schema and a name."""

    # No __dict__ of its own: the tables and columns of a catalog, a plan and a manifest
    # are slotted (ten thousand tables: their dicts were some 10 MB of the dump's peak).
    __slots__ = ()

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        """``schema.name`` as text for people (not SQL: see ``sql_name``)."""
        return f"{self.schema}.{self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema, self.name)


@dataclass(frozen=True, slots=True)
class Table(SchemaQualified):
    """A relation that may hold rows: a table, partitioned table or partition, or a
    materialized view or foreign table (which the dump names but does not read)."""

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
    relkind: str = "r"  # pg_class.relkind: r, p, m (materialized view), f (foreign table)
    unlogged: bool = False
    populated: bool = True  # materialized views: whether REFRESH has filled it
    extension: str | None = None  # the extension it belongs to (CREATE EXTENSION makes it)
    extension_config: bool = False  # marked with pg_extension_config_dump
    row_security: bool = False  # row-level security policies apply to this role here
    filenode: int = 0  # pg_class.relfilenode, for the definition check

    @property
    def has_data(self) -> bool:
        """Partitioned parents hold no rows themselves; their partitions do."""
        return self.kind != "partitioned"

    @property
    def is_table(self) -> bool:
        """An ordinary or partitioned table (not a view, materialized view or foreign
        table): what the dump reads and restore loads."""
        return self.relkind in ("r", "p")


@dataclass(frozen=True)
class Sequence(SchemaQualified):
    """A sequence and its state; ``table``/``column`` name the column that owns it or
    uses it in its default, ``None`` for a standalone sequence."""

    schema: str
    name: str
    table: tuple[str, str] | None
    column: str | None
    last_value: int
    is_called: bool


@dataclass(frozen=True)
class SequenceInfo(SchemaQualified):
    """A sequence as listed from the catalog, before its state is read."""

    oid: int
    schema: str
    name: str
    owner_table: int | None  # the table oid whose column owns it (serial, identity)
    owner_column: str | None
    readable: bool
    extension: str | None


@dataclass(frozen=True)
class ServerInfo:
    version: str  # server_version, e.g. "15.18 (Debian ...)"
    version_num: int  # server_version_num, e.g. 150018
    database: str
    user: str
    host: str | None  # None over a Unix socket
    port: int | None
    superuser: bool = False
    bypass_rls: bool = False
    encoding: str = "UTF8"  # the database's, for restore --create
    lc_collate: str = ""
    lc_ctype: str = ""


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
        SELECT pg_catalog.current_setting('server_version') AS version,
               pg_catalog.current_setting('server_version_num')::pg_catalog.int4
                   AS version_num,
               pg_catalog.current_database() AS database,
               current_user AS "user",
               pg_catalog.host(pg_catalog.inet_server_addr()) AS host,
               pg_catalog.inet_server_port() AS port,
               r.rolsuper AS superuser, r.rolbypassrls AS bypass_rls,
               pg_catalog.pg_encoding_to_char(d.encoding)::pg_catalog.text AS encoding,
               d.datcollate::pg_catalog.text AS lc_collate,
               d.datctype::pg_catalog.text AS lc_ctype
        FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
        WHERE r.rolname OPERATOR(pg_catalog.=) current_user
          AND d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
        """
    )
    assert row is not None
    return ServerInfo(**dict(row))


_TABLES_SQL = """
SELECT c.oid,
       n.nspname AS schema,
       c.relname AS name,
       c.relkind::pg_catalog.text AS relkind,
       c.relispartition,
       c.relpersistence = 'u' AS unlogged,
       c.relispopulated AS populated,
       c.relfilenode::pg_catalog.int8 AS filenode,
       pn.nspname AS parent_schema,
       pc.relname AS parent_name,
       greatest(c.reltuples, 0)::pg_catalog.int8 AS est_rows,
       -- relpages, not pg_table_size(): size functions lock the table, and this runs
       -- before our lock_timeout-bounded LOCKs (it would wait behind a migration).
       (c.relpages::pg_catalog.int8 + coalesce(tc.relpages, 0))
           * pg_catalog.current_setting('block_size')::pg_catalog.int8 AS table_bytes,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS readable,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned,
       x.extname AS extension,
       coalesce(c.oid = ANY (x.extconfig), false) AS extension_config
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class tc ON tc.oid = c.reltoastrelid
LEFT JOIN pg_catalog.pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
-- a relation that belongs to an extension is the extension's to recreate (as pg_dump)
LEFT JOIN pg_catalog.pg_depend d
       ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
LEFT JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid
WHERE c.relkind IN ('r', 'p', 'm', 'f')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_'
ORDER BY n.nspname, c.relname
"""


async def list_tables(conn: asyncpg.Connection, server: ServerInfo | None = None) -> list[Table]:
    """Every user table, partition, materialized view and foreign table (without columns:
    see ``describe_tables``). With ``server`` (the role's attributes), ``row_security``
    says whether row-level security policies would apply to this role's reads."""
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
        # Who bypasses policies: superusers, BYPASSRLS roles, and the owner unless FORCE.
        bypass = server is not None and (server.superuser or server.bypass_rls)
        filtered = r["rls_enabled"] and not bypass and (r["rls_forced"] or not r["owned"])
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
                relkind=r["relkind"],
                unlogged=r["unlogged"],
                populated=r["populated"],
                extension=r["extension"],
                extension_config=r["extension_config"],
                row_security=filtered,
                filenode=r["filenode"],
            )
        )
    return tables


_COLUMNS_SQL = """
SELECT a.attrelid AS oid, a.attname AS name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       pg_catalog.format_type(a.atttypid, NULL) AS bare_type,
       a.atttypid AS type_oid, a.atttypmod AS type_mod, a.attnotnull AS not_null,
       a.attgenerated::pg_catalog.text AS generated, a.attidentity::pg_catalog.text AS identity,
       (SELECT e.typdelim::pg_catalog.text
        FROM pg_catalog.pg_type t
        LEFT JOIN pg_catalog.pg_type d ON d.oid = t.typbasetype
        JOIN pg_catalog.pg_type e ON e.oid = CASE WHEN t.typtype = 'd' THEN d.typelem
                                                  ELSE t.typelem END
        WHERE t.oid = a.atttypid) AS array_delimiter
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY ($1::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_CONSTRAINTS_SQL = """
SELECT con.conrelid AS oid, con.conname AS name, con.contype::pg_catalog.text AS kind,
       ARRAY(SELECT a.attname
             FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.ord) AS columns,
       rn.nspname AS ref_schema, rc.relname AS ref_table,
       ARRAY(SELECT a.attname
             FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY k(num, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.ord) AS ref_columns,
       con.condeferrable AS deferrable, con.condeferred AS initially_deferred
FROM pg_catalog.pg_constraint con
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.conrelid = ANY ($1::pg_catalog.oid[]) AND con.contype IN ('p', 'f')
  -- on partitions, a foreign key inherited from the parent is the parent's
  AND (con.contype = 'p' OR con.conparentid = 0)
ORDER BY con.conrelid, con.conname
"""

_SIZES_SQL = """
SELECT c.oid, pg_catalog.pg_table_size(c.oid) AS table_bytes,
       pg_catalog.pg_relation_size(c.oid, 'main')
           / pg_catalog.current_setting('block_size')::pg_catalog.int8 AS heap_pages
FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1::pg_catalog.oid[])
"""

_TYPES_SQL = """
SELECT t.oid, n.nspname AS schema, t.typname AS name,
       t.typtype::pg_catalog.text AS typtype, t.typcategory::pg_catalog.text AS category,
       t.typbasetype AS base_type, t.typelem AS element
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
"""

_GENERATED = {"s": "stored", "v": "virtual"}  # attgenerated; 'v' is PostgreSQL 18+
_IDENTITY = {"a": "always", "d": "by default"}


# Tables described per query: the rows of one query are all in memory at once (asyncpg's
# fetch), and for ten thousand tables the columns' rows were 15 MB that the process kept
# as its high-water mark; a thousand tables' are a tenth of that, in ten round trips.
DESCRIBE_BATCH = 1000


async def describe_tables(conn: asyncpg.Connection, tables: list[Table]) -> list[Table]:
    """Return ``tables`` with columns, keys and exact sizes filled in (set-based queries,
    ``DESCRIBE_BATCH`` tables a query).

    Call it after the tables are locked: the size functions take a lock of their own.
    """
    sizes: dict[int, tuple[int, int]] = {}
    columns: dict[int, list[Column]] = {}
    pkeys: dict[int, tuple[str, ...]] = {}
    fkeys: dict[int, list[ForeignKey]] = {}
    # One string object for each name or type spelled the same: ten thousand tables'
    # columns are mostly "id", "integer", "text" (each row of a result brings its own).
    shared: dict[str, str] = {}
    for batch in batched([t.oid for t in tables], DESCRIBE_BATCH):
        oids = list(batch)
        for r in await conn.fetch(_SIZES_SQL, oids):
            sizes[r["oid"]] = (r["table_bytes"], r["heap_pages"])
        for r in await conn.fetch(_COLUMNS_SQL, oids):
            columns.setdefault(r["oid"], []).append(
                Column(
                    name=shared.setdefault(r["name"], r["name"]),
                    type=shared.setdefault(r["type"], r["type"]),
                    type_oid=r["type_oid"],
                    not_null=r["not_null"],
                    generated=_GENERATED.get(r["generated"]),
                    identity=_IDENTITY.get(r["identity"]),
                    type_mod=r["type_mod"],
                    bare_type=shared.setdefault(r["bare_type"], r["bare_type"]),
                    array_delimiter=r["array_delimiter"] or ",",
                )
            )
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


# The types the columns of some tables use, and the types those are made of (a domain's
# base type, an array's element, to any depth): what deciding their encodings reads.
_USED_TYPES_SQL = (
    """
WITH RECURSIVE used(oid) AS (
    SELECT a.atttypid FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = ANY ($1::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT v.part FROM used u JOIN pg_catalog.pg_type t ON t.oid = u.oid,
           LATERAL (VALUES (t.typbasetype), (t.typelem)) AS v(part)
    WHERE v.part <> 0
)
"""
    + _TYPES_SQL
    + "WHERE t.oid IN (SELECT used.oid FROM used)"
)


async def read_types(
    conn: asyncpg.Connection, tables: list[int] | None = None
) -> dict[int, TypeInfo]:
    """The catalog's types by oid; with ``tables`` (oids), only those their columns need
    (a database of ten thousand tables has twice as many row and array types, which a
    dump never reads)."""
    if tables is None:
        rows = await conn.fetch(_TYPES_SQL)
    else:
        rows = await conn.fetch(_USED_TYPES_SQL, tables)
    return {r["oid"]: TypeInfo(**dict(r)) for r in rows}


# What a table's definition and storage are, compared between the snapshot and the
# present once the locks are granted (``changed_since_snapshot``).
_SIGNATURE_SQL = """
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relfilenode::pg_catalog.int8 AS filenode,
       ARRAY(SELECT a.attname::pg_catalog.text || ' ' || a.atttypid::pg_catalog.text || ' '
                    || a.atttypmod::pg_catalog.text || ' ' || a.attgenerated::pg_catalog.text
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY ($1::pg_catalog.oid[])
"""


@dataclass(frozen=True)
class Signature:
    """What must not change between the snapshot and the lock: name, storage, columns."""

    schema: str
    name: str
    filenode: int
    columns: tuple[str, ...]


async def read_signatures(conn: asyncpg.Connection, oids: list[int]) -> dict[int, Signature]:
    """The signature of each table by oid, as ``conn`` sees the catalog (in the snapshot
    on the coordinator, the present on any other connection). Dropped tables are absent."""
    return {
        r["oid"]: Signature(r["schema"], r["name"], r["filenode"], tuple(r["columns"]))
        for r in await conn.fetch(_SIGNATURE_SQL, oids)
    }


# What PostgreSQL sizes its shared lock table by: max_locks_per_transaction for each
# server process and prepared transaction that can hold locks (lock.c, MaxBackends).
_LOCK_CAPACITY_SQL = """
SELECT pg_catalog.current_setting('max_locks_per_transaction')::int
       * (pg_catalog.current_setting('max_connections')::int
          + pg_catalog.current_setting('max_prepared_transactions')::int
          + pg_catalog.current_setting('autovacuum_max_workers')::int + 1
          + pg_catalog.current_setting('max_worker_processes')::int
          + pg_catalog.current_setting('max_wal_senders')::int) AS capacity,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i
         WHERE i.indrelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])) AS indexes
"""


async def read_lock_capacity(conn: asyncpg.Connection, oids: list[int]) -> tuple[int, int]:
    """How many locks the server's lock table is sized for, all sessions together, and
    how many indexes the tables ``oids`` have (pg_dump's catalog functions lock them too).
    The table can borrow a little spare shared memory beyond its size: a floor, not the
    exact limit."""
    row = await conn.fetchrow(_LOCK_CAPACITY_SQL, oids)
    assert row is not None
    return row["capacity"], row["indexes"]


def describe_change(before: Signature, after: Signature | None) -> str:
    """How a table changed between the snapshot and the lock, for a message."""
    if after is None:
        return "dropped"
    if (before.schema, before.name) != (after.schema, after.name):
        return f"renamed to {after.schema}.{after.name}"
    if before.columns != after.columns:
        gone = [c.split(" ")[0] for c in before.columns if c not in after.columns]
        new = [c.split(" ")[0] for c in after.columns if c not in before.columns]
        parts = [f"{', '.join(new)} added"] if new else []
        parts += [f"{', '.join(gone)} gone"] if gone else []
        return "columns changed: " + ("; ".join(parts) or "reordered")
    return "rewritten or truncated (new storage)"


_SEQUENCES_SQL = """
SELECT s.oid, n.nspname AS schema, s.relname AS name,
       own.refobjid AS owner_table, a.attname AS owner_column,
       pg_catalog.has_sequence_privilege(s.oid, 'SELECT') AS readable,
       x.extname AS extension
FROM pg_catalog.pg_class s
JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
-- the column that owns it: serial and OWNED BY ('a'), identity ('i')
LEFT JOIN pg_catalog.pg_depend own
       ON own.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND own.objid = s.oid
      AND own.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND own.deptype IN ('a', 'i')
LEFT JOIN pg_catalog.pg_attribute a
       ON a.attrelid = own.refobjid AND a.attnum = own.refobjsubid
LEFT JOIN pg_catalog.pg_depend d
       ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = s.oid
      AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
LEFT JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid
WHERE s.relkind = 'S'
  AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_'
ORDER BY n.nspname, s.relname
"""

# Sequences named in a column default (nextval('some_seq')) of the given tables.
_DEFAULT_SEQUENCES_SQL = """
SELECT DISTINCT ad.adrelid AS table_oid, a.attname AS column, d.refobjid AS oid
FROM pg_catalog.pg_attrdef ad
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
WHERE ad.adrelid = ANY ($1::pg_catalog.oid[])
ORDER BY 1, 2
"""


async def list_sequences(conn: asyncpg.Connection) -> list[SequenceInfo]:
    """Every sequence outside the system schemas, with what owns it."""
    # The query's columns are the dataclass's fields, by name.
    return [SequenceInfo(**dict(r)) for r in await conn.fetch(_SEQUENCES_SQL)]


async def default_sequences(
    conn: asyncpg.Connection, table_oids: list[int]
) -> dict[int, tuple[int, str]]:
    """Sequence oid -> (table oid, column) for sequences used in the tables' defaults."""
    found: dict[int, tuple[int, str]] = {}
    for r in await conn.fetch(_DEFAULT_SEQUENCES_SQL, table_oids):
        found.setdefault(r["oid"], (r["table_oid"], r["column"]))
    return found


def require_readable_sequences(sequences: list[SequenceInfo]) -> None:
    """Fail naming every sequence the role may not read.

    :raises PermissionDenied: if any of ``sequences`` is unreadable.
    """
    unreadable = [s.qualified for s in sequences if not s.readable]
    if unreadable:
        raise PermissionDenied(
            f"permission denied for sequence {unreadable[0]}"
            if len(unreadable) == 1
            else f"permission denied for sequences {some_names(unreadable)}",
            hint="GRANT SELECT ON SEQUENCE to this role, leave it out with -T, "
            "or --skip-unreadable",
        )


# Sequences are read in batches of this many per query (one round trip each).
_SEQUENCE_BATCH = 200


async def read_sequence_states(
    conn: asyncpg.Connection, sequences: list[SequenceInfo]
) -> dict[int, tuple[int, bool]]:
    """``(last_value, is_called)`` of each sequence, by oid.

    Sequences are not transactional: the value read is the current one, which is never
    behind any value used by a row in the snapshot (those were taken before it). Restoring
    it is therefore safe, as with pg_dump.

    Reading a sequence locks it (ACCESS SHARE) until the transaction ends; in the dump's
    snapshot transaction, which already holds a lock per table, ten thousand sequences
    would fill the server's lock table ("out of shared memory" at the default
    ``max_locks_per_transaction``, where pg_dump fails too). Each batch is read in a
    savepoint that is rolled back, which gives its locks back (the values are not
    transactional, so nothing read is undone); outside a transaction block a batch is
    its own transaction.
    """
    states: dict[int, tuple[int, bool]] = {}
    for batch in batched(sequences, _SEQUENCE_BATCH):
        query = " UNION ALL ".join(
            f"SELECT {i}::pg_catalog.int4 AS i, last_value, is_called "
            f"FROM {sql_name(s.schema, s.name)}"
            for i, s in enumerate(batch)
        )
        if conn.is_in_transaction():
            # (raw SQL: the dump's snapshot transaction was begun with BEGIN, which
            # asyncpg's savepoints refuse to nest in); a failed read fails the caller's
            # transaction as before
            await conn.execute("SAVEPOINT asyncsnap_sequences")
            rows = await conn.fetch(query)
            await conn.execute(
                "ROLLBACK TO SAVEPOINT asyncsnap_sequences; RELEASE asyncsnap_sequences"
            )
        else:
            rows = await conn.fetch(query)
        for r in rows:
            seq = batch[r["i"]]
            states[seq.oid] = (r["last_value"], r["is_called"])
    return states


# Which relations each view and materialized view reads (through its rewrite rule).
_VIEW_DEPENDENCIES_SQL = """
SELECT DISTINCT vn.nspname AS view_schema, v.relname AS view_name,
       un.nspname AS used_schema, u.relname AS used_name
FROM pg_catalog.pg_class v
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
 AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> v.oid
JOIN pg_catalog.pg_class u ON u.oid = d.refobjid
JOIN pg_catalog.pg_namespace un ON un.oid = u.relnamespace
WHERE v.relkind IN ('v', 'm')
"""


async def view_dependencies(
    conn: asyncpg.Connection,
) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """``(view, relation it reads)`` for every view and materialized view."""
    return [
        ((r["view_schema"], r["view_name"]), (r["used_schema"], r["used_name"]))
        for r in await conn.fetch(_VIEW_DEPENDENCIES_SQL)
    ]


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
    sizes = " + ".join(
        f"coalesce(pg_catalog.pg_column_size({quote_ident(c.name)}), 0)" for c in table.columns
    )
    rows = await conn.fetch(
        "SELECT (ctid::pg_catalog.text::pg_catalog.point)[0]::pg_catalog.int8 AS page, "
        f"pg_catalog.sum(24 + {sizes})::pg_catalog.int8 AS weight "
        f"FROM ONLY {sql_name(table.schema, table.name)} "
        f"TABLESAMPLE pg_catalog.system ({percent:.6f}) REPEATABLE (0) GROUP BY 1"
    )
    return [(r["page"], r["weight"]) for r in rows]


# What a restore asks of its target ----------------------------------------------------
# (asyncsnap.restore: the target's checks, the loads, --clean, --create)


async def existing_tables(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> list[str]:
    """``schema.name`` of those of ``keys`` that exist as tables (ordinary or
    partitioned), in name order."""
    if not keys:
        return []
    rows = await conn.fetch(
        "SELECT n.nspname AS schema, c.relname AS name FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
        "JOIN ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), "
        "pg_catalog.unnest($2::pg_catalog.text[])) AS k(s, r) "
        "ON k.s OPERATOR(pg_catalog.=) n.nspname::pg_catalog.text "
        "AND k.r OPERATOR(pg_catalog.=) c.relname::pg_catalog.text "
        "WHERE c.relkind IN ('r', 'p') ORDER BY 1, 2",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return [f"{r['schema']}.{r['name']}" for r in rows]


@dataclass(frozen=True)
class Reference:
    """A foreign key (``name``, of table ``referencing``) to ``referenced``; tables as
    ``regclass`` prints them."""

    name: str
    referencing: str
    referenced: str
    inside: bool = True  # the referencing table is one of those asked about


async def references_to(conn: asyncpg.Connection, names: list[str]) -> list[Reference]:
    """The foreign keys (not a partition's inherited copy) that reference one of the
    tables ``names`` (``sql_name`` text; a name that does not resolve is left out), in
    order of the referencing table and the key's name."""
    rows = await conn.fetch(
        "SELECT con.conname AS name, con.conrelid AS oid, "
        "con.conrelid::pg_catalog.regclass::pg_catalog.text AS referencing, "
        "con.confrelid::pg_catalog.regclass::pg_catalog.text AS referenced, "
        "con.conrelid = ANY (k.oids) AS inside "
        "FROM pg_catalog.pg_constraint con, "
        "(SELECT pg_catalog.array_agg(pg_catalog.to_regclass(n)::pg_catalog.oid) "
        "        FILTER (WHERE pg_catalog.to_regclass(n) IS NOT NULL) AS oids "
        " FROM pg_catalog.unnest($1::pg_catalog.text[]) AS n) AS k "
        "WHERE con.contype OPERATOR(pg_catalog.=) 'f' AND con.conparentid = 0 "
        "AND con.confrelid = ANY (k.oids) ORDER BY 3, 1",
        names,
    )
    return [Reference(r["name"], r["referencing"], r["referenced"], r["inside"]) for r in rows]


async def references_from_outside(conn: asyncpg.Connection, oids: list[int]) -> list[Reference]:
    """The tables outside ``oids`` with a foreign key to one of them, one per pair
    (``name`` empty), in order."""
    rows = await conn.fetch(
        "SELECT DISTINCT con.conrelid::pg_catalog.regclass::pg_catalog.text AS referencing, "
        "con.confrelid::pg_catalog.regclass::pg_catalog.text AS referenced "
        "FROM pg_catalog.pg_constraint con WHERE con.contype OPERATOR(pg_catalog.=) 'f' "
        "AND con.confrelid = ANY ($1::pg_catalog.oid[]) "
        "AND NOT con.conrelid = ANY ($1::pg_catalog.oid[]) ORDER BY 1, 2",
        oids,
    )
    return [Reference("", r["referencing"], r["referenced"], inside=False) for r in rows]


_FK_DEFS_SQL = """
SELECT con.conname AS name, pg_catalog.pg_get_constraintdef(con.oid) AS definition
FROM pg_catalog.pg_constraint con WHERE con.conrelid = $1 AND con.contype = 'f'
"""


async def foreign_key_definitions(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    """Name -> definition (``pg_get_constraintdef``) of each foreign key of ``table``
    (``sql_name`` text).

    :raises asyncpg.PostgresError: when ``table`` does not exist.
    """
    oid = await conn.fetchval("SELECT $1::pg_catalog.regclass::pg_catalog.oid", table)
    return {r["name"]: r["definition"] for r in await conn.fetch(_FK_DEFS_SQL, oid)}


async def current_oids_and_rows(
    conn: asyncpg.Connection, names: list[str]
) -> tuple[list[int | None], list[bool]]:
    """The oid each of ``names`` (``sql_name`` text, which must all exist) resolves to
    now, and whether each has a row, in order, in one query."""
    row = await conn.fetchrow(
        "SELECT (SELECT pg_catalog.array_agg(pg_catalog.to_regclass(n)::pg_catalog.oid "
        "ORDER BY o) FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(n, o)), "
        "ARRAY[" + ", ".join(f"EXISTS (SELECT 1 FROM ONLY {n})" for n in names) + "]",
        names,
    )
    assert row is not None
    return list(row[0] or []), list(row[1])


async def relation_exists(conn: asyncpg.Connection, name: str) -> bool:
    """Whether ``name`` (``sql_name`` text) is a relation here."""
    return bool(await conn.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", name))


_SWITCHES_SQL = """
SELECT t.tgrelid AS oid, 'trigger' AS kind, t.tgname AS name,
       t.tgenabled::pg_catalog.text AS state
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = ANY ($1::pg_catalog.oid[]) AND NOT t.tgisinternal
UNION ALL
SELECT r.ev_class, 'rule', r.rulename, r.ev_enabled::pg_catalog.text
FROM pg_catalog.pg_rewrite r
WHERE r.ev_class = ANY ($1::pg_catalog.oid[]) AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN'
ORDER BY 1, 2, 3
"""


async def triggers_and_rules(
    conn: asyncpg.Connection, oids: list[int]
) -> dict[int, list[tuple[str, str, str]]]:
    """``(kind, name, state)`` of the user triggers and rules (not internal triggers, not
    a view's ``_RETURN``) of the tables ``oids``, by table oid, in name order: kind
    "trigger" or "rule", state as pg_trigger.tgenabled or pg_rewrite.ev_enabled (O, A, R
    or D)."""
    found: dict[int, list[tuple[str, str, str]]] = {}
    for r in await conn.fetch(_SWITCHES_SQL, oids):
        found.setdefault(r["oid"], []).append((r["kind"], r["name"], r["state"]))
    return found


@dataclass(frozen=True)
class TableRights:
    """What this role may do to a table."""

    owned: bool  # a member of its owner's role: may ALTER it
    can_insert: bool
    can_truncate: bool
    can_lock: bool  # UPDATE, DELETE or TRUNCATE: may LOCK it IN EXCLUSIVE MODE


_RIGHTS_SQL = """
SELECT c.oid, pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned,
       pg_catalog.has_table_privilege(c.oid, 'INSERT') AS can_insert,
       pg_catalog.has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate,
       pg_catalog.has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE') AS can_lock
FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1::pg_catalog.oid[])
"""


async def table_rights(conn: asyncpg.Connection, oids: list[int]) -> dict[int, TableRights]:
    """This role's rights on each of the tables ``oids`` that still exists, by oid."""
    return {
        r["oid"]: TableRights(r["owned"], r["can_insert"], r["can_truncate"], r["can_lock"])
        for r in await conn.fetch(_RIGHTS_SQL, oids)
    }


async def type_named(conn: asyncpg.Connection, name: str) -> str | None:
    """The type ``name`` (text from a manifest: a parameter, never SQL) as this server's
    ``format_type`` names it, without a modifier; None when it is no type here."""
    try:
        named: str | None = await conn.fetchval(
            "SELECT pg_catalog.format_type(pg_catalog.to_regtype($1), NULL)", name
        )
    except asyncpg.PostgresError:  # not a type name at all
        return None
    return named


async def casts_to(conn: asyncpg.Connection, source: str, target: str) -> bool:
    """Whether a value of type ``source`` casts to ``target`` (both as ``format_type``
    names them: SQL, never text from a backup)."""
    try:
        await conn.fetchval(f"SELECT (NULL::{source})::{target}")
    except asyncpg.PostgresError:
        return False
    return True


async def role_names(conn: asyncpg.Connection) -> set[str]:
    """Every role of the server."""
    return {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_catalog.pg_roles")}


async def current_user(conn: asyncpg.Connection) -> str:
    name: str = await conn.fetchval("SELECT current_user::pg_catalog.text")
    return name


async def roles_present(conn: asyncpg.Connection, roles: set[str]) -> set[str]:
    """Those of ``roles`` that exist on the server."""
    rows = await conn.fetch(
        "SELECT r.rolname::pg_catalog.text AS name FROM pg_catalog.pg_roles r "
        "WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
        sorted(roles),
    )
    return {r["name"] for r in rows}


async def tablespace_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tablespace t "
            "WHERE t.spcname OPERATOR(pg_catalog.=) $1)",
            name,
        )
    )


async def known_settings(conn: asyncpg.Connection, names: list[str]) -> set[str]:
    """Those of ``names`` (lower case) that are parameters of this server."""
    return {
        r["name"]
        for r in await conn.fetch(
            "SELECT s.name FROM pg_catalog.pg_settings s "
            "WHERE s.name OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
            names,
        )
    }


async def current_database(conn: asyncpg.Connection) -> str:
    name: str = await conn.fetchval("SELECT pg_catalog.current_database()::pg_catalog.text")
    return name


async def database_is_template(conn: asyncpg.Connection, name: str) -> bool | None:
    """Whether database ``name`` is a template; None when there is no such database."""
    row = await conn.fetchrow(
        "SELECT d.datistemplate FROM pg_catalog.pg_database d "
        "WHERE d.datname OPERATOR(pg_catalog.=) $1",
        name,
    )
    return None if row is None else bool(row["datistemplate"])


# Relations of a database that are its own: not the system's, not an extension's.
_RELATIONS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::pg_catalog.text AS kind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
        AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
ORDER BY 1, 2
"""


async def own_relations(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """``(schema, name, relkind)`` of every table, view, materialized view, foreign
    table and sequence of the database that is neither the system's nor an extension's."""
    return [(r["schema"], r["name"], r["kind"]) for r in await conn.fetch(_RELATIONS_SQL)]


_LOCK_HOLDER_SQL = """
SELECT l.pid, a.application_name, a.usename::pg_catalog.text AS usename,
       pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
           AS since
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
  AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                       WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1::pg_catalog.int8::pg_catalog.oid
  AND l.objid OPERATOR(pg_catalog.=) $2::pg_catalog.int8::pg_catalog.oid
  AND l.objsubid OPERATOR(pg_catalog.=) 2
LIMIT 1
"""


@dataclass(frozen=True)
class LockHolder:
    """The session that holds an advisory lock of this database."""

    pid: int
    user: str | None
    since: str | None  # its connection's start, UTC, "YYYY-MM-DD HH24:MI:SS"


async def advisory_lock_holder(conn: asyncpg.Connection, key1: int, key2: int) -> LockHolder | None:
    """Who holds the advisory lock ``(key1, key2)`` of this database, if anyone."""
    row = await conn.fetchrow(_LOCK_HOLDER_SQL, key1, key2)
    return None if row is None else LockHolder(row["pid"], row["usename"], row["since"])
