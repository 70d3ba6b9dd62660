"""Retention: keep the N newest complete backups in a directory, remove older ones.

Only directories that are complete asyncsnap backups count: a ``manifest.json`` that
passes the reader's format, version, checksum and field checks. Everything else is left
alone: ``.partial`` directories (a dump may be writing them), other files and directories,
symlinks, and backups whose manifest does not check out (they are reported, not
removed). Newest means the latest ``started_at`` in the manifest. The output directory's
lock is held while pruning, so a prune never races a dump's final rename.

Removing a backup removes the files its dump wrote (the manifest first, then what it lists
under the names a dump gives, ``SHA256SUMS``) and the directories that are then empty;
a file someone put inside a backup stays where it is and is reported
(``PruneResult.foreign``), never deleted with the backup.

Only backups with the name a dump gives by default (``backup_YYYYMMDDTHHMMSSZ``) are
counted and removed: a backup someone named (``dump --name before-migration-42``) is kept
and reported as named, unless ``include_named`` (``prune --include-named``) asks for it to
be treated like the others.

In an object store (``s3://bucket/prefix``) the same rules apply to ``<prefix>/<NAME>/``
(``bucket.prune_prefix``), and a dump that was killed (a claim without a manifest, older
than ``abandoned_after``) is removed too: locally the lock tells a running dump from a
dead one; a store has only the claim's age.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from . import format as manifest
from .errors import OutputNotWritable, UsageError, VerificationFailed
from .format import (
    DATA_DIR,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    SCHEMA_DIR,
    SUMS_NAME,
    Backup,
    written_by_dump,
)
from .storage.backup import LocalSource
from .storage.files import OutputLock
from .storage.location import backup_location
from .storage.retention import Candidate, apply_policy


@dataclass(frozen=True)
class PruneResult:
    """What ``prune`` kept, removed (or would remove, with ``dry_run``) and left alone."""

    # Paths, or URLs for a prefix in an object store
    kept: list[Path | str] = field(default_factory=list)
    removed: list[Path | str] = field(default_factory=list)
    ignored: list[Path | str] = field(default_factory=list)  # not complete asyncsnap backups
    named: list[Path | str] = field(default_factory=list)  # complete, named by someone: kept
    dry_run: bool = False
    abandoned: list[Path | str] = field(default_factory=list)  # killed dumps (stores only)
    # Why each of ``ignored`` was left alone, by its str()
    reasons: dict[str, str] = field(default_factory=dict)
    # Files (objects) inside removed backups that no dump writes: left where they are
    foreign: list[Path | str] = field(default_factory=list)


def prune(
    directory: str | Path,
    *,
    keep: int,
    dry_run: bool = False,
    locked: bool = False,
    include_named: bool = False,
    abandoned_after: timedelta | None = None,
) -> PruneResult:
    """Remove complete backups in ``directory`` older than the ``keep`` newest.

    :param keep: how many of the newest complete backups to keep (at least 1).
    :param dry_run: report what would be removed, remove nothing.
    :param locked: the caller already holds the directory's lock (``dump --keep``).
    :param include_named: count and remove backups with names of their own too.
    :param abandoned_after: in an object store, remove dumps whose claim is older than
        this and that have no manifest (default ``bucket.ABANDONED_AFTER``, a day).

    >>> prune("/backups/shop", keep=7).removed  # doctest: +SKIP
    """
    if keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}", hint="--keep 7 keeps a week")
    where = backup_location(directory, role="DIR")
    if not isinstance(where, Path):
        from .storage.prefix import ABANDONED_AFTER, prune_prefix

        found = prune_prefix(
            where,
            keep=keep,
            dry_run=dry_run,
            include_named=include_named,
            abandoned_after=ABANDONED_AFTER if abandoned_after is None else abandoned_after,
        )

        def urls(names: list[str]) -> list[Path | str]:
            return [f"{where}/{name}" for name in names]

        return PruneResult(
            kept=urls(found.kept),
            removed=urls(found.removed),
            ignored=urls(found.ignored),
            named=urls(found.named),
            dry_run=dry_run,
            abandoned=urls(found.abandoned),
            reasons={f"{where}/{name}": why for name, why in found.reasons.items()},
            foreign=urls(found.foreign),
        )
    root = where
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", hint="give the dump's -o directory")
    if (root / MANIFEST_NAME).is_file():
        raise UsageError(
            f"{root} is a backup, not a directory of backups",
            hint=f"give the directory it is in (dump's -o): asyncsnap prune {root.parent} "
            f"--keep {keep}",
        )
    lock = None if locked else OutputLock(root)
    if lock is not None:
        lock.acquire()
    try:
        backups: dict[str, Backup] = {}
        reasons: dict[str, str] = {}
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue  # our lock file, temporary names
            checked = _complete_backup(entry)
            if isinstance(checked, str):
                reasons[str(entry)] = checked
            else:
                backups[entry.name] = checked
        decision = apply_policy(
            [Candidate(name, b.manifest.started_at, _parent(b)) for name, b in backups.items()],
            keep=keep,
            include_named=include_named,
        )
        reasons.update({str(root / name): why for name, why in decision.reasons.items()})
        reasons = dict(sorted(reasons.items()))  # in the directory's order, as listed
        foreign: list[Path | str] = []
        for name in decision.removed:
            foreign += _remove_backup_directory(root / name, backups[name], dry_run=dry_run)
        return PruneResult(
            kept=[root / name for name in decision.kept],
            removed=[root / name for name in decision.removed],
            ignored=[Path(p) for p in reasons],
            named=[root / name for name in decision.named],
            dry_run=dry_run,
            reasons=reasons,
            foreign=foreign,
        )
    finally:
        if lock is not None:
            lock.release()


def _complete_backup(entry: Path) -> Backup | str:
    """``entry`` of an output directory as a complete backup (its start time and checked
    manifest), or why it is not one."""
    if entry.is_symlink():
        return "a symlink"
    if not entry.is_dir():
        return "not a directory"
    if entry.name.endswith(PARTIAL_SUFFIX):
        return "a dump's .partial directory: it may be running"
    if not (entry / MANIFEST_NAME).is_file():
        return "no manifest.json: not a complete asyncsnap backup"
    try:
        return manifest.parse(entry, manifest.load(entry, streamed=True), LocalSource(entry))
    except VerificationFailed:
        return "its manifest.json does not check out"


def _remove_backup_directory(path: Path, backup: Backup, *, dry_run: bool) -> list[Path | str]:
    """Remove what the dump of ``backup`` wrote in ``path``: the manifest first (from then
    on it is no backup), the files it lists that have a dump's names, ``SHA256SUMS``, then
    the directories left empty. Returns what stays: anything else found inside."""
    listed = [f.path for _, f in backup.data_files()]
    if backup.schema is not None:
        listed += [f.path for f in backup.schema.files]
    own = [
        path / relpath
        for relpath in [MANIFEST_NAME, *listed, SUMS_NAME]
        if written_by_dump(relpath)
        and (path / relpath).is_file()
        and not (path / relpath).is_symlink()
    ]
    if not dry_run:
        try:
            for file in own:
                file.unlink()
            for directory in (path / DATA_DIR, path / SCHEMA_DIR, path):
                empty = directory.is_dir() and not any(directory.iterdir())
                if empty and not directory.is_symlink():
                    directory.rmdir()
        except OSError as exc:
            raise OutputNotWritable(
                f"could not remove {path}: {exc.strerror or exc}",
                hint="check the directory's permissions; what was not removed is as it was",
            ) from exc
    mine = {*own, path / DATA_DIR, path / SCHEMA_DIR}
    stays: list[Path | str] = []
    if not path.exists():
        return stays
    for parent, dirs, names in os.walk(path):
        here = Path(parent)
        links = [d for d in dirs if (here / d).is_symlink()]
        stays += [here / name for name in sorted(names + links) if here / name not in mine]
        if not names and not dirs and here not in mine and here != path:
            stays.append(here)  # an empty directory of someone else's
    return stays


def _parent(backup: Backup) -> str | None:
    """An increment's parent's name (retention keeps chains whole); None: a full backup."""
    return None if backup.increment is None else backup.increment.parent
