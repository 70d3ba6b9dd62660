"""Every object the filters select is in the backup, or named as not in it: standalone
sequences, large objects, materialized views, foreign tables, extension tables, unlogged
tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from .conftest import Database, Postgres, fresh_database, run_cli
from .helpers import decompress, manifest_of, reseal

SCHEMA = """
CREATE TABLE orders (id serial PRIMARY KEY, total numeric);
CREATE SEQUENCE invoice_numbers START 1000;
CREATE UNLOGGED TABLE scratch (id int);
CREATE MATERIALIZED VIEW order_totals AS SELECT count(*) AS n, sum(total) AS s FROM orders;
CREATE MATERIALIZED VIEW totals_twice AS SELECT n * 2 AS n2 FROM order_totals;
"""


def _skipped(backup: Path) -> dict[str, str]:
    return {
        f"{k['kind']} {k['schema']}.{k['name']}": k["reason"]
        for k in manifest_of(backup)["skipped"]
    }


@pytest.mark.versions
def test_standalone_sequence_value_is_restored(
    postgres: Postgres, db: Database, tmp_path: Path
) -> None:
    """A sequence not owned by a table, used with nextval() by the application: after a
    restore it must not hand out numbers it already gave."""
    db.execute(SCHEMA + "SELECT nextval('invoice_numbers') FROM generate_series(1, 5);")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    sequences = {s["name"]: s for s in manifest_of(tmp_path / "b")["sequences"]}
    assert sequences["invoice_numbers"]["last_value"] == 1004
    assert sequences["invoice_numbers"]["table"] is None
    assert sequences["orders_id_seq"]["table"] == {"schema": "public", "name": "orders"}
    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute(SCHEMA)
        restored = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert restored.returncode == 0, restored.stderr
        assert target.fetchval("SELECT nextval('invoice_numbers')") == 1005
    # -t selects standalone sequences by name, as pg_dump does.
    only = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "t", "-t", "orders")
    assert only.returncode == 0, only.stderr
    assert [s["name"] for s in manifest_of(tmp_path / "t")["sequences"]] == ["orders_id_seq"]


def test_objects_that_hold_no_dumpable_rows_are_named_with_the_reason(
    db: Database, tmp_path: Path
) -> None:
    db.execute(
        SCHEMA
        + """
        CREATE EXTENSION IF NOT EXISTS file_fdw;
        CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
        CREATE FOREIGN TABLE outside (line text) SERVER files OPTIONS (filename '/dev/null');
        CREATE TABLE ext_config (id int);
        CREATE TABLE ext_member (id int);
        ALTER EXTENSION file_fdw ADD TABLE ext_config;
        ALTER EXTENSION file_fdw ADD TABLE ext_member;
        -- what pg_extension_config_dump() records; it can only be called by a script
        UPDATE pg_extension SET extconfig = ARRAY['ext_config'::regclass::oid],
                                extcondition = ARRAY['']
        WHERE extname = 'file_fdw';
        REFRESH MATERIALIZED VIEW order_totals;
        """
    )
    db.execute("CREATE MATERIALIZED VIEW never_filled AS SELECT 1 AS x WITH NO DATA")
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    skipped = _skipped(tmp_path / "b")
    assert skipped == {
        "materialized view public.order_totals": (
            "its rows are computed by its query; restore refreshes it"
        ),
        "materialized view public.totals_twice": (
            "its rows are computed by its query; restore refreshes it"
        ),
        "materialized view public.never_filled": (
            "its rows are computed by its query; it was not populated"
        ),
        "foreign table public.outside": "its rows live on a foreign server",
        "extension table public.ext_config": (
            "configuration table of extension file_fdw: CREATE EXTENSION makes it; rows "
            "added to it since are not in this backup"
        ),
        "extension table public.ext_member": "belongs to extension file_fdw, which makes it",
    }
    assert "not dumped: foreign table public.outside" in run.stderr
    tables = [t["name"] for t in manifest_of(tmp_path / "b")["tables"]]
    assert tables == ["orders", "scratch"]  # the unlogged table's rows are in, as in pg_dump
    inspected = run_cli("inspect", str(tmp_path / "b"))
    assert "NOT DUMPED" in inspected.stdout and "public.outside" in inspected.stdout
    plan = run_cli("restore", str(tmp_path / "b"), db.dsn, "--dry-run", "--append")
    assert "not in the backup: foreign table public.outside" in plan.stdout + plan.stderr

    leave_out = run_cli(
        "dump", db.dsn, "-o", str(tmp_path), "--name", "c", "--no-unlogged-table-data"
    )
    assert leave_out.returncode == 0, leave_out.stderr
    assert _skipped(tmp_path / "c")["unlogged table public.scratch"] == "--no-unlogged-table-data"


def test_populated_materialized_views_are_refreshed_after_restore(
    postgres: Postgres, db: Database, tmp_path: Path
) -> None:
    """pg_dump -s creates them WITH NO DATA; the restore fills them, dependencies first."""
    db.execute(SCHEMA + "INSERT INTO orders (total) VALUES (10), (32);")
    db.execute("REFRESH MATERIALIZED VIEW order_totals; REFRESH MATERIALIZED VIEW totals_twice")
    assert run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b").returncode == 0
    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute(SCHEMA.replace("FROM order_totals;", "FROM order_totals WITH NO DATA;"))
        target.execute(
            "DROP MATERIALIZED VIEW totals_twice; DROP MATERIALIZED VIEW order_totals;"
            "CREATE MATERIALIZED VIEW order_totals AS "
            "SELECT count(*) AS n, sum(total) AS s FROM orders WITH NO DATA;"
            "CREATE MATERIALIZED VIEW totals_twice AS SELECT n * 2 AS n2 FROM order_totals "
            "WITH NO DATA;"
        )
        run = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert run.returncode == 0, run.stderr
        assert target.fetchval("SELECT n2 FROM totals_twice") == 4
        assert target.fetchval("SELECT s FROM order_totals") == 42


LARGE_OBJECTS = """
SELECT lo_from_bytea(70001, ''::bytea);
SELECT lo_from_bytea(70002, convert_to('hello', 'UTF8'));
-- 2.5 MiB: three pieces of a file line each, not a multiple of the piece size
SELECT lo_from_bytea(70003, decode(repeat('0123456789abcdef', 327680), 'hex'));
-- exactly 1 MiB: one full piece and nothing after it
SELECT lo_from_bytea(70004, decode(repeat('ff', 1048576), 'hex'));
"""


def _objects(db: Database) -> dict[int, tuple[str, bytes]]:
    return {
        r["oid"]: (r["owner"], bytes(r["data"]))
        for r in db.fetch(
            "SELECT m.oid::int AS oid, pg_get_userbyid(m.lomowner) AS owner, lo_get(m.oid) AS data "
            "FROM pg_largeobject_metadata m ORDER BY 1"
        )
    }


@pytest.mark.versions
def test_large_objects_are_restored_byte_equal_with_oids_and_owners(
    postgres: Postgres, db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, _ = role
    db.execute(
        "CREATE TABLE docs (id int, body oid);"
        "INSERT INTO docs VALUES (1, 70002), (2, 70003);"
        + LARGE_OBJECTS
        + f"ALTER LARGE OBJECT 70002 OWNER TO {name};"
        + f"GRANT SELECT ON LARGE OBJECT 70003 TO {name};"
    )
    before = _objects(db)
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    body = manifest_of(tmp_path / "b")
    assert body["large_objects"]["objects"] == 4
    assert body["large_objects"]["bytes"] == sum(len(d) for _, d in before.values())
    (entry,) = body["large_objects"]["files"]
    lines = [orjson.loads(x) for x in decompress(tmp_path / "b" / entry["path"]).splitlines()]
    assert [(ln["oid"], ln["offset"]) for ln in lines] == [
        (70001, 0),
        (70002, 0),
        (70003, 0),
        (70003, 1 << 20),
        (70003, 2 << 20),
        (70004, 0),
    ]
    assert lines[1] == {
        "oid": 70002,
        "owner": name,
        "acl": None,
        "offset": 0,
        "data": "\\x68656c6c6f",
    }
    assert run_cli("verify", str(tmp_path / "b")).returncode == 0

    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute("CREATE TABLE docs (id int, body oid)")
        restored = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert restored.returncode == 0, restored.stderr
        assert _objects(target) == before
        grants = target.fetchval(
            "SELECT lomacl::text FROM pg_largeobject_metadata WHERE oid = 70003"
        )
        assert f"{name}=r/" in grants
        # Again into the same database: refused, then replaced with --truncate.
        again = run_cli("restore", str(tmp_path / "b"), target.dsn, "--append")
        assert again.returncode == 1 and "already has large objects 70001" in again.stderr
        replaced = run_cli("restore", str(tmp_path / "b"), target.dsn, "--truncate")
        assert replaced.returncode == 0, replaced.stderr
        assert _objects(target) == before


def test_large_objects_follow_pg_dumps_selection_rule(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int);" + LARGE_OBJECTS)
    filtered = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "a", "-t", "t")
    assert filtered.returncode == 0, filtered.stderr
    body = manifest_of(tmp_path / "a")
    assert body["large_objects"] is None
    assert body["skipped"][-1]["kind"] == "large objects"
    assert "4 not dumped: a -t or -n filter was given" in body["skipped"][-1]["reason"]
    asked = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-t", "t", "-b")
    assert manifest_of(tmp_path / "b")["large_objects"]["objects"] == 4, asked.stderr
    refused = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "c", "-B")
    assert manifest_of(tmp_path / "c")["large_objects"] is None, refused.stderr


def test_unreadable_large_objects_fail_or_are_skipped_and_named(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    db.execute(
        f"CREATE TABLE t (id int); GRANT SELECT ON t TO {name};"
        + LARGE_OBJECTS
        + f"GRANT SELECT ON LARGE OBJECT 70002 TO {name};"
    )
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    refused = run_cli("dump", dsn, "-o", str(tmp_path), "--name", "a")
    assert refused.returncode == 1, refused.stderr
    assert "permission denied for 3 of 4 large objects" in refused.stderr
    skipped = run_cli("dump", dsn, "-o", str(tmp_path), "--name", "b", "--skip-unreadable")
    assert skipped.returncode == 0, skipped.stderr
    body = manifest_of(tmp_path / "b")
    assert body["large_objects"]["objects"] == 1
    assert {"kind": "large objects", "reason": "3 not dumped: permission denied"}.items() <= (
        body["skipped"][-1].items()
    )


@pytest.mark.parametrize("damage", ["flip", "foreign-line"])
def test_damaged_large_object_file_restores_nothing(
    postgres: Postgres, db: Database, tmp_path: Path, damage: str
) -> None:
    db.execute(LARGE_OBJECTS)
    assert (
        run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "--compress", "none").returncode
        == 0
    )
    (entry,) = manifest_of(tmp_path / "b")["large_objects"]["files"]
    path = tmp_path / "b" / entry["path"]
    raw = path.read_bytes()
    if damage == "flip":  # "hello" becomes "hellm": the file no longer matches its hash
        changed = raw.replace(b'"\\\\x68656c6c6f"', b'"\\\\x68656c6c6d"')
    else:  # a line that is JSON but no piece, the file re-hashed and re-sealed by an attacker
        changed = raw.replace(b'"offset":0', b'"offset":-1', 1)
    assert changed != raw
    path.write_bytes(changed)
    if damage == "foreign-line":
        reseal(
            tmp_path / "b",
            lambda body: body["large_objects"]["files"][0].update(
                sha256=hashlib.sha256(changed).hexdigest(), stored_bytes=len(changed)
            ),
        )
        sums = f"{hashlib.sha256(changed).hexdigest()}  {entry['path']}\n"
        (tmp_path / "b" / "SHA256SUMS").write_text(sums)
    with fresh_database(postgres, "asyncsnap_target") as target:
        run = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert run.returncode == 5, run.stderr
        assert target.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == 0
