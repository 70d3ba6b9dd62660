"""A URL is never taken for a path: object store URLs are refused until they are supported,
file:// URLs name local directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncsnap.errors import UsageError
from asyncsnap.location import local_path

from .conftest import Database, run_cli


def test_paths_and_file_urls_are_local() -> None:
    assert local_path("backups/x", role="-o") == Path("backups/x")
    assert local_path(Path("/srv/b"), role="-o") == Path("/srv/b")
    assert local_path("file:///srv/my%20backups", role="-o") == Path("/srv/my backups")
    assert local_path("file://localhost/srv/b", role="-o") == Path("/srv/b")
    assert local_path("./s3:notes", role="-o") == Path("s3:notes")  # a path with a colon


@pytest.mark.parametrize(
    "url", ["s3://backups/nightly", "gs://b/x", "az://c/d", "S3://B/x", "http://x/y"]
)
def test_urls_are_refused_not_taken_for_paths(url: str) -> None:
    with pytest.raises(UsageError, match=r"URL"):
        local_path(url, role="-o")
    with pytest.raises(UsageError, match=r"URL"):
        local_path(Path(url), role="-o")  # what Path makes of it: s3:/backups/nightly
    with pytest.raises(UsageError, match="another machine"):
        local_path("file://db.internal/srv/b", role="-o")


def test_dump_to_an_s3_url_writes_no_local_directory(db: Database, tmp_path: Path) -> None:
    """`dump -o s3://backups/nightly` wrote ./s3:/backups/nightly/backup_... and exited 0."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    run = run_cli("dump", db.dsn, "-o", "s3://backups/nightly", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    error, hint = run.stderr.splitlines()
    assert error.startswith("error: -o 's3://backups/nightly' is an object store URL")
    assert hint.startswith("hint: ")
    assert list(tmp_path.iterdir()) == [] and run.stdout == ""
    for args in (
        ["verify", "s3://backups/nightly/b"],
        ["inspect", "s3://backups/nightly/b"],
        ["restore", "s3://backups/nightly/b", db.dsn],
        ["prune", "s3://backups/nightly", "--keep", "1"],
    ):
        run = run_cli(*args, cwd=tmp_path)
        assert run.returncode == 2 and "is an object store URL" in run.stderr, (args, run.stderr)
    assert list(tmp_path.iterdir()) == []
