"""Restores that race (issue 22, 6 and 7): two restores into one database at once, and a
restore racing an application's INSERT, end exact or refused, never duplicated.

Each scenario is tried 20 times on tiny tables. Where the order of events matters, the
test waits for server state (a session waiting in ``pg_locks``), never a fixed sleep.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncsnap.api import restore
from asyncsnap.errors import (
    AsyncsnapError,
    PermissionDenied,
    SchemaMismatch,
    TargetLocked,
    TargetNotEmpty,
)

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli
from .helpers import manifest_of
from .test_dump import run_dump
from .test_interrupt import _asyncsnap_backends
from .test_restore import copy_schema, digests

TRIES = 20
SOURCE = """
CREATE TABLE keyless (id int, v text);              -- no key: a second load duplicates
CREATE TABLE keyed (id int PRIMARY KEY, v text);    -- a key: post-data fails on duplicates
INSERT INTO keyless SELECT g, 'v' || g FROM generate_series(1, 40) g;
INSERT INTO keyed SELECT g, 'v' || g FROM generate_series(1, 40) g;
"""


@pytest.fixture
def target(postgres: Postgres) -> Iterator[Database]:
    with fresh_database(postgres, "asyncsnap_race") as database:
        yield database


async def _outcome(work: Callable[[], Awaitable[object]]) -> BaseException | None:
    """None when ``work`` succeeded, else what it raised (only our own errors expected)."""
    try:
        await work()
    except AsyncsnapError as exc:
        return exc
    return None


async def _two_at_once(backup: Path, dsn: str, **options: object) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = []

    async def one() -> None:
        outcomes.append(await _outcome(lambda: restore(backup, dsn, **options)))  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    return outcomes


def test_two_clean_restores_at_once_one_is_refused_and_the_rows_are_exact(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """Two `restore --clean` of one backup into one database at once: both used to exit
    0 with every row of a keyless table twice, or fail in post-data (duplicate keys), or
    crash with a KeyError. Now the second one is refused (TargetLocked, exit 6) while the
    first holds the database, and the database ends exactly as the backup."""
    db.execute(SOURCE)
    backup = Path(run_dump(db, tmp_path).path)
    copy_schema(db, target)
    expected = digests(db.dsn)
    locked = 0
    for _ in range(TRIES):
        target.execute("INSERT INTO keyless VALUES (999, 'changed since')")
        outcomes = anyio.run(
            lambda: _two_at_once(backup, target.dsn, clean=True), backend="asyncio"
        )
        assert all(o is None or isinstance(o, TargetLocked) for o in outcomes), outcomes
        assert any(o is None for o in outcomes), outcomes
        locked += sum(isinstance(o, TargetLocked) for o in outcomes)
        assert digests(target.dsn) == expected
    assert locked > 0  # the two did run at once


def test_two_data_only_restores_at_once_load_the_rows_once(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """Two `--data-only` restores into empty tables at once both used to pass the
    emptiness check and load (every row twice); one is now refused."""
    db.execute(SOURCE)
    backup = Path(run_dump(db, tmp_path).path)
    copy_schema(db, target)
    expected = digests(db.dsn)
    for _ in range(TRIES):
        target.execute("TRUNCATE keyless, keyed")
        outcomes = anyio.run(
            lambda: _two_at_once(backup, target.dsn, data_only=True), backend="asyncio"
        )
        allowed = (TargetLocked, TargetNotEmpty)
        assert all(o is None or isinstance(o, allowed) for o in outcomes), outcomes
        assert sum(o is None for o in outcomes) == 1, outcomes
        assert digests(target.dsn) == expected


def test_second_restore_is_refused_with_exit_6_naming_the_holder(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """While a restore holds the database, another one fails at once: exit 6, one error
    line naming the session that holds it, nothing changed."""
    db.execute(SOURCE)
    backup = Path(run_dump(db, tmp_path).path)
    copy_schema(db, target)

    async def hold_and_try() -> tuple[int, str, str]:
        holder = await asyncpg.connect(target.dsn)
        try:
            # What a running restore's coordinating connection holds.
            await holder.execute("SELECT pg_advisory_lock(1634954864, 0)")
            pid = holder.get_server_pid()
            run = await anyio.to_thread.run_sync(
                lambda: run_cli("restore", str(backup), target.dsn, "--data-only")
            )
            return run.returncode, run.stderr, str(pid)
        finally:
            await holder.close()

    code, stderr, pid = anyio.run(hold_and_try, backend="asyncio")
    lines = stderr.strip().splitlines()
    assert code == 6, stderr
    assert lines[-2].startswith("error: another asyncsnap restore is running into database")
    assert f"pid {pid}" in lines[-2] and lines[-1].startswith("hint: ")
    assert target.fetchval("SELECT count(*) FROM keyless") == 0


async def _wait_for_lock_waiter(conn: asyncpg.Connection, table: str, pids: set[int]) -> int:
    """The pid of a session, not in ``pids``, waiting for a lock on ``table``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE relation = $1::regclass AND NOT granted "
            "AND pid <> ALL ($2::int[]) LIMIT 1",
            table,
            list(pids),
        )
        if pid is not None:
            return int(pid)
        await anyio.sleep(0.005)
    raise AssertionError(f"nobody waited for a lock on {table}")


SPLIT = """
CREATE TABLE split (id int, pad text);
INSERT INTO split SELECT g, repeat('x', 200) FROM generate_series(1, 400) g;
ANALYZE split;
"""


@pytest.mark.parametrize("table", ["keyless", "split"])
def test_restore_racing_an_application_insert_is_exact_or_refused(
    db: Database, target: Database, tmp_path: Path, table: str
) -> None:
    """An application inserts into a table while a data-only restore loads it. The
    restore checked emptiness outside its load's transaction, so a row inserted between
    check and load was loaded over: the restore said the table was empty and succeeded.
    Now the check happens under a lock that keeps writers out until the load commits: the
    restore either refuses (the row came first) or the row comes after its rows.

    A third session holds SHARE on the table, so that the restore (past its plan) and the
    application both wait for it; they are queued in both orders, alternately. ``split``
    is a table dumped in several files, loaded over two connections: its first file is
    loaded in the transaction that checked, the others after it."""
    db.execute(SOURCE + SPLIT)
    backup = Path(run_dump(db, tmp_path, jobs=2, split_larger_than=20_000).path)
    files = next(t["files"] for t in manifest_of(backup)["tables"] if t["name"] == "split")
    assert len(files) > 2
    copy_schema(db, target)
    rows = {"keyless": 40, "split": 400}[table]

    async def one_try(app_first: bool) -> tuple[BaseException | None, bool]:
        blocker = await asyncpg.connect(target.dsn)
        app = await asyncpg.connect(target.dsn)
        watcher = await asyncpg.connect(target.dsn)
        try:
            await blocker.execute(f"BEGIN; LOCK TABLE {table} IN SHARE MODE")
            seen = {blocker.get_server_pid(), watcher.get_server_pid()}  # waiters found
            result: list[BaseException | None] = []

            async def restoring() -> None:
                result.append(
                    await _outcome(
                        lambda: restore(backup, target.dsn, data_only=True, tables=[table], jobs=2)
                    )
                )

            async def inserting() -> None:
                await app.execute(f"INSERT INTO {table} VALUES (-1, 'application')")

            async with anyio.create_task_group() as tg:
                for step in (inserting, restoring) if app_first else (restoring, inserting):
                    tg.start_soon(step)
                    seen.add(await _wait_for_lock_waiter(watcher, table, seen))
                await blocker.execute("COMMIT")
            return result[0], app_first
        finally:
            for conn in (blocker, app, watcher):
                await conn.close()

    for i in range(TRIES):
        target.execute(f"TRUNCATE {table}")
        outcome, _ = anyio.run(one_try, i % 2 == 0, backend="asyncio")
        found = target.fetch(f"SELECT id, xmin::text::bigint AS x FROM {table}")
        app_rows = [r for r in found if r["id"] == -1]
        assert len(app_rows) == 1
        restored = [r["x"] for r in found if r["id"] != -1]
        if outcome is None:
            # The restore's rows exactly, and the application's row written after the
            # transaction that checked (for a split table, its first file's) committed.
            assert len(restored) == rows
            assert app_rows[0]["x"] > min(restored), "the row came before the restore's"
        else:
            assert isinstance(outcome, TargetNotEmpty), outcome
            assert restored == []


def test_a_role_that_cannot_lock_the_table_is_refused_before_anything_loads(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """Holding a table while it is checked and loaded takes LOCK ... IN EXCLUSIVE MODE,
    which needs UPDATE, DELETE or TRUNCATE: a role with only INSERT is refused by the plan,
    naming the table and what to grant; --append loads without the check."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    db.execute(f"TRUNCATE t; GRANT SELECT, INSERT ON t TO {role[0]}")
    dsn = db.postgres.dsn(db.name, user=role[0], password=role[1])
    with pytest.raises(PermissionDenied, match=r"may not lock public\.t .*UPDATE, DELETE or TRUNC"):
        anyio.run(lambda: restore(backup, dsn, data_only=True), backend="asyncio")
    assert db.fetchval("SELECT count(*) FROM t") == 0
    anyio.run(lambda: restore(backup, dsn, data_only=True, mode="append"), backend="asyncio")
    assert db.fetchval("SELECT count(*) FROM t") == 1


def test_a_table_replaced_between_plan_and_load_is_refused(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """Another session renames the table the plan read and creates a new one of that name
    while the restore waits for its lock: the load's check, under the lock, finds another
    table (its oid) and refuses it, loading nothing, naming it."""
    db.execute(SOURCE)
    backup = Path(run_dump(db, tmp_path).path)
    copy_schema(db, target)

    async def go() -> BaseException | None:
        blocker = await asyncpg.connect(target.dsn)
        watcher = await asyncpg.connect(target.dsn)
        try:
            await blocker.execute("BEGIN; LOCK TABLE keyless IN SHARE MODE")
            seen = {blocker.get_server_pid(), watcher.get_server_pid()}
            result: list[BaseException | None] = []

            async def restoring() -> None:
                result.append(
                    await _outcome(
                        lambda: restore(backup, target.dsn, data_only=True, tables=["keyless"])
                    )
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(restoring)
                await _wait_for_lock_waiter(watcher, "keyless", seen)  # planned, now waits
                await blocker.execute(
                    "ALTER TABLE keyless RENAME TO keyless_old; "
                    "CREATE TABLE keyless (id int, v text); COMMIT"
                )
            return result[0]
        finally:
            for conn in (blocker, watcher):
                await conn.close()

    outcome = anyio.run(go, backend="asyncio")
    assert isinstance(outcome, SchemaMismatch), outcome
    assert "public.keyless changed while the restore was planning" in str(outcome)
    assert target.fetchval("SELECT count(*) FROM keyless") == 0
    assert target.fetchval("SELECT count(*) FROM keyless_old") == 0


HELD_GATE = """
CREATE TABLE public.parent (id int PRIMARY KEY);
INSERT INTO public.parent SELECT generate_series(1, 200000);
ALTER TABLE public.big ADD CONSTRAINT checked_at_commit FOREIGN KEY (id)
    REFERENCES public.parent (id) DEFERRABLE INITIALLY DEFERRED;
CREATE FUNCTION public.held(i int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF i = 2 THEN
        PERFORM pg_advisory_xact_lock(4242);  -- until the test lets go
        RAISE EXCEPTION 'the gate closed';
    END IF;
    RETURN true;
END $$;
ALTER TABLE public.gate ADD CONSTRAINT held CHECK (public.held(id));
"""


def test_a_unit_committing_while_another_fails_is_counted_in_what_was_committed(
    db: Database, tmp_path: Path
) -> None:
    """-j 2: one unit's COMMIT is under way (a deferred foreign key checked at commit, a
    second of it) when the other unit fails. A COMMIT once sent completes on the server
    whoever waits, so the restore waits for it: what the failure says was committed is
    what the target holds, when the restore returns and after. (Before, the restore
    returned at once saying nothing of public.big, which then held every row.)"""
    backup = gated_backup(db, tmp_path)
    with fresh_database(db.postgres, "race") as target:
        code, err, rows_at_return = restore_with_a_commit_under_way(
            target, backup, "--data-only", "-j", "2"
        )
        assert code != 0 and "the gate closed" in err, err
        assert anyio.run(_asyncsnap_backends, target.dsn, backend="asyncio") == 0
        assert target.fetchval("SELECT count(*) FROM public.big") == rows_at_return
        # The COMMIT was under way before the gate opened: it is waited for, and said.
        assert rows_at_return == 200000 and "committed: public.big" in err, err


def gated_backup(db: Database, tmp_path: Path) -> str:
    """A backup of public.big (200,000 rows) and public.gate (2 rows)."""
    db.execute(
        "CREATE TABLE big (id int, pad text);"
        "INSERT INTO big SELECT g, repeat('x', 40) FROM generate_series(1, 200000) g;"
        "CREATE TABLE gate (id int); INSERT INTO gate VALUES (1), (2);"
    )
    return str(run_dump(db, tmp_path, name="b").path)


def restore_with_a_commit_under_way(
    target: Database, backup: str, *args: str
) -> tuple[int, str, int]:
    """Restore ``backup`` (``gated_backup``) into ``target`` with ``args``: public.big's
    COMMIT checks a deferred foreign key (a second), public.gate's second row waits on an
    advisory lock this holds, released once the big table's COMMIT is seen under way,
    and then fails. The restore's exit code, its stderr, and public.big's rows at its
    return."""
    schema = run_cli("restore", backup, target.dsn, "--schema-only")
    assert schema.returncode == 0, schema.stderr
    target.execute(HELD_GATE)

    async def race() -> tuple[int, str, int]:
        holder = await asyncpg.connect(target.dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock(4242)")
            restoring = await anyio.open_process(
                [sys.executable, "-m", "asyncsnap", "restore", backup, target.dsn, *args],
                env=clean_env(),
            )
            async with restoring:
                with anyio.fail_after(60):  # the gate's unit waits on the lock
                    while True:
                        if await holder.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE "
                            "application_name = 'asyncsnap' AND state = 'active' "
                            "AND query ILIKE 'COMMIT%'"
                        ):
                            break
                        await anyio.sleep(0.01)
                await holder.execute("SELECT pg_advisory_unlock(4242)")
                assert restoring.stderr is not None
                err = b"".join([part async for part in restoring.stderr]).decode()
                code = await restoring.wait()
            rows_at_return = await holder.fetchval("SELECT count(*) FROM public.big")
            return code, err, rows_at_return
        finally:
            await holder.close()

    return anyio.run(race, backend="asyncio")
