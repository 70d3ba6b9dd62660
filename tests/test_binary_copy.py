"""The dump's binary COPY path (``rowcodec.DumpShape.binary``, ``_rows.binary_to_ndjson``):
the lines it writes are byte for byte those of the text path, which ``test_fastpath``
holds to the server-rendered lines.

The fuzz stores random values of every type the binary path renders (integer extremes,
numerics of huge and tiny weights and scales, NaN and the infinities, float4 and float8
values of every size, -0 and subnormals among them, timestamps from 4714 BC to 294276 AD
and at infinity, dates to 5874897 AD, times with zones, intervals of every sign, every
code point in strings, random bytes, JSON with odd whitespace, enum labels with quotes, a
domain, an array) in a real server's table, reads them back with COPY in both formats and
compares the converters' lines, and the server's own ``row_to_json`` lines, on every
major (``versions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import fractions
import json
import math
import random
import struct
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsnap import _rows
from asyncsnap.catalog import describe_tables, list_tables, read_types
from asyncsnap.encode.render import select_rows_sql
from asyncsnap.encode.rowcodec import (
    BINARY_HEADER,
    BINARY_TOAST_LIMIT,
    DumpShape,
    TupleSplitter,
    copy_query,
)
from asyncsnap.format import RENDER_SETTINGS

from .conftest import Database
from .test_render import TYPES, col, make_table

# -- planning, without a server ------------------------------------------------------------


def test_tables_of_rendered_types_take_binary() -> None:
    """int4, a domain over float8, an array (server-rendered, as text), jsonb, an enum."""
    table = make_table(col("a", 23), col("f", 20000), col("arr", 20006), col("j", 3802))
    shape = DumpShape.of(make_table(*table.columns, col("e", 20005)), TYPES)
    assert shape.binary == b"4drjs" and shape.copy_format == "binary"
    assert shape.select_list.startswith('"a", "f", (CASE WHEN')
    assert not shape.plain_table  # the array needs the SELECT
    plain = DumpShape.of(make_table(col("a", 23), col("f", 701), col("j", 3802)), TYPES)
    assert plain.binary == b"4dj" and plain.plain_table


def test_a_type_without_a_binary_renderer_keeps_the_table_on_text() -> None:
    shape = DumpShape.of(make_table(col("a", 23), col("g", 20004)), TYPES)  # an extension's
    assert shape.binary is None and shape.copy_format == "text"
    assert shape.select_list == '"a", "g"'


def test_a_table_with_much_toast_stays_on_text() -> None:
    """Big values: on text a row the server cannot send is written column by column
    (``bigrows``, bounded memory); in binary it would arrive whole (docs/benchmarks.md)."""
    columns = (col("a", 23), col("b", 3802))  # int4, jsonb
    small = dataclasses.replace(make_table(*columns), table_bytes=BINARY_TOAST_LIMIT)
    assert DumpShape.of(small, TYPES).copy_format == "binary"
    big = dataclasses.replace(small, table_bytes=BINARY_TOAST_LIMIT + 8192 * 10 + 1, heap_pages=10)
    assert DumpShape.of(big, TYPES).copy_format == "text"


# -- the converter, without a server -------------------------------------------------------


def tuple_of(*fields: bytes | None) -> bytes:
    out = struct.pack(">h", len(fields))
    for f in fields:
        out += struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f
    return out


PREFIXES = (b'{"a":', b',"b":')


def test_binary_tuples_become_lines() -> None:
    data = (
        tuple_of(struct.pack(">i", -5), b"x\ny") + tuple_of(None, None) + b"\xff\xff"  # the trailer
    )
    out, rows, longest = _rows.binary_to_ndjson(data, b"4s", PREFIXES)
    assert out == b'{"a":-5,"b":"x\\ny"}\n{"a":null,"b":null}\n'
    assert (rows, longest) == (2, 20)


@pytest.mark.parametrize(
    ("data", "kinds", "complaint"),
    [
        (tuple_of(b"\x00\x01", b"x"), b"4s", "unexpected binary value"),
        (tuple_of(b"\x00\x00\x00\x01"), b"4s", "different number of columns"),
        (tuple_of(b"\x00\x00\x00\x01", b"x")[:-1], b"4s", "ends early"),
        (tuple_of(b"\x00\x00\x00\x01", b"x") + b"\xff\xff\x00", b"4s", "after the end"),
        (tuple_of(b"\x02", b"x"), b"bs", "unexpected binary value"),
        (tuple_of(b"\x00" * 8 + b"\x27\x10", b"x"), b"Ns", "unexpected numeric"),
        (tuple_of(b"\x80" + bytes(6) + b"\x01", b"x"), b"ts", "unexpected timestamp"),
        (tuple_of(b"\x02{}", b"x"), b"js", "unexpected binary value"),
        (tuple_of(b"[\n]", b"x"), b"rs", "unexpected JSON"),
    ],
)
def test_unexpected_binary_data_is_refused(data: bytes, kinds: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        _rows.binary_to_ndjson(data, kinds, PREFIXES)


def test_tuples_cut_anywhere_are_kept_for_the_next_piece() -> None:
    stream = BINARY_HEADER + tuple_of(b"\x00\x07", b"abc") * 3 + b"\xff\xff"
    for cut in range(len(stream)):
        for second in range(cut, len(stream)):
            splitter, got = TupleSplitter(), b""
            for piece in (stream[:cut], stream[cut:second], stream[second:]):
                got += bytes(splitter.whole_lines(piece))
            assert splitter.pending == 0
            assert got == stream[len(BINARY_HEADER) :]
    with pytest.raises(ValueError, match="header"):
        TupleSplitter().whole_lines(b"PGCOPY\n\xff\r\n\x00" + b"\x00\x01" + bytes(6))


def test_damaged_binary_data_raises_and_never_crashes() -> None:
    """Random mutations of valid tuples of every kind: a line, or ValueError."""
    rng = random.Random(24)
    kinds = b"248NbtzDuxsjredTZI"
    row = [
        b"\x00\x01", b"\x00\x00\x00\x02", b"\x00" * 7 + b"\x03",
        b"\x00\x02\x00\x00\x00\x00\x00\x02\x00\x01\x13\x88", b"\x01", b"\x00" * 8, b"\x00" * 8,
        b"\x00" * 4, bytes(range(16)), b"\x00\xff", "é".encode(), b"\x01{}", b"[1]",
        b"\x3f\xc0\x00\x00", b"\x3f\xf8" + bytes(6), bytes(7) + b"\x01",
        bytes(7) + b"\x01\xff\xff\xff\xf0", bytes(7) + b"\x01" + b"\xff" * 8,
    ]  # fmt: skip
    prefixes = tuple(b"," + f'"c{i}"'.encode() + b":" for i in range(len(kinds)))
    valid = tuple_of(*row)
    _rows.binary_to_ndjson(valid, kinds, prefixes)
    for _ in range(3000):
        data = bytearray(valid * rng.randint(1, 3))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))]
        with contextlib.suppress(ValueError):
            _rows.binary_to_ndjson(bytes(data), kinds, prefixes)


def float_line(bits: int, single: bool) -> bytes:
    data = struct.pack(">hiI" if single else ">hiQ", 1, 4 if single else 8, bits)
    out, _, _ = _rows.binary_to_ndjson(data, b"e" if single else b"d", (b'{"a":',))
    return out[5:-2]


def _value(bits: int, single: bool) -> fractions.Fraction:
    return fractions.Fraction(
        struct.unpack(">f" if single else ">d", struct.pack(">I" if single else ">Q", bits))[0]
    )


def shortest(bits: int, single: bool) -> decimal.Decimal:
    """The shortest decimal strictly inside the rounding interval of this positive float
    (the midpoints to its neighbours: PostgreSQL never writes a midpoint), the nearest to
    it of those (a tie to the even digit): exact rational arithmetic."""
    f = _value(bits, single)
    top = 0x7F7FFFFF if single else 0x7FEFFFFFFFFFFFFF
    lower = (_value(bits - 1, single) + f) / 2 if bits > 1 else f / 2
    upper = (f + _value(bits + 1, single)) / 2 if bits < top else f + (f - lower)
    for p in range(1, 18):
        nearest = decimal.Decimal(f"{float(f):.{p - 1}e}")
        step = decimal.Decimal(1).scaleb(nearest.adjusted() - p + 1)
        found = [
            c
            for c in (nearest - step, nearest, nearest + step)
            if c > 0 and lower < fractions.Fraction(c) < upper
        ]
        if found:
            return min(
                found, key=lambda c: (abs(fractions.Fraction(c) - f), c.as_tuple()[1][-1] % 2)
            )
    raise AssertionError("no decimal of 17 digits reads back")


def pg_float_text(bits: int, single: bool) -> bytes:
    """float4out/float8out (extra_float_digits > 0) as to_json writes them, from
    ``shortest``: fixed notation for decimal exponents
    -4 to 14 (float4: 5), else d.ddde+XX; NaN, the infinities and -0 as strings."""
    x = struct.unpack(">f" if single else ">d", struct.pack(">I" if single else ">Q", bits))[0]
    if x != x or x in (float("inf"), float("-inf")) or (x == 0 and math.copysign(1, x) < 0):
        return b'"' + float_text(x).replace("-0.0", "-0").encode() + b'"'
    if x == 0:
        return b"0"
    value = shortest(bits & (0x7FFFFFFF if single else 2**63 - 1), single).normalize()
    sign = b"-" if x < 0 else b""
    x10 = value.adjusted()
    if -4 <= x10 < (6 if single else 15):
        return sign + format(value, "f").encode()
    digits = "".join(map(str, value.as_tuple().digits))
    body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return sign + f"{body}e{'-' if x10 < 0 else '+'}{abs(x10):02d}".encode()


@settings(max_examples=3000, deadline=None, database=None)
@given(
    bits=st.integers(0, 2**64 - 1)
    | st.floats().map(lambda x: struct.unpack(">Q", struct.pack(">d", x))[0])
)
def test_float8_renders_as_shortest_round_trip(bits: int) -> None:
    assert float_line(bits, False) == pg_float_text(bits, False)


@settings(max_examples=3000, deadline=None, database=None)
@given(bits=st.integers(0, 2**32 - 1))
def test_float4_renders_as_shortest_round_trip(bits: int) -> None:
    assert float_line(bits, True) == pg_float_text(bits, True)


# -- random values against a real server ---------------------------------------------------

MIN_TIMESTAMP = -211_813_488_000_000_000  # 4714-11-24 00:00:00 BC, in µs from 2000-01-01
END_TIMESTAMP = 9_223_371_331_200_000_000  # 294277-01-01 00:00:00
MIN_DATE, END_DATE = -2_451_545, 2_145_031_949  # days from 2000-01-01: 4714-11-24 BC, 5874898
LABELS = ["a", "", 'q"uote', "back\\slash", "tab\there", "é😀", "x" * 63]

COLUMNS = [
    ("i2", "int2"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("n", "numeric"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("b", "bool"),
    ("ts", "timestamp"),
    ("tz", "timestamptz"),
    ("d", "date"),
    ("ti", "time"),
    ("tt", "timetz"),
    ("iv", "interval"),
    ("u", "uuid"),
    ("by", "bytea"),
    ("t", "text"),
    ("vc", "varchar(12)"),
    ("bp", "char(5)"),
    ("nm", "name"),
    ("js", "json"),
    ("jb", "jsonb"),
    ("e", "mood"),
    ("dm", "posint"),
    ("arr", "int4[]"),
]


def ymd(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian year, month, day of a day number from 2000-01-01 (the calendar
    repeats every 400 years, 146,097 days)."""
    cycles, rest = divmod(days, 146_097)
    d = datetime.date(2000, 1, 1) + datetime.timedelta(days=rest)
    return d.year + 400 * cycles, d.month, d.day


def date_text(days: int) -> str:
    y, m, d = ymd(days)
    return f"{y if y > 0 else 1 - y:04d}-{m:02d}-{d:02d}" + (" BC" if y <= 0 else "")


def timestamp_text(us: int, zone: str = "") -> str:
    days, rest = divmod(us, 86_400_000_000)
    y, m, d = ymd(days)
    secs, frac = divmod(rest, 1_000_000)
    text = (
        f"{y if y > 0 else 1 - y:04d}-{m:02d}-{d:02d} "
        f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}{zone}"
    )
    return text + (" BC" if y <= 0 else "")


def time_text(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}"


def zone_text(seconds_east: int) -> str:
    sign = "-" if seconds_east < 0 else "+"
    minutes, secs = divmod(abs(seconds_east), 60)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}:{secs:02d}"


def interval_time(us: int) -> str:
    """Microseconds as fields each within int32 (PostgreSQL 14's interval input limit)."""
    hours, rest = divmod(us, 3_600_000_000)
    return f"{hours} hours {rest // 1_000_000} seconds {rest % 1_000_000} microseconds"


def numerics(infinities: bool) -> st.SearchStrategy[str]:
    """Numeric literals: many digits on both sides of the point, exponents that move it far
    (weights and scales of hundreds of base-10000 digits), zeros that set the scale."""
    digits = st.text("0123456789", max_size=40)
    finite = st.builds(
        lambda sign, whole, frac, exp: f"{sign}{whole or '0'}.{frac}e{exp}",
        st.sampled_from(["", "-"]),
        digits,
        digits,
        st.integers(-400, 400),
    )
    special = ["NaN", "0", "-0", "0.0000000000", "1e-300", "9999.9999"]
    special += ["Infinity", "-Infinity"] if infinities else []
    return st.one_of(finite, st.sampled_from(special))


def float_text(x: float) -> str:
    """A float literal the server reads back as exactly ``x`` (shortest round trip)."""
    return "NaN" if x != x else repr(x).replace("inf", "Infinity")


def rows_of(infinities: bool, major: int) -> st.SearchStrategy[list[list[str | None]]]:
    later = ["infinity", "-infinity"] if major >= 17 else []  # infinite intervals: 17+
    strings = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | strings,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
        max_leaves=6,
    )
    json_texts = st.tuples(json_values, st.booleans(), st.booleans()).map(
        lambda v: json.dumps(v[0], indent=1 if v[1] else None, ensure_ascii=v[2])
    )
    instants = st.integers(MIN_TIMESTAMP, END_TIMESTAMP - 1) | st.integers(-(10**14), 10**14)
    values: dict[str, st.SearchStrategy[Any]] = {
        "int2": st.integers(-(2**15), 2**15 - 1).map(str),
        "int4": st.integers(-(2**31), 2**31 - 1).map(str),
        "int8": st.integers(-(2**63), 2**63 - 1).map(str),
        "numeric": numerics(infinities),
        # dyadic values (few mantissa bits) too: where Ryu's ties and exact ends are
        "float4": st.floats(width=32).map(float_text)
        | st.builds(
            lambda m, e: float_text(m * 2.0**e), st.integers(-4096, 4096), st.integers(-149, 100)
        )
        | st.sampled_from(["1e-45", "1.1754944e-38", "3.4028235e+38", "1e6", "123456"]),
        "float8": st.floats().map(float_text)
        | st.builds(
            lambda m, e: float_text(m * 2.0**e),
            st.integers(-(2**20), 2**20),
            st.integers(-1074, 1000),
        )
        | st.sampled_from(["5e-324", "2.2250738585072014e-308", "1e15", "1e16", "1e-5", "-0"]),
        "bool": st.sampled_from(["t", "f"]),
        "timestamp": instants.map(timestamp_text) | st.sampled_from(["infinity", "-infinity"]),
        "timestamptz": instants.map(lambda us: timestamp_text(us, "+00"))
        | st.sampled_from(["infinity", "-infinity"]),
        "date": st.integers(MIN_DATE, END_DATE - 1).map(date_text)
        | st.sampled_from(["infinity", "-infinity"]),
        "time": st.integers(0, 86_400_000_000).map(time_text),
        "timetz": st.builds(
            lambda us, zone: time_text(us) + zone_text(zone),
            st.integers(0, 86_400_000_000),
            st.integers(-57599, 57599) | st.sampled_from([0, 3600, -19800, 45296]),
        ),
        "interval": st.builds(
            lambda months, days, us: f"{months} months {days} days {interval_time(us)}",
            st.integers(-(2**31) + 1, 2**31 - 1) | st.integers(-30, 30),
            st.integers(-(2**31) + 1, 2**31 - 1) | st.integers(-40, 40),
            st.integers(-(2**62), 2**62) | st.integers(-(10**10), 10**10),
        )
        | st.sampled_from(["0", "-1 microseconds", "1 year -1 second", "-1.5 seconds", *later]),
        "uuid": st.uuids().map(str),
        "bytea": st.binary(max_size=40).map(lambda b: "\\x" + b.hex()),
        "text": strings,
        "varchar(12)": strings.filter(lambda s: len(s) <= 12),
        "char(5)": strings.filter(lambda s: len(s) <= 5),
        "name": st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=63),
        "json": json_texts,
        "jsonb": json_texts,
        "mood": st.sampled_from(LABELS),
        "posint": st.integers(0, 2**31 - 1).map(str),
        "int4[]": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4).map(
            lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"
        ),
    }
    row = st.tuples(*(st.none() | values[kind] for _, kind in COLUMNS)).map(list)
    return st.lists(row, min_size=1, max_size=12)


async def _lines_both_ways(dsn: str, rows: list[list[str | None]]) -> dict[str, list[bytes]]:
    conn = await asyncpg.connect(dsn, server_settings=dict(RENDER_SETTINGS))
    try:
        await conn.execute("TRUNCATE fuzz")
        params = ", ".join(
            f"${i + 1}::pg_catalog.text::{kind}" for i, (_, kind) in enumerate(COLUMNS)
        )
        await conn.executemany(f"INSERT INTO fuzz VALUES ({params})", rows)
        (table,) = await describe_tables(
            conn, [t for t in await list_tables(conn) if t.name == "fuzz"]
        )
        types = await read_types(conn)
        shape = DumpShape.of(table, types)
        assert shape.binary == b"248NedbtzDTZIuxsssssjs4r"
        query = copy_query(table, shape)
        text: list[bytes] = []
        splitter, binary = TupleSplitter(), []

        async def text_sink(data: bytes) -> None:
            text.append(data)

        async def binary_sink(data: bytes) -> None:
            binary.append(bytes(splitter.whole_lines(data)))

        await conn.copy_from_query(query, output=text_sink, format="text")
        await conn.copy_from_query(query, output=binary_sink, format="binary")
        assert splitter.pending == 0
        from_text, _, _ = _rows.copy_to_ndjson(b"".join(text), shape.kinds, shape.prefixes)
        from_binary, count, _ = shape.encode(b"".join(binary))
        assert count == len(rows)
        rendered = [r[0].encode() + b"\n" for r in await conn.fetch(select_rows_sql(table, types))]
        return {
            "text": from_text.splitlines(keepends=True),
            "binary": from_binary.splitlines(keepends=True),
            "server": rendered,
        }
    finally:
        await conn.close()


def _fuzz(db: Database, examples: int) -> None:
    db.execute(
        "CREATE TYPE mood AS ENUM ("
        + ", ".join("'" + label.replace("'", "''") + "'" for label in LABELS)
        + "); CREATE DOMAIN posint AS int4 CHECK (VALUE >= 0);"
        + "CREATE TABLE fuzz ("
        + ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
        + ")"
    )
    infinities = db.server_version >= 140000  # numeric ±Infinity is new in 14

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(rows=rows_of(infinities, db.server_version // 10000))
    def check(rows: list[list[str | None]]) -> None:
        lines = anyio.run(_lines_both_ways, db.dsn, rows)
        assert lines["binary"] == lines["text"]
        # the three reads return the rows in the same (physical) order
        assert lines["binary"] == lines["server"]

    check()


@pytest.mark.versions
def test_binary_copy_writes_the_text_paths_lines_on_random_values(db: Database) -> None:
    _fuzz(db, 60)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.versions
def test_binary_copy_writes_the_text_paths_lines_on_many_random_values(db: Database) -> None:
    _fuzz(db, 1000)


def test_helpers_agree_with_python_dates() -> None:
    """The fuzz's own calendar, checked where Python's is defined."""
    for days in (0, -1, 59, 60, -730119, 2_921_939, 146_097 * 3 + 17):
        date = datetime.date(2000, 1, 1) + datetime.timedelta(days=days)
        assert date_text(days) == date.isoformat()
    assert date_text(MIN_DATE) == "4714-11-24 BC"
    assert timestamp_text(END_TIMESTAMP - 1) == "294276-12-31 23:59:59.999999"
    assert timestamp_text(-1) == "1999-12-31 23:59:59.999999"
