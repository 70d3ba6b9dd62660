"""Rows as a replication slot sends them (each value's text form) to the lines a full
backup holds for the same rows: the same bytes, so that an incremental backup's rows read
exactly as a full backup's (issue 25).

The slot sends each value as its type's output function writes it, in the decoding
session's settings: ``changes.read_changes`` runs on a connection with the session policy,
so these are the settings a dump's COPY renders with. Such a row becomes a line of COPY
text (``_rows.copy_text``: escaped as COPY escapes it) and goes through the dump's own converter
(``_rows.copy_to_ndjson``, the dump's text path, tested byte for byte against the server's
rendering). Columns whose JSON the server renders in a dump (arrays: ``rowcodec
.SERVER_RENDERED``) are rendered by the server here too, from their text form, a query per
such column for a batch of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from .. import _rows
from ..catalog import Table, TypeInfo, quote_ident
from .render import column_json_sql
from .rowcodec import SERVER_RENDERED, DumpShape


class ChangeRowEncoder:
    """One table's rows, given as text values in its columns' order, to backup lines."""

    def __init__(self, table: Table, types: Mapping[int, TypeInfo]) -> None:
        shape = DumpShape.of(table, types)
        self.table = table
        self.kinds = shape.kinds
        self.prefixes = shape.prefixes
        # Server-rendered columns: the query that renders a batch of their text forms.
        self.rendered: dict[int, str] = {}
        for i, column in enumerate(table.columns):
            if chr(self.kinds[i]) == SERVER_RENDERED:
                col = quote_ident(column.name)
                self.rendered[i] = (
                    f"SELECT ({column_json_sql(column, types)})::pg_catalog.text"
                    f" FROM (SELECT u.v::{column.bare_type or column.type} AS {col}, u.o"
                    " FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY"
                    " AS u(v, o)) AS s ORDER BY s.o"
                )

    async def encode(
        self, conn: asyncpg.Connection, rows: Sequence[Sequence[bytes | None]]
    ) -> list[bytes]:
        """The rows' lines (each without its newline), in order."""
        width = len(self.table.columns)
        for row in rows:
            if len(row) != width:
                raise ValueError(
                    f"a row of {len(row)} values for {self.table.qualified}'s {width} columns"
                )
        fields: Sequence[Sequence[bytes | None]] = rows
        if self.rendered:  # (copied only when the server renders values into them)
            copies = [list(row) for row in rows]
            for i, query in self.rendered.items():
                texts = [None if (v := row[i]) is None else v.decode() for row in copies]
                rendered = await conn.fetch(query, texts)
                for row, value in zip(copies, rendered, strict=True):
                    row[i] = None if value[0] is None else value[0].encode()
            fields = copies
        text = _rows.copy_text(fields)
        out, count, _ = _rows.copy_to_ndjson(text, self.kinds, self.prefixes)
        if count != len(fields):
            raise AssertionError(f"{count} lines from {len(fields)} rows")
        lines = bytes(out).split(b"\n")
        return lines[:-1]
