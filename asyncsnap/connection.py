"""Where to connect: the DSN, libpq service files, and errors a user can act on.

The connection string comes from, in order: the argument (positional or ``-d``);
``DATABASE_URL`` in the environment; a ``DATABASE_URL`` line in ``./.env`` (what the script
asyncsnap replaces read); otherwise nothing, which lets libpq's ``PG*`` variables and
``~/.pgpass`` apply. It may be a URI (``postgresql://user@host/db``), a libpq key/value
string (``host=db dbname=shop``) or, as for psql and pg_dump, a bare database name
(``shop``: no ``=`` and no ``://``).

Options given one by one (``-h``, ``-p``, ``-U``, a password from ``-W``) win over the
string's parts, which win over the ``PG*`` variables: what was typed last, for this run,
is what applies. (pg_dump lets a connection string's own keys win over ``-h``/``-p``/``-U``;
asyncsnap does not, and the first log line says where it connects.)

A service (``service=NAME`` in the string, else ``$PGSERVICE``) is resolved here as libpq
does it: the entry ``[NAME]`` of ``$PGSERVICEFILE`` (default ``~/.pg_service.conf``), else
of ``pg_service.conf`` in ``$PGSYSCONFDIR`` (default: ``pg_config --sysconfdir``); every
key of the entry applies unless the string sets it, and ``PG*`` variables fill what is
still missing. A service that is not defined, or an entry with a key asyncsnap cannot honour,
is an error: it must never silently connect somewhere else. (asyncpg alone ignores
``$PGSERVICE`` and the system file, and lets a DSN's database name default first.)

How to connect (the session policy) is ``session.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
from dotenv import dotenv_values

from .errors import AuthenticationFailed, ConnectionFailed, DatabaseMissing, UsageError

# libpq connection keywords asyncsnap honours, from a key/value string or a service entry.
# Each goes to asyncpg as a URI query parameter, which asyncpg reads like libpq.
_PASSED_KEYS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
    }
)
# Keywords handled here rather than passed on.
_OWN_KEYS = frozenset({"hostaddr", "connect_timeout", "application_name"})
# Client-side TCP keepalive keywords: asyncsnap always enables keepalives (session.py), so
# these are accepted and their values superseded.
_KEEPALIVE_KEYS = frozenset(
    {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
)
SERVICE_FILE = ".pg_service.conf"
SYSTEM_SERVICE_FILE = "pg_service.conf"


def resolve_dsn(dsn: str | None, *, cwd: Path | None = None) -> str | None:
    """Return the connection string to use: the argument, ``$DATABASE_URL``, ``./.env``,
    or ``None``.

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
class ConnectionSpec:
    """What the user gave: a connection string (or None: DATABASE_URL, .env, PG* variables)
    and the options that override its parts."""

    dsn: str | None = None
    host: str | None = None
    port: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def overrides(self) -> dict[str, str]:
        given = {"host": self.host, "port": self.port, "user": self.user}
        given["password"] = self.password
        return {k: v for k, v in given.items() if v is not None}


def as_spec(dsn: str | ConnectionSpec | None) -> ConnectionSpec:
    return dsn if isinstance(dsn, ConnectionSpec) else ConnectionSpec(dsn=dsn)


def is_database_name(text: str) -> bool:
    """A bare database name rather than a connection string: libpq's rule (neither a URI
    nor containing ``=``).

    >>> is_database_name("shop"), is_database_name("dbname=shop")
    (True, False)
    """
    return "=" not in text and "://" not in text


@dataclass(frozen=True)
class ConnectParams:
    """A resolved connection: the URI asyncpg gets, and what is handled here."""

    uri: str | None  # None: libpq's PG* variables alone
    service: str | None = None  # the service whose entry was merged in
    connect_timeout: float | None = None
    application_name: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)  # passwords, for redaction

    def asyncpg_kwargs(self) -> dict[str, Any]:
        return {"dsn": self.uri}


def join_uri(scheme: str, netloc: str, path: str, query: list[tuple[str, str]]) -> str:
    """A postgresql:// URI from its parts. Not ``urlunsplit``, which drops the ``//`` of
    an empty host (``postgresql://?host=/tmp`` would become ``postgresql:?host=/tmp``,
    which libpq refuses).

    >>> join_uri("postgresql", "", "/shop", [("host", "/tmp")])
    'postgresql:///shop?host=%2Ftmp'
    """
    uri = f"{scheme}://{netloc}{path}"
    return uri + ("?" + _query(query) if query else "")


def split_password(uri: str) -> tuple[str, str | None]:
    """``uri`` without its password (in the user part or a ``password`` parameter, the
    parameter winning as in libpq), and that password: for a program or a process that
    must reach the server without the secret in its arguments or its task.

    >>> split_password("postgresql://app:s%40cret@db/shop?sslmode=require")
    ('postgresql://app@db/shop?sslmode=require', 's@cret')
    """
    parts = urlsplit(uri)
    password = unquote(parts.password) if parts.password else None
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = value
        else:
            query.append((key, value))
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0] if at else ""
    return join_uri(parts.scheme, (user + "@" if user else "") + host, parts.path, query), password


def _query(pairs: list[tuple[str, str]]) -> str:
    """Query parameters with ``%20`` for a space: libpq decodes only ``%XX``, not ``+``."""
    return urlencode(pairs, quote_via=quote)


def parse_conninfo(text: str) -> dict[str, str]:
    """A libpq key/value connection string (``host=db port=5432 password='a b\\'c'``).

    :raises UsageError: on a missing ``=`` or an unterminated quote.

    >>> parse_conninfo("host=db dbname='my shop'")
    {'host': 'db', 'dbname': 'my shop'}
    """
    result: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return result
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise UsageError(
                f'invalid connection string: missing "=" after {key!r}',
                hint="use key=value pairs (host=db dbname=shop) or postgresql://user@host/db",
            )
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise UsageError(
                        "invalid connection string: unterminated quoted string",
                        hint="close the quote; write \\' for a quote inside a value",
                    )
                if text[i] == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif text[i] == "'":
                    i += 1
                    break
                else:
                    value.append(text[i])
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                else:
                    value.append(text[i])
                    i += 1
        result[key] = "".join(value)


def _uri_keys(uri: str) -> tuple[set[str], list[tuple[str, str]]]:
    """The libpq keywords a URI sets, and its query parameters."""
    parts = urlsplit(uri)
    present: set[str] = set()
    if parts.username:
        present.add("user")
    if parts.password:
        present.add("password")
    host_part = parts.netloc.rpartition("@")[2]
    if host_part:
        present.add("host")
        if ":" in host_part.rpartition("]")[2]:
            present.add("port")
    if parts.path.strip("/"):
        present.add("dbname")
    query = parse_qsl(parts.query, keep_blank_values=True)
    for key, _ in query:
        present.add("dbname" if key == "database" else key)
    return present, query


def _check_keys(keys: Mapping[str, str], where: str) -> None:
    for key in keys:
        if key in _PASSED_KEYS or key in _OWN_KEYS or key in _KEEPALIVE_KEYS:
            continue
        if key == "service":
            raise UsageError(
                f"{where} names another service: nested service definitions are not "
                "supported (nor by libpq)",
                hint="put the connection keys in the entry itself",
            )
        raise UsageError(
            f"{where} sets {key!r}, which asyncsnap cannot honour"
            + (" (it could change the session's safety settings)" if key == "options" else ""),
            hint="remove it, or connect with an explicit postgresql:// URI",
        )


def resolve(
    dsn: str | ConnectionSpec | None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectParams:
    """Resolve where to connect (see the module docstring) into ``ConnectParams``.

    :raises UsageError: for an invalid connection string, an undefined service or a
        keyword that cannot be honoured.

    >>> resolve("postgresql://app@db/shop").uri
    'postgresql://app@db/shop'
    """
    env = os.environ if environ is None else environ
    spec = as_spec(dsn)
    raw = resolve_dsn(spec.dsn, cwd=cwd)
    own: dict[str, str] = {}
    if raw is not None and "://" not in raw:
        pairs = {"dbname": raw} if is_database_name(raw) else parse_conninfo(raw)
        service = pairs.pop("service", None)
        _check_keys(pairs, "the connection string")
        uri_query = [(k, v) for k, v in pairs.items()]
        base = "postgresql://"
    elif raw is not None:
        parts = urlsplit(raw)
        if parts.scheme not in ("postgresql", "postgres"):
            raise UsageError(
                f"invalid connection string: unknown scheme {parts.scheme!r}",
                hint="use postgresql://user@host:port/dbname or host=... dbname=...",
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        service = next((v for k, v in reversed(query) if k == "service"), None)
        uri_query = [(k, v) for k, v in query if k != "service"]
        base = parts._replace(query="").geturl()
    else:
        service, uri_query, base = None, [], "postgresql://"
    service = service or env.get("PGSERVICE") or None

    # Keys we handle ourselves come out of the query; asyncpg would send them to the
    # server as settings, which it would refuse.
    kept: list[tuple[str, str]] = []
    for key, value in uri_query:
        if key in _OWN_KEYS or key in _KEEPALIVE_KEYS:
            own[key] = value
        else:
            kept.append((key, value))
    uri_query = kept
    secrets = [v for k, v in uri_query if k == "password"]

    if service is not None:
        entry = read_service(service, env)
        _check_keys(entry, f"service {service!r}")
        present, _ = _uri_keys(base + ("?" + _query(uri_query) if uri_query else ""))
        present |= set(own)
        for key, value in entry.items():
            if key in present:
                continue  # the connection string wins over the service (libpq's order)
            if key in _OWN_KEYS or key in _KEEPALIVE_KEYS:
                own[key] = value
            else:
                uri_query.append((key, value))
        secrets += [v for k, v in entry.items() if k == "password"]

    if "hostaddr" in own:
        address = own.pop("hostaddr")
        if any(k == "host" for k, _ in uri_query) or urlsplit(base).hostname:
            raise UsageError(
                "both host and hostaddr are set; asyncsnap connects by host only",
                hint="drop hostaddr, or give the address as host",
            )
        uri_query.append(("host", address))
    timeout = None
    if "connect_timeout" in own:
        try:
            timeout = max(2.0, float(own["connect_timeout"]))  # libpq's minimum is 2 s
        except ValueError as exc:
            raise UsageError(
                f"invalid connect_timeout {own['connect_timeout']!r}",
                hint="connect_timeout takes seconds",
            ) from exc
    if raw is not None and "://" in raw:
        password = urlsplit(raw).password
        if password:
            secrets += [password, unquote(password)]
    overrides = spec.overrides()
    if overrides:
        base, uri_query = _apply_overrides(base, uri_query, overrides)
        secrets += [v for k, v in overrides.items() if k == "password"]
    if raw is None and not uri_query:
        uri = None  # PG* variables alone, as before
    else:
        uri = base + ("?" + _query(uri_query) if uri_query else "")
    return ConnectParams(
        uri=uri,
        service=service,
        connect_timeout=timeout,
        application_name=own.get("application_name"),
        secrets=tuple(s for s in secrets if s),
    )


def names_a_host(params: ConnectParams, env: Mapping[str, str] | None = None) -> bool:
    """Whether the connection names a host (in its URI, or ``PGHOST``/``PGHOSTADDR``)."""
    env = os.environ if env is None else env
    if env.get("PGHOST") or env.get("PGHOSTADDR"):
        return True
    if params.uri is None:
        return False
    parts = urlsplit(params.uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return bool(parts.netloc.rpartition("@")[2]) or any(k == "host" and v for k, v in query)


def pin_address(
    params: ConnectParams, address: object, env: Mapping[str, str] | None = None
) -> ConnectParams:
    """``params`` with the host and port a connection reached (asyncpg's address: a
    socket path, or ``(host, port)``), when nothing named a host; else unchanged.

    >>> pin_address(ConnectParams(uri=None), "/tmp/.s.PGSQL.5433", env={}).uri
    'postgresql://?host=%2Ftmp&port=5433'
    >>> pin_address(ConnectParams(uri="postgresql://db/x"), ("10.0.0.1", 5432), env={}).uri
    'postgresql://db/x'
    """
    if names_a_host(params, env):
        return params
    if isinstance(address, str) and ".s.PGSQL." in address:
        host, _, socket_name = address.rpartition("/")
        port = socket_name.rpartition(".")[2]
    elif isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), str(address[1])
    else:
        return params
    parts = urlsplit(params.uri or "postgresql://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    base = join_uri(parts.scheme, parts.netloc, parts.path, [])
    base, query = _apply_overrides(base, query, {"host": host, "port": port})
    return replace(params, uri=base + ("?" + _query(query) if query else ""))


def _split_hostspec(hostspec: str) -> tuple[list[str], list[str]]:
    """A URI's ``host1:port1,[::1]:port2`` as hosts and ports (``""`` where none)."""
    hosts, ports = [], []
    for item in hostspec.split(","):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, colon, port = item.rpartition(":")
            if not colon:
                host, port = item, ""
        hosts.append(unquote(host))
        ports.append(port)
    return hosts, ports


def _apply_overrides(
    base: str, query: list[tuple[str, str]], overrides: Mapping[str, str]
) -> tuple[str, list[tuple[str, str]]]:
    """The URI with ``overrides`` (host, port, user, password) in place of its own parts,
    wherever the URI had them (its authority or its query; the query wins, as in libpq).

    Network hosts are written back into the authority (an IPv6 address in brackets, each
    with its port), where asyncpg and libpq both read them; socket directories go into the
    query. ``-h`` alone keeps the string's port when it had one for all hosts.

    >>> _apply_overrides("postgresql://app@db:6000/shop", [], {"host": "other"})
    ('postgresql://app@other:6000/shop', [])
    >>> _apply_overrides("postgresql://[::1]:5433/db", [], {"user": "x"})
    ('postgresql://x@[::1]:5433/db', [])
    >>> _apply_overrides("postgresql://a:5433,b:5434/db", [], {"host": "c"})
    ('postgresql://c/db', [])
    """
    parts = urlsplit(base)
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    user: str | None = unquote(userinfo.partition(":")[0]) or None if at else None
    password = unquote(userinfo.partition(":")[2]) if at and ":" in userinfo else None
    hosts, ports = _split_hostspec(hostspec) if hostspec else ([], [])
    rest = list(query)

    def take(key: str) -> str | None:
        values = [v for k, v in rest if k == key]
        rest[:] = [(k, v) for k, v in rest if k != key]
        return values[-1] if values else None

    given = {key: take(key) for key in ("host", "port", "user", "password")}
    if given["host"] is not None:
        hosts = given["host"].split(",")
        ports = [""] * len(hosts)
    if given["port"] is not None:
        ports = given["port"].split(",")
    user = given["user"] if given["user"] is not None else user
    password = given["password"] if given["password"] is not None else password

    user = overrides.get("user", user)
    password = overrides.get("password", password)
    if "host" in overrides:
        hosts = overrides["host"].split(",")
        one_port = {p for p in ports if p}
        ports = list(one_port) if len(one_port) == 1 else []
    if "port" in overrides:
        ports = overrides["port"].split(",")
    if len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)

    credentials = ""
    if user is not None or password is not None:
        credentials = quote(user or "", safe="")
        credentials += f":{quote(password, safe='')}" if password is not None else ""
        credentials += "@"
    if hosts and not any(h.startswith("/") for h in hosts):
        listed = []
        for i, host in enumerate(hosts):
            shown = f"[{host}]" if ":" in host else quote(host, safe="")
            port = ports[i] if i < len(ports) else ""
            listed.append(shown + (f":{port}" if port else ""))
        return join_uri(parts.scheme, credentials + ",".join(listed), parts.path, []), rest
    # socket directories (or no host at all): hosts and ports as query parameters
    if hosts:
        rest.append(("host", ",".join(hosts)))
    if ports and all(ports):
        rest.append(("port", ",".join(ports)))
    return join_uri(parts.scheme, credentials, parts.path, []), rest


def _system_config_dir(env: Mapping[str, str]) -> Path | None:
    if env.get("PGSYSCONFDIR"):
        return Path(env["PGSYSCONFDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--sysconfdir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return Path(out)
    return None


def read_service(name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keys of service ``name``: from ``$PGSERVICEFILE`` (or ``~/.pg_service.conf``),
    else from the system ``pg_service.conf``, as libpq looks them up.

    :raises UsageError: when no file defines the service, or a file cannot be parsed.
    """
    env = os.environ if env is None else env
    files: list[Path] = []
    if env.get("PGSERVICEFILE"):
        files.append(Path(env["PGSERVICEFILE"]))
    else:
        with contextlib.suppress(RuntimeError, KeyError):  # no home directory
            files.append(Path.home() / SERVICE_FILE)
    sysconf = _system_config_dir(env)
    if sysconf is not None:
        files.append(sysconf / SYSTEM_SERVICE_FILE)
    for path in files:
        entry = _service_entry(path, name)
        if entry is not None:
            return entry
    raise UsageError(
        f'definition of service "{name}" not found',
        hint="looked in " + ", ".join(str(p) for p in files) + "; check PGSERVICEFILE",
    )


def _service_entry(path: Path, name: str) -> dict[str, str] | None:
    """The entry ``[name]`` of a service file, or None if the file or entry is absent."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read service file {path}: {exc}", hint="check its permissions"
        ) from exc
    entry: dict[str, str] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if entry is not None:
                return entry  # the next section ends ours
            if line.endswith("]") and line[1:-1] == name:
                entry = {}
            continue
        if entry is None:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UsageError(
                f"syntax error in service file {path}, line {number}",
                hint='each line of an entry is key=value; "#" starts a comment',
            )
        entry[key.strip()] = value.strip()
    return entry


@dataclass(frozen=True)
class Target:
    """A printable description of where a connection points; never holds the password."""

    host: str
    port: str
    database: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


def describe_target(params: ConnectParams | str | None) -> Target:
    """Describe the server a connection points at, without the password."""
    if params is None or isinstance(params, str):
        params = _params_of(params)
    env = os.environ
    host = env.get("PGHOST", "localhost")
    port = env.get("PGPORT", "5432")
    user = env.get("PGUSER") or _os_user()
    database = env.get("PGDATABASE", "")
    if params.uri:
        parts = urlsplit(params.uri)
        host = unquote(parts.hostname or "") or host
        try:
            port = str(parts.port or port)
        except ValueError:  # not a number, or out of range: name it as written
            port = parts.netloc.rpartition("@")[2].rpartition(":")[2] or port
        user = unquote(parts.username or "") or user
        database = unquote(parts.path.lstrip("/")) or database
        # postgresql://u@/db?host=/run/postgresql&port=5433: the query string wins.
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        host = query.get("host", host)
        port = query.get("port", port)
        user = query.get("user", user)
        database = query.get("dbname", query.get("database", database))
    return Target(host=host, port=port, database=database or user, user=user)


def _params_of(text: str | None) -> ConnectParams:
    """Unresolved text, for describing only (no service lookup, no errors)."""
    if text is None or "://" in text:
        return ConnectParams(uri=text)
    try:
        pairs = parse_conninfo(text)
    except UsageError:
        return ConnectParams(uri=None)
    if is_database_name(text):
        pairs = {"dbname": text}
    return ConnectParams(uri="postgresql://?" + _query(list(pairs.items())))


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "postgres"


def translate_connect_error(exc: BaseException, target: Target) -> Exception | None:
    """Map an exception from connecting to one of ours, or ``None`` to let it through."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return AuthenticationFailed(
            f"authentication failed for user {target.user!r} at {target.host}:{target.port}",
            hint="check the user and password (DSN, PGPASSWORD or ~/.pgpass)",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return AuthenticationFailed(
            f"the server refused user {target.user!r}: {first_line(exc)}",
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
    if isinstance(exc, OverflowError | ValueError) and not _valid_ports(target.port):
        return UsageError(
            f"invalid port {target.port!r}",
            hint="a port is a number from 1 to 65535: check -p, the DSN and PGPORT",
        )
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError | ValueError):
        return UsageError(
            f"invalid connection string: {first_line(exc)}",
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
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        return ConnectionFailed(
            f"could not connect to {target.host}:{target.port}: {reason}",
            hint="is the server running and accepting connections? check host and port",
        )
    return None


def _valid_ports(text: str) -> bool:
    """``5432`` or ``5432,5433``, each 1-65535.

    >>> _valid_ports("5432"), _valid_ports("99999"), _valid_ports("abc")
    (True, False, False)
    """
    return all(p.isdigit() and 1 <= int(p) <= 65535 for p in text.split(","))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
