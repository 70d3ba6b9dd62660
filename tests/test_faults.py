"""Faults: a worker's connection lost in each phase of a chunk is retried; a signal after the
backup is in place is a success; the lock file never follows a link; service files
connect where libpq would or are refused; asyncpg's own messages never reach the log raw.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import asyncpg
import orjson
import pytest

import asyncsnap
from asyncsnap.cli.envelope import run_cancellable
from asyncsnap.events import ChunkFinished, ChunkProgress, ChunkStarted, Event, Notice

from .conftest import Database, clean_env, run_cli
from .helpers import manifest_of
from .test_interrupt import BIG, wait_until_writing_big

# Which of the dump's backends to end, by phase: its state and last statement on the
# server. With -j 1 there is one worker besides the coordinator (idle in transaction, its
# last statement never a COPY).
_PHASES = {
    # ChunkStarted: the worker has its connection, before BEGIN.
    "before-begin": "state = 'idle'",
    # ChunkProgress from the COPY sink: the server is sending rows.
    "mid-copy": "state = 'active' AND query LIKE 'COPY%'",
    # The last ChunkProgress, after the COPY ended, before the chunk's file is sealed.
    "at-commit": "state = 'idle in transaction' AND query LIKE 'COPY%'",
    # ChunkFinished of the first table: the worker keeps its connection and its
    # transaction in the snapshot (snapshot.SnapshotReader) for the next chunk.
    "between-chunks": "state = 'idle in transaction' AND query LIKE 'COPY%'",
}


def terminate_worker(dsn: str, condition: str) -> int:
    """End the dump's worker backend matching ``condition``, from another thread and event
    loop (the caller is an event callback: it blocks the dump's loop meanwhile)."""
    ended: list[int] = []

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            ended.extend(
                r[0]
                for r in await conn.fetch(
                    "SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity "
                    "WHERE application_name = 'asyncsnap' AND datname = current_database() "
                    f"AND {condition}"
                )
                if r[0]
            )
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(go()))
    thread.start()
    thread.join()
    return len(ended)


# Rows of the first table: enough JSON (~12 MB) that the server is still sending when the
# worker is ended mid-copy; with 20000 rows (~1 MB) the rest of the COPY could fit in the
# sockets' buffers, the server finished it meanwhile, and "mid-copy" found no active COPY
# to end (seen once in CI under load).
ROWS = 200_000


@pytest.mark.parametrize("phase", list(_PHASES))
def test_worker_connection_lost_in_each_phase_is_retried(
    db: Database, tmp_path: Path, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute(
        "CREATE TABLE a_first (id int, pad text);"
        f"INSERT INTO a_first SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
        "CREATE TABLE b_second (id int);"
        "INSERT INTO b_second SELECT generate_series(1, 1000);"
    )
    clean = anyio.run(lambda: asyncsnap.dump(db.dsn, output=tmp_path, name="clean", jobs=1))
    # Report progress on every block the COPY sink receives, so "mid-copy" has a moment.
    monkeypatch.setattr(importlib.import_module("asyncsnap.jobs"), "PROGRESS_INTERVAL", 0.0)
    fired: list[int] = []
    notices: list[str] = []

    def on_event(event: Event) -> None:
        if isinstance(event, Notice):
            notices.append(event.message)
        if fired:
            return
        label = getattr(event, "label", "")
        hit = {
            "before-begin": isinstance(event, ChunkStarted) and label == "public.a_first",
            "mid-copy": isinstance(event, ChunkProgress)
            and label == "public.a_first"
            and 0 < event.rows < ROWS,
            "at-commit": isinstance(event, ChunkProgress)
            and label == "public.a_first"
            and event.rows == ROWS,
            "between-chunks": isinstance(event, ChunkFinished) and label == "public.a_first",
        }[phase]
        if hit:
            fired.append(terminate_worker(db.dsn, _PHASES[phase]))

    # Without the schema: pg_dump running beside the copy would shift the moments this
    # test stops the worker at (the copy's retries are what is tested here).
    faulty = anyio.run(
        lambda: asyncsnap.dump(
            db.dsn, output=tmp_path, name="faulty", jobs=1, on_event=on_event, with_schema=False
        )
    )
    assert fired == [1]  # exactly the worker was ended, in that phase
    retried = [n for n in notices if "retrying on a new connection in the same snapshot" in n]
    # In a chunk, the chunk is copied again. Once its COPY is over (at its end, between
    # chunks) the first chunk's file is whole; the next chunk, on the same connection,
    # finds it dead and is copied again on a new one.
    again = "public.b_second" if phase in ("at-commit", "between-chunks") else "public.a_first"
    assert len(retried) == 1 and again in retried[0] and "(2/3)" in retried[0], notices
    assert faulty.rows == clean.rows == ROWS + 1000
    # Same rows, same order, same bytes: the same files as a run without the fault.
    sums = [
        (t["name"], [f["sha256"] for f in t["files"]]) for t in manifest_of(clean.path)["tables"]
    ]
    assert sums == [
        (t["name"], [f["sha256"] for f in t["files"]]) for t in manifest_of(faulty.path)["tables"]
    ]
    assert asyncsnap.verify(faulty.path).ok


def test_signal_after_the_backup_is_in_place_is_a_success(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM arriving while --keep prunes, after the rename: the backup exists, so the run
    reports it (the CLI exits 0 with its path), not "interrupted; nothing was kept"."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    dump_module = importlib.import_module("asyncsnap.dump")
    real_prune = dump_module.prune

    def prune_with_a_signal(*args: object, **kwargs: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)  # the signal lands inside the shielded part
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(dump_module, "prune", prune_with_a_signal)
    result = run_cancellable(
        lambda: asyncsnap.dump(db.dsn, output=tmp_path, name="b", keep=3),
    )
    assert result.path == tmp_path / "b" and (tmp_path / "b" / "manifest.json").exists()
    assert asyncsnap.verify(result.path).ok


def test_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    db: Database, tmp_path: Path
) -> None:
    """Root's cron job dumping into a group-writable directory: a link planted as the lock
    file must not make the dump truncate or write the file it points to."""
    db.execute("CREATE TABLE t (id int)")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "precious"
    victim.write_text("do not touch\n")
    (out / ".asyncsnap.lock").symlink_to(victim)
    run = run_cli("dump", db.dsn, "-o", str(out))
    assert run.returncode == 4, run.stderr
    assert f"error: refusing the lock file {out / '.asyncsnap.lock'}" in run.stderr
    assert victim.read_text() == "do not touch\n"
    assert [p.name for p in out.iterdir()] == [".asyncsnap.lock"]


def _service_file(tmp_path: Path, db: Database, **extra: str) -> Path:
    lines = [
        "# a comment",
        "[other]",
        "dbname=postgres",
        "[shop]",
        f"host={db.postgres.host}",
        f"port={db.postgres.port}",
        f"dbname={db.name}",
        "user=postgres",
        "password=s3cret-test-pw",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    path = tmp_path / "pg_service.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("how", ["dsn-keyword", "uri-parameter", "PGSERVICE"])
def test_service_file_connects_to_the_entrys_database(
    db: Database, tmp_path: Path, how: str
) -> None:
    """Every key of the entry applies; PGDATABASE (lower precedence than the service, as in
    libpq) must not win, which is how a different database got dumped with exit 0."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    services = _service_file(tmp_path, db)
    env = clean_env(PGSERVICEFILE=str(services), PGDATABASE="postgres")
    args = {"dsn-keyword": ["service=shop"], "uri-parameter": ["postgresql://?service=shop"]}
    if how == "PGSERVICE":
        env["PGSERVICE"] = "shop"
    run = run_cli("dump", *args.get(how, []), "-o", str(tmp_path), "--name", "b", env=env)
    assert run.returncode == 0, run.stderr
    assert manifest_of(tmp_path / "b")["server"]["database"] == db.name
    assert "s3cret-test-pw" not in run.stderr + run.stdout


def test_service_problems_are_refused_clearly(db: Database, tmp_path: Path) -> None:
    services = _service_file(tmp_path, db, options="-c search_path=evil")
    env = clean_env(PGSERVICEFILE=str(services))
    missing = run_cli("dump", "service=nowhere", "-o", str(tmp_path), env=env)
    assert missing.returncode == 2, missing.stderr
    assert 'error: definition of service "nowhere" not found' in missing.stderr
    refused = run_cli("dump", "service=shop", "-o", str(tmp_path), env=env)
    assert refused.returncode == 2, refused.stderr
    assert "error: service 'shop' sets 'options', which asyncsnap cannot honour" in refused.stderr
    assert not any(p.name != "pg_service.conf" for p in tmp_path.iterdir())


def test_json_log_stays_json_lines_when_interrupted(db: Database, tmp_path: Path) -> None:
    """SIGINT mid-COPY: asyncpg's own complaints ("Resetting connection with an active
    transaction") must not reach stderr raw; every line stays a JSON object."""
    db.execute(BIG)
    for attempt in range(2):  # the raw message depends on timing; try two moments
        name = f"run{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(tmp_path), "--name",
             name, "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )  # fmt: skip
        wait_until_writing_big(proc, tmp_path / f"{name}.partial")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        lines = err.decode().splitlines()
        assert lines, "no log at all"
        for line in lines:
            value = orjson.loads(line)  # raises on anything that is not JSON
            assert isinstance(value, dict) and "event" in value, line
        assert orjson.loads(lines[-1])["exit_code"] == 130


def test_event_loop_and_library_messages_never_reach_stderr_raw(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """What asyncpg reports through the loop's exception handler ("Resetting connection
    with an active transaction", seen when a cancelled dump closed its pool) or through
    logging goes to --debug's log, else nowhere: never a raw line in a JSON log."""
    logged: list[str] = []

    async def work() -> str:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler(
            {"message": "Resetting connection with an active transaction <Connection>"}
        )
        logging.getLogger("asyncpg.pool").warning("Pool.close() is taking over 60 seconds")
        await anyio.lowlevel.checkpoint()
        return "done"

    assert run_cancellable(work) == "done"
    assert capfd.readouterr().err == ""
    assert run_cancellable(work, debug_log=logged.append) == "done"
    assert capfd.readouterr().err == ""
    assert logged == [
        "Resetting connection with an active transaction <Connection>",
        "asyncpg.pool: Pool.close() is taking over 60 seconds",
    ]


def _worker_transaction(dsn: str) -> tuple[str, int]:
    """The dump's worker (its last statement a COPY): when its transaction began, and
    how many relation locks it holds."""
    found: list[tuple[str, int]] = []

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT a.xact_start::text, (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid "
                "AND l.locktype = 'relation') FROM pg_stat_activity a "
                "WHERE a.application_name = 'asyncsnap' AND a.datname = current_database() "
                "AND a.query LIKE 'COPY%'"
            )
            assert row is not None
            found.append((row[0], row[1]))
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(go()))
    thread.start()
    thread.join()
    return found[0]


def test_a_worker_copies_many_small_tables_per_snapshot_transaction(
    db: Database, tmp_path: Path
) -> None:
    """A worker keeps its transaction in the snapshot from one chunk to the next (a
    BEGIN, a snapshot import and a COMMIT less per small table), and ends it every
    CHUNKS_PER_TRANSACTION chunks, so that the locks it holds stay few; the files are
    those of the same dump."""
    from asyncsnap.snapshot import CHUNKS_PER_TRANSACTION

    tables = 2 * CHUNKS_PER_TRANSACTION + 20
    db.execute(
        f"DO $$ BEGIN FOR i IN 1..{tables} LOOP EXECUTE format("
        "'CREATE TABLE %I AS SELECT g AS id FROM generate_series(1, 3) g', 't' || i); "
        "END LOOP; END $$"
    )
    seen: list[tuple[str, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, ChunkFinished):
            seen.append(_worker_transaction(db.dsn))

    result = anyio.run(
        lambda: asyncsnap.dump(
            db.dsn, output=tmp_path, name="b", jobs=1, on_event=on_event, with_schema=False
        )
    )
    assert result.rows == 3 * tables and len(seen) == tables
    assert len({started for started, _ in seen}) == 3
    assert max(locks for _, locks in seen) <= CHUNKS_PER_TRANSACTION + 1
    assert asyncsnap.verify(result.path).ok
