"""The dump against a real PostgreSQL: output, format promises, filters, values."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

import asyncsnap
from asyncsnap import format as manifest
from asyncsnap.catalog import list_sequences, read_sequence_states
from asyncsnap.errors import NoTablesMatched
from asyncsnap.storage.backup import open_backup

from .conftest import Database, clean_env, run_cli
from .helpers import decompress, manifest_of, read_rows, table_entry

SHOP = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer_id int NOT NULL REFERENCES customers(id),
                     total numeric(12,2), created timestamptz DEFAULT now());
CREATE TABLE order_lines (order_id bigint REFERENCES orders(id) DEFERRABLE INITIALLY DEFERRED,
                          line int, qty int, PRIMARY KEY (order_id, line));
CREATE SCHEMA audit;
CREATE TABLE audit.log (id bigserial, msg text);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 50) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 50, g * 1.5 FROM generate_series(1, 500) g;
INSERT INTO order_lines SELECT o, l, l FROM generate_series(1, 500) o, generate_series(1, 3) l;
INSERT INTO audit.log (msg) SELECT 'm' || g FROM generate_series(1, 20) g;
"""


def run_dump(db: Database, out: Path, **kwargs: object) -> asyncsnap.DumpResult:
    async def go() -> asyncsnap.DumpResult:
        return await asyncsnap.dump(db.dsn, output=out, **kwargs)  # type: ignore[arg-type]

    return anyio.run(go, backend="asyncio")


def test_dump_output_opens_in_plain_tools(db: Database, tmp_path: Path) -> None:
    """Each line parses as a JSON object, sha256sum -c passes, counts match count(*)."""
    db.execute(SHOP)
    result = run_dump(db, tmp_path, jobs=2)
    backup = Path(result.path)
    assert backup.parent == tmp_path and backup.name.startswith("backup_")
    assert not list(tmp_path.glob("*.partial"))

    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", "--strict", manifest.SUMS_NAME],
            cwd=backup,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        # four data files and the two schema files
        assert check.stdout.count(": OK") == 6
        assert "schema/schema.pgdump: OK" in check.stdout
    # The plain SQL rendering of the schema reads as pg_dump's output.
    sql = (backup / "schema" / "schema.sql").read_text()
    assert "CREATE TABLE public.orders" in sql and "FOREIGN KEY (customer_id)" in sql
    rows = read_rows(backup)
    for (schema, name), lines in rows.items():
        count = db.fetchval(f'SELECT count(*) FROM "{schema}"."{name}"')
        assert len(lines) == count, (schema, name)
        entry = table_entry(backup, schema, name)
        assert entry["rows"] == count
        assert all(list(r) == [c["name"] for c in entry["columns"]] for r in lines)
    if shutil.which("zstd") and shutil.which("jq"):
        f = backup / table_entry(backup, "public", "orders")["files"][0]["path"]
        jq = subprocess.run(
            f"zstd -dc '{f}' | jq -c .customer_id | wc -l",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(jq.stdout) == 500


def test_dump_result_matches_manifest(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    result = run_dump(db, tmp_path, name="nightly")
    assert result.path == tmp_path / "nightly"
    m = manifest.load(result.path)
    assert m["totals"]["rows"] == result.rows == 50 + 500 + 1500 + 20
    assert result.files == len(result.tables) == 4
    assert {(t.schema, t.name) for t in result.tables} == {
        ("public", "customers"),
        ("public", "orders"),
        ("public", "order_lines"),
        ("audit", "log"),
    }
    for t in result.tables:
        for f in t.files:
            assert (result.path / f).stat().st_size == table_entry(result.path, t.schema, t.name)[
                "files"
            ][0]["stored_bytes"]
    assert m["snapshot"]["id"] == result.snapshot_id
    assert m["server"]["database"] == db.name and m["server"]["user"] == "postgres"
    assert "password" not in json.dumps(m).lower()
    assert m["settings"]["TimeZone"] == "UTC"


def test_manifest_describes_tables_keys_and_sequences(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    db.execute("SELECT nextval('audit.log_id_seq') FROM generate_series(1, 5)")
    backup = Path(run_dump(db, tmp_path).path)
    orders = table_entry(backup, "public", "orders")
    assert orders["kind"] == "table" and orders["parent"] is None
    assert orders["primary_key"] == ["id"]
    cols = {c["name"]: c for c in orders["columns"]}
    assert cols["id"]["identity"] == "always" and cols["id"]["type"] == "bigint"
    assert cols["total"]["type"] == "numeric(12,2)" and not cols["total"]["not_null"]
    assert cols["customer_id"]["not_null"]
    assert orders["foreign_keys"] == [
        {
            "name": "orders_customer_id_fkey",
            "columns": ["customer_id"],
            "references": {"schema": "public", "name": "customers", "columns": ["id"]},
            "deferrable": False,
            "initially_deferred": False,
        }
    ]
    lines = table_entry(backup, "public", "order_lines")
    assert lines["foreign_keys"][0]["deferrable"] and lines["foreign_keys"][0]["initially_deferred"]

    seqs = {(s["schema"], s["name"]): s for s in manifest_of(backup)["sequences"]}
    assert seqs[("public", "customers_id_seq")]["last_value"] == 50
    assert seqs[("public", "customers_id_seq")]["is_called"] is True
    assert seqs[("public", "orders_id_seq")]["last_value"] == 500  # identity
    assert seqs[("audit", "log_id_seq")]["last_value"] == 25
    assert seqs[("audit", "log_id_seq")]["table"] == {"schema": "audit", "name": "log"}

    levels = manifest_of(backup)["restore_order"]["levels"]
    names = [[t["name"] for t in level] for level in levels]
    assert names == [["log", "customers"], ["orders"], ["order_lines"]]


def test_filters_select_tables_like_pg_dump(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)

    def tables_of(**kw: object) -> set[str]:
        out = tmp_path / os.urandom(4).hex()
        return {f"{t.schema}.{t.name}" for t in run_dump(db, out, **kw).tables}

    assert tables_of(tables=["order*"]) == {"public.orders", "public.order_lines"}
    assert tables_of(tables=["public.*"], exclude_tables=["*lines"]) == {
        "public.customers",
        "public.orders",
    }
    assert tables_of(schemas=["audit"]) == {"audit.log"}
    assert tables_of(exclude_schemas=["public"]) == {"audit.log"}
    assert tables_of(tables=["ORDERS"]) == {"public.orders"}  # unquoted: folded
    with pytest.raises(NoTablesMatched, match=r"-t \"ORDERS\""):
        run_dump(db, tmp_path / "x", tables=['"ORDERS"'])  # quoted: exact
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_partitioned_table_rows_written_once(db: Database, tmp_path: Path) -> None:
    db.execute("""
        CREATE TABLE m (id int, day date, v text) PARTITION BY RANGE (day);
        CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
            PARTITION BY LIST (v);
        CREATE TABLE m_2024_a PARTITION OF m_2024 FOR VALUES IN ('a');
        CREATE TABLE m_2024_other PARTITION OF m_2024 DEFAULT;
        CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO m SELECT g, date '2024-01-01' + g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END
          FROM generate_series(0, 599) g;
        CREATE TABLE plain (id int);
    """)
    result = run_dump(db, tmp_path, tables=["m"])
    rows = read_rows(result.path)
    ids = sorted(r["id"] for lines in rows.values() for r in lines)
    assert ids == list(range(600))  # every row once, none twice
    kinds = {
        t["name"]: (t["kind"], t["parent"], len(t["files"]))
        for t in manifest_of(result.path)["tables"]
    }
    assert kinds == {
        "m": ("partitioned", None, 0),
        "m_2024": ("partitioned", {"schema": "public", "name": "m"}, 0),
        "m_2024_a": ("partition", {"schema": "public", "name": "m_2024"}, 1),
        "m_2024_other": ("partition", {"schema": "public", "name": "m_2024"}, 1),
        "m_2025": ("partition", {"schema": "public", "name": "m"}, 1),
    }
    excluded = run_dump(db, tmp_path / "b", exclude_tables=["m_2024"])
    assert {t.name for t in excluded.tables} == {"m_2025", "plain"}


def test_lossy_values_are_written_distinguishably(db: Database, tmp_path: Path) -> None:
    """The four classes row_to_json loses (docs/format.md, "Value encodings") are written
    so restore can recover them: jsonb 'null' vs SQL NULL, float8 -0, array lower bounds,
    json duplicate keys."""
    db.execute("""
        CREATE TABLE v (id int, jb jsonb, j json, f float8, a int[], a2 text[][], t text);
        INSERT INTO v VALUES
          (1, 'null', '{"k": 1, "k": 2}', '-0', '[0:2]={1,2,3}', '[-5:-5][1:2]={{x,NULL}}', 'x'),
          (2, NULL, E'{\\n "a":\\t[1, 2]\\n}', 'NaN', '{1,NULL}', '{{"NULL",b}}', E'q"\\\\\\n'),
          (3, '{"a": null}', NULL, '1e-310', NULL, '{}', NULL);
    """)
    backup = Path(run_dump(db, tmp_path).path)
    encodings = {c["name"]: c["encoding"] for c in table_entry(backup, "public", "v")["columns"]}
    assert encodings == {
        "id": "json",
        "jb": "text",
        "j": "text",
        "f": "json",
        "a": "array",
        "a2": "array",
        "t": "json",
    }
    r1, r2, r3 = sorted(read_rows(backup)[("public", "v")], key=lambda r: r["id"])
    assert r1["jb"] == "null" and r2["jb"] is None and r3["jb"] == '{"a": null}'
    assert r1["j"] == '{"k": 1, "k": 2}'  # duplicate keys survive as text
    assert r2["j"] == '{\n "a":\t[1, 2]\n}'  # so do whitespace and newlines
    assert r1["a"] == "[0:2]={1,2,3}" and r2["a"] == [1, None]
    assert r1["a2"] == "[-5:-5][1:2]={{x,NULL}}" and r2["a2"] == [["NULL", "b"]]
    assert r3["a2"] == []
    assert r2["f"] == "NaN" and r3["f"] == 1e-310
    assert r2["t"] == 'q"\\\n'
    raw = decompress(backup / table_entry(backup, "public", "v")["files"][0]["path"])
    assert b'"f":"-0",' in raw  # the sign of zero survives jsonb as a string, like NaN


def test_hostile_table_and_column_names_round_through(db: Database, tmp_path: Path) -> None:
    """Quotes, '/', '.', spaces, unicode, 63-byte names, names differing in case."""
    long_name = "x" * 63
    names = [
        'we"ird',
        "a/b",
        "..",
        ".hidden",
        "with space",
        "таблица😀",
        long_name,
        "Users",
        "users",
        "select",
        "; DROP TABLE users; --",
    ]
    schema = 'sch.ema "q"'
    db.execute(f'CREATE SCHEMA "{schema.replace(chr(34), chr(34) * 2)}"')
    for i, name in enumerate(names):
        q = name.replace('"', '""')
        db.execute(
            f'CREATE TABLE "{schema.replace(chr(34), chr(34) * 2)}"."{q}" '
            f'(r int, "a""b" text, "col with space" int, "ünï" text, "select" int)'
        )
        db.execute(
            f'INSERT INTO "{schema.replace(chr(34), chr(34) * 2)}"."{q}" '
            f"VALUES ({i}, 'v{i}', {i}, 'ü', {i})"
        )
    backup = Path(run_dump(db, tmp_path).path)
    m = manifest_of(backup)
    assert sorted(t["name"] for t in m["tables"]) == sorted(names)
    assert {t["schema"] for t in m["tables"]} == {schema}
    paths = [f["path"] for t in m["tables"] for f in t["files"]]
    assert len(set(p.lower() for p in paths)) == len(names)  # distinct, even ignoring case
    for p in paths:
        assert p.startswith("data/") and all(
            c.isascii() and (c.isalnum() or c in "._-") for c in p[5:]
        ), p
        assert len(p.encode()) < 120
    rows = read_rows(backup)
    for i, name in enumerate(names):
        assert rows[(schema, name)] == [
            {"r": i, 'a"b': f"v{i}", "col with space": i, "ünï": "ü", "select": i}
        ]


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions(db: Database, tmp_path: Path, compression: str) -> None:
    db.execute(SHOP)
    backup = Path(run_dump(db, tmp_path, compression=compression).path)
    suffix = {"gzip": ".ndjson.gz", "none": ".ndjson"}[compression]
    paths = [f["path"] for t in manifest_of(backup)["tables"] for f in t["files"]]
    assert all(p.endswith(suffix) for p in paths)
    assert sum(len(v) for v in read_rows(backup).values()) == 2070
    if compression == "gzip" and shutil.which("gzip"):
        subprocess.run(["gzip", "-t", *paths], cwd=backup, check=True)


def test_files_are_private_whatever_the_umask(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    old = os.umask(0)
    try:
        backup = Path(run_dump(db, tmp_path).path)
    finally:
        os.umask(old)
    for path in [backup, *backup.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_database_url_from_dotenv_file(db: Database, tmp_path: Path) -> None:
    """What the old script did: DATABASE_URL from ./.env."""
    db.execute(SHOP)
    (tmp_path / ".env").write_text(f"DATABASE_URL={db.dsn}\n")
    run = run_cli("dump", "-o", "out", "--name", "b", "-t", "customers", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "out" / "b")
    assert table_entry(tmp_path / "out" / "b", "public", "customers")["rows"] == 50
    assert "s3cret" not in run.stdout + run.stderr


def test_database_url_from_environment_and_pg_variables(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    env = clean_env(DATABASE_URL=db.dsn)
    run = run_cli("dump", "-o", str(tmp_path), "--name", "a", "-t", "customers", env=env)
    assert run.returncode == 0, run.stderr
    pg = db.postgres
    env = clean_env(
        PGHOST=pg.host,
        PGPORT=str(pg.port),
        PGUSER="postgres",
        PGPASSWORD="s3cret-test-pw",
        PGDATABASE=db.name,
    )
    run = run_cli("dump", "-o", str(tmp_path), "--name", "b", "-t", "customers", env=env)
    assert run.returncode == 0, run.stderr
    assert "s3cret" not in run.stdout + run.stderr


def test_plain_log_off_a_terminal_and_quiet(db: Database, tmp_path: Path) -> None:
    db.execute(SHOP)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "a")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any("dump started: 4 tables" in line for line in lines)
    assert sum("copied " in line for line in lines) == 4
    assert any("dump complete" in line for line in lines)
    assert "\x1b[" not in run.stderr  # no colour or cursor movement in logs
    quiet = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == f"{tmp_path / 'b'}\n"  # the path, the one line on stdout


def test_empty_and_columnless_tables(db: Database, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE empty (id int); CREATE TABLE nocols (); "
        "INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES;"
    )
    backup = Path(run_dump(db, tmp_path).path)
    rows = read_rows(backup)
    assert rows[("public", "empty")] == []
    assert rows[("public", "nocols")] == [{}, {}]


def test_no_tables_in_database_is_an_error(db: Database, tmp_path: Path) -> None:
    with pytest.raises(NoTablesMatched):
        run_dump(db, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_is_its_dataclass_written(db: Database, tmp_path: Path) -> None:
    """What the dump writes is ``format.Manifest.to_json`` and what readers get is its
    ``parse``: one is the other's inverse on a manifest holding every kind of entry (FKs
    and a cycle, a self-reference, sequences, a partition, large objects, the schema,
    the database's own properties)."""
    db.execute(SHOP)
    db.execute(
        "CREATE TABLE node (id int PRIMARY KEY, up int REFERENCES node);"
        "CREATE TABLE a (id int PRIMARY KEY, b int); CREATE TABLE b (id int PRIMARY KEY, a int);"
        "ALTER TABLE a ADD FOREIGN KEY (b) REFERENCES b DEFERRABLE;"
        "ALTER TABLE b ADD FOREIGN KEY (a) REFERENCES a DEFERRABLE INITIALLY DEFERRED;"
        "CREATE TABLE p (id int) PARTITION BY RANGE (id);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);"
        "INSERT INTO p VALUES (1), (2); SELECT lo_from_bytea(0, 'blob');"
    )
    result = run_dump(db, tmp_path)
    body = manifest.load(Path(result.path))
    typed = open_backup(result.path).manifest
    assert typed.restore_order is not None and typed.restore_order.cycles
    assert typed.large_objects is not None and typed.schema is not None
    assert typed.database is not None and typed.server is not None
    written = {k: v for k, v in body.items() if k != manifest.CHECKSUM_KEY}
    assert typed.to_json() == written
    assert manifest.serialize(typed.to_json()) == (Path(result.path) / "manifest.json").read_bytes()


def test_reading_sequences_in_the_snapshot_keeps_no_lock_on_them(db: Database) -> None:
    """The dump's snapshot transaction locks every table; the sequences' locks would
    come on top of those (ten thousand serial tables overflow the default lock table, as
    pg_dump does): each batch is read in a savepoint rolled back, its locks given back,
    and the values read are the sequences' own."""
    db.execute(
        "CREATE SEQUENCE s1; CREATE SEQUENCE s2 START 40; SELECT nextval('s1'), nextval('s1')"
    )

    async def go() -> tuple[dict[str, tuple[int, bool]], int, bool]:
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            listed = [s for s in await list_sequences(conn) if s.name in ("s1", "s2")]
            states = await read_sequence_states(conn, listed)
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                "AND relation = ANY($1::oid[])",
                [s.oid for s in listed],
            )
            in_transaction = conn.is_in_transaction()
            await conn.execute("ROLLBACK")
            return {s.name: states[s.oid] for s in listed}, held, in_transaction
        finally:
            await conn.close()

    states, held, in_transaction = anyio.run(go, backend="asyncio")
    assert states == {"s1": (2, True), "s2": (40, False)}
    assert held == 0 and in_transaction


def test_the_types_read_for_a_dump_are_those_its_columns_are_made_of(db: Database) -> None:
    """A dump reads only the types its tables' columns use, to any depth (a domain over
    an array of a domain over an enum), not every row type of the database; each
    column's encoding is what all the catalog's types give."""
    from asyncsnap.catalog import (
        Column,
        TypeInfo,
        describe_tables,
        list_tables,
        read_server_info,
        read_types,
    )
    from asyncsnap.encode.render import column_encoding

    db.execute(
        "CREATE TYPE mood AS ENUM ('ok'); CREATE DOMAIN d1 AS mood; CREATE DOMAIN d2 AS d1[];"
        "CREATE TYPE unused AS (a int); CREATE TABLE other (u unused);"
        "CREATE TABLE t (a d2, b int[], c text, d unused)"
    )

    async def go() -> tuple[dict[int, TypeInfo], dict[int, TypeInfo], list[Column]]:
        conn = await asyncpg.connect(db.dsn)
        try:
            server = await read_server_info(conn)
            listed = [x for x in await list_tables(conn, server) if x.name == "t"]
            (table,) = await describe_tables(conn, listed)
            used = await read_types(conn, [table.oid])
            every = await read_types(conn)
            return used, every, list(table.columns)
        finally:
            await conn.close()

    used, every, columns = anyio.run(go, backend="asyncio")
    names = {t.name for t in used.values()}
    assert {"d2", "_d1", "d1", "mood", "_int4", "int4", "text", "unused"} <= names
    assert "other" not in names and "_mood" not in names and len(used) < len(every) / 10
    for column in columns:
        assert column_encoding(column, used) == column_encoding(column, every)


def test_tables_described_in_batches_are_described_as_in_one(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """describe_tables asks DESCRIBE_BATCH tables a query (a high-water mark of rows
    held, ten thousand tables): in batches of two, five tables with keys, foreign keys
    across batches and sizes come out as they do in one query, in their order."""
    from asyncsnap import catalog

    db.execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (x int, y int,"
        " PRIMARY KEY (x, y)); CREATE TABLE c (id int REFERENCES a, bx int, by int,"
        " FOREIGN KEY (bx, by) REFERENCES b); CREATE TABLE d (n numeric(10, 2)[]);"
        "CREATE TABLE e (); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 500) g"
    )

    queries: list[str] = []

    async def described() -> list[catalog.Table]:
        conn = await asyncpg.connect(db.dsn)
        try:
            server = await catalog.read_server_info(conn)
            listed = [t for t in await catalog.list_tables(conn, server) if t.schema == "public"]
            conn.add_query_logger(
                lambda record: (
                    queries.append(record.query)
                    if record.query
                    in (catalog._SIZES_SQL, catalog._COLUMNS_SQL, catalog._CONSTRAINTS_SQL)
                    else None
                )
            )
            return await catalog.describe_tables(conn, sorted(listed, key=lambda t: t.name))
        finally:
            await conn.close()

    whole = anyio.run(described, backend="asyncio")
    assert len(queries) == 3  # sizes, columns, constraints: one query each
    queries.clear()
    monkeypatch.setattr(catalog, "DESCRIBE_BATCH", 2)
    assert anyio.run(described, backend="asyncio") == whole
    assert len(queries) == 9  # the same three for each of three batches
    assert [t.name for t in whole] == ["a", "b", "c", "d", "e"]
    assert [len(t.columns) for t in whole] == [2, 2, 3, 1, 0]
    assert [len(t.foreign_keys) for t in whole] == [0, 0, 2, 0, 0]
    assert whole[1].primary_key == ("x", "y") and whole[0].table_bytes > 0


def test_data_files_are_fsynced_before_sha256sums_and_the_manifest(
    db: Database, tmp_path: Path
) -> None:
    """The write order's promise on the system calls (strace): the data files are
    fsynced together near the end (not one by one as written: issue 24, ten thousand
    tables), but every one before SHA256SUMS and the manifest are created, and these
    before the rename that makes the backup complete."""
    strace = shutil.which("strace")
    assert strace is not None, "strace is installed by .ci/run"
    db.execute(SHOP)
    log = tmp_path / "strace.log"
    out = tmp_path / "out"
    traced = [strace, "-f", "-y", "-qq", "-e", "trace=fsync,openat,rename", "-o", str(log)]
    dump = [sys.executable, "-m", "asyncsnap", "dump", db.dsn, "-o", str(out), "-q"]
    subprocess.run(
        [*traced, *dump, "--name", "b", "-j", "2"],
        check=True,
        capture_output=True,
        env=clean_env(),
        timeout=120,
    )
    calls = log.read_text().splitlines()
    data = out / "b" / "data"
    files = sorted(p.name for p in data.iterdir())
    assert len(files) == len(manifest_of(out / "b")["tables"]) == 4

    def first(pattern: str) -> int:
        return next(i for i, call in enumerate(calls) if re.search(pattern, call))

    partial_data = re.escape(f"{out / 'b.partial' / 'data'}/")
    # (by its final name; by its temporary one when a file is fsynced as it is written)
    synced = {
        name: first(rf"fsync\(\d+<{partial_data}(\.{re.escape(name)}\.tmp|{re.escape(name)})>")
        for name in files
    }
    sums_created = first(r"openat\(.*\.SHA256SUMS\.tmp")
    manifest_created = first(r"openat\(.*\.manifest\.json\.tmp")
    completed = first(r"rename\(.*b\.partial\", \".*/b\"")
    assert max(synced.values()) < sums_created < manifest_created < completed
