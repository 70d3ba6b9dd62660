"""Behaviours that depend on the server's major: generated columns (virtual ones are new in
PostgreSQL 18) and the timeouts a database owner can set against a long snapshot
(``transaction_timeout`` is new in 17, ``idle_session_timeout`` in 14). Marked
``versions``: they also run on every major in ``$ASYNCSNAP_TEST_MAJORS``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli, table_locked
from .helpers import manifest_of, read_rows


@pytest.mark.versions
def test_generated_columns_stored_and_virtual(
    postgres: Postgres, db: Database, tmp_path: Path
) -> None:
    """Their values are written (a reader sees them) and marked; a restore leaves them to
    the target, which computes them."""
    virtual = db.server_version >= 180000
    schema = (
        "CREATE TABLE items (id int PRIMARY KEY, price numeric, qty int,"
        " total numeric GENERATED ALWAYS AS (price * qty) STORED"
        + (", doubled int GENERATED ALWAYS AS (qty * 2) VIRTUAL" if virtual else "")
        + ")"
    )
    db.execute(schema + "; INSERT INTO items (id, price, qty) VALUES (1, 2.5, 4), (2, 1, 1)")
    assert run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b").returncode == 0
    (entry,) = manifest_of(tmp_path / "b")["tables"]
    generated = {c["name"]: c["generated"] for c in entry["columns"]}
    expected = {"id": None, "price": None, "qty": None, "total": "stored"}
    first = {"id": 1, "price": 2.5, "qty": 4, "total": 10.0}
    if virtual:
        expected["doubled"] = "virtual"
        first["doubled"] = 8
    assert generated == expected
    assert read_rows(tmp_path / "b")[("public", "items")][0] == first
    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute(schema)
        run = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert run.returncode == 0, run.stderr
        columns = "total" + (", doubled" if virtual else "")
        assert [tuple(r) for r in target.fetch(f"SELECT {columns} FROM items ORDER BY id")] == [
            (10, 8) if virtual else (10,),
            (1, 2) if virtual else (1,),
        ]


def waiting_for_a_lock(db: Database) -> set[int]:
    """The asyncsnap sessions of ``db`` that wait for a lock (pg_stat_activity)."""
    return {
        r[0]
        for r in db.fetch(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'asyncsnap' AND wait_event_type = 'Lock'"
        )
    }


@pytest.mark.versions
def test_database_timeouts_cannot_end_the_snapshot(db: Database, tmp_path: Path) -> None:
    """The database's owner sets every timeout that could end the coordinator's long
    transaction or its idle session; the session policy overrides them all. The dump waits
    1.5 s for a lock, three times the timeouts."""
    settings = ["idle_in_transaction_session_timeout", "statement_timeout", "lock_timeout"]
    if db.server_version >= 140000:
        settings.append("idle_session_timeout")
    if db.server_version >= 170000:
        settings.append("transaction_timeout")
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    with table_locked(db.dsn, "t"):  # taken first: the holder's session must not time out
        db.execute("".join(f'ALTER DATABASE "{db.name}" SET {name} = 500;' for name in settings))
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(tmp_path),
             "--name", "b", "--lock-timeout", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )  # fmt: skip
        # Polled: the dump waits for the lock (its snapshot open), with a deadline. A fixed
        # sleep from the start could end while Python still imported, before any session.
        deadline = time.monotonic() + 60
        while not (waiting := waiting_for_a_lock(db)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the dump never waited for the lock"
            time.sleep(0.05)
        time.sleep(1.5)  # time passing is the point: three times every timeout, waiting
        assert proc.poll() is None, proc.communicate()
        assert waiting_for_a_lock(db) == waiting  # the same sessions wait: none was ended
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert manifest_of(tmp_path / "b")["tables"][0]["rows"] == 1
