"""``restore --create``: the database made from the backup, as pg_restore -C makes it.

Everything it will name (roles, settings, tablespace, locale provider) is checked on a
connection to another database of the server before anything is created
(``plan_create``); the database is made (``create``), under another name first when it
replaces one, and given its own properties only once the restore is over
(``give_properties``: settings, a connection limit or the ACL would otherwise apply to the
restore's own sessions). A failed restore drops the database it made (``Creation.undo``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

from .. import schema as schema_tools
from ..catalog import (
    current_database,
    database_is_template,
    known_settings,
    own_relations,
    quote_ident,
    roles_present,
    tablespace_exists,
)
from ..connection import ConnectParams
from ..database import (
    BadSetting,
    create_options,
    describe,
    owner_statement,
    property_statements,
    roles_named,
)
from ..errors import (
    AsyncsnapError,
    RestoreFailed,
    SchemaMismatch,
    TargetNotEmpty,
    UsageError,
    VerificationFailed,
    some_names,
)
from ..events import EventCallback, Notice
from ..format import Backup, DatabaseProperties
from ..scratch import PrivateScratch
from ..session import CONNECTION_LOST, Session, SessionPolicy
from . import schema as restore_schema
from .options import RestoreOptions
from .plan import CREATE_THEN, check_options
from .result import RestoreResult
from .target import hold_database, hold_name


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


class Creation:
    """--create: the database made on a maintenance connection before the restore, and
    dropped again when the restore fails (running it again then starts over)."""

    def __init__(
        self, backup: Backup, o: RestoreOptions, policy: SessionPolicy, scratch: PrivateScratch
    ) -> None:
        self.backup, self.o, self.policy, self.scratch = backup, o, policy, scratch
        self.maintenance: asyncpg.Connection | None = None
        self.creating: CreatePlan | None = None
        self.created = False
        self.archive: Path | None = None

    async def plan(
        self, params: ConnectParams, announce: Callable[[str], None], started: float
    ) -> RestoreResult | None:
        """Check and plan the new database; a dry run's result, or None to go on."""
        o, backup = self.o, self.backup
        check_options(
            backup, data_only=o.data_only, schema_only=o.schema_only, clean=o.clean, create=True
        )
        # The keys are checked before anything is created: an encrypted archive is
        # decrypted whole here (a wrong --identity fails now, exit 5).
        self.archive = await anyio.to_thread.run_sync(
            restore_schema.staged_archive, backup, self.scratch
        )
        maintenance_session = Session(params, self.policy)
        self.maintenance = await maintenance_session.connect()
        self.params = maintenance_session.params  # where it went (pinned)
        self.creating = await self._plan_create()
        lines = self.creating.describe()
        for line in lines:
            announce(line)
        if not o.dry_run:
            return None
        lines.append(CREATE_THEN)
        return RestoreResult(
            plan=None, lines=lines, dry_run=True, seconds=time.monotonic() - started
        )

    async def _plan_create(self) -> CreatePlan:
        """What --create will do, every name it uses checked (``plan_create``).

        :raises AsyncsnapError: as ``plan_create``; a server error as RestoreFailed.
        """
        backup, maintenance, o = self.backup, self.maintenance, self.o
        assert backup.schema is not None and maintenance is not None
        name = restore_schema.database_name(backup)
        if name == await current_database(maintenance):
            raise UsageError(
                f"--create makes database {name}, and the connection is to it",
                hint="connect to another database of the server (e.g. postgres), as pg_restore -C",
            )
        tool, _ = await anyio.to_thread.run_sync(
            schema_tools.pick_pg_restore,
            backup.schema.pg_dump_major,
            int(maintenance.get_server_version().major),
        )
        local = self.archive or restore_schema.local_archive(backup)
        toc = await anyio.to_thread.run_sync(schema_tools.list_archive, tool, local)

        async def connect(database: str) -> asyncpg.Connection:
            params = restore_schema.with_database(self.params, database)
            return await Session(params, self.policy).connect()

        try:
            return await plan_create(
                maintenance,
                backup,
                name=name,
                toc=toc,
                connect=connect,
                clean=o.clean,
                drop_database=o.drop_database,
                no_owner=o.no_owner,
                no_privileges=o.no_privileges,
            )
        except asyncpg.PostgresError as exc:
            raise RestoreFailed(f"cannot create the database: {exc}") from exc

    async def create(self, emit: EventCallback) -> ConnectParams:
        """Make the database; the parameters that connect to it."""
        assert self.maintenance is not None and self.creating is not None
        creating = self.creating
        try:
            await create(self.maintenance, creating)
        except asyncpg.PostgresError as exc:
            raise RestoreFailed(
                f"cannot create database {creating.name}: {exc}",
                hint=getattr(exc, "hint", None)
                or ("the old database was left in place" if creating.drop else None),
            ) from exc
        self.created = True
        emit(Notice(f"created database {creating.name}"))
        return restore_schema.with_database(self.params, creating.name)

    async def undo(self, exc: BaseException, emit: EventCallback) -> None:
        """After a failure: drop the database this run made, and say so."""
        if not (self.created and self.maintenance is not None and self.creating is not None):
            return
        with anyio.CancelScope(shield=True):
            problem = await drop_created(self.maintenance, self.creating.name)
        told = problem or f"database {self.creating.name}, made by this run, was dropped again"
        if isinstance(exc, AsyncsnapError):
            exc.hint = f"{exc.hint}; {told}" if exc.hint else told
        else:
            emit(Notice(told))

    def close(self) -> None:
        if self.maintenance is not None:
            self.maintenance.terminate()


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
        f"{schema}.{name}"
        for schema, name, kind in await own_relations(conn)
        if f"{_TOC_DESC[kind]} {schema} {name}" not in held
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
    template = await database_is_template(maintenance, name)
    exists = template is not None
    if exists and not clean:
        raise TargetNotEmpty(
            f"database {name} already exists",
            hint="pass --clean to replace it, or restore into it without --create",
        )
    props = backup.database
    statements, said = await _property_statements(
        maintenance, name, props, no_owner=no_owner, no_privileges=no_privileges
    )
    options = _create_options(backup, int(maintenance.get_server_version().major))
    extra: list[str] = []
    if exists:
        extra = await _relations_dropped(connect, name, toc, drop_database=drop_database)
    # Replacing a database, the new one is created under another name first: a CREATE
    # that fails (a locale this server lacks) then leaves the old one in place.
    staging = None
    if exists:
        staging = f"{name.encode()[:40].decode(errors='ignore')}_asyncsnap_{uuid.uuid4().hex[:8]}"
    return CreatePlan(
        name=name,
        drop=exists,
        extra=tuple(extra),
        template=bool(template),
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


async def _property_statements(
    maintenance: asyncpg.Connection,
    name: str,
    props: DatabaseProperties | None,
    *,
    no_owner: bool,
    no_privileges: bool,
) -> tuple[tuple[str, ...], list[str]]:
    """The statements that give the new database the source's properties, every name
    they use checked here, and what is left out in words.

    :raises VerificationFailed: for a setting in the manifest that is not one.
    :raises SchemaMismatch: for a role, tablespace or setting the server does not have.
    """
    if props is None:
        return (), [
            "the backup does not record the database's own properties (made before "
            "asyncsnap 0.9.0): owner, privileges, settings and comment are the server's "
            "defaults"
        ]
    try:  # every setting must be name=value, checked before anything else
        property_statements(name, props, no_privileges=no_privileges)
    except BadSetting as exc:
        raise VerificationFailed(
            f"the manifest's database settings hold {exc}",
            hint="the manifest was written by something else or damaged; do not trust it",
        ) from exc
    await _check_names(maintenance, props, no_owner=no_owner, no_privileges=no_privileges)
    roles = {r.role for r in props.role_settings}
    missing = sorted(roles - await roles_present(maintenance, roles))
    if missing and not no_owner:
        raise SchemaMismatch(
            "the source database has settings for roles missing here: " + some_names(missing),
            hint="create those roles, or pass --no-owner to leave their settings out",
        )
    said = []
    if missing:
        said.append(
            "left out (--no-owner): the settings of roles missing here: " + some_names(missing)
        )
    statements = tuple(
        property_statements(name, props, no_privileges=no_privileges, skip_roles=frozenset(missing))
    )
    return statements, said


def _create_options(backup: Backup, server_major: int) -> str:
    """CREATE DATABASE's options: the source's encoding, locale and properties.

    :raises SchemaMismatch: for what this server cannot make.
    """
    server = backup.manifest.server
    try:
        return create_options(
            encoding=server.encoding if server else None,
            lc_collate=server.lc_collate if server else None,
            lc_ctype=server.lc_ctype if server else None,
            properties=backup.database,
            server_major=server_major,
        )
    except ValueError as exc:
        raise SchemaMismatch(str(exc), hint="restore into a newer server") from exc


async def _relations_dropped(
    connect: Callable[[str], Awaitable[asyncpg.Connection]],
    name: str,
    toc: str,
    *,
    drop_database: bool,
) -> list[str]:
    """The relations of the existing database ``name`` that the backup does not hold
    (dropped with it only with --drop-database).

    :raises TargetLocked: when a restore runs in it.
    :raises TargetNotEmpty: when there are some, without ``drop_database``.
    """
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
    return extra


async def _check_names(
    conn: asyncpg.Connection, props: DatabaseProperties, *, no_owner: bool, no_privileges: bool
) -> None:
    """The roles the owner and the ACL name, the tablespace and the settings' names must
    exist on this server: checked before anything is created, since a statement that
    fails after the restore would cost the whole restore."""
    needed = roles_named(props, no_owner=no_owner, no_privileges=no_privileges)
    missing = sorted(needed - await roles_present(conn, needed))
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
    if props.tablespace is not None and not await tablespace_exists(conn, props.tablespace):
        raise SchemaMismatch(
            f"the source database is in tablespace {props.tablespace}, which this server "
            "does not have",
            hint=f"create tablespace {props.tablespace} first",
        )
    await _check_settings(conn, props)


async def _check_settings(conn: asyncpg.Connection, props: DatabaseProperties) -> None:
    """Every setting's name is a parameter here, and its value one it takes."""
    entries = (*props.settings, *(s for r in props.role_settings for s in r.settings))
    names = {entry.partition("=")[0] for entry in entries}
    known = await known_settings(conn, sorted(n.lower() for n in names))
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
        for entry in entries:
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


async def give_properties(conn: asyncpg.Connection, plan: CreatePlan) -> None:
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
