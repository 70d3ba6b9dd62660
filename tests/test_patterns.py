"""pg_dump-style -t/-T/-n/-N patterns and table selection, without a server."""

from __future__ import annotations

import pytest

from asyncsnap.catalog import Table
from asyncsnap.errors import NoTablesMatched, UsageError
from asyncsnap.patterns import SchemaPattern, Selection, TablePattern


def t(schema: str, name: str, parent: str | None = None, kind: str = "table") -> Table:
    return Table(
        oid=0,
        schema=schema,
        name=name,
        kind=kind,  # type: ignore[arg-type]
        parent=(schema, parent) if parent else None,
        est_rows=0,
        table_bytes=0,
        readable=True,
    )


@pytest.mark.parametrize(
    ("pattern", "schema", "name", "expected"),
    [
        ("orders", "public", "orders", True),
        ("orders", "other", "orders", True),
        ("ORDERS", "public", "orders", True),  # folded
        ('"ORDERS"', "public", "orders", False),  # quoted: exact
        ('"Orders"', "public", "Orders", True),
        ("public.ord*", "public", "orders", True),
        ("public.ord*", "sales", "orders", False),
        ("*.orders", "sales", "orders", True),
        ("ord?rs", "public", "orders", True),
        ("ord?rs", "public", "ordrs", False),
        ("ord", "public", "orders", False),  # whole-name match
        ('"a.b"', "public", "a.b", True),  # dot inside quotes is literal
        ('"we""ird"', "public", 'we"ird', True),
        ("a+b", "public", "a+b", True),  # regex characters are literal
        ("a+b", "public", "aab", False),
        ('"*"', "public", "*", True),
        ('"*"', "public", "x", False),
    ],
)
def test_table_pattern(pattern: str, schema: str, name: str, expected: bool) -> None:
    assert TablePattern.parse(pattern).matches(schema, name) is expected


@pytest.mark.parametrize("bad", ['"open', "a.b.c", "public.", ""])
def test_invalid_table_patterns(bad: str) -> None:
    with pytest.raises(UsageError):
        TablePattern.parse(bad)


def test_schema_pattern() -> None:
    assert SchemaPattern.parse("pub*").matches("public")
    assert not SchemaPattern.parse('"Public"').matches("public")
    with pytest.raises(UsageError, match=r"invalid schema pattern .a\.b.") as caught:
        SchemaPattern.parse("a.b")
    assert caught.value.hint is not None and "no dot" in caught.value.hint


TABLES = [
    t("public", "orders"),
    t("public", "customers"),
    t("audit", "log"),
    t("public", "m", kind="partitioned"),
    t("public", "m_1", "m", "partition"),
    t("public", "m_2", "m", "partition"),
]


def chosen(**kw: list[str]) -> list[str]:
    return [x.name for x in Selection.from_strings(**kw).apply(TABLES)]


def test_selection_rules() -> None:
    assert chosen() == ["orders", "customers", "log", "m", "m_1", "m_2"]
    assert chosen(include=["orders", "log"]) == ["orders", "log"]
    assert chosen(schemas=["audit"]) == ["log"]
    assert chosen(include=["orders"], schemas=["audit"]) == []  # both must hold
    assert chosen(exclude_schemas=["public"]) == ["log"]
    assert chosen(exclude=["o*"]) == ["customers", "log", "m", "m_1", "m_2"]
    assert chosen(include=["m"]) == ["m", "m_1", "m_2"]  # a parent brings its partitions
    assert chosen(exclude=["m"]) == ["orders", "customers", "log"]
    assert chosen(include=["m_1"]) == ["m_1"]


def test_require_reports_the_filters() -> None:
    with pytest.raises(NoTablesMatched, match="-t nope -N public"):
        Selection.from_strings(include=["nope"], exclude_schemas=["public"]).require(TABLES)
    with pytest.raises(NoTablesMatched):  # a partitioned parent alone holds no rows
        Selection.from_strings(include=["m"], exclude=["m_*"]).require(TABLES)
