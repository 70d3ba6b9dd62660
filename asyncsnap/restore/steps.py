"""Restore as a list of steps: open and check the backup (``_opened``), make --create's
database (``_Creation``), then in the target (``_RestoreRun``): hold it, choose the kind
of restore (``schema.choose_kind``), pre-data, the rows (``load``), post-data, compare
(when the API layer asks), the created database's own properties. Each step is a short
call into its module: ``schema`` (pg_restore's sections), ``target`` (the target's checks
and --create), ``load`` (the rows, sequences, large objects), ``options``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import asyncpg

from .. import schema as schema_tools
from ..comparison import CompareResult
from ..connection import ConnectionSpec, ConnectParams, resolve
from ..errors import (
    AsyncsnapError,
    DatabaseMissing,
    PermissionDenied,
    RestoreFailed,
    UsageError,
    VerificationFailed,
    some_names,
)
from ..events import EventCallback, Notice, RestoreFinished, RestoreStarted
from ..format import Backup
from ..scratch import PrivateScratch
from ..session import Session, SessionPolicy
from ..storage.backup import open_backup
from ..text import count
from . import schema as restore_schema
from . import target as restore_target
from .load import (
    RestoredTable,
    RestorePlan,
    RestoreResult,
    _as_catalog_table,
    _Done,
    _plan,
    _run,
    _run_with_pool,
    _staged_archive,
    loading_connection,
)
from .options import RestoreOptions

# restore --compare: run after the rows are in, on the tables loaded (None: every table),
# while the target is still held; the API layer passes analysis.compare (restore does not
# import it).
CompareStep = Callable[
    [Backup, ConnectParams, frozenset[tuple[str, str]] | None, int, EventCallback],
    Awaitable[CompareResult],
]


async def run_restore(
    backup_dir: str | Path,
    dsn: str | ConnectionSpec | None,
    o: RestoreOptions,
    *,
    on_event: EventCallback | None = None,
    compare_step: CompareStep | None = None,
) -> RestoreResult:
    """``asyncsnap.restore`` with its options gathered (``RestoreOptions.build``): open
    and check the backup, then --create's database, then the restore proper."""
    started = time.monotonic()
    emit: EventCallback = on_event or (lambda event: None)
    # A dry run's plan is its result (the command prints it); a real run logs it as it goes.
    announce: Callable[[str], None] = (
        (lambda line: None) if o.dry_run else (lambda line: emit(Notice(line)))
    )
    backup = await _opened(backup_dir, o, emit)
    params = resolve(dsn)
    # The settings the values were rendered with are the ones to read them back with
    # (open_backup accepted them only as the documented values).
    policy = SessionPolicy(render=backup.settings)
    o.check_drop_database()
    # A schema archive that is encrypted or in a store is copied here for pg_restore (which
    # seeks in it) and removed after; made on first use inside the try, so no failure
    # leaks it.
    scratch = PrivateScratch()
    creation = _Creation(backup, o, policy, scratch)
    try:
        archive: Path | None = None
        if o.create:
            rehearsed = await creation.plan(params, announce, started)
            if rehearsed is not None:
                return rehearsed
            params = await creation.create(emit)
            archive = creation.archive
        return await _restore_into(
            backup,
            params,
            policy,
            scratch,
            archive,
            creation.creating,
            o,
            announce=announce,
            emit=emit,
            started=started,
            compare_step=compare_step,
        )
    except BaseException as exc:
        await creation.undo(exc, emit)
        raise
    finally:
        creation.close()
        scratch.remove()


async def _opened(backup_dir: str | Path, o: RestoreOptions, emit: EventCallback) -> Backup:
    """The backup, its manifest checked, its keys given, every file checked first with
    --verify-first."""
    backup = await anyio.to_thread.run_sync(open_backup, backup_dir)
    if backup.encryption and not o.identities:
        raise UsageError(
            f"{backup.path} is encrypted (age, to {backup.encryption[0][:16]}...)",
            hint="give the matching secret key file with --identity",
        )
    if o.identities:
        backup = replace(backup, identities=o.identities)
    if o.verify_first:
        from ..verify import verify_backup

        checked = await anyio.to_thread.run_sync(
            lambda: verify_backup(backup, identities=list(backup.identities) or None)
        )
        if not checked.ok:
            raise VerificationFailed(
                f"verification failed: {checked.problems[0]}",
                hint="nothing was loaded; `asyncsnap verify` lists every problem",
            )
    for s in backup.skipped:
        emit(Notice(f"not in the backup: {s.describe()}"))
    return backup


class _Creation:
    """--create: the database made on a maintenance connection before the restore, and
    dropped again when the restore fails (running it again then starts over)."""

    def __init__(
        self, backup: Backup, o: RestoreOptions, policy: SessionPolicy, scratch: PrivateScratch
    ) -> None:
        self.backup, self.o, self.policy, self.scratch = backup, o, policy, scratch
        self.maintenance: asyncpg.Connection | None = None
        self.creating: restore_target.CreatePlan | None = None
        self.created = False
        self.archive: Path | None = None

    async def plan(
        self, params: ConnectParams, announce: Callable[[str], None], started: float
    ) -> RestoreResult | None:
        """Check and plan the new database; a dry run's result, or None to go on."""
        o, backup = self.o, self.backup
        restore_schema.check_options(
            backup, data_only=o.data_only, schema_only=o.schema_only, clean=o.clean, create=True
        )
        # The keys are checked before anything is created: an encrypted archive is
        # decrypted whole here (a wrong --identity fails now, exit 5).
        self.archive = await anyio.to_thread.run_sync(_staged_archive, backup, self.scratch)
        maintenance_session = Session(params, self.policy)
        self.maintenance = await maintenance_session.connect()
        self.params = maintenance_session.params  # where it went (pinned)
        self.creating = await _plan_create(
            self.maintenance,
            backup,
            self.params,
            self.policy,
            archive=self.archive,
            clean=o.clean,
            drop_database=o.drop_database,
            no_owner=o.no_owner,
            no_privileges=o.no_privileges,
        )
        lines = self.creating.describe()
        for line in lines:
            announce(line)
        if not o.dry_run:
            return None
        lines.append("then the backup's schema and rows are restored into it")
        return RestoreResult(
            plan=None, lines=lines, dry_run=True, seconds=time.monotonic() - started
        )

    async def create(self, emit: EventCallback) -> ConnectParams:
        """Make the database; the parameters that connect to it."""
        assert self.maintenance is not None and self.creating is not None
        creating = self.creating
        try:
            await restore_target.create(self.maintenance, creating)
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
            problem = await restore_target.drop_created(self.maintenance, self.creating.name)
        told = problem or f"database {self.creating.name}, made by this run, was dropped again"
        if isinstance(exc, AsyncsnapError):
            exc.hint = f"{exc.hint}; {told}" if exc.hint else told
        else:
            emit(Notice(told))

    def close(self) -> None:
        if self.maintenance is not None:
            self.maintenance.terminate()


async def _plan_create(
    maintenance: asyncpg.Connection,
    backup: Backup,
    params: ConnectParams,
    policy: SessionPolicy,
    *,
    archive: Path | None,
    clean: bool,
    drop_database: bool,
    no_owner: bool,
    no_privileges: bool,
) -> restore_target.CreatePlan:
    """What --create will do, every name it uses checked (``restore_target.plan_create``).

    :raises AsyncsnapError: as ``plan_create``; a server error as RestoreFailed.
    """
    assert backup.schema is not None
    name = restore_schema.database_name(backup)
    current = await maintenance.fetchval("SELECT pg_catalog.current_database()::pg_catalog.text")
    if name == current:
        raise UsageError(
            f"--create makes database {name}, and the connection is to it",
            hint="connect to another database of the server (e.g. postgres), as pg_restore -C",
        )
    tool, _ = await anyio.to_thread.run_sync(
        schema_tools.pick_pg_restore,
        backup.schema.pg_dump_major,
        int(maintenance.get_server_version().major),
    )
    local = archive or restore_schema.local_archive(backup)
    toc = await anyio.to_thread.run_sync(schema_tools.list_archive, tool, local)

    async def connect(database: str) -> asyncpg.Connection:
        return await Session(restore_schema.with_database(params, database), policy).connect()

    try:
        return await restore_target.plan_create(
            maintenance,
            backup,
            name=name,
            toc=toc,
            connect=connect,
            clean=clean,
            drop_database=drop_database,
            no_owner=no_owner,
            no_privileges=no_privileges,
        )
    except asyncpg.PostgresError as exc:
        raise RestoreFailed(f"cannot create the database: {exc}") from exc


async def _restore_into(
    backup: Backup,
    params: ConnectParams,
    policy: SessionPolicy,
    scratch: PrivateScratch,
    archive: Path | None,
    creating: restore_target.CreatePlan | None,
    o: RestoreOptions,
    *,
    announce: Callable[[str], None],
    emit: EventCallback,
    started: float,
    compare_step: CompareStep | None,
) -> RestoreResult:
    """The restore proper, into the database ``params`` names (made by --create when
    ``creating`` is set: its own properties are given once everything else is done)."""
    session = Session(params, policy)
    try:
        conn = await loading_connection(session)
    except DatabaseMissing as exc:
        exc.hint = (
            "create it first (createdb, or CREATE DATABASE), or pass --create and connect "
            "to another database of the server (e.g. postgres) to make it from the backup"
        )
        raise
    run = _RestoreRun(conn, session, backup, scratch, archive, creating, o, announce, emit)
    try:
        rehearsed = await run.load(started)
        if rehearsed is not None:
            return rehearsed
        return await run.finish(started, compare_step)
    finally:
        # The database stays held until here: after the compare and the properties.
        if not conn.is_closed():
            conn.terminate()


class _RestoreRun:
    """The restore into one database as a list of steps (``load``: hold the target,
    choose the kind, pre-data, rows, post-data; ``finish``: compare, the database's own
    properties), with what a failure's message needs to say what was committed."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        session: Session,
        backup: Backup,
        scratch: PrivateScratch,
        archive: Path | None,
        creating: restore_target.CreatePlan | None,
        o: RestoreOptions,
        announce: Callable[[str], None],
        emit: EventCallback,
    ) -> None:
        self.conn, self.session, self.backup = conn, session, backup
        self.scratch, self.archive, self.creating = scratch, archive, creating
        self.o, self.announce, self.emit = o, announce, emit
        self.plan: RestorePlan | None = None
        self.kind = "existing"
        self.results: list[RestoredTable] = []
        self.single = o.single_transaction
        self.lines: list[str] = []
        self.done = _Done([], 0, 0, 0)

    async def load(self, started: float) -> RestoreResult | None:
        """Everything that writes the target but its database's properties; a dry run's
        result, or None."""
        o, conn, backup = self.o, self.conn, self.backup
        try:
            # Before anything is looked at: one restore at a time into a database.
            await restore_target.hold_database(conn, self.session.target.database)
            chosen = {
                t.key for t in o.selection.apply([_as_catalog_table(t) for t in backup.tables])
            }
            self.kind, reason, replaced = await restore_schema.choose_kind(
                conn,
                backup,
                [t for t in backup.tables if t.key in chosen],
                filtered=o.selection.filters,
                data_only=o.data_only,
                schema_only=o.schema_only,
                clean=o.clean,
                create=o.create,
            )
            self.lines = [reason]
            steps = None
            if self.kind == "whole":
                steps = await self._schema_steps(replaced)
                if o.dry_run:
                    await restore_schema.pre_data(conn, steps, backup, rehearse=True)
                    return self._rehearsed(None, started)
                await self._pre_data(steps)
            if self.kind == "existing" and o.mode == "truncate" and not self.single:
                # TRUNCATE is only safe in the transaction that loads: a damaged file must
                # leave the old rows in place.
                self.single = True
                self.lines.append(
                    "--truncate: every table is emptied and loaded in one transaction"
                )
            if not o.schema_only and await self._rows(started):
                return self._rehearsed(self.plan, started)
            if steps is not None:
                await restore_schema.post_data(conn, self.session.params, steps, jobs=o.jobs)
                self.emit(Notice("post-data created"))
                if not o.schema_only:
                    await restore_schema.analyze(conn, backup)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"permission denied: {exc}",
                hint=self._committed() or "restore as the tables' owner or grant INSERT",
            ) from exc
        except asyncpg.PostgresError as exc:
            raise RestoreFailed(
                f"server error: {exc}",
                hint=self._committed() or getattr(exc, "hint", None) or "see the server log",
            ) from exc
        except AsyncsnapError as exc:
            told = self._committed(created=self.creating is not None)
            if told:
                exc.hint = f"{exc.hint}; {told}" if exc.hint else told
            raise
        return None

    def _committed(self, *, created: bool = False) -> str | None:
        return _committed(self.plan, self.results, self.single, self.kind, created=created)

    def _rehearsed(self, plan: RestorePlan | None, started: float) -> RestoreResult:
        seconds = time.monotonic() - started
        return RestoreResult(plan=plan, lines=self.lines, dry_run=True, seconds=seconds)

    async def _schema_steps(self, replaced: Any) -> restore_schema.SchemaSteps:
        """A whole restore's schema steps, said in words (its flags checked first)."""
        o, backup = self.o, self.backup
        if o.mode != "refuse" or o.single_transaction:
            flag = (
                "--single-transaction"
                if o.single_transaction
                else "--truncate"
                if o.mode == "truncate"
                else "--append"
            )
            raise UsageError(
                f"{flag} is for loading into existing tables; this restore creates them",
                hint="drop the flag (--clean replaces existing objects)",
            )
        steps = await restore_schema.plan_steps(
            backup,
            server_major=int(self.conn.get_server_version().major),
            clean=o.clean,
            create=self.creating.name if self.creating is not None else None,
            no_owner=o.no_owner,
            no_privileges=o.no_privileges,
            replaced=replaced,
            archive=self.archive
            or await anyio.to_thread.run_sync(_staged_archive, backup, self.scratch),
        )
        lines = steps.describe(o.jobs)
        if not o.schema_only:
            data_rows = sum(t.rows for t in backup.tables)
            data_tables = sum(1 for t in backup.tables if t.has_data)
            lines.append(
                f"then the rows of {count(data_tables, 'table')} "
                f"({count(data_rows, 'row')}), all at once: no constraint exists yet"
            )
        lines.append(steps.describe_post(o.jobs))
        if not o.schema_only:
            lines.append("then sequences, large objects and materialized views, then ANALYZE")
        for line in lines:
            self.announce(line)
        self.lines += lines
        return steps

    async def _pre_data(self, steps: restore_schema.SchemaSteps) -> None:
        o, backup = self.o, self.backup
        self.emit(
            RestoreStarted(
                tables=0 if o.schema_only else sum(1 for t in backup.tables if t.has_data),
                rows=0 if o.schema_only else sum(t.rows for t in backup.tables),
                jobs=o.jobs,
                target=str(self.session.target),
            )
        )
        await restore_schema.pre_data(self.conn, steps, backup)
        self.emit(Notice("pre-data created"))

    async def _rows(self, started: float) -> bool:
        """Plan and load the rows; True when this is a dry run (nothing loaded)."""
        o, conn, backup = self.o, self.conn, self.backup
        selection = o.selection
        plan = await _plan(
            conn,
            backup,
            selection,
            mode=o.mode,
            disable_triggers=o.disable_triggers,
            ignore_missing_columns=o.ignore_missing_columns,
            # whether --clean could take the database back instead (for hints)
            clean_applies=backup.schema is not None and not o.data_only and not selection.filters,
        )
        if self.kind == "whole" and o.clean:
            # pg_restore --clean replaces large objects too.
            plan = replace(plan, replace_large_objects=True)
        self.plan = plan
        if self.kind == "existing":
            described = plan.describe()
            self.lines += described
            for line in described:
                self.announce(line)
            if o.dry_run:
                return True
            self.emit(
                RestoreStarted(
                    tables=len(plan.loads),
                    rows=sum(ld.source.rows for ld in plan.loads),
                    jobs=1 if self.single else o.jobs,
                    target=str(self.session.target),
                )
            )
        if self.single:
            async with conn.transaction():
                self.done = await _run(
                    plan,
                    [conn],
                    backup,
                    self.emit,
                    self.results,
                    single_transaction=True,
                    mode=o.mode,
                )
        else:
            self.done = await _run_with_pool(
                plan, conn, self.session, backup, self.emit, self.results, jobs=o.jobs, mode=o.mode
            )
        return False

    async def finish(self, started: float, compare_step: CompareStep | None) -> RestoreResult:
        """The result; --compare's answer; the created database's own properties, last."""
        o, done, plan, creating = self.o, self.done, self.plan, self.creating
        result = RestoreResult(
            plan=plan,
            lines=self.lines,
            tables=done.tables,
            rows=sum(t.rows for t in done.tables),
            sequences=done.sequences,
            large_objects=done.large_objects,
            refreshed=done.refreshed,
            seconds=time.monotonic() - started,
            kind=self.kind,
            database=creating.name if creating is not None else None,
        )
        if o.compare and compare_step is not None and plan is not None:
            self.emit(Notice("comparing the restored tables with the backup"))
            only = (
                None if _restored_all(self.backup, plan) else {ld.source.key for ld in plan.loads}
            )
            comparison = await compare_step(
                self.backup,
                self.session.params,
                None if only is None else frozenset(only),
                o.jobs,
                self.emit,
            )
            result = replace(result, comparison=comparison)
        if creating is not None and creating.properties:
            # Last: settings, a connection limit or the ACL would apply to the restore's own
            # sessions (and pg_restore -C, which sets them first, fails on a database with
            # default_transaction_read_only).
            try:
                await restore_target.finish(self.conn, creating)
            except asyncpg.PostgresError as exc:
                raise RestoreFailed(
                    f"setting the properties of database {creating.name} failed: {exc}",
                    hint=getattr(exc, "hint", None),
                ) from exc
            self.emit(
                Notice(f"database {creating.name}: {creating.described.split('; then ')[-1]}")
            )
        self.emit(
            RestoreFinished(
                tables=len(result.tables),
                rows=result.rows,
                sequences=result.sequences,
                seconds=result.seconds,
            )
        )
        return result


def _restored_all(backup: Backup, plan: RestorePlan) -> bool:
    """Whether the plan loaded every table of the backup and its large objects."""
    loaded = {ld.source.key for ld in plan.loads}
    tables = all(t.key in loaded for t in backup.tables if t.has_data)
    return tables and (backup.large_objects is None or plan.large_objects > 0)


def _committed(
    plan: RestorePlan | None,
    results: list[RestoredTable],
    single: bool,
    kind: str,
    *,
    created: bool = False,
) -> str | None:
    """After a failure: which tables were committed and which not, and how to finish.
    Nothing for a database --create made: it is dropped again (``restore``)."""
    if plan is None or created or (not results and kind == "existing"):
        return None
    rerun = (
        "run the same restore with --clean to start over"
        if kind == "whole"
        else "run it again with --truncate (which loads in one transaction)"
    )
    if single:
        return f"nothing was committed (one transaction); {rerun}"
    loaded: dict[tuple[str, str], int] = {}
    for r in results:
        loaded[(r.schema, r.name)] = loaded.get((r.schema, r.name), 0) + r.rows
    full = [
        ld.target.qualified
        for ld in plan.loads
        if loaded.get(ld.target.key) == ld.source.rows and ld.target.key in loaded
    ]
    part = [
        ld.target.qualified
        for ld in plan.loads
        if ld.target.key in loaded and ld.target.qualified not in full
    ]
    rest = [ld.target.qualified for ld in plan.loads if ld.target.key not in loaded]
    said = [
        f"committed: {some_names(full) if full else 'none'}",
        *([f"partly committed (split files): {some_names(part)}"] if part else []),
        f"not loaded: {some_names(rest) if rest else 'none'}",
    ]
    return "; ".join(said) + f"; {rerun}"
