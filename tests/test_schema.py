"""Self-contained backups: the schema from the dump's snapshot, restored into an empty
database, back over a migration with --clean, and restores that never change data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from asyncsnap.errors import (
    PermissionDenied,
    RestoreFailed,
    SchemaMismatch,
    TargetNotEmpty,
    UsageError,
    VerificationFailed,
)
from asyncsnap.restore.plan import check_options
from asyncsnap.schema import (
    drop_statements,
    script_entries,
    script_statements,
    split_statements,
)

from .conftest import Database, Postgres, clean_env, fresh_database, run_cli
from .helpers import flip_bit_mid_file, reseal
from .test_dump import run_dump
from .test_restore import copy_schema, digests, run_restore, schema_sql
from .test_restore_plan import backup_of

# Every kind of object pg_dump knows that a test can make with the server alone; {role}
# is a role of the server that gets privileges.
RICH = """
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN shop.posint AS int CHECK (VALUE > 0);
CREATE TYPE shop.pair AS (a int, b text);
CREATE TYPE shop.floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE shop.standalone START 100 INCREMENT 7;
SELECT nextval('shop.standalone'), nextval('shop.standalone');
CREATE FUNCTION shop.slug(t text) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT lower(replace(t, ' ', '-')) $$;
CREATE TABLE shop.customers (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    slug text GENERATED ALWAYS AS (shop.slug(name)) STORED,
    mood shop.mood DEFAULT 'ok',
    score shop.posint,
    extra shop.pair,
    search tsvector,
    created timestamptz DEFAULT now(),
    CONSTRAINT name_not_blank CHECK (name <> '')
);
COMMENT ON TABLE shop.customers IS 'people who buy';
COMMENT ON COLUMN shop.customers.slug IS 'made from the name';
CREATE UNIQUE INDEX customers_slug ON shop.customers (slug);
CREATE TABLE shop.orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES shop.customers ON DELETE CASCADE,
    total numeric(12, 2) CHECK (total >= 0),
    span shop.floatrange
);
CREATE INDEX orders_customer ON shop.orders (customer_id) WHERE total > 0;
-- A foreign-key cycle, not deferrable, and a NOT VALID constraint over old rows.
CREATE TABLE shop.a (id int PRIMARY KEY, b_id int);
CREATE TABLE shop.b (id int PRIMARY KEY, a_id int REFERENCES shop.a);
ALTER TABLE shop.a ADD FOREIGN KEY (b_id) REFERENCES shop.b;
INSERT INTO shop.a VALUES (1, NULL); INSERT INTO shop.b VALUES (1, 1);
UPDATE shop.a SET b_id = 1;
CREATE TABLE shop.legacy (v int);
INSERT INTO shop.legacy VALUES (-1);
ALTER TABLE shop.legacy ADD CONSTRAINT legacy_positive CHECK (v > 0) NOT VALID;
-- Triggers, rules, an audit table they write to.
CREATE TABLE shop.audit (id serial, what text);
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.search := to_tsvector('simple', NEW.name); RETURN NEW; END $$;
CREATE TRIGGER customers_touch BEFORE INSERT OR UPDATE ON shop.customers
    FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE FUNCTION shop.log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO shop.audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_log AFTER INSERT ON shop.orders
    FOR EACH ROW EXECUTE FUNCTION shop.log_order();
ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER orders_log;
CREATE RULE customers_rule AS ON INSERT TO shop.customers
    DO ALSO INSERT INTO shop.audit (what) VALUES ('customer');
-- Views, a materialized view, partitions, inheritance.
CREATE VIEW shop.totals AS
    SELECT c.name, sum(o.total) AS total FROM shop.customers c
    JOIN shop.orders o ON o.customer_id = c.id GROUP BY c.name;
CREATE MATERIALIZED VIEW shop.order_count AS SELECT count(*) AS n FROM shop.orders;
CREATE UNIQUE INDEX order_count_n ON shop.order_count (n);
CREATE TABLE shop.events (id int, day date, v float8) PARTITION BY RANGE (day);
CREATE TABLE shop.events_2024 PARTITION OF shop.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE shop.events_rest PARTITION OF shop.events DEFAULT;
CREATE INDEX events_day ON shop.events (day);
CREATE TABLE shop.base (id int, note text);
CREATE TABLE shop.child (extra int) INHERITS (shop.base);
-- Row security and privileges.
CREATE TABLE shop.notes (owner name DEFAULT current_user, body text);
ALTER TABLE shop.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON shop.notes USING (owner = current_user);
GRANT USAGE ON SCHEMA shop TO {role};
GRANT SELECT, INSERT ON shop.notes TO {role};
GRANT SELECT (name) ON shop.customers TO {role};
-- Rows, written with every trigger and rule firing, as the application did.
INSERT INTO shop.customers (name, score, extra)
    SELECT 'Customer ' || g, g, format('(%s,x%s)', g, g)::shop.pair FROM generate_series(1, 300) g;
INSERT INTO shop.orders (customer_id, total, span)
    SELECT 1 + g % 300, g * 1.25, numrange_to(g) FROM generate_series(1, 2000) g;
DELETE FROM shop.orders WHERE id % 7 = 0;
INSERT INTO shop.events SELECT g, date '2024-11-01' + g, g / 7.0 FROM generate_series(1, 200) g;
INSERT INTO shop.base VALUES (1, 'base'); INSERT INTO shop.child VALUES (2, 'child', 3);
INSERT INTO shop.notes (body) VALUES ('secret');
REFRESH MATERIALIZED VIEW shop.order_count;
SELECT lo_from_bytea(0, 'large object bytes'::bytea);
"""

# A helper the rich schema's INSERT uses, dropped before the dump.
HELPER = """
CREATE FUNCTION numrange_to(g int) RETURNS shop.floatrange LANGUAGE sql
    AS $$ SELECT shop.floatrange(g, g + 0.5) $$;
"""


def make_rich(db: Database, role: str) -> None:
    parts = RICH.split("-- Rows, written")
    db.execute(parts[0].replace("{role}", role))
    db.execute(HELPER)
    db.execute("-- Rows, written" + parts[1])
    db.execute("DROP FUNCTION numrange_to(int)")


def schema_text(db: Database) -> str:
    """``pg_dump --schema-only`` of ``db``, without the lines that differ per run."""
    return "\n".join(
        ln
        for ln in schema_sql(db).splitlines()
        if not ln.startswith(("\\restrict", "\\unrestrict"))
    )


def large_objects(db: Database) -> list[tuple[int, bytes]]:
    rows = db.fetch("SELECT oid, lo_get(oid) FROM pg_largeobject_metadata ORDER BY oid")
    return [(r[0], bytes(r[1])) for r in rows]


@pytest.mark.versions
def test_rich_database_restores_into_an_empty_database_exactly(
    db: Database, postgres: Postgres, role: tuple[str, str], tmp_path: Path
) -> None:
    """Types, domains, enums, ranges, functions, triggers, rules, views, a matview,
    partitions, inheritance, policies, comments, grants, identity, generated columns, a
    NOT VALID constraint, an FK cycle, a large object and sequences: the copy's rows
    (ordered md5 of t::text) and its ``pg_dump --schema-only`` equal the source's."""
    make_rich(db, role[0])
    backup = Path(run_dump(db, tmp_path, jobs=2).path)
    assert (backup / "schema" / "schema.pgdump").read_bytes()[:5] == b"PGDMP"
    with fresh_database(postgres, "asyncsnap_whole") as copy:
        result = run_restore(backup, copy, jobs=2)
        assert result.kind == "whole"
        assert digests(copy.dsn) == digests(db.dsn)
        assert schema_text(copy) == schema_text(db)
        assert large_objects(copy) == large_objects(db)
        # Sequences moved on as in the source; the matview holds its rows; nothing fired.
        for seq in ("shop.standalone", "shop.orders_id_seq"):
            assert copy.fetchval(f"SELECT nextval('{seq}')") == db.fetchval(
                f"SELECT nextval('{seq}')"
            )
        assert copy.fetchval("SELECT n FROM shop.order_count") == db.fetchval(
            "SELECT count(*) FROM shop.orders"
        )
        assert copy.fetchval("SELECT count(*) FROM shop.audit") == db.fetchval(
            "SELECT count(*) FROM shop.audit"
        )
        # ANALYZE ran: the planner has statistics for the restored tables.
        assert copy.fetchval(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'shop' AND tablename = 'orders'"
        )


def _transactions(db: Database) -> int:
    """How many transactions made the tables of schema shop: their row types' xmin
    (post-data rewrites their pg_class rows, never these)."""
    return int(
        db.fetchval(
            "SELECT count(DISTINCT t.xmin::text) FROM pg_type t JOIN pg_class c "
            "ON c.oid = t.typrelid WHERE c.relnamespace = 'shop'::regnamespace "
            "AND c.relkind IN ('r', 'p')"
        )
    )


@pytest.mark.versions
def test_a_large_schema_is_made_in_batches_exactly(
    db: Database,
    postgres: Postgres,
    role: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Beyond OBJECTS_PER_TRANSACTION objects the schema commits in batches (ten
    thousand tables would overflow the lock table, tests/test_many_tables.py): here seven
    objects a batch, the rich database comes back exact, --clean's drops batched too; a
    function whose body spells a header (a cut that does not match the archive's table
    of contents) makes it run in one transaction, exact as well."""
    from asyncsnap.restore import schema as restore_schema

    monkeypatch.setattr(restore_schema, "OBJECTS_PER_TRANSACTION", 7)
    make_rich(db, role[0])
    backup = Path(run_dump(db, tmp_path / "plain", jobs=2).path)
    with fresh_database(postgres, "asyncsnap_batched") as copy:
        run_restore(backup, copy, jobs=2)
        assert digests(copy.dsn) == digests(db.dsn)
        assert schema_text(copy) == schema_text(db)
        assert _transactions(copy) > 1
        copy.execute("ALTER TABLE shop.base DROP COLUMN note; DROP TABLE shop.notes")
        run_restore(backup, copy, jobs=2, clean=True)
        assert digests(copy.dsn) == digests(db.dsn)
        assert schema_text(copy) == schema_text(db)
    db.execute(
        "CREATE FUNCTION shop.spelled() RETURNS int LANGUAGE sql AS $$\n--\n"
        "-- Name: x; Type: TABLE; Schema: shop; Owner: y\n--\nSELECT 1$$"
    )
    backup = Path(run_dump(db, tmp_path / "spelled", jobs=2).path)
    with fresh_database(postgres, "asyncsnap_spelled") as copy:
        run_restore(backup, copy, jobs=2)
        assert digests(copy.dsn) == digests(db.dsn)
        assert schema_text(copy) == schema_text(db)
        assert _transactions(copy) == 1
        assert copy.fetchval("SELECT shop.spelled()") == 1


def test_migration_went_wrong_restore_clean_gives_back_schema_and_data(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """Dump before a migration; drop a column, drop a table, change rows, add a foreign
    key between two of the backup's tables; ``restore --clean`` brings back exactly the
    schema and rows of before, in one command."""
    make_rich(db, role[0])
    before_rows, before_schema = digests(db.dsn), schema_text(db)
    backup = Path(run_dump(db, tmp_path, jobs=2).path)
    db.execute(
        "ALTER TABLE shop.customers DROP COLUMN extra;"
        "DROP TABLE shop.orders CASCADE;"
        "UPDATE shop.customers SET name = name || '!' WHERE id < 50;"
        "DELETE FROM shop.audit WHERE id % 2 = 0;"
        "ALTER TABLE shop.audit ADD PRIMARY KEY (id);"
        "ALTER TABLE shop.legacy ADD COLUMN audit_id int REFERENCES shop.audit;"
    )
    plain = run_cli("restore", str(backup), db.dsn)
    assert plain.returncode == 1
    assert "has no table shop.orders" in plain.stderr and "--clean" in plain.stderr
    run = run_cli("restore", str(backup), db.dsn, "--clean", "-q")
    assert run.returncode == 0, run.stderr
    assert digests(db.dsn) == before_rows
    assert schema_text(db) == before_schema


PARTITIONED = r'''
CREATE TABLE public.events (id int, kind text, at date, note text,
    PRIMARY KEY (id, kind), UNIQUE (kind, id)) PARTITION BY LIST (kind);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES IN ('a');
CREATE TABLE public.events_b PARTITION OF public.events FOR VALUES IN ('b')
    PARTITION BY RANGE (id);
CREATE TABLE public.events_b1 PARTITION OF public.events_b FOR VALUES FROM (0) TO (100);
CREATE TABLE public.events_b2 PARTITION OF public.events_b FOR VALUES FROM (100) TO (1000);
ALTER TABLE public.events_a ADD CONSTRAINT own_check CHECK (id > 0);
CREATE TABLE "odd ""name""" (id int, kind text, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
CREATE TABLE "odd part" PARTITION OF "odd ""name""" FOR VALUES IN ('x');
CREATE TABLE public.refs (id int PRIMARY KEY, event int, kind text,
    FOREIGN KEY (event, kind) REFERENCES public.events (id, kind));
INSERT INTO public.events SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END,
    date '2026-01-01' + g, 'n' || g FROM generate_series(1, 500) g;
INSERT INTO "odd ""name""" SELECT g, 'x' FROM generate_series(1, 20) g;
INSERT INTO public.refs SELECT g, g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END
    FROM generate_series(1, 50) g;
'''


def test_clean_restores_partitioned_tables_with_keys(db: Database, tmp_path: Path) -> None:
    """--clean over partitioned tables with a primary key and a unique constraint (their
    partitions' own, attached to them, two levels deep), a foreign key to one, odd
    names: the schema and rows of the backup. (pg_restore --clean's drop of a partition's
    key, which the partition inherits, was refused by the server, and --clean failed for
    any such backup; pg_restore goes on past it.)"""
    db.execute(PARTITIONED)
    before_rows, before_schema = digests(db.dsn), schema_text(db)
    backup = Path(run_dump(db, tmp_path, jobs=2).path)
    db.execute(
        "DELETE FROM public.refs WHERE id > 40; DELETE FROM public.events WHERE id > 400;"
        "ALTER TABLE public.events_a DROP CONSTRAINT own_check;"
        'UPDATE "odd ""name""" SET id = -id'
    )
    run = run_cli("restore", str(backup), db.dsn, "--clean", "-q")
    assert run.returncode == 0, run.stderr
    assert digests(db.dsn) == before_rows
    assert schema_text(db) == before_schema


def test_clean_refuses_a_foreign_key_from_outside_the_backup_and_changes_nothing(
    db: Database, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE p (id int PRIMARY KEY); INSERT INTO p VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    db.execute("CREATE TABLE newer (p int REFERENCES p); INSERT INTO p VALUES (2)")
    dry = run_cli("restore", str(backup), db.dsn, "--clean", "--dry-run")
    assert dry.returncode == 1 and "public.newer" in dry.stderr, dry.stderr
    with pytest.raises(RestoreFailed, match="newer"):
        run_restore(backup, db, clean=True)
    assert db.fetchval("SELECT count(*) FROM p") == 2  # untouched


def test_create_makes_the_database_and_clean_create_replaces_it(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    backup = Path(run_dump(db, tmp_path).path)
    source_rows = digests(db.dsn)
    with fresh_database(postgres, "asyncsnap_maint") as maintenance:
        # The source database exists: --create refuses it, --clean --create replaces it.
        refused = run_cli("restore", str(backup), maintenance.dsn, "--create")
        assert refused.returncode == 1 and "already exists" in refused.stderr
        db.execute("UPDATE t SET v = 'changed'")
        run = run_cli("restore", str(backup), maintenance.dsn, "--create", "--clean", "-q")
        assert run.returncode == 0, run.stderr
        assert digests(db.dsn) == source_rows


def test_no_owner_restores_into_a_server_without_the_source_roles(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """Objects owned by and granted to a role that no longer exists: the restore fails
    naming --no-owner; with --no-owner --no-privileges it succeeds, owned by us."""
    gone = f"asyncsnap_gone_{uuid.uuid4().hex[:8]}"
    db.execute(
        f"CREATE ROLE {gone}; CREATE TABLE t (id int); INSERT INTO t VALUES (1);"
        f"ALTER TABLE t OWNER TO {gone}; GRANT SELECT ON t TO PUBLIC"
    )
    try:
        backup = Path(run_dump(db, tmp_path).path)
    finally:
        db.execute(f"REASSIGN OWNED BY {gone} TO postgres; DROP OWNED BY {gone}")
        db.execute(f"DROP ROLE {gone}")
    with fresh_database(postgres, "asyncsnap_noowner") as copy:
        failed = run_cli("restore", str(backup), copy.dsn)
        assert failed.returncode == 1
        assert gone in failed.stderr and "--no-owner" in failed.stderr
        assert copy.fetchval("SELECT to_regclass('public.t')") is None  # pre-data rolled back
        ok = run_cli("restore", str(backup), copy.dsn, "--no-owner", "--no-privileges", "-q")
        assert ok.returncode == 0, ok.stderr
        assert copy.fetchval("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname='t'")
        assert copy.fetchval("SELECT count(*) FROM t") == 1


def test_schema_only_then_data_only(db: Database, postgres: Postgres, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_split") as copy:
        run_restore(backup, copy, schema_only=True)
        assert copy.fetchval("SELECT count(*) FROM t") == 0
        assert copy.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 't'") == 1
        result = run_restore(backup, copy, data_only=True)
        assert result.kind == "existing" and result.rows == 2


def test_pg_dump_missing_is_one_clear_error_and_no_schema_is_data_only(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env = clean_env(ASYNCSNAP_PG_BINDIR=str(tmp_path / "no-such-dir"))
    run = run_cli("dump", db.dsn, "-o", str(tmp_path / "out"), "--name", "b", env=env)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[-2].startswith("error: no pg_dump of PostgreSQL")
    assert lines[-1].startswith("hint: ") and "--no-schema" in lines[-1]
    assert not (tmp_path / "out" / "b").exists() and not (tmp_path / "out" / "b.partial").exists()
    run = run_cli(
        "dump", db.dsn, "-o", str(tmp_path / "out"), "--name", "b", "--no-schema", env=env
    )
    assert run.returncode == 0, run.stderr
    body = orjson.loads((tmp_path / "out" / "b" / "manifest.json").read_bytes())
    assert body["schema"] is None and not (tmp_path / "out" / "b" / "schema").exists()
    with fresh_database(postgres, "asyncsnap_noschema") as copy:
        with pytest.raises(SchemaMismatch, match=r"has no table public\.t"):
            run_restore(tmp_path / "out" / "b", copy)
        refused = run_cli("restore", str(tmp_path / "out" / "b"), copy.dsn, "--clean")
        assert refused.returncode == 2 and "needs the schema" in refused.stderr


def test_tampered_schema_file_fails_verify_and_restore(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    flip_bit_mid_file(backup / "schema" / "schema.pgdump")
    run = run_cli("verify", str(backup))
    assert run.returncode == 5 and "schema/schema.pgdump" in run.stdout + run.stderr
    with fresh_database(postgres, "asyncsnap_tampered") as copy:
        with pytest.raises(VerificationFailed, match=r"schema\.pgdump"):
            run_restore(backup, copy)
        assert copy.fetchval("SELECT to_regclass('public.t')") is None


def test_a_manifest_cannot_point_restore_at_another_schema_file(
    db: Database, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    reseal(backup, lambda body: body["schema"]["archive"].update(path="data/../schema/evil.pgdump"))
    run = run_cli("verify", str(backup))
    assert run.returncode == 5 and "schema.archive.path" in run.stderr


# --- restoring into existing tables never changes data -----------------------------


def test_loading_fires_no_trigger_or_rule_of_the_target_and_keeps_their_states(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """A trigger that checks a parent row (would fail the load), a tsvector trigger
    (would recompute values), an ENABLE ALWAYS trigger and an ON INSERT rule (would log
    rows): none fires; afterwards each is in the state it was."""
    db.execute(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, tsv tsvector);"
        "CREATE TABLE audit (what text);"
        "INSERT INTO docs VALUES (1, 'hello world', 'stored:1 value:2');"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_quiet") as copy:
        copy_schema(db, copy)
        copy.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'parent row missing'; END $$;"
            "CREATE TRIGGER check_parent BEFORE INSERT ON docs FOR EACH ROW "
            "EXECUTE FUNCTION refuse();"
            "CREATE TRIGGER recompute BEFORE INSERT ON docs FOR EACH ROW EXECUTE FUNCTION "
            "tsvector_update_trigger(tsv, 'pg_catalog.simple', body);"
            "ALTER TABLE docs ENABLE ALWAYS TRIGGER recompute;"
            "CREATE TRIGGER off_before BEFORE INSERT ON docs FOR EACH ROW "
            "EXECUTE FUNCTION refuse();"
            "ALTER TABLE docs DISABLE TRIGGER off_before;"
            "CREATE RULE log_insert AS ON INSERT TO docs DO ALSO "
            "INSERT INTO audit VALUES ('inserted');"
        )
        states = "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"
        before = [tuple(r) for r in copy.fetch(states)]
        run_restore(backup, copy)
        assert copy.fetchval("SELECT tsv::text FROM docs") == "'stored':1 'value':2"
        assert copy.fetchval("SELECT count(*) FROM audit") == 0
        assert [tuple(r) for r in copy.fetch(states)] == before
        assert (
            copy.fetchval("SELECT ev_enabled::text FROM pg_rewrite WHERE rulename = 'log_insert'")
            == "O"
        )


def test_loading_into_a_table_with_triggers_needs_its_owner(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """Only the owner can switch triggers off; anyone else is refused before anything is
    loaded, by the plan (--dry-run too)."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    db.execute(
        "TRUNCATE t; CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$; CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW "
        f"EXECUTE FUNCTION f(); GRANT INSERT, SELECT ON t TO {role[0]}"
    )
    dsn = db.postgres.dsn(db.name, user=role[0], password=role[1])
    dry = run_cli("restore", str(backup), dsn, "--dry-run")
    assert dry.returncode == 1 and "only their owner" in dry.stderr
    with pytest.raises(PermissionDenied, match=r"public\.t\b"):
        run_restore(backup, Database(db.name, dsn, db.postgres))


def test_value_too_long_for_the_target_column_is_an_error_not_a_cut(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """Schema drift: text and jsonb in the backup, varchar(5) in the target. COPY would
    refuse the long values; so does restore, naming the column (an explicit cast to
    varchar(5) used to cut them silently)."""
    db.execute(
        "CREATE TABLE t (id int, s text, j jsonb);"
        "INSERT INTO t VALUES (1, 'short', '1'), (2, 'much too long', '{\"key\": \"value\"}')"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_narrow") as copy:
        copy.execute("CREATE TABLE t (id int, s varchar(20), j varchar(5))")
        with pytest.raises(RestoreFailed, match=r"(?s)too long.*\bj\b"):
            run_restore(backup, copy)
        assert copy.fetchval("SELECT count(*) FROM t") == 0


def test_truncate_and_a_damaged_file_leave_the_old_rows(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """--truncate empties the tables in the load's transaction: a file that fails its
    checksum rolls the TRUNCATE back with it."""
    db.execute(
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (p int REFERENCES p);"
        "INSERT INTO p SELECT generate_series(1, 1000); INSERT INTO c SELECT 1"
    )
    backup = Path(run_dump(db, tmp_path).path)
    body = orjson.loads((backup / "manifest.json").read_bytes())
    (entry,) = [t for t in body["tables"] if t["name"] == "c"]
    flip_bit_mid_file(backup / entry["files"][0]["path"])
    with fresh_database(postgres, "asyncsnap_trunc") as copy:
        copy_schema(db, copy)
        copy.execute("INSERT INTO p VALUES (7); INSERT INTO c VALUES (7)")
        with pytest.raises(VerificationFailed):
            run_restore(backup, copy, mode="truncate")
        assert [r[0] for r in copy.fetch("SELECT p FROM c")] == [7]
        assert [r[0] for r in copy.fetch("SELECT id FROM p")] == [7]


def test_dry_run_predicts_that_truncate_fails_on_a_referenced_table(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """--truncate of a table another (unselected) table references: --dry-run says so
    and exits 1, as the real run does, before anything changes."""
    db.execute(
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (p int REFERENCES p);"
        "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1)"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_pred") as copy:
        copy_schema(db, copy)
        args = ("restore", str(backup), copy.dsn, "--truncate", "-t", "p")
        dry = run_cli(*args, "--dry-run")
        real = run_cli(*args)
        assert dry.returncode == real.returncode == 1
        assert "public.c references public.p" in dry.stderr

        def error(run: object) -> list[str]:
            return [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]  # type: ignore[attr-defined]

        assert error(dry) == error(real)
        assert copy.fetchval("SELECT count(*) FROM c") == 0


def _constraints(db: Database) -> list[str]:
    return [
        r[0] for r in db.fetch("SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1")
    ]


@pytest.mark.slow
def test_cycle_constraints_come_back_after_sigkill_mid_load(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """A foreign-key cycle without deferrable keys is loaded by dropping and re-creating
    its keys. SIGKILL the restore while they are dropped: they are still there (the
    drop was in the load's transaction), and the documented rerun ends exact."""
    db.execute(
        "CREATE TABLE a (id int PRIMARY KEY, b_id int, pad text);"
        "CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a, pad text);"
        "ALTER TABLE a ADD CONSTRAINT a_b FOREIGN KEY (b_id) REFERENCES b;"
        "INSERT INTO a SELECT g, NULL, repeat('x', 200) FROM generate_series(1, 300000) g;"
        "INSERT INTO b SELECT g, g, repeat('y', 200) FROM generate_series(1, 300000) g;"
        "UPDATE a SET b_id = id;"
    )
    backup = Path(run_dump(db, tmp_path, jobs=2).path)
    with fresh_database(postgres, "asyncsnap_kill") as copy:
        copy_schema(db, copy)
        before = _constraints(copy)
        assert len(before) == 2
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncsnap", "restore", str(backup), copy.dsn, "-q"],
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            # Wait until the restore holds the cycle's tables exclusively: its keys are
            # dropped (in its transaction) and rows are going in.
            while time.monotonic() < deadline:
                held = copy.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname IN ('a', 'b') AND l.mode = 'AccessExclusiveLock' "
                    "AND l.granted AND l.pid <> pg_backend_pid()"
                )
                if held:
                    break
                time.sleep(0.02)
            assert held, "the restore never started loading the cycle"
            time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        # The server notices the dead client and rolls its transaction back.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and copy.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ):
            time.sleep(0.1)
        assert _constraints(copy) == before
        rerun = run_cli("restore", str(backup), copy.dsn, "--truncate", "-q")
        assert rerun.returncode == 0, rerun.stderr
        assert digests(copy.dsn) == digests(db.dsn)
        assert _constraints(copy) == before


def test_a_failed_restore_says_which_tables_were_committed(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    # good is over restore's SMALL_TABLE: its own transaction, not a run shared with bad
    # (test_restore.py has a failure inside a run)
    db.execute(
        "CREATE TABLE good (id int); INSERT INTO good SELECT generate_series(1, 40000);"
        "CREATE TABLE bad (id int); INSERT INTO bad VALUES (1)"
    )
    backup = Path(run_dump(db, tmp_path).path)
    with fresh_database(postgres, "asyncsnap_partial") as copy:
        copy.execute("CREATE TABLE good (id int); CREATE TABLE bad (id int CHECK (id > 5))")
        run = run_cli("restore", str(backup), copy.dsn, "-j", "1")
        assert run.returncode == 1
        hint = run.stderr.strip().splitlines()[-1]
        assert "committed: public.good" in hint and "not loaded: public.bad" in hint
        assert "--truncate" in hint


def test_version_1_backup_still_restores(db: Database, postgres: Postgres, tmp_path: Path) -> None:
    """A backup as asyncsnap 0.1 wrote it (no schema, no large objects, no skipped list,
    no row_security) restores into existing tables."""
    db.execute("CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a')")
    backup = Path(run_dump(db, tmp_path, with_schema=False).path)

    def as_version_1_wrote_it(body: dict[str, Any]) -> None:
        body["format_version"] = 1
        for key in ("schema", "large_objects", "skipped"):
            del body[key]
        for table in body["tables"]:
            del table["row_security"]

    reseal(backup, as_version_1_wrote_it)
    assert run_cli("verify", str(backup)).returncode == 0
    with fresh_database(postgres, "asyncsnap_v1") as copy:
        copy_schema(db, copy)
        result = run_restore(backup, copy)
        assert result.kind == "existing" and result.rows == 1
        assert copy.fetchval("SELECT nextval('t_id_seq')") == 2


# --- the SQL pg_restore renders, made fit for a plain connection (no server) ---------


def test_script_statements_keeps_only_what_a_plain_connection_runs() -> None:
    script = (
        b"--\n\\restrict KEY123\n\nSET statement_timeout = 0;\nSET transaction_timeout = 0;\n"
        b"SET client_encoding = 'UTF8';\nSET row_security = off;\n\n"
        b"--\n-- Name: t; Type: TABLE; Schema: public; Owner: me\n--\n\n"
        b"CREATE TABLE public.t (\n    v text DEFAULT '\\restrict KEY123'\n);\n"
        b"SET transaction_timeout = 0;\n\\unrestrict KEY123\n"
    )
    out = script_statements(script, frozenset({"statement_timeout", "row_security"}))
    assert "\\restrict KEY123\n" not in out and "\\unrestrict" not in out
    assert out.count("transaction_timeout") == 1  # only the prologue's is dropped
    assert "client_encoding" not in out and "SET statement_timeout = 0;" in out
    with pytest.raises(RestoreFailed, match="meta-command"):
        script_statements(b"\\restrict K\n\\! rm -rf /\n", frozenset())


def test_drop_statements_keep_a_name_with_a_newline_whole() -> None:
    body = "SET x = 1;\n\nDROP TABLE IF EXISTS public.t;\nDROP TYPE IF EXISTS public.m;\n--\n"
    assert drop_statements(body) == "DROP TABLE IF EXISTS public.t;\nDROP TYPE IF EXISTS public.m;"
    # A line that continues a quoted name is sent with the rest, so the server reads it
    # as the name it is; one that does not look like a drop stops the block.
    quoted = 'DROP TABLE IF EXISTS public."a\nDROP DATABASE x; --";\n--\n'
    assert drop_statements(quoted) == 'DROP TABLE IF EXISTS public."a\nDROP DATABASE x; --";'
    # inside a quoted name, any line is the name's (the server reads it so)
    named = 'DROP TABLE IF EXISTS public."a\n\n--\nSELECT 1; ""b";\nDROP TYPE public.m;\n--\n'
    assert drop_statements(named) == named.removesuffix("\n--\n")
    evil = 'DROP TABLE IF EXISTS public."a";\nSELECT 1; --\n--\n'
    with pytest.raises(RestoreFailed, match="one per line"):
        drop_statements(evil)


def test_drop_statements_leave_out_the_omitted_statements_only() -> None:
    """--clean leaves out the drops of inherited constraints (``omit``): a statement spelled
    as one is left out, the same text inside a quoted name stays in it."""
    inherited = "ALTER TABLE IF EXISTS ONLY public.p1 DROP CONSTRAINT IF EXISTS p1_pkey;"
    body = (
        f"{inherited}\nALTER TABLE IF EXISTS ONLY public.p DROP CONSTRAINT IF EXISTS p_pkey;\n--\n"
    )
    assert drop_statements(body, omit={inherited}) == (
        "ALTER TABLE IF EXISTS ONLY public.p DROP CONSTRAINT IF EXISTS p_pkey;"
    )
    quoted = f'DROP TABLE IF EXISTS public."a\n{inherited}\nb";\n--\n'
    assert drop_statements(quoted, omit={inherited}) == quoted.removesuffix("\n--\n")


def test_script_entries_cut_before_each_header() -> None:
    """A large schema commits in batches of entries (restore.schema); the cuts fall
    before pg_restore's headers, and a header spelled inside an entry (a function body)
    makes one piece more, which the caller checks against the table of contents."""
    prologue = "SET a = 1;\nSELECT pg_catalog.set_config('search_path', '', false);\n"
    one = "--\n-- Name: t; Type: TABLE; Schema: public; Owner: me\n--\n\nCREATE TABLE t ();\n\n"
    two = "--\n-- Name: s; Type: SEQUENCE; Schema: public; Owner: me\n--\n\nCREATE SEQUENCE s;\n"
    found = script_entries(prologue + "\n" + one + two)
    assert found == (prologue + "\n", [one, two])
    assert script_entries("SET a = 1;\n") == ("SET a = 1;\n", [])
    body = (
        "CREATE FUNCTION f() RETURNS int AS $$\n--\n-- Name: x; Type: TABLE; Schema: -; "
        "Owner: y\n--\nSELECT 1$$ LANGUAGE sql;\n"
    )
    fake = "--\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: me\n--\n\n" + body
    assert len(script_entries(prologue + "\n" + fake)[1]) == 2  # one entry, two pieces
    # "-- Name:" not between two "--" lines is no header
    assert script_entries("x\n--\n-- Name: a; Type: T\nSELECT 1;\n")[1] == []


def test_split_statements_keeps_a_quoted_name_with_a_newline_whole() -> None:
    drops = 'DROP TABLE IF EXISTS public."a\nDROP DATABASE x; --";\nDROP TYPE IF EXISTS public.m;'
    assert split_statements(drops) == [
        'DROP TABLE IF EXISTS public."a\nDROP DATABASE x; --";',
        "DROP TYPE IF EXISTS public.m;",
    ]
    assert split_statements('DROP TABLE IF EXISTS public."a"";\nb";') == [
        'DROP TABLE IF EXISTS public."a"";\nb";'
    ]


def test_target_not_empty_is_refused_by_the_plan(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    with pytest.raises(TargetNotEmpty):
        run_restore(backup, db, dry_run=True)


def test_dry_run_predicts_a_missing_insert_privilege(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """A role that may read but not write the target: --dry-run fails as the real run
    would, naming the table and the privilege, and nothing is loaded."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    db.execute(f"TRUNCATE t; GRANT SELECT ON t TO {role[0]}")
    dsn = db.postgres.dsn(db.name, user=role[0], password=role[1])
    for extra in (("--dry-run",), ()):
        run = run_cli("restore", str(backup), dsn, *extra)
        assert run.returncode == 1
        assert "may not write public.t (INSERT)" in run.stderr
    assert db.fetchval("SELECT count(*) FROM t") == 0


# --- the rule that picks the kind of restore, from the options alone (no server) -----


@pytest.mark.parametrize(
    ("with_schema", "options", "expected"),
    [
        (False, {}, "existing"),
        (True, {"data_only": True}, "existing"),
        (True, {}, None),  # decided by what the target holds
        (True, {"clean": True}, None),
        (False, {"clean": True}, "needs the schema"),
        (False, {"create": True}, "needs the schema"),
        (False, {"schema_only": True}, "needs the schema"),
        (True, {"data_only": True, "schema_only": True}, "exclude each other"),
        (True, {"data_only": True, "clean": True}, "--data-only loads into existing"),
    ],
)
def test_the_kind_of_restore_from_the_options(
    with_schema: bool, options: dict[str, bool], expected: str | None
) -> None:
    flags = {"data_only": False, "schema_only": False, "clean": False, "create": False}
    flags.update(options)
    backup = backup_of(schema=with_schema)
    if expected in (None, "existing"):
        decided = check_options(backup, **flags)
        assert (decided[0] if decided else None) == expected
    else:
        with pytest.raises(UsageError, match=expected):
            check_options(backup, **flags)
