"""A backup's rows with exact types, for analysis: DuckDB SQL, Arrow tables, Parquet files.

A JSON reader guesses types from values: DuckDB reads ``numeric(30,10)`` as DOUBLE and
``bytea`` and ``jsonb`` as VARCHAR; pandas fails on big numbers. Here every column is
read from the line's own bytes with the type the manifest records (docs/format.md,
"Reading with exact types", has the table of what each type becomes):

- each value's JSON text is cut out of the line between its column's key and the next
  column's key (neither can occur inside a value: quotes in strings are escaped), so a
  number never passes through a float on its way to DECIMAL;
- strings are unescaped by DuckDB's JSON functions; ``bytea`` becomes BLOB, ``json``
  and ``jsonb`` JSON, BC dates and timestamps are given DuckDB's signed years (DuckDB
  would otherwise ignore the " BC" and read the year after Christ);
- what no engine type holds exactly (``interval``, ``money``, ranges, unconstrained
  ``numeric``, ...) is the PostgreSQL text form, exact, as VARCHAR.

Needs the ``analysis`` extra (DuckDB, pyarrow).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from . import _rows
from .backup import DataFileReader, check_stored, open_backup
from .errors import AsyncsnapError, OutputError, UsageError, VerificationFailed
from .manifest import Backup, BackupColumn, BackupFile, BackupTable
from .plan import file_stem
from .storage import PrivateScratch

T = TypeVar("T")


class CannotConvert(AsyncsnapError):
    """Raised by ``read_arrow``, ``convert`` and ``diff`` when a value has no exact
    engine type (out of DuckDB's range, or NaN in a ``numeric(p,s)`` column)."""


def import_duckdb() -> Any:
    """DuckDB, or a usage error saying how to install it."""
    try:
        import duckdb
    except ImportError as exc:
        raise UsageError(
            "this needs DuckDB, which is not installed",
            hint="pip install 'asyncsnap[analysis]'",
        ) from exc
    return duckdb


def literal(text: str) -> str:
    """``text`` as a DuckDB string literal (standard SQL: only ``'`` is doubled)."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def line_prefixes(table: BackupTable) -> list[str]:
    """What precedes each column's value in a line: ``{"a":`` then ``,"b":``."""
    return [
        ("{" if i == 0 else ",") + _rows.json_string(c.name.encode()).decode() + ":"
        for i, c in enumerate(table.columns)
    ]


def token_sql(prefixes: Sequence[str], index: int, line: str = "line") -> str:
    """A DuckDB expression for column ``index``'s JSON text in ``line``, byte for byte.

    Each prefix occurs once in a line: it holds an unescaped quote, which no string value
    can, and arrays hold no ``"key":``. So the value is what lies between the column's
    prefix and the next one's (or the closing brace)."""
    rest = f"split_part({line}, {literal(prefixes[index])}, 2)"
    if index + 1 < len(prefixes):
        return f"split_part({rest}, {literal(prefixes[index + 1])}, 1)"
    return f"left({rest}, length({rest}) - 1)"


# --------------------------------------------------------------- type mapping

_MODIFIER = re.compile(
    r"^(?P<base>[a-z ]+?)(?:\((?P<args>[0-9, ]+)\))?(?P<rest>( with(out)? time zone)?)$"
)
_INTEGERS = {"smallint": "SMALLINT", "integer": "INTEGER", "bigint": "BIGINT"}
_STRINGS = {"text", "character varying", "character", "name", '"char"', "bpchar"}
_MAX_DECIMAL_DIGITS = 38


@dataclass(frozen=True)
class TypedColumn:
    """How one column is read: its engine type and the expression over its JSON text
    ``t`` (never NULL: a SQL NULL is the JSON ``null``, handled around it)."""

    name: str
    pg_type: str
    engine_type: str
    expression: str  # over the column's JSON text, written ``_T``
    text_form: bool  # True: the PostgreSQL text form, as VARCHAR (no exact engine type)


_T = "__value__"  # the column's JSON text in an expression, bound by ``_bind``


def _unquoted(t: str) -> str:
    return f"json_extract_string({t}, '$')"


def _maybe_unquoted(t: str) -> str:
    # numbers are written bare; some values of numeric types as strings (NaN, Infinity)
    return f"CASE WHEN starts_with({t}, '\"') THEN {_unquoted(t)} ELSE {t} END"


def _signed_year(s: str) -> str:
    """PostgreSQL's "Y-...  BC" as DuckDB's astronomical year (1 BC is year 0, 2 BC -1)."""
    year = f"CAST(split_part({s}, '-', 1) AS INTEGER)"
    after = f"substr({s}, strpos({s}, '-'), length({s}) - strpos({s}, '-') - 2)"
    return (
        f"CASE WHEN ends_with({s}, ' BC') THEN CAST(1 - {year} AS VARCHAR) || {after} ELSE {s} END"
    )


def typed_column(column: BackupColumn, *, portable_times: bool = False) -> TypedColumn:
    """How ``column`` is read. ``portable_times``: ``time with time zone`` as text (Arrow
    and Parquet have no time with an offset: DuckDB would drop it)."""
    t = _T
    pg_type = column.type
    if column.encoding == "array":
        # a JSON array; or a string holding the text form (bounds not 1, -0 in floats)
        return TypedColumn(column.name, pg_type, "JSON", f"CAST({t} AS JSON)", False)
    if column.encoding == "text":
        if pg_type in ("json", "jsonb"):
            return TypedColumn(column.name, pg_type, "JSON", f"CAST({_unquoted(t)} AS JSON)", False)
        return TypedColumn(column.name, pg_type, "VARCHAR", _unquoted(t), True)
    match = _MODIFIER.match(pg_type)
    base = (match.group("base") + match.group("rest")) if match else pg_type
    args = [int(a) for a in match.group("args").split(",")] if match and match.group("args") else []

    def as_(engine: str, expression: str, text_form: bool = False) -> TypedColumn:
        return TypedColumn(column.name, pg_type, engine, expression, text_form)

    if base in _INTEGERS:
        return as_(_INTEGERS[base], f"CAST({t} AS {_INTEGERS[base]})")
    if base == "numeric":
        if len(args) == 2 and args[0] <= _MAX_DECIMAL_DIGITS:
            decimal = f"DECIMAL({args[0]},{args[1]})"
            # NaN and Infinity (strings) fail the cast, naming the value: never a NULL
            return as_(decimal, f"CAST({t} AS {decimal})")
        return as_("VARCHAR", _maybe_unquoted(t), True)
    if base in ("real", "double precision"):
        engine = "FLOAT" if base == "real" else "DOUBLE"
        return as_(engine, f"CAST({_maybe_unquoted(t)} AS {engine})")
    if base == "boolean":
        return as_("BOOLEAN", f"CAST({t} AS BOOLEAN)")
    if base in _STRINGS:
        return as_("VARCHAR", _unquoted(t))
    if base == "bytea":
        return as_("BLOB", f"unhex(substr({_unquoted(t)}, 3))")
    if base in ("json", "jsonb"):
        return as_("JSON", f"CAST({_unquoted(t)} AS JSON)")
    if base == "uuid":
        return as_("UUID", f"CAST({_unquoted(t)} AS UUID)")
    if base == "date":
        return as_("DATE", f"CAST({_signed_year(_unquoted(t))} AS DATE)")
    if base == "timestamp without time zone":
        return as_("TIMESTAMP", f"CAST({_signed_year(_unquoted(t))} AS TIMESTAMP)")
    if base == "timestamp with time zone":
        return as_("TIMESTAMPTZ", f"CAST({_signed_year(_unquoted(t))} AS TIMESTAMPTZ)")
    if base == "time without time zone":
        return as_("TIME", f"CAST({_unquoted(t)} AS TIME)")
    if base == "time with time zone" and not portable_times:
        return as_("TIMETZ", f"CAST({_unquoted(t)} AS TIMETZ)")
    # interval (ISO 8601, which DuckDB does not parse), money (locale text), network,
    # geometric, range, bit, text search, enum, domain and extension types: the text form
    return as_("VARCHAR", _maybe_unquoted(t), True)


def typed_columns(table: BackupTable, *, portable_times: bool = False) -> list[TypedColumn]:
    return [typed_column(c, portable_times=portable_times) for c in table.columns]


DEFAULT_LINE_SIZE = 2_000_000  # DuckDB's own default
# DuckDB's memory limit (its buffers; the process peaks at about twice it). Measured on a
# diff of two 5 M-row exports, medians of 4: 256 MB ran in 0.81 of the time 1 GB took and
# peaked at 459 MiB against 877; 128 MB was no faster.
DEFAULT_MEMORY_LIMIT = "256MB"
_READ_BUFFER = 4 << 20
_LINE_SIZE = re.compile(r"Maximum line size of \d+ bytes exceeded\. Actual Size: ?(\d+)")


def read_csv_sql(paths: Sequence[str], compression: str, line_size: int = DEFAULT_LINE_SIZE) -> str:
    """DuckDB's reader of the files' lines, each line one VARCHAR, byte for byte: no
    delimiter, quote or escape that a line can hold raw (JSON escapes every control
    character), no header, no type guessing.

    DuckDB allocates its read buffers whole and outside what it can spill: with its
    default (32 MiB) a 128 MB memory limit failed where 4 MiB buffers ran within 32 MB
    (measured, 5 M rows). Lines longer than ``line_size`` fail the read (``with_lines``
    retries with the size DuckDB reports)."""
    files = "[" + ", ".join(literal(p) for p in paths) + "]"
    buffer = max(_READ_BUFFER, line_size + (1 << 20))
    return (
        f"read_csv({files}, delim = chr(1), quote = '', escape = '', header = false, "
        "columns = {'line': 'VARCHAR'}, auto_detect = false, "
        f"compression = {literal(compression)}, max_line_size = {line_size}, "
        f"buffer_size = {buffer})"
    )


def with_lines(run: Callable[[int], T], what: str) -> T:
    """``run(line_size)``, again with a larger line size while DuckDB finds a longer line.
    DuckDB's errors quote the line (table data): they are re-raised without their text."""
    duckdb = import_duckdb()
    line_size = DEFAULT_LINE_SIZE
    while True:
        try:
            return run(line_size)
        except duckdb.InvalidInputException as exc:
            found = _LINE_SIZE.search(str(exc))
            if found is None:
                raise VerificationFailed(
                    f"{what}: DuckDB cannot read a line of the data files",
                    hint="`asyncsnap verify` checks every line of the backup",
                ) from None
            line_size = max(int(found.group(1)) + 2, 2 * line_size)
        except duckdb.ConversionException as exc:
            # A value outside the engine type's range (a timestamp after 294247, NaN in a
            # numeric(p,s)): said, never replaced by NULL. DuckDB's first line names it.
            raise CannotConvert(
                f"{what}: a value has no exact engine type: {str(exc).splitlines()[0]}",
                hint="docs/format.md 'Reading with exact types' lists the ranges; the "
                "NDJSON file holds its text form",
            ) from None
        except duckdb.OutOfMemoryException:
            longer = f" (lines of {line_size} bytes)" if line_size > DEFAULT_LINE_SIZE else ""
            raise UsageError(
                f"{what}: DuckDB ran out of memory{longer}", hint="raise --memory-limit"
            ) from None


def select_sql(
    table: BackupTable,
    paths: Sequence[str],
    compression: str,
    *,
    portable_times: bool = False,
    line_size: int = DEFAULT_LINE_SIZE,
) -> str:
    """A SELECT of the table's rows with exact types, from its files."""
    columns = typed_columns(table, portable_times=portable_times)
    if not columns:
        return (
            "SELECT 1 AS no_columns WHERE false"
            if not paths
            else (f"SELECT NULL AS no_columns FROM {read_csv_sql(paths, compression, line_size)}")
        )
    if not paths:
        return (
            "SELECT "
            + ", ".join(f"CAST(NULL AS {c.engine_type}) AS {identifier(c.name)}" for c in columns)
            + " WHERE false"
        )
    prefixes = line_prefixes(table)
    tokens = ", ".join(
        f"NULLIF({token_sql(prefixes, i)}, 'null') AS c{i}" for i in range(len(columns))
    )
    values = ", ".join(
        f"{c.expression.replace(_T, f'c{i}')} AS {identifier(c.name)}"
        for i, c in enumerate(columns)
    )
    reader = read_csv_sql(paths, compression, line_size)
    return f"SELECT {values} FROM (SELECT {tokens} FROM {reader})"


# --------------------------------------------------------------- files


class Staging:
    """Local, checked copies of data files for DuckDB to read.

    A plain local backup's files are read where they are, after their SHA-256 and size
    are checked against the manifest. An encrypted one, or one in an object store, is
    decrypted and decompressed into a private temporary directory (checked as it is
    read), since DuckDB reads neither age nor object stores."""

    def __init__(self, scratch: PrivateScratch) -> None:
        self._scratch = scratch
        self._count = 0

    def files(self, backup: Backup, entries: Sequence[BackupFile]) -> tuple[list[str], str]:
        """Paths and the compression DuckDB reads them with."""
        if isinstance(backup.path, Path) and not backup.encryption:
            for entry in entries:
                problem = check_stored(backup.source, entry.path, entry.stored_bytes, entry.sha256)
                if problem:
                    raise VerificationFailed(
                        f"{entry.path} {problem}",
                        hint="the backup is damaged; `asyncsnap verify` says more",
                    )
            return [str(backup.path.resolve() / e.path) for e in entries], backup.compression
        paths = []
        for entry in entries:
            self._count += 1
            target = self._scratch.path() / f"{self._count:06d}.ndjson"
            reader = DataFileReader(backup, entry)
            try:
                with open(target, "xb") as out:
                    for block in reader:
                        out.write(block)
                reader.finish()
            finally:
                reader.close()
            paths.append(str(target))
        return paths, "none"


@contextlib.contextmanager
def engine(
    scratch: PrivateScratch, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2
) -> Iterator[Any]:
    """A DuckDB connection that spills into ``scratch`` and loads no extension."""
    duckdb = import_duckdb()
    spill = scratch.path() / "spill"
    spill.mkdir(mode=0o700, exist_ok=True)
    con = duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "threads": threads,
            "temp_directory": str(spill),
            "preserve_insertion_order": False,
            # Only the files we name: no extension downloads.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    try:
        con.execute("SET enable_progress_bar = false")  # a session setting, not a global one
        yield con
    finally:
        con.close()


def opened_backup(backup: str | Path | Backup, identities: Sequence[Any]) -> Backup:
    """A backup opened (``open_backup``) with the keys to read it, if it is encrypted.

    :raises UsageError: it is encrypted and no key was given."""
    opened = backup if isinstance(backup, Backup) else open_backup(backup)
    if identities:
        opened = replace(opened, identities=tuple(identities))
    if opened.encryption and not opened.identities:
        raise UsageError(
            f"{opened.path} is encrypted (age, to {opened.encryption[0][:16]}...)",
            hint="give the matching secret key file with --identity",
        )
    return opened


def find_table(backup: Backup, name: str) -> BackupTable:
    """A table by ``schema.name`` (or ``name`` when only one schema has it)."""
    found = [
        t
        for t in backup.tables
        if t.has_data and (f"{t.schema}.{t.name}" == name or t.name == name)
    ]
    exact = [t for t in found if f"{t.schema}.{t.name}" == name]
    if len(exact) == 1:
        return exact[0]
    if len(found) == 1:
        return found[0]
    raise UsageError(
        f"{'no' if not found else 'more than one'} table {name!r} in {backup.path}",
        hint="name it as schema.table; `asyncsnap inspect` lists them",
    )


# --------------------------------------------------------------- the public readers


# Views are SQL for someone else's session: a fixed limit, enough for all but huge rows
# (DuckDB then says "Maximum line size ... exceeded" and how much it needs).
_VIEW_LINE_SIZE = 16 << 20


def views_sql(backup: str | Path | Backup) -> str:
    """``CREATE VIEW`` statements for DuckDB reading every table of a local, unencrypted
    backup with exact types (``inspect --sql duckdb``). Each view is named as its table,
    in a schema of its own name; the files are read where they are, by absolute path."""
    opened = opened_backup(backup, ())
    if not isinstance(opened.path, Path) or opened.encryption:
        raise UsageError(
            f"{opened.path}: DuckDB can read only a local, unencrypted backup's files",
            hint="asyncsnap convert it to Parquet first (it decrypts and fetches)",
        )
    root = opened.path.resolve()
    statements = [
        f"-- {opened.path}: every table with the manifest's types (asyncsnap analysis)",
    ]
    schemas = sorted({t.schema for t in opened.tables if t.has_data})
    statements += [f"CREATE SCHEMA IF NOT EXISTS {identifier(s)};" for s in schemas]
    for table in opened.tables:
        if not table.has_data:
            continue
        paths = [str(root / f.path) for f in table.files if f.rows]
        statements.append(
            f"CREATE OR REPLACE VIEW {identifier(table.schema)}.{identifier(table.name)} AS "
            f"{select_sql(table, paths, opened.compression, line_size=_VIEW_LINE_SIZE)};"
        )
    return "\n".join(statements) + "\n"


def read_arrow(
    backup: str | Path | Backup,
    table: str,
    *,
    identities: Sequence[Any] = (),
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> Any:
    """One table of a backup as a ``pyarrow.Table`` with exact types (then
    ``.to_pandas()``, ``polars.from_arrow``). ``table``: ``schema.name``, or the name
    alone when one schema has it. Types as docs/format.md "Reading with exact types";
    ``time with time zone`` is its text form (Arrow has no time with an offset).

    Example::

        orders = asyncsnap.read_arrow("backups/b1", "public.orders")
        frame = orders.to_pandas()
    """
    opened = opened_backup(backup, identities)
    entry = find_table(opened, table)
    scratch = PrivateScratch()
    try:
        with engine(scratch, memory_limit=memory_limit) as con:
            paths, compression = Staging(scratch).files(opened, [f for f in entry.files if f.rows])
            return with_lines(
                lambda size: _arrow_table(
                    con.sql(
                        select_sql(entry, paths, compression, portable_times=True, line_size=size)
                    )
                ),
                entry.qualified,
            )
    finally:
        scratch.remove()


def _arrow_table(relation: Any) -> Any:
    # A relation's to_arrow_table (DuckDB 1.5 and 2.x): a cursor's fetch_arrow_table is
    # deprecated in 1.5 and in 2.0 warns that it copies the rows once more.
    return relation.to_arrow_table()


@dataclass(frozen=True)
class ConvertedTable:
    schema: str
    name: str
    rows: int
    path: str  # the file written, relative to the output directory
    text_columns: tuple[str, ...]  # columns written as their PostgreSQL text form


@dataclass(frozen=True)
class ConvertResult:
    directory: Path
    tables: tuple[ConvertedTable, ...]
    seconds: float = 0.0


def convert(
    backup: str | Path | Backup,
    directory: str | Path,
    *,
    to: str = "parquet",
    identities: Sequence[Any] = (),
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = 2,
) -> ConvertResult:
    """Write each table of a backup as one Parquet file, ``<directory>/<file stem>.parquet``
    (the stem as in the backup's data file names), with exact types (docs/format.md,
    "Reading with exact types"). The directory is created; a file that exists already is
    never overwritten.

    Example::

        asyncsnap.convert("backups/b1", "parquet/b1")
    """
    import time

    if to != "parquet":
        raise UsageError(f"cannot convert to {to!r}", hint="--to parquet")
    started = time.monotonic()
    opened = opened_backup(backup, identities)
    out = Path(directory)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc
    tables = [t for t in opened.tables if t.has_data]
    names = {t.key: file_stem(*t.key) + ".parquet" for t in tables}
    taken = [n for n in names.values() if (out / n).exists()]
    if taken:
        raise OutputError(
            f"{out / taken[0]} exists already", hint="convert into an empty or new directory"
        )
    done: list[ConvertedTable] = []
    scratch = PrivateScratch()
    finished = False
    try:
        with engine(scratch, memory_limit=memory_limit, threads=threads) as con:
            staging = Staging(scratch)
            for table in tables:
                paths, compression = staging.files(opened, [f for f in table.files if f.rows])
                target = out / names[table.key]

                def write(
                    size: int,
                    table: BackupTable = table,
                    paths: list[str] = paths,
                    compression: str = compression,
                    target: Path = target,
                ) -> None:
                    query = select_sql(
                        table, paths, compression, portable_times=True, line_size=size
                    )
                    con.execute(f"COPY ({query}) TO {literal(str(target))} (FORMAT parquet)")
                    target.chmod(0o600)  # it holds the table's rows, as the backup's files do

                with_lines(write, table.qualified)
                done.append(
                    ConvertedTable(
                        table.schema,
                        table.name,
                        table.rows,
                        names[table.key],
                        tuple(
                            c.name for c in typed_columns(table, portable_times=True) if c.text_form
                        ),
                    )
                )
        finished = True
    finally:
        scratch.remove()
        if not finished:  # no half-converted directory that looks complete
            for name in names.values():
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
    return ConvertResult(out, tuple(done), time.monotonic() - started)
