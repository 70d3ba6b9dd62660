"""Reports of what the library returns, for people and for scripts: ``inspect``'s tables,
``compare``'s differences and ``diff``'s changes as lines, and both as ``--json``
(README "Output for scripts"). The library returns the results as dataclasses; how they
read is decided here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.table import Table as RichTable

from ..inspect import summary
from ..pgoutput import parse_lsn
from ..text import count
from .progress import human_bytes

if TYPE_CHECKING:
    from ..analysis.diff import ColumnChange, DiffResult, TableDiff
    from ..comparison import CompareResult, TableComparison
    from ..format import Backup
    from ..slot import SlotStanding


def slot_now_text(standing: SlotStanding) -> str:
    """The chain's slot on the server, seen from one of its backups (``inspect -d``)."""
    if not standing.exists:
        return f"not on the server: {standing.why}"
    held = (
        ""
        if standing.held_bytes is None
        else f"holds {human_bytes(standing.held_bytes)} of WAL"
        + (f" ({standing.wal_status})" if standing.wal_status else "")
        + "; "
    )
    if standing.latest:
        return f"{held}the next increment (dump --since this backup) follows this backup"
    if standing.followable:
        return (
            f"{held}it starts at {standing.confirmed_flush_lsn}, before this backup's end "
            f"{standing.backup_end_lsn} (not advanced after it): dump --since this backup works"
        )
    if (
        standing.wal_status != "lost"
        and standing.confirmed_flush_lsn is not None
        and (parse_lsn(standing.confirmed_flush_lsn) > parse_lsn(standing.backup_end_lsn))
    ):
        return (
            f"{held}a later increment advanced it to {standing.confirmed_flush_lsn}: only "
            "the chain's latest backup can be followed"
        )
    return f"{held}{standing.why}"


def summary_tables(backup: Backup, slot_now: SlotStanding | None = None) -> list[RenderableType]:
    """``inspect``'s tables for people."""
    s = summary(backup, slot_now)
    server = s["server"] or {}
    head = RichTable(
        show_header=False, box=None, title=f"asyncsnap backup {backup.path}", title_justify="left"
    )
    head.add_column()
    head.add_column()
    increment = s["increment"]
    if increment is not None:
        head.add_row(
            "INCREMENT",
            f"the changes after {increment['parent']['name']}: "
            f"{count(increment['transactions'], 'transaction')} committed from "
            f"{increment['start_lsn']} to {increment['end_lsn']}",
        )
    else:
        snapshot = s["snapshot"] or {}
        head.add_row("snapshot", f"{snapshot.get('taken_at')} ({snapshot.get('id')})")
    if s["slot"] is not None:
        slot = s["slot"]
        head.add_row(
            "slot",
            f"{slot['name']} at {slot['consistent_lsn']} (publication {slot['publication']}; "
            "the server holds its WAL until increments read it or it is dropped)",
        )
    if slot_now is not None:
        head.add_row("slot now", slot_now_text(slot_now))
    head.add_row(
        "server",
        f"PostgreSQL {server.get('version')} at "
        f"{server.get('host') or 'local socket'}:{server.get('port')}, "
        f"database {server.get('database')}, user {server.get('user')}",
    )
    totals = s["totals"] or {}
    head.add_row(
        "totals",
        f"{count(totals.get('tables', 0), 'table')}, {totals.get('rows', 0):,} rows, "
        f"{human_bytes(totals.get('bytes', 0))} "
        f"({human_bytes(totals.get('stored_bytes', 0))} {s['compression']})",
    )
    if s["encrypted_to"]:
        head.add_row("ENCRYPTED", "age, to " + ", ".join(s["encrypted_to"]))
    head.add_row(
        "schema",
        f"{s['schema']['sql']} (pg_dump {s['schema']['pg_dump_version']})"
        if s["schema"]
        else "none: an increment holds changes of rows"
        if increment is not None
        else "none: a data-only backup, restored only into existing tables",
    )
    levels = (s["restore_order"] or {}).get("levels", [])
    order = " → ".join(", ".join(f"{t['schema']}.{t['name']}" for t in lv) for lv in levels)
    head.add_row("restore order", order)
    for cycle in (s["restore_order"] or {}).get("cycles", []):
        head.add_row("cycle", ", ".join(f"{t['schema']}.{t['name']}" for t in cycle))
    if s["large_objects"] is not None:
        objects = s["large_objects"]
        head.add_row("large objects", f"{objects['objects']:,} ({human_bytes(objects['bytes'])})")
    for t in s["tables"]:
        if t["row_security"]:
            head.add_row(
                "ROW SECURITY",
                f"{t['schema']}.{t['name']} holds only the rows the dumping role could see",
            )
    for k in backup.skipped:
        head.add_row("NOT DUMPED", k.describe())
    tables = RichTable()
    for col, justify in (
        ("table", "left"),
        ("kind", "left"),
        ("rows", "right"),
        ("files", "right"),
        ("bytes", "right"),
        ("stored", "right"),
    ):
        tables.add_column(col, justify=justify)  # type: ignore[arg-type]
    for t in s["tables"]:
        tables.add_row(
            f"{t['schema']}.{t['name']}",
            t["kind"],
            f"{t['rows']:,}",
            str(t["files"]),
            human_bytes(t["bytes"]),
            human_bytes(t["stored_bytes"]),
        )
    if not s["sequence_values"]:
        return [head, tables]
    sequences = RichTable()
    for col, justify in (("sequence", "left"), ("value", "right"), ("of", "left")):
        sequences.add_column(col, justify=justify)  # type: ignore[arg-type]
    for q in s["sequence_values"]:
        # is_called false: the next nextval() returns last_value itself (setval's rule)
        value = f"{q['last_value']:,}" + ("" if q["is_called"] else " (not yet used)")
        sequences.add_row(f"{q['schema']}.{q['name']}", value, q["owned_by"] or "")
    return [head, tables, sequences]


# -- compare


def describe_differences(result: CompareResult) -> list[str]:
    """One line for people per difference, naming the table and the counts."""
    lines = []
    for t in result.differences:
        name = t.qualified if t.schema else t.name
        if t.status == "missing":
            lines.append(
                f"{name}: not in the database ({count(t.backup_rows, 'row')} in the backup)"
            )
        elif t.status == "columns differ":
            lines.append(f"{name}: columns differ from the backup's: {t.detail}")
        elif t.database_rows != t.backup_rows:
            lines.append(
                f"{name}: {count(t.database_rows or 0, 'row')} in the database, "
                f"{t.backup_rows} in the backup"
            )
        else:
            lines.append(
                f"{name}: the same number of rows ({t.backup_rows}) but not the same rows "
                f"(fingerprint {t.database_fingerprint} in the database, "
                f"{t.backup_fingerprint} in the backup)"
            )
    for s in result.sequence_differences:
        if s.database is None:
            lines.append(f"sequence {s.schema}.{s.name}: not in the database")
        else:
            lines.append(
                f"sequence {s.schema}.{s.name}: last_value {s.database[0]} "
                f"(is_called {str(s.database[1]).lower()}) in the database, {s.backup[0]} "
                f"(is_called {str(s.backup[1]).lower()}) in the backup"
            )
    return lines


def summary_line(result: CompareResult) -> str:
    """The line that says what was found equal."""
    what = f"{count(len(result.tables), 'table')}, {count(result.rows, 'row')}"
    if result.sequences:
        what += f", {count(len(result.sequences), 'sequence')}"
    if result.large_objects is not None:
        what += ", the large objects"
    return (
        f"equal: the database holds exactly the backup's rows ({what}; fingerprints from "
        f"the {result.fingerprints_from}; {result.seconds:.2f}s)"
    )


def comparison_json(result: CompareResult) -> dict[str, Any]:
    """The result for scripts (``compare --json``); README "Output for scripts"."""

    def table(t: TableComparison) -> dict[str, Any]:
        return {
            "schema": t.schema or None,
            "name": t.name,
            "status": t.status,
            "backup_rows": t.backup_rows,
            "database_rows": t.database_rows,
            "backup_fingerprint": t.backup_fingerprint or None,
            "database_fingerprint": t.database_fingerprint,
            "detail": t.detail or None,
        }

    return {
        "equal": result.equal,
        "backup": str(result.backup),
        "snapshot_id": result.snapshot_id,
        "fingerprints_from": result.fingerprints_from,
        "tables": [table(t) for t in result.tables],
        "sequences": [
            {
                "schema": s.schema,
                "name": s.name,
                "equal": s.equal,
                "backup": {"last_value": s.backup[0], "is_called": s.backup[1]},
                "database": None
                if s.database is None
                else {"last_value": s.database[0], "is_called": s.database[1]},
            }
            for s in result.sequences
        ],
        "large_objects": None if result.large_objects is None else table(result.large_objects),
        "not_compared": list(result.not_compared),
        "differences": describe_differences(result),
        "seconds": round(result.seconds, 3),
    }


# -- diff


def _rows_change(t: TableDiff) -> str:
    counts = f"{t.rows_before} -> {t.rows_after} rows"
    parts = [f"{t.added} added", f"{t.removed} removed"]
    if t.changed is not None:
        parts.append(f"{t.changed} changed")
    if t.key:
        how = f"by {', '.join(t.key)}"
    elif t.unpaired:
        how = f"whole rows: {t.unpaired}"
    else:
        how = "whole rows: no primary key"
    return f"{counts}: {', '.join(parts)} ({how})"


def _column_text(c: ColumnChange) -> str:
    if c.before is None:
        return f"added {c.name} ({c.after})"
    if c.after is None:
        return f"dropped {c.name} ({c.before})"
    return f"{c.name}: {c.before} -> {c.after}"


def describe_diff(result: DiffResult) -> list[str]:
    """The lines ``asyncsnap diff`` prints: one per table that differs, sequence that
    moved, the large objects, the totals, then the schema SQL's unified diff."""
    lines = []
    for t in result.changed_tables:
        if t.status == "new":
            lines.append(f"{t.qualified}: new, {count(t.rows_after or 0, 'row')}")
        elif t.status == "dropped":
            lines.append(f"{t.qualified}: dropped, {count(t.rows_before or 0, 'row')}")
        elif t.status == "columns differ":
            changes = "; ".join(_column_text(c) for c in t.columns)
            lines.append(
                f"{t.qualified}: columns {changes} ({t.rows_before} -> {t.rows_after} rows; "
                "rows not compared)"
            )
        else:
            lines.append(f"{t.qualified}: {_rows_change(t)}")
    for s in result.sequences:
        before = "absent" if s.before is None else str(s.before[0])
        after = "absent" if s.after is None else str(s.after[0])
        lines.append(f"sequence {s.schema}.{s.name}: {before} -> {after}")
    if result.large_objects is not None:
        lines.append(
            f"large objects: {result.large_objects[0]} -> {result.large_objects[1]} objects, "
            "not the same"
        )
    changed = len(result.changed_tables)
    lines.append(
        f"total: {result.added} added, {result.removed} removed, {result.changed} changed in "
        f"{changed} of {count(len(result.tables), 'table')}; "
        f"{result.not_read} not read ({'no change between' if result.chain else 'same files'}); "
        f"{result.seconds:.2f}s"
    )
    if result.schema_note:
        lines.append(f"schema: not compared: {result.schema_note}")
    elif result.schema_diff:
        lines.append("schema:")
        lines += result.schema_diff
    else:
        lines.append("schema: the same")
    return lines


def diff_json(result: DiffResult) -> dict[str, Any]:
    """``diff --json``: README "Output for scripts"."""
    return {
        "identical": result.identical,
        "before": str(result.before),
        "after": str(result.after),
        "tables": [
            {
                "schema": t.schema,
                "name": t.name,
                "status": t.status,
                "rows_before": t.rows_before,
                "rows_after": t.rows_after,
                "added": t.added,
                "removed": t.removed,
                "changed": t.changed,
                "key": list(t.key),
                "read": t.read,
                "columns": [
                    {"name": c.name, "before": c.before, "after": c.after} for c in t.columns
                ],
                "rows_file": t.rows_file,
                "unpaired": t.unpaired,
            }
            for t in result.tables
        ],
        "sequences": [
            {
                "schema": s.schema,
                "name": s.name,
                "before": None if s.before is None else s.before[0],
                "after": None if s.after is None else s.after[0],
            }
            for s in result.sequences
        ],
        "large_objects": None
        if result.large_objects is None
        else {"before": result.large_objects[0], "after": result.large_objects[1]},
        "totals": {"added": result.added, "removed": result.removed, "changed": result.changed},
        "schema_diff": list(result.schema_diff),
        "schema_note": result.schema_note,
        "seconds": round(result.seconds, 3),
    }
