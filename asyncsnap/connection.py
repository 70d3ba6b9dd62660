"""Where to connect, and connecting with errors a user can act on.

The DSN comes from, in order: the argument; ``DATABASE_URL`` in the environment; a
``DATABASE_URL`` line in ``./.env`` (what the script asyncsnap replaces read); otherwise
``None``, which lets asyncpg use libpq's ``PG*`` variables and ``~/.pgpass``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
from dotenv import dotenv_values

from .errors import (
    AuthenticationFailed,
    ConnectionFailed,
    DatabaseMissing,
    UsageError,
)

# Rendering settings fixed for every session, so output does not depend on the server's
# or the role's defaults. They are recorded in the manifest and reused by restore.
# extra_float_digits=3 gives shortest-exact floats on PostgreSQL 12+ and the exact
# 17-digit form on older servers; TimeZone=UTC makes timestamptz text independent of
# the server zone; IntervalStyle iso_8601 is what other languages parse.
RENDER_SETTINGS: Mapping[str, str] = {
    "client_encoding": "UTF8",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "iso_8601",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",  # how xml text is read back: fragments as well as documents
}

# Session settings that keep a long export alive whatever the role's defaults are.
# idle_in_transaction_session_timeout matters most for the coordinator: it sits idle
# inside its snapshot transaction for the whole dump.
SESSION_SETTINGS: Mapping[str, str] = {
    "application_name": "asyncsnap",
    "idle_in_transaction_session_timeout": "0",
    # Concurrent scans of a big table would otherwise start mid-table to share I/O,
    # making row order (and so file hashes) differ from run to run.
    "synchronize_seqscans": "off",
    "standard_conforming_strings": "on",
}


def resolve_dsn(dsn: str | None, *, cwd: Path | None = None) -> str | None:
    """Return the DSN to use: the argument, ``$DATABASE_URL``, ``./.env``, or ``None``.

    >>> resolve_dsn("postgresql://localhost/app")
    'postgresql://localhost/app'
    """
    if dsn:
        return dsn
    from_env = os.environ.get("DATABASE_URL")
    if from_env:
        return from_env
    env_file = (cwd or Path.cwd()) / ".env"
    if env_file.is_file():
        value = dotenv_values(env_file).get("DATABASE_URL")
        if value:
            return value
    return None


@dataclass(frozen=True)
class Target:
    """A printable description of where a DSN points; never holds the password."""

    host: str
    port: str
    database: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


def describe_target(dsn: str | None) -> Target:
    """Describe the server a DSN (or the PG* variables) points at, without the password."""
    env = os.environ
    host = env.get("PGHOST", "localhost")
    port = env.get("PGPORT", "5432")
    user = env.get("PGUSER") or _os_user()
    database = env.get("PGDATABASE", "")
    if dsn and "://" in dsn:
        parts = urlsplit(dsn)
        host = unquote(parts.hostname or "") or host
        with contextlib.suppress(ValueError):
            port = str(parts.port or port)
        user = unquote(parts.username or "") or user
        database = unquote(parts.path.lstrip("/")) or database
        # postgresql://u@/db?host=/run/postgresql&port=5433: the query string wins.
        query = parse_qs(parts.query)
        host = query.get("host", [host])[-1]
        port = query.get("port", [port])[-1]
        user = query.get("user", [user])[-1]
        database = query.get("dbname", [database])[-1]
    elif dsn:
        for item in dsn.split():
            key, _, value = item.partition("=")
            if key == "host":
                host = value
            elif key == "port":
                port = value
            elif key == "user":
                user = value
            elif key == "dbname":
                database = value
    return Target(host=host, port=port, database=database or user, user=user)


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "postgres"


def connect_kwargs(
    dsn: str | None,
    settings: Mapping[str, str] | None = None,
    *,
    statement_timeout: float = 0.0,
) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect``/``create_pool``: the rendering
    ``settings`` (``RENDER_SETTINGS`` unless given, e.g. a backup's for restore) and
    ``SESSION_SETTINGS``, with ``statement_timeout`` in seconds (0: none)."""
    return {
        "dsn": dsn,
        "server_settings": {
            **(RENDER_SETTINGS if settings is None else settings),
            **SESSION_SETTINGS,
            "statement_timeout": str(round(statement_timeout * 1000)),
        },
        # The dump streams through COPY; no statement cache is needed, and it keeps
        # the connections usable behind PgBouncer in session mode.
        "statement_cache_size": 0,
    }


@contextlib.contextmanager
def _translated(dsn: str | None) -> Iterator[None]:
    """Turn a failure to connect into our error with its exit code."""
    try:
        yield
    except BaseException as exc:
        translated = translate_connect_error(exc, describe_target(dsn))
        if translated is None:
            raise
        raise translated from exc


async def connect(
    dsn: str | None,
    *,
    settings: Mapping[str, str] | None = None,
    statement_timeout: float = 0.0,
    connect_timeout: float = 30.0,
) -> asyncpg.Connection:
    """Open one connection with the fixed settings, translating failures to our errors.

    >>> conn = await connect("postgresql://localhost/app")  # doctest: +SKIP
    """
    kwargs = connect_kwargs(dsn, settings, statement_timeout=statement_timeout)
    with _translated(dsn):
        return await asyncpg.connect(**kwargs, timeout=connect_timeout)


async def create_pool(
    dsn: str | None, *, size: int, statement_timeout: float = 0.0
) -> asyncpg.Pool:
    """A pool of exactly ``size`` connections, opened now, failures translated."""
    kwargs = connect_kwargs(dsn, statement_timeout=statement_timeout)
    with _translated(dsn):
        return await asyncpg.create_pool(**kwargs, min_size=size, max_size=size)


def translate_connect_error(exc: BaseException, target: Target) -> Exception | None:
    """Map an exception from connecting to one of ours, or ``None`` to let it through."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return AuthenticationFailed(
            f"authentication failed for user {target.user!r} at {target.host}:{target.port}",
            hint="check the user and password (DSN, PGPASSWORD or ~/.pgpass)",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return AuthenticationFailed(
            f"the server refused user {target.user!r}: {_first_line(exc)}",
            hint="check the user name and the server's pg_hba.conf",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseMissing(
            f"database {target.database!r} does not exist on {target.host}:{target.port}",
            hint="check the database name in the DSN (or PGDATABASE)",
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return ConnectionFailed(
            f"the server at {target.host}:{target.port} has no free connection slots",
            hint="lower -j or raise max_connections",
        )
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError | ValueError):
        return UsageError(
            f"invalid connection string: {_first_line(exc)}",
            hint="use postgresql://user@host:port/dbname",
        )
    if isinstance(exc, socket.gaierror):
        return ConnectionFailed(
            f"could not resolve host {target.host!r}",
            hint="check the host name in the DSN (or PGHOST)",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(
            f"timed out connecting to {target.host}:{target.port}",
            hint="is the server up and reachable from here?",
        )
    if isinstance(exc, OSError | asyncpg.exceptions.ConnectionFailureError):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        return ConnectionFailed(
            f"could not connect to {target.host}:{target.port}: {reason}",
            hint="is the server running and accepting connections? check host and port",
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
