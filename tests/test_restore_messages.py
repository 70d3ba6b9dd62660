"""Restore's messages found misleading (issue 22): hints that name only what applies, a
missing database that names --create and createdb, and stdout's summary line under -q."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import Database, Postgres, fresh_database, run_cli
from .test_dump import run_dump
from .test_restore import copy_schema


def error_and_hint(stderr: str) -> tuple[str, str]:
    lines = stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), stderr
    return lines[-2], lines[-1]


def test_a_missing_target_database_names_create_and_createdb(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """The hint said to check the DSN; for a restore, the database may simply not have
    been made yet."""
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("restore", str(backup), postgres.dsn("asyncsnap_no_such_database"))
    assert run.returncode == 3, run.stderr
    error, hint = error_and_hint(run.stderr)
    assert "'asyncsnap_no_such_database' does not exist" in error
    assert "createdb" in hint and "--create" in hint


def test_target_not_empty_names_clean_only_where_clean_applies(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """--clean cannot be combined with --data-only or -t: the hint for a non-empty
    target named it anyway."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_msg") as target:
        copy_schema(db, target)
        target.execute("INSERT INTO t VALUES (2)")
        for flags, names_clean in (([], True), (["--data-only"], False), (["-t", "t"], False)):
            run = run_cli("restore", str(backup), target.dsn, *flags)
            assert run.returncode == 1, run.stderr
            error, hint = error_and_hint(run.stderr)
            assert "already has rows in public.t" in error
            assert "--truncate" in hint and ("--clean" in hint) is names_clean, (flags, hint)


def test_a_missing_table_chosen_with_t_is_not_told_to_use_clean(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int); CREATE TABLE u (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_msg") as target:
        target.execute("CREATE TABLE u (id int)")
        run = run_cli("restore", str(backup), target.dsn, "-t", "t")
        assert run.returncode == 1, run.stderr
        error, hint = error_and_hint(run.stderr)
        assert "has no table public.t" in error and "--clean" not in hint, hint


def test_quiet_restore_keeps_its_stdout_summary_line(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """README: restore prints one summary line on stdout (and with --compare the equal:
    line); -q printed nothing at all. -q quiets stderr only."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_quiet") as target:
        run = run_cli("restore", str(backup), target.dsn, "-q", "--compare")
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""
        summary, equal = run.stdout.splitlines()
        assert re.fullmatch(r"restored 1 table, 2 rows, 0 sequences in \d+\.\d\ds", summary)
        assert equal.startswith("equal:")


def test_tables_with_rows_are_found_across_the_checks_batches(db: Database, tmp_path: Path) -> None:
    """The plan checks that the target's tables are empty 200 a query (a round trip per
    table was most of a restore of thousands of small ones): the tables with rows on
    either side of a batch's edge are all named, in the backup's order."""
    db.execute(
        "DO $$ BEGIN FOR i IN 1..450 LOOP "
        "EXECUTE format('CREATE TABLE %I (id int)', 't' || lpad(i::text, 3, '0')); "
        "END LOOP; END $$"
    )
    backup = Path(run_dump(db, tmp_path).path)
    db.execute(
        "INSERT INTO t001 VALUES (1); INSERT INTO t200 VALUES (1); "
        "INSERT INTO t201 VALUES (1); INSERT INTO t450 VALUES (1)"
    )
    run = run_cli("restore", str(backup), db.dsn)
    assert run.returncode == 1, run.stderr
    error, _ = error_and_hint(run.stderr)
    assert "already has rows in public.t001, public.t200, public.t201, public.t450" in error
