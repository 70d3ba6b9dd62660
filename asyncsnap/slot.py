"""A logical replication slot whose start is exactly a full backup's snapshot.

``dump --slot NAME`` makes a backup that an incremental one can follow: PostgreSQL's
logical decoding gives every change committed after a slot's start, and a slot created
through the replication protocol with ``SNAPSHOT 'export'`` exports the snapshot that
is its start. The coordinator imports that snapshot and exports it again for the
workers (the replication connection can then go), so the backup holds exactly the rows
as of the slot's consistent point.

What the slot decodes is what a publication covers, as of each change's time (pgoutput
reads it in the historic catalog): so the publication exists, covering every table of
the backup, before the slot is created. asyncsnap creates one named like the slot (and
marks it with a comment, so that ``drop-slot`` removes only its own), or uses the one
given with ``--publication`` without changing it.

Adding a table without a replica identity to a publication that publishes updates and
deletes makes the source's own UPDATEs and DELETEs of it fail: such tables are refused
before anything is created. asyncpg cannot speak the replication protocol (it sends
extended-protocol messages, which a walsender refuses); psycopg 3's libpq connection
runs the two replication commands, in a worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from .catalog import Table, quote_ident, sql_name
from .connection import ConnectionSpec, ConnectParams, first_line, resolve
from .database import quote_literal
from .errors import DumpFailed, LockTimeout, PermissionDenied, UsageError, some_names
from .format import LSN, SLOT_NAME, SLOT_PLUGIN, SYSTEM_IDENTIFIER, SlotInfo, is_publication_name
from .pgoutput import format_lsn, parse_lsn
from .session import Session, SessionPolicy
from .snapshot import Coordinator

# The comment on a publication asyncsnap created: ``drop-slot`` drops only those.
PUBLICATION_MARK = "asyncsnap: publication of replication slot "
# Replication commands' option syntax of PostgreSQL 15+; before it, keywords.
OPTION_SYNTAX_VERSION = 150000


class NotReplicable(DumpFailed):
    """Raised by ``dump --slot`` before anything is written or created when the server,
    the role or a table cannot carry a slot's changes (wal_level, REPLICATION, replica
    identity, a slot of that name already there)."""


def check_slot_name(name: str, *, option: str = "--slot") -> str:
    if not SLOT_NAME.fullmatch(name):
        raise UsageError(
            f"{option} {name!r} is not a replication slot name",
            hint="lower-case letters, digits and _ only, at most 63 (PostgreSQL's rule)",
        )
    return name


def check_publication_name(name: str) -> str:
    if not is_publication_name(name):
        raise UsageError(
            f"--publication {name!r} is not a publication name",
            hint="the name of an existing publication (at most 63 bytes)",
        )
    return name


def replicated(tables: Sequence[Table]) -> list[Table]:
    """The tables whose rows a slot must carry: those that hold rows (partitioned parents
    hold none; their partitions' changes come under the partitions' own names)."""
    return [t for t in tables if t.is_table and t.has_data]


async def check_server(conn: asyncpg.Connection, slot: str) -> None:
    """wal_level, the role's REPLICATION and the slot's name, before anything is made.

    :raises NotReplicable: naming what is missing, with how to get it.
    """
    row = await conn.fetchrow(
        "SELECT pg_catalog.current_setting('wal_level') AS wal_level,"
        " (SELECT r.rolreplication OR r.rolsuper FROM pg_catalog.pg_roles r"
        "   WHERE r.rolname = pg_catalog.current_user()) AS replication,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s"
        "   WHERE s.slot_name = $1) AS slot_exists,"
        " pg_catalog.current_setting('max_replication_slots')::pg_catalog.int4 AS slots",
        slot,
    )
    assert row is not None
    if row["wal_level"] != "logical":
        raise NotReplicable(
            f"the server's wal_level is {row['wal_level']}, and a replication slot needs logical",
            hint="set wal_level = logical in postgresql.conf and restart the server, "
            "or dump without --slot",
        )
    if not row["replication"]:
        raise NotReplicable(
            "this role cannot create a replication slot (it has no REPLICATION attribute)",
            hint="ALTER ROLE ... REPLICATION (as a superuser), or dump without --slot",
        )
    if row["slot_exists"]:
        raise NotReplicable(
            f"replication slot {slot} already exists",
            hint=f"a new full backup starts a new chain: drop the old slot first "
            f"(asyncsnap drop-slot {slot}) or name another with --slot",
        )
    if row["slots"] == 0:
        raise NotReplicable(
            "the server allows no replication slots (max_replication_slots = 0)",
            hint="raise max_replication_slots and restart the server",
        )


async def check_replica_identity(conn: asyncpg.Connection, tables: Sequence[Table]) -> None:
    """Every table has a replica identity (a primary key, a chosen unique index, or FULL):
    an update or delete of a table without one cannot be decoded by key, and once in a
    publication that publishes them the source itself refuses them.

    :raises NotReplicable: naming the tables without one.
    """
    rows = await conn.fetch(
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::pg_catalog.oid[])"
        " AND NOT (c.relreplident = 'f'"
        "  OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i"
        "       WHERE i.indrelid = c.oid AND i.indisprimary))"
        "  OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i"
        "       WHERE i.indrelid = c.oid AND i.indisreplident)))",
        [t.oid for t in tables],
    )
    missing = {r["oid"] for r in rows}
    if missing:
        names = sorted(t.qualified for t in tables if t.oid in missing)
        raise NotReplicable(
            f"no replica identity on {some_names(names)}: its updates and deletes could not "
            "be followed by key",
            hint="add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL (or USING "
            "INDEX), or leave the table out with -T",
        )


async def ensure_publication(
    conn: asyncpg.Connection,
    slot: str,
    given: str | None,
    tables: Sequence[Table],
    *,
    lock_timeout: float = 0.0,
) -> bool:
    """The publication the slot decodes with: ``given`` checked (it must exist and
    publish inserts, updates, deletes and truncates; it is never changed), else one named
    like the slot created for ``tables``. True when it was created here.

    :raises NotReplicable: for a missing or partial publication, or a name taken.
    :raises PermissionDenied: when this role may not create it.
    """
    name = given or slot
    if given is not None:
        await check_publication(
            conn, given, conn.get_server_version().major * 10000, option="--publication"
        )
        return False
    row = await conn.fetchrow("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", name)
    if row is not None:
        raise NotReplicable(
            f"a publication named {name} already exists",
            hint=f"give it with --publication {name} if it covers the backup's tables, "
            "or drop it, or name another slot",
        )
    listed = ", ".join(f"ONLY {sql_name(t.schema, t.name)}" for t in tables)
    quoted = quote_ident(name)
    try:
        async with conn.transaction():
            # Its lock on each table waits behind a migration's, as the dump's own would.
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}")
            await conn.execute(f"CREATE PUBLICATION {quoted} FOR TABLE {listed}")
            await conn.execute(
                f"COMMENT ON PUBLICATION {quoted} IS " + quote_literal(PUBLICATION_MARK + slot)
            )
    except asyncpg.LockNotAvailableError as exc:
        raise LockTimeout(
            f"could not create publication {name}: a table stayed locked for {lock_timeout:g}s",
            hint="another session holds a conflicting lock (a migration?); retry later or "
            "raise --lock-timeout",
        ) from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(
            f"this role may not create publication {name} for the backup's tables ({exc.message})",
            hint="create the publication as the tables' owner and give it with --publication",
        ) from exc
    return True


async def check_publication(
    conn: asyncpg.Connection, name: str, server_version: int, *, option: str | None = None
) -> None:
    """The publication a chain decodes with carries every change of its tables: it
    exists, publishes inserts, updates, deletes and truncates, names partitions' changes
    as the partitions' (not through their root), and filters neither rows nor columns
    (PostgreSQL 15+). Checked when the chain starts and again at each increment: an
    ALTER PUBLICATION in between would leave changes out, silently.

    :raises NotReplicable: saying which.
    """
    leave_out = ", or leave out --publication" if option else ""
    row = await conn.fetchrow(
        "SELECT p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate AS everything,"
        " p.pubviaroot AS via_root FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
        name,
    )
    if row is None:
        raise NotReplicable(
            f"publication {name} does not exist in this database",
            hint="CREATE PUBLICATION for the backup's tables" + leave_out
            if option
            else "a new full backup starts a new chain: asyncsnap dump --slot NAME",
        )
    fix = None
    if not row["everything"]:
        what = "does not publish every insert, update, delete and truncate"
        fix = f"ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')"
    elif row["via_root"]:
        what = (
            "publishes partitions' changes as their root's (publish_via_partition_root), "
            "and the backup follows each partition"
        )
        fix = f"ALTER PUBLICATION {name} SET (publish_via_partition_root = false)"
    elif server_version >= 150000:
        filtered = await conn.fetchval(
            "SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, c.relname),"
            " ', ' ORDER BY n.nspname, c.relname)"
            " FROM pg_catalog.pg_publication_rel r"
            " JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid"
            " JOIN pg_catalog.pg_class c ON c.oid = r.prrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE p.pubname = $1 AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)",
            name,
        )
        if filtered:
            what = f"filters the rows or columns it publishes of {filtered}"
            fix = f"ALTER PUBLICATION {name} SET TABLE ... without WHERE or column lists"
    if fix is not None:
        raise NotReplicable(
            f"publication {name} {what}: an increment would miss changes",
            hint=fix + leave_out
            if option
            else f"{fix}, then a new full backup (changes already left out are lost to "
            "this chain): asyncsnap dump --slot NAME",
        )


async def check_published(
    conn: asyncpg.Connection, publication: str, tables: Sequence[Table]
) -> None:
    """In the snapshot: every table of the backup is in the publication (a table created
    between the publication and the slot would otherwise be followed by nobody).

    :raises NotReplicable: naming the tables left out.
    """
    rows = await conn.fetch(
        "SELECT pt.schemaname, pt.tablename FROM pg_catalog.pg_publication_tables pt"
        " WHERE pt.pubname = $1",
        publication,
    )
    published = {(r["schemaname"], r["tablename"]) for r in rows}
    missing = sorted(t.qualified for t in tables if t.key not in published)
    if missing:
        raise NotReplicable(
            f"{some_names(missing)} not in publication {publication}: its changes would "
            "not reach an increment",
            hint=f"ALTER PUBLICATION {publication} ADD TABLE ..., or leave it out with -T",
        )


class SlotCreation:
    """The replication connection that creates the slot and holds its exported snapshot
    until the coordinator has imported it (``close``). Blocking psycopg calls, run in a
    worker thread.

    Creating a logical slot waits for every transaction that is writing to end: behind
    a long one it can wait for a long time. A cancellation (Ctrl-C, --max-duration) then
    cancels the command on the server and waits for the thread, so that a slot is never
    created behind the dump's back; ``created`` says whether one was, all the same."""

    def __init__(self, params: ConnectParams, name: str, server_version: int) -> None:
        self.params = params
        self.name = name
        self.server_version = server_version
        self.created: tuple[str, str, str] | None = None  # lsn, snapshot, system id
        self._conn: Any = None
        self._cancelled = False

    async def create(self) -> tuple[str, str, str]:
        """Create the slot: its consistent LSN, exported snapshot and the system's
        identifier."""
        failed: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    await anyio.to_thread.run_sync(self._create)  # not abandoned: waited for
                except Exception as exc:  # raised below, not wrapped in a group
                    failed.append(exc)
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                if self.created is None:
                    self._cancel_on_server()
                raise
        if failed:
            raise failed[0]
        if self.created is None:  # cancelled, and the command with it
            raise anyio.get_cancelled_exc_class()()
        return self.created

    def _cancel_on_server(self) -> None:
        self._cancelled = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=10)

    def _create(self) -> None:
        psycopg = _psycopg()
        kwargs: dict[str, Any] = {"replication": "database", "autocommit": True}
        if self.params.connect_timeout is not None:
            kwargs["connect_timeout"] = int(self.params.connect_timeout)
        try:
            self._conn = psycopg.connect(self.params.uri or "", **kwargs)
        except psycopg.Error as exc:
            raise DumpFailed(
                f"could not open a replication connection: {first_line(exc)}",
                hint="pg_hba.conf must allow this role a replication connection to the "
                "database (a 'replication' entry is for physical replication only)",
            ) from exc
        if self._cancelled:
            return
        identity = self._exec("IDENTIFY_SYSTEM")
        if identity is None:
            return
        # The name was checked against SLOT_NAME: it needs no quoting.
        command = f"CREATE_REPLICATION_SLOT {self.name} LOGICAL {SLOT_PLUGIN} "
        if self.server_version >= OPTION_SYNTAX_VERSION:
            command += "(SNAPSHOT 'export')"
        else:
            command += "EXPORT_SNAPSHOT"
        created = self._exec(command)
        if created is None:
            return
        _, lsn, snapshot, _plugin = created
        # What the server said, checked before it goes anywhere (the manifest's reader
        # refuses anything else; the snapshot is checked where it goes into SQL).
        if not LSN.fullmatch(lsn) or not SYSTEM_IDENTIFIER.fullmatch(identity[0]):
            raise DumpFailed(
                f"unexpected reply to CREATE_REPLICATION_SLOT: {lsn!r}, {identity[0]!r}",
                hint="see the server log",
            )
        self.created = (lsn, snapshot, identity[0])

    def _exec(self, command: str) -> list[str] | None:
        """One replication command by the simple query protocol (a walsender refuses the
        extended one): the first row's values as text; None when it was cancelled."""
        psycopg = _psycopg()
        result = self._conn.pgconn.exec_(command.encode())
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            if self._cancelled:
                return None
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            raise DumpFailed(
                f"the server refused {command.split()[0]}: {message}",
                hint="see the server log",
            )
        if result.ntuples != 1:
            raise DumpFailed(
                f"unexpected reply to {command.split()[0]}: {result.ntuples} rows",
                hint="see the server log",
            )
        return [
            (result.get_value(0, i) or b"").decode("utf-8", "replace")
            for i in range(result.nfields)
        ]

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await anyio.to_thread.run_sync(conn.close)


async def drop_slot(conn: asyncpg.Connection, name: str) -> None:
    """Drop slot ``name`` if it is there."""
    await conn.execute(
        "SELECT pg_catalog.pg_drop_replication_slot(s.slot_name)"
        " FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1",
        name,
    )


async def drop_publication(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise UsageError(
            "--slot needs psycopg 3, which is not installed",
            hint="pip install 'asyncsnap[incremental]'",
        ) from exc
    return psycopg


class SlotKeeper:
    """``dump --slot``'s side of a dump: the checks and the publication before the
    snapshot, the slot that is the snapshot (created again if the dump starts over on a
    new snapshot), and the clean-up of both when the dump fails."""

    def __init__(self, params: ConnectParams, name: str, publication: str | None) -> None:
        self.params = params
        self.name = name
        self.given_publication = publication
        self.publication = publication or name
        self.created_publication = False
        self.info: SlotInfo | None = None  # the slot there now, created by this run
        self.server_version = 0  # server_version_num, from prepare

    @property
    def made_anything(self) -> bool:
        """Whether ``abandon`` has something to drop."""
        return self.info is not None or self.created_publication

    async def prepare(
        self,
        conn: asyncpg.Connection,
        tables: Sequence[Table],
        *,
        lock_timeout: float,
        server_version: int,
    ) -> None:
        """Before the snapshot, outside any transaction: the server, the role, the
        tables' replica identity, then the publication (it must exist before the slot)."""
        self.server_version = server_version
        await check_server(conn, self.name)
        await check_replica_identity(conn, replicated(tables))
        self.created_publication = await ensure_publication(
            conn,
            self.name,
            self.given_publication,
            replicated(tables),
            lock_timeout=lock_timeout,
        )

    async def begin(self, conn: asyncpg.Connection) -> Coordinator:
        """A new slot, and the coordinator's transaction in the snapshot that is its
        start (a slot made for an earlier snapshot of this dump is dropped first)."""
        if self.info is not None:
            await drop_slot(conn, self.name)
            self.info = None
        creation = SlotCreation(self.params, self.name, self.server_version)
        try:
            try:
                await creation.create()
            finally:
                # Made, even if the dump was cancelled as it was: abandon() must drop it.
                if creation.created is not None:
                    lsn, _, system_identifier = creation.created
                    self.info = SlotInfo(
                        name=self.name,
                        publication=self.publication,
                        consistent_lsn=lsn,
                        system_identifier=system_identifier,
                    )
            assert creation.created is not None
            return await Coordinator.begin(conn, imported=creation.created[1])
        finally:
            # The coordinator holds the snapshot from here on (or the dump failed).
            with anyio.CancelScope(shield=True):
                await creation.close()

    async def check(self, conn: asyncpg.Connection, tables: Sequence[Table]) -> None:
        """In the snapshot: what ``prepare`` checked still holds for the tables the backup
        holds (one may have been created or altered in between)."""
        await check_replica_identity(conn, replicated(tables))
        await check_published(conn, self.publication, replicated(tables))

    async def abandon(self, conn: asyncpg.Connection) -> None:
        """The dump failed: drop the slot it made, and the publication if it made it (no
        backup needs either)."""
        if self.info is not None:
            await drop_slot(conn, self.name)
            self.info = None
        if self.created_publication:
            await drop_publication(conn, self.publication)
            self.created_publication = False


@dataclass(frozen=True)
class SlotDropResult:
    """What ``drop_slot`` removed."""

    slot: str
    slot_dropped: bool  # False: there was no slot of that name
    publication_dropped: bool  # the publication asyncsnap had created for it
    held_bytes: int | None = None  # the WAL the server kept for it, freed now


async def drop_replication_slot(
    dsn: str | ConnectionSpec | None, name: str, *, keep_publication: bool = False
) -> SlotDropResult:
    """Drop the replication slot ``name`` (a backup made with ``dump --slot`` leaves it, and
    it holds WAL on the server until increments read it) and, unless ``keep_publication``,
    the publication asyncsnap created for it (only one marked as asyncsnap's).

    Increments of that slot's chain can no longer be made; its backups still restore.

    :raises UsageError: for a name that is not a slot name.
    :raises NotReplicable: when the slot is in use by a running connection.
    """
    check_slot_name(name, option="NAME")
    session = Session(resolve(dsn), SessionPolicy())
    conn = await session.connect()
    try:
        publication = not keep_publication and await _ours(conn, name)
        before = await slot_state(conn, name)
        try:
            if before is not None:
                await drop_slot(conn, name)
        except asyncpg.ObjectInUseError as exc:
            raise NotReplicable(
                f"replication slot {name} is in use ({exc.message})",
                hint="stop the process reading it (asyncsnap dump --since, a subscriber), "
                "then drop it",
            ) from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"this role may not drop replication slot {name}",
                hint="run it as a role with REPLICATION",
            ) from exc
        if publication:
            await drop_publication(conn, name)
        return SlotDropResult(
            slot=name,
            slot_dropped=before is not None,
            publication_dropped=publication,
            held_bytes=before.held_bytes if before is not None else None,
        )
    finally:
        await conn.close()


async def _ours(conn: asyncpg.Connection, name: str) -> bool:
    """Whether publication ``name`` exists and asyncsnap created it (its comment)."""
    return bool(
        await conn.fetchval(
            "SELECT pg_catalog.obj_description(p.oid, 'pg_publication') = $2"
            " FROM pg_catalog.pg_publication p WHERE p.pubname = $1",
            name,
            PUBLICATION_MARK + name,
        )
    )


NEW_FULL_HINT = "a new full backup starts a new chain: asyncsnap dump --slot NAME"


@dataclass(frozen=True)
class SlotState:
    """A replication slot as the server has it now (``slot_state``)."""

    name: str
    plugin: str | None
    database: str | None
    active: bool
    confirmed_flush: int | None  # where decoding starts: increments read from here
    wal_status: str | None  # reserved, extended, unreserved or lost (PostgreSQL 13+)
    held_bytes: int | None  # WAL kept for it: the current WAL position less its restart_lsn


async def slot_state(conn: asyncpg.Connection, name: str) -> SlotState | None:
    """Slot ``name`` now, or None when there is none of that name."""
    row = await conn.fetchrow(
        "SELECT s.plugin, s.database, s.active, s.confirmed_flush_lsn, s.wal_status,"
        " pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::int8"
        "   AS held"
        " FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1",
        name,
    )
    if row is None:
        return None
    return SlotState(
        name=name,
        plugin=row["plugin"],
        database=row["database"],
        active=row["active"],
        confirmed_flush=row["confirmed_flush_lsn"],
        wal_status=row["wal_status"],
        held_bytes=row["held"],
    )


async def check_system(conn: asyncpg.Connection, expected: str) -> None:
    """The server is the cluster the chain began on (a restored copy or a standby
    promoted elsewhere has the same slot name but other WAL).

    :raises NotReplicable: it is another cluster."""
    try:
        found = await conn.fetchval("SELECT system_identifier FROM pg_catalog.pg_control_system()")
    except asyncpg.InsufficientPrivilegeError:
        return  # the slot's name, database and position are checked all the same
    if str(found) != expected:
        raise NotReplicable(
            f"this server's system identifier is {found}, the chain's is {expected}: "
            "it is another cluster",
            hint=NEW_FULL_HINT,
        )


def check_followable(state: SlotState | None, slot: SlotInfo, start: int, database: str) -> None:
    """Whether the changes after ``start`` (the end of the backup being followed) can
    still be read from ``slot``'s slot: it exists, in this database, decodes with
    pgoutput, has kept its WAL and was not moved past ``start``.

    :raises NotReplicable: saying which, and that a new full backup is needed.
    """
    new_full = NEW_FULL_HINT
    if state is None:
        raise NotReplicable(
            f"replication slot {slot.name} no longer exists: the changes after the backup "
            "cannot be read",
            hint=new_full,
        )
    if state.database != database or state.plugin != SLOT_PLUGIN:
        raise NotReplicable(
            f"replication slot {slot.name} is not the backup's: it decodes "
            f"{state.database} with {state.plugin}",
            hint=new_full,
        )
    if state.wal_status == "lost":
        raise NotReplicable(
            f"replication slot {slot.name} was invalidated: the server removed WAL it had "
            "not read (max_slot_wal_keep_size)",
            hint=new_full + ", and read increments more often or raise max_slot_wal_keep_size",
        )
    if state.confirmed_flush is not None and state.confirmed_flush > start:
        raise NotReplicable(
            f"replication slot {slot.name} was moved past the backup's end "
            f"({format_lsn(state.confirmed_flush)} > {format_lsn(start)}): the changes "
            "between are gone",
            hint=new_full + " (did another chain, or another tool, read this slot?)",
        )


@dataclass(frozen=True)
class SlotStanding:
    """A chain's slot as the server has it now, seen from one backup of the chain
    (``slot_standing``: what ``inspect BACKUP -d DB`` shows)."""

    name: str
    exists: bool
    wal_status: str | None  # reserved, extended, unreserved or lost (PostgreSQL 13+)
    held_bytes: int | None  # WAL the server keeps for it
    confirmed_flush_lsn: str | None  # where the next increment's changes begin
    backup_end_lsn: str  # where the backup's state ends (its slot's start, or its end_lsn)
    followable: bool  # dump --since this backup can read every change after it
    latest: bool  # the slot begins exactly at this backup's end: it is the chain's latest
    why: str | None  # when not followable: the reason, as dump --since would say it


async def slot_standing(
    dsn: str | ConnectionSpec | None, slot: SlotInfo, end_lsn: str
) -> SlotStanding:
    """Slot ``slot`` on the server ``dsn`` names, against a backup of its chain that ends
    at ``end_lsn``: whether it is there and intact, how much WAL it holds, and whether
    ``dump --since`` that backup would work (the same checks, nothing changed)."""
    end = parse_lsn(end_lsn)
    session = Session(resolve(dsn), SessionPolicy())
    conn = await session.connect()
    try:
        state = await slot_state(conn, slot.name)
        why = None
        try:
            await check_system(conn, slot.system_identifier)
            check_followable(state, slot, end, await conn.fetchval("SELECT current_database()"))
        except NotReplicable as exc:
            why = exc.message
    finally:
        await conn.close()
    confirmed = None if state is None or state.confirmed_flush is None else state.confirmed_flush
    return SlotStanding(
        name=slot.name,
        exists=state is not None,
        wal_status=None if state is None else state.wal_status,
        held_bytes=None if state is None else state.held_bytes,
        confirmed_flush_lsn=None if confirmed is None else format_lsn(confirmed),
        backup_end_lsn=end_lsn,
        followable=why is None,
        latest=why is None and confirmed == end,
        why=why,
    )
