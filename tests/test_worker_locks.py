"""The workers' NOWAIT lock, pg_dump's guard against an undetected deadlock: someone who
asks for an ACCESS EXCLUSIVE lock after the dump's snapshot locked a table queues behind
the coordinator, and a worker that then waited for that table would wait forever (it
waits for them, they wait for the coordinator, the coordinator for the worker). The
worker's lock fails at once instead and the dump names the table.

A worker locks a run of small tables in one statement (``SnapshotReader.lock``); the
failure must still name the table that has the waiter, wherever it is in the run."""

from __future__ import annotations

import time
from pathlib import Path

import anyio.from_thread
import asyncpg
import pytest

import asyncsnap
from asyncsnap.errors import LockTimeout
from asyncsnap.events import DumpStarted, Event

from .conftest import Database

TABLES = 30  # one run of 20 small tables and the rest: the waiter is inside a run
_WAITING = """
SELECT count(*) FROM pg_catalog.pg_locks l
WHERE NOT l.granted AND l.relation = $1::pg_catalog.regclass AND l.mode = 'AccessExclusiveLock'
"""


@pytest.mark.parametrize("blocked", ["t02", "t17", "t30"])
def test_a_table_with_a_lock_waiting_behind_the_dump_fails_it_by_name(
    db: Database, tmp_path: Path, blocked: str
) -> None:
    db.execute(
        "".join(
            f"CREATE TABLE t{i:02d} (id int PRIMARY KEY, v text);"
            f"INSERT INTO t{i:02d} SELECT g, 'x' FROM generate_series(1, 5) g;"
            for i in range(1, TABLES + 1)
        )
    )
    held: list[asyncpg.Connection] = []

    async def ask_for_exclusive() -> None:  # waits behind the dump's snapshot
        conn = await asyncpg.connect(db.dsn)
        held.append(conn)
        await conn.execute(f"BEGIN; LOCK TABLE public.{blocked} IN ACCESS EXCLUSIVE MODE")

    async def waiting() -> int:
        conn = await asyncpg.connect(db.dsn)
        try:
            return int(await conn.fetchval(_WAITING, f"public.{blocked}"))
        finally:
            await conn.close()

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:

        def on_event(event: Event) -> None:
            # The snapshot holds its locks and no worker has started: queue the request,
            # and go on once the server shows it waiting.
            if isinstance(event, DumpStarted):
                portal.start_task_soon(ask_for_exclusive)
                deadline = time.monotonic() + 30
                while not portal.call(waiting):
                    assert time.monotonic() < deadline, "the lock request never queued"
                    time.sleep(0.02)

        try:
            with pytest.raises(LockTimeout) as failed:
                anyio.run(
                    lambda: asyncsnap.dump(
                        db.dsn, output=tmp_path, name="b", jobs=2, on_event=on_event
                    )
                )
        finally:
            for conn in held:
                portal.call(conn.close)
    assert failed.value.message == (
        f"table public.{blocked} has a lock request waiting behind the dump"
    )
    assert not (tmp_path / "b").exists()
