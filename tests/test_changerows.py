"""An increment's rows read exactly as a full backup's: values in their text form (as a
replication slot sends them) become, through ``encode.changerows``, the very lines the
dump writes for the same rows. The dump's file is the oracle, on a table of every kind of
column the converter treats apart, with the values that are hard to carry (control
characters, -0, NaN, infinities, array bounds, JSON null, duplicate JSON keys, every byte)
and random ones."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from asyncsnap import _rows
from asyncsnap.catalog import describe_tables, list_tables, read_types
from asyncsnap.changes import RowChange, read_changes
from asyncsnap.connection import resolve
from asyncsnap.dump import dump
from asyncsnap.encode.changerows import ChangeRowEncoder
from asyncsnap.pgoutput import UNCHANGED, parse_lsn
from asyncsnap.session import Session, SessionPolicy
from asyncsnap.slot import SlotCreation
from tests.conftest import Database

SCHEMA = """
CREATE TYPE public.mood AS ENUM ('sad', 'ok');
CREATE DOMAIN public.posint AS int CHECK (VALUE > 0);
CREATE TYPE public.pair AS (a int, b text);
CREATE TABLE public.every (
    id int PRIMARY KEY, i2 int2, i8 int8, n numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(10), c char(3), by bytea, ts timestamp, tz timestamptz, d date,
    tm time, ttz timetz, iv interval, u uuid, j json, jb jsonb, e public.mood,
    dom public.posint, comp public.pair, ia int[], ta text[], fa float8[], na numeric[],
    ra int4range, ip inet, pt point, bits bit varying(8), m money);
CREATE PUBLICATION every_rows FOR TABLE public.every;
-- decoding reads flushed WAL only: the rows' commits wait for their flush
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', current_database());
END $$;
"""
ROWS = """
INSERT INTO public.every (id) VALUES (1);
INSERT INTO public.every VALUES (2, -32768, 9223372036854775807, 'NaN', '-0', '-0', true,
    E'tab\\there\\nnew\\\\back\\rcr\\bbs\\ffeed\\vvt "q" \\u00e9\\U0001F600', 'ab\\cd', 'x',
    '\\x00ff5c0a090d', '-infinity', 'infinity', '4713-01-01 BC', '24:00', '00:00+14',
    '-178000000 years -2147483647 days -2562047:00:54.775807',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1, "a": 2}', 'null', 'ok', 7,
    '(1,"x,\\"y\\"")', '[0:2]={1,NULL,3}', '{"a\\tb",NULL,"NULL","\\\\"}', '{-0,NaN,1e-310}',
    '{{1.5,2},{NaN,-Infinity}}', 'empty', '::ffff:1.2.3.4/128', '(1e300,-0)', B'1010',
    '-92233720368547758.08');
INSERT INTO public.every VALUES (3, 1, -1, '123456789012345678901234567890.000000000001',
    'Infinity', '1e-320', false, '', '', '', '\\x', '2000-02-29 23:59:59.999999',
    '1970-01-01 00:00:00+00', '5874897-12-31', '00:00:00.000001', '23:59:59-15:59',
    'P1Y2M3DT4H5M6.789S', '00000000-0000-0000-0000-000000000000', '[]', '{"k": [1, {"z": null}]}',
    'sad', 1, '(,)', '{}', '{}', '{}', '{}', '[1,5)', '10.0.0.0/8', '(0,0)', B'', '0');
"""
COLUMNS = [
    "id",
    "i2",
    "i8",
    "n",
    "f4",
    "f8",
    "b",
    "t",
    "vc",
    "c",
    "by",
    "ts",
    "tz",
    "d",
    "tm",
    "ttz",
    "iv",
    "u",
    "j",
    "jb",
    "e",
    "dom",
    "comp",
    "ia",
    "ta",
    "fa",
    "na",
    "ra",
    "ip",
    "pt",
    "bits",
    "m",
]


async def _lines_both_ways(
    db: Database, output: Path, seed: int
) -> tuple[list[bytes], list[bytes]]:
    """The dump's lines of the table, and the lines encoded from the rows' inserts as the
    slot (made before them) sends them, decoded in a session with the dump's settings."""
    conn = await Session(resolve(db.dsn), SessionPolicy()).connect()
    try:
        version = await conn.fetchval("SELECT current_setting('server_version_num')::int")
        creation = SlotCreation(resolve(db.dsn), f"rows_{seed}", version)
        lsn, _, _ = await creation.create()
        await creation.close()
        await anyio.to_thread.run_sync(_insert_rows, db, seed)
        result = await dump(
            db.dsn, output=output, name="b", tables=["public.every"], with_schema=False
        )
        every = [t for t in await list_tables(conn) if t.name == "every"]
        (table,) = await describe_tables(conn, every)
        types = await read_types(conn, [table.oid])
        assert [c.name for c in table.columns] == COLUMNS
        changes = await read_changes(conn, f"rows_{seed}", "every_rows", parse_lsn(lsn))
        inserted = [
            change.new
            for t in changes.transactions
            for change in t.changes
            if isinstance(change, RowChange) and change.kind == "insert"
        ]
        rows = [[v for v in new if v != UNCHANGED] for new in inserted if new is not None]
        assert all(len(r) == len(COLUMNS) for r in rows)
        encoded = await ChangeRowEncoder(table, types).encode(conn, rows)  # type: ignore[arg-type]
        await conn.execute("SELECT pg_drop_replication_slot($1)", f"rows_{seed}")
    finally:
        await conn.close()
    dumped = []
    for f in sorted((Path(result.path) / "data").glob("public.every-*")):
        dumped += zstandard.ZstdDecompressor().decompress(f.read_bytes(), 1 << 26).splitlines()
    return dumped, encoded


def _insert_rows(db: Database, seed: int) -> None:
    db.execute(ROWS)
    _random_rows(db, seed)


def _random_rows(db: Database, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(100, 160):
        text = "".join(
            chr(
                rng.choice(
                    [0x9, 0xA, 0xD, 0x5C, 0x22, 0x20, 0x7F, 0xE9, 0x1F600]
                    + [rng.randint(0x20, 0x7E)] * 6
                )
            )
            for _ in range(rng.randint(0, 30))
        )
        db.execute(
            "INSERT INTO public.every (id, t, by, f8, n, ia, fa, jb) VALUES"
            " ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
            i,
            text,
            bytes(rng.randrange(256) for _ in range(rng.randint(0, 20))),
            rng.choice([0.1, -0.0, 1e308, 5e-324, rng.uniform(-1e6, 1e6), float("nan")]),
            str(rng.randint(-(10**30), 10**30)) + "." + str(rng.randint(0, 10**9)),
            [rng.randint(-5, 5) for _ in range(rng.randint(0, 4))],
            [rng.choice([0.0, -0.0, 1.5, float("inf")]) for _ in range(rng.randint(0, 3))],
            rng.choice(['{"a": "\\u0001x"}', '"text"', "1e400", '[null, true, {"": ""}]']),
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_slot_values_become_the_dumps_own_lines(db: Database, tmp_path: Path, seed: int) -> None:
    db.execute(SCHEMA)
    dumped, encoded = anyio.run(_lines_both_ways, db, tmp_path, seed, backend="asyncio")
    assert len(dumped) == 63
    assert sorted(encoded) == sorted(dumped)


def test_copy_fields_are_escaped_as_copy_escapes_them() -> None:
    assert _rows.copy_text([(None, b"\\N")]) == b"\\N\t\\\\N\n"  # NULL; the two characters
    assert _rows.copy_text([(bytes(range(14)),), ()]) == (
        b"\x00\x01\x02\x03\x04\x05\x06\x07\\b\\t\\n\\v\\f\\r\n\n"
    )
    with pytest.raises(TypeError):
        _rows.copy_text([("text",)])  # type: ignore[list-item]


# Field bytes drawn mostly from what COPY escapes, so that rows with and without them,
# and with tabs that are not separators, all occur.
_fields = st.one_of(st.none(), st.binary(max_size=6), st.sampled_from([b"\t", b"\\", b"\n"]))


@given(st.lists(st.lists(_fields, max_size=6).map(tuple), max_size=4))
def test_rows_are_copy_lines_of_their_fields(rows: list[tuple[bytes | None, ...]]) -> None:
    """Each row a line: its fields tab-separated, NULL as ``\\N``, COPY's escapes (a
    backslash and \\b \\f \\n \\r \\t \\v) applied to each value."""
    escapes = {0x5C: b"\\\\", 8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v"}
    fields = [
        [b"\\N" if v is None else b"".join(escapes.get(c, bytes([c])) for c in v) for v in row]
        for row in rows
    ]
    assert _rows.copy_text(rows) == b"".join(b"\t".join(row) + b"\n" for row in fields)


@pytest.mark.versions
def test_slot_values_become_the_dumps_own_lines_on_each_major(db: Database, tmp_path: Path) -> None:
    db.execute(SCHEMA)
    dumped, encoded = anyio.run(_lines_both_ways, db, tmp_path, 2, backend="asyncio")
    assert sorted(encoded) == sorted(dumped) and len(dumped) == 63
