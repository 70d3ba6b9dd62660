"""Fixtures: a real PostgreSQL (ours, or the one ASYNCSNAP_TEST_DSN names), a fresh
database per test that is dropped afterwards, and a runner for the real CLI process.

Tests marked ``versions`` (one per behaviour that depends on the server's major) also run
against every major named in ``$ASYNCSNAP_TEST_MAJORS`` (e.g. ``14 16 17 18``; servers from
the package registries, see ``throwaway.majors``); ``.ci/run`` sets it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.from_thread
import asyncpg
import pytest

from throwaway.postgres import Server, find_bindir, throwaway_server

# The tests' servers decode WAL (dump --slot and increments need wal_level = logical).
LOGICAL = {"wal_level": "logical"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


@dataclass
class Postgres:
    """Where the test server is and how to reach it."""

    admin_dsn: str
    server: Server | None  # None when ASYNCSNAP_TEST_DSN points at an existing server

    def dsn(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        parts = urlsplit(self.admin_dsn)
        netloc = parts.netloc
        if user is not None:
            host = netloc.rsplit("@", 1)[-1]
            netloc = f"{user}:{password}@{host}" if password is not None else f"{user}@{host}"
        return urlunsplit(parts._replace(netloc=netloc, path="/" + database))

    @property
    def host(self) -> str:
        return urlsplit(self.admin_dsn).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.admin_dsn).port or 5432


def extra_majors() -> list[str]:
    return os.environ.get("ASYNCSNAP_TEST_MAJORS", "").split()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``ASYNCSNAP_FAIL_ON_SKIP`` set (``.ci/run`` sets it, having installed every
    tool the tests use), a skipped test fails the run: a skip hides a test that did not
    run, and CI must not pass on tests it did not run."""
    if not os.environ.get("ASYNCSNAP_FAIL_ON_SKIP") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            print(f"\nskipped, which fails the run (ASYNCSNAP_FAIL_ON_SKIP): {report.nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A ``versions`` test runs on the default server and on each extra major."""
    if "pg_major" in metafunc.fixturenames and metafunc.definition.get_closest_marker("versions"):
        majors: list[str | None] = [None, *extra_majors()]
        metafunc.parametrize(
            "pg_major", majors, indirect=True, ids=[f"pg{m}" if m else "default" for m in majors]
        )


@pytest.fixture
def pg_major(request: pytest.FixtureRequest) -> str | None:
    """The major a ``versions`` test runs against; None: the default server."""
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def _servers() -> Iterator[Callable[[str | None], Postgres]]:
    """Servers by major, each started on first use and stopped at the end of the run."""
    started: dict[str | None, Postgres] = {}
    with contextlib.ExitStack() as stack:

        def get(major: str | None) -> Postgres:
            if major not in started:
                external = os.environ.get("ASYNCSNAP_TEST_DSN")
                if major is None and external:
                    started[major] = Postgres(admin_dsn=external, server=None)
                else:
                    bindir = find_bindir(major) if major is not None else None
                    server = stack.enter_context(throwaway_server(bindir, settings=LOGICAL))
                    started[major] = Postgres(admin_dsn=server.dsn(), server=server)
            return started[major]

        yield get


@pytest.fixture
def postgres(_servers: Callable[[str | None], Postgres], pg_major: str | None) -> Postgres:
    return _servers(pg_major)


async def execute(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@dataclass
class Database:
    """A database made for one test."""

    name: str
    dsn: str
    postgres: Postgres

    def execute(self, sql: str, *args: Any) -> None:
        anyio.run(execute, self.dsn, sql, *args, backend="asyncio")

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return anyio.run(fetch, self.dsn, sql, *args, backend="asyncio")

    def fetchval(self, sql: str, *args: Any) -> Any:
        rows = self.fetch(sql, *args)
        return rows[0][0] if rows else None

    @property
    def server_version(self) -> int:
        """``server_version_num``, e.g. 150018."""
        return int(self.fetchval("SELECT current_setting('server_version_num')"))


@contextlib.contextmanager
def fresh_database(postgres: Postgres, prefix: str) -> Iterator[Database]:
    """A new, empty database, dropped (even with sessions still open) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    anyio.run(execute, postgres.admin_dsn, f'CREATE DATABASE "{name}"', backend="asyncio")
    try:
        yield Database(name=name, dsn=postgres.dsn(name), postgres=postgres)
    finally:
        # A replication slot of the database (dump --slot's) would keep it from being dropped.
        anyio.run(
            execute,
            postgres.admin_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            f" WHERE database = '{name}'",
            backend="asyncio",
        )
        anyio.run(
            execute, postgres.admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)', backend="asyncio"
        )


@pytest.fixture
def db(postgres: Postgres) -> Iterator[Database]:
    with fresh_database(postgres, "asyncsnap_test") as database:
        yield database


@pytest.fixture
def role(postgres: Postgres, db: Database) -> Iterator[tuple[str, str]]:
    """A login role without privileges, for ``db``; dropped afterwards: (name, password)."""
    name, password = f"asyncsnap_role_{uuid.uuid4().hex[:8]}", "role-pw-" + uuid.uuid4().hex[:6]
    anyio.run(
        execute,
        postgres.admin_dsn,
        f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
        backend="asyncio",
    )
    try:
        yield name, password
    finally:
        db.execute(f"DROP OWNED BY {name} CASCADE")
        anyio.run(execute, postgres.admin_dsn, f"DROP ROLE {name}", backend="asyncio")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI run: no DATABASE_URL or PG* variables from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "ASYNCSNAP_TEST_DSN")
    }
    env.update(extra)
    return env


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> CliRun:
    """Run the real ``asyncsnap`` command in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsnap", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the real ``asyncsnap`` command in a child process, its output in text pipes
    (for a test that signals it, kills it or reads it as it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "asyncsnap", *args],
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def table_locked(dsn: str, table: str) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on ``table`` until the block ends, so a
    dump waiting for its lock (``--lock-timeout 0``) blocks for as long as we like."""
    holder: list[asyncpg.Connection] = []

    async def take() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        holder.append(conn)

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        portal.call(take)
        try:
            yield
        finally:
            portal.call(holder[0].close)
