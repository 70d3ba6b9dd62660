"""Restore: load a backup's rows into existing tables, parents before children.

The server does the per-row work: Python reads each file in blocks of whole lines, turns a
block into one JSON array by replacing newlines with commas, and sends those bytes as
they are as a single ``json`` parameter in binary format; ``json_to_recordset`` with the
target's column types makes rows of it in one streaming parse, and columns written in their
``text`` encoding are cast from text.

Every table loads in one transaction, while its files are hashed and counted: a file
that does not match the manifest rolls its table back and fails the run. A table split at
dump time loads over several connections, one transaction per file; a failure then
leaves the files already committed (the run fails and says so; rerun with --truncate), and
--single-transaction loads everything in one transaction instead. Order comes from
the *target's* foreign keys (the schema may have moved on since the dump); cycles and
self-references are planned explicitly (see ``plan.CyclePlan``) and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

from .. import largeobjects
from ..catalog import Table, describe_tables, list_tables, quote_ident, sql_name, view_dependencies
from ..comparison import CompareResult
from ..encode import bigrows
from ..encode.rowcodec import BINARY_HEADER, BINARY_TRAILER, LoadShape
from ..errors import (
    PermissionDenied,
    RestoreFailed,
    SchemaMismatch,
    TargetNotEmpty,
    UsageError,
    VerificationFailed,
    most_telling,
    some_names,
)
from ..events import (
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    EventCallback,
    Notice,
)
from ..format import Backup, BackupFile, BackupTable
from ..patterns import Selection
from ..plan import CyclePlan, TableKey, plan_cycles, refresh_order, restore_order
from ..scratch import PrivateScratch
from ..session import Session
from ..storage.backup import DataFileReader, plaintext
from ..text import count
from .options import Mode

# NDJSON bytes per INSERT. ~5 MB batches measured best at design time; 1 MiB restores pgbench
# scale 30 with -j 2 as fast as 2 MiB (6.1-6.2 s) at 77-80 MiB peak RSS instead of 94:
# each batch exists several times at once (reader, replace, join, asyncpg's buffer).
BATCH_BYTES = 1 << 20


async def loading_connection(session: Session) -> asyncpg.Connection:
    """A connection whose ``json`` parameters go out in binary format as the bytes given.

    json's binary form is its text, so a batch goes from the file to the server without a
    decode in Python or a ``convert_from(bytea)`` copy on the server (which also had to be
    validated again by ``json_in``): measured 5-9% less time per batch for pgbench rows
    (1 M rows in 126 one-MiB batches, alternating, 7 rounds: 1.55 s against 1.71 s).
    """
    conn = await session.connect()
    try:
        await conn.set_type_codec(
            "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
        )
    except BaseException:
        conn.terminate()
        raise
    return conn


@dataclass(frozen=True)
class Switch:
    """A user trigger or rule of a target table and its state (O, A, R or D)."""

    kind: str  # "trigger" or "rule"
    name: str
    state: str

    def _clause(self) -> str:
        return f"{'TRIGGER' if self.kind == 'trigger' else 'RULE'} {quote_ident(self.name)}"

    def off(self, table: str) -> str:
        """The ALTER TABLE that switches it off."""
        return f"ALTER TABLE {table} DISABLE {self._clause()}"

    def back(self, table: str) -> str:
        """The ALTER TABLE that sets it back to its state."""
        mode = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}
        return f"ALTER TABLE {table} {mode[self.state]} {self._clause()}"


# format_type(oid, NULL) names two types by keywords that, as a cast's target, mean a
# length of one: ``character`` is char(1) and ``bit`` is bit(1) ('ab'::character is 'a').
# Text is cast to these unconstrained names instead; the column's assignment then applies
# its own length, refusing what does not fit.
_UNCONSTRAINED = {"character": "pg_catalog.bpchar", "bit": 'pg_catalog."bit"'}


def cast_target(bare: str) -> str:
    """The type a value's text is cast to for a column whose ``format_type(oid, NULL)``
    is ``bare``: the same, but for char(n) and bit(n) (and their arrays).

    >>> cast_target("character[]"), cast_target("numeric")
    ('pg_catalog.bpchar[]', 'numeric')
    """
    base, dims = bare, ""
    while base.endswith("[]"):
        base, dims = base[:-2], dims + "[]"
    return _UNCONSTRAINED.get(base, base) + dims


@dataclass(frozen=True)
class Retyped:
    """A column of another type here than in the backup (schema drift), and how its
    values are checked to come out of the target's type unchanged (``condition``)."""

    name: str
    backup_type: str  # as the manifest says
    target_type: str  # format_type here, with its modifier
    # The backup's type as this server names it (format_type of to_regtype, without its
    # modifier), when it exists here and the target's type casts to it; else None.
    back_to: str | None = None

    def condition(self, value: str) -> str:
        """SQL that is true when ``value`` (the text the load gives the target type's
        input) keeps its value: cast to the target's type and back to the backup's, it is
        the backup's value: the same number for a ``numeric`` (``1.5`` in a
        ``numeric(10,2)`` is ``1.50``), the same text otherwise (``-0`` and ``0``,
        trailing spaces, timestamps of another precision differ). Without a way back, the
        value's text in the target's type must be the backup's text."""
        here = f"({value}::{self.target_type})"
        if self.back_to is None:
            return f"{here}::pg_catalog.text IS NOT DISTINCT FROM {value}"
        back, was = f"{here}::{self.back_to}", f"{value}::{self.back_to}"
        if self.back_to == "numeric":
            return f"({back}) IS NOT DISTINCT FROM ({was})"
        return f"({back})::pg_catalog.text IS NOT DISTINCT FROM ({was})::pg_catalog.text"


@dataclass(frozen=True)
class TableLoad:
    """How one backup table goes into its target table."""

    source: BackupTable
    target: Table
    columns: tuple[str, ...]  # target columns written, in order
    text_columns: frozenset[str]  # of those, the ones read back from their text form
    dropped: tuple[str, ...]  # backup columns the target lacks (--ignore-missing-columns)
    defaulted: tuple[str, ...]  # target columns the backup lacks: they take defaults
    overriding: bool  # an identity GENERATED ALWAYS column is written
    # The target's own triggers and rules (kind, name, pg_trigger.tgenabled or
    # pg_rewrite.ev_enabled): switched off inside the load's transaction and set back to
    # these states before it commits, so loaded rows fire none of them.
    switches: tuple[Switch, ...] = ()
    # Written columns whose type here differs from the backup's: the rows then go through
    # a staging table and every such value is checked to come out unchanged (``_Stage``).
    retyped: tuple[Retyped, ...] = ()

    @property
    def quiets(self) -> bool:
        """Whether loading this table switches triggers or rules off."""
        return any(sw.state != "D" for sw in self.switches)

    def insert_sql(self) -> str:
        """One INSERT taking a JSON array of row objects as ``$1`` (``json``, sent as
        UTF-8 bytes by ``loading_connection``).

        ``json_to_recordset`` with a column definition list parses the batch once, as a
        stream, straight into typed columns: no jsonb tree, no per-row function call
        (measured 10-15% faster than ``jsonb_populate_recordset``). Columns written in
        their text form are declared ``text`` and cast to their type.
        """
        target = sql_name(self.target.schema, self.target.name)
        types = {c.name: c.type for c in self.target.columns}
        bare = {c.name: cast_target(c.bare_type or c.type) for c in self.target.columns}
        declared, exprs = [], []
        for name in self.columns:
            col = quote_ident(name)
            if name in self.text_columns:
                declared.append(f"{col} pg_catalog.text")
                # The type as the target's format_type() names it (qualified wherever
                # search_path, empty, would not find it), without its modifier: the
                # INSERT's assignment applies that, refusing a value that does not fit
                # (an explicit cast to varchar(5) would cut it).
                exprs.append(f"p.{col}::{bare[name]}")
            else:
                declared.append(f"{col} {types[name]}")
                exprs.append(f"p.{col}")
        cols = ", ".join(quote_ident(c) for c in self.columns)
        overriding = " OVERRIDING SYSTEM VALUE" if self.overriding else ""
        if not self.columns:  # a table without columns: rows of nothing
            return (
                f"INSERT INTO {target} SELECT "
                "FROM pg_catalog.json_array_elements($1::pg_catalog.json)"
            )
        return (
            f"INSERT INTO {target} ({cols}){overriding} SELECT {', '.join(exprs)} "
            f"FROM pg_catalog.json_to_recordset($1::pg_catalog.json) "
            f"AS p({', '.join(declared)})"
        )


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will do; ``--dry-run`` prints it and stops."""

    levels: list[list[TableLoad]]
    cycles: list[CyclePlan]
    sequences: list[tuple[str, str, int, bool]]  # schema, name, last_value, is_called
    mode: Mode
    roots: dict[TableKey, TableKey]  # partition -> its top-most partitioned ancestor
    refresh: list[TableKey] = field(default_factory=list)  # materialized views, in order
    large_objects: int = 0  # objects to load
    replace_large_objects: bool = False  # those the backup holds (--truncate, --clean)

    @property
    def loads(self) -> list[TableLoad]:
        return [load for level in self.levels for load in level]

    def describe(self) -> list[str]:
        lines = []
        for i, level in enumerate(self.levels, 1):
            names = ", ".join(f"{ld.source.qualified} ({ld.source.rows} rows)" for ld in level)
            lines.append(f"level {i}: {names}")
        for cycle in self.cycles:
            tables = ", ".join(f"{s}.{n}" for s, n in cycle.tables)
            cons = ", ".join(name for _, name in cycle.constraints)
            lines.append(f"cycle {tables}: constraints {cons}: {cycle.strategy}")
        for load in self.loads:
            if load.defaulted:
                lines.append(
                    f"{load.source.qualified}: not in the backup, defaults used: "
                    + ", ".join(load.defaulted)
                )
            if load.dropped:
                lines.append(
                    f"{load.source.qualified}: not in the target, ignored: "
                    + ", ".join(load.dropped)
                )
        for load in self.loads:
            if load.source.row_security:
                lines.append(
                    f"{load.source.qualified}: holds only the rows the dumping role could "
                    "see (--enable-row-security)"
                )
        lines.append(f"then {count(len(self.sequences), 'sequence')} set")
        if self.large_objects:
            lines.append(f"then {count(self.large_objects, 'large object')} loaded")
        if self.refresh:
            names = ", ".join(f"{s}.{n}" for s, n in self.refresh)
            lines.append(f"then materialized views are refreshed: {names}")
        return lines


@dataclass(frozen=True)
class RestoredTable:
    schema: str
    name: str
    rows: int
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` did. With ``dry_run`` nothing was loaded and ``tables`` is empty.

    ``plan`` is the data plan (None when no rows were planned: a dry run of a whole
    restore, whose tables do not exist yet, or ``schema_only``); ``lines`` is the whole
    plan in words, as ``--dry-run`` prints it; ``kind`` is ``"whole"`` (schema and rows)
    or ``"existing"`` (rows into existing tables)."""

    plan: RestorePlan | None
    lines: list[str] = field(default_factory=list)
    kind: str = "existing"
    database: str | None = None  # made by --create
    tables: list[RestoredTable] = field(default_factory=list)
    rows: int = 0
    sequences: int = 0
    large_objects: int = 0
    refreshed: int = 0  # materialized views
    seconds: float = 0.0
    dry_run: bool = False
    # compare=True: the restored tables against the backup (``asyncsnap.compare``)
    comparison: CompareResult | None = None


def plan_loads(
    backup: Backup,
    target_tables: Sequence[Table],
    selection: Selection,
    *,
    ignore_missing_columns: bool,
) -> list[TableLoad]:
    """Match every selected backup table with data to its target table, column by name."""
    by_key = {t.key: t for t in target_tables}
    picked = {t.key for t in selection.apply([_as_catalog_table(t) for t in backup.tables])}
    chosen = [t for t in backup.tables if t.has_data and t.key in picked]
    # A backup may hold no table (only sequences or large objects); filters that pick
    # nothing are an error.
    if not chosen and selection.filters:
        raise UsageError(
            f"no table in the backup matches the filters: {selection.describe()}",
            hint="`asyncsnap inspect BACKUP_DIR` lists the tables",
        )
    missing = [t.qualified for t in chosen if t.key not in by_key]
    if missing:
        raise SchemaMismatch(
            f"the target database has no table {some_names(missing)}",
            hint="create the schema first (restore loads data into existing tables), "
            "or leave them out with -T",
        )
    loads = []
    problems = []
    for source in chosen:
        target = by_key[source.key]
        target_cols = {c.name: c for c in target.columns}
        backup_cols = [c.name for c in source.columns]
        dropped = tuple(c for c in backup_cols if c not in target_cols)
        if dropped and not ignore_missing_columns:
            problems.append(f"{source.qualified} ({', '.join(dropped)})")
        written = tuple(
            c for c in backup_cols if c in target_cols and target_cols[c].generated is None
        )
        loads.append(
            TableLoad(
                source=source,
                target=target,
                columns=written,
                text_columns=frozenset(
                    c.name for c in source.columns if c.encoding == "text" and c.name in written
                ),
                dropped=dropped,
                defaulted=tuple(
                    c.name
                    for c in target.columns
                    if c.name not in backup_cols and c.generated is None
                ),
                overriding=any(target_cols[c].identity == "always" for c in written),
            )
        )
    if problems:
        raise SchemaMismatch(
            "the target lacks columns the backup has: " + "; ".join(problems),
            hint="add them, or pass --ignore-missing-columns to drop their values",
        )
    return loads


def _needs_staging(backup: Backup) -> bool:
    """Whether pg_restore (which must seek in the archive) needs a local plain copy of it:
    the backup is encrypted, or not on this machine."""
    if backup.schema is None:
        return False
    return bool(backup.encryption) or backup.source.local_file(backup.schema.archive.path) is None


def _staged_archive(backup: Backup, scratch: PrivateScratch) -> Path | None:
    """The schema archive copied (and decrypted) into ``scratch`` (a 0700 temporary
    directory) for pg_restore; None when pg_restore can read it where it is."""
    if backup.schema is None or not _needs_staging(backup):
        return None
    target = scratch.path() / "schema.pgdump"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    where = backup.schema.archive.path
    with os.fdopen(fd, "wb") as out:
        for chunk in plaintext(backup, where):
            out.write(chunk)
    return target


def _as_catalog_table(t: BackupTable) -> Table:
    return Table(
        oid=0,
        schema=t.schema,
        name=t.name,
        kind=t.kind,  # type: ignore[arg-type]
        parent=t.parent,
        est_rows=t.rows,
        table_bytes=0,
        readable=True,
    )


_FK_DEFS_SQL = """
SELECT con.conname AS name, pg_catalog.pg_get_constraintdef(con.oid) AS definition
FROM pg_catalog.pg_constraint con WHERE con.conrelid = $1 AND con.contype = 'f'
"""


async def _plan(
    conn: asyncpg.Connection,
    backup: Backup,
    selection: Selection,
    *,
    mode: Mode,
    disable_triggers: bool,
    ignore_missing_columns: bool,
    clean_applies: bool = False,
) -> RestorePlan:
    listed = await list_tables(conn)
    described = await describe_tables(conn, [t for t in listed if t.is_table])
    loads = plan_loads(backup, described, selection, ignore_missing_columns=ignore_missing_columns)
    loads = await _with_switches(conn, loads, mode)
    loads = [replace(ld, retyped=await _retyped(conn, ld)) for ld in loads]
    await _check_empty(conn, loads, mode, clean_applies=clean_applies)
    if mode == "truncate":
        await _check_truncatable(conn, loads)
    target_keys = {ld.target.key for ld in loads}
    # The target's foreign keys decide the order; partitioned parents come along so that
    # partitions take their parent's place.
    by_key = {t.key: t for t in described}
    involved = dict.fromkeys(target_keys)
    for key in list(involved):
        parent = by_key[key].parent
        while parent is not None and parent in by_key:
            involved[parent] = None
            parent = by_key[parent].parent
    graph_tables = [by_key[k] for k in involved]
    order = restore_order(graph_tables)
    cycles = plan_cycles(graph_tables, order, disable_triggers=disable_triggers)
    load_by_key = {ld.target.key: ld for ld in loads}
    levels = [[load_by_key[k] for k in level if k in load_by_key] for level in order.levels]
    sequences = [
        (s.schema, s.name, s.last_value, s.is_called)
        for s in backup.sequences
        # A column's sequence goes with its table; a standalone one with the filters.
        if (
            s.table in load_by_key
            if s.table is not None
            else selection.matches_name(s.schema, s.name)
        )
    ]
    # Materialized views that were populated at dump time and exist here as such, refreshed
    # once the rows they read are in, dependencies first.
    matviews = {t.key for t in listed if t.relkind == "m"}
    wanted = [
        (k.schema, k.name)
        for k in backup.skipped
        if k.kind == "materialized view"
        and k.refresh
        and k.schema is not None
        and k.name is not None
        and selection.matches_name(k.schema, k.name)
    ]
    refresh = (
        refresh_order([k for k in wanted if k in matviews], await view_dependencies(conn))
        if wanted
        else []
    )
    large_objects = 0
    if backup.large_objects is not None and not selection.include:
        large_objects = backup.large_objects.objects
    roots = {}
    for key in target_keys:
        root = key
        while (parent := by_key[root].parent) is not None and parent in by_key:
            root = parent
        roots[key] = root
    return RestorePlan(
        levels=[lv for lv in levels if lv],
        cycles=cycles,
        sequences=sequences,
        mode=mode,
        roots=roots,
        refresh=refresh,
        large_objects=large_objects,
    )


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

_OWNED_SQL = """
SELECT c.oid, pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned,
       pg_catalog.has_table_privilege(c.oid, 'INSERT') AS can_insert,
       pg_catalog.has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate,
       pg_catalog.has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE') AS can_lock
FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1::pg_catalog.oid[])
"""


async def _with_switches(
    conn: asyncpg.Connection, loads: list[TableLoad], mode: Mode
) -> list[TableLoad]:
    """The loads with their target's triggers and rules; refuses, before anything is
    loaded, a table whose triggers or rules this role cannot switch off (only the owner
    can, and letting them fire would change the rows or other tables), and one it may not
    INSERT into (or, with --truncate, TRUNCATE)."""
    oids = [ld.target.oid for ld in loads]
    found: dict[int, list[Switch]] = {}
    for r in await conn.fetch(_SWITCHES_SQL, oids):
        found.setdefault(r["oid"], []).append(Switch(r["kind"], r["name"], r["state"]))
    rights = {r["oid"]: r for r in await conn.fetch(_OWNED_SQL, oids)}
    gone = [ld.target.qualified for ld in loads if ld.target.oid not in rights]
    if gone:  # dropped (or replaced) by another session since they were listed
        raise SchemaMismatch(
            f"{some_names(gone)} changed while the restore was planning (dropped or "
            "replaced by another session)",
            hint="nothing was loaded; run the restore again",
        )
    owned = {oid: r["owned"] for oid, r in rights.items()}
    missing = [
        f"{ld.target.qualified} ({verb})"
        for ld in loads
        for verb, key in (("INSERT", "can_insert"), ("TRUNCATE", "can_truncate"))
        if (verb == "INSERT" or mode == "truncate") and not rights[ld.target.oid][key]
    ]
    if missing:
        raise PermissionDenied(
            f"permission denied: this role may not write {some_names(missing)}",
            hint="restore as the tables' owner, or GRANT the privileges named",
        )
    result, refused = [], []
    for load in loads:
        load = replace(load, switches=tuple(found.get(load.target.oid, ())))
        if load.quiets and not owned.get(load.target.oid, False):
            refused.append(load.target.qualified)
        result.append(load)
    if refused:
        raise PermissionDenied(
            f"{some_names(refused)} have triggers or rules that loading would fire, and only "
            "their owner can switch them off for the load",
            hint="restore as the tables' owner (or a member of its role)",
        )
    unlockable = [
        ld.target.qualified
        for ld in loads
        if mode == "refuse" and not rights[ld.target.oid]["can_lock"]
    ]
    if unlockable:
        # _hold_empty keeps other writers out while it checks and loads: LOCK TABLE IN
        # EXCLUSIVE MODE needs one of these privileges.
        raise PermissionDenied(
            f"this role may not lock {some_names(unlockable)} against other writers while "
            "checking they are empty (that needs UPDATE, DELETE or TRUNCATE on them)",
            hint="GRANT one of those, restore as the tables' owner, or pass --append to load "
            "without the emptiness check",
        )
    return result


async def _check_truncatable(conn: asyncpg.Connection, loads: list[TableLoad]) -> None:
    """--truncate empties the selected tables in one statement; a table outside the
    selection that references one of them would make it fail (after the plan said yes)."""
    oids = [ld.target.oid for ld in loads]
    rows = await conn.fetch(
        "SELECT DISTINCT con.conrelid::pg_catalog.regclass::pg_catalog.text AS referencing, "
        "con.confrelid::pg_catalog.regclass::pg_catalog.text AS referenced "
        "FROM pg_catalog.pg_constraint con WHERE con.contype OPERATOR(pg_catalog.=) 'f' "
        "AND con.confrelid = ANY ($1::pg_catalog.oid[]) "
        "AND NOT con.conrelid = ANY ($1::pg_catalog.oid[]) ORDER BY 1, 2",
        oids,
    )
    if rows:
        pairs = [f"{r['referencing']} references {r['referenced']}" for r in rows]
        raise RestoreFailed(
            f"cannot truncate: {some_names(pairs, sep='; ')}",
            hint="include the referencing tables with -t, or empty them yourself "
            "(asyncsnap never truncates tables you did not select)",
        )


@dataclass
class _Unit:
    """What one connection loads in one transaction: a table, one file of a split table,
    or every table of a foreign-key cycle."""

    loads: list[TableLoad]
    cycle: CyclePlan | None = None
    file_index: int | None = None  # one file of a split table, loaded on its own
    # Whether its transaction locks its tables against other writers and checks they are
    # empty before loading (``_hold_empty``): the default mode, for a whole table or the
    # first file of a split one.
    checks: bool = False
    checked: anyio.Event | None = None  # set once the first file's transaction checked
    after: anyio.Event | None = None  # a later file of a split table waits for that

    @property
    def rows(self) -> int:
        if self.file_index is not None:
            return self.loads[0].source.files[self.file_index].rows
        return sum(ld.source.rows for ld in self.loads)


def _units(
    plan: RestorePlan, level: list[TableLoad], *, split_files: bool, checks: bool = False
) -> list[_Unit]:
    """The level's units. With ``split_files``, a table of several files (split at dump
    time) loads over several connections, a transaction per file; cycles stay whole, their
    constraints need one transaction. With ``checks`` (the default mode: refuse tables
    with rows), each table's first unit holds it and checks it is empty; a split table's
    later files wait for that check and come after the level's other units, so that
    their connections load other tables meanwhile."""
    in_cycle = {k: c for c in plan.cycles for k in c.tables}
    grouped: dict[object, _Unit] = {}
    units: list[_Unit] = []
    later: list[_Unit] = []  # files 2.. of split tables, behind their first file's check
    for load in level:
        cycle = in_cycle.get(plan.roots[load.target.key])
        if cycle is not None:
            unit = grouped.setdefault(id(cycle), _Unit(loads=[], cycle=cycle, checks=checks))
            unit.loads.append(load)
        elif split_files and len(load.source.files) > 1 and not load.quiets:
            # (ALTER TABLE to switch triggers off would make the files' transactions
            # wait for one another: such a table loads whole)
            checked = anyio.Event() if checks else None
            units.append(_Unit(loads=[load], file_index=0, checks=checks, checked=checked))
            rest = [
                _Unit(loads=[load], file_index=i, after=checked)
                for i in range(1, len(load.source.files))
            ]
            (later if checks else units).extend(rest)
        else:
            units.append(_Unit(loads=[load], checks=checks))

    # The biggest tables first, so the longest load starts earliest; a split table's files
    # in page order, as they were dumped: its rows then reach its indexes in the order they
    # had, mostly at the right end of each btree, instead of splitting pages in the middle
    # (files sorted by size made a -j 1 restore of pgbench_accounts 13.7 s against 9.9 s
    # for one COPY).
    def order(units: list[_Unit]) -> list[_Unit]:
        return sorted(
            units, key=lambda u: (-sum(ld.source.rows for ld in u.loads), u.file_index or 0)
        )

    return order([*units, *grouped.values()]) + order(later)


def _merge(results: list[RestoredTable]) -> list[RestoredTable]:
    """One result per table from the per-file results of split tables."""
    merged: dict[tuple[str, str], RestoredTable] = {}
    for r in results:
        before = merged.get((r.schema, r.name))
        if before is not None:
            r = RestoredTable(r.schema, r.name, before.rows + r.rows, before.seconds + r.seconds)
        merged[(r.schema, r.name)] = r
    return sorted(merged.values(), key=lambda r: (r.schema, r.name))


@dataclass(frozen=True)
class _Done:
    tables: list[RestoredTable]
    sequences: int
    large_objects: int
    refreshed: int


async def _run_with_pool(
    plan: RestorePlan,
    conn: asyncpg.Connection,
    session: Session,
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    *,
    jobs: int,
    mode: Mode,
) -> _Done:
    widest = max((len(_units(plan, lv, split_files=True)) for lv in plan.levels), default=1)
    size = max(1, min(jobs, widest))
    others = [await loading_connection(session) for _ in range(size - 1)]
    try:
        return await _run(
            plan, [conn, *others], backup, emit, results, single_transaction=False, mode=mode
        )
    finally:
        for other in others:
            other.terminate()


async def _run(
    plan: RestorePlan,
    conns: list[asyncpg.Connection],
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    *,
    single_transaction: bool,
    mode: Mode,
) -> _Done:
    main = conns[0]
    loads = plan.loads
    if mode == "truncate" and loads:  # a backup may hold no table (only large objects)
        names = ", ".join(sql_name(ld.target.schema, ld.target.name) for ld in loads)
        try:
            await main.execute(f"TRUNCATE ONLY {names}")
        except asyncpg.FeatureNotSupportedError as exc:
            raise RestoreFailed(
                f"cannot truncate: {exc}",
                hint="another table references one being restored; include it with -t or "
                "empty it yourself (asyncsnap never truncates tables you did not select)",
            ) from exc
    if mode == "refuse" and single_transaction and loads:
        # One transaction loads everything: every table is held and checked up front.
        await _hold_empty(main, loads)
    for level in plan.levels:
        units = _units(
            plan,
            level,
            split_files=not single_transaction,
            checks=mode == "refuse" and not single_transaction,
        )
        if single_transaction:
            for unit in units:
                results += await _load_unit(main, unit, backup, emit, own_transaction=False)
            continue
        queue = iter(units)  # shared: each connection takes the next unit
        try:
            async with anyio.create_task_group() as tg:
                for conn in conns[: len(units)]:
                    tg.start_soon(_worker, conn, queue, results, backup, emit)
        except BaseExceptionGroup as group:
            raise most_telling(group) from None
    sequences = await _set_sequences(main, plan, emit)
    objects = 0
    if plan.large_objects:
        assert backup.large_objects is not None
        async with _transaction(main, own=not single_transaction):
            objects = await _load_large_objects(
                main, backup, emit, replace=mode == "truncate" or plan.replace_large_objects
            )
    for schema, name in plan.refresh:
        await main.execute(f"REFRESH MATERIALIZED VIEW {sql_name(schema, name)}")
        emit(Notice(f"refreshed materialized view {schema}.{name}"))
    return _Done(_merge(results), sequences, objects, len(plan.refresh))


async def _worker(
    conn: asyncpg.Connection,
    queue: Iterator[_Unit],
    results: list[RestoredTable],
    backup: Backup,
    emit: EventCallback,
) -> None:
    """Take units from the shared queue until it is empty."""
    for unit in queue:
        if unit.after is not None:
            # A later file of a split table: its table is checked by the first file's
            # transaction, whose lock its COPY then waits for.
            await unit.after.wait()
        results.extend(await _load_unit(conn, unit, backup, emit, own_transaction=True))


async def _check_empty(
    conn: asyncpg.Connection, loads: list[TableLoad], mode: Mode, *, clean_applies: bool = False
) -> None:
    """Refuse tables that have rows (the default mode), before anything is loaded; the
    load's transaction checks again under its lock (``_hold_empty``). ``clean_applies``:
    --clean could replace the database's tables instead (not with --data-only or -t/-T,
    which it refuses), so the hint names it."""
    if mode != "refuse":
        return
    busy = []
    for load in loads:
        if await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM ONLY {sql_name(load.target.schema, load.target.name)})"
        ):
            busy.append(load.target.qualified)
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


async def _hold_empty(conn: asyncpg.Connection, loads: Sequence[TableLoad]) -> None:
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
    oids = await conn.fetchval(
        "SELECT pg_catalog.array_agg(pg_catalog.to_regclass(n)::pg_catalog.oid ORDER BY o) "
        "FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(n, o)",
        names,
    )
    replaced = [ld.target.qualified for ld, oid in zip(loads, oids, strict=True)
                if oid != ld.target.oid]  # fmt: skip
    if replaced:
        raise SchemaMismatch(
            f"{some_names(replaced)} changed while the restore was planning (dropped or "
            "replaced by another session)",
            hint="nothing of it was loaded; run the restore again",
        )
    filled = await conn.fetchval(
        "SELECT ARRAY[" + ", ".join(f"EXISTS (SELECT 1 FROM ONLY {n})" for n in names) + "]"
    )
    busy = [ld.target.qualified for ld, rows in zip(loads, filled, strict=True) if rows]
    if busy:
        raise TargetNotEmpty(
            f"the target has rows in {some_names(busy)}, written by another session after "
            "the restore checked it",
            hint="nothing of it was loaded; find the writer, or pass --truncate to replace "
            "the rows or --append to add to them",
        )


async def _drop_cycle_constraints(
    conn: asyncpg.Connection, cycle: CyclePlan
) -> list[tuple[TableKey, str, str]]:
    """Drop a cycle's constraints, in the caller's transaction; return their definitions."""
    dropped = []
    for key, name in cycle.constraints:
        oid = await conn.fetchval("SELECT $1::pg_catalog.regclass::pg_catalog.oid", sql_name(*key))
        defs = {r["name"]: r["definition"] for r in await conn.fetch(_FK_DEFS_SQL, oid)}
        await conn.execute(f"ALTER TABLE {sql_name(*key)} DROP CONSTRAINT {quote_ident(name)}")
        dropped.append((key, name, defs[name]))
    return dropped


async def _recreate_constraints(
    conn: asyncpg.Connection, dropped: list[tuple[TableKey, str, str]], emit: EventCallback
) -> None:
    """Add a cycle's constraints back, in the caller's transaction, each checked on its
    own: a failed ADD CONSTRAINT aborts the transaction, so each runs in a savepoint and
    the error names only the constraints the rows really violate (after the first
    failure, every later one used to fail with "current transaction is aborted").

    :raises RestoreFailed: naming each constraint that could not be added and why.
    """
    failures = []
    for key, name, definition in dropped:
        statement = f"ALTER TABLE {sql_name(*key)} ADD CONSTRAINT {quote_ident(name)} {definition}"
        try:
            async with conn.transaction():  # a savepoint: the caller's transaction goes on
                await conn.execute(statement)
            emit(Notice(f"re-created and validated constraint {name} on {key[0]}.{key[1]}"))
        except asyncpg.PostgresError as exc:
            failures.append(f"{statement}; -- {exc}")
    if failures:
        raise RestoreFailed(
            "could not re-create foreign keys dropped for a cycle: " + " | ".join(failures),
            hint="the data violates them; fix it and run the statements shown",
        )


async def _load_unit(
    conn: asyncpg.Connection,
    unit: _Unit,
    backup: Backup,
    emit: EventCallback,
    *,
    own_transaction: bool,
) -> list[RestoredTable]:
    """Load a unit in one transaction. Everything it changes besides rows (a cycle's
    constraints dropped and re-created, triggers and rules switched off and back) is
    DDL in that same transaction: a failure or a SIGKILL at any moment rolls all of it
    back, and nothing stays dropped or switched off."""
    strategy = unit.cycle.strategy if unit.cycle is not None else None
    async with _transaction(conn, own=own_transaction):
        if unit.checks:
            await _hold_empty(conn, unit.loads)
            if unit.checked is not None:
                unit.checked.set()
        dropped: list[tuple[TableKey, str, str]] = []
        if strategy == "defer":
            assert unit.cycle is not None
            names = ", ".join(
                f"{quote_ident(key[0])}.{quote_ident(name)}" for key, name in unit.cycle.constraints
            )
            await conn.execute(f"SET CONSTRAINTS {names} DEFERRED")
        elif strategy == "drop-and-recreate":
            assert unit.cycle is not None
            dropped = await _drop_cycle_constraints(conn, unit.cycle)
        results = []
        all_off = strategy == "disable-triggers"
        for load in unit.loads:
            target = sql_name(load.target.schema, load.target.name)
            # With --disable-triggers a cycle's tables have every trigger off (foreign-key
            # checks too); rules are never triggers and are switched one by one.
            own = [sw for sw in load.switches if not (all_off and sw.kind == "trigger")]
            if all_off:
                await conn.execute(f"ALTER TABLE {target} DISABLE TRIGGER ALL")
            for switch in own:
                if switch.state != "D":
                    await conn.execute(switch.off(target))
            results.append(await _load_table(conn, load, backup, emit, unit.file_index))
            if all_off:
                await conn.execute(f"ALTER TABLE {target} ENABLE TRIGGER ALL")
                # ENABLE ALL also turned on disabled triggers and made ALWAYS and REPLICA
                # ones ORIGIN: each user trigger goes back to its own state.
                for switch in load.switches:
                    if switch.kind == "trigger" and switch.state != "O":
                        await conn.execute(switch.back(target))
            for switch in own:
                if switch.state != "D":
                    await conn.execute(switch.back(target))
        if dropped:
            await _recreate_constraints(conn, dropped, emit)
    return results


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection, *, own: bool) -> AsyncIterator[None]:
    """A transaction of its own on ``conn`` (``own``), or none: the caller's, with
    --single-transaction. The rollback is shielded, so a cancelled restore still leaves
    nothing half-loaded, and skipped when the connection is already gone."""
    if not own:
        yield
        return
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            if not conn.is_closed():
                await tx.rollback()
        raise
    await tx.commit()


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
        try:
            back_to = await conn.fetchval(
                "SELECT pg_catalog.format_type(pg_catalog.to_regtype($1), NULL)", column.type
            )
        except asyncpg.PostgresError:  # not a type name at all
            back_to = None
        if back_to is not None:
            try:
                await conn.fetchval(f"SELECT (NULL::{target.type})::{back_to}")
            except asyncpg.PostgresError:
                back_to = None  # no cast back: the text itself is compared
        found.append(Retyped(column.name, column.type, target.type, back_to))
    return tuple(found)


class _Stage:
    """A table whose types changed since the dump loads through a temporary table: its
    rows are copied in as they would be into the target, with the changed columns as
    text and a line number; each changed column's values are checked (``Retyped``); only
    then does one INSERT move the rows into the target, the text cast to the column's type
    as COPY would read it. A value the target's type would round or cut fails the table,
    naming the column, both types and the first such row, instead of loading changed."""

    NAME = "asyncsnap_stage"

    def __init__(self, load: TableLoad) -> None:
        self.load = load
        changed = {r.name for r in load.retyped}
        self.line = "asyncsnap_line"
        while self.line in load.columns:
            self.line += "_"
        target = {c.name: c for c in load.target.columns}
        columns = []
        for name in load.columns:
            kind = "pg_catalog.text" if name in changed else target[name].type
            bare = "pg_catalog.text" if name in changed else target[name].bare_type or kind
            columns.append(
                replace(target[name], type=kind, bare_type=bare, generated=None, identity=None)
            )
        table = replace(
            load.target, oid=0, schema="pg_temp", name=self.NAME, columns=tuple(columns)
        )
        # What the loaders write into: the staging table, no triggers, no identity.
        self.staged = replace(load, target=table, overriding=False, switches=(), retyped=())
        self.sql = f"pg_temp.{quote_ident(self.NAME)}"

    async def create(self, conn: asyncpg.Connection) -> None:
        definitions = ", ".join(
            f"{quote_ident(c.name)} {c.type}" for c in self.staged.target.columns
        )
        await conn.execute(
            f"CREATE TEMPORARY TABLE {self.sql} ({definitions}, "
            f"{quote_ident(self.line)} pg_catalog.int8 GENERATED ALWAYS AS IDENTITY) "
            "ON COMMIT DROP"
        )

    async def check_and_move(self, conn: asyncpg.Connection, entry: BackupFile, rows: int) -> None:
        """Check every changed column's values, then INSERT the rows into the target.

        :raises SchemaMismatch: naming the first column whose values would change.
        :raises asyncpg.PostgresError: as the INSERT fails (a value that does not fit).
        """
        load = self.load
        keys = [k for k in load.source.primary_key if k in load.columns]
        key_sql = "".join(f", s.{quote_ident(k)}::pg_catalog.text" for k in keys)
        uncomparable: list[tuple[Retyped, BaseException]] = []
        for column in load.retyped:
            condition = column.condition(f"s.{quote_ident(column.name)}")
            try:
                async with conn.transaction():  # a value that does not even cast back
                    first = await conn.fetchrow(
                        f"SELECT s.{quote_ident(self.line)}{key_sql} FROM {self.sql} s "
                        f"WHERE NOT ({condition}) ORDER BY 1 LIMIT 1"
                    )
            except asyncpg.PostgresError as exc:
                uncomparable.append((column, exc))
                continue
            if first is not None:
                where = f"line {first[0]} of {entry.path}"
                if keys:
                    key = ", ".join(
                        f"{k} = {v}" for k, v in zip(keys, list(first)[1:], strict=True)
                    )
                    where = f"the row with {key} ({where})"
                raise SchemaMismatch(
                    f"{load.target.qualified}: column {column.name} is {column.backup_type} in "
                    f"the backup and {column.target_type} here, and {where} would not keep "
                    "its value (restore never rounds or cuts one)",
                    hint=f"give the column a type that holds the backup's values; "
                    f"{load.target.qualified} was rolled back",
                )
        exprs = []
        changed = {r.name for r in load.retyped}
        bare = {c.name: cast_target(c.bare_type or c.type) for c in load.target.columns}
        for name in load.columns:
            col = f"s.{quote_ident(name)}"
            # As COPY reads it: the type's input, then the column's modifier (assignment).
            exprs.append(f"{col}::{bare[name]}" if name in changed else col)
        cols = ", ".join(quote_ident(c) for c in load.columns)
        overriding = " OVERRIDING SYSTEM VALUE" if load.overriding else ""
        target = sql_name(load.target.schema, load.target.name)
        status = await conn.execute(
            f"INSERT INTO {target} ({cols}){overriding} SELECT {', '.join(exprs)} "
            f"FROM {self.sql} s ORDER BY s.{quote_ident(self.line)}"
            if load.columns
            else f"INSERT INTO {target} SELECT FROM {self.sql} s"
        )
        if uncomparable:
            column, problem = uncomparable[0]
            raise SchemaMismatch(
                f"{load.target.qualified}: column {column.name} is {column.backup_type} in "
                f"the backup and {column.target_type} here, and its values cannot be compared "
                f"with the backup's: {problem}",
                hint=f"give the column a type that holds the backup's values; "
                f"{load.target.qualified} was rolled back",
            )
        inserted = status.rpartition(" ")[2]
        if not inserted.isdigit() or int(inserted) != rows:
            raise RestoreFailed(
                f"loading {load.target.qualified}: the server took {inserted} rows of {rows}",
                hint="please report this as a bug; the table was rolled back",
            )
        await conn.execute(f"DROP TABLE {self.sql}")


async def _load_table(
    conn: asyncpg.Connection,
    load: TableLoad,
    backup: Backup,
    emit: EventCallback,
    file_index: int | None = None,
) -> RestoredTable:
    """Load a table's files (or only file ``file_index``) on ``conn``, in its transaction."""
    files = load.source.files
    label = load.source.qualified
    if file_index is not None:
        files = (files[file_index],)
        label += f" [{file_index + 1}/{len(load.source.files)}]"
    emit(ChunkStarted(label=label, est_rows=sum(f.rows for f in files), verb="loading"))
    started = time.monotonic()
    # Where the types are the backup's, the rows go straight in; else through a stage.
    stage = _Stage(load) if load.retyped else None
    into = stage.staged if stage is not None else load
    shape = LoadShape.of(into.source, into.target, into.columns)
    progress = _Progress(label, emit)
    for entry in files:
        reader = DataFileReader(backup, entry, block_size=BATCH_BYTES)
        checked = False  # the file matched the manifest (a staged table: before the INSERT)
        try:
            if stage is not None:
                await stage.create(conn)
            if shape is not None:
                await _copy_file(conn, into, shape, reader, progress)
            else:
                await _insert_file(conn, into, reader, progress)
            if stage is not None:
                # the file is whole before its values are judged
                await anyio.to_thread.run_sync(reader.finish)
                checked = True
                await stage.check_and_move(conn, entry, reader.rows)
        except (asyncpg.PostgresError, ValueError) as exc:
            if not checked:
                await anyio.to_thread.run_sync(reader.drain)
            if not checked and reader.damaged():
                raise VerificationFailed(
                    f"{entry.path} does not match its SHA-256 in the manifest",
                    hint=f"the backup is damaged; {label} was rolled back",
                ) from exc
            if isinstance(exc, ValueError):  # the converter: a line not as the format says
                raise RestoreFailed(
                    f"loading {label}: {entry.path}, {exc}",
                    hint=f"the file is not what docs/format.md describes; {label} was rolled back",
                ) from exc
            raise RestoreFailed(
                f"loading {label} from {entry.path}: {exc}{_suspects(load, exc)}",
                hint=getattr(exc, "hint", None) or f"{label} was rolled back",
            ) from exc
        finally:
            reader.close()
        # size, SHA-256 and rows; raising rolls the table back
        await anyio.to_thread.run_sync(reader.finish)
    rows, raw = progress.rows, progress.bytes
    seconds = time.monotonic() - started
    emit(
        ChunkFinished(
            label=label, rows=rows, bytes=raw, stored_bytes=0, seconds=seconds, verb="loaded"
        )
    )
    return RestoredTable(
        schema=load.target.schema, name=load.target.name, rows=rows, seconds=seconds
    )


# Errors of a value that does not fit its column: the server does not say which column.
_DOES_NOT_FIT = (
    asyncpg.StringDataRightTruncationError,
    asyncpg.NumericValueOutOfRangeError,
    asyncpg.DatetimeFieldOverflowError,
    asyncpg.InvalidTextRepresentationError,
    asyncpg.InvalidDatetimeFormatError,
)


def _suspects(load: TableLoad, exc: BaseException) -> str:
    """For a value that does not fit: the columns whose target type differs from the
    backup's, which are where it can come from (as COPY's CONTEXT would name one)."""
    if not isinstance(exc, _DOES_NOT_FIT):
        return ""
    target = {c.name: c.type for c in load.target.columns}
    differ = [
        f"{c.name} ({c.type} in the backup, {target[c.name]} here)"
        for c in load.source.columns
        if c.name in load.columns and target.get(c.name) != c.type
    ]
    return f"; columns whose type changed: {', '.join(differ)}" if differ else ""


# A line longer than this is loaded on its own through a staging table (``bigrows``):
# one json parameter cannot exceed 1 GiB, and staging holds fewer copies of the row.
LONG_LINE = 256 << 20


@dataclass
class _Progress:
    """Rows and bytes loaded so far for one table (or file of one), reported as they go."""

    label: str
    emit: EventCallback
    rows: int = 0
    bytes: int = 0

    def add(self, rows: int, raw: int) -> None:
        self.rows += rows
        self.bytes += raw
        self.emit(ChunkProgress(label=self.label, rows=self.rows, bytes=self.bytes))


@dataclass(frozen=True)
class _Segment:
    """A piece of a data file on its way to the server: COPY text converted from a block of
    lines, or one line too long for that (``long``), loaded through ``bigrows``."""

    copy: bytes = b""
    rows: int = 0
    raw: int = 0
    long: memoryview | None = None


def _segments(block: bytes | bytearray, shape: LoadShape, first_line: int) -> list[_Segment]:
    """A block of whole NDJSON lines, the first of them line ``first_line`` of its file, as
    segments (in a worker thread: the converter releases the GIL, so reading, checking and
    converting overlap the COPY)."""
    encode = shape.encode if shape.binary is None else shape.encode_binary
    if len(block) <= LONG_LINE:
        out, rows = encode(block, first_line)
        return [_Segment(copy=out, rows=rows, raw=len(block))]
    view = memoryview(block)
    segments = []
    start = run_start = 0
    line = run_line = first_line
    while start < len(block):
        end = block.index(b"\n", start) + 1
        if end - start > LONG_LINE:
            if run_start < start:
                run = bytes(view[run_start:start])
                out, rows = encode(run, run_line)
                segments.append(_Segment(copy=out, rows=rows, raw=len(run)))
            segments.append(_Segment(rows=1, raw=end - start, long=view[start : end - 1]))
            run_start, run_line = end, line + 1
        start, line = end, line + 1
    if run_start < len(block):
        run = bytes(view[run_start:])
        out, rows = encode(run, run_line)
        segments.append(_Segment(copy=out, rows=rows, raw=len(run)))
    return segments


async def _copy_file(
    conn: asyncpg.Connection,
    load: TableLoad,
    shape: LoadShape,
    reader: DataFileReader,
    progress: _Progress,
) -> None:
    """Load one file with ``COPY ... FROM STDIN`` (text), converted by ``rowcodec``: the
    next block is read, checked and converted in a worker thread while this one is sent.
    A line longer than ``LONG_LINE`` ends the COPY, goes through ``bigrows``, and a new
    COPY takes the lines after it."""
    blocks = iter(reader)
    loop = asyncio.get_running_loop()

    lines_read = 0

    def produce() -> list[_Segment] | None:
        nonlocal lines_read
        block = next(blocks, None)
        if block is None:
            return None
        first_line, lines_read = lines_read + 1, lines_read + block.count(b"\n")
        return _segments(block, shape, first_line)

    async def pieces() -> AsyncGenerator[_Segment, None]:
        ahead = loop.run_in_executor(None, produce)
        try:
            while True:
                # Shielded: a cancelled wait leaves ``ahead`` to finish with its thread,
                # which the clean-up below then waits for (a cancelled future does not
                # stop the thread, which went on reading the file being closed).
                segments = await asyncio.shield(ahead)
                if segments is None:
                    return
                ahead = loop.run_in_executor(None, produce)
                for segment in segments:
                    yield segment
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await ahead  # its thread reads the file this function's caller closes

    source = pieces()
    waiting: _Segment | None = None  # a segment that ended the previous COPY
    finished = False
    try:
        while not finished:
            segment = waiting or await anext(source, None)
            waiting = None
            if segment is None:
                break
            if segment.long is not None:
                await _load_long_line(conn, load, segment.long)
                progress.add(1, segment.raw)
                continue
            sent = 0

            async def copy_data(current: _Segment | None) -> AsyncIterator[bytes]:
                nonlocal waiting, finished, sent
                if shape.binary is not None:
                    yield BINARY_HEADER
                while current is not None:
                    if current.long is not None:
                        waiting = current
                        break
                    yield current.copy
                    sent += current.rows
                    progress.add(current.rows, current.raw)
                    current = await anext(source, None)
                else:
                    finished = True
                if shape.binary is not None:
                    yield BINARY_TRAILER

            status = await conn.copy_to_table(
                load.target.name,
                schema_name=load.target.schema,
                columns=list(shape.columns),
                source=copy_data(segment),
                format="binary" if shape.binary is not None else None,
            )
            if _copied(status) != sent:
                raise RestoreFailed(
                    f"loading {load.source.qualified}: the server took {_copied(status)} rows "
                    f"of {sent}",
                    hint="please report this as a bug; the table was rolled back",
                )
    finally:
        await source.aclose()


async def _load_long_line(conn: asyncpg.Connection, load: TableLoad, line: memoryview) -> None:
    await bigrows.load_row(
        conn,
        line=line,
        target=sql_name(load.target.schema, load.target.name),
        columns=load.columns,
        text_columns=load.text_columns,
        types={c.name: c.type for c in load.target.columns},
        bare_types={c.name: cast_target(c.bare_type or c.type) for c in load.target.columns},
        overriding=load.overriding,
    )


def _copied(status: str) -> int:
    word, _, count = status.partition(" ")
    return int(count) if word == "COPY" and count.isdigit() else -1


async def _insert_file(
    conn: asyncpg.Connection, load: TableLoad, reader: DataFileReader, progress: _Progress
) -> None:
    """Load one file through ``json_to_recordset`` in blocks: for a table whose columns
    the converter does not know (``LoadShape.of`` gave None)."""
    sql = load.insert_sql()
    blocks = iter(reader)
    while True:
        block = await anyio.to_thread.run_sync(next, blocks, None)
        if block is None:
            break
        await _load_block(conn, load, sql, block)
        progress.add(block.count(b"\n"), len(block))
        del block


async def _load_block(
    conn: asyncpg.Connection, load: TableLoad, sql: str, block: bytes | bytearray
) -> None:
    """Insert a block of lines: as one JSON array, or, when it holds a long line, the
    long lines one by one and the runs of short lines between them as arrays."""
    if len(block) <= LONG_LINE:
        await conn.execute(sql, _json_array(block, block.count(b"\n")))
        return
    view = memoryview(block)
    start = run_start = 0
    while start < len(block):
        end = block.index(b"\n", start) + 1
        if end - start > LONG_LINE:
            if run_start < start:
                run = view[run_start:start]
                await conn.execute(sql, _json_array(run, bytes(run).count(b"\n")))
            await _load_long_line(conn, load, view[start : end - 1])
            run_start = end
        start = end
    if run_start < len(block):
        run = view[run_start:]
        await conn.execute(sql, _json_array(run, bytes(run).count(b"\n")))


def _json_array(block: bytes | bytearray | memoryview, lines: int) -> bytes:
    """NDJSON lines as one JSON array: ``[line,line,...]``. A block of one line (a row of
    hundreds of MB) costs one copy; others two (newlines to commas, then the brackets)."""
    if lines == 1:
        return b"".join((b"[", memoryview(block)[:-1], b"]"))
    body = (bytes(block) if isinstance(block, memoryview) else block).replace(b"\n", b",")
    return b"".join((b"[", memoryview(body)[:-1], b"]"))


async def _set_sequences(conn: asyncpg.Connection, plan: RestorePlan, emit: EventCallback) -> int:
    count = 0
    for schema, name, value, is_called in plan.sequences:
        exists = await conn.fetchval(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL", sql_name(schema, name)
        )
        if not exists:
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


# Lines of large-object files sent per round of statements (bounded by bytes too).
_LO_BATCH_LINES = 512
_LO_BATCH_BYTES = 8 << 20


async def _load_large_objects(
    conn: asyncpg.Connection, backup: Backup, emit: EventCallback, *, replace: bool
) -> int:
    """Create every large object of the backup with its OID, bytes, owner and privileges,
    in the caller's transaction. An OID that already exists is refused, or with
    ``replace`` replaced (only those the backup holds); memory is one batch of lines."""
    assert backup.large_objects is not None
    roles = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_catalog.pg_roles")}
    current = await conn.fetchval("SELECT current_user::pg_catalog.text")
    label = "large objects"
    emit(ChunkStarted(label=label, est_rows=backup.large_objects.objects, verb="loading"))
    started = time.monotonic()
    objects = 0
    problems: list[str] = []

    async def flush(lines: list[largeobjects.LargeObjectLine]) -> None:
        nonlocal objects
        firsts = [ln for ln in lines if ln.offset == 0]
        taken = await largeobjects.existing_large_objects(conn, [ln.oid for ln in firsts])
        if taken and not replace:
            raise TargetNotEmpty(
                f"the target already has large objects {some_names([str(o) for o in taken])}",
                hint="pass --truncate to replace the ones the backup holds",
            )
        if taken:
            await largeobjects.unlink(conn, taken)
        await largeobjects.write_pieces(conn, lines)
        for line in firsts:
            if line.owner != current or line.acl is not None:
                problems.extend(
                    f"large object {line.oid}: {p}"
                    for p in await largeobjects.set_owner_and_privileges(conn, line, roles)
                )
        objects += len(firsts)
        emit(ChunkProgress(label=label, rows=objects, bytes=0))

    for entry in backup.large_objects.files:
        reader = DataFileReader(backup, entry, block_size=BATCH_BYTES)
        batch: list[largeobjects.LargeObjectLine] = []
        size = 0
        blocks = iter(reader)
        try:
            # Reading, decompressing, hashing (and decrypting) a block runs in a thread:
            # the event loop only sends the pieces.
            while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
                for raw in block.splitlines():
                    try:
                        line = largeobjects.parse_line(raw)
                    except ValueError as exc:
                        raise VerificationFailed(
                            f"{entry.path} has a line that is not a large-object piece: {exc}",
                            hint="the backup is damaged; no large object was kept",
                        ) from exc
                    batch.append(line)
                    size += len(line.data)
                    if len(batch) >= _LO_BATCH_LINES or size >= _LO_BATCH_BYTES:
                        await flush(batch)
                        batch, size = [], 0
            if batch:
                await flush(batch)
        finally:
            reader.close()
        await anyio.to_thread.run_sync(reader.finish)
    for problem in problems[:5]:
        emit(Notice(problem))
    if len(problems) > 5:
        emit(Notice(f"... and {len(problems) - 5} more owner or privilege problems"))
    emit(
        ChunkFinished(
            label=label,
            rows=objects,
            bytes=0,
            stored_bytes=0,
            seconds=time.monotonic() - started,
            verb="loaded",
        )
    )
    return objects
