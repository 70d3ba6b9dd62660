"""What a dump holds, and what it names as not held. Pure: no I/O, tested without a server.

Every relation, sequence and large object that the filters select ends up in exactly one
of two places: the backup, or ``skipped`` in the manifest with the reason (docs/format.md,
"What is not in a backup"). The rules follow pg_dump where it has one:

- ordinary, partitioned and unlogged tables and partitions are read (unlogged ones unless
  ``--no-unlogged-table-data``);
- materialized views are named, not read: their rows are computed by their query, and a
  restore refreshes the ones that were populated (pg_dump emits REFRESH the same way);
- foreign tables are named: their rows live on another server;
- relations and sequences that belong to an extension are named: CREATE EXTENSION makes
  them (configuration tables are said to be such: rows added to them after CREATE
  EXTENSION are not in the backup);
- sequences: every sequence owned by or used in a default of a dumped table, and every
  other sequence that the filters select by name (like pg_dump's ``-t``);
- large objects: included unless a ``-t`` or ``-n`` filter was given (pg_dump's rule),
  ``--large-objects`` or ``--no-large-objects`` decide explicitly.

Tables a role may not read are an error naming them, or named as skipped with
``--skip-unreadable``. Tables whose row-level security policies would filter this role's
reads are an error naming them, unless ``--enable-row-security``: then they are read as
the role sees them and marked in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .catalog import SequenceInfo, Table
from .errors import PermissionDenied, some_names
from .format import Skipped
from .patterns import Selection

TableKey = tuple[str, str]


@dataclass(frozen=True)
class PickedSequence:
    """A sequence the dump records, and the column it belongs to (None: standalone)."""

    info: SequenceInfo
    table: TableKey | None
    column: str | None


@dataclass(frozen=True)
class LargeObjectCounts:
    """How many large objects the database has, and how many the role may not read."""

    total: int = 0
    unreadable: int = 0


@dataclass(frozen=True)
class Inventory:
    """The outcome: what to read, and what the manifest names as not in the backup."""

    tables: list[Table]  # to lock and read (partitioned parents included: they hold no rows)
    sequences: list[PickedSequence]
    large_objects: bool  # whether the dump reads large objects
    skip_unreadable_large_objects: bool = False
    skipped: list[Skipped] = field(default_factory=list)


def _relation_skip(table: Table, *, unlogged_table_data: bool) -> Skipped | None:
    """Why a selected relation is not read, or None when it is."""
    if table.extension is not None:
        kind = "extension table"
        if table.extension_config:
            reason = (
                f"configuration table of extension {table.extension}: CREATE EXTENSION "
                "makes it; rows added to it since are not in this backup"
            )
        else:
            reason = f"belongs to extension {table.extension}, which makes it"
        return Skipped(kind, table.schema, table.name, reason)
    if table.relkind == "m":
        state = "restore refreshes it" if table.populated else "it was not populated"
        return Skipped(
            "materialized view",
            table.schema,
            table.name,
            f"its rows are computed by its query; {state}",
            refresh=table.populated,
        )
    if table.relkind == "f":
        return Skipped(
            "foreign table", table.schema, table.name, "its rows live on a foreign server"
        )
    if table.unlogged and not unlogged_table_data and table.has_data:
        return Skipped("unlogged table", table.schema, table.name, "--no-unlogged-table-data")
    return None


def take_inventory(
    relations: Sequence[Table],
    sequences: Sequence[SequenceInfo],
    default_sequences: Mapping[int, tuple[int, str]],
    selection: Selection,
    *,
    skip_unreadable: bool = False,
    enable_row_security: bool = False,
    unlogged_table_data: bool = True,
    large_objects: bool | None = None,
    large_object_counts: LargeObjectCounts = LargeObjectCounts(),
) -> Inventory:
    """Decide what a dump reads and what it names as skipped (module docstring).

    ``relations`` and ``sequences`` are everything the catalog lists; ``default_sequences``
    maps a sequence oid to the (table oid, column) whose default uses it.

    :raises NoTablesMatched: when the filters select nothing that holds data: no table,
        sequence or large object.
    :raises PermissionDenied: for unreadable tables, sequences or large objects (without
        ``skip_unreadable``), and tables that row-level security would filter (without
        ``enable_row_security``).
    """
    selected = selection.apply(relations)
    skipped: list[Skipped] = []
    read: list[Table] = []
    for table in selected:
        skip = _relation_skip(table, unlogged_table_data=unlogged_table_data)
        if skip is not None:
            skipped.append(skip)
        else:
            read.append(table)

    unreadable = [t for t in read if t.has_data and not t.readable]
    if unreadable:
        names = [t.qualified for t in unreadable]
        if not skip_unreadable:
            raise PermissionDenied(
                f"permission denied for {'table' if len(names) == 1 else 'tables'} "
                f"{some_names(names)}",
                hint="GRANT SELECT to this role, leave them out with -T, or --skip-unreadable",
            )
        read = [t for t in read if t.readable or not t.has_data]
        if not any(t.has_data for t in read) and any(t.has_data for t in selected):
            raise PermissionDenied(
                f"permission denied for every selected table ({some_names(names)})",
                hint="GRANT SELECT to this role, or check -t/-n",
            )
        skipped += [Skipped("table", t.schema, t.name, "permission denied") for t in unreadable]

    filtered = [t.qualified for t in read if t.has_data and t.row_security]
    if filtered and not enable_row_security:
        raise PermissionDenied(
            "row-level security would hide rows of "
            f"{'table' if len(filtered) == 1 else 'tables'} {some_names(filtered)} from this "
            "role",
            hint="dump as the owner, a superuser or a BYPASSRLS role; or pass "
            "--enable-row-security to dump only the rows this role may see",
        )

    picked, sequence_skips = _pick_sequences(
        read, sequences, default_sequences, selection, skip_unreadable=skip_unreadable
    )
    skipped += sequence_skips

    include_los = (
        large_objects if large_objects is not None else not (selection.include or selection.schemas)
    )
    skip_unreadable_los = False
    counts = large_object_counts
    if counts.total and not include_los:
        why = (
            "--no-large-objects"
            if large_objects is False
            else "a -t or -n filter was given (--large-objects includes them)"
        )
        skipped.append(Skipped("large objects", None, None, f"{counts.total} not dumped: {why}"))
    elif counts.unreadable and include_los:
        if not skip_unreadable:
            raise PermissionDenied(
                f"permission denied for {counts.unreadable} of {counts.total} large objects",
                hint="GRANT SELECT ON LARGE OBJECT to this role, --no-large-objects, or "
                "--skip-unreadable",
            )
        skip_unreadable_los = True
        skipped.append(
            Skipped(
                "large objects", None, None, f"{counts.unreadable} not dumped: permission denied"
            )
        )
    readable_los = counts.total - (counts.unreadable if skip_unreadable_los else 0)
    holds_data = any(t.has_data for t in read) or picked or (include_los and readable_los > 0)
    if not holds_data and not skipped:
        raise selection.nothing_matched()
    return Inventory(
        tables=read,
        sequences=picked,
        large_objects=include_los and readable_los > 0,
        skip_unreadable_large_objects=skip_unreadable_los,
        skipped=skipped,
    )


def _pick_sequences(
    tables: Sequence[Table],
    sequences: Sequence[SequenceInfo],
    default_sequences: Mapping[int, tuple[int, str]],
    selection: Selection,
    *,
    skip_unreadable: bool,
) -> tuple[list[PickedSequence], list[Skipped]]:
    """The sequences a dump records (module docstring), unreadable ones checked."""
    by_oid = {t.oid: t for t in tables if t.has_data}
    picked: list[PickedSequence] = []
    skipped: list[Skipped] = []
    for seq in sequences:
        owner = by_oid.get(seq.owner_table) if seq.owner_table is not None else None
        used = default_sequences.get(seq.oid)
        user = by_oid.get(used[0]) if used is not None else None
        by_name = selection.matches_name(seq.schema, seq.name)
        # Not tied to a dumped table: a standalone sequence is recorded when the filters
        # select it by name; one owned by a table that is left out goes with that table,
        # as in pg_dump, unless a -t pattern names it.
        if (
            owner is None
            and user is None
            and (not by_name or (seq.owner_table is not None and not selection.include))
        ):
            continue
        if seq.extension is not None:
            skipped.append(
                Skipped(
                    "extension sequence",
                    seq.schema,
                    seq.name,
                    f"belongs to extension {seq.extension}, which makes it",
                )
            )
            continue
        if owner is not None:
            table, column = owner.key, seq.owner_column
        elif user is not None and used is not None:
            table, column = user.key, used[1]
        else:
            table, column = None, None
        picked.append(PickedSequence(seq, table, column))
    unreadable = [p for p in picked if not p.info.readable]
    if unreadable:
        names = [p.info.qualified for p in unreadable]
        if not skip_unreadable:
            first = unreadable[0]
            owner_note = (
                f" (of table {first.table[0]}.{first.table[1]})"
                if len(names) == 1 and first.table is not None
                else ""
            )
            raise PermissionDenied(
                f"permission denied for sequence {names[0]}{owner_note}"
                if len(names) == 1
                else f"permission denied for sequences {some_names(names)}",
                hint="GRANT SELECT ON SEQUENCE to this role, leave the tables out with -T, "
                "or --skip-unreadable",
            )
        picked = [p for p in picked if p.info.readable]
        skipped += [
            Skipped("sequence", p.info.schema, p.info.name, "permission denied") for p in unreadable
        ]
    return picked, skipped
