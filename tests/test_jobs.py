"""A chunk as a self-contained job (``asyncsnap.jobs``): one picklable value and one
function, run in another process against the coordinator's snapshot, writes the file a
dump writes."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import anyio
import pytest

from asyncsnap.catalog import describe_tables, list_tables, read_server_info, read_types
from asyncsnap.connection import ConnectParams, resolve
from asyncsnap.errors import SnapshotLost
from asyncsnap.jobs import ChunkJob, FileTarget, run_chunk_alone
from asyncsnap.plan import plan_chunks
from asyncsnap.session import Session, SessionPolicy
from asyncsnap.snapshot import Coordinator
from asyncsnap.storage.files import StoredFile

from .conftest import Database, run_cli

ROWS = 20_000


def _run_elsewhere(job: bytes, params: ConnectParams) -> StoredFile | str:
    """In a spawned process: the job arrives pickled, as a cluster's task would."""
    try:
        return anyio.run(run_chunk_alone, pickle.loads(job), params, SessionPolicy())
    except SnapshotLost as exc:
        return f"SnapshotLost: {exc.message}"


async def _jobs_in_snapshot(
    dsn: str, out: Path, changes: str
) -> tuple[Coordinator, list[ChunkJob]]:
    """A coordinator holding a snapshot, then ``changes`` committed after it."""
    params = resolve(dsn)
    conn = await Session(params, SessionPolicy()).connect()
    coordinator = await Coordinator.begin(conn)
    server = await read_server_info(conn)
    tables = [t for t in await list_tables(conn, server) if t.name == "t"]
    await coordinator.lock(tables, lock_timeout=5)
    described = await describe_tables(conn, tables)
    types = await read_types(conn)
    other = await Session(params, SessionPolicy()).connect()
    await other.execute(changes)  # committed after the snapshot: the job must not see it
    await other.close()
    target = FileTarget(str(out))
    jobs = [
        ChunkJob(coordinator.snapshot_id, chunk, types, target, "zstd", fingerprints=False)
        for chunk in plan_chunks(described)
    ]
    return coordinator, jobs


def test_a_job_pickles_and_runs_in_another_process(db: Database, tmp_path: Path) -> None:
    """The job is pickled, sent to a spawned process (no state shared with this one),
    imports the snapshot there, and writes byte for byte the file a dump of the same
    moment wrote, though rows changed after the snapshot."""
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, at timestamptz);"
        f"INSERT INTO t SELECT g, repeat(chr(65 + g % 26), g % 40), g / 7.0, "
        f"'2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, {ROWS}) g"
    )
    run = run_cli("dump", db.dsn, "-o", str(tmp_path / "dumped"), "--name", "b", "-t", "t")
    assert run.returncode == 0, run.stderr
    (dumped,) = (tmp_path / "dumped" / "b" / "data").iterdir()
    out = tmp_path / "job"
    (out / "data").mkdir(parents=True)

    async def scenario() -> StoredFile | str:
        coordinator, jobs = await _jobs_in_snapshot(
            db.dsn, out, "UPDATE public.t SET v = 'changed'; DELETE FROM public.t WHERE id % 3 = 0"
        )
        (job,) = jobs
        assert pickle.loads(pickle.dumps(job)) == job
        try:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pending = pool.apply_async(_run_elsewhere, (pickle.dumps(job), resolve(db.dsn)))
                return await anyio.to_thread.run_sync(pending.get, 120)
        finally:
            await coordinator.conn.close()

    stored = anyio.run(scenario, backend="asyncio")
    assert isinstance(stored, StoredFile), stored
    written = out / stored.path
    assert stored.rows == ROWS
    assert written.name == dumped.name
    assert written.read_bytes() == dumped.read_bytes()


def test_a_job_whose_snapshot_is_gone_fails_as_snapshot_lost(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)")
    out = tmp_path / "job"
    (out / "data").mkdir(parents=True)

    async def scenario() -> StoredFile | str:
        coordinator, (job,) = await _jobs_in_snapshot(db.dsn, out, "SELECT 1")
        await coordinator.conn.close()  # the snapshot ends with its transaction
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pending = pool.apply_async(_run_elsewhere, (pickle.dumps(job), resolve(db.dsn)))
            return await anyio.to_thread.run_sync(pending.get, 120)

    result = anyio.run(scenario, backend="asyncio")
    assert isinstance(result, str) and result.startswith("SnapshotLost: "), result
    assert list((out / "data").iterdir()) == []  # its file was discarded


@pytest.mark.parametrize("recipients", [(), ("age1" + "q" * 58,)])
def test_a_file_target_is_a_plain_value(recipients: tuple[str, ...]) -> None:
    target = FileTarget("s3://bucket/prefix", "backup_1", recipients)
    assert pickle.loads(pickle.dumps(target)) == target
    assert "secret" not in repr(target).lower()
