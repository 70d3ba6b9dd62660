"""What a restore did (``RestoreResult``), and after a failure, what it had committed, in
words (``committed``). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..comparison import CompareResult
from ..errors import some_names
from ..format import Backup
from .plan import RestorePlan


@dataclass(frozen=True)
class RestoredTable:
    schema: str
    name: str
    rows: int
    seconds: float
    bytes: int = 0  # of its files' NDJSON
    files: int = 1  # how many of its table's files this committed (a split file: one)


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` did. With ``dry_run`` nothing was loaded and ``tables`` is empty.

    ``plan`` is the data plan (None when no rows were planned: a dry run of a whole
    restore, whose tables do not exist yet, or ``schema_only``); ``lines`` is the whole
    plan in words, as ``--dry-run`` prints it; ``kind`` is ``"whole"`` (schema and rows)
    or ``"existing"`` (rows into existing tables)."""

    # (out of the repr, as every per-table field: asyncio.run reprs its main task's result
    # as it ends, on Python 3.11, twice; for 3,000 tables 6 MB of text and 0.1 s)
    plan: RestorePlan | None = field(repr=False)
    lines: list[str] = field(default_factory=list, repr=False)
    kind: str = "existing"
    database: str | None = None  # made by --create
    tables: list[RestoredTable] = field(default_factory=list, repr=False)
    rows: int = 0
    sequences: int = 0
    large_objects: int = 0
    refreshed: int = 0  # materialized views
    increments: int = 0  # a chain's increments applied after its full backup
    changes: int = 0  # their changes applied
    seconds: float = 0.0
    dry_run: bool = False
    # compare=True: the restored tables against the backup (``asyncsnap.compare``)
    comparison: CompareResult | None = field(default=None, repr=False)


def merge(results: list[RestoredTable]) -> list[RestoredTable]:
    """One result per table from the per-file results of split tables."""
    merged: dict[tuple[str, str], RestoredTable] = {}
    for r in results:
        before = merged.get((r.schema, r.name))
        if before is not None:
            r = RestoredTable(
                r.schema,
                r.name,
                before.rows + r.rows,
                before.seconds + r.seconds,
                before.bytes + r.bytes,
                before.files + r.files,
            )
        merged[(r.schema, r.name)] = r
    return sorted(merged.values(), key=lambda r: (r.schema, r.name))


def restored_all(backup: Backup, plan: RestorePlan) -> bool:
    """Whether the plan loaded every table of the backup and its large objects."""
    loaded = {ld.source.key for ld in plan.loads}
    tables = all(t.key in loaded for t in backup.tables if t.has_data)
    return tables and (backup.large_objects is None or plan.large_objects > 0)


def committed(
    plan: RestorePlan | None,
    results: list[RestoredTable],
    single: bool,
    kind: str,
    *,
    created: bool = False,
) -> str | None:
    """After a failure: which tables were committed and which not, and how to finish.
    Nothing for a database --create made: it is dropped again (``create.Creation.undo``)."""
    if plan is None or created or (not results and kind == "existing"):
        return None
    rerun = (
        "run the same restore with --clean to start over"
        if kind == "whole"
        else "run it again with --truncate (which loads in one transaction)"
    )
    if single:
        return f"nothing was committed (one transaction); {rerun}"
    # The files each table's committed transactions loaded (a chain's table loads its end
    # state's rows, not its full backup's: its rows would not say)
    loaded: dict[tuple[str, str], int] = {}
    for r in results:
        loaded[(r.schema, r.name)] = loaded.get((r.schema, r.name), 0) + r.files
    full = [
        ld.target.qualified
        for ld in plan.loads
        if ld.target.key in loaded and loaded[ld.target.key] >= len(ld.source.files)
    ]
    part = [
        ld.target.qualified
        for ld in plan.loads
        if ld.target.key in loaded and ld.target.qualified not in full
    ]
    rest = [ld.target.qualified for ld in plan.loads if ld.target.key not in loaded]
    said = [
        f"committed: {some_names(full) if full else 'none'}",
        *([f"partly committed (split files): {some_names(part)}"] if part else []),
        f"not loaded: {some_names(rest) if rest else 'none'}",
    ]
    return "; ".join(said) + f"; {rerun}"
