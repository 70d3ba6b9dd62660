"""What scripts and cron read: the path on stdout, --log-format json, --summary-json (the
contract in the README's "Output for scripts")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from throwaway.postgres import PASSWORD, free_port

from .conftest import Database, clean_env, run_cli
from .test_dump import SHOP
from .test_interrupt import BIG

# The keys of dump's --summary-json, on success and on failure alike (README).
DUMP_SUMMARY_KEYS = {
    "command",
    "ok",
    "exit_code",
    "started_at",
    "finished_at",
    "path",
    "partial",
    "snapshot",
    "tables",
    "files",
    "rows",
    "bytes",
    "stored_bytes",
    "seconds",
    "snapshot_held_seconds",
    "verified",
    "large_objects",
    "snapshots",
    "skipped",
    "slot",
    "error",
    "hint",
}
RESTORE_SUMMARY_KEYS = {
    "command",
    "ok",
    "exit_code",
    "started_at",
    "finished_at",
    "backup",
    "target",
    "dry_run",
    "tables",
    "rows",
    "sequences",
    "large_objects",
    "refreshed",
    "increments",
    "changes",
    "seconds",
    "error",
    "hint",
}


def json_lines(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all(isinstance(x, dict) and {"ts", "level", "event"} <= set(x) for x in lines)
    return lines


def test_json_log_one_object_per_line(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--log-format", "json")
    assert run.returncode == 0
    events = json_lines(run.stderr)
    assert events[0]["event"] == "dump_started"
    assert events[-1]["event"] == "dump_finished" and events[-1]["rows"] == 2070
    finished = [e for e in events if e["event"] == "table_finished"]
    assert {e["table"] for e in finished} == {
        "public.customers",
        "public.orders",
        "public.order_lines",
        "audit.log",
    }
    assert all({"rows", "bytes", "seconds"} <= set(e) for e in finished)
    assert PASSWORD not in run.stderr


def test_json_log_reports_errors_as_json_with_the_exit_code(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x"
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--log-format", "json")
    assert run.returncode == 3
    [error] = json_lines(run.stderr)
    assert error["level"] == "error" and error["exit_code"] == 3
    assert "could not connect" in str(error["message"]) and error["hint"]
    assert PASSWORD not in run.stderr


def test_summary_json_on_success_and_on_failure(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    summary = tmp_path / "summary.json"
    run = run_cli(
        "dump",
        db.dsn,
        "-o",
        str(tmp_path / "out"),
        "--name",
        "b",
        "--quiet",
        "--summary-json",
        str(summary),
    )
    assert run.returncode == 0
    ok = json.loads(summary.read_text())
    assert ok["ok"] is True and ok["exit_code"] == 0 and ok["rows"] == 2070
    assert ok["path"] == str(tmp_path / "out" / "b") and ok["error"] is None

    assert set(ok) == DUMP_SUMMARY_KEYS
    assert ok["started_at"] <= ok["finished_at"] and ok["finished_at"].endswith("Z")

    run = run_cli(
        "dump",
        db.dsn,
        "-o",
        str(tmp_path / "out"),
        "--name",
        "c",
        "-t",
        "nope",
        "--summary-json",
        str(summary),
    )
    assert run.returncode == 2
    failed = json.loads(summary.read_text())
    assert set(failed) == DUMP_SUMMARY_KEYS
    assert failed["ok"] is False and failed["exit_code"] == 2
    assert failed["error"] == "no table matches the filters: -t nope"
    assert failed["hint"] and failed["rows"] is None
    assert failed["path"] == str(tmp_path / "out" / "c")  # where it was to be: nothing there
    assert failed["partial"] is None and not (tmp_path / "out" / "c").exists()
    assert PASSWORD not in summary.read_text()

    target = tmp_path / "restore.json"
    db.execute("TRUNCATE customers, orders, order_lines, audit.log")
    run = run_cli(
        "restore", str(tmp_path / "out" / "b"), db.dsn, "--quiet", "--summary-json", str(target)
    )
    assert run.returncode == 0, run.stderr
    restored = json.loads(target.read_text())
    assert restored["ok"] is True and restored["rows"] == 2070 and restored["sequences"] == 3
    assert set(restored) == RESTORE_SUMMARY_KEYS and restored["target"].endswith(db.name)


@pytest.mark.parametrize("mode", [[], ["--quiet"], ["--log-format", "json"]])
def test_stdout_is_the_backups_path_in_every_mode(
    db: Database, tmp_path: Path, mode: list[str]
) -> None:
    """The README promised the path on stdout; with -q or a JSON log nothing was printed."""
    db.execute(SHOP)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), *mode)
    assert run.returncode == 0, run.stderr
    [backup] = [p for p in tmp_path.iterdir() if p.name.startswith("backup_")]
    assert run.stdout == f"{backup}\n"
    if mode == ["--quiet"]:
        assert run.stderr == ""
    if "json" in mode:
        json_lines(run.stderr)


def test_summary_json_names_the_backup_of_a_failed_run(db: Database, tmp_path: Path) -> None:
    """Interrupted mid-copy with a default name: the summary says which backup the run was
    making and where --keep-partial kept its files (it held no path on failure)."""
    db.execute(BIG)
    summary = tmp_path / "summary.json"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(out), "-j", "1",
         "--keep-partial", "--summary-json", str(summary)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not [p for p in out.glob("*.partial/data/.*big*.tmp") if p.stat().st_size > 1_000_000]:
        assert proc.poll() is None and time.monotonic() < deadline, "never wrote the big table"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stdout == b""  # no path: there is no backup
    failed = json.loads(summary.read_text())
    assert set(failed) == DUMP_SUMMARY_KEYS and failed["ok"] is False
    [partial] = out.glob("backup_*.partial")
    assert failed["partial"] == str(partial)
    assert failed["path"] == str(partial).removesuffix(".partial")
    assert not Path(failed["path"]).exists()


def test_text_log_times_are_utc_with_their_offset(db: Database, tmp_path: Path) -> None:
    """Text logs printed local time without an offset while backup names are UTC: under
    TZ=America/New_York the two disagreed by five hours, with nothing to say so."""
    db.execute("CREATE TABLE t (id int)")
    before = datetime.now(UTC).replace(microsecond=0)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), env=clean_env(TZ="America/New_York"))
    after = datetime.now(UTC)
    assert run.returncode == 0, run.stderr
    for line in run.stderr.splitlines():
        stamp = line.split(" ", 1)[0]
        assert stamp.endswith("Z"), line
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= when <= after, line


def test_dry_run_prints_its_plan_once(db: Database, tmp_path: Path) -> None:
    """Off a terminal the plan went to stderr as log lines and to stdout as the result:
    twice in one cron mail. The plan is the result: stdout only."""
    db.execute(SHOP)
    backup = tmp_path / "b"
    assert run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-q").returncode == 0
    db.execute("TRUNCATE customers, orders, order_lines, audit.log")
    run = run_cli("restore", str(backup), db.dsn, "--dry-run")
    assert run.returncode == 0, run.stderr
    plan = run.stdout.splitlines()
    assert any("level" in line for line in plan), run.stdout
    for line in plan:
        assert line not in run.stderr, line


def test_summary_json_is_written_for_an_option_error_too(tmp_path: Path) -> None:
    """A mistyped option in a cron line (exit 2 from the option parser) left no summary,
    so a job watching the file never saw the failure."""
    summary = tmp_path / "summary.json"
    run = run_cli("dump", "-o", str(tmp_path), "--jbos", "3", "--summary-json", str(summary))
    assert run.returncode == 2
    failed = json.loads(summary.read_text())
    assert set(failed) == DUMP_SUMMARY_KEYS and failed["ok"] is False
    assert failed["exit_code"] == 2 and "No such option: --jbos" in failed["error"]
    assert failed["hint"] == "see `asyncsnap dump --help`"
