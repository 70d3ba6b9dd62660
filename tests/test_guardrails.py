"""Guardrails for unattended runs: --max-duration, --statement-timeout, --keep-partial,
--skip-unreadable, and no password in the process title."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from throwaway.postgres import PASSWORD

from .conftest import Database, clean_env, run_cli, table_locked
from .helpers import manifest_of
from .test_errors import assert_failure, assert_nothing_written
from .test_interrupt import BIG, wait_until_writing_big


def _dump_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "dump", *args],
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_max_duration_cancels_the_dump_and_keeps_nothing(db: Database, tmp_path: Path) -> None:
    """A dump stuck behind a migration's lock (lock timeout off) is cancelled at
    --max-duration: exit 1, a message naming the limit, nothing written, no session left."""
    db.execute("CREATE TABLE busy (id int); CREATE TABLE calm (id int)")
    with table_locked(db.dsn, "busy"):
        started = time.monotonic()
        run = run_cli(
            "dump", db.dsn, "-o", str(tmp_path), "--lock-timeout", "0", "--max-duration", "1.5"
        )
        elapsed = time.monotonic() - started
    assert_failure(run, 1, "did not finish within --max-duration 1.5s")
    assert 1.5 <= elapsed < 30
    assert_nothing_written(tmp_path)
    leftover = db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'asyncsnap'"
    )
    assert leftover == 0


def test_max_duration_not_reached_changes_nothing(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--max-duration", "600")
    assert run.returncode == 0, run.stderr
    assert manifest_of(tmp_path / "b")["totals"]["rows"] == 100


def test_statement_timeout_cancels_a_long_copy(db: Database, tmp_path: Path) -> None:
    """A COPY running past --statement-timeout is cancelled by the server and the dump
    fails naming the table and the option; without the option the same dump succeeds."""
    db.execute(
        "CREATE TABLE slow AS SELECT g AS id, repeat(md5(g::text), 4) AS pad "
        "FROM generate_series(1, 600000) g"
    )
    run = run_cli(
        "dump", db.dsn, "-o", str(tmp_path), "--statement-timeout", "0.2", "--split-larger-than",
        "off",
    )  # fmt: skip
    assert_failure(run, 1, "cancelled copying public.slow: it ran longer than --statement-timeout")
    assert_nothing_written(tmp_path)


def test_keep_partial_keeps_finished_files_but_never_a_manifest(
    db: Database, tmp_path: Path
) -> None:
    """SIGTERM with --keep-partial: exit 143, NAME.partial stays with the files finished so
    far (no temp files, no manifest, no SHA256SUMS), and readers still refuse it."""
    db.execute(BIG)
    proc = _dump_process(
        db.dsn, "-o", str(tmp_path), "--name", "b", "--compress", "none", "--keep-partial",
        "-j", "1", "--split-larger-than", "off",
    )  # fmt: skip
    try:
        wait_until_writing_big(proc, tmp_path / "b.partial")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "the incomplete backup was kept (--keep-partial)" in err
    partial = tmp_path / "b.partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.partial"]
    assert not (partial / "manifest.json").exists() and not (partial / "SHA256SUMS").exists()
    kept = sorted(p.name for p in (partial / "data").iterdir())
    assert not [name for name in kept if name.endswith(".tmp")], kept
    run = run_cli("verify", str(partial))
    assert run.returncode == 5 and "incomplete backup" in run.stderr


def test_keep_partial_after_a_failure(db: Database, tmp_path: Path) -> None:
    """A failed dump (statement timeout on the big table, after the small one finished)
    keeps its .partial with --keep-partial; without it nothing is left."""
    db.execute(BIG.replace("300000", "600000"))
    run = run_cli(
        "dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-j", "1", "--keep-partial",
        "--statement-timeout", "0.2", "--split-larger-than", "off",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "kept the incomplete backup at" in run.stderr
    partial = tmp_path / "b.partial"
    assert not (partial / "manifest.json").exists()
    assert not list((partial / "data").glob("*.tmp"))


def test_skip_unreadable_exports_the_rest_and_records_the_skip(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    db.execute(
        f"""
        CREATE TABLE open (id serial PRIMARY KEY);
        INSERT INTO open DEFAULT VALUES;
        CREATE TABLE secret (id int);
        CREATE TABLE counted (id serial);
        GRANT SELECT ON open, counted TO {name};
        GRANT SELECT ON SEQUENCE open_id_seq TO {name};
        """
    )
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    refused = run_cli("dump", dsn, "-o", str(tmp_path))
    assert_failure(refused, 1, "permission denied for table public.secret")
    assert "--skip-unreadable" in refused.stderr

    summary = tmp_path / "summary.json"
    run = run_cli(
        "dump", dsn, "-o", str(tmp_path / "out"), "--name", "b", "--skip-unreadable",
        "--summary-json", str(summary),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "not dumped: table public.secret: permission denied" in run.stderr
    assert "not dumped: sequence public.counted_id_seq: permission denied" in run.stderr
    m = manifest_of(tmp_path / "out" / "b")
    assert [(t["name"], t["rows"]) for t in m["tables"]] == [("counted", 0), ("open", 1)]
    assert m["skipped"] == [
        {
            "kind": "table",
            "schema": "public",
            "name": "secret",
            "reason": "permission denied",
            "refresh": False,
        },
        {
            "kind": "sequence",
            "schema": "public",
            "name": "counted_id_seq",
            "reason": "permission denied",
            "refresh": False,
        },
    ]
    assert [s["name"] for s in m["sequences"]] == ["open_id_seq"]
    assert [k["name"] for k in orjson.loads(summary.read_bytes())["skipped"]] == [
        "secret",
        "counted_id_seq",
    ]
    inspected = run_cli("inspect", str(tmp_path / "out" / "b"), "--json")
    assert [k["name"] for k in orjson.loads(inspected.stdout)["skipped"]] == [
        "secret",
        "counted_id_seq",
    ]
    assert run_cli("verify", str(tmp_path / "out" / "b")).returncode == 0


def test_skip_unreadable_with_nothing_readable_fails(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    db.execute("CREATE TABLE secret (id int)")
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--skip-unreadable")
    assert_failure(run, 1, "permission denied for every selected table (public.secret)")
    assert_nothing_written(tmp_path)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
@pytest.mark.parametrize("where", ["dsn", "PGPASSWORD"])
def test_password_not_in_process_title(db: Database, tmp_path: Path, where: str) -> None:
    """While a dump runs, neither ps nor /proc/PID/cmdline nor the server's activity view
    shows the password, whether it came in the DSN argument or in PGPASSWORD."""
    db.execute("CREATE TABLE busy (id int)")
    env: dict[str, Any] = clean_env()
    dsn = db.dsn
    if where == "PGPASSWORD":
        env["PGPASSWORD"] = PASSWORD
        dsn = dsn.replace(f":{PASSWORD}@", "@")
    assert (PASSWORD in dsn) == (where == "dsn")
    with table_locked(db.dsn, "busy"):
        proc = _dump_process(dsn, "-o", str(tmp_path), "--lock-timeout", "0", env=env)
        deadline = time.monotonic() + 30
        # Once its coordinator waits for the lock, the dump is well past start-up.
        while not db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'asyncsnap' AND wait_event_type = 'Lock'"
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the dump never reached the lock"
            time.sleep(0.02)
        title = _cmdline(proc.pid)
        ps = subprocess.run(
            ["ps", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True
        ).stdout
        activity = db.fetch(
            "SELECT application_name, query FROM pg_stat_activity "
            "WHERE application_name = 'asyncsnap'"
        )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert " dump " in title and "-o" in title, title
    for shown in (title, ps, *(str(dict(r)) for r in activity)):
        assert PASSWORD not in shown, shown
    if where == "dsn":
        assert title.startswith("asyncsnap dump postgresql://postgres:***@"), title
