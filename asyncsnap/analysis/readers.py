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
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from .. import _rows
from ..errors import AsyncsnapError, OutputError, UsageError, VerificationFailed
from ..format import Backup, BackupColumn, BackupFile, BackupTable
from ..plan import file_stem
from ..scratch import PrivateScratch
from ..storage.backup import open_backup

if TYPE_CHECKING:
    from .batches import LineBatches

T = TypeVar("T")


class CannotConvert(AsyncsnapError):
    """Raised by ``read_arrow``, ``convert`` and ``diff`` when a value has no exact
    engine type (out of DuckDB's range, or NaN in a ``numeric(p,s)`` column)."""


def import_duckdb() -> Any:
    """DuckDB (and pyarrow, which carries the lines to it), or a usage error saying how to
    install them."""
    try:
        import duckdb
        import pyarrow  # noqa: F401  # the lines reach DuckDB as Arrow batches
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


# DuckDB's memory limit (its buffers; the process peaks at about twice it). Measured on a
# diff of two 5 M-row exports, medians of 4: 256 MB ran in 0.81 of the time 1 GB took and
# peaked at 459 MiB against 877; 128 MB was no faster.
DEFAULT_MEMORY_LIMIT = "256MB"
# The relation a query reads a table's lines from (a registered Arrow stream of
# ``batches.LineBatches``: column ``line``).
LINES = "__lines__"


def select_sql(table: BackupTable, source: str = LINES, *, portable_times: bool = False) -> str:
    """A SELECT of the table's rows with exact types, from ``source``: a relation with one
    VARCHAR column ``line`` holding its lines (a registered stream, or a file reader)."""
    columns = typed_columns(table, portable_times=portable_times)
    if not columns:
        return f"SELECT NULL AS no_columns FROM {source}"
    prefixes = line_prefixes(table)
    tokens = ", ".join(
        f"NULLIF({token_sql(prefixes, i)}, 'null') AS c{i}" for i in range(len(columns))
    )
    values = ", ".join(
        f"{c.expression.replace(_T, f'c{i}')} AS {identifier(c.name)}"
        for i, c in enumerate(columns)
    )
    return f"SELECT {values} FROM (SELECT {tokens} FROM {source})"


# DuckDB holds a line several times over while it works on it (the stream's batch, a
# hash table's copy, the result's): a limit below this many times the longest line read
# cannot run, whatever it spills. Measured with a 300 MB line: convert ran at 5x (1.6 GB)
# in 6 s, and at 4x had not finished after 5 minutes (DuckDB 2.0.1).
_LINE_ROOM = 5
_BASE_ROOM = 64 << 20


class _RoomForLines(Exception):
    """DuckDB ran out of memory holding lines its limit cannot hold: run again with
    ``limit`` bytes (raised by ``run_engine``, caught by ``attempts``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def memory_limit_bytes(con: Any) -> int:
    """The engine's memory limit, in bytes (DuckDB shows it as, say, ``244.1 MiB``)."""
    text = str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    number, _, unit = text.partition(" ")
    scale = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    return int(float(number) * scale.get(unit, 1))


def attempts(con: Any, attempt: Callable[[], T]) -> T:
    """``attempt()``, and again with a higher memory limit for as long as DuckDB ran out of
    memory holding lines longer than its limit allows (``run_engine`` says so). Each
    attempt reads its files anew (a stream is read once). The limit stays raised for the
    rest of the connection's work: the long line is still there."""
    while True:
        try:
            return attempt()
        except _RoomForLines as more:
            con.execute(f"SET memory_limit = '{more.limit}B'")


def run_engine(
    what: str, sources: Sequence[LineBatches], query: Callable[[], T], con: Any = None
) -> T:
    """``query()``, its failures as asyncsnap's errors, and then the check that every
    source was read to its end: an answer that missed a row is never given.

    DuckDB's error messages can quote a line (table data): they are not passed on.

    :param con: the engine, when the caller runs ``query`` in ``attempts``: running out of
        memory with a line longer than a quarter of the limit then asks for another attempt
        with room for it.
    :raises VerificationFailed: a file does not match its manifest, or a line cannot be
        read.
    :raises CannotConvert: a value has no exact engine type.
    :raises UsageError: DuckDB ran out of memory.
    """
    from .batches import engine_errors

    duckdb = import_duckdb()
    try:
        with engine_errors(sources):
            result = query()
    except duckdb.ConversionException as exc:
        # A value outside the engine type's range (a timestamp after 294247, NaN in a
        # numeric(p,s)): said, never replaced by NULL. DuckDB's first line names it.
        raise CannotConvert(
            f"{what}: a value has no exact engine type: {str(exc).splitlines()[0]}",
            hint="docs/format.md 'Reading with exact types' lists the ranges; the "
            "NDJSON file holds its text form",
        ) from None
    except duckdb.OutOfMemoryException:
        longest = max((s.longest for s in sources), default=0)
        needed = _LINE_ROOM * longest + _BASE_ROOM
        if con is not None and needed > memory_limit_bytes(con):
            raise _RoomForLines(needed) from None
        longer = f" (holding a line of {longest} bytes)" if longest > 1 << 20 else ""
        raise UsageError(
            f"{what}: DuckDB ran out of memory{longer}", hint="raise --memory-limit"
        ) from None
    except duckdb.Error:
        raise VerificationFailed(
            f"{what}: DuckDB cannot read a line of the data files",
            hint="`asyncsnap verify` checks every line of the backup",
        ) from None
    for source in sources:
        source.check_read(what)
    return result


def table_lines(backup: Backup, table: BackupTable, *, hashes: bool = False) -> LineBatches:
    """The table's lines, read through the checked reader (``batches``)."""
    from .batches import LineBatches

    return LineBatches(backup, table.files, hashes=hashes, text=True)


def check_rows(what: str, found: int, table: BackupTable) -> None:
    """The engine's output holds as many rows as the manifest lists, or an error."""
    if found != table.rows:
        raise VerificationFailed(
            f"{what}: {found} rows written of the {table.rows} the manifest lists",
            hint="report this: every row of a table must reach the answer",
        )


# --------------------------------------------------------------- the engine


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


def opened_backup(
    backup: str | Path | Backup, identities: Sequence[Any], *, increments: bool = False
) -> Backup:
    """A backup opened (``open_backup``; an increment only with ``increments``) with the
    keys to read it, if it is encrypted.

    :raises UsageError: it is encrypted and no key was given."""
    opened = backup if isinstance(backup, Backup) else open_backup(backup, increments=increments)
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


# Views are SQL for someone else's session, so they read the files with DuckDB's own CSV
# reader, held to what it reads exactly (measured, DuckDB 1.5.5 and 2.0.1): not in parallel
# (its parallel reader drops a long last line without a word and fails on lines of a few
# MB in mid-file), a fixed line limit (a longer line fails the query: "Maximum line size"),
# and a count of the lines against the manifest's rows before any row is returned.
_VIEW_LINE_SIZE = 16 << 20


def _view_reader_sql(paths: Sequence[str], compression: str) -> str:
    """DuckDB's reader of the files' lines, each line one VARCHAR ``line``, byte for byte:
    no delimiter, quote or escape that a line can hold raw (JSON escapes every control
    character), no header, no type guessing, one thread."""
    files = "[" + ", ".join(literal(p) for p in paths) + "]"
    return (
        f"read_csv({files}, delim = chr(1), quote = '', escape = '', header = false, "
        "columns = {'line': 'VARCHAR'}, auto_detect = false, parallel = false, "
        f"compression = {literal(compression)}, max_line_size = {_VIEW_LINE_SIZE}, "
        f"buffer_size = {_VIEW_LINE_SIZE + (1 << 20)})"
    )


def _view_source_sql(table: BackupTable, paths: Sequence[str], compression: str) -> str:
    """The table's lines for a view, or an error when the files hold another number of
    lines than the manifest's rows (an engine that dropped one must not answer)."""
    reader = _view_reader_sql(paths, compression)
    refusal = literal(
        f"{table.schema}.{table.name}: DuckDB read another number of lines than the "
        f"{table.rows} rows the manifest lists; use asyncsnap convert or read_arrow"
    )
    guard = (
        f"(SELECT CASE WHEN count(*) = {table.rows} THEN true "
        f"ELSE error({refusal}) END FROM {reader})"
    )
    return f"(SELECT line FROM {reader} WHERE {guard})"


def views_sql(backup: str | Path | Backup) -> str:
    """``CREATE VIEW`` statements for DuckDB reading every table of a local, unencrypted
    backup with exact types (``inspect --sql duckdb``). Each view is named as its table,
    in a schema of its own name; the files are read where they are, by absolute path.
    A view fails (never answers short) when DuckDB reads another number of lines than
    the manifest's rows, and on a line longer than 16 MiB."""
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
        if paths:
            source = _view_source_sql(table, paths, opened.compression)
        else:
            source = "(SELECT NULL::VARCHAR AS line WHERE false)"
        statements.append(
            f"CREATE OR REPLACE VIEW {identifier(table.schema)}.{identifier(table.name)} AS "
            f"{select_sql(table, source)};"
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

            def attempt() -> Any:
                lines = table_lines(opened, entry)
                con.register(LINES, lines.reader())
                query = partial(_arrow_table, con.sql(select_sql(entry, portable_times=True)))
                return run_engine(entry.qualified, [lines], query, con)

            arrow = attempts(con, attempt)
    finally:
        scratch.remove()
    check_rows(entry.qualified, arrow.num_rows, entry)
    return arrow


def _arrow_table(relation: Any) -> Any:
    # A relation's to_arrow_table (DuckDB 1.5 and 2.x): a cursor's fetch_arrow_table is
    # deprecated in 1.5 and in 2.0 warns that it copies the rows once more.
    return relation.to_arrow_table()


_CONVERT_HINT = "convert into an empty or new directory"


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
        raise OutputError(f"{out / taken[0]} exists already", hint=_CONVERT_HINT)
    done: list[ConvertedTable] = []
    created: list[Path] = []  # the files this run made, the only ones it may remove
    private: Path | None = None  # where DuckDB writes, inside the output directory
    scratch = PrivateScratch()
    finished = False
    try:
        with engine(scratch, memory_limit=memory_limit, threads=threads) as con:
            for table in tables:
                target = out / names[table.key]
                # Claimed first (0600, never one that exists), then replaced by the file
                # DuckDB wrote in a 0700 directory beside it: DuckDB makes its files with
                # the umask's mode, and the rows must never be readable by others.
                new_private_file(target, hint=_CONVERT_HINT).close()
                created.append(target)
                if private is None:
                    private = Path(tempfile.mkdtemp(prefix=".asyncsnap-convert-", dir=out))
                written = private / names[table.key]
                copy = (
                    f"COPY ({select_sql(table, portable_times=True)}) "
                    f"TO {literal(str(written))} (FORMAT parquet)"
                )

                def attempt(table: BackupTable = table, copy: str = copy) -> None:
                    lines = table_lines(opened, table)
                    con.register(LINES, lines.reader())
                    run_engine(table.qualified, [lines], partial(con.execute, copy), con)

                attempts(con, attempt)
                con.unregister(LINES)
                check_rows(table.qualified, _parquet_rows(written), table)
                written.chmod(0o600)
                os.replace(written, target)
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
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        if not finished:  # no half-converted directory that looks complete
            for path in created:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    return ConvertResult(out, tuple(done), time.monotonic() - started)


def _parquet_rows(path: Path) -> int:
    """The rows a Parquet file holds, from its footer (what a reader of it will get)."""
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def new_private_file(path: Path, *, hint: str) -> BinaryIO:
    """``path`` created for writing, 0600 (it holds rows, as the backup's files do), never
    a file that exists: no file that appeared since its directory was checked is
    overwritten, and the rows are never readable by others, not even for a moment.

    :raises OutputError: it exists, or cannot be created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise OutputError(f"{path} exists already", hint=hint) from exc
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    return os.fdopen(fd, "wb")


def lines_file(path: Path, lines: Iterable[bytes]) -> BackupFile:
    """A scratch file of ``lines`` (each ending in its newline), made as
    ``new_private_file`` makes one: a side of lines for the engine to read."""
    rows = size = 0
    with new_private_file(path, hint="a scratch file of diff's") as out:
        for line in lines:
            out.write(line)
            rows += 1
            size += len(line)
    return BackupFile(str(path), rows, size, size, "", longest_line=None)
