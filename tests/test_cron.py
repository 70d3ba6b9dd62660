"""The README's crontab line, run as cron would run it, and dump --verify."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import orjson
import pytest

import asyncsnap
from asyncsnap.errors import VerificationFailed
from asyncsnap.events import ChunkFinished, DumpStarted, Event

from .conftest import Database, clean_env, run_cli
from .helpers import flip_bit_mid_file

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_cron_command() -> str:
    """The command part (after the five time fields) of the README's crontab line."""
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```cron")[1:]]
    # the others: test_store_backups (s3://), test_increment (a chain's --since)
    (block,) = [b for b in blocks if "s3://" not in b and "--since" not in b]
    (line,) = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    return line.split(None, 5)[5]


def as_test_command(command: str, tmp: Path) -> str:
    """The README's command with its paths pointed into ``tmp``; `mail` becomes a file."""
    replacements = {
        "/srv/app": str(tmp / "app"),
        "/usr/local/bin/asyncsnap": f"{shlex.quote(sys.executable)} -m asyncsnap",
        "/backups/shop": str(tmp / "backups"),
        "/var/log/asyncsnap.jsonl": str(tmp / "asyncsnap.jsonl"),
        "mail -s backup ops@example.com": f"cat >> {tmp / 'mail'}",
        "--keep 7": "--keep 2",  # three runs show retention as well as eight would
    }
    for old, new in replacements.items():
        assert old in command, f"the README's crontab line no longer has {old!r}"
        command = command.replace(old, new)
    return command


def run_like_cron(command: str) -> None:
    # cron runs the line with /bin/sh and a near-empty environment: no DATABASE_URL, no PG*.
    env = {k: v for k, v in clean_env().items() if k in ("PATH", "HOME", "LANG")}
    subprocess.run(["/bin/sh", "-c", command], env=env, check=True, timeout=120)


def test_readme_crontab_line_gives_verified_exports_with_retention(
    db: Database, tmp_path: Path
) -> None:
    """Copy the README's line, point its paths at a temp dir, run it three nights in a row:
    two verified backups remain, the log is JSON lines, the summary says ok and verified,
    nobody was mailed. Then a night with a wrong password: mail says why, nothing lost."""
    db.execute("CREATE TABLE patients (id int PRIMARY KEY, name text)")
    db.execute("INSERT INTO patients SELECT g, 'p' || g FROM generate_series(1, 1000) g")
    app = tmp_path / "app"
    app.mkdir()
    (app / ".env").write_text(f"DATABASE_URL={db.dsn}\n")
    command = as_test_command(readme_cron_command(), tmp_path)

    for _night in range(3):
        run_like_cron(command)
        time.sleep(1.1)  # backup names carry the second

    backups = sorted(p for p in (tmp_path / "backups").iterdir() if p.name.startswith("backup_"))
    assert len(backups) == 2, backups
    for backup in backups:
        assert asyncsnap.verify(backup).ok
    assert not (tmp_path / "mail").exists()
    log_lines = (tmp_path / "asyncsnap.jsonl").read_text().splitlines()
    events = [orjson.loads(line) for line in log_lines]  # every line is JSON
    assert sum(e["event"] == "dump_finished" for e in events) == 3
    messages = [e.get("message", "") for e in events]
    assert sum(m.startswith("verified 1 file, 1000 rows") for m in messages) == 3
    assert sum(m.startswith("removed old backup") for m in messages) == 1
    summary = orjson.loads((tmp_path / "backups" / ".last-run.json").read_bytes())
    assert summary["ok"] and summary["verified"] and summary["rows"] == 1000
    assert summary["path"] == str(backups[-1])

    user = urlsplit(db.dsn).username or "postgres"
    wrong = db.postgres.dsn(db.name, user=user, password="not-the-password")
    (app / ".env").write_text(f"DATABASE_URL={wrong}\n")
    run_like_cron(command)
    assert re.fullmatch(r"asyncsnap failed: 3\n", (tmp_path / "mail").read_text())
    assert sorted((tmp_path / "backups").glob("backup_*")) == backups
    assert not orjson.loads((tmp_path / "backups" / ".last-run.json").read_bytes())["ok"]


def test_dump_verify_catches_a_file_changed_after_it_was_written(
    db: Database, tmp_path: Path
) -> None:
    """A data file altered on disk after the dump wrote it (bit rot, a faulty disk or
    filesystem): --verify reads it back, fails with VerificationFailed naming the file,
    and keeps nothing."""
    db.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 5000) g")
    partial: list[Path] = []

    def corrupt_each_file(event: Event) -> None:
        if isinstance(event, DumpStarted):
            partial.append(Path(event.path))
        if isinstance(event, ChunkFinished):
            (data,) = (partial[0] / "data").glob("public.t-*")
            flip_bit_mid_file(data)

    with pytest.raises(VerificationFailed, match=r"own verification: data/public\.t-"):
        anyio.run(
            lambda: asyncsnap.dump(
                db.dsn, output=tmp_path, name="b", verify_output=True, on_event=corrupt_each_file
            )
        )
    assert [p.name for p in tmp_path.iterdir() if p.name != ".asyncsnap.lock"] == []


def test_dump_verify_exit_code_and_summary(db: Database, tmp_path: Path) -> None:
    """`dump --verify` on good data: exit 0, the log says what was verified, the summary
    says verified; without --verify the summary says it was not."""
    db.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    for flag, verified in (("--verify", True), ("--quiet", False)):
        summary = tmp_path / f"summary{verified}.json"
        run = run_cli(
            "dump", db.dsn, "-o", str(tmp_path / "out"), "--name", f"b{verified}", flag,
            "--summary-json", str(summary),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert ("verified 1 file, 100 rows" in run.stderr) is verified
        assert orjson.loads(summary.read_bytes())["verified"] is verified
