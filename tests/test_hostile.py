"""A hostile database, target or backup: nothing of theirs runs as us, nothing is filtered.

The attacker owns a database (not a superuser). She sets the database's search_path to put
her schema first and shadows the built-in functions and operators our SQL uses. A
superuser's dump or restore must run none of it. Row-level security must never filter a
dump silently, and a re-sealed manifest must never choose a setting of the restoring
session.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import orjson
import pytest

from asyncsnap.errors import VerificationFailed
from asyncsnap.format import RENDER_SETTINGS, checked_render_settings

from .conftest import Database, Postgres, execute, fresh_database, run_cli
from .helpers import manifest_of, read_rows, reseal

# Each shadow runs the trap, then the real function. The trap writes a file into the
# server's data directory (COPY TO a file runs as the superuser who called it) and tries to
# make its owner a superuser; it fires only inside asyncsnap's sessions, so the test's own
# connections stay clean.
_TRAP = """
CREATE SCHEMA evil;
CREATE FUNCTION evil.trap(what text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  IF pg_catalog.current_setting('application_name') = 'asyncsnap'
     AND pg_catalog.current_setting('evil.' || what, true) IS DISTINCT FROM 'fired' THEN
    PERFORM pg_catalog.set_config('evil.' || what, 'fired', false);  -- once per session
    BEGIN
      EXECUTE pg_catalog.format('COPY (SELECT 1) TO %L',
                                pg_catalog.current_setting('data_directory') || '/pwned-'
                                || pg_catalog.current_database() || '-' || what);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
      EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', '{role}');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END IF;
END $f$;
"""
_SHADOWS = [
    ("format_type", "a oid, b integer", "text", "a, b"),
    ("has_table_privilege", "a oid, b text", "boolean", "a, b"),
    ("pg_has_role", "a oid, b text", "boolean", "a, b"),
    ("current_setting", "a text", "text", "a"),
    ("now", "", "timestamptz", ""),
    ("pg_export_snapshot", "", "text", ""),
    ("to_json", "a anyelement", "json", "a"),
    ("row_to_json", "a record", "json", "a"),
    ("array_lower", "a anyarray, b integer", "integer", "a, b"),
    ("pg_table_size", "a regclass", "bigint", "a"),
    ("to_regclass", "a text", "regclass", "a"),
    ("setval", "a regclass, b bigint, c boolean", "bigint", "a, b, c"),
    ("pg_get_constraintdef", "a oid", "text", "a"),
]


def _hostile_sql(role: str) -> str:
    parts = [_TRAP.replace("{role}", role)]
    for name, params, returns, args in _SHADOWS:
        parts.append(
            f"CREATE FUNCTION evil.{name}({params}) RETURNS {returns} LANGUAGE plpgsql AS $f$ "
            f"BEGIN PERFORM evil.trap('{name}'); RETURN pg_catalog.{name}({args}); END $f$;"
        )
    parts.append(
        "CREATE FUNCTION evil.oideq(a oid, b oid) RETURNS boolean LANGUAGE plpgsql AS $f$ "
        "BEGIN PERFORM evil.trap('oideq'); RETURN a OPERATOR(pg_catalog.=) b; END $f$;"
        "CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.oideq);"
    )
    return "\n".join(parts)


def _as(db: Database, user: str, password: str, sql: str) -> None:
    anyio.run(execute, db.postgres.dsn(db.name, user=user, password=password), sql)


@contextlib.contextmanager
def owned_by_attacker(db: Database, role: tuple[str, str]) -> Iterator[None]:
    """``db`` owned by the role, with her traps and her search_path for the database."""
    name, password = role
    db.execute(f'ALTER DATABASE "{db.name}" OWNER TO {name}')
    _as(db, name, password, _hostile_sql(name))
    _as(
        db, name, password, f'ALTER DATABASE "{db.name}" SET search_path = evil, pg_catalog, public'
    )
    try:
        yield
    finally:  # the role fixture drops her before the database goes
        db.execute(f'ALTER DATABASE "{db.name}" OWNER TO CURRENT_USER')


def traces(db: Database, role: str) -> tuple[list[str], bool]:
    """Files the traps wrote for ``db``, and whether the role became a superuser."""

    async def look() -> tuple[list[str], bool]:
        conn = await asyncpg.connect(db.dsn, server_settings={"search_path": ""})
        try:
            files = await conn.fetch(
                "SELECT f FROM pg_catalog.pg_ls_dir('.') AS f WHERE f LIKE $1 ORDER BY 1",
                f"pwned-{db.name}-%",
            )
            superuser = await conn.fetchval(
                "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1", role
            )
        finally:
            await conn.close()
        return [r["f"] for r in files], bool(superuser)

    return anyio.run(look)


@pytest.mark.versions
def test_hostile_search_path_during_dump_runs_nothing_of_the_owner(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    with owned_by_attacker(db, role):
        _as(
            db,
            name,
            password,
            """
            CREATE TABLE public.t (id serial PRIMARY KEY, f float8, a int[], j jsonb);
            INSERT INTO public.t (f, a, j) VALUES ('-0'::float8, '[0:1]={1,2}', '{"k": null}'),
                                                  (1.5, '{3}', 'null');
            """,
        )
        run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    assert traces(db, name) == ([], False)
    rows = read_rows(tmp_path / "b")[("public", "t")]
    assert rows == [
        {"id": 1, "f": "-0", "a": "[0:1]={1,2}", "j": '{"k": null}'},
        {"id": 2, "f": 1.5, "a": [3], "j": "null"},
    ]


def test_hostile_search_path_during_restore_runs_nothing_of_the_owner(
    postgres: Postgres, db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    name, password = role
    table = "CREATE TABLE public.t (id serial PRIMARY KEY, f float8, a int[], j jsonb);"
    with fresh_database(postgres, "asyncsnap_src") as source:
        source.execute(
            table + "INSERT INTO public.t (f, a, j) "
            "VALUES ('-0'::float8, '{1,2}', '{}'), (2, NULL, NULL);"
        )
        dumped = run_cli("dump", source.dsn, "-o", str(tmp_path), "--name", "b")
        assert dumped.returncode == 0, dumped.stderr
    with owned_by_attacker(db, role):
        _as(db, name, password, table)
        run = run_cli("restore", str(tmp_path / "b"), db.dsn)
    assert run.returncode == 0, run.stderr
    assert traces(db, name) == ([], False)
    assert db.fetchval("SELECT count(*) FROM public.t") == 2
    assert db.fetchval("SELECT last_value FROM public.t_id_seq") == 2


@pytest.fixture
def rls_table(db: Database, role: tuple[str, str]) -> str:
    """public.notes with a policy that shows the role only her own rows (1 of 3)."""
    name, _ = role
    db.execute(
        f"""
        CREATE TABLE notes (id int PRIMARY KEY, author text);
        INSERT INTO notes VALUES (1, '{name}'), (2, 'someone'), (3, 'else');
        ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
        CREATE POLICY mine ON notes USING (author = current_user);
        GRANT SELECT ON notes TO {name};
        """
    )
    return name


def test_row_level_security_that_would_filter_fails_the_dump_loudly(
    db: Database, role: tuple[str, str], rls_table: str, tmp_path: Path
) -> None:
    """pg_dump's rule: a policy must fail the dump, never filter it."""
    name, password = role
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    run = run_cli("dump", dsn, "-o", str(tmp_path))
    assert run.returncode == 1, run.stderr
    assert "error: row-level security would hide rows of table public.notes" in run.stderr
    assert "--enable-row-security" in run.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.versions
def test_enable_row_security_dumps_what_the_role_sees_and_says_so(
    db: Database, role: tuple[str, str], rls_table: str, tmp_path: Path
) -> None:
    name, password = role
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--name", "b", "--enable-row-security")
    assert run.returncode == 0, run.stderr
    (entry,) = manifest_of(tmp_path / "b")["tables"]
    assert (entry["name"], entry["rows"], entry["row_security"]) == ("notes", 1, True)
    inspected = orjson.loads(run_cli("inspect", str(tmp_path / "b"), "--json").stdout)
    assert inspected["tables"][0]["row_security"] is True
    assert "ROW SECURITY" in run_cli("inspect", str(tmp_path / "b")).stdout
    plan = run_cli("restore", str(tmp_path / "b"), db.dsn, "--append", "--dry-run")
    assert "public.notes: holds only the rows the dumping role could see" in plan.stdout
    # A superuser bypasses policies: everything, and not marked.
    full = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "full")
    assert full.returncode == 0, full.stderr
    (entry,) = manifest_of(tmp_path / "full")["tables"]
    assert (entry["rows"], entry["row_security"]) == (3, False)


def test_forced_row_level_security_on_the_owner_fails_the_dump(
    db: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    """The owner bypasses her own policies, unless FORCE ROW LEVEL SECURITY."""
    name, password = role
    db.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    _as(
        db,
        name,
        password,
        """
        CREATE TABLE mine (id int, visible boolean);
        INSERT INTO mine VALUES (1, true), (2, false);
        ALTER TABLE mine ENABLE ROW LEVEL SECURITY;
        CREATE POLICY only_visible ON mine USING (visible);
        """,
    )
    dsn = db.postgres.dsn(db.name, user=name, password=password)
    assert run_cli("dump", dsn, "-o", str(tmp_path), "--name", "a").returncode == 0
    assert manifest_of(tmp_path / "a")["tables"][0]["rows"] == 2
    _as(db, name, password, "ALTER TABLE mine FORCE ROW LEVEL SECURITY")
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 1, run.stderr
    assert "row-level security would hide rows of table public.mine" in run.stderr


def _reseal(backup: Path, **settings: str) -> None:
    reseal(backup, lambda body: body["settings"].update(settings))


def test_resealed_manifest_with_a_foreign_setting_is_refused(
    postgres: Postgres, db: Database, tmp_path: Path
) -> None:
    """session_replication_role = replica would switch off foreign-key checks: a row that
    violates one would load. The manifest checks out (re-sealed), the setting does not."""
    db.execute(
        """
        CREATE TABLE parent (id int PRIMARY KEY);
        CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent);
        INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
        """
    )
    assert (
        run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b", "-t", "child").returncode == 0
    )
    _reseal(tmp_path / "b", session_replication_role="replica")
    with fresh_database(postgres, "asyncsnap_target") as target:
        target.execute(
            "CREATE TABLE parent (id int PRIMARY KEY);"
            "CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent);"
        )
        run = run_cli("restore", str(tmp_path / "b"), target.dsn)
        assert run.returncode == 5, run.stderr
        assert "'session_replication_role'" in run.stderr and "never writes" in run.stderr
        assert target.fetchval("SELECT count(*) FROM child") == 0
    verified = run_cli("verify", str(tmp_path / "b"))
    assert verified.returncode == 5 and "session_replication_role" in verified.stderr


def test_settings_allow_list() -> None:
    source = "manifest.json"
    assert checked_render_settings({}, source=source) == dict(RENDER_SETTINGS)
    assert checked_render_settings({"TimeZone": "UTC"}, source=source) == dict(RENDER_SETTINGS)
    for bad in ({"TimeZone": "Europe/Paris"}, {"search_path": "evil"}, {"DateStyle": "SQL"}):
        with pytest.raises(VerificationFailed, match="never writes"):
            checked_render_settings(bad, source=source)


def test_every_session_has_the_policy(db: Database) -> None:
    """What the server reports for a session opened through the policy, whatever the
    database's own defaults say."""
    from asyncsnap.connection import resolve
    from asyncsnap.session import Session

    db.execute(
        f'ALTER DATABASE "{db.name}" SET search_path = evil, public;'
        f'ALTER DATABASE "{db.name}" SET row_security = on;'
        f'ALTER DATABASE "{db.name}" SET idle_in_transaction_session_timeout = 1000;'
        f'ALTER DATABASE "{db.name}" SET statement_timeout = 1000;'
    )

    names = (
        "search_path",
        "row_security",
        "idle_in_transaction_session_timeout",
        "statement_timeout",
        "TimeZone",
    )

    async def read(conn: asyncpg.Connection) -> dict[str, str]:
        return {
            name: await conn.fetchval(f"SELECT pg_catalog.current_setting('{name}')")
            for name in names
        }

    async def settings() -> list[dict[str, str]]:
        session = Session(resolve(db.dsn))
        first = await session.connect()
        pool = await session.create_pool(1)
        try:
            found = [await read(first)]
            for _ in range(2):  # a pooled connection, fresh and after the pool's RESET ALL
                async with pool.acquire() as conn:
                    found.append(await read(conn))
        finally:
            await pool.close()
            await first.close()
        return found

    expected = {
        "search_path": "",
        "row_security": "off",
        "idle_in_transaction_session_timeout": "0",
        "statement_timeout": "0",
        "TimeZone": "UTC",
    }
    assert anyio.run(settings) == [expected] * 3


def test_a_table_name_with_a_newline_cannot_forge_a_log_or_error_line(
    db: Database, tmp_path: Path
) -> None:
    """Names come from the database: in the text log and in error lines their control
    characters are escaped, so each event stays one line and each error is one error
    line and one hint line."""
    forged = "x\n2026-01-01T00:00:00 asyncsnap: dump complete: forged"
    db.execute(f'CREATE TABLE "{forged}" (id int); INSERT INTO "{forged}" VALUES (1)')
    run = run_cli("dump", db.dsn, "-o", str(tmp_path), "--name", "b")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ asyncsnap: ", ln) for ln in lines)
    assert not any("forged" in ln and ln.startswith("2026-01-01") for ln in lines)
    assert any("x\\n2026-01-01T00:00:00 asyncsnap: dump complete: forged" in ln for ln in lines)
    db.execute(f'DROP TABLE "{forged}"')
    failed = run_cli("restore", str(tmp_path / "b"), db.dsn, "--data-only")
    assert failed.returncode == 1
    assert [ln.split(":")[0] for ln in failed.stderr.splitlines()] == ["error", "hint"]
