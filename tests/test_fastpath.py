"""The fast data path (``rowcodec`` and the native ``_rows``): exact at every edge.

The dump's converter must write byte for byte what the server-rendered path writes
(``render.select_rows_sql``), which the fidelity suite proves exact; the restore's
converter must give each value to its type's input function as ``json_to_recordset``
did, and refuse a line that is not what the format says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import orjson
import pytest

from asyncsnap import _rows, verify
from asyncsnap.catalog import describe_tables, list_tables, read_types
from asyncsnap.encode.render import select_rows_sql
from asyncsnap.encode.rowcodec import (
    BINARY_HEADER,
    DumpShape,
    LineSplitter,
    LoadShape,
    column_kind,
    copy_query,
)
from asyncsnap.format import RENDER_SETTINGS
from asyncsnap.restore.load import BATCH_BYTES

from .conftest import Database, Postgres, fresh_database
from .helpers import reseal
from .test_dump import run_dump
from .test_restore import (
    FIDELITY,
    XML_FIDELITY,
    copy_schema,
    digests,
    has_xml,
    run_restore,
)


def escape_json(value: bytes) -> bytes:
    """PostgreSQL's escape_json, written from its definition."""
    short = {b'"': b'\\"', b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n",
             b"\r": b"\\r", b"\t": b"\\t"}  # fmt: skip
    out = [b'"']
    for i in range(len(value)):
        c = value[i : i + 1]
        if c in short:
            out.append(short[c])
        elif c[0] < 0x20:
            out.append(b"\\u%04x" % c[0])
        else:
            out.append(c)
    out.append(b'"')
    return b"".join(out)


def copy_escape(value: bytes) -> bytes:
    """COPY TO's text escaping of one value."""
    table = {b"\\": b"\\\\", b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n", b"\r": b"\\r",
             b"\t": b"\\t", b"\v": b"\\v"}  # fmt: skip
    return b"".join(table.get(value[i : i + 1], value[i : i + 1]) for i in range(len(value)))


def convert(line: bytes, kinds: bytes) -> bytes:
    names = [f"c{i}" for i in range(len(kinds))]
    prefixes = tuple(
        (b"{" if i == 0 else b",") + escape_json(n.encode()) + b":" for i, n in enumerate(names)
    )
    out, rows, _ = _rows.copy_to_ndjson(line, kinds, prefixes)
    assert rows == line.count(b"\n")
    return out


# -- dump: COPY text -> NDJSON, without a server ------------------------------------------


def test_string_escaping_is_escape_json_for_every_byte() -> None:
    every = bytes(range(1, 256)).replace(b"\n", b"").replace(b"\t", b"") + "é😀".encode()
    for value in (every, b"", b"\\N", b"plain", b'"' * 3):
        out = convert(copy_escape(value) + b"\n", b"s")
        assert out == b'{"c0":' + escape_json(value) + b"}\n", value


def test_copy_unescape_reads_every_escape_copy_accepts() -> None:
    # octal and hex escapes are never written by COPY TO but are COPY text all the same
    out = convert(b"a\\101\\x42\\x4\\7\\\\\\q\\v\n", b"s")
    assert out == b'{"c0":"aAB\\u0004\\u0007\\\\q\\u000b"}\n'


@pytest.mark.parametrize(
    ("text", "kind", "json_value"),
    [
        (b"123", b"n", b"123"),
        (b"-9223372036854775808", b"n", b"-9223372036854775808"),
        (
            b"123456789012345678901234567890.123456789",
            b"n",
            b"123456789012345678901234567890.123456789",
        ),
        (b"NaN", b"n", b'"NaN"'),
        (b"Infinity", b"n", b'"Infinity"'),
        (b"-Infinity", b"n", b'"-Infinity"'),
        (b"0.000", b"n", b"0.000"),
        (b"1e-310", b"f", b"1e-310"),
        (b"1.7976931348623157e+308", b"f", b"1.7976931348623157e+308"),
        (b"-0", b"f", b'"-0"'),
        (b"-0", b"n", b"-0"),  # numeric has no negative zero; an int -0 cannot be printed
        (b"0", b"f", b"0"),
        (b"NaN", b"f", b'"NaN"'),
        (b"t", b"b", b"true"),
        (b"f", b"b", b"false"),
        (b"\\N", b"n", b"null"),
        (b"\\N", b"s", b"null"),
        (b"\\\\N", b"s", b'"\\\\N"'),
        (b"2024-02-29", b"s", b'"2024-02-29"'),
        (b"2024-01-01 10:00:00", b"t", b'"2024-01-01T10:00:00"'),
        (b"4713-01-01 00:00:00 BC", b"t", b'"4713-01-01T00:00:00 BC"'),
        (b"2262-04-11 23:47:16.854775", b"t", b'"2262-04-11T23:47:16.854775"'),
        (b"294276-12-31 23:59:59.999999+00", b"z", b'"294276-12-31T23:59:59.999999+00:00"'),
        (b"0001-01-01 00:00:00+00 BC", b"z", b'"0001-01-01T00:00:00+00:00 BC"'),
        (b"1900-06-15 09:13:56.123456+05:45", b"z", b'"1900-06-15T09:13:56.123456+05:45"'),
        (b"1900-01-01 00:00:00+05:53:28", b"z", b'"1900-01-01T00:00:00+05:53:28"'),
        (b"2000-01-01 00:00:00-03", b"z", b'"2000-01-01T00:00:00-03:00"'),
        (b"infinity", b"z", b'"infinity"'),
        (b"-infinity", b"t", b'"-infinity"'),
        (b'[1,"a\\\\"b"]', b"r", b'[1,"a\\"b"]'),
    ],
)
def test_each_kind_at_its_edges(text: bytes, kind: bytes, json_value: bytes) -> None:
    assert convert(text + b"\n", kind) == b'{"c0":' + json_value + b"}\n"


@pytest.mark.parametrize(
    ("text", "kinds", "complaint"),
    [
        (b"2024-01-01T10:00:00\n", b"t", "timestamp"),
        (b"2024-01-01 10:00:00+00 AD\n", b"z", "timestamp"),
        (b"2024-01-01 10:00:00\n", b"z", "timestamp"),
        (b"yes\n", b"b", "boolean"),
        (b"1\\t2\n", b"n", "number"),
        (b"1\t2\n", b"n", "number of columns"),
        (b"1\n", b"nn", "number of columns"),
        (b"x\n", b"", "without columns"),
        (b"\n", b"r", "JSON"),
        (b"[\\n]\n", b"r", "JSON"),
    ],
)
def test_unexpected_copy_text_is_refused(text: bytes, kinds: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        convert(text, kinds)


def test_partial_lines_are_kept_for_the_next_piece() -> None:
    splitter = LineSplitter()
    assert splitter.whole_lines(b"1\tab") == b""
    assert splitter.whole_lines(b"c\n2\t") == b"1\tabc\n"
    assert splitter.pending == 2
    assert splitter.whole_lines(b"x\n") == b"2\tx\n"
    assert splitter.pending == 0
    with pytest.raises(ValueError, match="whole line"):
        _rows.copy_to_ndjson(b"1", b"n", (b'{"a":',))


def test_dump_shape_and_query_are_planned_from_the_catalog() -> None:
    """Pure planning: each column's kind, the SELECT with quoted names and the array
    column's server expression, and when the plain ``COPY table`` form may be used."""
    from .test_render import TYPES, col, make_table

    table = make_table(col("a", 23), col('j"', 3802), col("arr", 1007), col("f", 701))
    shape = DumpShape.of(table, TYPES)
    assert shape.kinds == b"nsrf" and not shape.plain_table  # the array is server-rendered
    query = copy_query(table, shape, pages=(0, 10))
    assert query.startswith('SELECT "a", "j""", (CASE WHEN pg_catalog.array_lower("arr", 1)')
    assert query.endswith(
        """, "f" FROM ONLY "s""x"."t.y" WHERE ctid >= '(0,0)'::pg_catalog.tid """
        """AND ctid < '(10,0)'::pg_catalog.tid"""
    )
    assert DumpShape.of(make_table(col("a", 23), col("j", 3802)), TYPES).plain_table
    assert shape.prefixes == (b'{"a":', b',"j\\"":', b',"arr":', b',"f":')


# -- restore: NDJSON -> COPY text, without a server ---------------------------------------


def to_copy(line: bytes, actions: bytes, delimiters: bytes | None = None) -> bytes:
    names = tuple(f"c{i}".encode() for i in range(len(actions)))
    out, rows = _rows.ndjson_to_copy(line, names, actions, delimiters or b"," * len(actions))
    assert rows == line.count(b"\n")
    return out


def test_strings_decode_and_escape_for_copy() -> None:
    value = 'quote " back \\ nl \n cr \r tab \t ctl \x01 é 😀 \u2028'
    line = b'{"c0":' + orjson.dumps(value) + b',"c1":"\\ud83d\\ude00\\u00e9\\/"}\n'
    out = to_copy(line, b"tt")
    assert (
        out
        == copy_escape(value.encode())
        .replace(b"\\b", b"\b")
        .replace(b"\\f", b"\f")
        .replace(b"\\v", b"\v")
        + b"\t"
        + "😀é/".encode()
        + b"\n"
    )


def test_scalars_and_arrays_become_copy_text() -> None:
    line = (
        b'{"c0":1.5e3,"c1":true,"c2":false,"c3":null,"c4":"NaN",'
        b'"c5":[[1,null],["a\\"b\\\\c","NULL"]],"c6":"[0:1]={1,2}","c7":[],"c8":{"x":[1]},'
        b'"c9":["(1,1),(0,0)","(2,2),(1,1)"]}\n'
    )
    out = to_copy(line, b"jjjjjaaaxa", b",,,,,,,,,;")
    assert out == (
        b'1.5e3\ttrue\tfalse\t\\N\tNaN\t{{1,NULL},{"a\\\\"b\\\\\\\\c","NULL"}}\t[0:1]={1,2}\t{}\t'
        b'{"(1,1),(0,0)";"(2,2),(1,1)"}\n'
    )


def test_booleans_reach_input_functions_as_json_to_recordset_gave_them() -> None:
    """The token itself, not t/f: boolin takes it, and a (hand-made) boolean in a text
    column is stored as "true", as the json_to_recordset path stored it."""
    assert to_copy(b'{"c0":true,"c1":[false]}\n', b"ja") == b"true\t{false}\n"
    # an empty column name is a name like any other
    out, rows = _rows.ndjson_to_copy(b'{"":1}\n', (b"",), b"j", b",")
    assert (out, rows) == (b"1\n", 1)


def test_table_without_columns() -> None:
    assert to_copy(b"{}\n{ }\n", b"") == b"\n\n"


@pytest.mark.parametrize(
    ("line", "actions", "complaint"),
    [
        (b'{"c1":1,"c0":2}\n', b"jj", "manifest's columns in its order"),
        (b'{"c0":1}\n', b"jj", "column is missing"),
        (b'{"c0":1,"c1":2,"c2":3}\n', b"jj", "more keys"),
        (b'{"c0":{"a":1}}\n', b"j", "expected a number"),
        (b'{"c0":[1]}\n', b"j", "expected a number"),
        (b'{"c0":1}\n', b"t", "expected a string"),
        (b'{"c0":true}\n', b"a", "expected an array"),
        (b'{"c0":[{"a":1}]}\n', b"a", "object inside an array"),
        (b'{"c0":[[[[[[[1]]]]]]]}\n', b"a", "6 dimensions"),
        (b'{"c0":"\\u0000"}\n', b"t", "u0000"),
        (b'{"c0":"\\ud800x"}\n', b"t", "surrogate"),
        (b'{"c0":"\\q"}\n', b"t", "invalid escape"),
        (b'{"c0":"a\tb"}\n', b"t", "control character"),
        (b'{"c0":01}\n', b"j", "invalid number"),
        (b'{"c0":1} x\n', b"j", "more after"),
        (b"[1]\n", b"j", "not a JSON object"),
        (b'{"c0":"x"\n', b"t", "more keys"),
    ],
)
def test_lines_not_as_the_format_says_are_refused(
    line: bytes, actions: bytes, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        to_copy(line, actions)


# -- against a real server -----------------------------------------------------------------


@pytest.fixture
def empty_copy(postgres: Postgres, db: Database) -> Iterator[Database]:
    with fresh_database(postgres, "asyncsnap_fast") as database:
        yield database


async def _both_paths(dsn: str) -> dict[str, tuple[list[bytes], list[bytes], str]]:
    """Per table: the server-rendered lines, the fast path's lines and its column kinds;
    for a table the dump reads in COPY's binary format, the text path's lines as well
    (``text:`` before the table's name)."""
    conn = await asyncpg.connect(dsn, server_settings=dict(RENDER_SETTINGS))
    try:
        tables = await describe_tables(
            conn, [t for t in await list_tables(conn) if t.kind != "partitioned"]
        )
        types = await read_types(conn)
        result = {}
        for table in tables:
            rendered = [
                r[0].encode() + b"\n" for r in await conn.fetch(select_rows_sql(table, types))
            ]
            shape = DumpShape.of(table, types)
            pieces: list[bytes] = []

            async def sink(data: bytes, pieces: list[bytes] = pieces) -> None:
                pieces.append(data)

            query = copy_query(table, shape)
            await conn.copy_from_query(query, output=sink, format=shape.copy_format)
            data = b"".join(pieces)
            if shape.binary is not None:
                data = data.removeprefix(BINARY_HEADER)
            out, _, _ = shape.encode(data)
            kinds = "".join(column_kind(c, types) for c in table.columns)
            result[table.name] = (sorted(rendered), sorted(out.splitlines(keepends=True)), kinds)
            if shape.binary is not None:
                pieces.clear()
                await conn.copy_from_query(query, output=sink, format="text")
                out, _, _ = _rows.copy_to_ndjson(b"".join(pieces), shape.kinds, shape.prefixes)
                lines = sorted(out.splitlines(keepends=True))
                result["text:" + table.name] = (sorted(rendered), lines, kinds)
        return result
    finally:
        await conn.close()


@pytest.mark.versions
def test_fast_path_writes_the_server_rendered_lines_byte_for_byte(db: Database) -> None:
    """Every table of the fidelity suite, every column kind: the same bytes."""
    db.execute(FIDELITY + (XML_FIDELITY if has_xml(db) else ""))
    db.execute(
        "CREATE TABLE mixed_kinds (i int, n numeric, f real, b bool, ts timestamp, "
        "tz timestamptz, s text, a int[], fa float8[], j jsonb);"
        "INSERT INTO mixed_kinds VALUES (1, 1.50, -0, true, '2024-01-01 00:00:00.5', "
        "'2024-01-01 00:00+05:45', E'tab\\there', '{1,NULL}', '{0,1.5}', '{\"k\": null}'), "
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"
        # without a float: read in COPY's binary format (and in text, compared too)
        "CREATE TABLE binary_kinds AS SELECT i, n, b, ts, tz, s, a, j, "
        "date '0001-01-01 BC' AS d, uuid 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AS u, "
        "bytea '\\x00ff' AS by FROM mixed_kinds"
    )
    paths = anyio.run(_both_paths, db.dsn)
    seen: set[str] = set()
    for name, (rendered, fast, kinds) in paths.items():
        assert fast == rendered, name
        seen.update(kinds)
    assert seen == {"n", "f", "b", "s", "t", "z", "r"}  # every kind was compared
    assert "text:binary_kinds" in paths  # and the binary format


def test_arrays_with_quotes_and_box_delimiters_round_trip(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Array literals built by the restore's converter: quoted elements with quotes and
    backslashes, NULL against "NULL", 2-D, box[] (whose delimiter is ';'), a domain over
    an array, and bounds kept in the text form."""
    db.execute(
        "CREATE DOMAIN boxes AS box[];"
        "CREATE TABLE arr (id int, t text[], bx box[], db boxes, n numeric[], b bool[], "
        "ts timestamptz[], u uuid[]);"
        + r"""INSERT INTO arr VALUES
            (1, $${"a\"b","c\\d",NULL,"NULL","","x,y","{}"}$$,
             '{(1,1),(0,0);(3,3),(2,2)}', '{(5,5),(4,4)}', '{{1.5,NaN},{-0,1e-30}}',
             '{t,f,NULL}', '{2024-01-01 00:00+00,infinity}',
             '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'),
            (2, '[2:3]={a,b}', '{}', NULL, '{}', NULL, NULL, NULL),
            (3, ARRAY[E'tab\there', E'nl\nthere', E'back\\slash'], NULL, NULL, NULL,
             NULL, NULL, NULL)"""
    )
    assert db.fetchval("SELECT t[1] || t[2] FROM arr WHERE id = 1") == 'a"bc\\d'
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    run_restore(backup, empty_copy)
    assert digests(empty_copy.dsn) == digests(db.dsn)


def rewrite_lines(backup: Path | str, table: str, transform: Callable[[bytes], bytes]) -> None:
    """Rewrite every line of ``table``'s one data file and make the manifest and
    SHA256SUMS agree again: a forged backup that only its content checks can catch."""
    backup = Path(backup)
    import zstandard

    (data,) = (backup / "data").glob(f"public.{table}-*")
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(data.read_bytes())
    raw = b"".join(transform(line) + b"\n" for line in lines.splitlines())
    stored = zstandard.ZstdCompressor().compress(raw)
    data.write_bytes(stored)
    digest = hashlib.sha256(stored).hexdigest()

    def edit(body: dict[str, object]) -> None:
        tables = body["tables"]
        assert isinstance(tables, list)
        (entry,) = next(t for t in tables if t["name"] == table)["files"]
        entry.update(sha256=digest, stored_bytes=len(stored), bytes=len(raw))

    reseal(backup, edit)
    sums = backup / "SHA256SUMS"
    sums.write_text(
        "".join(
            f"{digest}  {line.split()[1]}\n" if f"public.{table}-" in line else line + "\n"
            for line in sums.read_text().splitlines()
        )
    )


def test_restore_refuses_a_resealed_file_whose_lines_break_the_format(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """A backup whose data file was rewritten with its keys swapped and its checksums made
    to match again: the converter refuses the line (no value lands in the wrong column),
    naming the file's line, and the table is rolled back."""
    db.execute("CREATE TABLE kv (a text, b text); INSERT INTO kv VALUES ('x', 'y'), ('1', '2')")
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    rewrite_lines(
        backup, "kv", lambda line: orjson.dumps(dict(reversed(orjson.loads(line).items())))
    )
    with pytest.raises(Exception, match="line 1, column 'a': the keys are not") as caught:
        run_restore(backup, empty_copy)
    assert "rolled back" in str(getattr(caught.value, "hint", ""))
    assert empty_copy.fetchval("SELECT count(*) FROM kv") == 0
    assert json.loads((backup / "manifest.json").read_text())["tables"][0]["rows"] == 2


def test_a_broken_line_past_the_first_block_is_named_by_its_line_in_the_file(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Restore reads a file in blocks (``BATCH_BYTES``) and numbers each block's lines
    from the lines the reader gave before it: a broken line deep in a file of several
    blocks is named by its own line number, not by its place in its block."""
    db.execute(
        "CREATE TABLE kv (a text, b text);"
        "INSERT INTO kv SELECT 'row-' || i, repeat('v', 40) FROM generate_series(1, 40000) i"
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    (entry,) = json.loads((backup / "manifest.json").read_text())["tables"][0]["files"]
    assert entry["bytes"] > 3 * BATCH_BYTES  # the line is in the file's fourth block

    def swap_one(line: bytes) -> bytes:
        row = orjson.loads(line)
        return orjson.dumps(dict(reversed(row.items())) if row["a"] == "row-31234" else row)

    rewrite_lines(backup, "kv", swap_one)
    with pytest.raises(Exception, match="line 31234, column 'a': the keys are not"):
        run_restore(backup, empty_copy)
    assert empty_copy.fetchval("SELECT count(*) FROM kv") == 0


def test_verify_finds_a_value_of_the_wrong_kind_for_its_encoding(
    db: Database, tmp_path: Path
) -> None:
    """Valid JSON, the right keys, but an object where the column's encoding has none:
    verify names the line and column, as restore would refuse it."""
    db.execute("CREATE TABLE kv (a int, b jsonb); INSERT INTO kv VALUES (1, '{}'), (2, '[]')")
    backup = Path(run_dump(db, tmp_path).path)
    assert verify(backup).ok

    def forge(line: bytes) -> bytes:
        row = orjson.loads(line)
        if row["a"] == 2:
            row["b"] = {"injected": True}  # the text encoding holds a string
        return orjson.dumps(row)

    rewrite_lines(backup, "kv", forge)
    [problem] = verify(backup).problems
    assert problem.line == 2 and "column 'b'" in problem.message
    assert "expected a string" in problem.message


# -- restore in COPY's binary format ---------------------------------------------------------


def to_binary(line: bytes, kinds: bytes) -> bytes:
    names = tuple(f"c{i}".encode() for i in range(len(kinds)))
    out, rows = _rows.ndjson_to_binary(line, names, kinds)
    assert rows == line.count(b"\n")
    return out


def test_binary_tuples_are_copy_binary_format() -> None:
    line = (
        b'{"c0":-32768,"c1":2147483647,"c2":-9223372036854775808,"c3":"a\\u00e9\\n",'
        b'"c4":true,"c5":null,"c6":{"skipped":[1]}}\n'
    )
    out = to_binary(line, b"248sbsx")
    assert out == (
        b"\x00\x06"  # six fields
        + b"\x00\x00\x00\x02\x80\x00"
        + b"\x00\x00\x00\x04\x7f\xff\xff\xff"
        + b"\x00\x00\x00\x08\x80\x00\x00\x00\x00\x00\x00\x00"
        + b"\x00\x00\x00\x04a\xc3\xa9\n"
        + b"\x00\x00\x00\x01\x01"
        + b"\xff\xff\xff\xff"
    )


@pytest.mark.parametrize(
    ("value", "kind", "complaint"),
    [
        (b"32768", b"2", "out of its column's range"),
        (b"-32769", b"2", "out of its column's range"),
        (b"2147483648", b"4", "out of its column's range"),
        (b"9223372036854775808", b"8", "out of its column's range"),
        (b"1e3", b"4", "expected an integer"),
        (b"1.0", b"4", "expected an integer"),
        (b"01", b"4", "invalid number"),
        (b'"5"', b"4", "expected an integer"),
        (b"5", b"s", "expected a string"),
        (b'"t"', b"b", "expected true or false"),
    ],
)
def test_binary_refuses_what_text_input_would_refuse(
    value: bytes, kind: bytes, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        to_binary(b'{"c0":' + value + b"}\n", kind)


def test_binary_restore_round_trips_integers_strings_and_booleans(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """A table of only integer, text-type and boolean columns loads in COPY's binary
    format; every edge value comes back, and a varchar(n) or char(n) target still
    applies its length (as text input does)."""
    db.execute(
        "CREATE TABLE bin (i2 smallint, i4 int, i8 bigint, c char(5), v varchar(8), t text, "
        "b bool);"
        "INSERT INTO bin VALUES (-32768, -2147483648, -9223372036854775808, 'ab', 'x', "
        "E'tab\\t nl\\n back\\\\ quote\" é 😀', true),"
        "(32767, 2147483647, 9223372036854775807, '', '', '', false),"
        "(0, 0, 0, NULL, NULL, NULL, NULL)"
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    result = run_restore(backup, empty_copy)
    assert result.plan is not None
    (load,) = result.plan.loads
    shape = LoadShape.of(load.source, load.target, load.columns)
    assert shape is not None and shape.binary == b"248sssb"  # the binary format was used
    assert digests(empty_copy.dsn) == digests(db.dsn)
    # A forged value longer than varchar(8) (the type in the backup and here): refused, as
    # text input refuses it, not cut.
    empty_copy.execute("TRUNCATE bin")
    rewrite_lines(backup, "bin", lambda line: line.replace(b'"v":"x"', b'"v":"too long!"'))
    with pytest.raises(Exception, match="too long"):
        run_restore(backup, empty_copy)
    assert empty_copy.fetchval("SELECT count(*) FROM bin") == 0


def test_converters_never_crash_on_mangled_input() -> None:
    """Hostile files reach the converters: random cuts, flips and insertions of valid
    lines (seeded, so a failure repeats) give an exact result or a LineError, never a
    crash or a silent half-read."""
    import random

    rng = random.Random(20261125)
    good_json = b'{"c0":-12,"c1":"a\\u00e9\\"\\\\\\n","c2":[[1,null],["x"]],"c3":true,"c4":null}\n'
    good_copy = b"-12\ta\\\\b\\tc\t2024-01-01 00:00:00+00\tt\t\\N\t[1]\n"
    specials = b'{}[]",:\\\n\t0-eE.tfnu'
    cases: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (good_json, lambda d: to_copy(d, b"jtajt", b",,,,,")),
        (good_json, lambda d: to_binary(d, b"4sxbs")),
        (good_copy, lambda d: convert(d, b"nszbsr")),
    ]
    for _ in range(3000):
        for good, convert_one in cases:
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data))
                action = rng.randrange(3)
                if action == 0:
                    data[at] = rng.choice(specials)
                elif action == 1:
                    del data[at]
                else:
                    data.insert(at, rng.choice(specials))
            if not data.endswith(b"\n"):
                data += b"\n"
            with contextlib.suppress(ValueError):
                convert_one(bytes(data))
