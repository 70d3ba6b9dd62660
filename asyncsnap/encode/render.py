"""How a row becomes one line of JSON, rendered by the server. Pure SQL building, no I/O.

PostgreSQL's ``row_to_json`` is exact for most types (tests/test_restore.py's FIDELITY
table probes each). Where it is not, the column gets another *encoding*, recorded per
column in the manifest so that a reader knows how to take the value back:

``json``
    the value as ``to_json`` renders it (numbers, strings, booleans, nested arrays);
    float ``-0`` is written as the string ``"-0"``, like ``"NaN"`` and ``"Infinity"``.
``text``
    a JSON string holding the value's PostgreSQL text form (``value::text``); the type's
    input function reads it back exactly. Used for ``json`` (duplicate keys, whitespace
    and raw newlines survive), ``jsonb`` (so the JSON ``null`` stays distinct from SQL
    NULL), composite types, arrays of those, and base types from extensions (whose casts
    to json, such as PostGIS's, may lose information).
``array``
    a JSON array when every dimension starts at 1 (the usual case); otherwise a JSON
    string holding the text form, e.g. ``"[0:2]={1,2,3}"``, which keeps the bounds. Float
    arrays holding a zero are written in the text form too (it keeps ``-0``).

``select_rows_sql`` renders whole lines on the server: the definition of the format's
lines in SQL. Dumps no longer run it (``rowcodec`` converts COPY text natively, tested
byte for byte against it); ``bigrows`` renders a column at a time with
``column_json_sql``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from ..catalog import Column, Table, TypeInfo, quote_ident, sql_name

Encoding = Literal["json", "text", "array"]

# Types created after initdb have OIDs from here on (FirstNormalObjectId).
_FIRST_USER_OID = 16384
_TEXT_BASE_TYPES = {"json", "jsonb"}
_MAX_DOMAIN_DEPTH = 64


def resolve_domain(type_oid: int, types: Mapping[int, TypeInfo]) -> TypeInfo | None:
    info = types.get(type_oid)
    depth = 0
    while info is not None and info.typtype == "d" and depth < _MAX_DOMAIN_DEPTH:
        info = types.get(info.base_type)
        depth += 1
    return info


def _needs_text(info: TypeInfo | None, types: Mapping[int, TypeInfo]) -> bool:
    """Whether values of this (non-array) type must travel as their text form."""
    if info is None:
        return True  # unknown type: the text form is always exact
    if info.typtype == "c":
        return True
    if info.typtype == "b":
        if info.schema == "pg_catalog" and info.name in _TEXT_BASE_TYPES:
            return True
        return info.oid >= _FIRST_USER_OID
    return False


def _is_array(info: TypeInfo | None) -> bool:
    return info is not None and info.category == "A" and info.element != 0


def column_encoding(column: Column, types: Mapping[int, TypeInfo]) -> Encoding:
    """Decide how ``column``'s values are written (see the module docstring)."""
    info = resolve_domain(column.type_oid, types)
    if _is_array(info):
        assert info is not None
        element = resolve_domain(info.element, types)
        if _is_array(element) or _needs_text(element, types):
            return "text"
        return "array"
    return "text" if _needs_text(info, types) else "json"


_FLOATS = {"float4", "float8"}


def _is_float(info: TypeInfo | None) -> bool:
    return info is not None and info.schema == "pg_catalog" and info.name in _FLOATS


def _select_expression(column: Column, encoding: Encoding, types: Mapping[int, TypeInfo]) -> str:
    col = quote_ident(column.name)
    info = resolve_domain(column.type_oid, types)
    if encoding == "json" and _is_float(info):
        # -0 as the string "-0", like NaN and Infinity: a JSON number -0 does not survive
        # jsonb (numeric has no negative zero). The text test runs only for zeros.
        return (
            f"CASE WHEN {col} <> 0 OR {col} IS NULL THEN pg_catalog.to_json({col}) "
            f"WHEN {col}::pg_catalog.text = '-0' THEN '\"-0\"'::pg_catalog.json "
            f"ELSE pg_catalog.to_json({col}) END AS {col}"
        )
    if encoding == "json":
        return col
    if encoding == "text":
        return f"{col}::pg_catalog.text AS {col}"
    # Arrays: array_lower() rules out the common 1-D case cheaply; the regular
    # expression catches any later dimension that does not start at 1. Float arrays
    # holding a zero use the text form too, which keeps the sign of -0.
    element = resolve_domain(info.element, types) if info is not None else None
    zero = f" OR 0 = ANY ({col})" if _is_float(element) else ""
    return (
        f"CASE WHEN pg_catalog.array_lower({col}, 1) <> 1 OR "
        f"(pg_catalog.array_ndims({col}) > 1 AND "
        f"pg_catalog.array_dims({col}) !~ '^(\\[1:[0-9]+\\])+$'){zero} "
        f"THEN pg_catalog.to_json({col}::pg_catalog.text) ELSE pg_catalog.to_json({col}) END "
        f"AS {col}"
    )


def column_json_sql(column: Column, types: Mapping[int, TypeInfo]) -> str:
    """A ``json`` expression for one column's value exactly as it stands in the row's line
    (``row_to_json`` renders each field with ``to_json``); for rows read column by column
    (``bigrows``)."""
    encoding = column_encoding(column, types)
    col = quote_ident(column.name)
    if encoding == "json" and not _is_float(resolve_domain(column.type_oid, types)):
        return f"pg_catalog.to_json({col})"
    if encoding == "text":
        return f"pg_catalog.to_json({col}::pg_catalog.text)"
    return _select_expression(column, encoding, types).rsplit(" AS ", 1)[0]


# Types whose JSON is a string holding exactly their text form, so that a value too big to
# render at once can be sent as pieces of that text, each escaped as JSON.
_STRING_TYPES = {"text", "varchar", "name", "xml"}


def piecewise(column: Column, types: Mapping[int, TypeInfo]) -> Literal["text", "bytes"] | None:
    """How a value too big to render in one piece is read in pieces: ``"bytes"`` (bytea:
    raw bytes, hex-encoded here), ``"text"`` (its text form, escaped here), or ``None``
    when its JSON is not a plain string (arrays, numbers)."""
    encoding = column_encoding(column, types)
    if encoding == "text":
        return "text"
    info = resolve_domain(column.type_oid, types)
    if encoding != "json" or info is None or info.schema != "pg_catalog":
        return None
    if info.name == "bytea":
        return "bytes"
    return "text" if info.name in _STRING_TYPES else None


def encodings(table: Table, types: Mapping[int, TypeInfo]) -> dict[str, Encoding]:
    return {c.name: column_encoding(c, types) for c in table.columns}


def ctid_condition(pages: tuple[int, int | None]) -> str:
    """Rows on heap pages ``[first, end)``: a TID Range Scan on PostgreSQL 14+."""
    first, end = pages
    condition = f"ctid >= '({int(first)},0)'::pg_catalog.tid"
    if end is not None:
        condition += f" AND ctid < '({int(end)},0)'::pg_catalog.tid"
    return condition


def tid_literal(ctid: tuple[int, int]) -> str:
    """``'(page,item)'::pg_catalog.tid`` from two integers (never text from elsewhere)."""
    return f"'({int(ctid[0])},{int(ctid[1])})'::pg_catalog.tid"


def rows_where(
    pages: tuple[int, int | None] | None = None, after: tuple[int, int] | None = None
) -> str:
    """`` WHERE ...`` for a page range and rows after a given ctid, or ``""``."""
    conditions = []
    if pages is not None:
        conditions.append(ctid_condition(pages))
    if after is not None:
        conditions.append(f"ctid > {tid_literal(after)}")
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def select_rows_sql(
    table: Table,
    types: Mapping[int, TypeInfo],
    pages: tuple[int, int | None] | None = None,
    after: tuple[int, int] | None = None,
) -> str:
    """A query returning one ``text`` column: each row of ``table`` as a JSON object (the
    reference the native path is tested against, see the module docstring).

    The columns are named one by one from the catalog read in the snapshot (what the
    manifest lists), never ``r.*``: a column renamed or added after the snapshot makes the
    query fail instead of writing keys the manifest does not have. ``FROM ONLY``: rows of
    inheritance children belong to the children's own files. ``pages`` restricts it to a
    ctid page range (see ``plan.Chunk``), ``after`` to the rows after a ctid (in the
    range). ``r.*`` is exactly the listed columns.
    """
    source = f"FROM ONLY {sql_name(table.schema, table.name)}"
    where = rows_where(pages, after)
    encs = encodings(table, types)
    if not table.columns:
        return f"SELECT '{{}}'::pg_catalog.text {source}{where}"
    exprs = ", ".join(_select_expression(c, encs[c.name], types) for c in table.columns)
    return (
        # r.*, not r: a column called "r" would win over the whole-row reference.
        "SELECT pg_catalog.row_to_json(r.*)::pg_catalog.text "
        f"FROM (SELECT {exprs} {source}{where}) AS r"
    )
