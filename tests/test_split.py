"""Large tables split into ctid page ranges, and chunks retried inside the snapshot."""

from __future__ import annotations

import importlib
import itertools
import re
from pathlib import Path

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap.errors import SnapshotLost, most_telling
from asyncsnap.events import ChunkStarted, Event, Notice

from .conftest import Database
from .helpers import manifest_of, read_rows, table_entry
from .test_dump import run_dump

CHURNED = """
CREATE TABLE big (id int PRIMARY KEY, v text, pad text);
INSERT INTO big SELECT g, 'v' || g, repeat(md5(g::text), 6) FROM generate_series(1, 60000) g;
ANALYZE big;
-- churn after the statistics: dead tuples, moved (non-HOT) updates, rows on new pages
DELETE FROM big WHERE id % 7 = 0;
UPDATE big SET v = v || '-moved', pad = pad || pad WHERE id % 5 = 0;
INSERT INTO big SELECT g, 'late' || g, repeat('z', 300) FROM generate_series(60001, 70000) g;
"""


def test_split_table_has_every_row_exactly_once(db: Database, tmp_path: Path) -> None:
    db.execute(CHURNED)
    result = run_dump(db, tmp_path, jobs=3, split_larger_than=1_000_000)
    entry = table_entry(result.path, "public", "big")
    files = entry["files"]
    assert len(files) >= 3
    pages = [f["pages"] for f in files]
    assert pages[0][0] == 0 and pages[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pages))
    ids = [r["id"] for r in read_rows(result.path)[("public", "big")]]
    expected = [r[0] for r in db.fetch("SELECT id FROM big")]
    assert len(ids) == len(set(ids)) == len(expected) == entry["rows"]
    assert sorted(ids) == sorted(expected)


@pytest.mark.versions
def test_split_and_unsplit_dumps_hold_the_same_rows(db: Database, tmp_path: Path) -> None:
    db.execute(CHURNED)
    split = read_rows(run_dump(db, tmp_path / "a", split_larger_than=500_000).path)
    whole = read_rows(run_dump(db, tmp_path / "b", split_larger_than=None).path)
    key = ("public", "big")
    assert sorted(split[key], key=lambda r: r["id"]) == sorted(whole[key], key=lambda r: r["id"])
    # Unsplit: one file in physical order; split: the ranges in order give the same order.
    assert [r["id"] for r in split[key]] == [r["id"] for r in whole[key]]


def test_split_table_restores(db: Database, tmp_path: Path) -> None:
    from .test_restore import digests

    db.execute(CHURNED)
    backup = Path(run_dump(db, tmp_path, jobs=2, split_larger_than=1_000_000).path)
    db.execute("ALTER TABLE big RENAME TO big_before; CREATE TABLE big (LIKE big_before)")
    run = asyncsnap.restore  # the library call, as a user would
    anyio.run(lambda: run(backup, db.dsn, jobs=2), backend="asyncio")
    got, want = digests(db.dsn)["public.big"], digests(db.dsn)["public.big_before"]
    assert got == want


BIG = """
CREATE TABLE big (id int, pad text);
INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 250000) g;
CREATE TABLE small (id int);
INSERT INTO small SELECT generate_series(1, 100);
ANALYZE;
"""


async def _terminate(dsn: str, where: str) -> int:
    """Terminate the asyncsnap backends matching ``where`` as soon as a COPY of the big
    table is running (polled, so the fault lands mid-COPY however fast the machine is)."""
    conn = await asyncpg.connect(dsn)
    try:
        with anyio.fail_after(30):
            while not await conn.fetchval(  # noqa: ASYNC110 - server state: nothing to wait on
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'asyncsnap' "
                "AND state = 'active' AND query LIKE 'COPY%big%'"
            ):
                await anyio.sleep(0.002)
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE application_name = 'asyncsnap' AND {where}"
            )
        )
    finally:
        await conn.close()


async def _dump_with_fault(
    db: Database, out: Path, where: str, events: list[Event]
) -> asyncsnap.DumpResult:
    """Dump; once the big table's COPY runs, terminate the backends ``where``."""
    started = anyio.Event()
    killed: list[int] = []

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, ChunkStarted) and event.label.startswith("public.big"):
            started.set()

    async def fault() -> None:
        await started.wait()
        if not killed:
            killed.append(await _terminate(db.dsn, where))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fault)
            try:
                result = await asyncsnap.dump(
                    db.dsn,
                    output=out,
                    name="b",
                    jobs=2,
                    compression="none",
                    split_larger_than=None,  # one long COPY to interrupt
                    on_event=on_event,
                )
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    assert killed == [1], killed  # exactly one backend was terminated mid-dump
    return result


def test_worker_backend_terminated_mid_chunk_is_retried(db: Database, tmp_path: Path) -> None:
    """pg_terminate_backend on the worker copying the big table: its partial file is
    discarded, the chunk is copied again in the same snapshot, and the result is exactly
    what a run without the fault gives."""
    db.execute(BIG)
    events: list[Event] = []
    faulty = anyio.run(
        _dump_with_fault,
        db,
        tmp_path / "faulty",
        "state = 'active' AND query LIKE 'COPY%big%'",
        events,
        backend="asyncio",
    )
    retries = [e.message for e in events if isinstance(e, Notice) and "retrying" in e.message]
    assert len(retries) == 1 and "public.big" in retries[0]
    clean = run_dump(
        db, tmp_path / "clean", name="b", jobs=2, compression="none", split_larger_than=None
    )

    def files(path: Path) -> dict[str, tuple[int, str]]:
        return {
            f["path"]: (f["rows"], f["sha256"])
            for t in manifest_of(path)["tables"]
            for f in t["files"]
        }

    assert files(Path(faulty.path)) == files(Path(clean.path))
    assert faulty.rows == clean.rows == 250_100
    assert not list((Path(faulty.path) / "data").glob(".*"))  # no temporary file left behind


def test_coordinator_terminated_fails_cleanly_with_snapshot_lost(
    db: Database, tmp_path: Path
) -> None:
    db.execute(BIG)
    with pytest.raises(SnapshotLost, match="snapshot was lost"):
        anyio.run(
            _dump_with_fault, db, tmp_path, "state = 'idle in transaction'", [], backend="asyncio"
        )
    assert list(tmp_path.iterdir()) == []  # no manifest, no directory at all


def test_split_ranges_account_for_toast(db: Database, tmp_path: Path) -> None:
    """Rows with large TOASTed values at the end of the table: ranges are cut by bytes,
    so the last file is not many times heavier than the others."""
    db.execute("""
        CREATE TABLE docs (id int, body text);
        ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;  -- TOASTed, uncompressed
        INSERT INTO docs SELECT g, 'small' FROM generate_series(1, 200000) g;
        INSERT INTO docs SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 2000) g;
        ANALYZE docs;
    """)
    result = run_dump(db, tmp_path, jobs=4, split_larger_than=1_000_000, compression="none")
    files = table_entry(result.path, "public", "docs")["files"]
    sizes = [f["bytes"] for f in files]
    assert len(files) >= 4 and sum(f["rows"] for f in files) == 202_000
    numbers = [re.search(r"\.(\d{4})\.ndjson$", f["path"]).group(1) for f in files]  # type: ignore[union-attr]
    assert numbers == [f"{i:04d}" for i in range(1, len(files) + 1)]
    # By pages alone the last range would hold ~all 18 MB and the others ~1-2 MB each.
    assert max(sizes) < 4 * (sum(sizes) / len(sizes)), sizes


def test_server_without_tid_range_scan_gets_one_stream_and_one_notice(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL < 14 has no TID Range Scan: a ctid range would be a full scan per range.
    With the version bar raised above this server's, two tables that would be split are
    read whole, one file each, and the user is told once (not per table)."""
    dump_module = importlib.import_module("asyncsnap.dump")  # the package exports the function

    db.execute(CHURNED)
    db.execute("CREATE TABLE big2 AS SELECT * FROM big")
    monkeypatch.setattr(dump_module, "TID_RANGE_SCAN_VERSION", 10**7)
    notices: list[str] = []
    result = run_dump(
        db,
        tmp_path,
        jobs=3,
        split_larger_than=500_000,
        on_event=lambda e: notices.append(e.message) if isinstance(e, Notice) else None,
    )
    for name in ("big", "big2"):
        [file] = table_entry(result.path, "public", name)["files"]
        assert "pages" not in file or file["pages"] is None
    assert sum("no TID Range Scan" in n for n in notices) == 1, notices
    assert len(read_rows(result.path)[("public", "big")]) == db.fetchval("SELECT count(*) FROM big")
