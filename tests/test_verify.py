"""verify and inspect, offline: every kind of damage is named; a good backup passes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncsnap import format as manifest
from asyncsnap.errors import ExitCode, VerificationFailed
from asyncsnap.storage.backup import open_backup
from asyncsnap.verify import verify

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli
from .helpers import failed_with, manifest_of, reseal
from .test_dump import SHOP, run_dump


@pytest.fixture
def backup(db: Database, tmp_path: Path) -> Path:
    db.execute(SHOP)
    return Path(run_dump(db, tmp_path / "out", name="b").path)


@pytest.fixture
def empty(postgres: Postgres) -> Iterator[Database]:
    with fresh_database(postgres, "asyncsnap_verify_target") as database:
        yield database


def orders_file(backup: Path) -> Path:
    return next((backup / "data").glob("public.orders-*"))


def test_good_backup_verifies(backup: Path) -> None:
    result = verify(backup)
    assert result.ok and result.files == 4 and result.rows == 2070 and result.tables == 4
    run = run_cli("verify", str(backup))
    assert run.returncode == 0 and run.stdout.startswith(
        f"OK {backup}: 4 tables, 4 files, 2070 rows"
    )


def test_corrupted_byte_names_the_file(backup: Path) -> None:
    f = orders_file(backup)
    raw = bytearray(f.read_bytes())
    raw[-10] ^= 0xFF
    f.write_bytes(bytes(raw))
    result = verify(backup)
    assert [p.file for p in result.problems] == [f"data/{f.name}"]
    run = run_cli("verify", str(backup))
    failed_with(
        run,
        ExitCode.VERIFY,
        f"data/{f.name}: cannot be decompressed: ",
        "1 problem; do not restore from this backup",
    )


def test_truncated_file(backup: Path) -> None:
    f = orders_file(backup)
    f.write_bytes(f.read_bytes()[:-100])
    [problem] = verify(backup).problems
    assert problem.file == f"data/{f.name}"


def test_missing_file(backup: Path) -> None:
    f = orders_file(backup)
    f.unlink()
    [problem] = verify(backup).problems
    assert problem.file == f"data/{f.name}" and "missing" in problem.message


def test_extra_file(backup: Path) -> None:
    (backup / "data" / "sneaky.ndjson").write_text("{}\n")
    [problem] = verify(backup).problems
    assert problem.file == "data/sneaky.ndjson" and "not listed" in problem.message


def test_edited_manifest(backup: Path) -> None:
    path = backup / manifest.MANIFEST_NAME
    path.write_text(path.read_text().replace('"rows": 500', '"rows": 501', 1))
    with pytest.raises(VerificationFailed, match="does not match its own checksum"):
        verify(backup)
    run = run_cli("verify", str(backup))
    failed_with(
        run,
        ExitCode.VERIFY,
        f"{path} does not match its own checksum: it was edited or damaged",
    )


def test_row_count_mismatch_with_valid_hash(backup: Path) -> None:
    """A forged manifest whose sums are right but counts wrong is still caught."""

    def edit(body: dict[str, object]) -> None:
        for t in body["tables"]:  # type: ignore[attr-defined]
            if t["name"] == "orders":
                t["rows"] = t["files"][0]["rows"] = 499

    reseal(backup, edit)
    [problem] = verify(backup).problems
    assert "has 500 rows, the manifest says 499" in problem.message


def test_line_with_wrong_keys_is_reported_with_its_number(backup: Path) -> None:
    def edit(body: dict[str, object]) -> None:
        for t in body["tables"]:  # type: ignore[attr-defined]
            if t["name"] == "customers":
                t["columns"][1]["name"] = "renamed"

    reseal(backup, edit)
    [problem] = verify(backup).problems
    assert problem.line == 1 and "renamed" in problem.message


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.ndjson", "data/../../x", "data\\x.ndjson", "", "data//x"]
)
def test_malicious_paths_rejected_before_any_file_is_opened(backup: Path, path: str) -> None:
    def edit(body: dict[str, object]) -> None:
        body["tables"][0]["files"][0]["path"] = path  # type: ignore[index]

    reseal(backup, edit)
    with pytest.raises(VerificationFailed, match=r"unsafe path|leaves the backup"):
        open_backup(backup)


def test_symlink_out_of_the_backup_rejected(backup: Path, tmp_path: Path) -> None:
    f = orders_file(backup)
    outside = tmp_path / "outside.ndjson.zst"
    shutil.copy(f, outside)
    f.unlink()
    os.symlink(outside, f)
    with pytest.raises(VerificationFailed, match="symlink"):
        open_backup(backup)


def test_a_data_directory_that_is_a_symlink_is_rejected(backup: Path, tmp_path: Path) -> None:
    """The data directory a symlink to a copy of itself elsewhere: refused, though the
    files' own names are plain (each manifest's directories are checked once, for all its
    files: ``format.safe_relative_path``)."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(backup / "data", outside)
    shutil.rmtree(backup / "data")
    os.symlink(outside, backup / "data")
    with pytest.raises(VerificationFailed, match="goes through a symlink"):
        open_backup(backup)


def test_a_symlink_after_plain_files_of_its_directory_is_rejected(
    backup: Path, tmp_path: Path
) -> None:
    """Each file of a directory already checked is still looked at itself: the manifest's
    last data file a symlink (to a copy of itself) is refused."""
    manifest = json.loads((backup / "manifest.json").read_text())
    paths = [f["path"] for t in manifest["tables"] for f in t["files"]]
    assert len(paths) > 1 and all(p.startswith("data/") for p in paths), paths
    last = backup / paths[-1]  # checked last
    outside = tmp_path / last.name
    shutil.copy(last, outside)
    last.unlink()
    os.symlink(outside, last)
    with pytest.raises(VerificationFailed, match="goes through a symlink"):
        open_backup(backup)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rows", -1, "non-negative integer"),
        ("rows", "12", "non-negative integer"),
        ("rows", 2.0**70, "non-negative integer"),  # what JSON readers make of 2**70
        ("rows", 1.5, "non-negative integer"),
        ("sha256", "abc", "SHA-256"),
        ("stored_bytes", True, "non-negative integer"),
    ],
)
def test_wrong_types_and_absurd_values_rejected(
    backup: Path, field: str, value: object, message: str
) -> None:
    def edit(body: dict[str, object]) -> None:
        body["tables"][0]["files"][0][field] = value  # type: ignore[index]

    reseal(backup, edit)
    with pytest.raises(VerificationFailed, match=message):
        open_backup(backup)


def test_partial_directory_refused(backup: Path) -> None:
    partial = backup.with_name(backup.name + ".partial")
    backup.rename(partial)
    run = run_cli("verify", str(partial))
    failed_with(
        run,
        ExitCode.VERIFY,
        f"{partial} is an incomplete backup (a dump that failed, was interrupted or is still",
        "use a backup directory without the .partial suffix",
    )


def test_inspect_table_and_json(backup: Path) -> None:
    run = run_cli("inspect", str(backup))
    assert run.returncode == 0, run.stderr
    assert "public.orders" in run.stdout and "restore order" in run.stdout
    run = run_cli("inspect", str(backup), "--json")
    summary = json.loads(run.stdout)
    assert summary["totals"]["rows"] == 2070
    assert {t["name"]: t["rows"] for t in summary["tables"]}["order_lines"] == 1500
    assert summary["snapshot"]["id"]
    assert summary["slot"] is None  # made without --slot


def test_inspect_lists_each_sequence_with_its_value(backup: Path) -> None:
    """A trial user found no sequence in inspect's output (only in manifest.json)."""
    summary = json.loads(run_cli("inspect", str(backup), "--json").stdout)
    values = {q["name"]: q for q in summary["sequence_values"]}
    assert len(values) == summary["sequences"] == 3
    orders = values["orders_id_seq"]
    assert orders["last_value"] == 500 and orders["is_called"] is True
    assert orders["owned_by"] == "public.orders.id"
    shown = run_cli("inspect", str(backup)).stdout
    assert "public.orders_id_seq" in shown and "public.orders.id" in shown


def test_verify_of_the_output_directory_points_at_a_backup_in_it(backup: Path) -> None:
    """`verify /backups` (dump's -o, not a backup) said a dump had failed or been
    interrupted; it is a directory of backups, and the hint names one."""
    run = run_cli("verify", str(backup.parent))
    assert run.returncode == 5
    error, hint = run.stderr.splitlines()
    assert error.startswith(f"error: {backup.parent} has no manifest.json")
    assert hint == f"hint: it holds backups (dump's -o): give one of them, e.g. {backup}"


def replaced_by(path: Path, kind: str) -> None:
    """``path`` replaced by a FIFO (no writer: a read of it waits forever), a directory,
    or a symbolic link to a device that never ends."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("fifo", "is a FIFO, not a regular file"),
        ("directory", "is a directory, not a regular file"),
    ],
)
def test_a_data_file_that_is_not_a_regular_file_is_named_not_waited_for(
    db: Database, empty: Database, backup: Path, kind: str, what: str
) -> None:
    """A hostile backup whose data file is a FIFO hung verify, restore and compare in
    open(), with no word, forever; a directory raised IsADirectoryError. Now each is
    named, and verify lists it as one of the backup's problems."""
    f = orders_file(backup)
    replaced_by(f, kind)
    [problem] = verify(backup).problems
    assert problem.file == f"data/{f.name}" and problem.message == what
    run = run_cli("verify", str(backup), timeout=60)
    failed_with(run, ExitCode.VERIFY, f"data/{f.name}: {what}", None)
    for command in ("restore", empty.dsn), ("compare", db.dsn):
        run = run_cli(command[0], str(backup), command[1], timeout=60)
        failed_with(run, ExitCode.VERIFY, f"data/{f.name} {what}", "the backup is damaged")


def test_a_manifest_that_is_a_fifo_or_a_device_is_refused_at_once(backup: Path) -> None:
    """The manifest, read before anything else, is refused the same way: a FIFO would
    hang, ``/dev/zero`` would be read until memory ran out."""
    manifest_path = backup / manifest.MANIFEST_NAME
    replaced_by(manifest_path, "fifo")
    with pytest.raises(VerificationFailed, match="is a FIFO, not a regular file"):
        open_backup(backup)
    replaced_by(manifest_path, "device")
    run = run_cli("verify", str(backup), timeout=60)
    failed_with(run, ExitCode.VERIFY, f"{manifest_path} is a character device", "asyncsnap")


def _pages_faulted(*args: str, **env: str) -> int:
    """The pages the ``asyncsnap`` command faulted in (minor faults), as a child process:
    its own, from ``wait4`` (RUSAGE_CHILDREN would add any child of an earlier test that
    ``subprocess`` reaps meanwhile)."""
    # No allocator setting from outside: the test's own only. (distributed's Nanny sets
    # MALLOC_TRIM_THRESHOLD_ in its parent's environment, so after a cluster test on the
    # same worker every command took that as the user's setting and was not tuned.)
    inherited = {
        k: v
        for k, v in clean_env().items()
        if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**inherited, **env},
    )
    assert proc.stderr is not None
    with proc.stderr:
        errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, errors
    return usage.ru_minflt


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_blocks_of_lines_are_not_faulted_in_page_by_page(db: Database, tmp_path: Path) -> None:
    """The command sets glibc's allocator to keep freed blocks of lines for the next ones
    (``cli.app._MALLOC_TUNING``). Without it, each 4 MiB block a reader thread
    decompressed was mapped anew and faulted in a page at a time: about one fault per
    page of lines read (a verify of 650 MB of lines: 184,000 faults, a fifth of its
    time). Now a verify of ~115 MB of lines faults in far fewer pages than the lines
    fill, above what a verify of one small table costs."""
    db.execute(
        "CREATE TABLE small (id int); INSERT INTO small VALUES (1);"
        "CREATE TABLE wide (id int, v text);"
        "INSERT INTO wide SELECT g, repeat('x', 200) FROM generate_series(1, 500000) g"
    )
    small = Path(run_dump(db, tmp_path, name="small", tables=["public.small"]).path)
    big = Path(run_dump(db, tmp_path, name="big", tables=["public.wide"]).path)
    line_pages = sum(f["bytes"] for t in manifest_of(big)["tables"] for f in t["files"]) // 4096
    assert line_pages > 25_000
    baseline = _pages_faulted("verify", str(small), "-q")
    extra = _pages_faulted("verify", str(big), "-q") - baseline
    assert extra < line_pages / 4, (extra, line_pages)
    # A user's own setting wins, given by its variable or as a glibc tunable.
    for setting in (
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.mmap_threshold=131072"},
    ):
        extra = _pages_faulted("verify", str(big), "-q", **setting) - baseline
        assert extra > line_pages / 2, (setting, extra, line_pages)
