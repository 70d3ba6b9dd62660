"""Retention: only complete asyncsnap backups older than the N newest are removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asyncsnap import manifest
from asyncsnap.errors import UsageError
from asyncsnap.prune import prune

from .conftest import Database, run_cli
from .test_dump import run_dump


@pytest.fixture
def directory(db: Database, tmp_path: Path) -> Path:
    """Four real backups (b1 oldest .. b4 newest) among things prune must never touch."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    for i in range(1, 5):
        run_dump(db, tmp_path, name=f"b{i}")
    (tmp_path / "running.partial").mkdir()  # a dump in progress
    (tmp_path / "notes").mkdir()  # someone else's directory
    (tmp_path / "notes" / "manifest.json").write_text('{"format": "other"}')
    (tmp_path / "README.txt").write_text("keep me")
    forged = tmp_path / "forged"  # looks like a backup, but its checksum is wrong
    forged.mkdir()
    body = json.loads((tmp_path / "b1" / manifest.MANIFEST_NAME).read_text())
    body["started_at"] = "1999-01-01T00:00:00Z"
    (forged / manifest.MANIFEST_NAME).write_text(json.dumps(body))
    return tmp_path


def test_prune_keeps_the_newest_and_touches_nothing_else(directory: Path) -> None:
    preview = prune(directory, keep=2, dry_run=True)
    assert [p.name for p in preview.removed] == ["b2", "b1"]
    assert (directory / "b1").exists()  # a dry run removes nothing
    result = prune(directory, keep=2)
    assert [p.name for p in result.kept] == ["b4", "b3"]
    assert [p.name for p in result.removed] == ["b2", "b1"]
    assert sorted(p.name for p in result.ignored) == [
        "README.txt",
        "forged",
        "notes",
        "running.partial",
    ]
    assert sorted(p.name for p in directory.iterdir()) == [
        "README.txt",
        "b3",
        "b4",
        "forged",
        "notes",
        "running.partial",
    ]


def test_prune_cli_and_bad_keep(directory: Path) -> None:
    run = run_cli("prune", str(directory), "--keep", "3")
    assert run.returncode == 0, run.stderr
    assert f"removed {directory / 'b1'}" in run.stdout and "kept 3, removed 1" in run.stdout
    run = run_cli("prune", str(directory), "--keep", "0")
    assert run.returncode == 2
    with pytest.raises(UsageError):
        prune(directory, keep=0)


def test_dump_keep_prunes_after_success_only(db: Database, directory: Path) -> None:
    run = run_cli("dump", db.dsn, "-o", str(directory), "--name", "b5", "--keep", "2")
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["README.txt", "b4", "b5", "forged", "notes", "running.partial"]
    # A failed dump prunes nothing.
    run = run_cli("dump", db.dsn, "-o", str(directory), "-t", "nope", "--keep", "1")
    assert run.returncode == 2 and (directory / "b4").exists()
