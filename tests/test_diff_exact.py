"""diff, convert, read_arrow and the DuckDB views held to "exact or an error": lines that
DuckDB's hash() confuses, long rows anywhere in a file, keys equal by their type's
equality, and random changes checked against SQL computed on the two states."""

from __future__ import annotations

import decimal
import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsnap.analysis import merge
from asyncsnap.analysis.diff import DiffResult, diff
from asyncsnap.analysis.readers import convert, read_arrow, views_sql
from asyncsnap.errors import ExitCode

from .conftest import Database, clean_env, run_cli
from .helpers import manifest_of, reseal, rewrite_data_file
from .test_diff import by_name, exports_around

duckdb = pytest.importorskip("duckdb", reason="diff needs the analysis extra (DuckDB)")
pq = pytest.importorskip("pyarrow.parquet", reason="the analysis extra (pyarrow)")


def test_lines_whose_duckdb_hashes_collide_are_still_told_apart(
    db: Database, tmp_path: Path
) -> None:
    """pgbench-like lines whose key and one value differ by a digit collide in pairs in
    DuckDB's hash() (1.5.5, 2.0.1): aids 3100 and 6100 both moving from 0 to 7 were
    "0 changed", exit 0. A line's identity is now its SHA-256."""
    db.execute(
        "CREATE TABLE acc (aid int PRIMARY KEY, bid int, abalance int, filler char(84));"
        "INSERT INTO acc VALUES (3100, 1, 0, ''), (6100, 1, 0, '')"
    )
    before, after = exports_around(db, tmp_path, "UPDATE acc SET abalance = 7")
    assert by_name(diff(before, after)) == {"acc": ("changed", 0, 0, 2)}
    run = run_cli("diff", str(before), str(after), "--exit-code")
    assert run.returncode == ExitCode.DIFFERENT, run.stderr
    assert run.stdout.splitlines()[0] == (
        "public.acc: 2 -> 2 rows: 0 added, 0 removed, 2 changed (by aid)"
    )


LONG_TABLES = """
CREATE TABLE first_long (id int PRIMARY KEY, v text);
CREATE TABLE mid_long (id int PRIMARY KEY, v text);
CREATE TABLE last_long (id int PRIMARY KEY, v text);
CREATE TABLE images (id int, v bytea);
CREATE FUNCTION pg_temp.noise(bytes int) RETURNS text LANGUAGE sql AS
  $$ SELECT left(string_agg(md5(g::text), ''), bytes) FROM generate_series(1, bytes / 32 + 1) g $$;
INSERT INTO first_long VALUES (1, pg_temp.noise(30000000)), (2, 'x'), (3, '');
INSERT INTO mid_long VALUES (1, 'x'), (2, pg_temp.noise(1500000)), (3, pg_temp.noise(30000000)),
  (4, pg_temp.noise(1500000)), (5, '');
INSERT INTO last_long VALUES (1, 'x'), (2, ''), (3, pg_temp.noise(30000000));
-- three images of ~800 KB (1.6 MB lines in hex), then small rows: lines of MB in mid-file
INSERT INTO images SELECT g, decode(pg_temp.noise(1600000), 'hex') FROM generate_series(1, 3) g;
INSERT INTO images VALUES (4, '\\x00'), (5, NULL);
"""


def _lengths(db: Database, table: str) -> dict[int, int | None]:
    return {r[0]: r[1] for r in db.fetch(f"SELECT id, length(v) FROM {table}")}


@pytest.mark.slow
def test_long_rows_first_middle_and_last_reach_every_reader(db: Database, tmp_path: Path) -> None:
    """Rows of 1 B, 1.5 MB and 30 MB first, in the middle and last of a file, and lines of
    1.6 MB in mid-file: DuckDB's CSV reader dropped a long last row without a word (diff
    "identical", convert "2 rows" with 1 written) and failed on the mid-file lines
    (exit 70). diff sees every change, convert and read_arrow give every row, and a view
    either gives every row or fails; it never answers short."""
    db.execute(LONG_TABLES)
    before, after = exports_around(
        db,
        tmp_path,
        "UPDATE last_long SET v = v || 'y' WHERE id = 3;"
        "DELETE FROM first_long WHERE id = 1;"
        "UPDATE mid_long SET v = 'z' WHERE id = 4;"
        "UPDATE images SET v = v || '\\x01'::bytea WHERE id = 2",
    )
    result = diff(before, after, rows_dir=tmp_path / "rows")
    assert by_name(result) == {
        "first_long": ("changed", 0, 1, 0),
        "mid_long": ("changed", 0, 0, 1),
        "last_long": ("changed", 0, 0, 1),
        "images": ("changed", 1, 1, None),
    }
    assert not result.identical
    # --rows holds the rows themselves, long ones whole (kept out of the engine)
    written = {
        t.name: [
            orjson.loads(ln) for ln in (tmp_path / "rows" / t.rows_file).read_bytes().splitlines()
        ]
        for t in result.tables
        if t.rows_file
    }
    (last,) = written["last_long"]
    assert (last["change"], len(last["before"]["v"]), len(last["after"]["v"])) == (
        "changed",
        30_000_000,
        30_000_001,
    )
    assert last["after"]["v"] == db.fetchval("SELECT v FROM last_long WHERE id = 3")
    (first,) = written["first_long"]
    assert (first["change"], first["row"]["id"], len(first["row"]["v"])) == (
        "removed",
        1,
        30_000_000,
    )
    images = {r["change"]: r["row"] for r in written["images"]}
    assert images["added"]["v"] == "\\x" + db.fetchval(
        "SELECT encode(v, 'hex') FROM images WHERE id = 2"
    )
    assert len(images["removed"]["v"]) == 2 + 1_600_000  # "\\x" and 800 kB in hex

    # every reader gives every row of the after state, with its full length
    tables = ("first_long", "mid_long", "last_long", "images")
    converted = convert(after, tmp_path / "parquet")
    for table in converted.tables:
        rows = pq.read_table(tmp_path / "parquet" / table.path).to_pylist()
        assert {r["id"]: None if r["v"] is None else len(r["v"]) for r in rows} == _lengths(
            db, table.name
        ), table.name
    assert sorted(t.name for t in converted.tables) == sorted(tables)
    for name in tables:
        arrow = read_arrow(after, f"public.{name}").to_pylist()
        assert {r["id"]: None if r["v"] is None else len(r["v"]) for r in arrow} == _lengths(
            db, name
        ), name

    # views: exact, or an error (lines over 16 MiB are past their fixed line limit)
    con = duckdb.connect()
    con.execute(views_sql(after))
    for name in tables:
        expected = _lengths(db, name)
        try:
            size = "octet_length" if name == "images" else "length"
            got = dict(con.execute(f"SELECT id, {size}(v) FROM public.{name}").fetchall())
        except duckdb.Error as exc:
            assert max(v or 0 for v in expected.values()) > 16 << 20, (name, str(exc)[:200])
            continue
        assert got == expected, name


def test_a_long_last_row_deleted_is_seen(db: Database, tmp_path: Path) -> None:
    """The issue's own case: a table whose last row is a 30 MB text, deleted: "identical"
    and exit 0 before; now one row removed and exit 7."""
    db.execute(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);"
        "INSERT INTO notes VALUES (1, 'a'), (2, repeat('x', 30000000))"
    )
    before, after = exports_around(db, tmp_path, "DELETE FROM notes WHERE id = 2")
    assert by_name(diff(before, after)) == {"notes": ("changed", 0, 1, 0)}
    assert run_cli("diff", str(before), str(after), "--exit-code").returncode == 7


def test_keys_are_paired_by_their_types_equality(db: Database, tmp_path: Path) -> None:
    """A float key 0 -> -0 and a numeric key 1.0 -> 1.00 are the same key (PostgreSQL's =),
    so each is one changed row, not one added and one removed; a char(n) key keeps its
    padding; an interval key ('1 day' = '24 hours' in PostgreSQL) has no text form that
    decides equality, so that table is compared as whole rows and says why."""
    db.execute(
        "CREATE TABLE f (k float8 PRIMARY KEY, v int); INSERT INTO f VALUES (0, 1), (1.5, 1);"
        "CREATE TABLE n (k numeric PRIMARY KEY, v int); INSERT INTO n VALUES (1.0, 1), (2, 1);"
        "CREATE TABLE c (k char(3) PRIMARY KEY, v int); INSERT INTO c VALUES ('a', 1);"
        "CREATE TABLE i (k interval PRIMARY KEY, v int); INSERT INTO i VALUES ('1 day', 1)"
    )
    before, after = exports_around(
        db,
        tmp_path,
        "UPDATE f SET k = '-0' WHERE k = 0; UPDATE n SET k = 1.00 WHERE k = 1;"
        "UPDATE c SET v = 2; UPDATE i SET k = '24 hours'",
    )
    result = diff(before, after)
    assert by_name(result) == {
        "f": ("changed", 0, 0, 1),
        "n": ("changed", 0, 0, 1),
        "c": ("changed", 0, 0, 1),
        "i": ("changed", 1, 1, None),
    }
    interval = next(t for t in result.tables if t.name == "i")
    assert interval.key == () and interval.unpaired is not None
    assert "k is interval" in interval.unpaired


def _rows_file_keys(result: DiffResult, rows: Path, name: str) -> list[str]:
    table = next(t for t in result.tables if t.name == name)
    assert table.rows_file is not None
    return (rows / table.rows_file).read_text().splitlines()


def test_damaged_manifest_whose_rows_break_the_key_is_refused(db: Database, tmp_path: Path) -> None:
    """Two differing lines with one primary key on one side cannot be paired: an error,
    never a count."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1)")
    before, after = exports_around(db, tmp_path, "UPDATE t SET v = 2")

    def two_rows_of_one_key(manifest: dict[str, Any]) -> None:
        entry = manifest["tables"][0]["files"][0]
        rewrite_data_file(after, entry, b'{"id":1,"v":2}\n{"id":1,"v":3}\n')
        entry.update(rows=2, fingerprint=None)
        manifest["tables"][0]["rows"] = 2
        manifest["totals"]["rows"] = manifest["totals"]["rows"] + 1
        manifest["totals"]["bytes"] = sum(
            f["bytes"] for t in manifest["tables"] for f in t["files"]
        )

    # a hand-made after: two rows with id 1, re-sealed so that every checksum holds
    reseal(after, two_rows_of_one_key)
    run = run_cli("diff", str(before), str(after))
    assert run.returncode == ExitCode.VERIFY, run.stdout + run.stderr
    assert run.stderr.splitlines()[0] == (
        "error: public.t: rows with the same primary key in one backup; they cannot be paired"
    )


# --------------------------------------------------------------- random changes


def _noise_sql(size: int, seed: int) -> str:
    if size == 0:
        return "''"
    return (
        f"(SELECT left(string_agg(md5((g * {seed + 7})::text), ''), {size}) "
        f"FROM generate_series(1, {size // 32 + 1}) g)"
    )


def _sql_counts(db: Database, table: str, key: str | None) -> tuple[int, int, int | None]:
    """What SQL says changed from before_state.<table> to public.<table>: by the key's
    equality, or as multisets of whole rows (the row's text form, as the lines hold it)."""
    old, new = f"before_state.{table}", f"public.{table}"
    if key is None:
        added = db.fetchval(
            f"SELECT count(*) FROM (SELECT t::text FROM {new} t EXCEPT ALL "
            f"SELECT t::text FROM {old} t) x"
        )
        removed = db.fetchval(
            f"SELECT count(*) FROM (SELECT t::text FROM {old} t EXCEPT ALL "
            f"SELECT t::text FROM {new} t) x"
        )
        return int(added), int(removed), None
    added = db.fetchval(
        f"SELECT count(*) FROM {new} n WHERE NOT EXISTS "
        f"(SELECT 1 FROM {old} o WHERE o.{key} = n.{key})"
    )
    removed = db.fetchval(
        f"SELECT count(*) FROM {old} o WHERE NOT EXISTS "
        f"(SELECT 1 FROM {new} n WHERE o.{key} = n.{key})"
    )
    changed = db.fetchval(
        f"SELECT count(*) FROM {old} o JOIN {new} n ON o.{key} = n.{key} "
        "WHERE o::text IS DISTINCT FROM n::text"
    )
    return int(added), int(removed), int(changed)


# Key columns: the values a change draws from include the ones equal by = but not by text.
KEY_TYPES: dict[str, list[str]] = {
    "float8": ["0", "'-0'", "1.5", "'NaN'", "'Infinity'", "-2.25", "1e300", "3"],
    "numeric": ["1.0", "1.00", "1", "0", "-0.0", "'NaN'", "2.50", "2.5", "12345678901234567890"],
    "text": ["'a'", "'a '", "'A'", "''", "'é'", "'x\"y'", "'line\nbreak'", "'b'"],
}


@pytest.mark.slow
@pytest.mark.parametrize("way", ["merged", "grouped"])
def test_random_changes_counted_as_sql_counts_them(
    db: Database, tmp_path: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypothesis draws tables (keyed by float8, numeric or text, or without a key),
    rows from 0 B to 2 MB at any position, and changes (insert, delete, update of key and
    non-key columns); diff's counts equal SQL's on the two states, and every row convert
    writes equals the table's. Both ways diff finds the differing lines are held to it:
    both sides merged in order, and (no line may be set aside) grouped out of core."""
    if way == "grouped":
        monkeypatch.setattr(merge, "LIMIT_BYTES", -1)
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    keyed = st.sampled_from([*KEY_TYPES, None])
    # past DuckDB's CSV reader's default line size (2 MB), in any position
    sizes = st.sampled_from([0, 1, 100, 70_000, 3_000_000])
    change = st.tuples(
        st.sampled_from(["insert", "delete", "update value", "update key", "same key"]),
        st.integers(0, 20),
        sizes,
        st.integers(0, 8),
    )
    counter = iter(range(10_000))

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )
    @given(
        key_type=keyed,
        start=st.lists(st.tuples(sizes, st.integers(0, 8)), min_size=0, max_size=8),
        changes=st.lists(change, min_size=1, max_size=6),
    )
    def check(
        key_type: str | None,
        start: list[tuple[int, int]],
        changes: list[tuple[str, int, int, int]],
    ) -> None:
        run = next(counter)
        name = f"r{run}"
        values = KEY_TYPES.get(key_type or "", [])
        db.execute(
            f"DROP SCHEMA IF EXISTS before_state CASCADE; DROP TABLE IF EXISTS {name};"
            "CREATE SCHEMA before_state"
        )
        if key_type is None:
            db.execute(f"CREATE TABLE {name} (k int, v text)")
        else:
            db.execute(f"CREATE TABLE {name} (k {key_type} PRIMARY KEY, v text)")
        used: set[int] = set()
        for i, (size, pick) in enumerate(start):
            if key_type is None:
                db.execute(f"INSERT INTO {name} VALUES ({pick}, {_noise_sql(size, i)})")
            elif pick < len(values):
                db.execute(
                    f"INSERT INTO {name} VALUES ({values[pick]}, {_noise_sql(size, i)}) "
                    "ON CONFLICT DO NOTHING"
                )
                used.add(pick)
        db.execute(f"CREATE TABLE before_state.{name} AS SELECT * FROM {name}")
        out = tmp_path / name
        out.mkdir()
        from .test_dump import run_dump

        before = Path(
            run_dump(
                db, out, name="before", tables=[f"public.{name}"], fingerprints=run % 2 == 0
            ).path
        )
        for kind, pick, size, seed in changes:
            noise = _noise_sql(size, seed + 100 * run)
            target = (
                f"(SELECT ctid FROM {name} ORDER BY ctid "
                f"OFFSET {pick} % greatest(1, (SELECT count(*) FROM {name})) LIMIT 1)"
            )
            if kind == "insert":
                if key_type is None:
                    db.execute(f"INSERT INTO {name} VALUES ({pick}, {noise})")
                elif pick < len(values):
                    db.execute(
                        f"INSERT INTO {name} VALUES ({values[pick]}, {noise}) "
                        "ON CONFLICT DO NOTHING"
                    )
            elif kind == "delete":
                db.execute(f"DELETE FROM {name} WHERE ctid = {target}")
            elif kind == "update value":
                db.execute(f"UPDATE {name} SET v = {noise} WHERE ctid = {target}")
            elif kind == "same key":
                # the key rewritten as a value equal by = but not by text: 0 -> -0 (float),
                # 1.0 -> 1.00 (numeric); the same row, changed, for PostgreSQL
                same = {
                    "float8": "CASE WHEN k = 0 THEN -k ELSE k END",
                    "numeric": "CASE WHEN k = 'NaN' THEN k ELSE k + 0.000 END",
                }.get(key_type or "", "k")
                db.execute(f"UPDATE {name} SET k = {same} WHERE ctid = {target}")
            elif key_type is None:
                db.execute(f"UPDATE {name} SET k = k + 1 WHERE ctid = {target}")
            elif pick < len(values):
                # a key moved to a value: perhaps one equal by = but not by text
                db.execute(
                    f"UPDATE {name} SET k = {values[pick]} WHERE ctid = {target} AND NOT EXISTS "
                    f"(SELECT 1 FROM {name} WHERE k = {values[pick]} AND ctid <> {target})"
                )
        after = Path(
            run_dump(
                db, out, name="after", tables=[f"public.{name}"], fingerprints=run % 3 == 0
            ).path
        )
        result = diff(before, after)
        (table,) = result.tables
        expected = _sql_counts(db, name, None if key_type is None else "k")
        assert (table.added, table.removed, table.changed) == expected, (key_type, start, changes)

        # convert: every row of the after state, value for value
        converted = convert(after, out / "parquet")
        (written,) = converted.tables
        rows = pq.read_table(out / "parquet" / written.path).to_pylist()
        texts = db.fetch(f"SELECT k::text AS k, v FROM {name}")
        assert sorted((_as_text(r["k"]), r["v"]) for r in rows) == sorted(
            (r["k"], r["v"]) for r in texts
        )

    check()


def _as_text(value: Any) -> str:
    """A key from Parquet in PostgreSQL's text form (floats in shortest form, -0 kept)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value == 0:
            return "-0" if math.copysign(1, value) < 0 else "0"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text.replace("e+", "e+")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


# --------------------------------------------------------------- the same key


def _float_sql(x: float, cast: str) -> str:
    if math.isnan(x):
        return f"'NaN'::{cast}"
    if math.isinf(x):
        return f"'{'-' if x < 0 else ''}Infinity'::{cast}"
    return f"'{x!r}'::{cast}"


def _numeric_sql(t: tuple[int, int, int]) -> str:
    """digits / 10^scale, written with ``extra`` trailing zeros."""
    digits, scale, extra = t
    with decimal.localcontext(decimal.Context(prec=100)):  # past the default 28 digits
        exact = decimal.Decimal(digits).scaleb(-scale)
        return f"'{exact.quantize(decimal.Decimal(1).scaleb(-scale - extra))}'::numeric"


def _key_values() -> dict[str, Any]:
    """Per key type, a strategy of SQL literals from small value spaces, so that values
    equal by = with other texts (1.0 and 1.00, 0 and -0, 'a' and 'a ') meet often."""
    from hypothesis import strategies as st

    edges = st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 5e-324, 1e300])
    floats = st.one_of(edges, edges, edges, st.floats())  # edges three times in four
    uuids = [
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "'{a0eebc999c0b4ef8bb6d6bb9bd380a12}'",
    ]
    return {
        "numeric": st.one_of(
            st.tuples(st.integers(-3, 3), st.integers(0, 1), st.integers(0, 2)),
            st.tuples(st.integers(-(10**30), 10**30), st.integers(0, 9), st.just(1)),
        ).map(_numeric_sql)
        | st.sampled_from(["'NaN'::numeric", "'Infinity'::numeric", "'-Infinity'::numeric"]),
        "double precision": floats.map(lambda x: _float_sql(x, "float8")),
        "real": st.one_of(
            st.sampled_from([0.0, -0.0, 0.1, math.nan, math.inf]), st.floats(width=32)
        ).map(lambda x: _float_sql(x, "float4")),
        "bpchar": st.text(alphabet="ab ", max_size=3).map(lambda s: f"'{s}'::bpchar"),
        "character varying(6)": st.text(alphabet="aA é\\\"'\n", max_size=3).map(
            lambda s: "'" + s.replace("'", "''") + "'::varchar(6)"
        ),
        "timestamp with time zone": st.tuples(
            st.integers(-3, 3), st.sampled_from(["+00", "+01", "-02", "+05:30"])
        ).map(lambda t: f"'2026-01-01 {10 + t[0]:02d}:00:00{t[1]}'::timestamptz"),
        "time with time zone": st.tuples(
            st.integers(10, 12), st.sampled_from(["+00", "+01", "-01"])
        ).map(lambda t: f"'{t[0]:02d}:00:00{t[1]}'::timetz"),
        "inet": st.tuples(st.integers(0, 2), st.sampled_from(["", "/32", "/24", "/8"])).map(
            lambda t: f"'10.0.0.{t[0]}{t[1]}'::inet"
        ),
        "uuid": st.sampled_from(uuids).map(lambda u: f"{u}::uuid"),
        "money": st.integers(-300, 300).map(lambda c: f"({c}::numeric / 100)::money"),
        "bytea": st.binary(max_size=1).map(lambda b: f"'\\x{b.hex()}'::bytea"),
    }


def test_key_forms_are_equal_exactly_when_postgresql_says(db: Database, tmp_path: Path) -> None:
    """For each key type diff pairs by value: random values (hypothesis), dumped, and
    their key forms (diff.key_expression over the lines) compared in DuckDB; two rows have
    equal forms exactly when PostgreSQL's = says their values are equal. The values are
    drawn so that equal values with different texts (1.0 and 1.00, 0 and -0, 'a' and
    'a ') occur, and the test checks that they did."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from asyncsnap.analysis.batches import LineBatches
    from asyncsnap.analysis.diff import key_expression
    from asyncsnap.analysis.readers import line_prefixes, token_sql
    from asyncsnap.storage.backup import open_backup

    from .test_dump import run_dump

    strategies = _key_values()
    counter = iter(range(10_000))
    equal_by_value_only: set[str] = set()

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
    )
    @given(data=st.data())
    def check(data: Any) -> None:
        run = next(counter)
        db.execute("DROP TABLE IF EXISTS keys")
        columns = ", ".join(f"k{i} {t}" for i, t in enumerate(strategies))
        db.execute(f"CREATE TABLE keys (id int, {columns})")
        values = {
            t: data.draw(st.lists(strategy, min_size=2, max_size=25), label=t)
            for t, strategy in strategies.items()
        }
        for r in range(max(len(v) for v in values.values())):
            literals = [v[r] if r < len(v) else "NULL" for v in values.values()]
            db.execute(f"INSERT INTO keys VALUES ({r}, {', '.join(literals)})")
        out = tmp_path / f"k{run}"
        out.mkdir()
        backup = open_backup(run_dump(db, out, name="b", tables=["public.keys"]).path)
        (table,) = backup.tables
        prefixes = line_prefixes(table)
        con = duckdb.connect()
        con.register("lines", LineBatches(backup, table.files, hashes=False).reader())
        tokens = [f"NULLIF({token_sql(prefixes, i)}, 'null')" for i in range(len(prefixes))]
        con.execute(
            f"CREATE TABLE t AS SELECT CAST({tokens[0]} AS INTEGER) AS id, "
            + ", ".join(f"{token} AS k{i}" for i, token in enumerate(tokens[1:]))
            + " FROM lines"
        )
        forms = [key_expression(c, f"k{i}") for i, c in enumerate(table.columns[1:])]
        assert None not in forms, [c.type for c in table.columns]
        con.execute(
            "CREATE TABLE f AS SELECT id, "
            + ", ".join(f"{form} AS k{i}" for i, form in enumerate(forms))
            + " FROM t"
        )
        for i, type_name in enumerate(strategies):
            pairs = f"SELECT a.id, b.id FROM {{}} a JOIN {{}} b ON a.k{i} = b.k{i}"
            ours = set(con.execute(pairs.format("f", "f")).fetchall())
            theirs = {(r[0], r[1]) for r in db.fetch(pairs.format("keys", "keys"))}
            assert ours == theirs, (type_name, sorted(ours ^ theirs)[:5], values[type_name])
            if theirs - set(con.execute(pairs.format("t", "t")).fetchall()):
                equal_by_value_only.add(type_name)  # equal by =, not by text

    check()
    assert {"numeric", "double precision", "real", "bpchar"} <= equal_by_value_only


def test_diff_and_convert_of_backups_in_an_object_store(db: Database, tmp_path: Path) -> None:
    """Backups in S3 (SeaweedFS) are read straight from the store by the same reader: diff
    counts by key (a text key, a composite key), convert writes every row."""
    from throwaway.s3 import BUCKET, s3_server

    db.execute(
        "CREATE TABLE people (tenant text, id int, name text, PRIMARY KEY (tenant, id));"
        "INSERT INTO people SELECT 't' || (g % 3), g, 'p' || g FROM generate_series(1, 300) g;"
        "CREATE TABLE tags (tag text PRIMARY KEY); INSERT INTO tags VALUES ('a'), ('b '), ('c')"
    )
    with s3_server() as server:
        env = server.env()
        prefix = f"s3://{BUCKET}/analysis"
        urls = []
        for name in ("before", "after"):
            if name == "after":
                db.execute(
                    "UPDATE people SET name = 'renamed' WHERE id % 30 = 0;"
                    "DELETE FROM people WHERE tenant = 't1' AND id < 20;"
                    "UPDATE tags SET tag = 'b' WHERE tag = 'b ';"
                    "INSERT INTO people VALUES ('t9', 1, 'new')"
                )
            run = run_cli("dump", db.dsn, "-o", prefix, "--name", name, env=clean_env(**env))
            assert run.returncode == 0, run.stderr
            urls.append(run.stdout.strip())
        run = run_cli("diff", *urls, "--json", env=clean_env(**env))
        assert run.returncode == 0, run.stderr
        tables = {t["name"]: t for t in json.loads(run.stdout)["tables"]}
        removed = int(db.fetchval("SELECT count(*) FROM generate_series(1, 19) g WHERE g % 3 = 1"))
        assert (tables["people"]["added"], tables["people"]["removed"]) == (1, removed)
        assert tables["people"]["changed"] == 10  # ids 30, 60, ... 300: none deleted
        assert tables["people"]["key"] == ["tenant", "id"]
        # text keys by bytes: 'b ' and 'b' are two keys
        assert (tables["tags"]["added"], tables["tags"]["removed"], tables["tags"]["changed"]) == (
            1,
            1,
            0,
        )
        out = tmp_path / "parquet"
        run = run_cli("convert", urls[1], "--to", "parquet", str(out), env=clean_env(**env))
        assert run.returncode == 0, run.stderr
        rows = [
            r
            for path in sorted(out.iterdir())
            for r in pq.read_table(path).to_pylist()
            if "tenant" in r
        ]
        assert sorted((r["tenant"], r["id"], r["name"]) for r in rows) == sorted(
            tuple(r) for r in db.fetch("SELECT tenant, id, name FROM people")
        )


def test_a_damaged_file_is_named_while_the_other_backup_is_still_being_read(
    db: Database, tmp_path: Path
) -> None:
    """Both backups are read at once; when one file is damaged early, the other backup's
    reader is stopped mid-way, and that stop is not an error of its own: the damaged file
    is named (an internal "GeneratorExit" came out instead, now and then)."""
    db.execute(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);"
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;"
        "CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small VALUES (1)"
    )
    before, after = exports_around(db, tmp_path, "UPDATE big SET pad = 'x' WHERE id = 1")
    entry = next(t for t in manifest_of(after)["tables"] if t["name"] == "big")["files"][0]
    data = after / entry["path"]
    raw = bytearray(data.read_bytes())
    raw[200] ^= 0x01  # early in the after file: the before file is still being read
    data.write_bytes(bytes(raw))
    for _ in range(5):
        run = run_cli("diff", str(before), str(after))
        assert run.returncode == ExitCode.VERIFY, run.stderr
        assert run.stderr.startswith(f"error: {entry['path']} "), run.stderr
