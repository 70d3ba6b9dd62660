"""A restore's plan, pure: which kind of restore, what loads in what order and in which
units, and the plan in words (what ``--dry-run`` prints). No I/O: what the target holds
is read by ``target`` and handed in, so all of it is tested without a server.

The rule that picks the kind (``kind_from_options``, then ``kind_from_target``; shown
first by ``--dry-run``):

- a backup without a schema (format 1-2, ``dump --no-schema``) or ``--data-only``: rows
  into existing tables;
- ``--clean`` or ``--create``: the whole backup, schema and rows, replacing what is there;
- otherwise, by what the target holds of the backup's tables: none, the whole backup
  (an empty database becomes a copy); all, rows into them; some, an error naming them.

Rows go in parents first, by the *target's* foreign keys (the schema may have moved on
since the dump); cycles and self-references are planned explicitly (``CyclePlan``) and
reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..catalog import Table, quote_ident, sql_name
from ..errors import SchemaMismatch, TargetNotEmpty, UsageError, some_names
from ..format import Backup, BackupTable
from ..patterns import Selection
from ..plan import CyclePlan, TableKey, plan_cycles, refresh_order, restore_order
from ..text import count
from .options import Mode, RestoreOptions

Kind = str  # "existing" (rows into existing tables) | "whole" (schema and rows)
# The kind, the reason in words, and the backup's tables the target has (--clean drops).
KindChoice = tuple[Kind, str, list[str]]


# The kind of restore ----------------------------------------------------------------


def check_options(
    backup: Backup, *, data_only: bool, schema_only: bool, clean: bool, create: bool
) -> KindChoice | None:
    """What the options alone decide (before connecting), or None.

    :raises UsageError: for options that exclude each other or need a schema.
    """
    if data_only and schema_only:
        raise UsageError("--data-only and --schema-only exclude each other", hint="choose one")
    if backup.schema is None:
        if schema_only or clean or create:
            flag = "--schema-only" if schema_only else "--clean" if clean else "--create"
            raise UsageError(
                f"{flag} needs the schema, and this backup has none "
                "(written with --no-schema, or by asyncsnap before 0.4)",
                hint="create the tables yourself, then restore the rows into them",
            )
        return "existing", "the backup holds no schema: rows into existing tables", []
    if data_only:
        if clean or create:
            raise UsageError(
                "--data-only loads into existing tables; --clean and --create make them",
                hint="drop --data-only to restore schema and rows",
            )
        return "existing", "--data-only: rows into existing tables", []
    return None


def kind_from_options(backup: Backup, o: RestoreOptions) -> KindChoice | None:
    """The kind when the options decide it without looking at the target, or None.

    :raises UsageError: when the options rule every kind out.
    """
    early = check_options(
        backup, data_only=o.data_only, schema_only=o.schema_only, clean=o.clean, create=o.create
    )
    if early is not None:
        return early
    if (o.create or o.clean) and o.selection.filters:
        raise UsageError(
            "-t/-T choose tables to load into existing tables; --clean and --create restore "
            "the whole backup",
            hint="drop -t/-T, or add --data-only to load the chosen tables into existing ones",
        )
    if o.create:
        return "whole", "--create: a new database with the backup's schema and rows", []
    return None


def kind_from_target(
    chosen: Sequence[BackupTable], existing: list[str], o: RestoreOptions
) -> KindChoice:
    """The kind by what the target holds: ``existing`` are the backup's tables it has,
    ``chosen`` the backup's tables the -t/-T filters keep.

    :raises TargetNotEmpty, SchemaMismatch: when the target rules every kind out.
    """
    filtered = o.selection.filters
    if o.clean:
        return "whole", "--clean: the backup's objects are dropped and re-created", existing
    if not existing and not filtered:
        return "whole", "the target has none of the backup's tables: schema and rows", []
    if o.schema_only:
        raise TargetNotEmpty(
            f"the target already has {some_names(existing)}",
            hint="pass --clean to drop and re-create the backup's objects",
        )
    present = set(existing)
    missing = [t.qualified for t in chosen if t.qualified not in present]
    if missing:
        raise SchemaMismatch(
            f"the target database has no table {some_names(missing)}"
            + (f" (it has {some_names(existing)})" if existing else ""),
            # -t/-T load into existing tables only: --clean refuses them
            hint="create them first, or leave them out with -T"
            if filtered
            else "restore into a database without the backup's tables (or pass --clean) to "
            "create them, or leave them out with --data-only -T",
        )
    return "existing", "the target has the backup's tables: rows into them", []


def check_whole_flags(o: RestoreOptions) -> None:
    """A whole restore creates the tables: the flags of loading into existing ones do
    not apply.

    :raises UsageError: naming the flag.
    """
    if o.mode != "refuse" or o.single_transaction:
        flag = (
            "--single-transaction"
            if o.single_transaction
            else "--truncate"
            if o.mode == "truncate"
            else "--append"
        )
        raise UsageError(
            f"{flag} is for loading into existing tables; this restore creates them",
            hint="drop the flag (--clean replaces existing objects)",
        )


def truncates_in_one_transaction(kind: Kind, o: RestoreOptions) -> bool:
    """Whether --truncate turns the load into one transaction (TRUNCATE is only safe in
    the transaction that loads: a damaged file must leave the old rows in place)."""
    return kind == "existing" and o.mode == "truncate" and not o.single_transaction


TRUNCATE_IN_ONE = "--truncate: every table is emptied and loaded in one transaction"
CREATE_THEN = "then the backup's schema and rows are restored into it"


def whole_restore_lines(
    pre_data: list[str], post_data: str, backup: Backup, *, schema_only: bool
) -> list[str]:
    """A whole restore in words, around its schema steps' own (``SchemaSteps.describe``)."""
    lines = list(pre_data)
    if not schema_only:
        data_rows = sum(t.rows for t in backup.tables)
        data_tables = sum(1 for t in backup.tables if t.has_data)
        lines.append(
            f"then the rows of {count(data_tables, 'table')} "
            f"({count(data_rows, 'row')}), all at once: no constraint exists yet"
        )
    lines.append(post_data)
    if not schema_only:
        lines.append("then sequences, large objects and materialized views, then ANALYZE")
    return lines


# What loads, into what ---------------------------------------------------------------


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
    # a staging table and every such value is checked to come out unchanged (``Stage``).
    retyped: tuple[Retyped, ...] = ()

    @property
    def quiets(self) -> bool:
        """Whether loading this table switches triggers or rules off."""
        return any(sw.state != "D" for sw in self.switches)

    def insert_sql(self) -> str:
        """One INSERT taking a JSON array of row objects as ``$1`` (``json``, sent as
        UTF-8 bytes by ``load.loading_connection``).

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


def as_catalog_table(t: BackupTable) -> Table:
    """A backup's table as the patterns of -t/-T take it."""
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


def chosen_tables(backup: Backup, selection: Selection) -> list[BackupTable]:
    """The backup's tables the -t/-T/-n/-N patterns keep, in the backup's order."""
    chosen = {t.key for t in selection.apply([as_catalog_table(t) for t in backup.tables])}
    return [t for t in backup.tables if t.key in chosen]


def plan_loads(
    backup: Backup,
    target_tables: Sequence[Table],
    selection: Selection,
    *,
    ignore_missing_columns: bool,
) -> list[TableLoad]:
    """Match every selected backup table with data to its target table, column by name."""
    by_key = {t.key: t for t in target_tables}
    picked = {t.key for t in chosen_tables(backup, selection)}
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
    shared: dict[Any, Any] = {}
    loads = [_table_load(source, by_key[source.key], shared) for source in chosen]
    problems = [f"{ld.source.qualified} ({', '.join(ld.dropped)})" for ld in loads if ld.dropped]
    if problems and not ignore_missing_columns:
        raise SchemaMismatch(
            "the target lacks columns the backup has: " + "; ".join(problems),
            hint="add them, or pass --ignore-missing-columns to drop their values",
        )
    return loads


def _table_load(source: BackupTable, target: Table, shared: dict[Any, Any]) -> TableLoad:
    """``shared``: one object for each tuple or set of names alike (ten thousand tables of
    one shape hold the same few: 3 MB less at 10,000 tables)."""
    target_cols = {c.name: c for c in target.columns}
    backup_cols = [c.name for c in source.columns]
    written = tuple(c for c in backup_cols if c in target_cols and target_cols[c].generated is None)
    text_columns = frozenset(
        c.name for c in source.columns if c.encoding == "text" and c.name in written
    )
    dropped = tuple(c for c in backup_cols if c not in target_cols)
    defaulted = tuple(
        c.name for c in target.columns if c.name not in backup_cols and c.generated is None
    )
    return TableLoad(
        source=source,
        target=target,
        columns=shared.setdefault(written, written),
        text_columns=shared.setdefault(text_columns, text_columns),
        dropped=shared.setdefault(dropped, dropped),
        defaulted=shared.setdefault(defaulted, defaulted),
        overriding=any(target_cols[c].identity == "always" for c in written),
    )


def matviews_wanted(backup: Backup, selection: Selection) -> list[TableKey]:
    """The materialized views that were populated at dump time and that the patterns
    keep: refreshed once the rows they read are in (those that exist here as such)."""
    return [
        (k.schema, k.name)
        for k in backup.skipped
        if k.kind == "materialized view"
        and k.refresh
        and k.schema is not None
        and k.name is not None
        and selection.matches_name(k.schema, k.name)
    ]


def order_loads(
    loads: list[TableLoad],
    described: Sequence[Table],
    backup: Backup,
    selection: Selection,
    *,
    mode: Mode,
    disable_triggers: bool,
    matviews: Iterable[TableKey] = (),
    view_dependencies: Sequence[tuple[TableKey, TableKey]] = (),
) -> RestorePlan:
    """The plan: ``loads`` in levels by the target's foreign keys (``described``: the
    target's tables), cycles planned, the sequences and large objects that go with them,
    and the materialized views to refresh (``matviews``: those of ``matviews_wanted``
    that exist here as such; ``view_dependencies`` as ``catalog.view_dependencies``)."""
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
    matviews = list(matviews)
    refresh = refresh_order(matviews, list(view_dependencies)) if matviews else []
    large_objects = 0
    if backup.large_objects is not None and not selection.include:
        large_objects = backup.large_objects.objects
    return RestorePlan(
        levels=[lv for lv in levels if lv],
        cycles=cycles,
        sequences=sequences,
        mode=mode,
        roots={key: _root(key, by_key) for key in target_keys},
        refresh=refresh,
        large_objects=large_objects,
    )


def _root(key: TableKey, by_key: dict[TableKey, Table]) -> TableKey:
    """A partition's top-most partitioned ancestor among the target's tables (a table's
    own key when it is none's partition)."""
    root = key
    while (parent := by_key[root].parent) is not None and parent in by_key:
        root = parent
    return root


# In what units, on how many connections ------------------------------------------------


@dataclass
class Unit:
    """What one connection loads in one transaction: a table, one file of a split table,
    every table of a foreign-key cycle, or a run of small tables (``_small_together``)."""

    loads: list[TableLoad]
    cycle: CyclePlan | None = None
    file_index: int | None = None  # one file of a split table, loaded on its own
    # Whether its transaction locks its tables against other writers and checks they are
    # empty before loading (``target.hold_empty``): the default mode, for a whole table or
    # the first file of a split one.
    checks: bool = False
    checked: anyio.Event | None = None  # set once the first file's transaction checked
    after: anyio.Event | None = None  # a later file of a split table waits for that

    @property
    def rows(self) -> int:
        if self.file_index is not None:
            return self.loads[0].source.files[self.file_index].rows
        return sum(ld.source.rows for ld in self.loads)


def units(
    plan: RestorePlan, level: list[TableLoad], *, split_files: bool, checks: bool = False
) -> list[Unit]:
    """The level's units. With ``split_files``, a table of several files (split at dump
    time) loads over several connections, a transaction per file; cycles stay whole, their
    constraints need one transaction. With ``checks`` (the default mode: refuse tables
    with rows), each table's first unit holds it and checks it is empty; a split table's
    later files wait for that check and come after the level's other units, so that
    their connections load other tables meanwhile. Small whole tables load in runs, a
    transaction a run (``_small_together``), unless everything is one transaction."""
    in_cycle = {k: c for c in plan.cycles for k in c.tables}
    grouped: dict[object, Unit] = {}
    found: list[Unit] = []
    later: list[Unit] = []  # files 2.. of split tables, behind their first file's check
    for load in level:
        cycle = in_cycle.get(plan.roots[load.target.key])
        if cycle is not None:
            unit = grouped.setdefault(id(cycle), Unit(loads=[], cycle=cycle, checks=checks))
            unit.loads.append(load)
        elif split_files and len(load.source.files) > 1 and not load.quiets:
            # (ALTER TABLE to switch triggers off would make the files' transactions
            # wait for one another: such a table loads whole)
            checked = anyio.Event() if checks else None
            found.append(Unit(loads=[load], file_index=0, checks=checks, checked=checked))
            rest = [
                Unit(loads=[load], file_index=i, after=checked)
                for i in range(1, len(load.source.files))
            ]
            (later if checks else found).extend(rest)
        else:
            found.append(Unit(loads=[load], checks=checks))
    ordered = _biggest_first([*found, *grouped.values()])
    # (in one transaction for everything, --single-transaction, there is nothing to share)
    return (_small_together(ordered) if split_files else ordered) + _biggest_first(later)


# Small tables load several to a transaction: a table of its own paid BEGIN, the LOCK and
# the emptiness check, and COMMIT (and its WAL flush) for a COPY of a few rows, four round
# trips of five. A run shares them: the same atomicity per run as per table (a failure or
# a kill leaves none of a run's tables loaded, and the failure says which were), the locks
# of one run at most TABLES_A_RUN, as the dump takes them (``copy.SMALL_RUN``).
SMALL_TABLE = 256 << 10  # its files' NDJSON bytes
TABLES_A_RUN = 20


def _small_together(units: list[Unit]) -> list[Unit]:
    """``units`` with each stretch of whole small tables (no cycle, no split file) joined
    into runs of at most ``TABLES_A_RUN`` tables and ``SMALL_TABLE`` bytes together."""
    found: list[Unit] = []
    run: Unit | None = None
    size = 0
    for unit in units:
        load = unit.loads[0]
        table_bytes = sum(f.bytes for f in load.source.files)
        if unit.cycle is not None or unit.file_index is not None or table_bytes > SMALL_TABLE:
            found.append(unit)
            continue
        if run is None or len(run.loads) >= TABLES_A_RUN or size + table_bytes > SMALL_TABLE:
            run = Unit(loads=[], checks=unit.checks)
            found.append(run)
            size = 0
        run.loads.append(load)
        size += table_bytes
    return found


def _biggest_first(units: list[Unit]) -> list[Unit]:
    """The biggest tables first, so the longest load starts earliest; a split table's
    files in page order, as they were dumped: its rows then reach its indexes in the order
    they had, mostly at the right end of each btree, instead of splitting pages in the
    middle (files sorted by size made a -j 1 restore of pgbench_accounts 13.7 s against
    9.9 s for one COPY)."""
    return sorted(units, key=lambda u: (-sum(ld.source.rows for ld in u.loads), u.file_index or 0))


def connections_needed(plan: RestorePlan, jobs: int) -> int:
    """How many connections load at once: -j, but no more than the widest level has
    units."""
    widest = max((len(units(plan, lv, split_files=True)) for lv in plan.levels), default=1)
    return max(1, min(jobs, widest))
