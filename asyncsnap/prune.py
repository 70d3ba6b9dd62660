"""Retention: keep the N newest complete backups in a directory, remove older ones.

Only directories that are complete asyncsnap backups count: a ``manifest.json`` that
passes the reader's format, version and checksum checks. Everything else is left alone:
``.partial`` directories (a dump may be writing them), other files and directories,
symlinks, and backups whose manifest does not check out (they are reported, not
removed). Newest means the latest ``started_at`` in the manifest. The output directory's
lock is held while pruning, so a prune never races a dump's final rename.

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

import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from . import manifest
from .errors import UsageError, VerificationFailed
from .location import backup_location
from .manifest import DEFAULT_NAME, MANIFEST_NAME, PARTIAL_SUFFIX
from .storage import OutputLock


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
        from .bucket import ABANDONED_AFTER, prune_prefix

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
        backups: list[tuple[str, Path]] = []
        ignored: list[Path | str] = []
        named: list[Path | str] = []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue  # our lock file, temporary names
            if entry.is_symlink() or not entry.is_dir() or entry.name.endswith(PARTIAL_SUFFIX):
                ignored.append(entry)
                continue
            try:
                body = manifest.load(entry)
            except VerificationFailed:
                ignored.append(entry)
                continue
            started = body.get("started_at")
            if not isinstance(started, str):
                ignored.append(entry)
                continue
            if not include_named and not DEFAULT_NAME.fullmatch(entry.name):
                named.append(entry)
                continue
            backups.append((started, entry))
        backups.sort(reverse=True)  # ISO 8601 UTC times sort as text
        kept: list[Path | str] = [path for _, path in backups[:keep]]
        removed: list[Path | str] = [path for _, path in backups[keep:]]
        if not dry_run:
            for _, path in backups[keep:]:
                shutil.rmtree(path)
        return PruneResult(
            kept=kept, removed=removed, ignored=ignored, named=named, dry_run=dry_run
        )
    finally:
        if lock is not None:
            lock.release()
