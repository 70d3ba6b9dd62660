"""A URL is never taken for a path: object store URLs name a bucket and prefix, file://
URLs name local directories, other URLs are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncsnap.errors import UsageError
from asyncsnap.storage.location import backup_location, local_path
from asyncsnap.storage.s3 import StoreUrl

from .conftest import Database, clean_env, run_cli


def test_paths_and_file_urls_are_local() -> None:
    assert local_path("backups/x", role="-o") == Path("backups/x")
    assert local_path(Path("/srv/b"), role="-o") == Path("/srv/b")
    assert local_path("file:///srv/my%20backups", role="-o") == Path("/srv/my backups")
    assert local_path("file://localhost/srv/b", role="-o") == Path("/srv/b")
    assert local_path("./s3:notes", role="-o") == Path("s3:notes")  # a path with a colon


@pytest.mark.parametrize(
    "url", ["s3://backups/nightly", "gs://bucket/x", "az://container/d", "S3://backups/x"]
)
def test_store_urls_are_store_locations_never_paths(url: str) -> None:
    assert isinstance(backup_location(url, role="-o"), StoreUrl)
    with pytest.raises(UsageError, match=r"URL"):
        local_path(url, role="-o")  # where only a local file will do (a key file)
    with pytest.raises(UsageError, match=r"URL"):
        local_path(Path(url), role="-o")  # what Path makes of it: s3:/backups/nightly


def test_other_urls_are_refused() -> None:
    for url in ("http://x/y", "ftp://x/y"):
        with pytest.raises(UsageError, match=r"URL, not a directory"):
            backup_location(url, role="-o")
    with pytest.raises(UsageError, match="another machine"):
        backup_location("file://db.internal/srv/b", role="-o")


def test_dump_to_an_unreachable_store_writes_no_local_directory(
    db: Database, tmp_path: Path
) -> None:
    """`dump -o s3://backups/nightly` once wrote ./s3:/backups/nightly/backup_... and exited
    0; now it goes to the store, and a store that does not answer fails with exit 4 before
    the database is read, leaving nothing here."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env = {
        **clean_env(),
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
        "ASYNCSNAP_STORE_RETRY_SECONDS": "1",
    }
    for args in (
        ["dump", db.dsn, "-o", "s3://backups/nightly"],
        ["verify", "s3://backups/nightly/b"],
        ["inspect", "s3://backups/nightly/b"],
        ["restore", "s3://backups/nightly/b", db.dsn],
        ["prune", "s3://backups/nightly", "--keep", "1"],
    ):
        run = run_cli(*args, "--endpoint-url", "http://127.0.0.1:9", cwd=tmp_path, env=env)
        assert run.returncode == 4, (args, run.stderr)
        error, hint = run.stderr.splitlines()
        assert error.startswith("error: could not ") and "s3://backups/nightly" in error, error
        assert hint.startswith("hint: ") and run.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value",
    ["s3:/bucket/prefix", "s3:bucket", "S3:/KEY:SECRET@bucket/prefix", "gs:/b/x", "mailto:x"],
)
def test_anything_that_starts_like_a_url_is_never_a_path(value: str, tmp_path: Path) -> None:
    """`-o s3:/bucket/prefix` (one slash) wrote ./s3:/bucket/... and exited 0; with
    s3:/KEY:SECRET@bucket the secret became a directory name and was printed. Every
    string that starts with a scheme and a colon is a URL or refused, for dump, verify
    and prune, and nothing after the scheme is printed."""
    with pytest.raises(UsageError, match="starts like a URL") as caught:
        backup_location(value, role="-o")
    assert "SECRET" not in str(caught.value) and "bucket" not in str(caught.value)
    for args in (
        ["dump", "postgresql://nobody@127.0.0.1:1/x", "-o", value],
        ["verify", value],
        ["prune", value, "--keep", "1"],
    ):
        run = run_cli(*args, cwd=tmp_path)
        assert run.returncode == 2, (args, run.stderr)
        error, hint = run.stderr.splitlines()
        assert error.startswith("error: ") and "starts like a URL" in error, error
        assert hint.startswith("hint: an object store is s3://bucket/prefix (two slashes)")
        assert "SECRET" not in run.stderr + run.stdout
    assert list(tmp_path.iterdir()) == []  # no directory named s3: or anything else


def test_credentials_and_query_strings_are_never_printed(tmp_path: Path) -> None:
    for value in ("s3://bucket/x?secret=hunter2", "s3://KEY:hunter2@bucket/x"):
        run = run_cli("verify", value, cwd=tmp_path)
        assert run.returncode == 2, run.stderr
        assert "hunter2" not in run.stderr + run.stdout, run.stderr
