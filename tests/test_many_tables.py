"""Ten thousand tables restored into a server with PostgreSQL's default lock settings
(``max_locks_per_transaction = 64``, ``max_connections = 100``), as pg_restore does them:
a whole restore, ``--create``, ``--clean``, and a restore killed in its schema and run
again (issue 24).

The schema is made in one transaction below ``restore.schema.OBJECTS_PER_TRANSACTION``
objects and committed every that many beyond; the lock table of these defaults holds some
7,800 locks for all sessions, and creating a table with its sequence takes about five.

The source server has more locks: to dump ten thousand tables with their sequences,
pg_dump 15 itself runs out of shared memory at the defaults (it locks every table, as
asyncsnap's snapshot does, at the same time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncsnap.errors import ExitCode
from asyncsnap.restore.schema import OBJECTS_PER_TRANSACTION
from throwaway.postgres import Server, throwaway_server

from .conftest import clean_env, run_cli
from .helpers import failed_with

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SCHEMAS = 10
PER_SCHEMA = 1_000
TABLES = SCHEMAS * PER_SCHEMA
DEFAULT_LOCKS = {"max_connections": "100", "max_locks_per_transaction": "64"}
TIMEOUT = 1_200

# Each table: a serial key, a text column, and a foreign key to the one before it in its
# schema (a chain of a thousand for the restore's order to plan); three rows.
_MAKE = """
DO $$
BEGIN
  FOR i IN {first}..{last} LOOP
    EXECUTE pg_catalog.format(
      'CREATE TABLE %I.%I (id serial PRIMARY KEY, v text, up int %s)',
      'tenant' || (i / {per}), 't' || i,
      CASE WHEN i % {per} = 0 THEN ''
           ELSE 'REFERENCES ' || pg_catalog.quote_ident('tenant' || (i / {per})) || '.'
                || pg_catalog.quote_ident('t' || (i - 1)) END);
    EXECUTE pg_catalog.format(
      'INSERT INTO %I.%I (v, up) VALUES (%L, NULL), (%L, 1), (NULL, 2)',
      'tenant' || (i / {per}), 't' || i, 'a' || i,
      CASE WHEN i % 2 = 0 THEN 'b' ELSE E'line\\nbreak' END);
  END LOOP;
END $$;
"""


def _psql(server: Server, database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", server.dsn(database)],
        input=sql,
        text=True,
        capture_output=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()


_COUNTS = """
SELECT pg_catalog.count(*) FILTER (WHERE c.relkind = 'r'),
       pg_catalog.count(*) FILTER (WHERE c.relkind = 'S'),
       pg_catalog.count(*) FILTER (WHERE c.relkind = 'i'),
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint k
          JOIN pg_catalog.pg_namespace kn ON kn.oid = k.connamespace
         WHERE kn.nspname LIKE 'tenant%' AND k.contype = 'f')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname LIKE 'tenant%'
"""


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with throwaway_server(settings={"max_locks_per_transaction": "256"}) as source:
        _psql(source, "postgres", "CREATE DATABASE tenants")
        _psql(source, "tenants", "".join(f"CREATE SCHEMA tenant{s};\n" for s in range(SCHEMAS)))
        for first in range(0, TABLES, 500):  # a transaction per 500 tables
            _psql(source, "tenants", _MAKE.format(first=first, last=first + 499, per=PER_SCHEMA))
        out = tmp_path_factory.mktemp("many")
        run = run_cli(
            "dump", source.dsn("tenants"), "-o", str(out), "--name", "b", "-j", "2",
            timeout=TIMEOUT,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert _psql(source, "tenants", _COUNTS) == f"{TABLES}|{TABLES}|{TABLES}|{TABLES - 10}"
        yield out / "b"


@pytest.fixture(scope="module")
def target() -> Iterator[Server]:
    with throwaway_server(settings=DEFAULT_LOCKS) as server:
        assert _psql(server, "postgres", "SHOW max_locks_per_transaction") == "64"
        yield server


def _restore(backup: Path, dsn: str, *flags: str) -> None:
    run = run_cli("restore", str(backup), dsn, "-j", "2", "--compare", *flags, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "equal: the database holds exactly the backup's rows" in run.stdout + run.stderr


def _same_schema(target: Server, database: str) -> None:
    assert _psql(target, database, _COUNTS) == f"{TABLES}|{TABLES}|{TABLES}|{TABLES - 10}"
    assert _psql(target, database, "SELECT nextval('tenant3.t3500_id_seq')") == "4"


def test_ten_thousand_tables_restore_with_default_lock_settings(
    backup: Path, target: Server
) -> None:
    """--create (the database made as pg_restore -C), then --clean over it: both exact
    (--compare) and the schema whole, where one transaction ran out of shared memory."""
    _restore(backup, target.dsn("postgres"), "--create")
    _same_schema(target, "tenants")
    _restore(backup, target.dsn("tenants"), "--clean")
    _same_schema(target, "tenants")


def test_a_restore_killed_in_its_schema_runs_again_with_clean(backup: Path, target: Server) -> None:
    """Killed after some of the schema's transactions committed: the same command refuses
    the half-made target (naming --clean), and with --clean it ends exact."""
    _psql(target, "postgres", "CREATE DATABASE killed")
    dsn = target.dsn("killed")
    child = subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", "restore", str(backup), dsn, "-j", "2"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        count = "SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relname ~ '^t[0-9]+$'"
        while int(_psql(target, "killed", count)) < OBJECTS_PER_TRANSACTION // 4:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    made = int(_psql(target, "killed", count))
    assert 0 < made < TABLES
    again = run_cli("restore", str(backup), dsn, "-j", "2", timeout=TIMEOUT)
    _, hint = failed_with(again, ExitCode.FAILED, "the target database has no table")
    assert hint is not None and "--clean" in hint
    _restore(backup, dsn, "--clean")
    _same_schema(target, "killed")


def test_a_dry_run_too_large_for_the_lock_table_says_so(backup: Path, target: Server) -> None:
    """--dry-run rehearses the whole schema in one transaction and rolls it back: beyond
    the lock table it cannot, and says how to proceed."""
    _psql(target, "postgres", "CREATE DATABASE rehearsed")
    run = run_cli("restore", str(backup), target.dsn("rehearsed"), "--dry-run", timeout=TIMEOUT)
    failed_with(
        run, ExitCode.FAILED, "--dry-run cannot rehearse this schema", "it rehearses the whole"
    )
    assert _psql(target, "rehearsed", "SELECT count(*) FROM pg_catalog.pg_namespace "
                 "WHERE nspname LIKE 'tenant%'") == "0"  # fmt: skip
