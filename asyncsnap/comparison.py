"""What a comparison of a backup with a database found (``analysis.compare`` computes it):
plain results, below the commands that make (``compare``) or ask for one (``restore
--compare``) and the CLI that reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["equal", "different", "missing", "columns differ"]


@dataclass(frozen=True)
class TableComparison:
    """One backup table against the database's table of the same name.

    ``status``: ``equal``; ``different`` (the counts or the fingerprints differ);
    ``missing`` (no such table in the database); ``columns differ`` (``detail`` says how:
    rows are only compared between tables of the same columns and types)."""

    schema: str
    name: str
    status: Status
    backup_rows: int
    database_rows: int | None = None
    backup_fingerprint: str = ""
    database_fingerprint: str | None = None
    detail: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class SequenceComparison:
    """A sequence's ``last_value`` and ``is_called`` in the backup and the database
    (``None``: the database has no such sequence)."""

    schema: str
    name: str
    backup: tuple[int, bool]
    database: tuple[int, bool] | None

    @property
    def equal(self) -> bool:
        return self.backup == self.database


@dataclass(frozen=True)
class CompareResult:
    """What ``compare`` found; ``equal`` when every table, sequence and the large objects
    match."""

    backup: Path | str
    snapshot_id: str
    tables: tuple[TableComparison, ...]
    sequences: tuple[SequenceComparison, ...] = ()
    large_objects: TableComparison | None = None  # None: the backup has none
    seconds: float = 0.0
    fingerprints_from: Literal["manifest", "files"] = "manifest"
    not_compared: tuple[str, ...] = field(default=())  # said for people, e.g. skipped tables

    @property
    def differences(self) -> list[TableComparison]:
        found = [t for t in self.tables if t.status != "equal"]
        if self.large_objects is not None and self.large_objects.status != "equal":
            found.append(self.large_objects)
        return found

    @property
    def sequence_differences(self) -> list[SequenceComparison]:
        return [s for s in self.sequences if not s.equal]

    @property
    def equal(self) -> bool:
        return not self.differences and not self.sequence_differences

    @property
    def rows(self) -> int:
        return sum(t.backup_rows for t in self.tables)
