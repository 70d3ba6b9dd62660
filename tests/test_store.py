"""The store interface (``asyncsnap.storage.store``): one contract, held by every store
(a local directory, S3 on a real SeaweedFS server, memory); and the backup layer above it,
which reads and verifies a backup the same way from any of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncsnap.errors import OutputExists
from asyncsnap.storage.backup import DataFileReader, open_backup, open_stored_backup
from asyncsnap.storage.s3 import S3Store, StoreUrl
from asyncsnap.storage.store import LocalStore, MemoryStore, ObjectMissing, Store, exists
from asyncsnap.verify import verify_backup
from throwaway.s3 import BUCKET, S3Server, s3_server

from .conftest import Database, run_cli
from .helpers import flip_bit_mid_file


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    if request.param == "memory":
        return MemoryStore()
    server: S3Server = request.getfixturevalue("s3")
    url = StoreUrl.parse(f"s3://{BUCKET}/contract-{tmp_path.name}")
    return S3Store(url, environ=server.env())


def _read(store: Store, name: str) -> bytes:
    return b"".join(store.open_read(name, chunk_size=3))


def test_put_then_read_back_in_chunks(store: Store) -> None:
    store.put("a/b/one.bin", b"0123456789")
    assert _read(store, "a/b/one.bin") == b"0123456789"
    store.put("a/b/one.bin", b"replaced")
    assert _read(store, "a/b/one.bin") == b"replaced"


def test_a_missing_object_is_object_missing(store: Store) -> None:
    with pytest.raises(ObjectMissing):
        store.open_read("no/such/object")
    assert not exists(store, "no/such/object")


def test_put_new_refuses_a_name_that_is_taken(store: Store) -> None:
    store.put_new("claim.json", b"first")
    with pytest.raises(OutputExists):
        store.put_new("claim.json", b"second")
    assert _read(store, "claim.json") == b"first"


def test_a_sink_appears_only_when_finished(store: Store) -> None:
    sink = store.sink("data/t.ndjson")
    sink.write(b"line 1\n")
    sink.write(b"line 2\n")
    assert not exists(store, "data/t.ndjson")
    sink.finish()
    assert _read(store, "data/t.ndjson") == b"line 1\nline 2\n"


def test_a_discarded_sink_leaves_nothing(store: Store) -> None:
    sink = store.sink("data/gone.ndjson")
    sink.write(b"half a file")
    sink.discard()
    assert not exists(store, "data/gone.ndjson")
    assert [o.key for o in store.objects()] == []


def test_listing_and_delete(store: Store) -> None:
    for name in ("x/1", "x/2", "y/1"):
        store.put(name, name.encode())
    assert sorted(o.key for o in store.objects()) == ["x/1", "x/2", "y/1"]
    assert sorted((o.key, o.size) for o in store.objects("x")) == [("x/1", 3), ("x/2", 3)]
    store.delete(["x/1", "x/1", "never/there"])  # gone already: not an error
    assert sorted(o.key for o in store.objects()) == ["x/2", "y/1"]


def test_a_local_store_refuses_names_that_leave_it(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "root")
    for bad in ("../outside", "a/../../b", "/etc/passwd", "a//b", ""):
        with pytest.raises(ValueError, match="not a store name"):
            local.put(bad, b"x")
    assert not (tmp_path / "outside").exists()


def _copy_into(backup_dir: Path, target: Store, name: str) -> None:
    for path in sorted(backup_dir.rglob("*")):
        if path.is_file():
            target.put(f"{name}/{path.relative_to(backup_dir).as_posix()}", path.read_bytes())


def test_one_backup_reads_and_verifies_alike_from_every_store(
    db: Database, tmp_path: Path, store: Store
) -> None:
    """A dump's files put into any store read back through the same backup layer: the
    manifest checked, every file hashed and its lines counted, the same rows."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute("INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 5000) g")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path / "out"), "--name", "b")
    assert run.returncode == 0, run.stderr
    local = open_backup(tmp_path / "out" / "b")
    _copy_into(tmp_path / "out" / "b", store, "b")

    stored = open_stored_backup(store, "b")
    assert stored.source.where == f"{store.where}/b"
    result = verify_backup(stored)
    assert result.ok and result.rows == 5000, result.problems
    (table,) = stored.tables
    reader = DataFileReader(stored, table.files[0])
    lines = list(reader)
    reader.finish()
    (local_table,) = local.tables
    local_reader = DataFileReader(local, local_table.files[0])
    assert lines == list(local_reader) and len(b"".join(lines).splitlines()) == 5000


def test_a_damaged_object_fails_verify_in_every_store(
    db: Database, tmp_path: Path, store: Store
) -> None:
    db.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 20000) g")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path / "out"), "--name", "b")
    assert run.returncode == 0, run.stderr
    (data_file,) = (tmp_path / "out" / "b" / "data").iterdir()
    flip_bit_mid_file(data_file)
    _copy_into(tmp_path / "out" / "b", store, "b")
    result = verify_backup(open_stored_backup(store, "b"))
    (problem,) = result.problems
    assert problem.file == f"data/{data_file.name}", problem
    assert problem.message.startswith("cannot be decompressed: zstd"), problem
