"""The one session policy: how every connection of dump, restore and the benchmark is set up.

Modeled on pg_dump's ``setup_connection``. The database being dumped and the target of a
restore may be hostile: their owner can set ``search_path`` for the database or a role,
create functions and operators that shadow built-ins, enable row-level security so that
a role silently sees fewer rows, and set timeouts that would kill a long snapshot. So every
connection gets, before its first query:

- ``search_path = ''``: only ``pg_catalog`` (always searched first when not listed) is
  visible, so an unqualified ``format_type`` or ``=`` can never resolve to a function or
  operator of the database's own users. Our SQL also schema-qualifies every function,
  type and cast it names (``pg_catalog.format_type``, ``::pg_catalog.text``), as pg_dump
  does; operators in catalog queries (``=``, ``IN``) resolve in ``pg_catalog`` alone.
- ``row_security = off``: a table whose policies would hide rows from this role makes the
  read fail (pg_dump's behaviour) instead of returning a subset; ``--enable-row-security``
  turns it on deliberately and the manifest records it per table.
- fixed timeouts: no idle-in-transaction, idle-session or transaction timeout may end the
  coordinator's snapshot; ``statement_timeout`` and ``lock_timeout`` are ours.
- TCP keepalives on both ends, so a network that goes silent fails the run instead of
  hanging it; health checks carry their own timeout (``HEALTH_CHECK_TIMEOUT``).
- the rendering settings (``RENDER_SETTINGS``) that make output deterministic; they are
  recorded in the manifest, and a restore accepts a manifest's settings only when they are
  exactly these documented values (``checked_render_settings``).

Settings go in the startup packet (asyncpg's ``server_settings``), not in ``SET``: asyncpg's
pool sends ``RESET ALL`` when a connection is released, which restores startup values but
would undo a ``SET``. Startup values also outrank ``ALTER DATABASE``/``ALTER ROLE ... SET``.
Settings that only some majors know (``transaction_timeout``, 17+) would make an older
server refuse the connection, so the first connection of a run sets them with ``SET`` (it is
never pooled) and every later one gets them in its startup packet.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .connection import ConnectParams, Target, describe_target, pin_address, translate_connect_error
from .format import RENDER_SETTINGS

# Seconds: TCP keepalive probes start after this much silence, repeat every interval, and
# give up after count probes. A dead network is noticed within about a minute.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3
# Unacknowledged data this long (ms) means the peer is gone (Linux TCP_USER_TIMEOUT).
TCP_USER_TIMEOUT_MS = 60_000
# A health check (is the snapshot still there?) that gets no answer in this many seconds
# counts as a failure: a stalled network must not hang the dump.
HEALTH_CHECK_TIMEOUT = 20.0
CONNECT_TIMEOUT = 30.0

# What a lost or unusable connection looks like, wherever it happens: the server ending
# the session (class 08, 57P01 pg_terminate_backend, 57P02 crash, 57P03 shutdown,
# 57P05 idle-session timeout), the socket failing, a timeout, or asyncpg's protocol left
# mid-operation ("cannot switch to state ...; another operation is in progress" is an
# InternalClientError, not an InterfaceError).
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ConnectionError,
    TimeoutError,
)
# What releasing or closing a connection may raise when it is already broken.
RELEASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)

# Settings that only some majors know, with the first server_version_num that has them.
_VERSIONED_SETTINGS: tuple[tuple[int, str, str], ...] = (
    (140000, "idle_session_timeout", "0"),
    (170000, "transaction_timeout", "0"),
)


@dataclass(frozen=True)
class SessionPolicy:
    """The settings every connection of one run gets (see the module docstring).

    :param statement_timeout: seconds one statement may run; 0: no limit.
    :param row_security: ``False`` (default) sets ``row_security = off``: a read that a
        row-level security policy would filter fails instead. ``True`` is
        ``--enable-row-security``.
    :param render: the rendering settings; a restore passes the backup's (checked).
    """

    statement_timeout: float = 0.0
    row_security: bool = False
    render: Mapping[str, str] = field(default_factory=lambda: dict(RENDER_SETTINGS))

    def startup_settings(self, server_version: int | None) -> dict[str, str]:
        """The ``server_settings`` of a connection; the versioned ones only when the
        server's version is known (``None``: the first connection of a run)."""
        settings = {
            **self.render,
            "application_name": "asyncsnap",
            "search_path": "",
            "row_security": "on" if self.row_security else "off",
            "statement_timeout": str(round(self.statement_timeout * 1000)),
            "lock_timeout": "0",
            # The coordinator sits idle inside its snapshot transaction for the whole dump.
            "idle_in_transaction_session_timeout": "0",
            # Concurrent scans of a big table would otherwise start mid-table to share
            # I/O, making row order (and so file hashes) differ from run to run.
            "synchronize_seqscans": "off",
            "standard_conforming_strings": "on",
            # The server's side of the keepalives: it drops a vanished client's session
            # (and so the snapshot it holds back VACUUM with).
            "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
            "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
            "tcp_keepalives_count": str(KEEPALIVE_COUNT),
        }
        if server_version is not None:
            settings.update(versioned_settings(server_version))
        return settings


def versioned_settings(server_version: int) -> dict[str, str]:
    """The settings of ``_VERSIONED_SETTINGS`` that a server of this version knows."""
    return {name: value for since, name, value in _VERSIONED_SETTINGS if server_version >= since}


def _enable_keepalives(conn: asyncpg.Connection) -> None:
    """TCP keepalives on our end of a TCP connection (asyncpg has no option for them)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: no network to stall
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS),
    ):
        if hasattr(socket, name):  # Linux has all; others some
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


@contextlib.contextmanager
def _translated(target: Target) -> Iterator[None]:
    """Turn a failure to connect into our error with its exit code."""
    try:
        yield
    except BaseException as exc:
        translated = translate_connect_error(exc, target)
        if translated is None:
            raise
        raise translated from exc


class Session:
    """Where to connect and the policy for it; opens every connection of one run.

    The first connection learns the server's version; later ones get the versioned
    settings in their startup packet.

    >>> session = Session(params, SessionPolicy())  # doctest: +SKIP
    >>> conn = await session.connect()  # doctest: +SKIP
    """

    def __init__(self, params: ConnectParams, policy: SessionPolicy | None = None) -> None:
        self.params = params
        self.policy = policy or SessionPolicy()
        self.server_version: int | None = None

    @property
    def target(self) -> Target:
        return describe_target(self.params)

    def _kwargs(self) -> dict[str, Any]:
        settings = self.policy.startup_settings(self.server_version)
        if self.params.application_name:  # the user's, as libpq's fallback_application_name
            settings["application_name"] = self.params.application_name
        return {
            **self.params.asyncpg_kwargs(),
            "server_settings": settings,
            # We stream through COPY and run each statement once; no statement cache is
            # needed, and it keeps connections usable behind PgBouncer in session mode.
            "statement_cache_size": 0,
        }

    async def _after_connect(self, conn: asyncpg.Connection) -> None:
        _enable_keepalives(conn)
        if self.server_version is None:
            info = conn.get_server_version()
            version = info.major * 10000 + info.minor
            for name, value in versioned_settings(version).items():
                # Names and values are our constants, never input.
                await conn.execute(f"SET {name} = {value}")
            self.server_version = version

    async def connect(self) -> asyncpg.Connection:
        """One connection with the policy applied, failures translated to our errors."""
        timeout = self.params.connect_timeout or CONNECT_TIMEOUT
        with _translated(self.target):
            conn = await asyncpg.connect(**self._kwargs(), timeout=timeout)
        # Nothing named a host: asyncpg tried the usual socket directories, then localhost;
        # libpq (pg_dump, pg_restore) tries only its compiled-in socket directory. The pool
        # and those tools go where this connection went.
        self.params = pin_address(self.params, getattr(conn, "_addr", None))
        try:
            await self._after_connect(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def create_pool(self, size: int) -> asyncpg.Pool:
        """A pool of exactly ``size`` connections, opened now, failures translated.

        Call it after ``connect``: pooled connections must get every setting in their
        startup packet, because the pool's ``RESET ALL`` would undo a ``SET``.
        """
        assert self.server_version is not None, "connect() first: the version is not known"
        with _translated(self.target):
            return await asyncpg.create_pool(
                **self._kwargs(), min_size=size, max_size=size, init=self._init_pooled
            )

    @staticmethod
    async def _init_pooled(conn: asyncpg.Connection) -> None:
        _enable_keepalives(conn)
