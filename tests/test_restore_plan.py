"""A restore's plan without a server (``asyncsnap.restore.plan`` and ``.result``): the kind
of restore, which columns load into what, the order and the units, and the words
``--dry-run`` and a failure's hint say."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from asyncsnap.catalog import Column, ForeignKey, Table
from asyncsnap.errors import SchemaMismatch, TargetNotEmpty, UsageError
from asyncsnap.format import (
    Backup,
    BackupColumn,
    BackupFile,
    BackupLargeObjects,
    BackupSchema,
    BackupSequence,
    BackupTable,
    Manifest,
    SchemaFile,
    Skipped,
)
from asyncsnap.restore.options import RestoreOptions
from asyncsnap.restore.plan import (
    SMALL_TABLE,
    TABLES_A_RUN,
    TRUNCATE_IN_ONE,
    Retyped,
    TableLoad,
    cast_target,
    check_whole_flags,
    chosen_tables,
    connections_needed,
    kind_from_options,
    kind_from_target,
    order_loads,
    plan_loads,
    truncates_in_one_transaction,
    units,
    whole_restore_lines,
)
from asyncsnap.restore.result import RestoredTable, committed, merge, restored_all
from asyncsnap.storage.backup import LocalSource

# -- a backup and a target, made by hand ------------------------------------------------


def bcol(name: str, type: str = "integer", encoding: str = "json") -> BackupColumn:
    return BackupColumn(name, type, encoding, False, None, None)


def btable(
    name: str,
    *columns: BackupColumn,
    rows: int = 10,
    files: int = 1,
    kind: str = "table",
    parent: str | None = None,
) -> BackupTable:
    return BackupTable(
        schema="shop",
        name=name,
        kind=kind,
        parent=("shop", parent) if parent else None,
        rows=rows,
        columns=columns or (bcol("id"),),
        files=tuple(
            BackupFile(f"data/{name}.{i}.ndjson.zst", rows // files, 100, 50, "0" * 64)
            for i in range(files if kind != "partitioned" else 0)
        ),
    )


def tcol(
    name: str,
    type: str = "integer",
    *,
    bare: str = "",
    generated: str | None = None,
    identity: str | None = None,
) -> Column:
    return Column(name, type, 23, False, generated, identity, bare_type=bare)


def fk(name: str, to: str, *, deferrable: bool = False) -> ForeignKey:
    return ForeignKey(name, ("x",), "shop", to, ("id",), deferrable, False)


def ttable(
    name: str,
    *columns: Column,
    oid: int,
    fks: tuple[ForeignKey, ...] = (),
    kind: str = "table",
    parent: str | None = None,
) -> Table:
    return Table(
        oid=oid,
        schema="shop",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        parent=("shop", parent) if parent else None,
        est_rows=0,
        table_bytes=0,
        readable=True,
        columns=columns or (tcol("id"),),
        foreign_keys=fks,
        relkind="p" if kind == "partitioned" else "r",
    )


def backup_of(
    *tables: BackupTable,
    schema: bool = True,
    sequences: tuple[BackupSequence, ...] = (),
    skipped: tuple[Skipped, ...] = (),
    large_objects: int = 0,
) -> Backup:
    return Backup(
        path=Path("b"),
        source=LocalSource(Path("b")),
        manifest=Manifest(
            format_version=4,
            compression="zstd",
            settings={},
            tables=tables,
            sequences=sequences,
            skipped=skipped,
            large_objects=BackupLargeObjects(large_objects, 0, ()) if large_objects else None,
            schema=BackupSchema(
                "15.18",
                SchemaFile("schema/schema.pgdump", 1, "a" * 64),
                SchemaFile("schema/schema.sql", 1, "b" * 64),
            )
            if schema
            else None,
        ),
    )


SHOP = backup_of(btable("customers", rows=30), btable("orders", rows=200))


# -- the kind of restore ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("backup", "options", "expected"),
    [
        (backup_of(schema=False), {}, "the backup holds no schema: rows into existing tables"),
        (SHOP, {"data_only": True}, "--data-only: rows into existing tables"),
        (SHOP, {"create": True}, "--create: a new database with the backup's schema and rows"),
        (SHOP, {}, None),  # the target decides
        (SHOP, {"clean": True}, None),  # the target decides (what --clean drops)
    ],
)
def test_the_options_decide_the_kind_when_they_can(
    backup: Backup, options: dict[str, Any], expected: str | None
) -> None:
    decided = kind_from_options(backup, RestoreOptions.build(**options))
    assert (decided[1] if decided else None) == expected
    if decided is not None:
        assert decided[0] == ("whole" if options.get("create") else "existing")


@pytest.mark.parametrize(
    ("backup", "options", "message"),
    [
        (SHOP, {"data_only": True, "schema_only": True}, "--data-only and --schema-only"),
        (backup_of(schema=False), {"clean": True}, "--clean needs the schema"),
        (SHOP, {"data_only": True, "create": True}, "--data-only loads into existing tables"),
        (
            SHOP,
            {"create": True, "tables": ["shop.orders"]},
            "-t/-T choose tables to load into existing tables; --clean and --create restore "
            "the whole backup",
        ),
    ],
)
def test_options_that_rule_every_kind_out_are_refused(
    backup: Backup, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        kind_from_options(backup, RestoreOptions.build(**options))
    assert caught.value.message.startswith(message)


def test_a_target_without_the_backups_tables_gets_the_whole_backup() -> None:
    o = RestoreOptions.build()
    kind, reason, replaced = kind_from_target(chosen_tables(SHOP, o.selection), [], o)
    assert (kind, replaced) == ("whole", [])
    assert reason == "the target has none of the backup's tables: schema and rows"


def test_a_target_with_all_of_them_gets_the_rows() -> None:
    o = RestoreOptions.build()
    existing = ["shop.customers", "shop.orders"]
    kind, _, replaced = kind_from_target(chosen_tables(SHOP, o.selection), existing, o)
    assert (kind, replaced) == ("existing", [])


def test_clean_replaces_the_tables_the_target_has() -> None:
    o = RestoreOptions.build(clean=True)
    decided = kind_from_target(chosen_tables(SHOP, o.selection), ["shop.orders"], o)
    assert decided[0] == "whole" and decided[2] == ["shop.orders"]


def test_a_target_with_some_of_them_is_refused_naming_the_missing() -> None:
    o = RestoreOptions.build()
    with pytest.raises(SchemaMismatch) as caught:
        kind_from_target(chosen_tables(SHOP, o.selection), ["shop.customers"], o)
    assert caught.value.message == (
        "the target database has no table shop.orders (it has shop.customers)"
    )
    assert caught.value.hint is not None and "--clean" in caught.value.hint
    # with -t, the hint is about the chosen tables only
    o = RestoreOptions.build(tables=["shop.orders"])
    with pytest.raises(SchemaMismatch) as caught:
        kind_from_target(chosen_tables(SHOP, o.selection), ["shop.customers"], o)
    assert caught.value.hint == "create them first, or leave them out with -T"


def test_schema_only_into_a_target_with_the_tables_is_refused() -> None:
    o = RestoreOptions.build(schema_only=True)
    with pytest.raises(TargetNotEmpty, match=re.escape("the target already has shop.customers")):
        kind_from_target(chosen_tables(SHOP, o.selection), ["shop.customers"], o)


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"single_transaction": True}, "--single-transaction"),
        ({"mode": "truncate"}, "--truncate"),
        ({"mode": "append"}, "--append"),
    ],
)
def test_a_whole_restore_refuses_the_flags_of_existing_tables(
    options: dict[str, Any], flag: str
) -> None:
    with pytest.raises(UsageError) as caught:
        check_whole_flags(RestoreOptions.build(**options))
    assert caught.value.message == (
        f"{flag} is for loading into existing tables; this restore creates them"
    )
    check_whole_flags(RestoreOptions.build())  # the default mode: nothing to refuse


def test_truncate_loads_everything_in_one_transaction() -> None:
    truncate = RestoreOptions.build(mode="truncate")
    assert truncates_in_one_transaction("existing", truncate)
    assert not truncates_in_one_transaction("whole", truncate)
    assert not truncates_in_one_transaction("existing", RestoreOptions.build(mode="append"))
    # already one transaction: nothing to turn on, nothing to say
    single = RestoreOptions.build(mode="truncate", single_transaction=True)
    assert not truncates_in_one_transaction("existing", single)
    assert "one transaction" in TRUNCATE_IN_ONE


def test_a_whole_restore_in_words() -> None:
    lines = whole_restore_lines(["pre"], "post", SHOP, schema_only=False)
    assert lines == [
        "pre",
        "then the rows of 2 tables (230 rows), all at once: no constraint exists yet",
        "post",
        "then sequences, large objects and materialized views, then ANALYZE",
    ]
    assert whole_restore_lines(["pre"], "post", SHOP, schema_only=True) == ["pre", "post"]


# -- what loads into what ---------------------------------------------------------------


def test_columns_are_matched_by_name() -> None:
    backup = backup_of(
        btable("customers", bcol("id"), bcol("name", "text"), bcol("code", "character(2)", "text"))
    )
    target = ttable(
        "customers",
        tcol("id", identity="always"),
        tcol("name", "text"),
        tcol("code", "character(2)", bare="character"),
        tcol("slug", "text", generated="stored"),
        tcol("note", "text"),
        oid=1,
    )
    (load,) = plan_loads(
        backup, [target], RestoreOptions.build().selection, ignore_missing_columns=False
    )
    assert load.columns == ("id", "name", "code")
    assert load.text_columns == {"code"}
    assert load.defaulted == ("note",)  # generated columns are computed, not defaulted
    assert load.dropped == ()
    assert load.overriding  # an identity GENERATED ALWAYS column is written
    sql = load.insert_sql()
    assert "OVERRIDING SYSTEM VALUE" in sql
    # char(n) text is cast to bpchar (a cast to "character" would mean char(1))
    assert 'p."code"::pg_catalog.bpchar' in sql


def test_backup_columns_the_target_lacks_are_refused_unless_ignored() -> None:
    backup = backup_of(btable("customers", bcol("id"), bcol("legacy")))
    target = ttable("customers", tcol("id"), oid=1)
    selection = RestoreOptions.build().selection
    with pytest.raises(SchemaMismatch) as caught:
        plan_loads(backup, [target], selection, ignore_missing_columns=False)
    assert caught.value.message == (
        "the target lacks columns the backup has: shop.customers (legacy)"
    )
    (load,) = plan_loads(backup, [target], selection, ignore_missing_columns=True)
    assert (load.columns, load.dropped) == (("id",), ("legacy",))


def test_a_table_the_target_lacks_is_refused_and_filters_must_match() -> None:
    targets = [ttable("customers", oid=1)]
    with pytest.raises(
        SchemaMismatch, match=re.escape("the target database has no table shop.orders")
    ):
        plan_loads(SHOP, targets, RestoreOptions.build().selection, ignore_missing_columns=False)
    # -T leaves it out
    selection = RestoreOptions.build(exclude_tables=["shop.orders"]).selection
    (load,) = plan_loads(SHOP, targets, selection, ignore_missing_columns=False)
    assert load.target.name == "customers"
    with pytest.raises(
        UsageError, match=re.escape("no table in the backup matches the filters: -t shop.x")
    ):
        plan_loads(
            SHOP,
            targets,
            RestoreOptions.build(tables=["shop.x"]).selection,
            ignore_missing_columns=False,
        )


def test_cast_targets_and_the_check_of_a_changed_type() -> None:
    assert cast_target("character[]") == "pg_catalog.bpchar[]"
    assert cast_target('"bit"') == '"bit"' and cast_target("bit") == 'pg_catalog."bit"'
    numeric = Retyped("price", "numeric", "numeric(10,2)", back_to="numeric")
    assert (
        numeric.condition("v") == "((v::numeric(10,2))::numeric) IS NOT DISTINCT FROM (v::numeric)"
    )
    no_way_back = Retyped("x", "mood", "text")
    assert no_way_back.condition("v") == "(v::text)::pg_catalog.text IS NOT DISTINCT FROM v"


# -- in what order, in which units ------------------------------------------------------


def _shop_plan(**options: Any) -> tuple[Backup, list[Table], Any]:
    """customers <- orders <- items (items partitioned by year); a cycle between
    warehouses and stock; a big table split in three files."""
    backup = backup_of(
        btable("customers", rows=30),
        btable("orders", rows=200),
        btable("items", kind="partitioned", rows=0),
        btable("items_2024", parent="items", rows=500),
        btable("warehouses", rows=5),
        btable("stock", rows=50),
        btable("events", rows=9000, files=3),
        sequences=(
            BackupSequence("shop", "orders_id_seq", ("shop", "orders"), 200, True, "id"),
            BackupSequence("shop", "invoice_no", None, 7, True),
        ),
        skipped=(
            Skipped("materialized view", "shop", "totals", "not dumped", refresh=True),
            Skipped("materialized view", "shop", "stale", "not dumped", refresh=False),
        ),
        large_objects=3,
    )
    targets = [
        ttable("customers", oid=1),
        ttable("orders", oid=2, fks=(fk("orders_customer", "customers"),)),
        ttable("items", oid=3, kind="partitioned", fks=(fk("items_order", "orders"),)),
        ttable("items_2024", oid=4, kind="partition", parent="items"),
        ttable("warehouses", oid=5, fks=(fk("main_stock", "stock", deferrable=True),)),
        ttable("stock", oid=6, fks=(fk("stock_warehouse", "warehouses", deferrable=True),)),
        ttable("events", oid=7),
    ]
    o = RestoreOptions.build(**options)
    loads = plan_loads(backup, targets, o.selection, ignore_missing_columns=False)
    plan = order_loads(
        loads,
        targets,
        backup,
        o.selection,
        mode=o.mode,
        disable_triggers=o.disable_triggers,
        matviews=[("shop", "totals")],
        view_dependencies=[],
    )
    return backup, targets, plan


def _names(loads: list[TableLoad]) -> list[str]:
    return [ld.target.name for ld in loads]


def test_parents_load_first_and_partitions_take_their_parents_place() -> None:
    _, _, plan = _shop_plan()
    assert [_names(level) for level in plan.levels] == [
        ["customers", "events", "stock", "warehouses"],
        ["orders"],
        ["items_2024"],
    ]
    assert plan.roots[("shop", "items_2024")] == ("shop", "items")
    assert plan.roots[("shop", "orders")] == ("shop", "orders")
    (cycle,) = plan.cycles
    assert cycle.tables == (("shop", "stock"), ("shop", "warehouses"))
    assert cycle.strategy == "defer"  # both keys are DEFERRABLE
    assert _shop_plan(disable_triggers=True)[2].cycles[0].strategy == "disable-triggers"


def test_sequences_large_objects_and_views_go_with_the_selection() -> None:
    _, _, plan = _shop_plan()
    assert plan.sequences == [("shop", "orders_id_seq", 200, True), ("shop", "invoice_no", 7, True)]
    assert plan.large_objects == 3 and plan.refresh == [("shop", "totals")]
    # -t: a table's sequence with its table; a standalone one by name; no large objects
    _, _, only = _shop_plan(tables=["shop.customers"])
    assert _names(only.loads) == ["customers"]
    assert only.sequences == [] and only.large_objects == 0


def test_the_plan_in_words() -> None:
    _, _, plan = _shop_plan(tables=["shop.customers", "shop.orders"])
    assert plan.describe() == [
        "level 1: shop.customers (30 rows)",
        "level 2: shop.orders (200 rows)",
        "then 1 sequence set",
        "then materialized views are refreshed: shop.totals",
    ]


def test_a_level_in_units_cycles_whole_split_tables_by_file() -> None:
    _, _, plan = _shop_plan()
    level = plan.levels[0]
    found = units(plan, level, split_files=True, checks=True)
    described = [(_names(u.loads), u.file_index, u.checks) for u in found]
    assert described == [
        (["events"], 0, True),  # the biggest first; the first file checks the table
        (["stock", "warehouses"], None, True),  # a cycle: one transaction
        (["customers"], None, True),
        (["events"], 1, False),  # later files wait for the first file's check, at the end
        (["events"], 2, False),
    ]
    assert found[3].after is found[0].checked is not None
    assert [u.rows for u in found] == [3000, 55, 30, 3000, 3000]
    # --single-transaction: no split, no per-unit check
    whole = units(plan, level, split_files=False)
    assert [(_names(u.loads), u.file_index) for u in whole] == [
        (["events"], None),
        (["stock", "warehouses"], None),
        (["customers"], None),
    ]


def _level_of(*tables: BackupTable) -> tuple[Any, list[TableLoad]]:
    """A plan of unrelated tables (one level) and that level."""
    backup = backup_of(*tables)
    targets = [ttable(t.name, oid=i + 1) for i, t in enumerate(tables)]
    o = RestoreOptions.build()
    loads = plan_loads(backup, targets, o.selection, ignore_missing_columns=False)
    plan = order_loads(
        loads, targets, backup, o.selection, mode=o.mode, disable_triggers=False,
        matviews=[], view_dependencies=[],
    )  # fmt: skip
    assert len(plan.levels) == 1
    return plan, plan.levels[0]


def _sized(name: str, rows: int, size: int) -> BackupTable:
    file = BackupFile(f"data/{name}.ndjson.zst", rows, size, size // 4, "0" * 64)
    return replace(btable(name, rows=rows), files=(file,))


def test_small_tables_load_in_runs_sharing_a_transaction() -> None:
    """Whole small tables share a transaction, TABLES_A_RUN and SMALL_TABLE bytes at most
    a run; a big table, a split table's files and a cycle keep theirs; every table is
    loaded once, checked in its run's transaction."""
    smalls = [_sized(f"t{i:02}", 45 - i, 1000) for i in range(45)]
    plan, level = _level_of(*smalls, _sized("big", 10**6, SMALL_TABLE + 1))
    found = units(plan, level, split_files=True, checks=True)
    assert [len(u.loads) for u in found] == [1, TABLES_A_RUN, TABLES_A_RUN, 5]
    assert _names(found[0].loads) == ["big"] and all(u.checks for u in found)
    loaded = [name for u in found[1:] for name in _names(u.loads)]
    assert sorted(loaded) == sorted(t.name for t in smalls)
    third = SMALL_TABLE // 3 + 1  # two fit a run's bytes, not three
    plan, level = _level_of(*(_sized(n, 1, third) for n in ("a", "b", "c")))
    assert [len(u.loads) for u in units(plan, level, split_files=True)] == [2, 1]
    # the shop's level: the split table's files and the cycle stay as they were
    _, _, shop = _shop_plan()
    found = units(shop, shop.levels[0], split_files=True, checks=True)
    assert [(_names(u.loads), u.file_index) for u in found][:3] == [
        (["events"], 0),
        (["stock", "warehouses"], None),
        (["customers"], None),
    ]


def test_connections_are_no_more_than_the_widest_level_needs() -> None:
    _, _, plan = _shop_plan()
    assert connections_needed(plan, 2) == 2
    assert connections_needed(plan, 16) == 5  # level 1: events in 3 files, a cycle, customers
    _, _, one = _shop_plan(tables=["shop.customers"])
    assert connections_needed(one, 8) == 1


# -- after a failure, and what was restored ---------------------------------------------


def test_a_failure_says_what_was_committed() -> None:
    _, _, plan = _shop_plan(tables=["shop.customers", "shop.events"])
    done = [RestoredTable("shop", "customers", 30, 0.1), RestoredTable("shop", "events", 3000, 1.0)]
    assert committed(plan, done, False, "existing") == (
        "committed: shop.customers; partly committed (split files): shop.events; "
        "not loaded: none; run it again with --truncate (which loads in one transaction)"
    )
    # by the files committed, not the rows: a chain's table loads its end state's rows
    # (fewer here, the chain deleted some), a table of several files may load as one
    whole = [
        RestoredTable("shop", "customers", 12, 0.1),
        RestoredTable("shop", "events", 2000, 1.0, files=3),
    ]
    assert committed(plan, whole, False, "existing") == (
        "committed: shop.customers, shop.events; not loaded: none; "
        "run it again with --truncate (which loads in one transaction)"
    )
    assert committed(plan, done, True, "whole") == (
        "nothing was committed (one transaction); run the same restore with --clean to start over"
    )
    assert committed(plan, [], False, "existing") is None  # nothing loaded: nothing to say
    assert committed(plan, done, False, "whole", created=True) is None  # dropped again
    assert committed(None, done, False, "existing") is None


def test_split_files_merge_into_one_table_and_restored_all() -> None:
    merged = merge(
        [
            RestoredTable("shop", "events", 3000, 1.0),
            RestoredTable("shop", "customers", 30, 0.5),
            RestoredTable("shop", "events", 3000, 2.0),
        ]
    )
    assert merged == [
        RestoredTable("shop", "customers", 30, 0.5),
        RestoredTable("shop", "events", 6000, 3.0, files=2),
    ]
    backup, _, plan = _shop_plan()
    assert restored_all(backup, plan)
    _, _, part = _shop_plan(tables=["shop.customers"])
    assert not restored_all(backup, part)
