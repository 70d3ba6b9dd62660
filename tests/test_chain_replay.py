"""A chain's changes replayed on the full backup's lines as they load (``restore/replay.py``):
the restored tables are the source's, as SQL computes them on both, and the server wrote
each changed row once (its rows' xmin: only the transactions that loaded its files)."""

from __future__ import annotations

import array
from pathlib import Path
from typing import Any

import pytest

from asyncsnap import _rows
from asyncsnap.api import restore
from asyncsnap.chainlines import Layout
from asyncsnap.dump import dump
from asyncsnap.increment import dump_increment
from asyncsnap.restore import replay
from tests.conftest import Database, fresh_database
from tests.helpers import table_entry
from tests.test_increment import run, slot_name, table_digests

SCHEMA = """
CREATE TABLE public.big (id int PRIMARY KEY, n int, pad text, note text);
ALTER TABLE public.big ALTER COLUMN note SET STORAGE EXTERNAL;
INSERT INTO public.big SELECT g, g, repeat('x', 200),
    CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 200) END
    FROM generate_series(1, 40000) g;
CREATE TABLE public.small (k text PRIMARY KEY, v int);
INSERT INTO public.small SELECT 'k' || g, g FROM generate_series(1, 100) g;
"""

# Changes in every file of the split table: keys that change (rows move to another
# identity), deletes, inserts then changed and deleted again, TOASTed values left alone
# (the change says "unchanged", the value comes from the full backup's line).
WORKLOAD = """
UPDATE public.big SET n = n + 1 WHERE id % 97 = 0;
UPDATE public.big SET id = id + 100000 WHERE id % 501 = 0;
DELETE FROM public.big WHERE id % 313 = 0;
INSERT INTO public.big SELECT g, g, 'new', NULL FROM generate_series(50001, 50100) g;
UPDATE public.big SET n = -n WHERE id BETWEEN 50001 AND 50010;
UPDATE public.big SET pad = 'toast left alone' WHERE id % 1000 = 0;
DELETE FROM public.big WHERE id BETWEEN 50011 AND 50020;
UPDATE public.small SET v = v + 1 WHERE v % 2 = 0;
"""


@pytest.fixture
def chain_of_split_table(db: Database, tmp_path: Path) -> tuple[Database, Path, int]:
    """A full backup whose ``big`` is split into several files, and an increment after
    ``WORKLOAD``; how many files ``big`` has."""
    db.execute(SCHEMA)
    slot = slot_name()
    try:
        run(dump, db.dsn, output=tmp_path, slot=slot, name="full", split_larger_than=1 << 20)
        db.execute(WORKLOAD)
        run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    finally:
        db.execute("SELECT pg_drop_replication_slot($1)", slot)
    files = len(table_entry(tmp_path / "full", "public", "big")["files"])
    assert files >= 4
    return db, tmp_path / "inc", files


def _xmins(target: Database) -> int:
    return int(target.fetchval("SELECT count(DISTINCT xmin::text) FROM public.big"))


def test_a_split_tables_changes_replay_as_its_files_load(
    chain_of_split_table: tuple[Database, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, inc, files = chain_of_split_table
    with fresh_database(db.postgres, "replayed") as target:
        result = run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        # every row of big committed by a file's transaction: none updated after
        assert _xmins(target) == files
        replayed_changes = result.changes
    # The same chain applied after the load: the same rows, written twice
    monkeypatch.setattr(replay, "TABLE_CHANGE_BYTES", -1)
    with fresh_database(db.postgres, "applied") as target:
        result = run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert _xmins(target) > files
        assert result.changes == replayed_changes > 0


def test_lines_set_aside_for_a_hash_alike_load_as_they_were(
    chain_of_split_table: tuple[Database, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line is set aside when its identity's hash is one a change's key has; one whose
    identity no change names (a hash alike: forced here for every seventh row) is loaded
    as it was, never lost or replayed on."""
    db, inc, _ = chain_of_split_table
    named = replay._named

    def alike(layout: Layout, files: Any) -> bytes | None:
        wanted = named(layout, files)
        if wanted is None or layout.table.name != "big":
            return wanted
        hashes = array.array("Q")
        hashes.frombytes(wanted)
        more = {_rows.key_hash(b"%d" % i) for i in range(1, 40001, 7)}
        return array.array("Q", sorted(set(hashes) | more)).tobytes()

    monkeypatch.setattr(replay, "_named", alike)
    with fresh_database(db.postgres, "alike") as target:
        run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_a_chain_replays_into_truncated_tables_in_one_transaction(
    chain_of_split_table: tuple[Database, Path, int],
) -> None:
    """``--truncate --single-transaction`` into tables that exist and hold rows: the
    chain's state, loaded in one transaction (every row's xmin the same)."""
    db, inc, _ = chain_of_split_table
    with fresh_database(db.postgres, "truncated") as target:
        run(restore, inc, target.dsn, jobs=2)
        target.execute("UPDATE public.big SET n = 0 WHERE id < 100; DELETE FROM public.small")
        run(restore, inc, target.dsn, mode="truncate", single_transaction=True)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert _xmins(target) == 1


def test_tables_past_the_replays_budget_are_applied_after_the_load(
    chain_of_split_table: tuple[Database, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change lines all replays may take (``ALL_CHANGE_BYTES``): room for ``small``'s
    only, so ``big``'s changes are applied after the load, ``small``'s replayed; the same
    rows either way."""
    db, inc, files = chain_of_split_table
    small = sum(f["bytes"] for f in table_entry(inc, "public", "small")["files"])
    monkeypatch.setattr(replay, "ALL_CHANGE_BYTES", small)
    with fresh_database(db.postgres, "budget") as target:
        run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert _xmins(target) > files  # big: updated after its files loaded
        # small: one file, its rows all committed by its load's transaction
        assert target.fetchval("SELECT count(DISTINCT xmin::text) FROM public.small") == 1
