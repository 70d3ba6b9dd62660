"""diff BEFORE AFTER: what changed between two backups (asyncsnap.analysis.diff, over DuckDB)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsnap.analysis import merge
from asyncsnap.analysis.diff import DiffResult, diff
from asyncsnap.errors import ExitCode
from throwaway.postgres import client_bindir

from .conftest import Database, run_cli
from .helpers import decompress, flip_bit_mid_file, manifest_of, reseal, rewrite_data_file
from .test_dump import run_dump

pytest.importorskip("duckdb", reason="diff needs the analysis extra (DuckDB)")


def exports_around(db: Database, tmp_path: Path, change: str) -> tuple[Path, Path]:
    """Backups named before and after of ``db``, with ``change`` run between them."""
    before = Path(run_dump(db, tmp_path, name="before").path)
    db.execute(change)
    return before, Path(run_dump(db, tmp_path, name="after").path)


def by_name(result: DiffResult) -> dict[str, tuple[str, int, int, int | None]]:
    return {t.name: (t.status, t.added, t.removed, t.changed) for t in result.tables}


def test_diff_around_a_pgbench_run_counts_what_the_server_says_changed(
    db: Database, tmp_path: Path
) -> None:
    """Before and after `pgbench -T`: history rows added, accounts, tellers and branches
    changed, each count equal to what SQL computes from the two states (kept in a schema
    the dumps leave out); --rows holds exactly those rows."""
    bindir = client_bindir(db.server_version // 10000)
    subprocess.run(
        [str(bindir / "pgbench"), "-i", "-s", "1", "-q", db.dsn], check=True, capture_output=True
    )
    tables = ("accounts", "tellers", "branches", "history")
    db.execute(
        "CREATE SCHEMA before_state;"
        + "".join(
            f"CREATE TABLE before_state.{t} AS SELECT * FROM public.pgbench_{t};" for t in tables
        )
    )
    # with fingerprints: the first pass's result is checked against them
    before = Path(
        run_dump(
            db, tmp_path, name="before", exclude_schemas=["before_state"], fingerprints=True
        ).path
    )
    subprocess.run(
        [str(bindir / "pgbench"), "-n", "-T", "3", "-c", "2", db.dsn],
        check=True,
        capture_output=True,
    )
    after = Path(
        run_dump(
            db, tmp_path, name="after", exclude_schemas=["before_state"], fingerprints=True
        ).path
    )

    def changed(table: str, key: str) -> int:
        return int(
            db.fetchval(
                f"SELECT count(*) FROM public.pgbench_{table} n JOIN before_state.{table} o "
                f"USING ({key}) WHERE n IS DISTINCT FROM o"
            )
        )

    added_history = int(
        db.fetchval(
            "SELECT (SELECT count(*) FROM public.pgbench_history)"
            " - (SELECT count(*) FROM before_state.history)"
        )
    )
    assert added_history > 100  # the run did something
    result = diff(before, after, rows_dir=tmp_path / "rows")
    assert by_name(result) == {
        "pgbench_accounts": ("changed", 0, 0, changed("accounts", "aid")),
        "pgbench_tellers": ("changed", 0, 0, changed("tellers", "tid")),
        "pgbench_branches": ("changed", 0, 0, changed("branches", "bid")),
        "pgbench_history": ("changed", added_history, 0, None),
    }
    assert changed("accounts", "aid") > 100

    accounts = next(t for t in result.tables if t.name == "pgbench_accounts")
    assert accounts.rows_file is not None
    lines = [
        orjson.loads(ln)
        for ln in (tmp_path / "rows" / accounts.rows_file).read_bytes().splitlines()
    ]
    assert len(lines) == accounts.changed and {ln["change"] for ln in lines} == {"changed"}
    aids = [ln["after"]["aid"] for ln in lines]
    assert aids == sorted(aids)  # ordered by key, as numbers
    first = lines[0]
    now = db.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = $1", first["after"]["aid"])
    was = db.fetchval(
        "SELECT abalance FROM before_state.accounts WHERE aid = $1", first["before"]["aid"]
    )
    assert (first["before"]["abalance"], first["after"]["abalance"]) == (was, now)

    run = run_cli("diff", str(before), str(after))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == (
        f"public.pgbench_accounts: 100000 -> 100000 rows: 0 added, 0 removed, "
        f"{accounts.changed} changed (by aid)"
    )
    assert "schema: the same" in run.stdout.splitlines()
    as_json = json.loads(run_cli("diff", str(before), str(after), "--json").stdout)
    assert as_json["totals"]["added"] == added_history
    assert run_cli("diff", str(before), str(after), "--exit-code").returncode == 7
    assert run_cli("diff", str(before), str(before), "--exit-code").returncode == 0


def test_table_without_primary_key_is_a_multiset_of_rows(db: Database, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE log (v text);"
        "INSERT INTO log SELECT 'same' FROM generate_series(1, 3);"
        "INSERT INTO log VALUES ('gone'), ('kept')"
    )
    before, after = exports_around(
        db,
        tmp_path,
        "DELETE FROM log WHERE ctid = (SELECT min(ctid) FROM log WHERE v = 'same');"
        "DELETE FROM log WHERE v = 'gone'; INSERT INTO log VALUES ('new'), ('new')",
    )
    result = diff(before, after, rows_dir=tmp_path / "rows")
    assert by_name(result) == {"log": ("changed", 2, 2, None)}
    rows = (tmp_path / "rows" / result.tables[0].rows_file).read_text()  # type: ignore[operator]
    assert rows.splitlines() == [
        '{"change":"removed","row":{"v":"gone"}}',
        '{"change":"removed","row":{"v":"same"}}',
        '{"change":"added","row":{"v":"new"}}',
        '{"change":"added","row":{"v":"new"}}',
    ]


def test_schema_changes_are_named_and_the_ddl_difference_shown(
    db: Database, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b text); INSERT INTO t VALUES (1, 1, 'x');"
        "CREATE TABLE gone (id int); CREATE TABLE stays (id int); INSERT INTO stays VALUES (1)"
    )
    before, after = exports_around(
        db,
        tmp_path,
        "ALTER TABLE t ALTER COLUMN a TYPE bigint, DROP COLUMN b, ADD COLUMN c date;"
        "DROP TABLE gone; CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1), (2)",
    )
    run = run_cli("diff", str(before), str(after))
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[:3] == [
        "public.fresh: new, 2 rows",
        "public.gone: dropped, 0 rows",
        "public.t: columns dropped b (text); a: integer -> bigint; added c (date) "
        "(1 -> 1 rows; rows not compared)",
    ]
    schema = out[out.index("schema:") + 1 :]
    assert "+CREATE TABLE public.fresh (" in schema and "-CREATE TABLE public.gone (" in schema
    assert "+    a bigint," in schema and "-    b text" in schema and "+    c date" in schema
    unchanged = next(t for t in diff(before, after).tables if t.name == "stays")
    assert (unchanged.status, unchanged.read) == ("unchanged", False)


def test_identical_tables_are_not_read_and_damaged_ones_are_refused(
    db: Database, tmp_path: Path
) -> None:
    """A table with the same files (the same SHA-256s) is decided from the manifests: its
    files can be gone and diff still answers. A file that is read is checked as restore
    checks it: a flipped bit fails with exit 5 naming the file, quoting no data."""
    db.execute(
        "CREATE TABLE quiet (id int, secret text); INSERT INTO quiet VALUES (1, 'hunter2');"
        "CREATE TABLE busy (id int PRIMARY KEY, secret text);"
        "INSERT INTO busy SELECT g, 'hunter2' FROM generate_series(1, 100) g"
    )
    before, after = exports_around(db, tmp_path, "UPDATE busy SET secret = 'hunter3' WHERE id = 5")
    for backup in (before, after):
        quiet = next(t for t in manifest_of(backup)["tables"] if t["name"] == "quiet")
        (backup / quiet["files"][0]["path"]).unlink()
    assert by_name(diff(before, after)) == {
        "busy": ("changed", 0, 0, 1),
        "quiet": ("unchanged", 0, 0, 0),
    }
    busy = next(t for t in manifest_of(after)["tables"] if t["name"] == "busy")
    flip_bit_mid_file(after / busy["files"][0]["path"])
    run = run_cli("diff", str(before), str(after))
    assert run.returncode == ExitCode.VERIFY, run.stderr
    error, hint = run.stderr.splitlines()
    assert error.startswith(f"error: {busy['files'][0]['path']} ") and "hunter" not in error
    assert hint == "hint: the backup is damaged; nothing from this file was kept"


@pytest.mark.slow
def test_diff_of_tables_larger_than_the_engine_memory_limit(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About 90 MB of lines per side, every tenth row changed, against a 96 MB limit for
    DuckDB (its floor: 1.5 ran in 48 MB, 2.0 needs more than 64 MB whatever the size; two
    exports of 5 M rows ran in 96 MB too): the same answer as with room to spare, and as
    the merge of both sides in order gives (which the engine's way is kept from here)."""
    db.execute(
        "CREATE TABLE wide (id bigint PRIMARY KEY, pad text);"
        "INSERT INTO wide SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g"
    )
    before, after = exports_around(
        db, tmp_path, "UPDATE wide SET pad = 'changed' WHERE id % 10 = 0"
    )
    assert manifest_of(before)["totals"]["bytes"] > 85 << 20
    merged = by_name(diff(before, after))
    monkeypatch.setattr(merge, "LIMIT_BYTES", -1)  # every line grouped by the engine
    small = diff(before, after, memory_limit="96MB", threads=1)
    assert by_name(small) == {"wide": ("changed", 0, 0, 60000)} == merged
    assert by_name(diff(before, after)) == by_name(small)


def test_rows_directory_is_never_overwritten_nor_left_half_written(
    db: Database, tmp_path: Path
) -> None:
    """--rows into a directory that already holds a table's file: exit 4 naming it, that
    file untouched, and no file of this run left behind (a half answer looks whole)."""
    db.execute(
        "CREATE TABLE a1 (id int PRIMARY KEY, v int); INSERT INTO a1 VALUES (1, 1);"
        "CREATE TABLE b2 (id int PRIMARY KEY, v int); INSERT INTO b2 VALUES (1, 1)"
    )
    before, after = exports_around(db, tmp_path, "UPDATE a1 SET v = 2; UPDATE b2 SET v = 2")
    rows = tmp_path / "rows"
    first = diff(before, after, rows_dir=rows)
    assert sorted(p.name for p in rows.iterdir()) == sorted(
        t.rows_file for t in first.tables if t.rows_file
    )
    b2 = next(t.rows_file or "" for t in first.tables if t.name == "b2")
    a1 = next(t.rows_file or "" for t in first.tables if t.name == "a1")
    (rows / a1).unlink()
    (rows / b2).write_text("mine\n")
    run = run_cli("diff", str(before), str(after), "--rows", str(rows))
    assert run.returncode == ExitCode.OUTPUT, run.stderr
    assert run.stderr.splitlines()[0] == f"error: {rows / b2} exists already"
    assert [p.name for p in rows.iterdir()] == [b2]  # a1's file of this run was removed
    assert (rows / b2).read_text() == "mine\n"
    assert (rows.stat().st_mode & 0o777) == 0o700


def test_same_large_objects_with_and_without_fingerprints_are_the_same(
    db: Database, tmp_path: Path
) -> None:
    """One backup with --fingerprints, one without: the large objects' files are the same
    bytes, so they are not reported (a fingerprint was once compared with a SHA-256)."""
    db.execute("CREATE TABLE t (id int); SELECT lo_from_bytea(0, 'abc'::bytea)")
    before = Path(run_dump(db, tmp_path, name="before", fingerprints=True).path)
    after = Path(run_dump(db, tmp_path, name="after").path)
    assert manifest_of(before)["large_objects"]["objects"] == 1
    assert diff(before, after).large_objects is None
    db.execute("SELECT lo_from_bytea(0, 'def'::bytea)")
    again = Path(run_dump(db, tmp_path, name="again").path)
    assert diff(before, again).large_objects == (1, 2)


def _without_timing(lines: list[str]) -> list[str]:
    """diff's lines with the total's seconds (a clock) cut off."""
    return [ln.rsplit("; ", 1)[0] if ln.startswith("total: ") else ln for ln in lines]


def test_a_sequence_whose_value_moved_is_named_with_both_values(
    db: Database, tmp_path: Path
) -> None:
    """A sequence set from 10 to 42 between the backups is one `sequence S: 10 -> 42` line
    (README "What changed between two backups?": sequences whose value moved), in --json
    too; a sequence that did not move is not named; --exit-code exits 7 for it alone."""
    db.execute(
        "CREATE SEQUENCE moved; SELECT setval('moved', 10);"
        "CREATE SEQUENCE still; SELECT setval('still', 5);"
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"
    )
    before, after = exports_around(db, tmp_path, "SELECT setval('moved', 42)")
    run = run_cli("diff", str(before), str(after), "--exit-code")
    assert (run.returncode, run.stderr) == (ExitCode.DIFFERENT, ""), run.stderr
    assert _without_timing(run.stdout.splitlines()) == [
        "sequence public.moved: 10 -> 42",
        "total: 0 added, 0 removed, 0 changed in 0 of 1 table; 1 not read (same files)",
        "schema: the same",
    ]
    as_json = json.loads(run_cli("diff", str(before), str(after), "--json").stdout)
    assert as_json["identical"] is False
    assert as_json["sequences"] == [
        {"schema": "public", "name": "moved", "before": 10, "after": 42}
    ]
    same = run_cli("diff", str(before), str(before), "--exit-code")
    assert (same.returncode, same.stderr) == (0, ""), same.stderr


def test_a_large_object_whose_bytes_changed_is_reported(db: Database, tmp_path: Path) -> None:
    """The same number of large objects, one of them with other bytes: the large objects
    are reported as not the same (`large objects: 1 -> 1 objects, not the same`), in
    --json as before and after counts; --exit-code exits 7."""
    oid = int(db.fetchval("SELECT lo_from_bytea(0, 'abc'::bytea)"))
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    before, after = exports_around(db, tmp_path, f"SELECT lo_put({oid}, 1, 'X'::bytea)")
    assert db.fetchval(f"SELECT lo_get({oid})") == b"aXc"
    run = run_cli("diff", str(before), str(after), "--exit-code")
    assert (run.returncode, run.stderr) == (ExitCode.DIFFERENT, ""), run.stderr
    assert _without_timing(run.stdout.splitlines()) == [
        "large objects: 1 -> 1 objects, not the same",
        "total: 0 added, 0 removed, 0 changed in 0 of 1 table; 1 not read (same files)",
        "schema: the same",
    ]
    as_json = json.loads(run_cli("diff", str(before), str(after), "--json").stdout)
    assert as_json["large_objects"] == {"before": 1, "after": 1}
    assert as_json["identical"] is False


def test_a_row_whose_key_changed_is_one_removed_and_one_added(db: Database, tmp_path: Path) -> None:
    """Rows are paired by their primary key (docs/format.md "The same key"): a row whose
    key went from 5 to 100, other columns unchanged, is no longer the same row: one
    removed (key 5) and one added (key 100), none changed; --rows holds exactly those two."""
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g"
    )
    before, after = exports_around(db, tmp_path, "UPDATE t SET id = 100 WHERE id = 5")
    rows = tmp_path / "rows"
    run = run_cli("diff", str(before), str(after), "--rows", str(rows))
    assert (run.returncode, run.stderr) == (0, ""), run.stderr
    assert _without_timing(run.stdout.splitlines()) == [
        "public.t: 10 -> 10 rows: 1 added, 1 removed, 0 changed (by id)",
        "total: 1 added, 1 removed, 0 changed in 1 of 1 table; 0 not read (same files)",
        "schema: the same",
    ]
    (written,) = rows.iterdir()
    assert written.read_text().splitlines() == [
        '{"change":"removed","row":{"id":5,"v":"v5"}}',
        '{"change":"added","row":{"id":100,"v":"v5"}}',
    ]


def _replace_line(backup: Path, table: str, old: bytes, new: bytes) -> None:
    """Make a backup by hand: one line of ``table``'s only file replaced, the file's
    SHA-256 and sizes and the manifest's own checksum made to match (as a hostile
    writer would)."""

    def edit(body: dict[str, Any]) -> None:
        (entry,) = next(t for t in body["tables"] if t["name"] == table)["files"]
        text = decompress(backup / entry["path"])
        assert text.count(old) == 1
        rewrite_data_file(backup, entry, text.replace(old, new))
        body["totals"]["bytes"] += len(new) - len(old)
        body["totals"]["stored_bytes"] = sum(
            f["stored_bytes"] for t in body["tables"] for f in t["files"]
        )

    reseal(backup, edit)
    (backup / "SHA256SUMS").unlink(missing_ok=True)


def test_a_changed_line_that_is_not_utf8_fails_the_diff_naming_it(
    db: Database, tmp_path: Path
) -> None:
    """A hand-made backup whose files match its manifest but hold a line that is not
    UTF-8: the lines both sides share are passed over as bytes, so the bad line is among
    those that differ; diff must not answer from it, and fails naming its file and line
    (exit 5), as the reader of every line does."""
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g"
    )
    before, after = exports_around(db, tmp_path, "UPDATE t SET v = 'w' WHERE id = 4")
    _replace_line(after, "t", b'"v":"w"}', b'"v":"\xff"}')
    run = run_cli("diff", str(before), str(after))
    assert run.returncode == ExitCode.VERIFY, run.stderr
    error, hint = run.stderr.splitlines()
    assert re.fullmatch(r"error: data/public\.t-\w+\.ndjson\.zst: line 10 is .*UTF-8.*", error)
    assert hint == "hint: the backup is damaged; `asyncsnap verify` says more"
