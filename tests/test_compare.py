"""compare BACKUP DSN and restore --compare: whether a database holds exactly a backup's
rows (row counts and fingerprints, docs/format.md "Row fingerprints")."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncsnap.analysis.compare import compare
from asyncsnap.comparison import CompareResult
from asyncsnap.errors import ExitCode
from asyncsnap.fingerprint import of_lines
from asyncsnap.format import Backup
from asyncsnap.storage.backup import open_stored_backup
from asyncsnap.storage.store import READ_CHUNK, LocalStore

from .conftest import Database, Postgres, fresh_database, run_cli, table_locked
from .helpers import decompress, failed_with, flip_bit_mid_file, manifest_of, reseal
from .test_dump import run_dump
from .test_restore import FIDELITY, XML_FIDELITY, has_xml


@pytest.fixture
def target(postgres: Postgres) -> Iterator[Database]:
    with fresh_database(postgres, "asyncsnap_compare") as database:
        yield database


def run_compare(backup: Path | Backup, db: Database, **kwargs: object) -> CompareResult:
    async def go() -> CompareResult:
        return await compare(backup, db.dsn, **kwargs)  # type: ignore[arg-type]

    return anyio.run(go, backend="asyncio")


@pytest.mark.versions
def test_restore_compare_proves_every_type_exact_then_compare_names_each_difference(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """The fidelity tables restored into an empty database compare equal (exit 0); then
    one changed, one extra and one missing row, and a sequence moved on, are each named
    with their counts (exit 7)."""
    db.execute(FIDELITY + (XML_FIDELITY if has_xml(db) else ""))
    backup = Path(run_dump(db, tmp_path, jobs=2, fingerprints=True).path)

    restored = run_cli("restore", str(backup), target.dsn, "--compare")
    assert restored.returncode == 0, restored.stderr
    last = restored.stdout.splitlines()[-1]
    assert last.startswith("equal: the database holds exactly the backup's rows")
    same = run_cli("compare", str(backup), target.dsn)
    assert (same.returncode, same.stderr) == (0, ""), same.stderr

    target.execute("UPDATE texts SET t = 'NULL ' WHERE id = 3")  # one byte more
    target.execute("INSERT INTO numbers (id) VALUES (9)")
    target.execute("DELETE FROM times WHERE id = 5")
    target.execute("SELECT nextval(pg_get_serial_sequence('generated_and_identity', 'id'))")
    run = run_cli("compare", str(backup), target.dsn)
    assert run.returncode == ExitCode.DIFFERENT == 7
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(errors) == sorted(
        [
            "error: public.numbers: 9 rows in the database, 8 in the backup",
            "error: public.times: 4 rows in the database, 5 in the backup",
            next(e for e in errors if e.startswith("error: public.texts: the same number of")),
            next(e for e in errors if e.startswith("error: sequence public.generated_and_id")),
        ]
    )
    assert "public.texts: the same number of rows (7) but not the same rows" in run.stderr
    assert run.stderr.splitlines()[-1] == (
        "hint: 4 differences: the database does not hold exactly the backup's rows"
    )

    as_json = run_cli("compare", str(backup), target.dsn, "--json")
    assert as_json.returncode == 7
    found = json.loads(as_json.stdout)
    assert found["equal"] is False and found["fingerprints_from"] == "manifest"
    status = {t["name"]: t["status"] for t in found["tables"]}
    assert status.pop("numbers") == status.pop("times") == status.pop("texts") == "different"
    assert set(status.values()) == {"equal"}
    assert [s["equal"] for s in found["sequences"]].count(False) == 1


def test_fingerprints_do_not_depend_on_split_or_physical_order(
    db: Database, tmp_path: Path
) -> None:
    """A table dumped in many page ranges compares equal with itself rewritten in another
    physical order; each file's recorded fingerprint is the documented sum of its lines."""
    db.execute(
        "CREATE TABLE events (id int, payload text);"
        "INSERT INTO events SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;"
        "CREATE TABLE dup (v int);"  # no key, duplicate rows
        "INSERT INTO dup SELECT 1 FROM generate_series(1, 3);"
    )
    result = run_dump(db, tmp_path, split_larger_than=256 << 10, jobs=2, fingerprints=True)
    backup = Path(result.path)
    entry = next(t for t in manifest_of(backup)["tables"] if t["name"] == "events")
    assert len(entry["files"]) > 2
    for f in entry["files"]:
        lines = decompress(backup / f["path"]).split(b"\n")[:-1]
        assert f["fingerprint"] == of_lines(lines)

    # Reversed physical order, and a different split (one stream) on the database's side.
    db.execute(
        "CREATE TABLE events2 AS SELECT * FROM events ORDER BY id DESC;"
        "DROP TABLE events; ALTER TABLE events2 RENAME TO events;"
    )
    assert db.fetchval("SELECT id FROM events LIMIT 1") == 20000
    compared = run_compare(backup, db, split_larger_than=None)
    assert compared.equal, compared.differences
    assert [t.database_rows for t in compared.tables] == [3, 20000]

    db.execute("DELETE FROM dup WHERE ctid = (SELECT min(ctid) FROM dup)")
    db.execute("INSERT INTO dup VALUES (1), (1)")  # 4 copies of one row: not 3
    changed = run_compare(backup, db)
    assert [(t.name, t.backup_rows, t.database_rows) for t in changed.differences] == [
        ("dup", 3, 4)
    ]


def test_compare_names_missing_tables_and_changed_columns(db: Database, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE a (id int, v text); INSERT INTO a VALUES (1, 'x');"
        "CREATE TABLE b (id int, v text); INSERT INTO b VALUES (1, 'x');"
        "CREATE TABLE c (id int, v text);"
    )
    backup = Path(run_dump(db, tmp_path).path)
    db.execute(
        "DROP TABLE a; ALTER TABLE b ALTER COLUMN id TYPE bigint;ALTER TABLE c ADD COLUMN w int"
    )
    run = run_cli("compare", str(backup), db.dsn)
    assert run.returncode == 7
    assert run.stderr.splitlines() == [
        "error: public.a: not in the database (1 row in the backup)",
        "error: public.b: columns differ from the backup's: id is bigint, was integer",
        "error: public.c: columns differ from the backup's: extra column w",
        "hint: 3 differences: the database does not hold exactly the backup's rows",
    ]


def test_backup_without_fingerprints_is_compared_from_its_checked_files(
    db: Database, tmp_path: Path
) -> None:
    """A manifest without fingerprints (a dump without --fingerprints, or before 0.8.0):
    compare reads the files, checking them as verify does; a damaged file fails it
    (exit 5), not a wrong answer. A key absent (0.7.0) reads as null."""
    db.execute(
        "CREATE TABLE t (id int, v text);INSERT INTO t SELECT g, 'v' FROM generate_series(1, 500) g"
    )
    backup = Path(run_dump(db, tmp_path, fingerprints=True).path)

    def without_fingerprints(body: dict[str, Any]) -> None:
        for table in body["tables"]:
            for f in table["files"]:
                del f["fingerprint"]

    body = reseal(backup, without_fingerprints)

    compared = run_compare(backup, db)
    assert compared.equal and compared.fingerprints_from == "files"
    db.execute("UPDATE t SET v = 'w' WHERE id = 250")
    assert [t.name for t in run_compare(backup, db).differences] == ["t"]

    flip_bit_mid_file(backup / body["tables"][0]["files"][0]["path"])
    path = body["tables"][0]["files"][0]["path"]
    failed_with(  # zstd's own checksum finds the flipped bit first
        run_cli("compare", str(backup), db.dsn),
        ExitCode.VERIFY,
        f"{path} cannot be decompressed: zstd decompress error: ",
        "the backup is damaged; nothing from this file was kept",
    )


def test_restore_compare_of_some_tables_finds_rows_that_were_there_before(
    db: Database, target: Database, tmp_path: Path
) -> None:
    """restore -t ... --append --compare compares the tables it loaded (not the others)
    and fails with exit 7 when the result is not the backup's rows."""
    schema = "CREATE TABLE kept (id int PRIMARY KEY); CREATE TABLE other (id int);"
    db.execute(
        schema + "INSERT INTO kept SELECT generate_series(1, 10); INSERT INTO other VALUES (1)"
    )
    backup = Path(run_dump(db, tmp_path).path)
    target.execute(schema + "INSERT INTO kept VALUES (100)")
    run = run_cli("restore", str(backup), target.dsn, "-t", "public.kept", "--append", "--compare")
    assert run.returncode == 7, run.stderr
    assert run.stderr.splitlines()[-2:] == [
        "error: restored, but the database does not hold exactly the backup's rows: "
        "public.kept: 11 rows in the database, 10 in the backup",
        f"hint: 1 difference; `asyncsnap compare {backup} ...` lists them all",
    ]
    assert target.fetchval("SELECT count(*) FROM kept") == 11  # the restore itself stands


class _HeldStore(LocalStore):
    """A backup directory whose one file is not given to its reader until ``go`` is set
    (a slow disk, or an object store's slow first byte): what a reader waits for."""

    def __init__(self, root: Path, held: str, go: threading.Event) -> None:
        super().__init__(root)
        self._held, self._go = held, go

    def open_read(self, name: str, *, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        if name == self._held:
            self._go.wait(60)
        return super().open_read(name, chunk_size=chunk_size)


def test_backup_and_database_sides_run_at_once(db: Database, tmp_path: Path) -> None:
    """The backup's files are read beside the database, not before it: the backup's one
    data file is held from its reader until compare's session waits for the table's lock
    (held by the test, so the database's side stays visible). Before, the backup's side
    had to finish first."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
    backup = Path(run_dump(db, tmp_path).path)  # without fingerprints: files are read
    entry = manifest_of(backup)["tables"][0]["files"][0]
    seen = threading.Event()
    locked = threading.Event()
    go = threading.Event()

    def release_when_the_database_is_read() -> None:
        with table_locked(db.dsn, "public.t"):
            locked.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not seen.is_set():
                waiting = db.fetchval(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity "
                    "WHERE application_name = 'asyncsnap' AND wait_event_type = 'Lock'"
                )
                if waiting:
                    seen.set()
                time.sleep(0.05)
        go.set()  # in any case: a waiting reader must not hang

    releaser = threading.Thread(target=release_when_the_database_is_read, daemon=True)
    releaser.start()
    # The lock is held before compare starts: taken after compare's own, it would wait
    # behind it, which compare refuses ("a lock request waiting behind"), a race CI hit.
    assert locked.wait(30), "the test's session could not lock the table"
    held = open_stored_backup(_HeldStore(backup, entry["path"], go))
    result = run_compare(held, db)
    releaser.join(5)
    assert seen.is_set(), "the database's side did not start while the backup's side read"
    assert result.equal and result.fingerprints_from == "files"


def test_compare_finds_a_large_object_whose_bytes_changed(db: Database, tmp_path: Path) -> None:
    """The large objects are compared by their bytes, not only counted: the same number of
    objects with one byte changed, or one more, is a difference (exit 7) naming them."""
    db.execute(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);"
        "SELECT lo_from_bytea(424242, '\\x0102030405'::bytea);"
        "SELECT lo_from_bytea(424243, convert_to(repeat('x', 300000), 'UTF8'))"
    )
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("compare", str(backup), db.dsn)
    assert run.returncode == 0, run.stderr
    db.execute("SELECT lo_put(424243, 150000, '\\x79'::bytea)")  # one byte of the big one
    changed = run_cli("compare", str(backup), db.dsn)
    db.execute("SELECT lo_put(424243, 150000, '\\x78'::bytea)")  # back as it was
    assert run_cli("compare", str(backup), db.dsn).returncode == 0
    db.execute("SELECT lo_from_bytea(424244, '\\x00'::bytea)")  # one more
    added = run_cli("compare", str(backup), db.dsn)
    hint = "1 difference: the database does not hold exactly the backup's rows"
    failed_with(
        changed, 7, "large objects: the same number of rows (2) but not the same rows", hint
    )
    failed_with(added, 7, "large objects: 3 rows in the database, 2 in the backup", hint)
