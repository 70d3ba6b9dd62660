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


def chain_after(db: Database, tmp_path: Path, workload: str, **options: Any) -> Path:
    """A full backup of ``db`` (``full``, dump's ``options``), then an increment after
    ``workload`` (``inc``, its path returned); the slot dropped."""
    slot = slot_name()
    try:
        run(dump, db.dsn, output=tmp_path, slot=slot, name="full", **options)
        db.execute(workload)
        run(dump_increment, db.dsn, since=tmp_path / "full", name="inc")
    finally:
        db.execute("SELECT pg_drop_replication_slot($1)", slot)
    return tmp_path / "inc"


@pytest.fixture
def chain_of_split_table(db: Database, tmp_path: Path) -> tuple[Database, Path, int]:
    """A full backup whose ``big`` is split into several files, and an increment after
    ``WORKLOAD``; how many files ``big`` has."""
    db.execute(SCHEMA)
    inc = chain_after(db, tmp_path, WORKLOAD, split_larger_than=1 << 20)
    files = len(table_entry(tmp_path / "full", "public", "big")["files"])
    assert files >= 4
    return db, inc, files


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
    monkeypatch.setattr(replay, "REPLAY_BYTES", -1)
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


def test_past_the_replays_budget_every_table_is_applied_after_the_load(
    chain_of_split_table: tuple[Database, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the replays would hold (``REPLAY_BYTES``) has room for ``small``'s but not for
    ``big``'s: neither is replayed (tables of one restore end at one moment), both are
    applied after the load; the same rows."""
    db, inc, files = chain_of_split_table
    small = sum(f["bytes"] for f in table_entry(inc, "public", "small")["files"])
    monkeypatch.setattr(replay, "REPLAY_BYTES", small * 4)
    with fresh_database(db.postgres, "budget") as target:
        run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert _xmins(target) > files  # big: updated after its files loaded
        # small: half its rows updated after its load, by the apply
        assert target.fetchval("SELECT count(DISTINCT xmin::text) FROM public.small") == 2


# A parent and a child, one with a column generated at the source (its changes cannot be
# replayed: they do not carry it): the chain moves a child to a parent it inserts, and
# deletes a parent whose child goes with it (ON DELETE CASCADE).
FOREIGN_KEY_SCHEMA = """
CREATE TABLE public.parent (id int PRIMARY KEY, v text{parent});
CREATE TABLE public.child (id int PRIMARY KEY,
    pid int REFERENCES public.parent ON DELETE CASCADE{child});
INSERT INTO public.parent (id, v) SELECT g, 'p' FROM generate_series(1, 10) g;
INSERT INTO public.child (id, pid) SELECT g, g FROM generate_series(1, 10) g;
"""
GENERATED = ", g int GENERATED ALWAYS AS (id * 2) STORED"


@pytest.mark.parametrize("generated", ["parent", "child"])
@pytest.mark.parametrize("kind", ["whole", "existing"])
def test_tables_a_foreign_key_joins_end_at_one_moment(
    db: Database, tmp_path: Path, generated: str, kind: str
) -> None:
    """One table's changes replayed beside another's applied after the load left a child
    naming a parent row only the later apply makes, and post-data's foreign key (or the
    COPY into existing tables) refused the restore: every table or none is replayed."""
    schema = FOREIGN_KEY_SCHEMA.format(
        parent=GENERATED if generated == "parent" else "",
        child=GENERATED if generated == "child" else "",
    )
    db.execute(schema)
    inc = chain_after(
        db,
        tmp_path,
        "INSERT INTO public.parent (id, v) VALUES (11, 'new');"
        " UPDATE public.child SET pid = 11 WHERE id = 1;"
        " DELETE FROM public.parent WHERE id = 3",
    )
    with fresh_database(db.postgres, "joined") as target:
        if kind == "existing":
            target.execute(schema.split("INSERT")[0])
        run(restore, inc, target.dsn, jobs=2)
        assert table_digests(target.dsn) == table_digests(db.dsn)


def test_the_replays_budget_counts_the_lines_changes_name(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates that leave a big TOASTed value alone are small change lines naming big
    lines, which a replay holds: the budget counts those lines (as their table's average
    line), and past it the chain is applied after the load."""
    db.execute(
        "CREATE TABLE public.fat (id int PRIMARY KEY, n int, big text);"
        " ALTER TABLE public.fat ALTER COLUMN big SET STORAGE EXTERNAL;"
        " INSERT INTO public.fat SELECT g, g, repeat(md5(g::text), 1500)"
        " FROM generate_series(1, 200) g"
    )
    inc = chain_after(db, tmp_path, "UPDATE public.fat SET n = -n WHERE id % 2 = 0")
    changes = sum(f["bytes"] for f in table_entry(inc, "public", "fat")["files"])
    assert changes < 100_000  # 100 updates, the 48 KB values not in them
    monkeypatch.setattr(replay, "REPLAY_BYTES", 1 << 20)  # 100 named lines: 4.8 MB
    with fresh_database(db.postgres, "fat") as target:
        run(restore, inc, target.dsn)
        assert table_digests(target.dsn) == table_digests(db.dsn)
        # applied after the load: the updated rows are the apply's, the others the load's
        assert target.fetchval("SELECT count(DISTINCT xmin::text) FROM public.fat") == 2


@pytest.mark.parametrize("replayed", [True, False], ids=["replayed", "applied"])
def test_materialized_views_are_refreshed_on_the_chains_end_state(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replayed: bool
) -> None:
    """A restore refreshes materialized views from the rows it restored: a chain's, from
    its end state, whichever way its changes went (applied after the load, the views were
    refreshed before them, on the full backup's rows)."""
    db.execute(
        "CREATE TABLE public.sales (id int PRIMARY KEY, n int);"
        " INSERT INTO public.sales SELECT g, g FROM generate_series(1, 100) g;"
        " CREATE MATERIALIZED VIEW public.totals AS"
        " SELECT count(*) AS c, sum(n) AS s FROM public.sales"
    )
    inc = chain_after(
        db,
        tmp_path,
        "UPDATE public.sales SET n = n * 10 WHERE id <= 20;"
        " DELETE FROM public.sales WHERE id > 90; INSERT INTO public.sales VALUES (500, 5)",
    )
    if not replayed:
        monkeypatch.setattr(replay, "REPLAY_BYTES", -1)
    with fresh_database(db.postgres, "views") as target:
        run(restore, inc, target.dsn)
        end = db.fetchval("SELECT format('%s %s', count(*), sum(n)) FROM public.sales")
        assert target.fetchval("SELECT format('%s %s', c, s) FROM public.totals") == end


def test_a_chain_restored_on_a_cluster_is_applied_after_the_load(
    chain_of_split_table: tuple[Database, Path, int],
) -> None:
    """``restore --cluster``: the workers load the full backup's files as they are, and
    the coordinator applies the chain's changes after the load (no replay: the set-aside
    lines would be in the workers' processes); the same rows."""
    db, inc, files = chain_of_split_table
    with fresh_database(db.postgres, "cluster") as target:
        result = run(restore, inc, target.dsn, cluster="local:2")
        assert table_digests(target.dsn) == table_digests(db.dsn)
        assert _xmins(target) > files  # big: updated after its files loaded
        assert result.changes > 0
