"""What a dump holds and what it names as not held: the pure rules, without a server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asyncsnap.catalog import SequenceInfo, Table
from asyncsnap.errors import NoTablesMatched, PermissionDenied
from asyncsnap.inventory import LargeObjectCounts, take_inventory
from asyncsnap.patterns import Selection

ALL = Selection()


def table(name: str, oid: int, **kw: object) -> Table:
    base = Table(
        oid=oid,
        schema="public",
        name=name,
        kind="table",
        parent=None,
        est_rows=0,
        table_bytes=0,
        readable=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def sequence(name: str, oid: int, **kw: object) -> SequenceInfo:
    base = SequenceInfo(
        oid=oid,
        schema="public",
        name=name,
        owner_table=None,
        owner_column=None,
        readable=True,
        extension=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


ORDERS = table("orders", 1)
SEQUENCES = [
    sequence("orders_id_seq", 10, owner_table=1, owner_column="id"),
    sequence("invoice_numbers", 11),
    sequence("used_by_default", 12),
    sequence("owned_elsewhere", 13, owner_table=99, owner_column="id"),
]


def test_sequences_go_with_their_table_or_by_name() -> None:
    got = take_inventory([ORDERS], SEQUENCES, {12: (1, "number")}, ALL)
    assert [(p.info.name, p.table, p.column) for p in got.sequences] == [
        ("orders_id_seq", ("public", "orders"), "id"),
        ("invoice_numbers", None, None),
        ("used_by_default", ("public", "orders"), "number"),
    ]
    # -t selects standalone sequences by name, and only those it names.
    only = take_inventory(
        [ORDERS], SEQUENCES, {}, Selection.from_strings(include=["orders", "owned_elsewhere"])
    )
    assert [p.info.name for p in only.sequences] == ["orders_id_seq", "owned_elsewhere"]


def test_relations_without_dumpable_rows_are_named_with_the_reason() -> None:
    relations = [
        ORDERS,
        table("totals", 2, relkind="m", populated=True),
        table("empty_view", 3, relkind="m", populated=False),
        table("outside", 4, relkind="f"),
        table("spatial_ref_sys", 5, extension="postgis", extension_config=True),
        table("scratch", 6, unlogged=True),
    ]
    got = take_inventory(relations, [], {}, ALL, unlogged_table_data=False)
    assert [t.name for t in got.tables] == ["orders"]
    assert [(s.kind, s.name, s.refresh) for s in got.skipped] == [
        ("materialized view", "totals", True),
        ("materialized view", "empty_view", False),
        ("foreign table", "outside", False),
        ("extension table", "spatial_ref_sys", False),
        ("unlogged table", "scratch", False),
    ]
    assert "rows added to it since are not in this backup" in got.skipped[3].reason


def test_large_objects_follow_pg_dumps_rule() -> None:
    counts = LargeObjectCounts(total=3)
    assert take_inventory([ORDERS], [], {}, ALL, large_object_counts=counts).large_objects
    filtered = take_inventory(
        [ORDERS], [], {}, Selection.from_strings(include=["orders"]), large_object_counts=counts
    )
    assert not filtered.large_objects
    assert filtered.skipped[0].reason == (
        "3 not dumped: a -t or -n filter was given (--large-objects includes them)"
    )
    asked = take_inventory(
        [ORDERS],
        [],
        {},
        Selection.from_strings(schemas=["public"]),
        large_objects=True,
        large_object_counts=counts,
    )
    assert asked.large_objects and not asked.skipped


def test_unreadable_and_row_security_fail_loudly_or_are_named() -> None:
    secret = table("secret", 2, readable=False)
    with pytest.raises(PermissionDenied, match=r"permission denied for table public\.secret"):
        take_inventory([ORDERS, secret], [], {}, ALL)
    assert [
        s.name for s in take_inventory([ORDERS, secret], [], {}, ALL, skip_unreadable=True).skipped
    ] == ["secret"]
    filtered = table("notes", 3, row_security=True)
    with pytest.raises(PermissionDenied, match="row-level security would hide rows"):
        take_inventory([ORDERS, filtered], [], {}, ALL)
    assert take_inventory([filtered], [], {}, ALL, enable_row_security=True).tables == [filtered]
    with pytest.raises(PermissionDenied, match="2 of 3 large objects"):
        take_inventory([ORDERS], [], {}, ALL, large_object_counts=LargeObjectCounts(3, 2))


def test_nothing_to_dump_is_an_error_but_sequences_alone_are_something() -> None:
    with pytest.raises(NoTablesMatched, match="-t nope"):
        take_inventory([ORDERS], SEQUENCES, {}, Selection.from_strings(include=["nope"]))
    got = take_inventory([], [sequence("invoice_numbers", 11)], {}, ALL)
    assert [p.info.name for p in got.sequences] == ["invoice_numbers"] and not got.tables
