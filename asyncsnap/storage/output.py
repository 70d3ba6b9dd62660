"""Where a backup is written, for every command that writes one (a dump, an increment):
its default name, a store's prefix opened and the name checked free, what a failed run
leaves, and the manifest's entry of a written file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import StoreFailed
from ..events import EventCallback, Notice
from ..format import DEFAULT_NAME_FORMAT, BackupFile
from .files import BackupDirectory, BackupTarget, OutputLock, StoredFile
from .prefix import BackupPrefix, list_backups
from .s3 import S3Store, StoreUrl


def default_backup_name(output_dir: Path, now: datetime | None = None) -> str:
    """``backup_YYYYMMDDTHHMMSSZ`` in UTC; when a backup (or a dump's ``.partial``) of that
    second is already in ``output_dir``, the first free of ``-2`` .. ``-99`` after it, so
    that runs started in the same second do not collide (``manifest.DEFAULT_NAME``)."""
    return _first_free_name(lambda candidate: BackupDirectory.is_free(output_dir, candidate), now)


def _first_free_name(is_free: Callable[[str], bool], now: datetime | None = None) -> str:
    """``backup_YYYYMMDDTHHMMSSZ`` for ``now``, or the first of ``-2`` .. ``-99`` after it
    that ``is_free``."""
    base = (now or datetime.now(UTC)).strftime(DEFAULT_NAME_FORMAT)
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base}-{n}"
        if is_free(candidate):
            return candidate
    return base  # 99 in one second: check_free names the collision


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def open_store_output(url: StoreUrl, name: str | None) -> tuple[S3Store, str]:
    """Open the store, check that the credentials may list the prefix and that the name is
    free (``BackupPrefix.create`` claims it later, conditionally)."""
    store = S3Store(url)
    store.check_access()
    if name is None:
        taken = {b.name for b in list_backups(store)}
        name = _first_free_name(lambda candidate: candidate not in taken)
    BackupPrefix.check_free(store, name)
    return store, name


def abandon_target(backup: BackupTarget, keep_partial: bool, emit: EventCallback) -> None:
    """After a failure: remove what was written, or with ``keep_partial`` keep the files
    written so far, but never a manifest, so it cannot pass for a backup."""
    try:
        kept = backup.abandon(keep_partial)
    except StoreFailed as exc:
        emit(
            Notice(
                f"could not remove the incomplete backup at {backup.path} ({exc.message}); "
                "it has no manifest, and prune removes it once it is a day old"
            )
        )
        return
    if kept is not None:
        emit(Notice(f"kept the incomplete backup at {kept} (--keep-partial)"))


def file_entry(f: StoredFile, pages: tuple[int, int | None] | None) -> BackupFile:
    return BackupFile(
        path=f.path,
        rows=f.rows,
        bytes=f.bytes,
        stored_bytes=f.stored_bytes,
        sha256=f.sha256,
        longest_line=f.longest_line or None,
        pages=pages,
        fingerprint=f.fingerprint,
    )


def claim_target(
    output: Path | StoreUrl, store: S3Store | None, name: str, recipients: list[Any] | None
) -> tuple[BackupTarget, OutputLock | None]:
    """Where a run writes ``name``: the store's claim (a conditional write), or the
    ``<name>.partial`` directory under the output directory's lock, which the caller
    releases once the backup has its final name (None for a store). Either keeps two
    runs of one name apart. Blocking (the directories are created and fsynced): call it
    in a worker thread, just before anything is written, so that a run failing earlier
    leaves no trace."""
    if store is not None:
        return BackupPrefix.create(store, name, recipients), None
    assert isinstance(output, Path)
    BackupDirectory.prepare_parent(output)
    lock = OutputLock(output)
    lock.acquire()
    try:
        return BackupDirectory.create(output, name, recipients), lock
    except BaseException:
        lock.release()
        raise
