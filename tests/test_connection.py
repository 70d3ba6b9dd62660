"""Where the connection comes from (the DSN, pg_dump's -d/-h/-p/-U/-W, DATABASE_URL, PG*
variables, in that order), and that passwords never reach the screen."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import pytest

from asyncsnap.cli.app import redact
from asyncsnap.connection import (
    ConnectionSpec,
    ConnectParams,
    _split_hostspec,
    describe_target,
    pin_address,
    resolve,
    resolve_dsn,
)
from throwaway.postgres import PASSWORD, free_port

from .conftest import Database, Postgres, clean_env, execute, run_cli
from .helpers import manifest_of, run_on_a_terminal


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert resolve_dsn(None, cwd=tmp_path) is None  # libpq's PG* variables apply
    (tmp_path / ".env").write_text("OTHER=1\nDATABASE_URL=postgresql://envfile/db\n")
    assert resolve_dsn(None, cwd=tmp_path) == "postgresql://envfile/db"
    monkeypatch.setenv("DATABASE_URL", "postgresql://environ/db")
    assert resolve_dsn(None, cwd=tmp_path) == "postgresql://environ/db"
    assert resolve_dsn("postgresql://arg/db", cwd=tmp_path) == "postgresql://arg/db"


def test_describe_target_never_holds_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    target = describe_target("postgresql://alice:pa%40ss@db.example:6432/shop")
    assert str(target) == "alice@db.example:6432/shop"
    assert "pa" not in str(describe_target("host=h port=1 user=u password=pw dbname=d"))


def test_describe_target_reads_host_and_port_from_the_query_string(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket DSN (postgresql://u@/db?host=/run/postgresql&port=5433) names the socket
    and port in the logs, not localhost:5432."""
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    target = describe_target("postgresql://u:secret@/shop?host=/tmp/pg&port=55432")
    assert str(target) == "u@/tmp/pg:55432/shop"


def test_redact_removes_url_keyword_and_env_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "envsecret")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    text = "a pa@ss b pa%40ss c envsecret d kwsecret"
    out = redact(text, "postgresql://u:pa%40ss@h/d")
    assert "pa@ss" not in out and "pa%40ss" not in out and "envsecret" not in out
    assert "kwsecret" not in redact(text, "host=h password=kwsecret")


def test_redact_replaces_a_short_password_only_where_it_stands_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-letter password turned "permission" into "pe***mission" in every message."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    dsn = "postgresql://reader:r@db/shop"
    text = "error: permission denied for postgresql://reader:r@db/shop (password r)"
    assert redact(text, dsn) == (
        "error: permission denied for postgresql://reader:***@db/shop (password ***)"
    )


# --- pg_dump's connection options (issue 12) -----------------------------------------


def _query_of(uri: str | None) -> dict[str, str]:
    """Every connection keyword a URI sets, from its authority and its query."""
    assert uri is not None
    parts = urlsplit(uri)
    found: dict[str, str] = {}
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    if at and userinfo.partition(":")[0]:
        found["user"] = unquote(userinfo.partition(":")[0])
    if at and ":" in userinfo:
        found["password"] = unquote(userinfo.partition(":")[2])
    if hostspec:
        hosts, ports = _split_hostspec(hostspec)
        found["host"] = ",".join(hosts)
        if any(ports):
            found["port"] = ",".join(ports)
    found.update(parse_qsl(parts.query))
    if parts.path.strip("/"):
        found["dbname"] = unquote(parts.path.strip("/"))
    return found


def test_a_bare_database_name_is_a_dbname_as_for_psql(tmp_path: Path) -> None:
    assert _query_of(resolve("shop", cwd=tmp_path, environ={}).uri) == {"dbname": "shop"}
    # a name with a space or a quote stays one name (libpq: no '=' means a name)
    assert _query_of(resolve("my shop's", cwd=tmp_path, environ={}).uri) == {"dbname": "my shop's"}


def test_options_win_over_the_strings_parts(tmp_path: Path) -> None:
    """-h/-p/-U (and -W's password) replace the DSN's own host, port, user and password;
    what they do not name stays as the string gives it (the port of a URI whose host -h
    replaced, the database)."""
    spec = ConnectionSpec(dsn="postgresql://app:pw@db:6000/shop", host="other", user="ops")
    assert _query_of(resolve(spec, cwd=tmp_path, environ={}).uri) == {
        "host": "other",
        "port": "6000",
        "user": "ops",
        "password": "pw",
        "dbname": "shop",
    }
    spec = ConnectionSpec(dsn="host=db port=6000 dbname=shop", port="7000", password="new pw")
    assert _query_of(resolve(spec, cwd=tmp_path, environ={}).uri) == {
        "host": "db",
        "port": "7000",
        "password": "new pw",
        "dbname": "shop",
    }
    assert "new pw" in resolve(spec, cwd=tmp_path, environ={}).secrets  # redacted like others


def test_options_apply_to_database_url_and_to_pg_variables_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No string given: the options override DATABASE_URL's parts; with no DATABASE_URL
    either, they are the whole string and PG* variables (libpq's) fill the rest."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/shop")
    spec = ConnectionSpec(port="6543")
    assert _query_of(resolve(spec, cwd=tmp_path, environ={}).uri) == {
        "user": "app",
        "host": "db",
        "port": "6543",
        "dbname": "shop",
    }
    monkeypatch.delenv("DATABASE_URL")
    assert _query_of(resolve(spec, cwd=tmp_path, environ={}).uri) == {"port": "6543"}
    assert resolve(ConnectionSpec(), cwd=tmp_path, environ={}).uri is None


def test_a_service_entry_yields_to_the_options(tmp_path: Path) -> None:
    services = tmp_path / "pg_service.conf"
    services.write_text("[shop]\nhost=db\nport=6000\ndbname=shop\nuser=app\n")
    env = {"PGSERVICEFILE": str(services)}
    params = resolve(ConnectionSpec(dsn="service=shop", host="replica"), cwd=tmp_path, environ=env)
    assert _query_of(params.uri) == {
        "host": "replica",
        "port": "6000",
        "dbname": "shop",
        "user": "app",
    }


def _dumped_database(backup: Path) -> str:
    return str(manifest_of(backup)["server"]["database"])


@pytest.mark.parametrize("form", ["options", "bare-name", "key-value", "uri-with-d"])
def test_each_connection_form_dumps_the_named_database(
    db: Database, tmp_path: Path, form: str
) -> None:
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    host, port = db.postgres.host, str(db.postgres.port)
    env = clean_env(PGPASSWORD=PASSWORD, PGDATABASE="postgres")
    args = {
        "options": ["-d", db.name, "-h", host, "-p", port, "-U", "postgres"],
        "bare-name": [db.name],
        "key-value": [f"host={host} port={port} user=postgres dbname={db.name}"],
        "uri-with-d": ["-d", db.dsn],
    }[form]
    if form == "bare-name":
        env.update(PGHOST=host, PGPORT=port, PGUSER="postgres")
    run = run_cli("dump", *args, "-o", str(tmp_path), "--name", "b", env=env)
    assert run.returncode == 0, run.stderr
    assert _dumped_database(tmp_path / "b") == db.name
    assert PASSWORD not in run.stdout + run.stderr


def test_connection_precedence_against_a_server(db: Database, tmp_path: Path) -> None:
    """Each layer points somewhere wrong except the one that must win: PG* variables (a
    closed port, another database) lose to DATABASE_URL, which loses to the DSN argument,
    whose port loses to -p."""
    db.execute("CREATE TABLE t (id int)")
    host, port = db.postgres.host, db.postgres.port
    closed = free_port()
    env = clean_env(
        PGHOST=host,
        PGPORT=str(closed),
        PGDATABASE="postgres",
        PGUSER="postgres",
        PGPASSWORD=PASSWORD,
        DATABASE_URL=f"postgresql://postgres@{host}:{closed}/postgres",
    )
    dsn = f"postgresql://postgres@{host}:{closed}/{db.name}"
    run = run_cli("dump", dsn, "-p", str(port), "-o", str(tmp_path), "--name", "a", env=env)
    assert run.returncode == 0, run.stderr
    assert _dumped_database(tmp_path / "a") == db.name
    # Without -p the DSN's closed port applies: the string beats PGPORT and DATABASE_URL.
    run = run_cli("dump", dsn, "-o", str(tmp_path), "--name", "b", env=env)
    assert run.returncode == 3 and f":{closed}" in run.stderr
    # No string: DATABASE_URL's database (not PGDATABASE's), on -p's port.
    env["DATABASE_URL"] = dsn
    run = run_cli("dump", "-p", str(port), "-o", str(tmp_path), "--name", "c", env=env)
    assert run.returncode == 0, run.stderr
    assert _dumped_database(tmp_path / "c") == db.name
    # restore takes the same options
    db.execute("DROP TABLE t")
    run = run_cli(
        "restore", str(tmp_path / "a"), "-d", db.name, "-h", host, "-p", str(port),
        "-U", "postgres", "-q", env=clean_env(PGPASSWORD=PASSWORD),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert db.fetchval("SELECT count(*) FROM t") == 0


def test_connection_option_mistakes_are_usage_errors(db: Database, tmp_path: Path) -> None:
    for args, message in (
        (["shop", "-d", "other"], "the database is given twice"),
        (["-p", "54x"], "invalid port '54x'"),
        (["-w", "-W"], "-w and -W exclude each other"),
        (["-W"], "-W needs a terminal to ask on"),
    ):
        run = run_cli("dump", *args, "-o", str(tmp_path))
        assert run.returncode == 2, (args, run.stderr)
        error, hint = run.stderr.splitlines()
        assert error.startswith(f"error: {message}") and hint.startswith("hint: "), run.stderr
    assert list(tmp_path.iterdir()) == []


def test_password_prompt_on_a_terminal(db: Database, tmp_path: Path) -> None:
    """-W asks on the terminal (no echo) and connects with the answer; a wrong answer is
    an authentication failure (exit 3). The password never appears in the output."""
    db.execute("CREATE TABLE t (id int)")
    args = ["dump", "-W", "-d", db.name, "-h", db.postgres.host, "-p", str(db.postgres.port),
            "-U", "postgres", "-o", str(tmp_path)]  # fmt: skip
    for answer, code in ((PASSWORD, 0), ("wrong", 3)):
        status, output = run_on_a_terminal(
            [sys.executable, "-m", "asyncsnap", *args, "--name", f"b{code}"], answer
        )
        assert status == code, output
        assert "Password" in output and answer not in output
    assert (tmp_path / "b0" / "manifest.json").is_file() and not (tmp_path / "b3").exists()


def test_pin_address_names_where_a_hostless_connection_went() -> None:
    socket = pin_address(ConnectParams(uri="postgresql:///shop"), "/tmp/pg/.s.PGSQL.5433", env={})
    assert _query_of(socket.uri) == {"host": "/tmp/pg", "port": "5433", "dbname": "shop"}
    tcp = pin_address(ConnectParams(uri=None), ("127.0.0.1", 6000), env={})
    assert _query_of(tcp.uri) == {"host": "127.0.0.1", "port": "6000"}
    named = ConnectParams(uri="postgresql://?host=db")
    assert pin_address(named, ("10.0.0.1", 5432), env={}) is named
    assert (
        pin_address(ConnectParams(uri=None), ("10.0.0.1", 5432), env={"PGHOST": "db"}).uri is None
    )


def test_without_a_host_pg_dump_and_pg_restore_reach_the_same_server(
    db: Database, tmp_path: Path
) -> None:
    """No host anywhere: asyncpg found the server on localhost after trying the usual
    socket directories, but the pg_dump it ran tried only libpq's default socket and failed
    ("connection to server on socket /var/run/postgresql/.s.PGSQL.N failed"), exit 1."""
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    env = clean_env(PGPASSWORD=PASSWORD)
    where = ["-p", str(db.postgres.port), "-U", "postgres", "-d", db.name]
    run = run_cli("dump", *where, "-o", str(tmp_path), "--name", "b", env=env)
    assert run.returncode == 0, run.stderr
    assert manifest_of(tmp_path / "b")["schema"] is not None
    run = run_cli("restore", str(tmp_path / "b"), *where, "--clean", "-q", env=env)  # pg_restore
    assert run.returncode == 0, run.stderr
    assert db.fetchval("SELECT count(*) FROM t") == 1


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        (["-p", "99999"], {}, "99999"),
        ([], {"PGPORT": "99999"}, "99999"),
        ([], {"PGPORT": "abc"}, "abc"),
        (["postgresql://u@127.0.0.1:70000/x"], {}, "70000"),
    ],
)
def test_a_bad_port_is_a_usage_error_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], shown: str
) -> None:
    """A port over 65535 was an internal error (OverflowError, exit 70); PGPORT=abc said
    "invalid connection string" when no string was given."""
    run = run_cli("dump", *args, "-o", str(tmp_path), env=clean_env(PGHOST="127.0.0.1", **env))
    assert run.returncode == 2, run.stderr
    error, hint = run.stderr.splitlines()
    assert error == f"error: invalid port '{shown}'", run.stderr
    assert hint == "hint: a port is a number from 1 to 65535: check -p, the DSN and PGPORT"


def test_a_database_name_with_a_space_reaches_pg_dump(postgres: Postgres, tmp_path: Path) -> None:
    """Query parameters were encoded with '+' for a space: asyncpg decodes that, libpq
    (pg_dump) does not, so the dump connected and its schema step asked for "my+shop"."""
    name = "asyncsnap test space"
    anyio.run(execute, postgres.admin_dsn, f'CREATE DATABASE "{name}"', backend="asyncio")
    try:
        dsn = postgres.dsn(name.replace(" ", "%20"))
        anyio.run(execute, dsn, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        conninfo = f"host={postgres.host} port={postgres.port} user=postgres dbname='{name}'"
        run = run_cli(
            "dump", conninfo, "-o", str(tmp_path), "--name", "b",
            env=clean_env(PGPASSWORD=PASSWORD),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert manifest_of(tmp_path / "b")["server"]["database"] == name
        assert manifest_of(tmp_path / "b")["schema"] is not None
    finally:
        anyio.run(
            execute, postgres.admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)', backend="asyncio"
        )


def test_passwords_are_found_in_every_form_of_the_dbname_option() -> None:
    """`ps` showed the password of `--dbname=postgresql://u:pw@h/d`, `-dpostgresql://...`,
    `--dbname=password=pw host=h` and a URI's `?password=`."""
    from asyncsnap.cli.app import argv_secrets

    argv = [
        "asyncsnap",
        "--dbname=postgresql://u:pw1@h/d",
        "-dpostgresql://u:pw2@h/d",
        "--dbname=password=pw3 host=h",
        "postgresql://u@h/d?password=pw4",
    ]
    assert {"pw1", "pw2", "pw3", "pw4"} <= set(argv_secrets(argv))
    assert argv_secrets(["asyncsnap", "-d", "shop", "--name", "password"]) == []


def test_ctrl_c_at_the_password_prompt_is_reported_like_any_failure(
    db: Database, tmp_path: Path
) -> None:
    """It printed a plain line even with --log-format json, and wrote no summary."""
    summary = tmp_path / "s.json"
    argv = [sys.executable, "-m", "asyncsnap", "dump", "-W", "-d", db.name, "-h",
            db.postgres.host, "-o", str(tmp_path), "--log-format", "json",
            "--summary-json", str(summary)]  # fmt: skip
    status, output = run_on_a_terminal(argv, "\x03")
    assert status == 130, output
    lines = [line for line in output.replace("\r", "").splitlines() if line.startswith("{")]
    assert json.loads(lines[-1])["exit_code"] == 130
    assert json.loads(summary.read_text())["exit_code"] == 130


@pytest.mark.parametrize(
    ("dsn", "overrides", "expected"),
    [
        # IPv6 stays in brackets in the authority (asyncpg split "?host=::1" at a colon)
        ("postgresql://[::1]:5433/db", {"user": "x"}, "postgresql://x@[::1]:5433/db"),
        ("postgresql:///db", {"host": "::1"}, "postgresql://[::1]/db"),
        (
            "postgresql:///db",
            {"host": "2001:db8::5", "port": "6000"},
            "postgresql://[2001:db8::5]:6000/db",
        ),
        # two hosts with their own ports, then -h: the ports no longer match hosts
        ("postgresql://a:5433,b:5434/db", {"host": "c"}, "postgresql://c/db"),
        # a host without a port beside one with: the default stays the default
        ("postgresql://a,b:6000/db", {"user": "x"}, "postgresql://x@a,b:6000/db"),
        # a socket directory goes in the query
        (
            "postgresql://app@db/shop",
            {"host": "/run/postgresql"},
            "postgresql://app@/shop?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_overrides_keep_ipv6_and_multi_host_uris_valid(
    tmp_path: Path, dsn: str, overrides: dict[str, str], expected: str
) -> None:
    """Found by review: any -h/-p/-U turned an IPv6 host into "could not resolve host"
    or an int() error, and multi-host URIs into "could not match 2 port numbers"."""
    assert resolve(ConnectionSpec(dsn=dsn, **overrides), cwd=tmp_path, environ={}).uri == expected
