"""Private scratch directories: where plaintext may sit while a command runs, and only
then.

An encrypted backup's plaintext (pg_dump's archive before it is encrypted, the archive
restore decrypts for pg_restore, the long lines diff sets aside, DuckDB's spill files)
lives only in a ``PrivateScratch``: ``$TMPDIR/asyncsnap-scratch-*``, 0700, removed when
the command ends, and removed by the next run of asyncsnap when the command was killed
before it could (``remove_abandoned_scratch``, run by every command's start)."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

SCRATCH_PREFIX = "asyncsnap-scratch-"  # private directories in the temporary directory
_SCRATCH_HELD = ".held"  # locked (flock) by the directory's process for as long as it lives
_SCRATCH_GRACE = 10.0  # seconds: a directory younger than this may not be locked yet


class PrivateScratch:
    """A private (0700) temporary directory, made on first use and removed by ``remove``:
    where pg_dump's archive is written before it is encrypted or stored, where restore
    stages an archive pg_restore cannot read in place, where diff keeps long lines and
    DuckDB spills. Of an encrypted backup, all that is plaintext.

    It is ``$TMPDIR/asyncsnap-scratch-*``, and its process holds a lock on a file in it
    for as long as the process lives: a run killed before its clean-up (SIGKILL, a power
    cut) leaves the directory unlocked, and the next run of asyncsnap removes it
    (``remove_abandoned_scratch``). A lock, not a process id: ids are reused, and are not
    comparable across containers that share the directory."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._held: int | None = None

    def path(self) -> Path:
        if self._path is None:
            remove_abandoned_scratch()
            path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            held = os.open(path / _SCRATCH_HELD, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(held, fcntl.LOCK_EX)
            self._path, self._held = path, held
        return self._path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
        if self._held is not None:
            os.close(self._held)
            self._held = None


def remove_abandoned_scratch(directory: str | None = None) -> list[str]:
    """Remove the scratch directories of runs that are gone (this user's, unlocked, older
    than a few seconds) from ``directory`` (the temporary directory); their names."""
    removed: list[str] = []
    base = directory or tempfile.gettempdir()
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(SCRATCH_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        try:
            info = os.lstat(entry.path)
        except OSError:
            continue
        young = time.time() - info.st_mtime < _SCRATCH_GRACE
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or young:
            continue
        try:
            held = os.open(
                os.path.join(entry.path, _SCRATCH_HELD), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except FileNotFoundError:
            held = None  # killed between making the directory and locking it
        except OSError:
            continue
        try:
            if held is not None:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: its process lives
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
        except BlockingIOError:
            continue
        finally:
            if held is not None:
                os.close(held)
    return removed
