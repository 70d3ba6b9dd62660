"""What changed between two backups: ``asyncsnap diff A B``.

Per table: rows added, removed and changed (paired by primary key), or, for a table
without one, the rows added and removed as a multiset of whole rows; columns added,
dropped and retyped; sequences whose value moved; the large objects; and the difference
of the two schemas' SQL when both backups hold one.

How, and why so:

- A table whose files are the same bytes in both backups (the same SHA-256s in the
  manifests) is not read: its rows are the same multiset. After a benchmark run that is
  most tables. Equal fingerprints are not taken as equal rows (a sum of hashes can be
  steered by whoever chooses many rows).
- The others are first read both at once, in order (``merge``): two backups of one
  table hold most rows in the same order, so the lines both sides share in a run are
  passed over as bytes, and only where they part is a line set aside, until the other
  side's copy cancels it. What is left is the lines whose copies differ, exactly; they
  are few, and go to the engine for the pairing by key. When they would not stay few
  (a table rewritten in another order, most rows changed: more than ``merge.LIMIT_BYTES``
  set aside), or one of them is long or not UTF-8, the table is read again as follows.
- Otherwise both sides are read by asyncsnap's own reader (``batches``) and grouped by
  DuckDB (an optional extra), out of core: it spills to a private temporary directory past
  ``memory_limit``, so memory stays bounded whatever the size. Lines are compared as the
  bytes the dump wrote, never as parsed values: a row is unchanged exactly when its line
  is, and no number goes through a float. A line's identity is the first 128 bits of its
  SHA-256, computed by the reader (a hostile database cannot make two of its rows collide
  as it could with a fast hash). A first pass groups both sides' identities and keeps
  those whose counts differ (no line is kept), and records each line's identity's first
  half in the order read; a second pass reads both again, hashes only the lines that
  record says are wanted (checking each against its own hash), and groups those lines.
  The answer is checked to add up: A's rows and fingerprint plus the differing lines' are
  B's, and with fingerprints in the manifests (``dump --fingerprints``) each side's are
  the recorded ones.
- Rows that differ are paired by the primary key's values as the dump wrote them (the
  bytes of each key column's JSON value in the line, cut at the next column's key, which
  cannot occur inside a value: quotes in strings are escaped).

Every file is checked against the manifest's SHA-256 and row count as it is read
(decrypted in the stream when the backup is encrypted, from the store when it is in one):
an answer that missed a row, or read a file that does not match, is never given.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from ..errors import OutputError, VerificationFailed
from ..fingerprint import MODULUS, combine
from ..format import Backup, BackupColumn, BackupFile, BackupTable
from ..plan import file_stem
from ..scratch import PrivateScratch
from ..storage.backup import check_schema_file, plaintext
from .chain_diff import ChainSpan, chain_span, describe, table_span
from .readers import (
    DEFAULT_MEMORY_LIMIT,
    attempts,
    engine,
    import_duckdb,
    line_prefixes,
    lines_file,
    memory_limit_bytes,
    new_private_file,
    opened_backup,
    run_engine,
    token_sql,
)

if TYPE_CHECKING:
    from .batches import LineBatches, LongLines
    from .merge import Differing

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
    # why rows were compared whole although the table has a primary key (its type's
    # equality is not its text's: docs/format.md, "The same key")
    unpaired: str | None = None

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
    chain: bool = False  # read from the increments between two backups of one chain

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


def _same_files(before: Sequence[BackupFile], after: Sequence[BackupFile]) -> bool:
    """Whether the manifests alone show two sets of files hold the same lines: the same
    SHA-256s (a cryptographic hash of the bytes), hence the same bytes.

    Equal fingerprints are not taken as equal rows: a sum of hashes can be steered by
    whoever chooses many rows (docs/format.md, "Row fingerprints")."""
    return sum(f.rows for f in before) == sum(f.rows for f in after) and sorted(
        f.sha256 for f in before
    ) == sorted(f.sha256 for f in after)


def _unpaired_reason(table: BackupTable, key: tuple[str, ...]) -> str:
    types = {c.name: c.type for c in table.columns}
    odd = [k for k in key if key_expression(_column(table, k), "t") is None]
    return (
        f"key column {odd[0]} is {types[odd[0]]}, whose equality asyncsnap does not decide "
        "from the text (docs/format.md, 'The same key')"
    )


def _column(table: BackupTable, name: str) -> BackupColumn:
    return next(c for c in table.columns if c.name == name)


# The most identities whose lines the reader picks out itself in diff's second pass (a
# sorted array of 8 bytes each, 32 MB at most); more go to the engine's join.
_SIEVE_MAX = 4_000_000

# Key columns whose values are equal by their type's ``=`` exactly when the dump wrote the
# same JSON text for them (docs/format.md, "The same key"): output functions with one text
# per value under the dump's fixed settings (TimeZone UTC, DateStyle ISO, lc_monetary C,
# shortest exact floats), text types under deterministic collations.
_SAME_TEXT_KEYS = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "text",
        "character varying",
        "name",
        '"char"',
        "uuid",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
        "time without time zone",
        "time with time zone",
        "bytea",
        "oid",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "money",
        "bit",
        "bit varying",
    }
)


def key_expression(column: BackupColumn, token: str) -> str | None:
    """A DuckDB expression over ``token`` (the column's JSON text in a line) that is equal
    for two values exactly when PostgreSQL's ``=`` of the column's type holds, or None when
    asyncsnap knows no such form for the type (the table is then compared as whole rows).

    - ``numeric``: the number without trailing fractional zeros (``1.0`` = ``1.00`` = ``1``;
      ``NaN`` and the infinities are strings, each equal only to itself);
    - ``real``, ``double precision``: ``-0`` (written as the string ``"-0"``) is ``0``; every
      other value has one shortest exact text, ``NaN`` equal to itself as in PostgreSQL;
    - ``character(n)``: trailing spaces do not count, as for ``bpchar``'s ``=``;
    - the types of ``_SAME_TEXT_KEYS``: the text itself.
    """
    if column.encoding != "json":
        return None
    base = re.sub(r"\([0-9, ]+\)", "", column.type)
    if base in _SAME_TEXT_KEYS:
        return token
    if base == "numeric":
        trimmed = (
            f"CASE WHEN contains({token}, '.') THEN rtrim(rtrim({token}, '0'), '.') "
            f"ELSE {token} END"
        )
        return f"CASE WHEN {trimmed} = '-0' THEN '0' ELSE {trimmed} END"
    if base in ("real", "double precision"):
        return f"CASE WHEN {token} = '\"-0\"' THEN '0' ELSE {token} END"
    if base in ("character", "bpchar"):
        return f"rtrim(json_extract_string({token}, '$'), ' ')"
    return None


def key_sql(table: BackupTable, key: tuple[str, ...]) -> str | None:
    """A DuckDB expression for the primary key of ``line`` (each key column's canonical
    form, ``key_expression``, separated by a byte no JSON text holds raw), or None when
    a key column's type has no known canonical form."""
    prefixes = line_prefixes(table)
    names = [c.name for c in table.columns]
    parts = []
    for k in key:
        index = names.index(k)
        part = key_expression(table.columns[index], token_sql(prefixes, index))
        if part is None:
            return None
        parts.append(part)
    return " || chr(1) || ".join(parts)


class _TableReader:
    """Finds the lines whose counts differ between two sets of files (see the module doc):
    fills the temporary table ``d`` (h1, h2, line, cut, net: copies in B minus copies in
    A; ``cut``: ``line`` stands in for a line too long for the engine, kept in
    ``long_lines``)."""

    def __init__(self, con: Any, scratch: PrivateScratch) -> None:
        self.con = con
        self.scratch = scratch
        self.long_lines: LongLines | None = None
        self.tables = 0

    def close(self) -> None:
        if self.long_lines is not None:
            self.long_lines.close()
            self.long_lines = None

    def same_lines(
        self,
        what: str,
        a: Backup | None,
        before: Sequence[BackupFile],
        b: Backup | None,
        after: Sequence[BackupFile],
    ) -> bool:
        """Whether two sets of files hold the same multiset of lines (read, not assumed)."""
        found = self._merge(a, before, b, after)
        if found is not None:
            return not found.removed and not found.added
        self._group(what, a, before, b, after)
        return not self.con.execute("SELECT count(*) FROM h").fetchall()[0][0]

    def differing(
        self,
        what: str,
        a: Backup | None,
        before: Sequence[BackupFile],
        b: Backup | None,
        after: Sequence[BackupFile],
        stand_in: Callable[[bytes, int, int], bytes],
        lines: Differing | None = None,
    ) -> Any:
        """Fill ``d``; returns the engine's connection, to query it. ``stand_in`` makes the
        line the engine holds in place of a long one (the key columns' values kept).
        ``lines``: the lines that differ, known already, in place of the sides (written
        to scratch files as the sides when the engine cannot take them as they are)."""
        from .batches import LongLines

        if self.long_lines is not None:
            self.long_lines.close()
        self.tables += 1
        directory = self.scratch.path() / f"long-lines-{self.tables}"
        directory.mkdir(mode=0o700)
        self.long_lines = LongLines(directory, stand_in)
        found = lines if lines is not None else self._merge(a, before, b, after)
        if found is not None and self._merged(what, found):
            return self.con
        if lines is not None:
            a = b = None
            # each line as many times as it counts
            before = (lines_file(directory / "before.ndjson", _copies(lines.removed)),)
            after = (lines_file(directory / "after.ndjson", _copies(lines.added)),)
        # Pass 1 records each line's identity's first half, per side, in the order read;
        # pass 2 then hashes only the lines recorded as wanted (SHA-256 of every line of
        # both sides again was half of pass 2's CPU).
        firsts = (directory / "firsts-before", directory / "firsts-after")
        try:
            self._group(what, a, before, b, after, record=firsts)
            self._fetch_lines(what, a, before, b, after, firsts)
        finally:
            for path in firsts:
                path.unlink(missing_ok=True)
        return self.con

    def _merge(
        self,
        a: Backup | None,
        before: Sequence[BackupFile],
        b: Backup | None,
        after: Sequence[BackupFile],
    ) -> Differing | None:
        """Both sides read in order (``merge``), or None when they are too far apart. The
        merge sets aside at most ``merge.LIMIT_BYTES`` and a quarter of the engine's
        memory limit (``--memory-limit`` bounds diff's memory as a whole)."""
        from . import merge

        limit = min(merge.LIMIT_BYTES, memory_limit_bytes(self.con) // 4)
        try:
            return merge.differing_lines(a, before, b, after, limit_bytes=limit)
        except merge.TooFarApart:
            return None

    def _merged(self, what: str, found: Differing) -> bool:
        """``d`` from the lines that differ (both sides read in order, ``merge``, or a
        chain's), each short and UTF-8; False (nothing done) otherwise."""
        import pyarrow as pa

        assert self.long_lines is not None
        lines = [*found.removed, *found.added]
        if lines and max(map(len, lines)) - 1 > self.long_lines.limit:
            return False  # the engine would hold it whole: the stand-ins' way
        net = [-copies for copies in found.removed.values()] + list(found.added.values())
        if found.rows_before + sum(net) != found.rows_after:
            raise VerificationFailed(
                f"{what}: the merge of both sides does not add up to the lines read "
                f"({found.rows_before} + {sum(net)} rows against {found.rows_after})",
                hint="report this: no answer is given when it cannot be checked",
            )
        try:
            # Arrow checks the UTF-8 of every line in one pass, in C.
            text = pa.array([line[:-1] for line in lines], pa.large_binary()).cast(
                pa.large_string()
            )
        except pa.ArrowInvalid:
            return False  # not UTF-8: the reader's way names the line
        # No identities: a line's is needed only to find a long one the engine holds a
        # stand-in for (``cut``), and none is long here.
        nothing = pa.nulls(len(lines), pa.uint64())
        merged = pa.table(
            {"h1": nothing, "h2": nothing, "line": text, "net": pa.array(net, pa.int64())}
        )
        self.con.register("merged", merged)
        try:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE d AS "
                "SELECT h1, h2, line, false AS cut, net FROM merged"
            )
        finally:
            self.con.unregister("merged")
        return True

    def _group(
        self,
        what: str,
        a: Backup | None,
        before: Sequence[BackupFile],
        b: Backup | None,
        after: Sequence[BackupFile],
        record: tuple[Path, Path] | None = None,
    ) -> None:
        """Pass 1: each line's 128-bit identity, no text; keep in ``h`` the identities whose
        counts differ (the engine holds 17 bytes a distinct line, spilling past its
        limit). ``record``: where each side's lines' first halves go (``LineBatches``'
        ``record_firsts``)."""
        from .batches import LineBatches, read_together

        def attempt() -> tuple[LineBatches, LineBatches]:
            with contextlib.ExitStack() as files:
                sinks = (
                    [None, None]
                    if record is None
                    else [
                        files.enter_context(open(path, "wb"))
                        for path in record  # anew each attempt
                    ]
                )
                old = LineBatches(a, before, hashes=True, text=False, record_firsts=sinks[0])
                new = LineBatches(b, after, hashes=True, text=False, record_firsts=sinks[1])
                self.con.register("both_lines", read_together([old, new], sides=[-1, 1]))
                run_engine(
                    what,
                    [old, new],
                    lambda: self.con.execute(
                        """CREATE OR REPLACE TEMP TABLE h AS
                        SELECT h1, h2, sum(side)::BIGINT AS net FROM both_lines
                        GROUP BY h1, h2 HAVING sum(side) <> 0"""
                    ),
                    self.con,
                )
                return old, new

        old, new = attempts(self.con, attempt)
        self.con.unregister("both_lines")
        for side, files in ((old, before), (new, after)):
            _check_recorded(what, side.fingerprint, files)
        self._check_sums(what, old, new)

    def _fetch_lines(
        self,
        what: str,
        a: Backup | None,
        before: Sequence[BackupFile],
        b: Backup | None,
        after: Sequence[BackupFile],
        firsts: tuple[Path, Path],
    ) -> None:
        """Pass 2: the lines of the identities in ``h``, from the side(s) that hold them,
        into ``d``: one line per identity (its text is the same wherever it occurs).
        ``firsts``: pass 1's record of each side's lines (hashed again only where it says
        a line is wanted)."""
        from .batches import LineBatches

        wanted = self.con.execute(
            "SELECT count(*) FILTER (WHERE net < 0), count(*) FILTER (WHERE net > 0) FROM h"
        ).fetchall()[0]
        if not wanted[0] and not wanted[1]:
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE d AS "
                "SELECT h1, h2, ''::VARCHAR AS line, false AS cut, net FROM h WHERE false"
            )
            return

        # Up to a few million identities, the reader itself keeps only the lines whose
        # identity's first half is among them (a sorted array, 8 bytes each): the engine
        # then joins those few instead of every line of both sides. Past that, memory
        # bounds win: every line goes to the engine, which spills.
        sieve = {
            side: self._sieve(side) if count <= _SIEVE_MAX else None
            for side, count in (("< 0", wanted[0]), ("> 0", wanted[1]))
        }

        def attempt() -> None:
            with contextlib.ExitStack() as opened:
                sources = [
                    LineBatches(
                        backup,
                        files,
                        long_lines=self.long_lines,
                        wanted=sieve[side],
                        firsts=None
                        if sieve[side] is None
                        else opened.enter_context(open(record, "rb", buffering=1 << 20)),
                    )
                    for backup, files, needed, side, record in (
                        (a, before, wanted[0], "< 0", firsts[0]),
                        (b, after, wanted[1], "> 0", firsts[1]),
                    )
                    if needed
                ]
                self._join(what, sources)

        attempts(self.con, attempt)
        found = self.con.execute("SELECT count(*) FROM d").fetchall()[0][0]
        if found != wanted[0] + wanted[1]:
            raise VerificationFailed(
                f"{what}: {found} of the {wanted[0] + wanted[1]} differing lines found again",
                hint="the files changed while diff read them; run it again",
            )

    def _join(self, what: str, sources: Sequence[LineBatches]) -> None:
        """The lines of ``sources`` whose identities are in ``h``, into ``d``."""
        from .batches import read_together

        self.con.register("both_texts", read_together(sources))
        # The join's hash table on the identities (few), not on the stream (all lines):
        # DuckDB cannot know the stream's size and may guess it small. And no filter
        # from the join pushed into the stream's scan: DuckDB 1.5 hands it to pyarrow
        # as a Python int, which fails for an identity past 2^63 (OverflowError).
        self.con.execute("SET disabled_optimizers = 'build_side_probe_side,join_filter_pushdown'")
        try:
            run_engine(
                what,
                sources,
                lambda: self.con.execute(
                    """CREATE OR REPLACE TEMP TABLE d AS
                    SELECT h.h1, h.h2, any_value(l.line) AS line, any_value(l.cut) AS cut,
                        any_value(h.net) AS net
                    FROM both_texts l JOIN h ON l.h1 = h.h1 AND l.h2 = h.h2
                    GROUP BY h.h1, h.h2"""
                ),
                self.con,
            )
        finally:
            self.con.execute("RESET disabled_optimizers")
            self.con.unregister("both_texts")

    def _sieve(self, side: str) -> bytes:
        """The sorted first halves of the identities in ``h`` with ``net {side}``, as a
        native uint64 array (``batches.LineBatches``' ``wanted``)."""
        # One sorted list value: the engine (preserve_insertion_order off) may hand an
        # ORDER BY's rows over in chunks out of order (seen: a sieve that missed lines).
        lists = (
            self.con.sql(
                f"SELECT coalesce(list_sort(list(DISTINCT h1)), []) FROM h WHERE net {side}"
            )
            .to_arrow_table()
            .column(0)
            .combine_chunks()
        )
        values = lists.values
        start, end = lists.offsets[0].as_py(), lists.offsets[1].as_py()
        data = values.buffers()[1]
        return bytes(data)[(values.offset + start) * 8 : (values.offset + end) * 8]

    def _check_sums(self, what: str, old: LineBatches, new: LineBatches) -> None:
        """The engine's answer accounts for every line: the rows of A plus the net count
        of the differing lines are the rows of B, and A's fingerprint plus each differing
        line's 128-bit value times its net count is B's (modulo 2**128)."""
        net, high, low = self.con.execute(
            "SELECT coalesce(sum(net), 0)::HUGEINT, "
            "coalesce(sum(net::HUGEINT * h1::HUGEINT), 0), "
            "coalesce(sum(net::HUGEINT * h2::HUGEINT), 0) FROM h"
        ).fetchall()[0]
        total = (old.total + (int(high) << 64) + int(low)) % MODULUS
        if old.rows + int(net) != new.rows or total != new.total:
            raise VerificationFailed(
                f"{what}: the engine's grouping does not add up to the lines read "
                f"({old.rows} + {int(net)} rows against {new.rows}, or the fingerprints)",
                hint="report this: no answer is given when it cannot be checked",
            )


def _check_recorded(what: str, read: str, files: Sequence[BackupFile]) -> None:
    """The lines read have the fingerprint the manifest records (when it records one)."""
    if files and all(f.fingerprint is not None for f in files):
        recorded = combine(f.fingerprint or "" for f in files)
        if recorded != read:
            raise VerificationFailed(
                f"{what}: its lines do not have the fingerprint the manifest records",
                hint="the backup is damaged; `asyncsnap verify` says more",
            )


def _write_rows(
    con: Any,
    what: str,
    out: BinaryIO | None,
    key_sql: str | None,
    long_lines: LongLines | None,
) -> tuple[int, int, int | None]:
    """Pair the differing lines in ``d`` and count them; with ``out``, write them."""
    if key_sql is not None:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE k AS SELECT {key_sql} AS k, line, cut, h1, h2, net "
            "FROM d"
        )
        # A primary key is unique on each side, so each key is at most one removed and one
        # added line; anything else (a backup whose rows break its key) has no pairing.
        repeated, twice = con.execute(
            """SELECT (SELECT count(*) FROM k) - (SELECT count(*) FROM (SELECT DISTINCT k, net > 0
                FROM k)), (SELECT count(*) FROM k WHERE abs(net) <> 1)"""
        ).fetchall()[0]
        if repeated or twice:
            raise VerificationFailed(
                f"{what}: rows with the same primary key in one backup; they cannot be paired",
                hint="the backup's rows break its primary key: it is damaged or hand-made",
            )
        counts = con.execute(
            """SELECT
                count(*) FILTER (WHERE r.k IS NULL),
                count(*) FILTER (WHERE a.k IS NULL),
                count(*) FILTER (WHERE a.k IS NOT NULL AND r.k IS NOT NULL)
            FROM (SELECT k FROM k WHERE net > 0) a
            FULL JOIN (SELECT k FROM k WHERE net < 0) r USING (k)"""
        ).fetchall()[0]
        added, removed, changed = (int(x) for x in counts)
        # before (removed line) then after (added line), each NULL when absent
        query = """SELECT r.line, r.cut, r.h1, r.h2, a.line, a.cut, a.h1, a.h2
            FROM (SELECT k, line, cut, h1, h2 FROM k WHERE net > 0) a
            FULL JOIN (SELECT k, line, cut, h1, h2 FROM k WHERE net < 0) r USING (k)
            ORDER BY TRY_CAST(k AS HUGEINT), k"""
        result_changed: int | None = changed
    else:
        counts = con.execute(
            "SELECT coalesce(sum(net) FILTER (WHERE net > 0), 0), "
            "coalesce(-sum(net) FILTER (WHERE net < 0), 0) FROM d"
        ).fetchall()[0]
        added, removed = int(counts[0]), int(counts[1])
        query = """SELECT CASE WHEN net < 0 THEN line END, cut, h1, h2,
                CASE WHEN net > 0 THEN line END, cut, h1, h2
            FROM d, range(abs(net)) ORDER BY net > 0, line, h1, h2"""
        result_changed = None
    if out is not None:
        # The engine runs with preserve_insertion_order off (less memory), and then handed
        # an ORDER BY's Arrow result over in chunks out of order (``_sieve``); the rows are
        # promised in key order, so it is on for this query.
        con.execute("SET preserve_insertion_order = true")
        try:
            _RowsWriter(out, long_lines).write(con.execute(query))
        finally:
            con.execute("SET preserve_insertion_order = false")
    return added, removed, result_changed


class _RowsWriter:
    """Writes ``--rows`` lines: ``{"change":"added","row":…}``, ``removed``, or
    ``{"change":"changed","before":…,"after":…}``, each row the line the backup holds
    (a long one copied from where the reader kept it, never held whole by the engine)."""

    def __init__(self, out: BinaryIO, long_lines: LongLines | None) -> None:
        self.out = out
        self.long_lines = long_lines

    def write(self, result: Any) -> None:
        while batch := result.fetchmany(10_000):
            for before_line, before_cut, bh1, bh2, after_line, after_cut, ah1, ah2 in batch:
                if before_line is None:
                    self.out.write(b'{"change":"added","row":')
                    self._line(after_line, after_cut, ah1, ah2)
                elif after_line is None:
                    self.out.write(b'{"change":"removed","row":')
                    self._line(before_line, before_cut, bh1, bh2)
                else:
                    self.out.write(b'{"change":"changed","before":')
                    self._line(before_line, before_cut, bh1, bh2)
                    self.out.write(b',"after":')
                    self._line(after_line, after_cut, ah1, ah2)
                self.out.write(b"}\n")

    def _line(self, line: str, cut: bool, h1: int, h2: int) -> None:
        if cut:
            assert self.long_lines is not None
            self.long_lines.copy_to((h1, h2), self.out)
        else:
            self.out.write(line.encode())


def stand_in(table: BackupTable, key: tuple[str, ...]) -> Callable[[bytes, int, int], bytes]:
    """What the engine holds in place of a long line of ``table`` (``text[start:end]``):
    the line with every value but the key columns' written ``null``, so that the key is
    read from it as from the line (a key column's value is short: an index entry is at
    most ~2.7 kB). Each column's prefix occurs once in a line (``analysis.token_sql``)."""
    prefixes = [p.encode() for p in line_prefixes(table)]
    names = [c.name for c in table.columns]
    keep = {names.index(k) for k in key}

    def make(text: bytes, start: int, end: int) -> bytes:
        parts = []
        for i, prefix in enumerate(prefixes):
            if i not in keep:
                parts.append(prefix + b"null")
                continue
            at = text.find(prefix, start, end) + len(prefix)
            stop = text.find(prefixes[i + 1], at, end) if i + 1 < len(prefixes) else end - 1
            parts.append(prefix + text[at:stop])
        return b"".join(parts) + b"}" if prefixes else b"{}"

    return make


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
    return b"".join(plaintext(backup, entry.path)).decode("utf-8", "replace")


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


def _pairing(
    table: BackupTable, pk: tuple[str, ...], full: BackupTable | None = None
) -> tuple[tuple[str, ...], str | None, str | None]:
    """The primary key rows are paired by (``()``: compared whole), the engine's expression
    for it, and why a key was not used."""
    if not pk:
        return (), None, None
    missing = [
        k for k in (full.primary_key if full else ()) if k not in {c.name for c in table.columns}
    ]
    if missing:
        return (
            (),
            None,
            (
                f"key column {missing[0]} is generated, and an increment's changes do not carry "
                "generated columns"
            ),
        )
    pairing = key_sql(table, pk)
    if pairing is None:
        return (), None, _unpaired_reason(table, pk)
    return pk, pairing, None


def _compared(
    key: tuple[str, str],
    rows_before: int,
    rows_after: int,
    counts: tuple[int, int, int | None],
    pk: tuple[str, ...],
    rows_file: str | None,
    unpaired: str | None,
) -> TableDiff:
    added, removed, changed = counts
    return TableDiff(
        key[0],
        key[1],
        "changed" if added or removed or changed else "unchanged",
        rows_before,
        rows_after,
        added=added,
        removed=removed,
        changed=changed,
        key=pk,
        read=True,
        rows_file=rows_file,
        unpaired=unpaired,
    )


class _DiffRun:
    """One diff's state: the engine (started on the first table that must be read), the
    ``--rows`` files made so far (removed unless the diff finishes), the scratch."""

    def __init__(
        self, a: Backup, b: Backup, out_dir: Path | None, *, memory_limit: str, threads: int
    ) -> None:
        self.a, self.b, self.out_dir = a, b, out_dir
        self.memory_limit, self.threads = memory_limit, threads
        self.scratch = PrivateScratch()
        self.stack = contextlib.ExitStack()
        self._reader: _TableReader | None = None
        self.written: list[Path] = []  # --rows files made by this run
        self.not_read = 0
        self.finished = False

    def reader(self) -> _TableReader:
        if self._reader is None:
            con = self.stack.enter_context(
                engine(self.scratch, memory_limit=self.memory_limit, threads=self.threads)
            )
            self._reader = _TableReader(con, self.scratch)
            self.stack.callback(self._reader.close)
        return self._reader

    def table(
        self, key: tuple[str, str], ta: BackupTable | None, tb: BackupTable | None
    ) -> TableDiff:
        """One table: new or dropped, its columns changed, or its rows compared."""
        if ta is None or tb is None:
            return TableDiff(
                key[0],
                key[1],
                "new" if ta is None else "dropped",
                rows_before=None if ta is None else ta.rows,
                rows_after=None if tb is None else tb.rows,
                added=tb.rows if tb is not None else 0,
                removed=ta.rows if ta is not None else 0,
            )
        changes = column_changes(ta, tb)
        if changes:
            return TableDiff(key[0], key[1], "columns differ", ta.rows, tb.rows, columns=changes)
        pk, pairing, unpaired = _pairing(
            tb, tb.primary_key if tb.primary_key == ta.primary_key else ()
        )
        if _same_files(ta.files, tb.files):
            self.not_read += 1
            return TableDiff(key[0], key[1], "unchanged", ta.rows, tb.rows, key=pk)
        sides = (self.a, ta.files, self.b, tb.files)
        rows_file, counts = self._rows(key, tb, pk, pairing, sides)
        return _compared(key, ta.rows, tb.rows, counts, pk, rows_file, unpaired)

    def chain_table(self, span: ChainSpan, number: int, table: BackupTable) -> TableDiff:
        """One table of a chain: from the changes between the two backups."""
        found = table_span(span, table, self.scratch.path(), number)
        view = found.table
        pk, pairing, unpaired = _pairing(view, view.primary_key, table)
        if not found.touched:
            self.not_read += 1
            return TableDiff(*table.key, "unchanged", found.rows_before, found.rows_after, key=pk)
        try:
            sides = (None, found.before, None, found.after)
            rows_file, counts = self._rows(table.key, view, pk, pairing, sides, found.lines)
        finally:
            for entry in (*found.before, *found.after):
                Path(entry.path).unlink(missing_ok=True)
        return _compared(
            table.key, found.rows_before, found.rows_after, counts, pk, rows_file, unpaired
        )

    def _rows(
        self,
        key: tuple[str, str],
        tb: BackupTable,
        pk: tuple[str, ...],
        pairing: str | None,
        sides: tuple[Backup | None, Sequence[BackupFile], Backup | None, Sequence[BackupFile]],
        lines: Differing | None = None,
    ) -> tuple[str | None, tuple[int, int, int | None]]:
        """Read both sides' rows: the counts, and the ``--rows`` file when one was
        asked for and the table did change. ``lines``: the lines that differ, known
        already (a chain's), in place of the sides' files."""
        reader = self.reader()
        con = reader.differing(tb.qualified, *sides, stand_in(tb, pk), lines)
        rows_file = None
        out: BinaryIO | None = None
        if self.out_dir is not None:
            rows_file = file_stem(*key) + ".ndjson"
            out = new_private_file(
                self.out_dir / rows_file, hint="give --rows an empty or new directory"
            )
            self.written.append(self.out_dir / rows_file)
        with out or contextlib.nullcontext():
            counts = _write_rows(con, tb.qualified, out, pairing, reader.long_lines)
        if not any(counts) and self.out_dir is not None and rows_file is not None:
            (self.out_dir / rows_file).unlink()
            self.written.pop()
            rows_file = None
        return rows_file, counts

    def large_objects(self) -> tuple[int, int] | None:
        """The large objects' counts before and after, when they differ (else None)."""
        lo_a, lo_b = self.a.large_objects, self.b.large_objects
        if lo_a is None and lo_b is None:
            return None
        files_a = lo_a.files if lo_a else ()
        files_b = lo_b.files if lo_b else ()
        same = (
            lo_a is not None
            and lo_b is not None
            and lo_a.objects == lo_b.objects
            and (
                _same_files(files_a, files_b)
                or self.reader().same_lines("large objects", self.a, files_a, self.b, files_b)
            )
        )
        return None if same else (lo_a.objects if lo_a else 0, lo_b.objects if lo_b else 0)

    def clean_up(self) -> None:
        self.scratch.remove()
        if not self.finished:  # no rows directory that looks like a whole answer
            for path in self.written:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _copies(lines: dict[bytes, int]) -> Iterator[bytes]:
    return (line for line, copies in lines.items() for _ in range(copies))


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
    a = opened_backup(before, identities, increments=True)
    b = opened_backup(after, identities, increments=True)
    span = chain_span(a, b, lambda member: opened_backup(member, identities))
    out_dir = None
    if rows_dir is not None:
        out_dir = Path(rows_dir)
        try:
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {out_dir}: {exc.strerror}") from exc
    tables_a = {t.key: t for t in a.tables if t.has_data}
    tables_b = {t.key: t for t in b.tables if t.has_data}
    run = _DiffRun(a, b, out_dir, memory_limit=memory_limit, threads=threads)
    try:
        with run.stack:
            if span is not None:
                chain_tables = sorted(
                    (t for t in span.full.tables if t.has_data), key=lambda t: t.key
                )
                results = [run.chain_table(span, i, t) for i, t in enumerate(chain_tables)]
                large_objects = None
            else:
                results = [
                    run.table(key, tables_a.get(key), tables_b.get(key))
                    for key in sorted(tables_a.keys() | tables_b.keys())
                ]
                large_objects = run.large_objects()
        run.finished = True
    finally:
        run.clean_up()
    schema_diff, schema_note = _schema_diff(a, b) if span is None else ((), describe(span))
    return DiffResult(
        before=a.path,
        after=b.path,
        tables=tuple(results),
        sequences=_sequences(a, b),
        large_objects=large_objects,
        schema_diff=schema_diff,
        schema_note=schema_note,
        seconds=time.monotonic() - started,
        not_read=run.not_read,
        chain=span is not None,
    )
