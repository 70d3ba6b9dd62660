"""Retention: only complete asyncsnap backups older than the N newest are removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asyncsnap import format as manifest
from asyncsnap.errors import ExitCode, UsageError
from asyncsnap.prune import prune

from .conftest import Database, run_cli
from .helpers import failed_with
from .test_dump import run_dump

# b1 .. b4 as a dump would name them without --name (the name's time need not be the
# manifest's: age is read from the manifest).
B = {i: f"backup_2026010{i}T000000Z" for i in range(1, 6)}


@pytest.fixture
def directory(db: Database, tmp_path: Path) -> Path:
    """Four real backups (b1 oldest .. b4 newest, with the dump's default form of name) among
    things prune must never touch, one of them a backup someone named."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    run_dump(db, tmp_path, name="before-migration-42")  # the oldest of all
    for i in range(1, 5):
        run_dump(db, tmp_path, name=B[i])
    (tmp_path / "running.partial").mkdir()  # a dump in progress
    (tmp_path / "notes").mkdir()  # someone else's directory
    (tmp_path / "notes" / "manifest.json").write_text('{"format": "other"}')
    (tmp_path / "README.txt").write_text("keep me")
    forged = tmp_path / "forged"  # looks like a backup, but its checksum is wrong
    forged.mkdir()
    body = json.loads((tmp_path / B[1] / manifest.MANIFEST_NAME).read_text())
    body["started_at"] = "1999-01-01T00:00:00Z"
    (forged / manifest.MANIFEST_NAME).write_text(json.dumps(body))
    return tmp_path


def test_prune_keeps_the_newest_and_touches_nothing_else(directory: Path) -> None:
    preview = prune(directory, keep=2, dry_run=True)
    assert [Path(p).name for p in preview.removed] == [B[2], B[1]]
    assert (directory / B[1]).exists()  # a dry run removes nothing
    result = prune(directory, keep=2)
    assert [Path(p).name for p in result.kept] == [B[4], B[3]]
    assert [Path(p).name for p in result.removed] == [B[2], B[1]]
    assert [Path(p).name for p in result.named] == ["before-migration-42"]
    assert sorted(Path(p).name for p in result.ignored) == [
        "README.txt",
        "forged",
        "notes",
        "running.partial",
    ]
    assert sorted(p.name for p in directory.iterdir()) == [
        "README.txt",
        B[3],
        B[4],
        "before-migration-42",
        "forged",
        "notes",
        "running.partial",
    ]


def test_a_named_backup_is_removed_only_when_asked(directory: Path) -> None:
    """The README's own example: a backup named before a migration, in the same directory
    as the nightly ones, survives any --keep; --include-named counts it like the others."""
    assert prune(directory, keep=1).named == [directory / "before-migration-42"]
    assert (directory / "before-migration-42").exists()
    run = run_cli("prune", str(directory), "--keep", "1", "--include-named")
    assert run.returncode == 0, run.stderr
    assert f"removed {directory / 'before-migration-42'}" in run.stdout
    assert not (directory / "before-migration-42").exists() and (directory / B[4]).exists()


def test_prune_cli_and_bad_keep(directory: Path) -> None:
    run = run_cli("prune", str(directory), "--keep", "3")
    assert run.returncode == 0, run.stderr
    assert f"removed {directory / B[1]}" in run.stdout and "kept 3, removed 1" in run.stdout
    assert "kept 1 named backup (--include-named counts them)" in run.stdout
    run = run_cli("prune", str(directory), "--keep", "0")
    failed_with(
        run,
        ExitCode.USAGE,
        "Invalid value for '--keep': Input should be greater than or equal to 1",
        "see `asyncsnap prune --help`",
    )
    with pytest.raises(UsageError):
        prune(directory, keep=0)


def test_dump_keep_prunes_after_success_only(db: Database, directory: Path) -> None:
    run = run_cli("dump", db.dsn, "-o", str(directory), "--name", B[5], "--keep", "2")
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in directory.iterdir())
    assert names == [
        "README.txt",
        B[4],
        B[5],
        "before-migration-42",
        "forged",
        "notes",
        "running.partial",
    ]
    # A failed dump prunes nothing.
    run = run_cli("dump", db.dsn, "-o", str(directory), "-t", "nope", "--keep", "1")
    failed_with(run, ExitCode.USAGE, "no table matches the filters: -t nope", "check -t/-T/-n/-N")
    assert (directory / B[4]).exists()


def test_dumps_in_the_same_second_get_distinct_default_names(db: Database, tmp_path: Path) -> None:
    """Two runs within one second used to collide (exit 4): the second now gets -2, and
    retention counts it as a default-named backup."""
    from datetime import UTC, datetime

    from asyncsnap.storage.output import default_backup_name

    db.execute("CREATE TABLE t (id int)")
    moment = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    first = default_backup_name(tmp_path, moment)
    assert first == "backup_20261125T120000Z"
    run_dump(db, tmp_path, name=first)
    (tmp_path / f"{first}-2.partial").mkdir()  # a run of that second still writing
    assert default_backup_name(tmp_path, moment) == f"{first}-3"
    # Back to back through the CLI, in (almost always) one second: two backups, no error.
    runs = [run_cli("dump", db.dsn, "-o", str(tmp_path / "cli")) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    made = sorted(p.name for p in (tmp_path / "cli").iterdir() if not p.name.startswith("."))
    assert len(made) == 2 and all(manifest.DEFAULT_NAME.fullmatch(n) for n in made)
    assert prune(tmp_path / "cli", keep=1).named == []


def test_prune_given_a_backup_instead_of_its_directory_says_so(directory: Path) -> None:
    """`prune backups/before-migration-42 --keep 1` printed "kept 0, removed 0, left alone
    4" and exit 0: a cron line with the wrong path would never prune, silently."""
    run = run_cli("prune", str(directory / B[4]), "--keep", "1")
    assert run.returncode == 2
    error, hint = run.stderr.splitlines()
    assert error == f"error: {directory / B[4]} is a backup, not a directory of backups"
    assert (
        hint
        == f"hint: give the directory it is in (dump's -o): asyncsnap prune {directory} --keep 1"
    )
    assert (directory / B[4] / manifest.MANIFEST_NAME).is_file()


def test_prune_removes_only_the_files_a_dump_wrote(directory: Path) -> None:
    """A backup being removed that holds files no dump writes (a note, a data file of
    someone else's, a saved manifest) loses only the dump's own files: the rest stays,
    listed. A look-alike name (`.partialx`) holding a complete backup copy is a named
    backup, kept; a `.partial` directory is never touched."""
    old = directory / B[1]
    (old / "data" / "notours.txt").write_text("mine")
    (old / "manifest.json.bak").write_text("{}")
    (old / "notes").mkdir()
    (old / "notes" / "todo.txt").write_text("mine too")
    ours = sorted(str(p.relative_to(old)) for p in old.rglob("*") if p.is_file())
    lookalike = directory / "backup_20260106T000000Z.partialx"
    shutil.copytree(directory / B[2], lookalike)
    partial = directory / "backup_20260107T000000Z.partial"
    shutil.copytree(directory / B[3], partial)

    run = run_cli("prune", str(directory), "--keep", "2")
    assert run.returncode == 0, run.stderr
    left = sorted(str(p.relative_to(old)) for p in old.rglob("*"))
    assert left == [
        "data",
        "data/notours.txt",
        "manifest.json.bak",
        "notes",
        "notes/todo.txt",
    ], (left, ours)
    assert not (directory / B[2]).exists()  # nothing foreign in it: gone whole
    for name in ("data/notours.txt", "manifest.json.bak", "notes/todo.txt"):
        assert f"left alone {old / name} (not written by asyncsnap)" in run.stdout
    assert f"removed {old}\n" in run.stdout and f"removed {directory / B[2]}\n" in run.stdout
    assert run.stdout.splitlines()[-1].startswith("kept 2, removed 2, ")
    assert "3 files not written by asyncsnap" in run.stdout.splitlines()[-1]
    assert (lookalike / manifest.MANIFEST_NAME).is_file()  # named, kept
    assert (partial / manifest.MANIFEST_NAME).is_file()  # a dump's, maybe running
    assert f"left alone {partial} (a dump's .partial directory" in run.stdout
    # The next prune sees a directory without a manifest: not a backup, left alone.
    run = run_cli("prune", str(directory), "--keep", "2")
    assert run.returncode == 0 and (old / "notes" / "todo.txt").is_file()
    assert f"left alone {old} (no manifest.json: not a complete asyncsnap backup)" in run.stdout
