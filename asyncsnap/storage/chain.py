"""A chain of backups: a full backup made with ``dump --slot`` and the increments after
it (docs/format.md, "Incremental backups"), found from its latest backup by following each
increment's parent by name beside it, every link checked before anything reads the chain:
the parent's manifest checksum is the one the increment names, its end is the increment's
start, and both follow one slot of one cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, VerificationFailed
from ..format import LSN, Backup
from ..pgoutput import format_lsn, parse_lsn
from .backup import open_backup
from .location import backup_location
from .s3 import StoreUrl

# More links than this is a loop (a year of increments every minute is fewer).
_MAX_CHAIN = 1_000_000


@dataclass(frozen=True)
class Chain:
    """A full backup and the increments after it, oldest first (none: a full backup)."""

    full: Backup
    increments: tuple[Backup, ...]
    # ``--to LSN``: the last increment applied only up to here (the transactions that
    # committed before it); None: whole.
    upto: int | None = None

    def stop_at(self, to: str) -> Chain:
        """The chain up to ``to``: one of its backups' names, or a WAL position (``X/Y``)
        between its start and its end.

        :raises UsageError: when ``to`` is neither.
        """
        names = [backup_name(b.path) for b in (self.full, *self.increments)]
        if to in names:
            return Chain(self.full, self.increments[: names.index(to)])
        if LSN.fullmatch(to.upper()) is None:
            raise UsageError(
                f"--to {to!r} is neither a backup of this chain nor a WAL position",
                hint=f"give one of {', '.join(names)}, or an LSN such as 0/16B3748",
            )
        upto = parse_lsn(to.upper())
        slot = self.full.manifest.slot
        assert slot is not None and self.increments
        first = parse_lsn(slot.consistent_lsn)
        last = self.increments[-1].increment
        assert last is not None
        if not first <= upto <= parse_lsn(last.end_lsn):
            raise UsageError(
                f"--to {to} is outside the chain, which holds {slot.consistent_lsn} to "
                f"{last.end_lsn}",
                hint="give a WAL position between the two",
            )
        kept = []
        for increment in self.increments:
            info = increment.increment
            assert info is not None
            if parse_lsn(info.start_lsn) >= upto:
                break
            kept.append(increment)
        return Chain(self.full, tuple(kept), upto)

    def describe(self) -> list[str]:
        if not self.increments:
            return []
        last = self.increments[-1].increment
        assert last is not None
        changes = sum(t.rows for b in self.increments for t in b.tables)
        end = last.end_lsn if self.upto is None else f"{format_lsn(self.upto)} (--to)"
        return [
            f"then {len(self.increments)} increment(s) of {backup_name(self.full.path)} applied in "
            f"order, up to {changes:,} changes, to {end} ({backup_name(self.increments[-1].path)})"
        ]


def backup_name(path: Path | str) -> str:
    return path.name if isinstance(path, Path) else str(path).rstrip("/").rpartition("/")[2]


def _sibling(path: Path | str, name: str) -> Path | str:
    where = backup_location(path, role="BACKUP")
    if isinstance(where, StoreUrl):
        return str(path).rstrip("/").rpartition("/")[0] + "/" + name
    return where.parent / name


def open_chain(path: str | Path) -> Chain:
    """The backup at ``path``, and if it is an increment, its chain: every parent found
    by name beside it, each link checked.

    :raises VerificationFailed: a parent missing, or not the one an increment names.
    """
    if not isinstance(backup_location(path, role="BACKUP"), StoreUrl):
        path = Path(path).resolve()  # "." names a directory whose siblings are its parent's
    latest = open_backup(path, increments=True)
    found = [latest]
    child = latest
    while (link := child.increment) is not None:
        if len(found) > _MAX_CHAIN:
            raise VerificationFailed(f"{path}: its chain does not end (a loop of parents)")
        where = _sibling(child.path, link.parent)
        try:
            parent = open_backup(where, increments=True)
        except VerificationFailed as exc:
            raise VerificationFailed(
                f"{child.path} follows {link.parent}, which cannot be read: {exc.message}",
                hint="a chain is restored from beside its backups: keep every backup of it "
                "in one directory or prefix (prune and --keep do)",
            ) from exc
        if parent.manifest.checksum != link.parent_manifest_sha256:
            raise VerificationFailed(
                f"{where} is not the backup {child.path} follows: its manifest's checksum differs",
                hint="a backup of that name was made again; the chain is broken",
            )
        slot, parent_slot = child.manifest.slot, parent.manifest.slot
        parent_end = (
            parent.increment.end_lsn
            if parent.increment is not None
            else (parent_slot.consistent_lsn if parent_slot is not None else None)
        )
        if (
            parent_slot is None
            or slot is None
            or (parent_slot.name, parent_slot.system_identifier)
            != (slot.name, slot.system_identifier)
            or parent_end != link.start_lsn
        ):
            raise VerificationFailed(
                f"{child.path} does not start where {where} ends (another slot, or a gap)",
                hint="the backup was altered or not made by asyncsnap; do not restore it",
            )
        found.append(parent)
        child = parent
    return Chain(full=found[-1], increments=tuple(reversed(found[:-1])))
