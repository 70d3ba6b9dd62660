"""Every expected failure: one error line, a hint, its documented exit code, no traceback,
no password, and nothing left that looks like a backup."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from asyncsnap.cli.envelope import describe_failure as _describe_failure
from asyncsnap.errors import AsyncsnapError, ExitCode
from throwaway.postgres import PASSWORD, free_port

from .conftest import CliRun, Database, Postgres, clean_env, run_cli, table_locked


def assert_failure(run: CliRun, code: int, message: str) -> None:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert any(line.startswith("hint: ") for line in lines), run.stderr
    assert "Traceback" not in run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    assert run.stdout == ""


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_server_unreachable_exit_3(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x"
    run = run_cli("dump", dsn, "-o", str(tmp_path / "out"))
    assert_failure(run, 3, "could not connect to 127.0.0.1")
    assert_nothing_written(tmp_path / "out")


def test_unknown_host_exit_3(tmp_path: Path) -> None:
    run = run_cli("dump", "postgresql://u@no-such-host.invalid/x", "-o", str(tmp_path))
    assert_failure(run, 3, "could not resolve host 'no-such-host.invalid'")


def test_authentication_failed_exit_3(db: Database, tmp_path: Path) -> None:
    dsn = db.postgres.dsn(db.name, user="postgres", password="wrong-" + PASSWORD)
    run = run_cli("dump", dsn, "-o", str(tmp_path))
    assert_failure(run, 3, "authentication failed for user 'postgres'")
    assert "wrong-" not in run.stderr
    assert_nothing_written(tmp_path)


def test_database_missing_exit_3(postgres: Postgres, tmp_path: Path) -> None:
    run = run_cli("dump", postgres.dsn("no_such_db"), "-o", str(tmp_path))
    assert_failure(run, 3, "database 'no_such_db' does not exist")


def test_no_table_matches_exit_2(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int)")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "-t", "nope*", "-N", "public")
    assert_failure(run, 2, "no table matches the filters: -t nope* -N public")
    assert_nothing_written(tmp_path)


def test_an_empty_database_says_so_not_that_filters_matched_nothing(
    db: Database, tmp_path: Path
) -> None:
    """With no -t/-T/-n/-N, "no table matches the filters" pointed at filters nobody gave
    (a newcomer's first dump of a fresh database); it names the likely cause instead."""
    run = run_cli("dump", db.dsn, "-o", str(tmp_path))
    assert_failure(run, 2, "the database has no tables, sequences or large objects to dump")
    assert "which database you connected to" in run.stderr
    assert_nothing_written(tmp_path)


def test_bad_pattern_and_bad_options_exit_2(db: Database, tmp_path: Path) -> None:
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "-t", '"unterminated')
    assert_failure(run, 2, "unterminated double quote")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "-j", "0")
    assert_failure(run, 2, "Invalid value for '--jobs' / '-j'")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--compress", "lz4")
    assert_failure(run, 2, "Invalid value for '--compress'")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "../escape")
    assert_failure(run, 2, "invalid backup name")
    assert_nothing_written(tmp_path)


def test_permission_denied_on_a_table_exit_1(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    db.execute(
        f"CREATE TABLE open (id int); CREATE TABLE secret (id int); "
        f"CREATE TABLE secret2 (id int); GRANT SELECT ON open TO {name}"
    )
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    run = run_cli("dump", dsn, "-o", str(tmp_path))
    assert_failure(run, 1, "permission denied for tables public.secret, public.secret2")
    assert password not in run.stderr
    assert_nothing_written(tmp_path)
    ok = run_cli("dump", dsn, "-o", str(tmp_path), "-T", "secret*")
    assert ok.returncode == 0, ok.stderr


def test_lock_timeout_names_the_table_exit_1(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE busy (id int); CREATE TABLE calm (id int)")

    with table_locked(db.dsn, "busy"):
        run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--lock-timeout", "0.5")
    assert_failure(run, 1, "could not lock table public.busy within 0.5s")
    assert_nothing_written(tmp_path)


def test_output_name_taken_exit_4(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int)")
    (tmp_path / "nightly").mkdir()
    (tmp_path / "nightly" / "keep.txt").write_text("mine")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "nightly")
    assert_failure(run, 4, "nightly already exists")
    assert (tmp_path / "nightly" / "keep.txt").read_text() == "mine"
    (tmp_path / "other.partial").mkdir()
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "other")
    assert_failure(run, 4, "other.partial already exists")


@contextlib.contextmanager
def readonly_directory() -> Iterator[Path]:
    """A directory we cannot write to. Root ignores permission bits, so as root it is a
    read-only tmpfs (EROFS); as anyone else a mode 0555 directory (EACCES)."""
    path = Path(tempfile.mkdtemp(prefix="asyncsnap-ro-"))
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    if os.geteuid() == 0 and not mounted:
        subprocess.run(["rm", "-rf", str(path)], check=False)
        pytest.skip("root without permission to mount: no directory is unwritable for us")
    try:
        if not mounted:
            path.chmod(0o555)
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        else:
            path.chmod(0o755)
        subprocess.run(["rm", "-rf", str(path)], check=False)


def test_output_not_writable_exit_4(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int)")
    with readonly_directory() as ro:
        run = run_cli("dump", db.dsn, "-o", str(ro / "sub"))
        assert_failure(run, 4, "cannot write")
        assert list(ro.iterdir()) == []
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    run = run_cli("dump", db.dsn, "-o", str(not_a_dir))
    assert_failure(run, 4, "is not a directory")


@contextlib.contextmanager
def small_filesystem() -> Iterator[tuple[Path, dict[str, object]]]:
    """A 1 MiB tmpfs when we may mount one; else a 1 MiB file-size limit (EFBIG)."""
    path = Path(tempfile.mkdtemp(prefix="asyncsnap-full-"))
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True
            ).returncode
            == 0
        )
    try:
        if mounted:
            yield path, {}
        else:

            def limit() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

            yield path, {"preexec_fn": limit}
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        subprocess.run(["rm", "-rf", str(path)], check=False)


def test_disk_full_exit_4_and_no_manifest(db: Database) -> None:
    db.execute(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
        "FROM generate_series(1, 100000) g"
    )
    with small_filesystem() as (path, kwargs):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "asyncsnap",
                "dump",
                db.dsn,
                "-o",
                str(path / "out"),
                "--compress",
                "none",
            ],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
            **kwargs,  # type: ignore[call-overload]
        )
        run = CliRun(proc.returncode, proc.stdout, proc.stderr)
        assert_failure(run, 4, "no space left on device" if not kwargs else "file too large")
        assert not list(path.rglob("manifest.json"))
        assert not (path / "out").exists() or list((path / "out").iterdir()) == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    port = free_port()
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/x"
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--debug")
    assert run.returncode == 3 and "Traceback (most recent call last):" in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert errors == [
        f"error: could not connect to 127.0.0.1:{port}: Connect call failed ('127.0.0.1', {port})",
        "hint: is the server running and accepting connections? check host and port",
    ], run.stderr
    assert PASSWORD not in run.stderr


def test_password_never_printed_with_pgpassword(db: Database, tmp_path: Path) -> None:
    env = clean_env(
        PGPASSWORD="wrong-" + PASSWORD,
        PGHOST=db.postgres.host,
        PGPORT=str(db.postgres.port),
        PGUSER="postgres",
        PGDATABASE=db.name,
    )
    run = run_cli("dump", "-o", str(tmp_path), "--debug", env=env)
    assert run.returncode == 3, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert errors == [
        f"error: authentication failed for user 'postgres' at {db.postgres.host}:"
        f"{db.postgres.port}",
        "hint: check the user and password (DSN, PGPASSWORD or ~/.pgpass)",
    ], run.stderr
    assert "wrong-" not in run.stderr + run.stdout


def test_permission_denied_on_a_sequence_names_it_exit_1(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    db.execute(f"CREATE TABLE items (id serial PRIMARY KEY); GRANT SELECT ON items TO {name}")
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    run = run_cli("dump", dsn, "-o", str(tmp_path))
    assert_failure(run, 1, "permission denied for sequence public.items_id_seq")
    assert_nothing_written(tmp_path)


def test_second_run_into_the_same_directory_exits_6_and_stale_lock_is_ignored(
    db: Database, tmp_path: Path
) -> None:
    """Two runs into one output directory cannot overlap; a lock file left by a dead
    process (no flock held) does not block the next run."""
    import fcntl

    db.execute("CREATE TABLE t (id int)")
    lock_file = tmp_path / ".asyncsnap.lock"
    with lock_file.open("w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds it
        run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "second")
        assert_failure(run, 6, "another asyncsnap run (pid 4242) is writing to")
        assert not (tmp_path / "second").exists() and not (tmp_path / "second.partial").exists()
    # The holder is gone; its file is still there, unlocked: a stale lock.
    assert lock_file.exists()
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "third")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "third" / "manifest.json").exists()
    assert not lock_file.exists()  # removed on release


def test_too_few_connections_fails_fast_with_a_clear_message(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """-j 8 where the server allows this role only 2 connections: a clear error naming
    the limit, quickly, not a hang; nothing left behind."""
    name, password = role
    db.execute(f"CREATE TABLE t (id int); GRANT SELECT ON t TO {name}")
    db.execute(f"ALTER ROLE {name} CONNECTION LIMIT 2")
    for i in range(8):
        db.execute(f"CREATE TABLE t{i} (id int); GRANT SELECT ON t{i} TO {name}")
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    started = time.monotonic()
    run = run_cli("dump", dsn, "-o", str(tmp_path), "-j", "8", timeout=60)
    assert time.monotonic() - started < 30
    assert_failure(run, 3, "no free connection slots")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dump", "--bogus"], "No such option: --bogus"),
        (["prune", "/tmp", "--dry-run", "true", "--keep", "1"], "extra argument(s) (true)"),
        (["restore"], "Missing argument 'BACKUP'"),
        (["prune", "/tmp", "--keep", "x"], "Invalid value for '--keep'"),
    ],
)
def test_option_errors_are_one_error_line_and_one_hint_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Click's own usage block (Usage:, Try ..., a blank line, Error: ...) was four lines
    in another shape than every other failure; and JSON logs got it raw."""
    run = run_cli(*args)
    assert run.returncode == 2 and run.stdout == ""
    error, hint = run.stderr.splitlines()
    assert error.startswith("error: ") and message in error, run.stderr
    assert hint == f"hint: see `asyncsnap {args[0]} --help`"
    if args[0] not in ("dump", "restore"):
        return  # the commands with --log-format
    as_json = run_cli(*args, "--log-format", "json")
    [line] = as_json.stderr.splitlines()
    assert orjson.loads(line)["exit_code"] == 2 and message in orjson.loads(line)["message"]


def test_a_server_hint_and_ours_make_one_hint_line() -> None:
    """asyncpg ends an error's text with the server's HINT; with ours that made two hint
    lines (one inside the error line). Now the server's joins ours, the same hint twice is
    said once, and a "HINT:" line inside a name (not the server's field) stays put."""
    server = asyncpg.exceptions.PostgresError.new(
        {"S": "ERROR", "C": "42804", "M": "cannot cast", "D": "x", "H": "Use a USING clause."}
    )
    ours = AsyncsnapError(f"server error while copying t: {server}", hint="see the server log")
    ours.__cause__ = server
    code, message, hint = _describe_failure(ours)
    assert code == ExitCode.FAILED
    assert message == "server error while copying t: cannot cast\nDETAIL:  x"
    assert hint == "Use a USING clause.; see the server log"
    same = AsyncsnapError(f"bad: {server}", hint="Use a USING clause.")
    same.__cause__ = server
    assert _describe_failure(same)[1:] == ("bad: cannot cast\nDETAIL:  x", "Use a USING clause.")
    forged = AsyncsnapError('permission denied for "a\nHINT:  restore into prod"', hint="ours")
    assert _describe_failure(forged)[1:] == (forged.message, "ours")


def test_a_password_in_a_mistyped_command_line_is_never_printed_or_saved(
    tmp_path: Path,
) -> None:
    """An unquoted key=value string is several words; Click quoted the extra ones, password
    included, in its error, and that went to stderr and into --summary-json."""
    summary = tmp_path / "s.json"
    for extra in ([], ["--log-format", "json"]):
        run = run_cli(
            "dump", "host=db", "password=hunter2", "dbname=shop", "--summary-json", str(summary),
            *extra,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert "hunter2" not in run.stderr + run.stdout and "***" in run.stderr
        assert "hunter2" not in summary.read_text()


def test_an_unwritable_summary_is_said_in_the_hint_and_keeps_the_exit_code(
    tmp_path: Path,
) -> None:
    """A --summary-json path that cannot be written printed a traceback (exit 1) instead
    of the error (exit 2)."""
    run = run_cli("dump", "--bogus", "--summary-json", str(tmp_path / "missing" / "s.json"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    error, hint = run.stderr.splitlines()
    assert error.startswith("error: No such option: --bogus")
    assert "--summary-json" in hint and "could not be written" in hint
