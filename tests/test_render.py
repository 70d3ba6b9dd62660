"""Which encoding each column type gets, and the SQL that renders rows (no server)."""

from __future__ import annotations

import pytest

from asyncsnap.catalog import Column, Table, TypeInfo
from asyncsnap.encode.render import column_encoding, select_rows_sql

TYPES = {
    23: TypeInfo(23, "pg_catalog", "int4", "b", "N", 0, 0),
    1007: TypeInfo(1007, "pg_catalog", "_int4", "b", "A", 0, 23),
    114: TypeInfo(114, "pg_catalog", "json", "b", "U", 0, 0),
    3802: TypeInfo(3802, "pg_catalog", "jsonb", "b", "U", 0, 0),
    199: TypeInfo(199, "pg_catalog", "_json", "b", "A", 0, 114),
    701: TypeInfo(701, "pg_catalog", "float8", "b", "N", 0, 0),
    20000: TypeInfo(20000, "public", "money_d", "d", "N", 701, 0),  # domain over float8
    20001: TypeInfo(20001, "public", "doc", "d", "U", 3802, 0),  # domain over jsonb
    20002: TypeInfo(20002, "public", "pair", "c", "C", 0, 0),  # composite
    20003: TypeInfo(20003, "public", "_pair", "b", "A", 0, 20002),
    20004: TypeInfo(20004, "public", "geometry", "b", "U", 0, 0),  # an extension's type
    20005: TypeInfo(20005, "public", "mood", "e", "E", 0, 0),
    20006: TypeInfo(20006, "public", "ints", "d", "A", 1007, 0),  # domain over int4[]
}


def col(name: str, type_oid: int) -> Column:
    return Column(
        name=name, type="t", type_oid=type_oid, not_null=False, generated=None, identity=None
    )


@pytest.mark.parametrize(
    ("type_oid", "expected"),
    [
        (23, "json"),
        (701, "json"),
        (20000, "json"),
        (20005, "json"),
        (114, "text"),
        (3802, "text"),
        (20001, "text"),
        (20002, "text"),
        (20004, "text"),
        (199, "text"),
        (20003, "text"),
        (1007, "array"),
        (20006, "array"),
        (999999, "text"),  # unknown type: the text form is always exact
    ],
)
def test_column_encoding(type_oid: int, expected: str) -> None:
    assert column_encoding(col("c", type_oid), TYPES) == expected


def make_table(*columns: Column) -> Table:
    return Table(
        oid=1,
        schema='s"x',
        name="t.y",
        kind="table",
        parent=None,
        est_rows=0,
        table_bytes=0,
        readable=True,
        columns=columns,
    )


def test_rows_are_rendered_from_the_listed_columns_never_star() -> None:
    """A column renamed or added after the snapshot must make the query fail, never add
    keys the manifest does not list: the columns are named one by one."""
    sql = select_rows_sql(make_table(col("a", 23), col("r", 23)), TYPES)
    # r.* is the whole row even when a column is called "r".
    assert sql == (
        "SELECT pg_catalog.row_to_json(r.*)::pg_catalog.text "
        'FROM (SELECT "a", "r" FROM ONLY "s""x"."t.y") AS r'
    )


def test_float_zero_keeps_its_sign_as_a_string() -> None:
    sql = select_rows_sql(make_table(col("f", 701), col("m", 20000)), TYPES)
    assert sql.count("""THEN '"-0"'::pg_catalog.json""") == 2  # float8 and the domain over it
    assert select_rows_sql(make_table(col("a", 20006)), TYPES).count("0 = ANY") == 0


def test_special_columns_get_their_expressions() -> None:
    sql = select_rows_sql(make_table(col("a", 23), col('j"', 3802), col("arr", 1007)), TYPES)
    assert '"j"""::pg_catalog.text AS "j"""' in sql
    assert 'pg_catalog.array_lower("arr", 1) <> 1' in sql
    assert 'pg_catalog.to_json("arr"::pg_catalog.text)' in sql
    assert sql.startswith('SELECT pg_catalog.row_to_json(r.*)::pg_catalog.text FROM (SELECT "a", ')


def test_table_without_columns_gives_empty_objects() -> None:
    expected = """SELECT '{}'::pg_catalog.text FROM ONLY "s""x"."t.y\""""
    assert select_rows_sql(make_table(), TYPES) == expected
