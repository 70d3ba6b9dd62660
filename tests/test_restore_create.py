"""restore --create (issue 22, 8, 9 and 11): the database made as pg_restore -C makes it,
nothing dropped that the backup does not bring back unless asked, keys checked before
anything is created, and a failed --create leaves no database behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyrage import x25519

from asyncsnap.api import restore
from asyncsnap.errors import SchemaMismatch, TargetLocked, TargetNotEmpty
from asyncsnap.restore.result import RestoreResult
from throwaway.postgres import client_bindir, unprivileged_user

from .conftest import Database, Postgres, execute, fetch, run_cli
from .helpers import manifest_of, reseal
from .test_dump import run_dump
from .test_restore import digests


def admin(postgres: Postgres, sql: str, *args: Any) -> list[Any]:
    return anyio.run(fetch, postgres.admin_dsn, sql, *args, backend="asyncio")


def admin_execute(postgres: Postgres, sql: str) -> None:
    anyio.run(execute, postgres.admin_dsn, sql, backend="asyncio")


def drop(postgres: Postgres, name: str) -> None:
    """Drop a database if it exists, a template too, sessions or not."""
    if admin(postgres, "SELECT 1 FROM pg_database WHERE datname = $1", name):
        admin_execute(postgres, f'ALTER DATABASE "{name}" IS_TEMPLATE false')
        admin_execute(postgres, f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database_named(postgres: Postgres, prefix: str, options: str = "") -> Iterator[Database]:
    """A new database (CREATE DATABASE ... ``options``); it, and the ``_src`` copy a test
    may rename it to, are dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(postgres, f'CREATE DATABASE "{name}" {options}')
    try:
        yield Database(name=name, dsn=postgres.dsn(name), postgres=postgres)
    finally:
        drop(postgres, name)
        drop(postgres, name + "_src")


@contextlib.contextmanager
def roles(postgres: Postgres, *names: str) -> Iterator[list[str]]:
    """Roles made for one test (unique names), dropped afterwards."""
    made = [f"{n}_{uuid.uuid4().hex[:6]}" for n in names]
    for role in made:
        admin_execute(postgres, f"CREATE ROLE {q(role)}")
    try:
        yield made
    finally:
        for role in made:
            admin_execute(postgres, f"DROP ROLE IF EXISTS {q(role)}")


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def properties(postgres: Postgres, name: str) -> dict[str, Any]:
    """Everything pg_database and pg_db_role_setting hold for a database, but its name,
    oid and transaction horizons; and its comment."""
    [row] = admin(
        postgres,
        """
        SELECT to_jsonb(d) - 'oid' - 'datname' - 'datfrozenxid' - 'datminmxid'
                   - 'datcollversion' - 'datlastsysoid' AS pg_database,
               shobj_description(d.oid, 'pg_database') AS comment,
               (SELECT jsonb_agg(jsonb_build_array(s.setrole::regrole::text, s.setconfig)
                                 ORDER BY s.setrole::regrole::text)
                FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) AS settings
        FROM pg_database d WHERE d.datname = $1
        """,
        name,
    )
    return {
        "pg_database": json.loads(row["pg_database"]),
        "comment": row["comment"],
        "settings": json.loads(row["settings"] or "null"),
    }


def has_icu(postgres: Postgres) -> bool:
    version = int(admin(postgres, "SELECT current_setting('server_version_num')")[0][0])
    icu = admin(postgres, "SELECT count(*) FROM pg_collation WHERE collprovider = 'i'")[0][0]
    return version >= 150000 and icu > 0


@contextlib.contextmanager
def tablespace(postgres: Postgres) -> Iterator[str | None]:
    """A tablespace in a directory of its own, when the test started the server (it
    must own the directory); None otherwise."""
    if postgres.server is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="asyncsnap-ts-"))
    user = unprivileged_user()
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    name = f"asyncsnap_ts_{uuid.uuid4().hex[:6]}"
    admin_execute(postgres, f"CREATE TABLESPACE {name} LOCATION '{directory}'")
    try:
        yield name
    finally:
        admin_execute(postgres, f"DROP TABLESPACE IF EXISTS {name}")
        shutil.rmtree(directory, ignore_errors=True)


def pg_restore_create(postgres: Postgres, archive: Path, *flags: str) -> None:
    """``pg_restore -C`` of a pg_dump -Fc -C archive into the server (the comparison)."""
    version = int(admin(postgres, "SELECT current_setting('server_version_num')")[0][0])
    tool = client_bindir(version // 10000) / "pg_restore"
    subprocess.run(
        [str(tool), "-C", "--exit-on-error", *flags, "-d", postgres.admin_dsn, str(archive)],
        check=True,
        capture_output=True,
    )


def pg_dump_create(source: Database, archive: Path) -> None:
    tool = client_bindir(source.server_version // 10000) / "pg_dump"
    subprocess.run(
        [str(tool), "-Fc", "-C", "-f", str(archive), "-d", source.dsn],
        check=True,
        capture_output=True,
    )


@pytest.mark.parametrize(
    "flags", [[], ["--no-owner"], ["--no-privileges"]], ids=["all", "no-owner", "no-privileges"]
)
def test_create_gives_the_database_what_pg_restore_create_gives_it(
    postgres: Postgres, tmp_path: Path, flags: list[str]
) -> None:
    """A database with every database-level property pg_dump --create captures (owner,
    ACL with a REVOKE CONNECT FROM PUBLIC, a grant with grant option and one made by
    another grantor, ALTER DATABASE SET of a plain, a list and a custom parameter, ALTER
    ROLE IN DATABASE SET, a comment, a connection limit, the template flag, an ICU locale
    and a tablespace where the server has them): `restore --create` makes the same
    pg_database and pg_db_role_setting rows as `pg_dump -C` + `pg_restore -C`, with
    --no-owner and --no-privileges as theirs. They used to come back bare (and a database
    that refused CONNECT to PUBLIC came back connectable by every role)."""
    options = "TEMPLATE template0"
    if has_icu(postgres):
        options += " LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C'"
    with (
        roles(postgres, "owner", "reader", "creator", 'gran"tee') as (
            owner,
            reader,
            creator,
            quoted,
        ),
        tablespace(postgres) as space,
        database_named(
            postgres, "asyncsnap_props", options + (f" TABLESPACE {space}" if space else "")
        ) as source,
    ):
        name = f'"{source.name}"'
        admin_execute(
            postgres,
            f"""
            ALTER DATABASE {name} OWNER TO "{owner}";
            REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC;
            GRANT CONNECT ON DATABASE {name} TO "{reader}";
            GRANT CREATE ON DATABASE {name} TO "{creator}" WITH GRANT OPTION;
            SET ROLE "{creator}";
            GRANT CREATE ON DATABASE {name} TO {q(quoted)};
            RESET ROLE;
            ALTER DATABASE {name} SET work_mem = '7MB';
            ALTER DATABASE {name} SET search_path = "$user", public, "we ird";
            ALTER DATABASE {name} SET asyncsnap.custom = 'it''s, "quoted"';
            ALTER ROLE "{reader}" IN DATABASE {name} SET statement_timeout = '5s';
            COMMENT ON DATABASE {name} IS 'it''s ours';
            ALTER DATABASE {name} CONNECTION LIMIT 17;
            """,
        )
        source.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        admin_execute(postgres, f"ALTER DATABASE {name} IS_TEMPLATE true")
        backup = Path(run_dump(source, tmp_path / "ours").path)
        archive = tmp_path / "pg.dump"
        pg_dump_create(source, archive)
        before = properties(postgres, source.name)
        admin_execute(postgres, f"ALTER DATABASE {name} IS_TEMPLATE false")
        admin_execute(postgres, f'ALTER DATABASE {name} RENAME TO "{source.name}_src"')

        pg_restore_create(postgres, archive, *flags)
        theirs = properties(postgres, source.name)
        drop(postgres, source.name)
        run = run_cli("restore", str(backup), postgres.admin_dsn, "--create", *flags)
        assert run.returncode == 0, run.stderr
        ours = properties(postgres, source.name)
        assert ours == theirs
        if not flags:
            assert ours == before
            assert ours["pg_database"]["datacl"][0].startswith(f"{owner}=")
        assert source.fetchval("SELECT count(*) FROM t") == 2
        # Said before it was done: what the database gets.
        assert "create database" in run.stderr and "connection limit 17" in run.stderr


def test_create_sets_the_database_settings_after_the_restore(
    postgres: Postgres, tmp_path: Path
) -> None:
    """ALTER DATABASE SET default_transaction_read_only = on: pg_restore -C applies it
    before the data, and its own later statements then fail in a read-only transaction.
    restore --create sets the database's settings once everything else is done."""
    with database_named(postgres, "asyncsnap_ro") as source:
        source.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        admin_execute(
            postgres, f'ALTER DATABASE "{source.name}" SET default_transaction_read_only = on'
        )
        backup = Path(run_dump(source, tmp_path).path)
        drop(postgres, source.name)
        run = run_cli("restore", str(backup), postgres.admin_dsn, "--create", "-j", "2")
        assert run.returncode == 0, run.stderr
        assert source.fetchval("SHOW default_transaction_read_only") == "on"
        assert source.fetchval("SELECT count(*) FROM t") == 1


def test_create_clean_refuses_to_drop_what_the_backup_does_not_hold(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """`restore --create --clean` of a `-t` backup dropped the whole database, tables the
    backup does not hold included, and neither --dry-run nor the log said so. It is now
    refused naming them (exit 1, nothing changed); --drop-database allows it, and the
    dry run and the log say what is dropped."""
    db.execute(
        "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1);"
        "CREATE TABLE other (id int); INSERT INTO other VALUES (1);"
        "CREATE VIEW other_view AS SELECT id FROM other; CREATE SEQUENCE other_seq"
    )
    backup = Path(run_dump(db, tmp_path, tables=["kept"]).path)
    admin_dsn = postgres.admin_dsn
    for extra in ([], ["--dry-run"]):
        run = run_cli("restore", str(backup), admin_dsn, "--create", "--clean", *extra)
        assert run.returncode == 1, run.stderr
        error = run.stderr.strip().splitlines()[-2]
        assert "public.other, public.other_seq, public.other_view" in error, error
        assert "--drop-database" in run.stderr.strip().splitlines()[-1]
    assert db.fetchval("SELECT count(*) FROM other") == 1
    dry = run_cli("restore", str(backup), admin_dsn, "--create", "--clean", "--drop-database",
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "drop database" in dry.stdout and "public.other, public.other_seq" in dry.stdout
    assert db.fetchval("SELECT count(*) FROM other") == 1
    run = run_cli("restore", str(backup), admin_dsn, "--create", "--clean", "--drop-database")
    assert run.returncode == 0, run.stderr
    assert "public.other, public.other_seq, public.other_view" in run.stderr  # the log
    assert db.fetchval("SELECT to_regclass('public.other')") is None
    assert db.fetchval("SELECT count(*) FROM kept") == 1


def test_drop_database_needs_create_and_clean(db: Database, tmp_path: Path) -> None:
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    run = run_cli("restore", str(backup), db.dsn, "--clean", "--drop-database")
    assert run.returncode == 2 and "--drop-database is for --create --clean" in run.stderr


def test_create_with_a_wrong_key_creates_nothing(postgres: Postgres, tmp_path: Path) -> None:
    """An encrypted backup with the wrong --identity: --create failed (exit 5) after making
    the database, and the rerun with the right key failed with "already exists". The key
    is now checked first: nothing is made, and the rerun works."""
    with database_named(postgres, "asyncsnap_enc") as source:
        source.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        identity = x25519.Identity.generate()
        (tmp_path / "key.txt").write_text(f"{identity}\n")
        (tmp_path / "other.txt").write_text(f"{x25519.Identity.generate()}\n")
        run = run_cli("dump", source.dsn, "-o", str(tmp_path), "--name", "b", "--encrypt-to",
                      str(identity.to_public()))  # fmt: skip
        assert run.returncode == 0, run.stderr
        drop(postgres, source.name)
        wrong = run_cli("restore", str(tmp_path / "b"), postgres.admin_dsn, "--create",
                        "-i", str(tmp_path / "other.txt"))  # fmt: skip
        assert wrong.returncode == 5 and "does not decrypt" in wrong.stderr, wrong.stderr
        assert not admin(postgres, "SELECT 1 FROM pg_database WHERE datname = $1", source.name)
        right = run_cli("restore", str(tmp_path / "b"), postgres.admin_dsn, "--create",
                        "-i", str(tmp_path / "key.txt"))  # fmt: skip
        assert right.returncode == 0, right.stderr
        assert source.fetchval("SELECT count(*) FROM t") == 1


def test_a_failed_create_drops_the_database_it_made(postgres: Postgres, tmp_path: Path) -> None:
    """A table owned by a role the server lacks: pre-data fails after CREATE DATABASE. The
    database made is dropped again (the hint says so), so the same command, fixed with
    --no-owner, simply runs again."""
    with roles(postgres, "gone") as (gone,), database_named(postgres, "asyncsnap_fail") as source:
        source.execute(
            f'CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO "{gone}"'
        )
        backup = Path(run_dump(source, tmp_path).path)
        drop(postgres, source.name)
        admin_execute(postgres, f'DROP ROLE "{gone}"')
        run = run_cli("restore", str(backup), postgres.admin_dsn, "--create")
        assert run.returncode == 1, run.stderr
        hint = run.stderr.strip().splitlines()[-1]
        assert (
            hint.startswith("hint: ")
            and f"database {source.name}, made by this run, was dropped" in hint
        )
        assert not admin(postgres, "SELECT 1 FROM pg_database WHERE datname = $1", source.name)
        run = run_cli("restore", str(backup), postgres.admin_dsn, "--create", "--no-owner")
        assert run.returncode == 0, run.stderr
        assert source.fetchval("SELECT count(*) FROM t") == 1


def test_create_checks_the_roles_it_names_before_creating_anything(
    postgres: Postgres, tmp_path: Path
) -> None:
    """The database's owner and the roles of its ACL and role settings are checked first:
    missing ones are named (with the flag that leaves them out) and nothing is made."""
    with (
        roles(postgres, "owner", "reader") as (owner, reader),
        database_named(postgres, "asyncsnap_roles") as source,
    ):
        source.execute("CREATE TABLE t (id int)")
        admin_execute(
            postgres,
            f'ALTER DATABASE "{source.name}" OWNER TO "{owner}";'
            f'GRANT CONNECT ON DATABASE "{source.name}" TO "{reader}";'
            f'ALTER ROLE "{reader}" IN DATABASE "{source.name}" SET work_mem = \'5MB\'',
        )
        backup = Path(run_dump(source, tmp_path).path)
        drop(postgres, source.name)
        admin_execute(postgres, f'DROP ROLE "{reader}"')

        def attempt(*, no_owner: bool = False, no_privileges: bool = False) -> RestoreResult:
            return anyio.run(
                lambda: restore(
                    backup,
                    postgres.admin_dsn,
                    create=True,
                    no_owner=no_owner,
                    no_privileges=no_privileges,
                ),
                backend="asyncio",
            )

        with pytest.raises(SchemaMismatch, match=f"roles are missing here: {reader}$") as failed:
            attempt()
        assert failed.value.hint == "create them, or pass --no-privileges"
        with pytest.raises(SchemaMismatch, match=f"settings for roles missing here: {reader}$"):
            attempt(no_privileges=True)
        assert not admin(postgres, "SELECT 1 FROM pg_database WHERE datname = $1", source.name)
        result = attempt(no_privileges=True, no_owner=True)
        assert result.database == source.name
        assert properties(postgres, source.name)["settings"] is None  # left out, as said


def test_create_of_a_backup_without_database_properties_says_so(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """A backup made before 0.9.0 has no `database` entry: --create still works, with the
    server's defaults, and says what it could not restore."""
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    backup = Path(run_dump(db, tmp_path).path)
    reseal(backup, lambda body: body.pop("database"))
    expected = digests(db.dsn)
    run = run_cli("restore", str(backup), postgres.admin_dsn, "--create", "--clean")
    assert run.returncode == 0, run.stderr
    assert "does not record the database's own properties" in run.stderr
    assert digests(db.dsn) == expected


def test_hostile_settings_in_a_manifest_are_refused_or_stay_values(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """A re-sealed manifest's database settings and comment reach SQL only as quoted
    identifiers and literals: a value or a comment full of SQL is stored as written; a
    name that is not a parameter's, or a value the parameter refuses, is refused before
    anything is dropped or created."""
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    props = manifest_of(backup)["database"]

    def with_properties(**changes: Any) -> None:
        reseal(backup, lambda body: body.update(database={**props, **changes}))

    evil = "x'; DROP TABLE t; --"
    with_properties(settings=[f"asyncsnap.evil={evil}"], comment=evil)
    ok = run_cli("restore", str(backup), postgres.admin_dsn, "--create", "--clean")
    assert ok.returncode == 0, ok.stderr
    comment = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1"
    assert admin(postgres, comment, db.name)[0][0] == evil
    assert db.fetchval("SHOW asyncsnap.evil") == evil
    assert db.fetchval("SELECT to_regclass('public.t') IS NOT NULL")
    for settings, code, said in (
        (["work_mem TO 1; DROP TABLE t; --=1"], 5, "is not a setting"),
        (["work_mem=1MB; DROP TABLE t"], 1, 'invalid value for parameter "work_mem"'),
        (["no_such_parameter=1"], 1, "does not know: no_such_parameter"),
    ):
        with_properties(settings=settings)
        bad = run_cli("restore", str(backup), postgres.admin_dsn, "--create", "--clean")
        assert bad.returncode == code and said in bad.stderr, bad.stderr
        assert db.fetchval("SELECT to_regclass('public.t') IS NOT NULL")  # nothing dropped


def test_a_second_create_of_the_same_database_is_refused_at_once(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    """While one restore --create makes (or replaces) a database, another --create of the
    same name is refused with exit 6 before it looks at anything."""
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)

    async def hold_and_try() -> None:
        import asyncpg

        from asyncsnap.restore.target import CREATE_CLASS, name_key

        holder = await asyncpg.connect(postgres.admin_dsn)
        try:
            await holder.execute(f"SELECT pg_advisory_lock({CREATE_CLASS}, {name_key(db.name)})")
            with pytest.raises(TargetLocked, match=f"making database {db.name}"):
                await restore(backup, postgres.admin_dsn, create=True, clean=True)
        finally:
            await holder.close()

    anyio.run(hold_and_try, backend="asyncio")
    assert db.fetchval("SELECT count(*) FROM pg_class WHERE relname = 't'") == 1


def test_create_without_clean_still_refuses_an_existing_database(
    db: Database, postgres: Postgres, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE t (id int)")
    backup = Path(run_dump(db, tmp_path).path)
    with pytest.raises(TargetNotEmpty, match="already exists"):
        anyio.run(lambda: restore(backup, postgres.admin_dsn, create=True), backend="asyncio")
