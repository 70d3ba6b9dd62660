"""A backup's summary for people (rich tables) and scripts (JSON), from its manifest."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import RenderableType
from rich.table import Table as RichTable

from .backup import Backup
from .progress import human_bytes


def summary(backup: Backup) -> dict[str, Any]:
    """The facts ``inspect --json`` prints: snapshot, server, totals, tables, order."""
    m = backup.manifest
    return {
        "path": str(backup.path),
        "format_version": m["format_version"],
        "tool": m.get("tool"),
        "snapshot": m.get("snapshot"),
        "started_at": m.get("started_at"),
        "finished_at": m.get("finished_at"),
        "server": m.get("server"),
        "compression": backup.compression,
        "totals": m.get("totals"),
        "tables": [
            {
                "schema": t.schema,
                "name": t.name,
                "kind": t.kind,
                "rows": t.rows,
                "row_security": t.row_security,
                "files": len(t.files),
                "bytes": sum(f.bytes for f in t.files),
                "stored_bytes": sum(f.stored_bytes for f in t.files),
            }
            for t in backup.tables
        ],
        "sequences": len(backup.sequences),
        "large_objects": (
            None
            if backup.large_objects is None
            else {"objects": backup.large_objects.objects, "bytes": backup.large_objects.bytes}
        ),
        "skipped": [asdict(k) for k in backup.skipped],
        "restore_order": m.get("restore_order"),
    }


def summary_tables(backup: Backup) -> list[RenderableType]:
    s = summary(backup)
    server = s["server"] or {}
    head = RichTable(
        show_header=False, box=None, title=f"asyncsnap backup {backup.path}", title_justify="left"
    )
    head.add_column()
    head.add_column()
    snapshot = s["snapshot"] or {}
    head.add_row("snapshot", f"{snapshot.get('taken_at')} ({snapshot.get('id')})")
    head.add_row(
        "server",
        f"PostgreSQL {server.get('version')} at "
        f"{server.get('host') or 'local socket'}:{server.get('port')}, "
        f"database {server.get('database')}, user {server.get('user')}",
    )
    totals = s["totals"] or {}
    head.add_row(
        "totals",
        f"{totals.get('tables')} tables, {totals.get('rows', 0):,} rows, "
        f"{human_bytes(totals.get('bytes', 0))} "
        f"({human_bytes(totals.get('stored_bytes', 0))} {s['compression']})",
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
    return [head, tables]
