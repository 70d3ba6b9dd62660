"""Holding the target of a restore, so that two restores cannot interleave.

Two restores into one database at once used to both succeed with every row loaded twice,
or fail half-way in post-data: each checked that the tables were empty (or dropped them,
with --clean) before the other had loaded anything. A restore now holds the target:

- **one restore per database.** The connection that coordinates a restore takes a
  session-level advisory lock of the target database before it looks at anything, and
  keeps it until the restore (post-data, sequences, ``--compare`` included) is over, or
  its session ends. A second restore into the same database fails at once with
  ``TargetLocked`` (exit 6), naming the session that holds it: waiting would only load
  the same rows again after the first one, into tables that are then not empty. With
  ``--create`` the database does not exist yet: the name to create is held first, on
  the connection to the maintenance database, until the new database is held.
- **writers kept out while a table is checked and loaded.** Into existing tables (and
  into the tables a whole restore has just created) a load's transaction locks its table
  ``IN EXCLUSIVE MODE`` (reads go on, writes wait) before it checks that the table is
  empty, so no other session can insert between the check and the rows
  (``restore._hold_empty``). A table split at dump time loads over several connections;
  its first file is loaded in the transaction that checked, and the other files once
  that one has committed (their COPY waits for the lock): after that, the table holds
  the backup's rows, and a writer that comes then writes into a restored table.

Advisory locks belong to one database (PostgreSQL's lock tag includes it), so the key
needs no database name; they are only seen by sessions that ask for the same key, and
asyncsnap is the only one that does (``LOCK_CLASS`` spells "asnp").
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import asyncpg

from ..catalog import quote_ident
from ..database import (
    BadSetting,
    create_options,
    describe,
    owner_statement,
    property_statements,
    roles_named,
)
from ..errors import SchemaMismatch, TargetLocked, TargetNotEmpty, VerificationFailed, some_names
from ..format import Backup, DatabaseProperties
from ..session import CONNECTION_LOST

# pg_try_advisory_lock(key1, key2): key1 says what is held, key2 which one.
LOCK_CLASS = 0x61736E70  # "asnp": a restore is running into this database (key2 0)
CREATE_CLASS = LOCK_CLASS + 1  # a restore is creating the database named by key2's hash

_HOLDER_SQL = """
SELECT l.pid, a.application_name, a.usename::pg_catalog.text AS usename,
       pg_catalog.to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
           AS since
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
  AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                       WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  AND l.classid OPERATOR(pg_catalog.=) $1::pg_catalog.int8::pg_catalog.oid
  AND l.objid OPERATOR(pg_catalog.=) $2::pg_catalog.int8::pg_catalog.oid
  AND l.objsubid OPERATOR(pg_catalog.=) 2
LIMIT 1
"""


def name_key(name: str) -> int:
    """The advisory lock's second key for a database name: 31 bits of its SHA-256 (two
    names that share them only make one of two --create runs wait its turn)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> 1


async def hold_database(conn: asyncpg.Connection, database: str) -> None:
    """Hold the database ``conn`` is connected to (named ``database``, for the message)
    for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore holds it.
    """
    await _hold(
        conn, LOCK_CLASS, 0, f"another asyncsnap restore is running into database {database}"
    )


async def hold_name(conn: asyncpg.Connection, name: str) -> None:
    """Hold the name of a database that --create will make (on a connection to another
    database of the server), for the rest of ``conn``'s session.

    :raises TargetLocked: when another asyncsnap restore --create holds the name.
    """
    await _hold(
        conn,
        CREATE_CLASS,
        name_key(name),
        f"another asyncsnap restore --create is making database {name}",
    )


async def _hold(conn: asyncpg.Connection, key1: int, key2: int, what: str) -> None:
    if await conn.fetchval("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", key1, key2):
        return
    holder = await conn.fetchrow(_HOLDER_SQL, key1, key2)
    who = ""
    if holder is not None:
        parts = [f"pid {holder['pid']}"]
        if holder["usename"]:
            parts.append(f"user {holder['usename']}")
        if holder["since"]:
            parts.append(f"connected since {holder['since']} UTC")
        who = f" ({', '.join(parts)})"
    raise TargetLocked(
        f"{what}{who}",
        hint="wait for it to end and run this one again; two restores at once would load "
        "the rows twice",
    )


# --create: the database made from the backup ------------------------------------------


@dataclass(frozen=True)
class CreatePlan:
    """What ``restore --create`` does to the server, decided (and every role, setting and
    tablespace it names checked) before anything is created; ``--dry-run`` prints it."""

    name: str
    drop: bool  # --clean: the database exists and is replaced
    extra: tuple[str, ...]  # relations in it the backup does not hold (--drop-database)
    template: bool  # the existing database is a template: unmarked before the drop
    create: str  # CREATE DATABASE, under ``staging`` first when an old one is replaced
    staging: str | None
    owner: str | None  # ALTER DATABASE ... OWNER TO, unless --no-owner or unknown
    properties: tuple[str, ...]  # once the restore is over (database.property_statements)
    described: str  # the properties in words
    said: tuple[str, ...] = ()  # what is left out, and why

    def describe(self) -> list[str]:
        lines = []
        if self.drop:
            line = f"drop database {self.name} (--clean)"
            if self.extra:
                line += (
                    ", with what it holds that the backup does not (--drop-database): "
                    + some_names(list(self.extra), limit=10)
                )
            lines.append(line)
        lines.append(f"create database {self.name} as pg_restore -C would: {self.described}")
        lines += self.said
        return lines


_RELATIONS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::pg_catalog.text AS kind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
        AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
ORDER BY 1, 2
"""
# pg_restore --list's word for each kind of relation.
_TOC_DESC = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}
_TOC_LINE = re.compile(r"\d+; \d+ \d+ (.*)")


def _toc_names(toc: str) -> set[str]:
    """Every ``DESC SCHEMA NAME`` an archive's list (``pg_restore --list``: ``id; oid oid
    DESC SCHEMA NAME OWNER``) can hold: each line cut at each space, so that a name with
    spaces in it is found too (a relation is held when one of them is its own)."""
    found: set[str] = set()
    for line in toc.splitlines():
        matched = _TOC_LINE.fullmatch(line)
        if matched is None:
            continue
        rest = matched.group(1)
        found.update(rest[:i] for i, ch in enumerate(rest) if ch == " ")
        found.add(rest)
    return found


async def _extra_relations(conn: asyncpg.Connection, held: set[str]) -> list[str]:
    """The relations of ``conn``'s database (not an extension's) that the backup's
    archive does not create."""
    return [
        f"{r['schema']}.{r['name']}"
        for r in await conn.fetch(_RELATIONS_SQL)
        if f"{_TOC_DESC[r['kind']]} {r['schema']} {r['name']}" not in held
    ]


async def plan_create(
    maintenance: asyncpg.Connection,
    backup: Backup,
    *,
    name: str,
    toc: str,
    connect: Callable[[str], Awaitable[asyncpg.Connection]],
    clean: bool,
    drop_database: bool,
    no_owner: bool,
    no_privileges: bool,
) -> CreatePlan:
    """Hold the name, look at what exists, and check everything --create will name
    (roles, settings, tablespace, locale provider) on ``maintenance``, a connection to
    another database of the server; ``connect`` opens a connection to a database by name
    (the existing one, with --clean, to hold it and list what it holds); ``toc`` is the
    schema archive's ``pg_restore --list``.

    :raises TargetLocked: when another restore makes this database, or runs in it.
    :raises TargetNotEmpty: when it exists without --clean, or holds relations the
        backup does not, without --drop-database.
    :raises SchemaMismatch: for a role, tablespace, setting or locale provider the
        server does not have.
    :raises VerificationFailed: for a setting in the manifest that is not one.
    """
    await hold_name(maintenance, name)
    existing = await maintenance.fetchrow(
        "SELECT d.datistemplate FROM pg_catalog.pg_database d "
        "WHERE d.datname OPERATOR(pg_catalog.=) $1",
        name,
    )
    if existing is not None and not clean:
        raise TargetNotEmpty(
            f"database {name} already exists",
            hint="pass --clean to replace it, or restore into it without --create",
        )
    props = backup.database
    server_major = int(maintenance.get_server_version().major)
    said: list[str] = []
    skip_roles: frozenset[str] = frozenset()
    statements: tuple[str, ...] = ()
    if props is None:
        said.append(
            "the backup does not record the database's own properties (made before "
            "asyncsnap 0.9.0): owner, privileges, settings and comment are the server's "
            "defaults"
        )
    else:
        try:  # every setting must be name=value, checked before anything else
            property_statements(name, props, no_privileges=no_privileges)
        except BadSetting as exc:
            raise VerificationFailed(
                f"the manifest's database settings hold {exc}",
                hint="the manifest was written by something else or damaged; do not trust it",
            ) from exc
        await _check_names(maintenance, props, no_owner=no_owner, no_privileges=no_privileges)
        roles = {r.role for r in props.role_settings}
        missing = sorted(roles - await _roles_present(maintenance, roles))
        if missing and not no_owner:
            raise SchemaMismatch(
                "the source database has settings for roles missing here: " + some_names(missing),
                hint="create those roles, or pass --no-owner to leave their settings out",
            )
        if missing:
            skip_roles = frozenset(missing)
            said.append(
                "left out (--no-owner): the settings of roles missing here: " + some_names(missing)
            )
        statements = tuple(
            property_statements(name, props, no_privileges=no_privileges, skip_roles=skip_roles)
        )
    server = backup.manifest.server
    try:
        options = create_options(
            encoding=server.encoding if server else None,
            lc_collate=server.lc_collate if server else None,
            lc_ctype=server.lc_ctype if server else None,
            properties=props,
            server_major=server_major,
        )
    except ValueError as exc:
        raise SchemaMismatch(str(exc), hint="restore into a newer server") from exc
    extra: list[str] = []
    if existing is not None:
        # Hold the database being replaced (no restore may be running in it) while
        # looking at what it holds; its session then ends, as DROP DATABASE requires.
        conn = await connect(name)
        try:
            await hold_database(conn, name)
            extra = await _extra_relations(conn, _toc_names(toc))
        finally:
            conn.terminate()
        if extra and not drop_database:
            raise TargetNotEmpty(
                f"--create --clean would drop database {name} with relations the backup "
                f"does not hold: {some_names(extra, limit=10)}",
                hint="pass --drop-database to drop them with it, or restore without "
                "--create (--clean alone drops only the backup's objects)",
            )
    # Replacing a database, the new one is created under another name first: a CREATE
    # that fails (a locale this server lacks) then leaves the old one in place.
    staging = None
    if existing is not None:
        staging = f"{name.encode()[:40].decode(errors='ignore')}_asyncsnap_{uuid.uuid4().hex[:8]}"
    return CreatePlan(
        name=name,
        drop=existing is not None,
        extra=tuple(extra),
        template=bool(existing is not None and existing["datistemplate"]),
        create=f"CREATE DATABASE {quote_ident(staging or name)} WITH {options}",
        staging=staging,
        owner=owner_statement(name, props) if props is not None and not no_owner else None,
        properties=statements,
        described=options
        + (
            "; then " + describe(props, no_owner=no_owner, no_privileges=no_privileges)
            if props is not None
            else ""
        ),
        said=tuple(said),
    )


async def _roles_present(conn: asyncpg.Connection, roles: set[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT r.rolname::pg_catalog.text AS name FROM pg_catalog.pg_roles r "
        "WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
        sorted(roles),
    )
    return {r["name"] for r in rows}


async def _check_names(
    conn: asyncpg.Connection, props: DatabaseProperties, *, no_owner: bool, no_privileges: bool
) -> None:
    """The roles the owner and the ACL name, the tablespace and the settings' names must
    exist on this server: checked before anything is created, since a statement that
    fails after the restore would cost the whole restore."""
    needed = roles_named(props, no_owner=no_owner, no_privileges=no_privileges)
    missing = sorted(needed - await _roles_present(conn, needed))
    if missing:
        flags = []
        if not no_owner and props.owner in missing:
            flags.append("--no-owner")
        if not no_privileges and set(missing) - {props.owner}:
            flags.append("--no-privileges")
        raise SchemaMismatch(
            f"the source database's roles are missing here: {some_names(missing)}",
            hint="create them, or pass " + " and ".join(flags),
        )
    if props.tablespace is not None and not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tablespace t "
        "WHERE t.spcname OPERATOR(pg_catalog.=) $1)",
        props.tablespace,
    ):
        raise SchemaMismatch(
            f"the source database is in tablespace {props.tablespace}, which this server "
            "does not have",
            hint=f"create tablespace {props.tablespace} first",
        )
    names = {
        entry.partition("=")[0]
        for entry in (*props.settings, *(s for r in props.role_settings for s in r.settings))
    }
    known = {
        r["name"]
        for r in await conn.fetch(
            "SELECT s.name FROM pg_catalog.pg_settings s "
            "WHERE s.name OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
            sorted(n.lower() for n in names),
        )
    }
    # A name with a dot is a custom parameter (an extension's), which any server takes.
    unknown = sorted(n for n in names if "." not in n and n.lower() not in known)
    if unknown:
        raise SchemaMismatch(
            f"the source database sets parameters this server does not know: {some_names(unknown)}",
            hint="restore into a server of the source's version, or set them by hand after "
            "a restore without --create",
        )
    # Each value as the parameter takes it, rehearsed with set_config in a transaction
    # rolled back: a value refused once the restore is done would cost the whole restore.
    tx = conn.transaction()
    await tx.start()
    try:
        for entry in (*props.settings, *(s for r in props.role_settings for s in r.settings)):
            name, _, value = entry.partition("=")
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_catalog.set_config($1, $2, true)", name, value)
            except asyncpg.PostgresError as exc:
                raise SchemaMismatch(
                    f"the source database's setting {name} = {value!r} is refused here: {exc}",
                    hint="restore into a server of the source's version, or set it by hand "
                    "after a restore without --create",
                ) from exc
    finally:
        await tx.rollback()


async def create(maintenance: asyncpg.Connection, plan: CreatePlan) -> None:
    """Create the database (replacing the old one with --clean: the new one is created
    under ``staging`` first, then the old one dropped and the new one renamed) and give
    it its owner.

    :raises asyncpg.PostgresError: as the server refuses; a staging database made is
        dropped again.
    """
    name = quote_ident(plan.name)
    await maintenance.execute(plan.create)
    if plan.staging is not None:
        staging = quote_ident(plan.staging)
        try:
            if plan.template:  # DROP DATABASE refuses a template
                await maintenance.execute(f"ALTER DATABASE {name} IS_TEMPLATE = false")
            await maintenance.execute(f"DROP DATABASE {name}")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await maintenance.execute(f"DROP DATABASE IF EXISTS {staging}")
            raise
        await maintenance.execute(f"ALTER DATABASE {staging} RENAME TO {name}")
    if plan.owner is not None:
        await maintenance.execute(plan.owner)


async def finish(conn: asyncpg.Connection, plan: CreatePlan) -> None:
    """The database's own properties, once the restore is over, in one transaction
    (settings and the ACL would otherwise apply to the restore's own sessions)."""
    if not plan.properties:
        return
    async with conn.transaction():
        for statement in plan.properties:
            await conn.execute(statement)


async def drop_created(maintenance: asyncpg.Connection, name: str) -> str | None:
    """Drop the database a failed --create made; what went wrong, or None."""
    try:
        # (IS_TEMPLATE is set last of all, but a template cannot be dropped.)
        await maintenance.execute(f"ALTER DATABASE {quote_ident(name)} IS_TEMPLATE = false")
        await maintenance.execute(f"DROP DATABASE {quote_ident(name)}")
    except (asyncpg.PostgresError, *CONNECTION_LOST) as exc:
        return f"database {name}, made by this run, could not be dropped ({exc}): drop it yourself"
    return None
