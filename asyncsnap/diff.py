"""What changed between two backups: ``asyncsnap diff A B``.

Per table: rows added, removed and changed (paired by primary key), or, for a table
without one, the rows added and removed as a multiset of whole rows; columns added,
dropped and retyped; sequences whose value moved; the large objects; and the difference
of the two schemas' SQL when both backups hold one.

How, and why so:

- A table whose files are the same bytes in both backups, or whose row count and
  fingerprint (docs/format.md, "Row fingerprints", ``dump --fingerprints``) are equal,
  is not read: its rows are
  the same multiset. After a benchmark run that is most tables.
- The others are read by DuckDB (an optional extra), out of core: it spills to a private
  temporary directory past ``memory_limit``, so memory stays bounded whatever the size.
  Lines are compared as the bytes the dump wrote, never as parsed values: a row is
  unchanged exactly when its line is, and no number goes through a float. A first pass
  groups the rows of both sides by a 64-bit hash of the line and keeps the hashes whose
  counts differ (cheap: no line is kept); a second pass fetches those lines and groups
  them exactly. A hash collision between a removed and an added line would hide both:
  with fingerprints in both manifests (``dump --fingerprints``) the result is checked
  against them (both sides' fingerprints and the SHA-256 of every differing line must add
  up; if they do not, the table is grouped by whole lines, exact and slower); without,
  the first pass groups by two 64-bit hashes of different inputs, 128 bits.
- Rows that differ are paired by the primary key's values as the dump wrote them (the
  bytes of each key column's JSON value in the line, cut at the next column's key, which
  cannot occur inside a value: quotes in strings are escaped).

Files are checked against the manifest's SHA-256 before DuckDB reads them; an encrypted
backup or one in an object store is first copied, decrypted and checked, into the private
temporary directory.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .analysis import (
    DEFAULT_MEMORY_LIMIT,
    Staging,
    engine,
    import_duckdb,
    line_prefixes,
    opened_backup,
    read_csv_sql,
    token_sql,
    with_lines,
)
from .backup import check_schema_file
from .encryption import decrypted
from .errors import OutputError, VerificationFailed
from .fingerprint import MODULUS, combine, line_value
from .manifest import Backup, BackupFile, BackupTable
from .plan import file_stem
from .storage import PrivateScratch
from .text import count

Status = Literal["unchanged", "changed", "new", "dropped", "columns differ"]


@dataclass(frozen=True)
class ColumnChange:
    """A column added (``before`` None), dropped (``after`` None) or retyped."""

    name: str
    before: str | None  # its type in A
    after: str | None  # its type in B


@dataclass(frozen=True)
class TableDiff:
    """One table in A, B or both.

    ``status``: ``unchanged``; ``changed``; ``new`` (only in B: every row added);
    ``dropped`` (only in A: every row removed); ``columns differ`` (``columns`` says how;
    rows are compared only between tables of the same columns, so only the counts are
    given). ``changed`` is None when rows were compared as whole rows (no primary key)."""

    schema: str
    name: str
    status: Status
    rows_before: int | None
    rows_after: int | None
    added: int = 0
    removed: int = 0
    changed: int | None = 0
    key: tuple[str, ...] = ()  # the primary key the rows were paired by; () whole rows
    read: bool = False  # False: decided from the manifests without reading a row
    columns: tuple[ColumnChange, ...] = ()
    rows_file: str | None = None  # with rows_dir: the file holding its differing rows

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class SequenceDiff:
    schema: str
    name: str
    before: tuple[int, bool] | None  # (last_value, is_called); None: not in A
    after: tuple[int, bool] | None


@dataclass(frozen=True)
class DiffResult:
    """What ``diff`` found; ``identical`` when nothing differs."""

    before: Path | str
    after: Path | str
    tables: tuple[TableDiff, ...]
    sequences: tuple[SequenceDiff, ...] = ()
    large_objects: tuple[int, int] | None = None  # (objects before, after) when they differ
    schema_diff: tuple[str, ...] = ()  # unified diff of schema.sql, when both hold one
    schema_note: str | None = None  # why the schema's SQL was not compared
    seconds: float = 0.0
    not_read: int = 0  # tables decided from the manifests alone

    @property
    def changed_tables(self) -> list[TableDiff]:
        return [t for t in self.tables if t.status != "unchanged"]

    @property
    def identical(self) -> bool:
        return (
            not self.changed_tables
            and not self.sequences
            and self.large_objects is None
            and not self.schema_diff
        )

    @property
    def added(self) -> int:
        return sum(t.added for t in self.tables)

    @property
    def removed(self) -> int:
        return sum(t.removed for t in self.tables)

    @property
    def changed(self) -> int:
        return sum(t.changed or 0 for t in self.tables)


def _columns(table: BackupTable) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in table.columns]


def column_changes(before: BackupTable, after: BackupTable) -> tuple[ColumnChange, ...]:
    """Columns added, dropped or retyped from ``before`` to ``after`` (a reorder of the
    same columns is reported as each moved column dropped and added)."""
    a, b = dict(_columns(before)), dict(_columns(after))
    changes = [ColumnChange(n, t, None) for n, t in a.items() if n not in b]
    changes += [ColumnChange(n, a[n], t) for n, t in b.items() if n in a and a[n] != t]
    changes += [ColumnChange(n, None, t) for n, t in b.items() if n not in a]
    if not changes and _columns(before) != _columns(after):
        order_a, order_b = [n for n, _ in _columns(before)], [n for n, _ in _columns(after)]
        moved = [n for i, n in enumerate(order_b) if order_a[i] != n]
        changes = [ColumnChange(n, a[n], None) for n in moved]
        changes += [ColumnChange(n, None, b[n]) for n in moved]
    return tuple(changes)


def _same_rows_by_manifest(before: Sequence[BackupFile], after: Sequence[BackupFile]) -> bool:
    """Whether the manifests alone show two sets of files hold the same lines: the same
    file bytes, or the same count and fingerprint (the same multiset of lines)."""
    if sum(f.rows for f in before) != sum(f.rows for f in after):
        return False
    if sorted(f.sha256 for f in before) == sorted(f.sha256 for f in after):
        return True
    recorded = all(f.fingerprint is not None for f in (*before, *after))
    return recorded and combine(f.fingerprint or "" for f in before) == combine(
        f.fingerprint or "" for f in after
    )


def _key_sql(table: BackupTable, key: tuple[str, ...]) -> str:
    """A DuckDB expression for the primary key's values as written in ``line``: each key
    column's JSON text, in order, separated by a byte no line holds."""
    prefixes = line_prefixes(table)
    names = [c.name for c in table.columns]
    return " || chr(1) || ".join(token_sql(prefixes, names.index(k)) for k in key)


class _TableReader:
    """Reads the differing lines of one table from both backups (see the module doc)."""

    def __init__(self, con: Any, staging: Staging) -> None:
        self.con = con
        self.staging = staging

    def differing(self, a: Backup, before: BackupTable, b: Backup, after: BackupTable) -> None:
        """Fill the temporary table ``d`` (line, net: copies in B minus copies in A) with
        the lines whose counts differ."""
        sides = []
        for backup, table, side in ((a, before, -1), (b, after, 1)):
            files = [f for f in table.files if f.rows]
            if files:
                sides.append((side, *self.staging.files(backup, files)))

        def union(line_size: int) -> str:
            parts = [
                f"SELECT line, {side}::TINYINT AS side FROM "
                f"{read_csv_sql(paths, compression, line_size)}"
                for side, paths, compression in sides
            ]
            return " UNION ALL ".join(parts) or (
                "SELECT ''::VARCHAR AS line, 0::TINYINT AS side WHERE false"
            )

        # The first pass's key: a 64-bit hash of the line when the fingerprints can check
        # the result afterwards; without them two hashes of different inputs (128 bits),
        # so that a collision hiding a changed row is as unlikely as a fingerprint's.
        checkable = before.fingerprint is not None and after.fingerprint is not None
        keys = ["hash(line)"] if checkable else ["hash(line)", "hash(line || chr(10))"]
        names = [f"h{i}" for i in range(len(keys))]

        def by_hash(line_size: int) -> None:
            rows = union(line_size)
            hashed = ", ".join(f"{k} AS {n}" for k, n in zip(keys, names, strict=True))
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE h AS
                SELECT {", ".join(names)} FROM (SELECT {hashed}, side FROM ({rows}))
                GROUP BY ALL HAVING sum(side) <> 0"""
            )
            # DuckDB guesses a CSV file holds ~500 rows and so builds the join's hash table
            # on the files' side, lines and all (millions); the candidates' side is the
            # small one. Measured, 2 x 5 M lines: 3.6 s, built on the candidates 1.2 s.
            self.con.execute("SET disabled_optimizers = 'build_side_probe_side'")
            on = " AND ".join(f"r.{n} = h.{n}" for n in names)
            try:
                self.con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE d AS
                    SELECT line, sum(side)::BIGINT AS net
                    FROM (SELECT line, side, {hashed} FROM ({rows})) r
                    SEMI JOIN h ON {on}
                    GROUP BY line HAVING sum(side) <> 0"""
                )
            finally:
                self.con.execute("RESET disabled_optimizers")

        def by_line(line_size: int) -> None:
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE d AS
                SELECT line, sum(side)::BIGINT AS net FROM ({union(line_size)})
                GROUP BY line HAVING sum(side) <> 0"""
            )

        with_lines(by_hash, before.qualified)
        if checkable and not self._sums_agree(before, after):
            with_lines(by_line, before.qualified)  # a collision: exact, slower

    def _sums_agree(self, before: BackupTable, after: BackupTable) -> bool:
        """fingerprint(A) - removed + added == fingerprint(B): no collision hid a line."""
        assert before.fingerprint is not None and after.fingerprint is not None
        total = int(before.fingerprint, 16)
        result = self.con.execute("SELECT line, net FROM d")
        while batch := result.fetchmany(10_000):
            for line, net in batch:
                total += net * line_value(line.encode())
        return total % MODULUS == int(after.fingerprint, 16)


def _write_rows(con: Any, out: BinaryIO | None, key_sql: str | None) -> tuple[int, int, int | None]:
    """Pair the differing lines in ``d`` and count them; with ``out``, write them."""
    if key_sql is not None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE k AS SELECT {key_sql} AS k, line, net FROM d")
        counts = con.execute(
            """SELECT
                count(*) FILTER (WHERE r.k IS NULL),
                count(*) FILTER (WHERE a.k IS NULL),
                count(*) FILTER (WHERE a.k IS NOT NULL AND r.k IS NOT NULL)
            FROM (SELECT k, line FROM k WHERE net > 0) a
            FULL JOIN (SELECT k, line FROM k WHERE net < 0) r USING (k)"""
        ).fetchone()
        added, removed, changed = (int(x) for x in counts)
        query = """SELECT CASE
                WHEN r.line IS NULL THEN '{"change":"added","row":' || a.line || '}'
                WHEN a.line IS NULL THEN '{"change":"removed","row":' || r.line || '}'
                ELSE '{"change":"changed","before":' || r.line || ',"after":' || a.line || '}'
            END
            FROM (SELECT k, line FROM k WHERE net > 0) a
            FULL JOIN (SELECT k, line FROM k WHERE net < 0) r USING (k)
            ORDER BY TRY_CAST(k AS HUGEINT), k"""
        result_changed: int | None = changed
    else:
        counts = con.execute(
            "SELECT coalesce(sum(net) FILTER (WHERE net > 0), 0), "
            "coalesce(-sum(net) FILTER (WHERE net < 0), 0) FROM d"
        ).fetchone()
        added, removed = int(counts[0]), int(counts[1])
        query = """SELECT CASE WHEN net > 0 THEN '{"change":"added","row":' || line || '}'
                ELSE '{"change":"removed","row":' || line || '}' END
            FROM d, range(abs(net)) ORDER BY net > 0, line"""
        result_changed = None
    if out is not None:
        result = con.execute(query)
        while batch := result.fetchmany(10_000):
            out.write(b"".join(row[0].encode() + b"\n" for row in batch))
    return added, removed, result_changed


def _new_file(path: Path) -> BinaryIO:
    """A new file, 0600 (it holds rows), never one that exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise OutputError(
            f"{path} exists already", hint="give --rows an empty or new directory"
        ) from exc
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    return os.fdopen(fd, "wb")


def _sequences(a: Backup, b: Backup) -> tuple[SequenceDiff, ...]:
    before = {s.key: (s.last_value, s.is_called) for s in a.sequences}
    after = {s.key: (s.last_value, s.is_called) for s in b.sequences}
    return tuple(
        SequenceDiff(key[0], key[1], before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    )


def _schema_sql(backup: Backup) -> str:
    assert backup.schema is not None
    entry = backup.schema.sql
    problem = check_schema_file(backup, entry)
    if problem:
        raise VerificationFailed(
            f"{entry.path} {problem}", hint="the backup is damaged; `asyncsnap verify` says more"
        )
    with backup.source.open(entry.path) as fh:
        if backup.encryption:
            raw = b"".join(decrypted(fh, list(backup.identities), where=entry.path))
        else:
            raw = fh.read()
    return raw.decode("utf-8", "replace")


# Lines of schema.sql that differ between any two dumps, not schemas: pg_dump's header
# names its own version and the server's, and since 17.6/16.10/15.14 psql's \restrict and
# \unrestrict carry a random key chosen per dump.
_PER_DUMP = ("-- Dumped ", "\\restrict ", "\\unrestrict ")


def _schema_diff(a: Backup, b: Backup) -> tuple[tuple[str, ...], str | None]:
    if a.schema is None or b.schema is None:
        return (), "one of the backups holds no schema (--no-schema)"
    if (a.encryption and not a.identities) or (b.encryption and not b.identities):
        return (), "encrypted: give --identity to compare the schemas' SQL"
    before, after = _schema_sql(a), _schema_sql(b)
    lines = difflib.unified_diff(
        [ln for ln in before.splitlines() if not ln.startswith(_PER_DUMP)],
        [ln for ln in after.splitlines() if not ln.startswith(_PER_DUMP)],
        "before/schema.sql",
        "after/schema.sql",
        lineterm="",
    )
    return tuple(lines), None


def diff(
    before: str | Path | Backup,
    after: str | Path | Backup,
    *,
    rows_dir: str | Path | None = None,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = 2,
    identities: Sequence[Any] = (),
) -> DiffResult:
    """What changed from backup ``before`` to backup ``after``.

    :param rows_dir: a directory (created; must not hold files of the same names) that
        receives one NDJSON file per table that differs, ``<file stem>.ndjson``, each line
        ``{"change": "added"|"removed", "row": {...}}`` or ``{"change": "changed",
        "before": {...}, "after": {...}}``, ordered by primary key.
    :param memory_limit: DuckDB's memory limit (e.g. ``"512MB"``); past it DuckDB spills
        to a private temporary directory.
    :param threads: DuckDB's threads.
    :param identities: age secret keys, for encrypted backups.
    :raises UsageError: DuckDB is not installed; a backup is encrypted and no key given.
    :raises VerificationFailed: a file read does not match its manifest.

    Example::

        result = asyncsnap.diff("backups/bench-before", "backups/bench-after")
        print([(t.qualified, t.added, t.removed, t.changed) for t in result.changed_tables])
    """
    started = time.monotonic()
    import_duckdb()
    a, b = opened_backup(before, identities), opened_backup(after, identities)
    out_dir = None
    if rows_dir is not None:
        out_dir = Path(rows_dir)
        try:
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {out_dir}: {exc.strerror}") from exc

    tables_a = {t.key: t for t in a.tables if t.has_data}
    tables_b = {t.key: t for t in b.tables if t.has_data}
    results: list[TableDiff] = []
    not_read = 0
    written: list[Path] = []  # --rows files made by this run
    finished = False
    scratch = PrivateScratch()
    try:
        with contextlib.ExitStack() as stack:
            con = None
            for key in sorted(tables_a.keys() | tables_b.keys()):
                ta, tb = tables_a.get(key), tables_b.get(key)
                if ta is None or tb is None:
                    results.append(
                        TableDiff(
                            key[0],
                            key[1],
                            "new" if ta is None else "dropped",
                            rows_before=None if ta is None else ta.rows,
                            rows_after=None if tb is None else tb.rows,
                            added=tb.rows if tb is not None else 0,
                            removed=ta.rows if ta is not None else 0,
                        )
                    )
                    continue
                changes = column_changes(ta, tb)
                if changes:
                    results.append(
                        TableDiff(
                            key[0], key[1], "columns differ", ta.rows, tb.rows, columns=changes
                        )
                    )
                    continue
                pk = tb.primary_key if tb.primary_key == ta.primary_key else ()
                if _same_rows_by_manifest(ta.files, tb.files):
                    not_read += 1
                    results.append(TableDiff(key[0], key[1], "unchanged", ta.rows, tb.rows, key=pk))
                    continue
                if con is None:
                    con = stack.enter_context(
                        engine(scratch, memory_limit=memory_limit, threads=threads)
                    )
                    reader = _TableReader(con, Staging(scratch))
                reader.differing(a, ta, b, tb)
                rows_file = None
                out: BinaryIO | None = None
                if out_dir is not None:
                    rows_file = file_stem(*key) + ".ndjson"
                    out = _new_file(out_dir / rows_file)
                    written.append(out_dir / rows_file)
                with out or contextlib.nullcontext():
                    added, removed, changed = _write_rows(
                        con, out, _key_sql(tb, pk) if pk else None
                    )
                status: Status = "changed" if added or removed or changed else "unchanged"
                if status == "unchanged" and out_dir is not None and rows_file is not None:
                    (out_dir / rows_file).unlink()
                    written.pop()
                    rows_file = None
                results.append(
                    TableDiff(
                        key[0],
                        key[1],
                        status,
                        ta.rows,
                        tb.rows,
                        added=added,
                        removed=removed,
                        changed=changed,
                        key=pk,
                        read=True,
                        rows_file=rows_file,
                    )
                )
        finished = True
    finally:
        scratch.remove()
        if not finished:  # no rows directory that looks like a whole answer
            for path in written:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    large_objects = None
    lo_a, lo_b = a.large_objects, b.large_objects
    same_objects = (lo_a is None and lo_b is None) or (
        lo_a is not None
        and lo_b is not None
        and lo_a.objects == lo_b.objects
        and _same_rows_by_manifest(lo_a.files, lo_b.files)
    )
    if not same_objects:
        large_objects = (lo_a.objects if lo_a else 0, lo_b.objects if lo_b else 0)
    schema_diff, schema_note = _schema_diff(a, b)
    return DiffResult(
        before=a.path,
        after=b.path,
        tables=tuple(results),
        sequences=_sequences(a, b),
        large_objects=large_objects,
        schema_diff=schema_diff,
        schema_note=schema_note,
        seconds=time.monotonic() - started,
        not_read=not_read,
    )


def _rows_change(t: TableDiff) -> str:
    counts = f"{t.rows_before} -> {t.rows_after} rows"
    parts = [f"{t.added} added", f"{t.removed} removed"]
    if t.changed is not None:
        parts.append(f"{t.changed} changed")
    how = f"by {', '.join(t.key)}" if t.key else "whole rows: no primary key"
    return f"{counts}: {', '.join(parts)} ({how})"


def _column_text(c: ColumnChange) -> str:
    if c.before is None:
        return f"added {c.name} ({c.after})"
    if c.after is None:
        return f"dropped {c.name} ({c.before})"
    return f"{c.name}: {c.before} -> {c.after}"


def describe(result: DiffResult) -> list[str]:
    """The lines ``asyncsnap diff`` prints: one per table that differs, sequence that
    moved, the large objects, the totals, then the schema SQL's unified diff."""
    lines = []
    for t in result.changed_tables:
        if t.status == "new":
            lines.append(f"{t.qualified}: new, {count(t.rows_after or 0, 'row')}")
        elif t.status == "dropped":
            lines.append(f"{t.qualified}: dropped, {count(t.rows_before or 0, 'row')}")
        elif t.status == "columns differ":
            changes = "; ".join(_column_text(c) for c in t.columns)
            lines.append(
                f"{t.qualified}: columns {changes} ({t.rows_before} -> {t.rows_after} rows; "
                "rows not compared)"
            )
        else:
            lines.append(f"{t.qualified}: {_rows_change(t)}")
    for s in result.sequences:
        before = "absent" if s.before is None else str(s.before[0])
        after = "absent" if s.after is None else str(s.after[0])
        lines.append(f"sequence {s.schema}.{s.name}: {before} -> {after}")
    if result.large_objects is not None:
        lines.append(
            f"large objects: {result.large_objects[0]} -> {result.large_objects[1]} objects, "
            "not the same"
        )
    changed = len(result.changed_tables)
    lines.append(
        f"total: {result.added} added, {result.removed} removed, {result.changed} changed in "
        f"{changed} of {count(len(result.tables), 'table')}; "
        f"{result.not_read} not read (same files or fingerprint); {result.seconds:.2f}s"
    )
    if result.schema_note:
        lines.append(f"schema: not compared: {result.schema_note}")
    elif result.schema_diff:
        lines.append("schema:")
        lines += result.schema_diff
    else:
        lines.append("schema: the same")
    return lines


def as_json(result: DiffResult) -> dict[str, Any]:
    """``diff --json``: README "Output for scripts"."""
    return {
        "identical": result.identical,
        "before": str(result.before),
        "after": str(result.after),
        "tables": [
            {
                "schema": t.schema,
                "name": t.name,
                "status": t.status,
                "rows_before": t.rows_before,
                "rows_after": t.rows_after,
                "added": t.added,
                "removed": t.removed,
                "changed": t.changed,
                "key": list(t.key),
                "read": t.read,
                "columns": [
                    {"name": c.name, "before": c.before, "after": c.after} for c in t.columns
                ],
                "rows_file": t.rows_file,
            }
            for t in result.tables
        ],
        "sequences": [
            {
                "schema": s.schema,
                "name": s.name,
                "before": None if s.before is None else s.before[0],
                "after": None if s.after is None else s.after[0],
            }
            for s in result.sequences
        ],
        "large_objects": None
        if result.large_objects is None
        else {"before": result.large_objects[0], "after": result.large_objects[1]},
        "totals": {"added": result.added, "removed": result.removed, "changed": result.changed},
        "schema_diff": list(result.schema_diff),
        "schema_note": result.schema_note,
        "seconds": round(result.seconds, 3),
    }
