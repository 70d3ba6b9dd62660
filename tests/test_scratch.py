"""Private scratch directories: plaintext of an encrypted backup outlives no command. A
killed dump or restore leaves its directory; the next run of asyncsnap removes it, and
never a directory a live run holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyrage import x25519

from asyncsnap.scratch import SCRATCH_PREFIX, PrivateScratch, remove_abandoned_scratch

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli

HOLD = """
import sys, time
from asyncsnap.scratch import PrivateScratch
scratch = PrivateScratch()
print(scratch.path(), flush=True)
time.sleep(60)
"""


def _age(path: Path, seconds: float = 60) -> None:
    """As if made ``seconds`` ago (past the grace a directory has to be locked in)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_only_directories_whose_process_is_gone_are_removed(tmp_path: Path) -> None:
    live = subprocess.Popen(
        [sys.executable, "-c", HOLD],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(TMPDIR=str(tmp_path)),
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert live.stdout is not None
        held = Path(live.stdout.readline().strip())
        _age(held)
        gone = tmp_path / f"{SCRATCH_PREFIX}gone"  # its process was killed: unlocked
        gone.mkdir(mode=0o700)
        (gone / ".held").touch()
        (gone / "schema.pgdump").write_bytes(b"PGDMP plaintext")
        _age(gone)
        young = tmp_path / f"{SCRATCH_PREFIX}young"  # just made, not locked yet
        young.mkdir(mode=0o700)
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "keep").touch()
        link = tmp_path / f"{SCRATCH_PREFIX}link"  # a symbolic link is never followed
        link.symlink_to(target)
        other = tmp_path / "asyncsnap-other"
        other.mkdir()
        _age(other)

        assert remove_abandoned_scratch(str(tmp_path)) == [gone.name]
        assert not gone.exists()
        assert held.is_dir() and young.is_dir() and other.is_dir()
        assert (target / "keep").exists() and link.is_symlink()
    finally:
        live.kill()
        live.communicate()
    assert remove_abandoned_scratch(str(tmp_path)) == [held.name]  # its process is gone now


def test_a_scratch_directory_is_private_and_removed_with_its_lock(tmp_path: Path) -> None:
    os.environ["TMPDIR"], before = str(tmp_path), os.environ.get("TMPDIR")
    import tempfile

    tempfile.tempdir = None
    try:
        first, second = PrivateScratch(), PrivateScratch()
        a, b = first.path(), second.path()
        _age(a)
        assert a != b and a.name.startswith(SCRATCH_PREFIX)
        assert a.stat().st_mode & 0o777 == 0o700
        assert remove_abandoned_scratch() == []  # both held, by this process
        first.remove()
        second.remove()
        assert list(tmp_path.iterdir()) == []
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before
        tempfile.tempdir = None


def _scratch(where: Path) -> list[Path]:
    return sorted(where.glob(f"{SCRATCH_PREFIX}*"))


def _kill_when(proc: subprocess.Popen[str], ready: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def test_killed_encrypted_dump_and_restore_leave_no_plaintext_past_the_next_run(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """pg_dump's unencrypted archive (a dump's ``.capture.tmp``) and the decrypted archive
    restore hands pg_restore (``schema.pgdump``) stayed in the temporary directory after
    a SIGKILL, and no later run removed them. They are there after the kill (the kill
    lands at that moment), and gone after the next run of any command."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = clean_env(TMPDIR=str(temp))
    identity = x25519.Identity.generate()
    (tmp_path / "key.txt").write_text(f"{identity}\n")
    key = str(tmp_path / "key.txt")
    public = str(identity.to_public())
    db.execute(
        "DO $$ BEGIN FOR i IN 1..800 LOOP "
        "EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i); END LOOP; END $$;"
        "CREATE TABLE big (id int, v text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 400000) g"
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(out)]
    dump = subprocess.Popen(
        [*command, "--name", "killed", "--encrypt-to", public],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_when(dump, lambda: list(temp.glob(f"{SCRATCH_PREFIX}*/.capture.tmp")), "the capture")
    left = _scratch(temp)
    assert len(left) == 1 and (left[0] / ".capture.tmp").exists()

    run = run_cli("dump", db.dsn, "-o", str(out), "--name", "b", "--encrypt-to", public, env=env)
    assert run.returncode == 0, run.stderr
    assert _scratch(temp) == left  # younger than the grace: may be a run just starting
    _age(left[0])

    with fresh_database(postgres, "asyncsnap_scratch") as target:
        restore = subprocess.Popen(
            [sys.executable, "-m", "asyncsnap", "restore", str(out / "b"), target.dsn, "-i", key],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _kill_when(
            restore,
            lambda: (
                list(temp.glob(f"{SCRATCH_PREFIX}*/schema.pgdump"))
                and target.fetchval(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = "
                    "current_database() AND state = 'active' AND query LIKE 'COPY %'"
                )
            ),
            "the restore loading",
        )
    assert not left[0].exists()  # removed by the restore's start
    left = _scratch(temp)
    assert len(left) == 1 and (left[0] / "schema.pgdump").read_bytes().startswith(b"PGDMP")
    _age(left[0])
    run = run_cli("inspect", str(out / "b"), env=env)
    assert run.returncode == 0, run.stderr
    assert _scratch(temp) == []
