"""The snapshot must describe what was copied: a migration that held a table when the dump
took its snapshot, changed it and committed before the dump's lock was granted, makes the
dump start over on a new snapshot (or fail, naming the table), never write keys the
manifest does not list or lose the rows."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap.errors import DumpFailed
from asyncsnap.events import Event, Notice

from .conftest import Database
from .helpers import manifest_of, read_rows

_WAITING = """
SELECT count(*) FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.application_name IN ('asyncsnap', 'pg_dump')
  AND a.datname = current_database()
"""


async def dump_while_migrating(
    db: Database, out: Path, migration: str, notices: list[str]
) -> asyncsnap.DumpResult:
    """Hold the table in a migration's transaction, start the dump, let the dump take its
    snapshot and wait for its lock, then run the migration and commit."""
    holder = await asyncpg.connect(db.dsn)
    watcher = await asyncpg.connect(db.dsn)
    result: list[asyncsnap.DumpResult] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Notice):
            notices.append(event.message)

    async def run_dump() -> None:
        result.append(
            await asyncsnap.dump(
                db.dsn, output=out, name="b", lock_timeout=0, jobs=2, on_event=on_event
            )
        )

    try:
        await holder.execute("BEGIN; LOCK TABLE public.t IN ACCESS EXCLUSIVE MODE")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_dump)
            with anyio.fail_after(30):
                while not await watcher.fetchval(_WAITING):  # noqa: ASYNC110 - server state
                    await anyio.sleep(0.02)
            await holder.execute(migration)
            await holder.execute("COMMIT")
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    finally:
        await holder.close()
        await watcher.close()
    return result[0]


@pytest.mark.parametrize(
    ("migration", "columns", "rows"),
    [
        pytest.param(
            "ALTER TABLE t RENAME COLUMN v TO w",
            ["id", "w"],
            [{"id": 1, "w": "a"}, {"id": 2, "w": "b"}],
            id="rename-column",
        ),
        pytest.param(
            "ALTER TABLE t ADD COLUMN extra int DEFAULT 7",
            ["id", "v", "extra"],
            [{"id": 1, "v": "a", "extra": 7}, {"id": 2, "v": "b", "extra": 7}],
            id="add-column",
        ),
        pytest.param(
            "TRUNCATE t; INSERT INTO t VALUES (10, 'new')",
            ["id", "v"],
            [{"id": 10, "v": "new"}],
            id="truncate",
        ),
        pytest.param(
            "ALTER TABLE t ALTER COLUMN id TYPE bigint",  # rewrites the table
            ["id", "v"],
            [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}],
            id="rewrite",
        ),
    ],
)
@pytest.mark.parametrize("schema_first", [False, True], ids=["locks-first", "schema-first"])
def test_table_changed_between_snapshot_and_lock_starts_over(
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    migration: str,
    columns: list[str],
    rows: list[dict[str, Any]],
    schema_first: bool,
) -> None:
    if schema_first:  # as when the server's lock table is small (test_dump_locks.py)
        dump_module = importlib.import_module("asyncsnap.dump")
        monkeypatch.setattr(dump_module, "locks_fit_together", lambda **_: False)
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')"
    )
    notices: list[str] = []
    result = anyio.run(dump_while_migrating, db, tmp_path, migration, notices)
    assert result.snapshots == 2
    assert any(
        "changed between the snapshot and its lock: public.t" in n and "new snapshot (2/3)" in n
        for n in notices
    ), notices
    (entry,) = manifest_of(tmp_path / "b")["tables"]
    assert [c["name"] for c in entry["columns"]] == columns
    assert sorted(read_rows(tmp_path / "b")[("public", "t")], key=lambda r: r["id"]) == rows
    assert asyncsnap.verify(tmp_path / "b").ok
    # The schema is the new snapshot's too (pg_dump ran again when it came first).
    sql = (tmp_path / "b" / "schema" / "schema.sql").read_text()
    (table_sql,) = [part for part in sql.split(";") if "CREATE TABLE public.t " in part]
    assert [c for c in columns if f"    {c} " in table_sql] == columns


@pytest.mark.parametrize("schema_first", [False, True], ids=["locks-first", "schema-first"])
def test_table_that_keeps_changing_fails_the_dump_naming_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema_first: bool
) -> None:
    if schema_first:
        dump_module = importlib.import_module("asyncsnap.dump")
        monkeypatch.setattr(dump_module, "locks_fit_together", lambda **_: False)
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    # The module, not the function the package exports under the same name.
    monkeypatch.setattr(importlib.import_module("asyncsnap.snapshot"), "SNAPSHOT_ATTEMPTS", 1)
    with pytest.raises(DumpFailed, match=r"kept changing .*public\.t \(columns changed: x added\)"):
        anyio.run(dump_while_migrating, db, tmp_path, "ALTER TABLE t ADD COLUMN x int", [])
    assert not any(tmp_path.iterdir())  # nothing was written
