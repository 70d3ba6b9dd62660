"""Rows into columns whose type changed since the dump (issue 22, 10): a value the
target's type would round or cut is an error naming the table, the column, both types
and the first such row's key, and the table is rolled back; a value it holds unchanged
loads. Where the types are the backup's, nothing changes (no staging)."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncsnap.errors import SchemaMismatch

from .conftest import Database, Postgres, fresh_database
from .test_dump import run_dump
from .test_restore import run_restore


def in_utc(dsn: str, sql: str, *args: object) -> object:
    """One value, read with TimeZone UTC, as the dump rendered and the restore read."""

    async def go() -> object:
        conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return anyio.run(go, backend="asyncio")


TYPE_OF_V = (
    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
    "WHERE attrelid = 't'::regclass AND attname = 'v'"
)
# backup type, a value it keeps, a value it changes, the target type
CASES = [
    ("numeric", "1.5", "1.23456", "numeric(10,2)"),
    ("numeric", "1e3", "1e-3", "numeric(10,2)"),
    ("timestamptz", "2024-05-06 00:00:00+00", "2024-05-06 12:34:56+00", "date"),
    ("timestamptz", "2024-05-06 12:34:56+00", "2024-05-06 12:34:56.5+00", "timestamptz(0)"),
    ("timestamp", "2024-05-06 12:34:56", "2024-05-06 12:34:56.789", "timestamp(0)"),
    ("timestamp", "2024-05-06 00:00", "2024-05-06 00:00:01", "date"),
    ("time", "12:34:56", "12:34:56.789", "time(0)"),
    ("interval", "2 days", "1 day 03:00", "interval day"),
    ("interval", "3 hours", "3 hours 4 minutes", "interval hour"),
    ("varchar(20)", "abc", "abcdefg", "varchar(5)"),
    ("text", "ab", "ab ", "char(5)"),
    ("float8", "0.5", "-0", "numeric"),
    ("numeric", "0.1", "1.000000000000000000001", "float8"),
]


@pytest.mark.parametrize(
    ("backup_type", "kept", "changed", "target_type"),
    CASES,
    ids=[f"{b}->{t}:{c}" for b, _, c, t in CASES],
)
def test_a_value_the_new_type_would_change_is_an_error_naming_it(
    db: Database,
    postgres: Postgres,
    tmp_path: Path,
    backup_type: str,
    kept: str,
    changed: str,
    target_type: str,
) -> None:
    """Before, a --data-only restore into a column whose type changed rounded silently
    (numeric 1.23456 into numeric(10,2) became 1.23; a timestamptz into date lost its
    time), although the README promised "never cut"."""
    db.execute(
        f"CREATE TABLE t (id int PRIMARY KEY, v {backup_type});"
        f"INSERT INTO t VALUES (1, $${kept}$$), (2, $${changed}$$), (3, NULL)"
    )
    backup = Path(run_dump(db, tmp_path / "both").path)
    db.execute("DELETE FROM t WHERE id = 2")
    only_kept = Path(run_dump(db, tmp_path / "kept").path)
    with fresh_database(postgres, "asyncsnap_retyped") as target:
        target.execute(f"CREATE TABLE t (id int PRIMARY KEY, v {target_type})")
        with pytest.raises(SchemaMismatch) as failed:
            run_restore(backup, target, data_only=True)
        message = str(failed.value)
        there, here = (d.fetchval(TYPE_OF_V) for d in (db, target))
        assert message.startswith(
            f"public.t: column v is {there} in the backup and {here} "
            "here, and the row with id = 2 (line 2 of data/public.t-"
        )
        assert message.endswith("would not keep its value (restore never rounds or cuts one)")
        assert failed.value.hint is not None and "public.t was rolled back" in failed.value.hint
        assert target.fetchval("SELECT count(*) FROM t") == 0
        # The values the new type holds unchanged load, and read back as the backup's.
        result = run_restore(only_kept, target, data_only=True)
        assert result.rows == 2
        assert [c.name for c in result.plan.loads[0].retyped] == ["v"]  # type: ignore[union-attr]
        same = in_utc(
            target.dsn,
            f"SELECT v = $1::text::{backup_type}::{target_type} FROM t WHERE id = 1",
            kept,
        )
        assert same is True
        assert target.fetchval("SELECT v IS NULL FROM t WHERE id = 3")


def test_equal_types_load_as_before_without_a_stage(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """Where every type is the backup's, no column is checked: the rows go straight in."""
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), ts timestamptz);"
        "INSERT INTO t VALUES (1, 1.5, now())"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_same") as target:
        target.execute("CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), ts timestamptz)")
        result = run_restore(backup, target, data_only=True)
        assert result.plan is not None and result.plan.loads[0].retyped == ()
        assert result.rows == 1


def test_a_retyped_table_keeps_identity_and_generated_columns_and_cycles(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """Through the stage, an identity column keeps its values (OVERRIDING SYSTEM VALUE),
    a generated column is computed, and a split table's files are each checked."""
    db.execute(
        "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n numeric, "
        "pad text, twice numeric GENERATED ALWAYS AS (n * 2) STORED);"
        "INSERT INTO t (n, pad) SELECT g / 4.0, repeat('x', 300) FROM generate_series(1, 400) g;"
        "DELETE FROM t WHERE id % 3 = 0; ANALYZE t"
    )
    backup = Path(run_dump(db, tmp_path, jobs=2, split_larger_than=40_000).path)
    with fresh_database(postgres, "asyncsnap_stage") as target:
        target.execute(
            "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "n numeric(12,2), pad text, twice numeric GENERATED ALWAYS AS (n * 2) STORED)"
        )
        result = run_restore(backup, target, data_only=True, jobs=2)
        assert result.rows == db.fetchval("SELECT count(*) FROM t")
        assert target.fetchval("SELECT sum(id) FROM t") == db.fetchval("SELECT sum(id) FROM t")
        assert target.fetchval("SELECT bool_and(twice = n * 2) FROM t")
