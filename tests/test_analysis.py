"""Exact types for analysis (asyncsnap.analysis.readers): Parquet, Arrow and DuckDB views give
back the fidelity tables' values, as docs/format.md "Reading with exact types" says."""

from __future__ import annotations

import decimal
import json
import math
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from asyncsnap.analysis.readers import convert, read_arrow, typed_columns
from asyncsnap.errors import ExitCode
from asyncsnap.storage.backup import open_backup

from .conftest import Database, run_cli
from .helpers import failed_with, flip_bit_mid_file, manifest_of, read_rows, table_entry
from .test_dump import run_dump
from .test_restore import FIDELITY

duckdb = pytest.importorskip("duckdb", reason="the analysis extra (DuckDB)")
pq = pytest.importorskip("pyarrow.parquet", reason="the analysis extra (pyarrow)")

EXTRA = """
CREATE TABLE decimals (id int PRIMARY KEY, d numeric(30,10), big numeric(38,0), tiny numeric(3,3));
INSERT INTO decimals VALUES
  (1, 12345678901234567890.0123456789, 99999999999999999999999999999999999999, 0.001),
  (2, -0.0000000001, -99999999999999999999999999999999999999, -0.999),
  (3, NULL, NULL, NULL);
"""

# The session the dump renders values in: PostgreSQL's text forms are compared under it.
SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "lc_monetary": "C",
}


def _as_text(column: str) -> str:
    quoted = '"' + column + '"'
    # (a composite of NULLs IS NULL, but its text is not)
    return f"CASE WHEN {quoted}::text IS NULL THEN NULL ELSE format('%s', {quoted}) END"


async def _text_rows(dsn: str, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn, server_settings=SETTINGS)
    try:
        # format's %s is the type's output function, what COPY and the dump write
        # (inet's cast to text adds the mask the output function leaves out)
        select = ", ".join(f"encode({c}, 'hex')" if c == "b" else _as_text(c) for c in columns)
        rows = await conn.fetch(f"SELECT {select} FROM {table} ORDER BY id")
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


def postgres_text(db: Database, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    return anyio.run(_text_rows, db.dsn, table, columns, backend="asyncio")


def engine_text(value: Any, engine_type: str) -> Any:
    """A value read back from Parquet, written as PostgreSQL writes it in text."""
    if value is None:
        return None
    if engine_type in ("FLOAT", "DOUBLE"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value == 0 and math.copysign(1, value) < 0:
            return "-0"
        # the shortest text that reads back as the same float, as PostgreSQL prints it
        text = repr(value) if engine_type == "DOUBLE" else _float32_repr(value)
        return text.replace("e-0", "e-").removesuffix(".0")
    if engine_type.startswith("DECIMAL"):
        return format(value, "f")  # with the column's scale, as numeric(p,s) prints
    if engine_type == "BOOLEAN":
        return "t" if value else "f"
    if engine_type == "BLOB":
        return value.hex()
    return str(value)


def _float32_repr(value: float) -> str:
    import struct

    for digits in range(1, 18):
        text = f"{value:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
            return text if "e" in text or "." in text else text + ".0"
    return repr(value)


def test_parquet_gives_back_every_value_it_can_hold(db: Database, tmp_path: Path) -> None:
    """Each fidelity table converted to Parquet, read back with pyarrow: every column of
    an exact engine type holds PostgreSQL's value (compared in PostgreSQL's text form),
    every text-form column PostgreSQL's text, every array the JSON the backup holds.
    Dates, timestamps and times are compared through DuckDB (Python's datetime has no BC
    years, infinities or 24:00)."""
    db.execute(FIDELITY + EXTRA)
    db.execute("DELETE FROM times WHERE id = 5")  # past DuckDB's range: its own test below
    backup = Path(run_dump(db, tmp_path, name="b").path)
    result = convert(backup, tmp_path / "parquet")
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "parquet").iterdir()} == {0o600}
    opened = open_backup(backup)
    lines = read_rows(backup)  # each array column is compared with the value as written
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    checked = 0
    for converted in result.tables:
        table = next(t for t in opened.tables if t.name == converted.name)
        if not table.rows or "id" not in [c.name for c in table.columns]:
            continue
        path = tmp_path / "parquet" / converted.path
        arrow = pq.read_table(path)
        assert arrow.num_rows == table.rows
        columns = typed_columns(table, portable_times=True)
        expected = postgres_text(db, f'"{table.name}"', [c.name for c in columns])
        order = arrow.column("id").to_pylist()
        by_id = {int(row[0]): row for row in expected}
        for i, column in enumerate(columns):
            if column.engine_type in ("DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIME"):
                got = _temporal_as_postgres(con, path, column.name)
            else:
                values = arrow.column(column.name).to_pylist()
                if column.engine_type == "JSON" and column.pg_type.endswith("[]"):
                    # the array as the backup holds it (a JSON array, or the text form)
                    got = [v if v is None else json.loads(v) for v in values]
                    by_row = {r["id"]: r[column.name] for r in lines[table.key]}
                    want = [by_row[row_id] for row_id in order]
                    assert got == want, (table.name, column.name)
                    checked += 1
                    continue
                got = [engine_text(v, column.engine_type) for v in values]
            want = [by_id[row_id][i] for row_id in order]
            if column.engine_type.startswith("DECIMAL"):
                values = arrow.column(column.name).to_pylist()
                assert all(isinstance(v, decimal.Decimal) for v in values if v is not None)
            assert got == want, (table.name, column.name, column.engine_type)
            checked += 1
    assert checked > 60
    # The example: numeric(30,10) is a DECIMAL, every digit kept.
    decimals = pq.read_table(
        tmp_path / "parquet" / next(t.path for t in result.tables if t.name == "decimals")
    )
    assert str(decimals.schema.field("d").type) == "decimal128(30, 10)"
    assert decimals.column("d").to_pylist()[0] == decimal.Decimal("12345678901234567890.0123456789")
    assert decimals.column("big").to_pylist()[1] == -(10**38 - 1)


def _temporal_as_postgres(con: Any, path: Path, column: str) -> list[Any]:
    """DuckDB's text of a date or time value, in PostgreSQL's spelling (BC at the end,
    ``+00`` for UTC)."""
    rows = con.execute(
        f'SELECT CAST("{column}" AS VARCHAR) FROM read_parquet(?)', [str(path)]
    ).fetchall()
    out = []
    for (text,) in rows:
        if text is not None and " (BC)" in text:
            text = text.replace(" (BC)", "") + " BC"
        out.append(text)
    return out


def test_views_and_arrow_read_exact_types(db: Database, tmp_path: Path) -> None:
    """`inspect --sql duckdb` runs in DuckDB as printed; numeric(30,10) is DECIMAL(30,10),
    bytea BLOB, jsonb JSON with its null; read_arrow gives pandas the same digits."""
    db.execute(
        "CREATE TABLE t (id int, d numeric(30,10), b bytea, j jsonb, u uuid, n numeric);"
        "INSERT INTO t VALUES (1, 12345678901234567890.0123456789, '\\x00ff', 'null',"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1e-40), (2, NULL, NULL, NULL, NULL, 'NaN')"
    )
    backup = Path(run_dump(db, tmp_path, name="b").path)
    run = run_cli("inspect", str(backup), "--sql", "duckdb")
    assert run.returncode == 0, run.stderr
    con = duckdb.connect()
    con.execute(run.stdout)
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 't'"
        ).fetchall()
    )
    assert types == {
        "id": "INTEGER",
        "d": "DECIMAL(30,10)",
        "b": "BLOB",
        "j": "JSON",
        "u": "UUID",
        "n": "VARCHAR",
    }
    rows = con.execute('SELECT d, b, j, n FROM public."t" ORDER BY id').fetchall()
    assert rows == [
        (
            decimal.Decimal("12345678901234567890.0123456789"),
            b"\x00\xff",
            "null",
            "0.0000000000000000000000000000000000000001",
        ),
        (None, None, None, "NaN"),
    ]
    # the Arrow table pandas and polars are built from: the same exact values and types
    arrow = read_arrow(backup, "public.t")
    assert str(arrow.schema.field("d").type) == "decimal128(30, 10)"
    assert arrow.column("d").to_pylist()[0] == decimal.Decimal("12345678901234567890.0123456789")
    assert arrow.column("b").to_pylist() == [b"\x00\xff", None]
    assert arrow.column("j").to_pylist() == ["null", None]
    assert arrow.column("n").to_pylist() == ["0.0000000000000000000000000000000000000001", "NaN"]


def test_a_value_without_an_exact_engine_type_fails_loudly_and_leaves_no_file(
    db: Database, tmp_path: Path
) -> None:
    """A timestamp past DuckDB's range and a NaN in numeric(p,s): convert fails naming
    the value (never NULL in its place) and leaves no Parquet file behind."""
    db.execute(
        "CREATE TABLE a_ok (id int); INSERT INTO a_ok VALUES (1);"
        "CREATE TABLE late (id int, ts timestamptz);"
        "INSERT INTO late VALUES (1, '294276-12-31 23:59:59.999999+00')"
    )
    backup = Path(run_dump(db, tmp_path, name="b").path)
    out = tmp_path / "parquet"
    run = run_cli("convert", str(backup), "--to", "parquet", str(out))
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[0].startswith(
        "error: public.late: a value has no exact engine type: Conversion Error: "
    )
    assert "294276-12-31" in run.stderr
    assert list(out.iterdir()) == []

    db.execute(
        "DROP TABLE late; CREATE TABLE nan (id int, n numeric(10,2));"
        "INSERT INTO nan VALUES (1, 'NaN')"
    )
    backup = Path(run_dump(db, tmp_path, name="c").path)
    with pytest.raises(Exception, match=r"public\.nan: a value has no exact engine type"):
        read_arrow(backup, "nan")


def test_convert_refuses_a_damaged_data_file_and_leaves_no_output(
    db: Database, tmp_path: Path
) -> None:
    """convert reads through the checked reader: a data file with one bit flipped fails it
    with exit 5 (verification failed), one error line naming that file and one hint,
    and no Parquet file (not even the undamaged table's) is left in the directory."""
    db.execute(
        "CREATE TABLE a_ok (id int PRIMARY KEY); INSERT INTO a_ok SELECT generate_series(1, 50);"
        "CREATE TABLE z_hit (id int PRIMARY KEY, v text);"
        "INSERT INTO z_hit SELECT g, md5(g::text) FROM generate_series(1, 2000) g"
    )
    backup = Path(run_dump(db, tmp_path, name="b").path)
    (entry,) = next(t for t in manifest_of(backup)["tables"] if t["name"] == "z_hit")["files"]
    flip_bit_mid_file(backup / entry["path"])
    out = tmp_path / "parquet"
    run = run_cli("convert", str(backup), "--to", "parquet", str(out))
    failed_with(run, ExitCode.VERIFY, f"{entry['path']} ", "the backup is damaged")
    assert list(out.iterdir()) == []


def test_convert_never_overwrites_an_existing_output_file(db: Database, tmp_path: Path) -> None:
    """A file already at one of the output paths: convert exits 4 (output error) before it
    writes anything, naming that file, with the documented hint; the file keeps its bytes
    and no other file appears."""
    db.execute(
        "CREATE TABLE a_first (id int); INSERT INTO a_first VALUES (1);"
        "CREATE TABLE b_taken (id int); INSERT INTO b_taken VALUES (2)"
    )
    backup = Path(run_dump(db, tmp_path, name="b").path)
    out = tmp_path / "parquet"
    out.mkdir()
    # DIR/<file stem>.parquet, the stem as in the backup's data file's name
    data_file = Path(table_entry(backup, "public", "b_taken")["files"][0]["path"]).name
    taken = out / (data_file.split(".ndjson")[0] + ".parquet")
    taken.write_bytes(b"mine, not a conversion")
    run = run_cli("convert", str(backup), "--to", "parquet", str(out))
    failed_with(
        run, ExitCode.OUTPUT, f"{taken} exists already", "convert into an empty or new directory"
    )
    assert [p.name for p in out.iterdir()] == [taken.name]
    assert taken.read_bytes() == b"mine, not a conversion"
