"""A table whose column types changed since the dump loads through a staging table, and
every changed value is checked to keep its value before it goes into the target
(``Stage``): restore never rounds or cuts a value silently."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from ..catalog import quote_ident, sql_name
from ..errors import RestoreFailed, SchemaMismatch
from ..format import BackupFile
from .plan import Retyped, TableLoad, cast_target


class Stage:
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
