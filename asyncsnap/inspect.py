"""A backup's summary from its manifest: what ``inspect --json`` prints (and the CLI shows)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .format import Backup

if TYPE_CHECKING:
    from .slot import SlotStanding


def summary(backup: Backup, slot_now: SlotStanding | None = None) -> dict[str, Any]:
    """The facts ``inspect --json`` prints: snapshot, server, totals, tables, order;
    ``slot_now``: the chain's slot on the server now (``inspect -d``)."""
    m = backup.manifest

    def maybe(value: Any) -> Any:
        return None if value is None else value.to_json()

    return {
        "path": str(backup.path),
        "format_version": m.format_version,
        "tool": maybe(m.tool),
        "snapshot": maybe(m.snapshot),
        # dump --slot: the replication slot whose start this backup is; null otherwise
        "slot": maybe(m.slot),
        # dump --since: the parent and the stretch of WAL; null for a full backup
        "increment": maybe(m.increment),
        # inspect -d: the slot on the server now (WAL held, whether --since would work)
        "slot_now": None if slot_now is None else asdict(slot_now),
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "server": maybe(m.server),
        "compression": backup.compression,
        # the age public keys the files are encrypted to; empty: not encrypted
        "encrypted_to": list(backup.encryption),
        "totals": maybe(m.totals),
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
        # each sequence's captured value, as restore sets it (setval(..., last_value, is_called))
        "sequence_values": [
            {
                "schema": q.schema,
                "name": q.name,
                "last_value": q.last_value,
                "is_called": q.is_called,
                "owned_by": None
                if q.table is None
                else ".".join([*q.table, *([q.column] if q.column else [])]),
            }
            for q in backup.sequences
        ],
        "large_objects": (
            None
            if backup.large_objects is None
            else {"objects": backup.large_objects.objects, "bytes": backup.large_objects.bytes}
        ),
        "skipped": [asdict(k) for k in backup.skipped],
        "restore_order": maybe(m.restore_order),
        "schema": None
        if backup.schema is None
        else {
            "pg_dump_version": backup.schema.pg_dump_version,
            "archive": backup.schema.archive.path,
            "sql": backup.schema.sql.path,
        },
    }
