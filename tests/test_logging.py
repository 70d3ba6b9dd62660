"""Machine-readable output for cron: --log-format json and --summary-json."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Database, run_cli
from .pgserver import PASSWORD, free_port
from .test_dump import SHOP


def json_lines(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert all(isinstance(x, dict) and {"ts", "level", "event"} <= set(x) for x in lines)
    return lines


def test_json_log_one_object_per_line(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--log-format", "json")
    assert run.returncode == 0 and run.stdout == ""
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

    run = run_cli(
        "dump", db.dsn, "-o", str(tmp_path / "out"), "-t", "nope", "--summary-json", str(summary)
    )
    assert run.returncode == 2
    failed = json.loads(summary.read_text())
    assert failed == {
        "command": "dump",
        "ok": False,
        "exit_code": 2,
        "error": "no table matches the filters: -t nope",
    }
    assert PASSWORD not in summary.read_text()

    target = tmp_path / "restore.json"
    db.execute("TRUNCATE customers, orders, order_lines, audit.log")
    run = run_cli(
        "restore", str(tmp_path / "out" / "b"), db.dsn, "--quiet", "--summary-json", str(target)
    )
    assert run.returncode == 0, run.stderr
    restored = json.loads(target.read_text())
    assert restored["ok"] is True and restored["rows"] == 2070 and restored["sequences"] == 3
