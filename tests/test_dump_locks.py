"""A dump must work where pg_dump works: on a server whose lock table cannot hold the
snapshot's lock on every table beside pg_dump's own (issue 24). Ten thousand tables at
PostgreSQL's defaults are such a case (tests/test_many_tables.py, long); here the lock
table is made small instead, so that a few hundred tables are."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap.errors import DumpFailed
from asyncsnap.events import Event, Notice
from asyncsnap.snapshot import CHUNKS_PER_TRANSACTION, locks_fit_together
from throwaway.postgres import Server, throwaway_server

from .conftest import clean_env
from .helpers import manifest_of, read_rows

# PostgreSQL sizes its lock table as max_locks_per_transaction x (max_connections +
# autovacuum_max_workers + 1 + max_worker_processes + max_wal_senders +
# max_prepared_transactions): 20 x 24 = 480 here, and it borrows some spare shared memory
# beyond. Measured on PostgreSQL 15: pg_dump alone takes the schema of 290 tables with a
# primary key each; with the snapshot's locks on them beside its own, no more than 200.
SMALL_LOCK_TABLE = {
    "max_locks_per_transaction": "20",
    "max_connections": "20",
    "autovacuum_max_workers": "1",
    "max_worker_processes": "2",
    "max_wal_senders": "0",
}
TABLES = 260

_MAKE = """
DO $$
BEGIN
  FOR i IN {first}..{last} LOOP
    EXECUTE pg_catalog.format('CREATE TABLE public.%I (id int PRIMARY KEY, v text)', 't' || i);
    EXECUTE pg_catalog.format('INSERT INTO public.%I VALUES (1, %L), (2, NULL)', 't' || i, i);
  END LOOP;
END $$;
"""


def _psql(server: Server, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", server.dsn()],
        input=sql,
        text=True,
        capture_output=True,
        check=True,
        env=clean_env(),
    )


@pytest.fixture(scope="module")
def small_lock_table() -> Iterator[Server]:
    with throwaway_server(settings=SMALL_LOCK_TABLE) as server:
        for first in range(1, TABLES + 1, 40):  # each transaction's locks must fit too
            _psql(server, _MAKE.format(first=first, last=min(TABLES, first + 39)))
        yield server


def test_locks_fit_together_counts_snapshot_pg_dump_and_workers() -> None:
    workers = 2 * CHUNKS_PER_TRANSACTION * 2
    fits = 2 * 1000 + 1000 + workers
    assert locks_fit_together(tables=1000, indexes=1000, jobs=2, capacity=fits)
    assert not locks_fit_together(tables=1000, indexes=1000, jobs=2, capacity=fits - 1)
    assert not locks_fit_together(tables=1000, indexes=1001, jobs=2, capacity=fits)
    assert not locks_fit_together(tables=1000, indexes=1000, jobs=3, capacity=fits)
    # PostgreSQL's defaults (64 x 122): 10,000 tables do not fit, 2,000 do.
    assert not locks_fit_together(tables=10_000, indexes=10_000, jobs=2, capacity=7808)
    assert locks_fit_together(tables=2_000, indexes=2_000, jobs=2, capacity=7808)


def _dump(server: Server, out: Path, notices: list[str]) -> asyncsnap.DumpResult:
    def on_event(event: Event) -> None:
        if isinstance(event, Notice):
            notices.append(event.message)

    return anyio.run(
        lambda: asyncsnap.dump(server.dsn(), output=out, name="b", jobs=2, on_event=on_event)
    )


def test_dump_takes_the_schema_first_when_the_lock_table_is_small(
    small_lock_table: Server, tmp_path: Path
) -> None:
    server = small_lock_table
    # What the test stands on: pg_dump alone can dump this schema here.
    pg_dump = server.bindir / "pg_dump"
    subprocess.run(
        [str(pg_dump), "--schema-only", "-f", "/dev/null", server.dsn()],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    notices: list[str] = []
    _dump(server, tmp_path, notices)
    assert any(
        f"{TABLES} tables: pg_dump takes the schema before the data is copied" in n
        and "(480 locks" in n
        for n in notices
    ), notices
    backup = tmp_path / "b"
    assert asyncsnap.verify(backup).ok
    assert len(manifest_of(backup)["tables"]) == TABLES
    rows = read_rows(backup)
    assert rows[("public", "t7")] == [{"id": 1, "v": "7"}, {"id": 2, "v": None}]
    sql = (backup / "schema" / "schema.sql").read_text()
    assert sql.count("CREATE TABLE public.t") == TABLES
    assert not list(backup.rglob("*.tmp"))  # pg_dump's archive was stored, not left


def test_dump_with_both_lock_sets_at_once_runs_out_of_locks(
    small_lock_table: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above is one the old order cannot do: the snapshot's locks taken before
    pg_dump's fill the lock table."""
    dump_module = importlib.import_module("asyncsnap.dump")
    monkeypatch.setattr(dump_module, "locks_fit_together", lambda **_: True)
    with pytest.raises(DumpFailed, match="out of shared memory"):
        _dump(small_lock_table, tmp_path, [])
    assert not any(tmp_path.iterdir())


async def _fill_lock_table(dsn: str, room: int) -> asyncpg.Connection:
    """A session holding advisory locks until the lock table is full, whatever spare
    shared memory earlier tests left it, then giving ``room`` back; close it to free."""
    holder = await asyncpg.connect(dsn)
    held = 0
    with contextlib.suppress(asyncpg.OutOfMemoryError):
        while True:
            await holder.execute(f"SELECT pg_catalog.pg_advisory_lock({held + 1})")
            held += 1
    for key in range(held, held - room, -1):
        await holder.execute(f"SELECT pg_catalog.pg_advisory_unlock({key})")
    return holder


def _failure_beside_a_full_lock_table(
    server: Server, command: Callable[[], Awaitable[object]]
) -> DumpFailed:
    """What ``command`` fails with while another session fills the lock table, leaving
    room for its catalog reads, not for its locks."""

    async def beside_a_holder() -> None:
        holder = await _fill_lock_table(server.dsn(), room=60)
        try:
            await command()
        finally:
            await holder.close()

    with pytest.raises(DumpFailed) as caught:
        anyio.run(beside_a_holder)
    return caught.value


def test_a_full_lock_table_fails_the_dump_in_one_line_with_a_hint(
    small_lock_table: Server, tmp_path: Path
) -> None:
    """Another session's locks fill the lock table before the snapshot's: one error line
    (the server's message without its own hint), and a hint that says which setting."""
    failure = _failure_beside_a_full_lock_table(
        small_lock_table,
        lambda: asyncsnap.dump(
            small_lock_table.dsn(), output=tmp_path, name="b", jobs=2, with_schema=False
        ),
    )
    assert failure.message == "server error: out of shared memory"
    assert failure.hint is not None
    assert "lock table is full: raise max_locks_per_transaction" in failure.hint
    assert not any(tmp_path.iterdir())


def test_a_full_lock_table_fails_compare_in_one_line_with_a_hint(
    small_lock_table: Server, tmp_path: Path
) -> None:
    _dump(small_lock_table, tmp_path, [])
    failure = _failure_beside_a_full_lock_table(
        small_lock_table, lambda: asyncsnap.compare(tmp_path / "b", small_lock_table.dsn())
    )
    assert failure.message == "server error: out of shared memory"
    assert failure.hint is not None
    assert "lock table is full" in failure.hint
    assert "compare fewer tables at once" in failure.hint
