"""The fast data path: the server sends and takes COPY text, native code does the JSON.

A dump asks for ``COPY (SELECT col, col, ...) TO STDOUT`` in text format, the cheapest
thing a server can send besides binary, and ``asyncsnap._rows`` (C, the GIL released)
turns those lines into exactly the NDJSON lines the server-rendered path
(``render.select_rows_sql``) would write; a restore turns NDJSON into COPY text and sends
it with ``COPY ... FROM STDIN``, so each value goes through its type's input function as
the ``json_to_recordset`` path did. Decided per column (docs/format.md, "Which path a
column takes"):

* numbers, booleans, timestamps and every value written as a JSON string (text types,
  dates, times, intervals, uuids, bytea, enums, ranges, and the ``text`` encoding's json,
  jsonb and composites) are converted natively from their text form;
* ``array``-encoded columns stay server-rendered on dump (``to_json``'s element rendering
  and the bounds test are the server's), sent as one more COPY column; on restore their
  JSON arrays become array literals natively.

A table whose every column is of a type in ``_BINARY_DUMP`` (or an enum, or
server-rendered) is sent in COPY's binary format instead, and ``_rows.binary_to_ndjson``
writes the same lines from the send forms: measured less work for the server than text
(docs/benchmarks.md, "Binary COPY on dump"); ``tests/test_binary_copy.py`` holds the two
converters to the same bytes on random values of every such type, on every major.

Anything the converter does not expect (a timestamp in another shape, an object where the
format has none) raises: a line is exact or it is not written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import _rows
from ..catalog import Column, Table, TypeInfo, quote_ident, sql_name
from ..format import BackupTable
from .render import column_encoding, column_json_sql, resolve_domain, rows_where

# Per-column kinds of the dump's converter (see _rows.c).
_CATALOG_KINDS = {
    "int2": "n",
    "int4": "n",
    "int8": "n",
    "numeric": "n",
    "float4": "f",
    "float8": "f",
    "bool": "b",
    "timestamp": "t",
    "timestamptz": "z",
}
SERVER_RENDERED = "r"

# Catalog types the dump reads from COPY's binary format, and how (``_rows.c``'s D_
# kinds): the converter renders each send form as its output function would (floats as
# PostgreSQL 12+'s shortest round trip, as extra_float_digits 3 asks on every major the
# dump supports).
_BINARY_DUMP = {
    "int2": "2",
    "int4": "4",
    "int8": "8",
    "numeric": "N",
    "float4": "e",
    "float8": "d",
    "bool": "b",
    "timestamp": "t",
    "timestamptz": "z",
    "date": "D",
    "time": "T",
    "timetz": "Z",
    "interval": "I",  # in the iso_8601 IntervalStyle (format.RENDER_SETTINGS)
    "uuid": "u",
    "bytea": "x",
    "text": "s",
    "varchar": "s",
    "bpchar": "s",
    "name": "s",
    "json": "s",
    "jsonb": "j",
}


def column_kind(column: Column, types: Mapping[int, TypeInfo]) -> str:
    """How the dump's converter writes ``column``: one letter of ``_rows.c``'s kinds."""
    encoding = column_encoding(column, types)
    if encoding == "array":
        return SERVER_RENDERED
    if encoding == "text":
        return "s"
    info = resolve_domain(column.type_oid, types)
    if info is not None and info.schema == "pg_catalog":
        return _CATALOG_KINDS.get(info.name, "s")
    return "s"


def binary_kind(column: Column, types: Mapping[int, TypeInfo]) -> str | None:
    """How the dump's binary converter writes ``column``; None when it cannot (the table
    then takes the text format)."""
    if column_encoding(column, types) == "array":
        return SERVER_RENDERED  # the server's JSON, sent as text
    info = resolve_domain(column.type_oid, types)
    if info is None:
        return None
    if info.typtype == "e":
        return "s"  # enum_send sends the label, as enum_out writes it
    if info.schema == "pg_catalog":
        return _BINARY_DUMP.get(info.name)
    return None


# A table with more TOAST than this stays on COPY text. Its rows may hold values of
# hundreds of MB: in binary, one of up to 1 GB arrives whole and is converted in one piece
# (a 680 MB row: 2.86 GiB peak RSS), where on text a row the server cannot send (over
# 1 GB of text) is written column by column by ``bigrows`` (the same row: 1.02 GiB).
# Binary's gain is the server's time on numbers and dates, not on big values.
BINARY_TOAST_LIMIT = 64 << 20
_BLOCK = 8192  # PostgreSQL's default block size: heap_pages to bytes, for the estimate


def _toast_bytes(table: Table) -> int:
    """The table's TOAST (and free space map) bytes, from its size and heap pages."""
    return max(0, table.table_bytes - table.heap_pages * _BLOCK)


def _prefixes(names: list[str]) -> tuple[bytes, ...]:
    """What goes before each value: ``{"name":`` for the first, ``,"name":`` after."""
    return tuple(
        (b"{" if i == 0 else b",") + _rows.json_string(name.encode()) + b":"
        for i, name in enumerate(names)
    )


@dataclass(frozen=True)
class DumpShape:
    """One table's columns as the dump's converter reads them from COPY."""

    kinds: bytes
    prefixes: tuple[bytes, ...]
    select_list: str  # the SELECT's expressions, in column order
    # Whether ``COPY table (columns) TO`` gives the same text as the SELECT: no column is
    # rendered by the server or generated. The server then skips the executor's
    # projection (measured 5-10% less time for pgbench_accounts than the SELECT form).
    plain_table: bool = False
    # Per column, the binary converter's kind when every column has one: the COPY is
    # then asked in binary format (measured cheaper for the server, and no dearer for
    # the client: docs/benchmarks.md, "Binary COPY on dump"); None: text format.
    binary: bytes | None = None

    @classmethod
    def of(cls, table: Table, types: Mapping[int, TypeInfo]) -> DumpShape:
        kinds, exprs = [], []
        binary: list[str | None] = []
        for column in table.columns:
            kind = column_kind(column, types)
            kinds.append(kind)
            binary.append(binary_kind(column, types))
            if kind == SERVER_RENDERED:
                exprs.append(f"({column_json_sql(column, types)})::pg_catalog.text")
            else:
                exprs.append(quote_ident(column.name))
        binary_kinds = None if None in binary else "".join(k for k in binary if k)
        if _toast_bytes(table) > BINARY_TOAST_LIMIT:
            binary_kinds = None
        return cls(
            kinds="".join(kinds).encode(),
            prefixes=_prefixes([c.name for c in table.columns]),
            select_list=", ".join(exprs),
            plain_table=SERVER_RENDERED not in kinds
            and not any(c.generated for c in table.columns),
            binary=binary_kinds.encode() if binary_kinds else None,
        )

    @property
    def copy_format(self) -> str:
        """The COPY format the converter reads: ``binary`` or ``text``."""
        return "binary" if self.binary is not None else "text"

    def splitter(self) -> LineSplitter | TupleSplitter:
        """What keeps the end of a row that has not fully arrived, for this format."""
        return TupleSplitter() if self.binary is not None else LineSplitter()

    def encode(self, lines: bytes | bytearray | memoryview) -> tuple[bytes, int, int]:
        """Whole rows of COPY (lines of text, or binary tuples after the header) as NDJSON:
        ``(ndjson, rows, longest line)``. Releases the GIL: call it from a worker thread."""
        if self.binary is not None:
            out, rows, longest = _rows.binary_to_ndjson(lines, self.binary, self.prefixes)
        else:
            out, rows, longest = _rows.copy_to_ndjson(lines, self.kinds, self.prefixes)
        return out, rows, longest


def copy_query(
    table: Table,
    shape: DumpShape,
    pages: tuple[int, int | None] | None = None,
    after: tuple[int, int] | None = None,
) -> str:
    """The query whose COPY text the converter reads: the columns named one by one from the
    snapshot's catalog (a column renamed since makes it fail), ``FROM ONLY`` (children have
    their own files), restricted as ``render.rows_where``."""
    source = f"FROM ONLY {sql_name(table.schema, table.name)}{rows_where(pages, after)}"
    return f"SELECT {shape.select_list} {source}"


class LineSplitter:
    """Keeps the end of a line that has not fully arrived: COPY text's rows end with a raw
    newline (a newline in a value is written ``\\n``), but the pieces a COPY delivers may
    be cut anywhere. A long line grows in place, so a row of hundreds of MB arriving in
    many pieces is copied once, not once per piece."""

    def __init__(self) -> None:
        self._tail = bytearray()

    def whole_lines(self, data: bytes) -> bytes | memoryview:
        """The whole lines of what arrived so far (a view of ``data`` where it can: no
        copy), keeping the end of the last line for the next call."""
        cut = data.rfind(b"\n") + 1
        if not cut:
            self._tail += data
            return b""
        lines: bytes | memoryview
        if self._tail:
            self._tail += memoryview(data)[:cut]
            lines = bytes(self._tail)
            self._tail = bytearray()
        else:
            lines = data if cut == len(data) else memoryview(data)[:cut]
        if cut < len(data):
            self._tail += memoryview(data)[cut:]
        return lines

    @property
    def pending(self) -> int:
        return len(self._tail)


class TupleSplitter:
    """``LineSplitter`` for COPY's binary format: checks and drops the header, then keeps
    the end of a tuple that has not fully arrived (``_rows.binary_whole`` walks the field
    lengths). The trailer goes with the last tuples; the converter checks it ends them."""

    def __init__(self) -> None:
        self._tail = bytearray()
        self._header = True  # the header has not been read yet

    def whole_lines(self, data: bytes) -> bytes | memoryview:
        """The whole tuples of what arrived so far, as ``LineSplitter.whole_lines``."""
        buffer: bytes | bytearray = data
        if self._tail or self._header:
            self._tail += data
            buffer = self._tail
            if self._header:
                if len(self._tail) < len(BINARY_HEADER):
                    return b""
                if not self._tail.startswith(BINARY_HEADER):
                    raise ValueError("unexpected COPY binary header from the server")
                del self._tail[: len(BINARY_HEADER)]
                self._header = False
        cut = _rows.binary_whole(buffer)
        if buffer is data:
            if cut < len(data):
                self._tail += memoryview(data)[cut:]
            return data if cut == len(data) else memoryview(data)[:cut]
        # handed over, not copied (a tuple of hundreds of MB arrives in many pieces); the
        # rest, most often a piece of one tuple, starts the next tail
        whole, self._tail = self._tail, bytearray(memoryview(self._tail)[cut:])
        return memoryview(whole)[:cut]

    @property
    def pending(self) -> int:
        return len(self._tail)


_ACTIONS = {"json": "j", "text": "t", "array": "a"}

# Target types (format_type without modifier) loaded in COPY's binary format, and how.
_BINARY = {
    "smallint": "2",
    "integer": "4",
    "bigint": "8",
    "boolean": "b",
    "text": "s",
    "character varying": "s",
    "character": "s",
    "bpchar": "s",
}
# COPY binary's signature, flags and header extension; and the end of the data.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
BINARY_TRAILER = b"\xff\xff"


def _binary_kinds(source: BackupTable, target: Table, written: tuple[str, ...]) -> bytes | None:
    """Per backup column, how COPY's binary format takes it; None unless every written
    column is of a type in ``_BINARY``, the same type (modifier included) as in the backup
    and ``json``-encoded there: its values are then of the JSON kind the converter takes
    (docs/format.md: a hand-made value of another kind is refused, never converted)."""
    by_name = {c.name: c for c in target.columns}
    kinds = []
    for column in source.columns:
        if column.name not in written:
            kinds.append("x")
            continue
        here = by_name.get(column.name)
        kind = _BINARY.get(here.bare_type) if here is not None else None
        if here is None or kind is None or here.type != column.type or column.encoding != "json":
            return None
        kinds.append(kind)
    return "".join(kinds).encode() if written else None


class LineNotAsDescribed(ValueError):
    """A data file's line that the format does not allow (``docs/format.md``)."""

    def __init__(self, line: int, column: str | None, what: str) -> None:
        self.line = line  # 1-based, in the file
        self.column = column
        self.what = what
        where = f"line {line}" + (f", column {column!r}" if column is not None else "")
        super().__init__(f"{where}: {what}")


@dataclass(frozen=True)
class LoadShape:
    """One backup table's lines as the restore's converter (and verify) reads them."""

    names: tuple[bytes, ...]  # every key of a line, in order
    actions: bytes  # per key: x (left out), j, t or a (its encoding)
    delimiters: bytes  # per key: the array delimiter of the target column
    columns: tuple[str, ...]  # the target columns the COPY writes, in line order
    # per key, for COPY's binary format: x (left out), 2/4/8, s or b; None when a written
    # column is not of those types (or its type differs from the backup's): text format
    binary: bytes | None = None

    @classmethod
    def of(cls, source: BackupTable, target: Table, written: tuple[str, ...]) -> LoadShape | None:
        """None when a column's encoding is not one this converter knows."""
        delimiter = {c.name: c.array_delimiter for c in target.columns}
        actions, delims, columns = [], [], []
        for column in source.columns:
            if column.name not in written:
                actions.append("x")
            elif column.encoding in _ACTIONS:
                actions.append(_ACTIONS[column.encoding])
                columns.append(column.name)
            else:
                return None
            delim = delimiter.get(column.name, ",")
            if len(delim.encode()) != 1:
                return None
            delims.append(delim)
        if sorted(columns) != sorted(written):
            return None
        return cls(
            names=tuple(c.name.encode() for c in source.columns),
            actions="".join(actions).encode(),
            delimiters="".join(delims).encode(),
            columns=tuple(columns),
            binary=_binary_kinds(source, target, written),
        )

    @classmethod
    def checking(cls, columns: list[tuple[str, str | None]]) -> LoadShape:
        """For verify: every ``(name, encoding)`` key in order, each value checked against
        its encoding (any JSON value where the encoding is unknown)."""
        return cls(
            names=tuple(name.encode() for name, _ in columns),
            actions="".join(_ACTIONS.get(enc or "", "x") for _, enc in columns).encode(),
            delimiters=b"," * len(columns),
            columns=tuple(name for name, _ in columns),
        )

    def encode_binary(
        self, lines: bytes | bytearray | memoryview, first_line: int = 1
    ) -> tuple[bytes, int]:
        """Whole NDJSON lines as COPY binary tuples (``binary`` must be set); as ``encode``."""
        assert self.binary is not None
        try:
            out, rows = _rows.ndjson_to_binary(lines, self.names, self.binary)
        except _rows.LineError as exc:
            column = self.names[exc.column].decode() if 0 <= exc.column < len(self.names) else None
            raise LineNotAsDescribed(first_line + exc.line, column, exc.what) from None
        return out, rows

    def encode(
        self, lines: bytes | bytearray | memoryview, first_line: int = 1
    ) -> tuple[bytes, int]:
        """Whole NDJSON lines as COPY text: ``(copy_text, rows)``. Releases the GIL. A line
        not as the format says raises ``LineNotAsDescribed``, numbered from ``first_line``."""
        try:
            out, rows = _rows.ndjson_to_copy(lines, self.names, self.actions, self.delimiters)
        except _rows.LineError as exc:
            column = self.names[exc.column].decode() if 0 <= exc.column < len(self.names) else None
            raise LineNotAsDescribed(first_line + exc.line, column, exc.what) from None
        return out, rows
