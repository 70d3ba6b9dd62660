"""Interrupted dumps leave nothing that looks complete, and release the server."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap.events import ChunkProgress, Event

from .conftest import Database, clean_env, run_cli, start_cli

BIG = """
CREATE TABLE big (id int, pad text);
INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 300000) g;
CREATE TABLE small (id int);
INSERT INTO small SELECT generate_series(1, 10);
ANALYZE;
"""


async def _asyncsnap_backends(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(50):
            count: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'asyncsnap'"
            )
            if count == 0:
                return 0
            await anyio.sleep(0.1)
        return count
    finally:
        await conn.close()


def test_interrupted_dump_cancel_mid_copy_leaves_no_manifest(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the library call during a COPY removes the .partial directory, leaves
    no manifest and no final-named directory, and closes every server session."""
    db.execute(BIG)
    # Progress after every batch: on an idle machine the whole COPY took less than the
    # usual interval, and the first progress event was its last (4 runs in 5 failed so).
    monkeypatch.setattr(importlib.import_module("asyncsnap.jobs"), "PROGRESS_INTERVAL", 0.0)
    seen: list[ChunkProgress] = []

    async def go() -> None:
        with anyio.CancelScope() as scope:

            def on_event(event: Event) -> None:
                if not isinstance(event, ChunkProgress) or event.label != "public.big":
                    return
                if 0 < event.rows < 300_000:  # mid-COPY: some rows written, not all
                    seen.append(event)
                    scope.cancel()

            await asyncsnap.dump(
                db.dsn,
                output=tmp_path,
                name="cancelled",
                on_event=on_event,
                split_larger_than=None,  # one COPY long enough to report progress
            )
            pytest.fail("the dump finished before it could be cancelled")
        assert await _asyncsnap_backends(db.dsn) == 0

    anyio.run(go, backend="asyncio")
    assert seen and 0 < seen[0].rows < 300_000  # it really was mid-COPY
    assert list(tmp_path.iterdir()) == []
    assert not list(tmp_path.rglob("manifest.json"))


def wait_until_writing_big(proc: subprocess.Popen[Any], partial: Path) -> None:
    """Return once the dump in ``proc`` has written 1 MB of the big table into ``partial``."""
    deadline = time.monotonic() + 60
    while not any(
        p.stat().st_size > 1_000_000 for p in (partial / "data").glob(".*big*.tmp") if p.exists()
    ):
        assert proc.poll() is None, "the dump ended before it was interrupted"
        assert time.monotonic() < deadline, "the dump never started writing"
        time.sleep(0.01)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_dump_exits_with_signal_code_and_keeps_nothing(
    db: Database, tmp_path: Path, signum: int, code: int
) -> None:
    db.execute(BIG)
    proc = start_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--compress", "none")
    try:
        wait_until_writing_big(proc, tmp_path / "b.partial")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert anyio.run(_asyncsnap_backends, db.dsn, backend="asyncio") == 0


def test_sigkill_leaves_only_a_partial_that_verify_and_restore_refuse(
    db: Database, tmp_path: Path
) -> None:
    """No cleanup can run after SIGKILL: what remains is a .partial directory without a
    manifest, and both readers refuse it with a clear message."""
    db.execute(BIG)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncsnap",
            "dump",
            db.dsn,
            "-o",
            str(out),
            "--name",
            "b",
            "--compress",
            "none",
            "--split-larger-than",
            "off",
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_writing_big(proc, out / "b.partial")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # The lock file stays too, unlocked: the kernel dropped the flock with the process.
    assert sorted(p.name for p in out.iterdir()) == [".asyncsnap.lock", "b.partial"]
    assert not (out / "b.partial" / "manifest.json").exists()
    for command in (
        ["verify", str(out / "b.partial")],
        ["restore", str(out / "b.partial"), db.dsn],
    ):
        run = run_cli(*command)
        assert run.returncode == 5, run.stderr
        assert "incomplete backup" in run.stderr and "Traceback" not in run.stderr
    again = run_cli("dump", db.dsn, "-o", str(out), "--name", "c", "-t", "small")
    assert again.returncode == 0, again.stderr  # the dead run's lock blocks nothing


def test_a_signal_just_after_the_dump_completed_changes_nothing(
    db: Database, tmp_path: Path
) -> None:
    """SIGTERM 0 to 60 ms after the dump says it is complete: each time the backup stands,
    exit 0, its path on stdout. (The signal used to land between the work's end and the
    process's exit, where its default action killed the process: status -15, no error
    line, a complete backup.)"""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    for attempt, delay in enumerate((0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06)):
        name = f"b{attempt}"
        proc = start_cli("dump", db.dsn, "-o", str(tmp_path), "--name", name)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("dump complete") or " dump complete: " in line:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGTERM)
                    break
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, (delay, proc.returncode, err)
        assert out.strip() == str(tmp_path / name)
