"""Rows too big for one JSON value: read column by column and piece by piece, and loaded
through a staging table.

PostgreSQL builds no value over 1 GiB, and a COPY sends a row as one buffer of at most
that, so a row whose JSON would be longer (a ``bytea`` over 512 MB, or several large
fields) cannot come through ``row_to_json``. The dump then finds that row, writes the rows
before it as usual, and renders the row itself here: each column on its own
(``to_json``), and a column still too big in pieces of its text form (or of its bytes, for
``bytea``), escaped here exactly as the server's ``escape_json`` would, so the line is the
one the server would have written. Memory is one piece, whatever the row's size.

A restore cannot send such a line as one ``json`` parameter either (a protocol message is
at most 1 GiB). A long line is parsed here; its large string values go through a binary
``COPY`` into a temporary table, each streamed in pieces, and one ``INSERT ... SELECT``
moves the row into the target with the same casts as the batched path, the rest of the
row read with ``json_to_record``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import orjson

from ..catalog import Column, Table, TypeInfo, quote_ident, sql_name
from ..errors import DumpFailed
from ..storage.files import DataFileWriter
from .render import column_json_sql, piecewise, rows_where

# What the server says when a value would exceed 1 GiB: "out of memory" with "Cannot
# enlarge string buffer" (54000), out of memory (53200), or palloc's "invalid memory alloc
# request size" (XX000).
_TOO_BIG = (asyncpg.ProgramLimitExceededError, asyncpg.OutOfMemoryError)
# Characters of text, or bytes of bytea, fetched per query for a value read in pieces.
TEXT_PIECE = 32 << 20
BYTES_PIECE = 64 << 20


def too_big(exc: BaseException) -> bool:
    """Whether a server error means a value would have been larger than it can build."""
    if isinstance(exc, _TOO_BIG):
        return True
    return isinstance(exc, asyncpg.InternalServerError) and "memory alloc request size" in str(exc)


def parse_tid(text: str) -> tuple[int, int]:
    """``(page, item)`` from the server's ``tid`` text ``(12,3)``; refuses anything else."""
    page, _, item = text.strip("()").partition(",")
    if not (page.isdigit() and item.isdigit()):
        raise DumpFailed(f"unexpected row address {text!r} from the server")
    return int(page), int(item)


async def nth_row(
    conn: asyncpg.Connection,
    table: Table,
    pages: tuple[int, int | None] | None,
    after: tuple[int, int] | None,
    skip: int,
) -> tuple[int, int]:
    """The address of the row after the first ``skip`` rows of a range, in the order a
    COPY of the range reads them (physical order: the same scan, no ORDER BY)."""
    found = await conn.fetchval(
        f"SELECT ctid::pg_catalog.text FROM ONLY {sql_name(table.schema, table.name)}"
        f"{rows_where(pages, after)} OFFSET $1 LIMIT 1",
        skip,
    )
    if found is None:
        raise DumpFailed(f"{table.qualified}: the row that failed to render was not found again")
    return parse_tid(found)


async def _render_column(
    conn: asyncpg.Connection, table: Table, sql: str, ctid: tuple[int, int]
) -> str | None:
    """One column of one row as JSON text, or ``None`` when it is too big to render."""
    await conn.execute("SAVEPOINT asyncsnap_column")
    try:
        value: str | None = await conn.fetchval(sql, ctid)
    except asyncpg.PostgresError as exc:
        if not too_big(exc):
            raise
        await conn.execute("ROLLBACK TO SAVEPOINT asyncsnap_column")
        return None
    await conn.execute("RELEASE SAVEPOINT asyncsnap_column")
    return "null" if value is None else value


async def write_row(
    conn: asyncpg.Connection,
    table: Table,
    types: Mapping[int, TypeInfo],
    ctid: tuple[int, int],
    writer: DataFileWriter,
) -> int:
    """Render the row at ``ctid`` column by column into ``writer``; returns the line's
    length in bytes. Runs in the caller's snapshot transaction.

    :raises DumpFailed: for a value too big to render whose JSON is not a string.
    """
    source = f"FROM ONLY {sql_name(table.schema, table.name)} WHERE ctid = $1::pg_catalog.tid"
    before = writer.raw_bytes
    writer.write(b"{")
    for i, column in enumerate(table.columns):
        writer.write((b"," if i else b"") + orjson.dumps(column.name) + b":")
        value_sql = f"SELECT ({column_json_sql(column, types)})::pg_catalog.text {source}"
        value = await _render_column(conn, table, value_sql, ctid)
        if value is not None:
            writer.write(value.encode())
            continue
        await _write_in_pieces(conn, table, types, column, ctid, writer)
    writer.write(b"}\n")
    return writer.raw_bytes - before


async def _write_in_pieces(
    conn: asyncpg.Connection,
    table: Table,
    types: Mapping[int, TypeInfo],
    column: Column,
    ctid: tuple[int, int],
    writer: DataFileWriter,
) -> None:
    """One value too big to render at once, as its JSON string, a piece at a time."""
    kind = piecewise(column, types)
    if kind is None:
        raise DumpFailed(
            f"{table.qualified}: column {column.name} ({column.type}) of the row at "
            f"({ctid[0]},{ctid[1]}) is too large to render as JSON",
            hint="only strings and bytea values are read in pieces; this row cannot be "
            "dumped (pg_dump cannot either)",
        )
    value = quote_ident(column.name) + ("::pg_catalog.text" if kind == "text" else "")
    sql = (
        f"SELECT pg_catalog.substring({value}, $2::pg_catalog.int4, $3::pg_catalog.int4) "
        f"FROM ONLY {sql_name(table.schema, table.name)} WHERE ctid = $1::pg_catalog.tid"
    )
    step = BYTES_PIECE if kind == "bytes" else TEXT_PIECE
    start = 1
    while True:
        piece = await conn.fetchval(sql, ctid, start, step)
        if piece is None:  # SQL NULL (only the first piece can be)
            writer.write(b"null")
            return
        if start == 1:
            # to_json(bytea) is the string "\x<hex>" (its backslash escaped in JSON).
            writer.write(b'"\\\\x' if kind == "bytes" else b'"')
        if kind == "bytes":
            writer.write(piece.hex().encode())
        else:
            # orjson escapes as the server's escape_json does: \" \\ \b \f \n \r \t,
            # \u00XX (lower case) for other control characters, nothing else.
            writer.write(orjson.dumps(piece)[1:-1])
        start += step
        if len(piece) < step:
            break
    writer.write(b'"')


# --- restore -------------------------------------------------------------------------

# Values at least this long (characters of a JSON string) are staged; the rest of the row
# travels as one json value, which then stays far below the 1 GiB a message can hold.
STAGE_VALUES_FROM = 16 << 20
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_STREAM_PIECE = 16 << 20


async def _binary_row(fields: list[bytes | str]) -> AsyncIterator[bytes]:
    """A binary COPY stream of one row, each field sent in pieces (the server takes a
    field of up to 1 GiB; a message of up to 1 GiB)."""
    yield _COPY_SIGNATURE + struct.pack("!h", len(fields))
    for value in fields:
        data = value.encode() if isinstance(value, str) else value
        yield struct.pack("!i", len(data))
        view = memoryview(data)
        for start in range(0, len(data), _STREAM_PIECE):
            yield bytes(view[start : start + _STREAM_PIECE])
    yield struct.pack("!h", -1)


async def load_row(
    conn: asyncpg.Connection,
    *,
    line: bytes | bytearray | memoryview,
    target: str,
    columns: tuple[str, ...],
    text_columns: frozenset[str],
    types: Mapping[str, str],
    bare_types: Mapping[str, str],
    overriding: bool,
) -> None:
    """Insert one long line into ``target``: its long string values through a binary COPY
    into a temporary table, the rest as json (module docstring). ``types`` are the
    target's column types (``format_type``), ``bare_types`` the same without modifiers
    (what text is cast to: the INSERT then applies the modifier, refusing what does not
    fit); names are always quoted."""
    row: dict[str, Any] = orjson.loads(line)
    staged: dict[str, tuple[bytes | str, str]] = {}  # column -> value, staging type; in order
    for name in columns:
        value = row.get(name)
        if isinstance(value, str) and len(value) >= STAGE_VALUES_FROM:
            if name not in text_columns and types[name] == "bytea" and value.startswith("\\x"):
                staged[name] = (bytes.fromhex(value[2:]), "pg_catalog.bytea")
            else:
                staged[name] = (value, "pg_catalog.text")
            del row[name]
    rest = orjson.dumps({k: v for k, v in row.items() if k in columns})
    del row
    stage = "pg_temp.asyncsnap_long_row"
    index = {name: i for i, name in enumerate(staged)}
    definitions = ", ".join(
        ["rest pg_catalog.json", *(f"v{index[name]} {kind}" for name, (_, kind) in staged.items())]
    )
    await conn.execute(
        f"DROP TABLE IF EXISTS {stage}; CREATE TEMPORARY TABLE {stage} ({definitions})"
    )
    fields: list[bytes | str] = [rest, *(value for value, _ in staged.values())]
    staged_names = set(staged)
    staged.clear()
    await conn.copy_to_table(
        "asyncsnap_long_row", schema_name="pg_temp", source=_binary_row(fields), format="binary"
    )
    del fields
    exprs, declared = [], []
    for name in columns:
        col = quote_ident(name)
        if name in staged_names:
            exprs.append(f"s.v{index[name]}::{bare_types[name]}")
        elif name in text_columns:
            declared.append(f"{col} pg_catalog.text")
            exprs.append(f"p.{col}::{bare_types[name]}")
        else:
            declared.append(f"{col} {types[name]}")
            exprs.append(f"p.{col}")
    source = f"{stage} AS s"
    if declared:
        source += f", pg_catalog.json_to_record(s.rest) AS p({', '.join(declared)})"
    cols = ", ".join(quote_ident(c) for c in columns)
    override = " OVERRIDING SYSTEM VALUE" if overriding else ""
    await conn.execute(
        f"INSERT INTO {target} ({cols}){override} SELECT {', '.join(exprs)} FROM {source}; "
        f"DROP TABLE {stage}"
    )
