"""The help teaches: every command's Examples run as written, and completion installs.
(docs/cli-reference.md is the commands' --help: tests/test_docs.py checks it.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from throwaway.postgres import PASSWORD
from throwaway.s3 import S3Server, s3_server

from .conftest import Database, clean_env, execute
from .test_docs import help_text
from .test_dump import SHOP

COMMANDS = ("dump", "verify", "inspect", "diff", "convert", "restore", "compare", "prune")


def examples(command: str) -> list[str]:
    """The command lines under "Examples:" in ``asyncsnap COMMAND --help``."""
    text = help_text(command)
    block = text.split("\n  Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [ln.strip() for ln in block.splitlines() if not ln.strip().startswith("#")]


def test_every_command_has_examples_of_the_common_jobs() -> None:
    for command in COMMANDS:
        assert examples(command), command
    jobs = " ".join(help_text(c) for c in ("dump", "restore"))
    for job in ("migration", "benchmark", "cron"):
        assert job in jobs, job


def test_flags_show_no_value_and_metavars_are_words() -> None:
    """``--verify <bool>`` read as if it took a value (``--verify true`` then failed with a
    DSN error); metavars were a mix of <str>, <int range> and {backup_dir}."""
    for command in COMMANDS:
        options = help_text(command).split("\nOptions:\n", 1)[1]
        assert "<bool>" not in options and "<str>" not in options, command
        assert "range>" not in options and "<path>" not in options, command
        for metavar in re.findall(r"^  (?:-\w, )?--[\w-]+ ([^\s/]\S*)", options, re.M):
            assert re.fullmatch(r"[A-Z]+", metavar), (command, metavar)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.mark.slow
def test_the_help_examples_run_as_written(db: Database, tmp_path: Path, s3: S3Server) -> None:
    """Every example of every command, pointed at a test server and a temp directory, in
    the order a user would run them: dump (a named backup, a benchmark one, a nightly one
    from ./.env), verify, inspect, restore (back to the backup, rows replaced, the database
    re-created after it was dropped), prune. Each exits 0 and does what it says."""
    db.execute(SHOP)
    # The chain's example (dump --slot) needs every table to have a replica identity, as
    # its error says; audit.log has no key.
    db.execute("ALTER TABLE audit.log REPLICA IDENTITY FULL")
    host, port = db.postgres.host, str(db.postgres.port)
    backups = tmp_path / "backups"
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / ".env").write_text(f"DATABASE_URL={db.dsn}\n")
    bin_dir = str(Path(sys.executable).parent)
    env = clean_env(PGHOST=host, PGPORT=port, PGUSER="postgres", PGPASSWORD=PASSWORD)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    counts = {t: db.fetchval(f"SELECT count(*) FROM {t}") for t in ("orders", "order_lines")}

    def as_test(line: str) -> str:
        line = line.replace(
            "postgresql://app@db.internal/shop", f"postgresql://postgres@{host}:{port}/{db.name}"
        )
        line = line.replace("-h db.internal", f"-h {host} -p {port}").replace(
            "-U app", "-U postgres"
        )
        line = re.sub(r"-d shop\b", f"-d {db.name}", line)
        line = re.sub(r"(?<!:/)/backups", str(backups), line)  # not s3://backups
        # A Dask scheduler's address: here, a local cluster of two worker processes.
        line = line.replace("--cluster tcp://scheduler:8786", "--cluster local:2")
        nightly = sorted(backups.glob("backup_*")) if backups.exists() else []
        if nightly:
            line = line.replace("backup_20261124T021500Z", nightly[-1].name)
        return line

    # The object store examples go to a real S3 server whose bucket is "backups".
    env.update(s3.env())
    ran = 0
    for command in COMMANDS:
        for line in examples(command):
            if "| jq" in line and shutil.which("jq") is None:
                continue
            if "--create" in line:  # "on another server": here, the source database is gone
                # (with the chain's slot, which a database cannot be dropped under)
                db.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE database = current_database()"
                )
                anyio.run(
                    execute,
                    db.postgres.admin_dsn,
                    f'DROP DATABASE "{db.name}" WITH (FORCE)',
                    backend="asyncio",
                )
            if "--data-only --truncate" in line:
                db.execute("DELETE FROM order_lines WHERE order_id > 100")
            run = subprocess.run(
                ["bash", "-c", as_test(line)],
                cwd=app_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, (line, run.stdout, run.stderr)
            ran += 1
    assert ran >= 11
    names = {p.name for p in backups.iterdir() if p.is_dir()}
    assert {"before-migration-42", "bench-before"} <= names  # prune kept the named ones
    assert len([n for n in names if n.startswith("backup_")]) == 1
    for table, expected in counts.items():  # the re-created database holds every row
        assert db.fetchval(f"SELECT count(*) FROM {table}") == expected


def test_completion_script_and_completions() -> None:
    """Completion is installable as Typer offers it (--install-completion), and the script
    it installs completes commands and options."""
    env = {**clean_env(), "SHELL": "/bin/bash"}
    # Typer finds the shell among the process's ancestors (shellingham), not in $SHELL:
    # run from a bash that stays its parent (pytest may have none, as in a job started
    # in the background whose shell has exited: "Shell  not supported.").
    script = subprocess.run(
        [
            "bash",
            "-c",
            '"$@"; exit $?',
            "bash",
            sys.executable,
            "-m",
            "asyncsnap",
            "--show-completion",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert script.returncode == 0, script.stderr
    assert "_ASYNCSNAP_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _asyncsnap_completion asyncsnap" in script.stdout

    def complete(words: str) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-m", "asyncsnap"],
            capture_output=True,
            text=True,
            env={
                **env,
                "_ASYNCSNAP_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - 1),
            },
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert complete("asyncsnap du") == ["dump"]
    assert complete("asyncsnap restore --data") == ["--data-only"]
    assert "--exclude-schema" in complete("asyncsnap dump --exclude")
