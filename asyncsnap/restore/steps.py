"""Restore as a list of steps, each a short call into its module. ``run_restore`` is
``asyncsnap.restore`` with its options gathered and checked once (``options``):

1. open and check the backup (``_opened``: its keys, every file first with
   --verify-first);
2. --create: plan and make the database (``create.Creation``), dropped again on failure;
3. in the target (``_RestoreRun.load``):
   a. hold it: one restore at a time (``target.hold_database``);
   b. choose the kind of restore (``target.choose_kind``; the rule is ``plan``'s);
   c. a whole restore: its schema steps said and checked (``schema.plan_steps``), then
      pre-data (``schema.pre_data``; a dry run rehearses it and stops);
   d. the rows: planned against the target as it is (``target.plan_rows``; a dry run
      of rows into existing tables stops here), loaded (``load.load_rows``), then the
      sequences (``finish``), the large objects (``load``), the materialized views
      (``finish``);
   e. a whole restore: post-data and ANALYZE (``finish.post_data``);
4. the result (``_RestoreRun.complete``): --compare's step when the API layer gives one
   (restore does not import analysis), the created database's own properties, last
   (``finish``).

A server's error becomes the restore's, with what was committed said in its hint
(``_RestoreRun._translated``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import asyncpg

from ..comparison import CompareResult
from ..connection import ConnectionSpec, ConnectParams, resolve
from ..errors import (
    AsyncsnapError,
    DatabaseMissing,
    PermissionDenied,
    RestoreFailed,
    UsageError,
    VerificationFailed,
    server_error,
)
from ..events import EventCallback, Notice, RestoreStarted
from ..format import Backup
from ..plan import TableKey
from ..scratch import PrivateScratch
from ..session import Session, SessionPolicy
from ..storage.chain import Chain, open_chain
from . import chain as restore_chain
from . import finish
from . import load as loading
from . import schema as restore_schema
from . import target as restore_target
from .create import CreatePlan, Creation
from .options import RestoreOptions
from .plan import (
    TRUNCATE_IN_ONE,
    RestorePlan,
    check_whole_flags,
    truncates_in_one_transaction,
    whole_restore_lines,
)
from .replay import TableReplay, plan_replays
from .result import RestoredTable, RestoreResult, committed, merge, restored_all

if TYPE_CHECKING:  # imported with --cluster only (its engine is an extra)
    from ..cluster import BackgroundCluster

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
    chain = await _opened(backup_dir, o, emit)
    backup = chain.full
    params = resolve(dsn)
    # The settings the values were rendered with are the ones to read them back with
    # (open_backup accepted them only as the documented values).
    policy = SessionPolicy(render=backup.settings)
    o.check_drop_database()
    # A schema archive that is encrypted or in a store is copied here for pg_restore (which
    # seeks in it) and removed after; made on first use inside the try, so no failure
    # leaks it.
    scratch = PrivateScratch()
    creation = Creation(backup, o, policy, scratch)
    try:
        if o.create:
            rehearsed = await creation.plan(params, announce, started)
            if rehearsed is not None:
                return rehearsed
            params = await creation.create(emit)
        into = _Target(backup, params, policy, scratch, creation.archive, creation.creating)
        into.chain = chain
        return await _restore_into(into, o, announce, emit, started, compare_step)
    except BaseException as exc:
        await creation.undo(exc, emit)
        raise
    finally:
        creation.close()
        scratch.remove()


async def _opened(backup_dir: str | Path, o: RestoreOptions, emit: EventCallback) -> Chain:
    """The backup (with, for an increment, its chain: each link checked), its manifest
    checked, its keys given, every file checked first with --verify-first."""
    chain = await anyio.to_thread.run_sync(open_chain, backup_dir)
    if o.to is not None:
        if not chain.increments:
            raise UsageError(
                "--to is for a chain: the backup given is a full backup",
                hint="give the chain's latest increment, and --to the point to stop at",
            )
        chain = chain.stop_at(o.to)
    if chain.increments and o.compare:
        raise UsageError(
            "--compare compares the rows with a backup's files, and a chain's end state is "
            "in no backup's files",
            hint="leave out --compare; dump the restored database to compare it",
        )
    opened = [await _keyed(b, o) for b in (chain.full, *chain.increments)]
    chain = Chain(full=opened[0], increments=tuple(opened[1:]), upto=chain.upto)
    for s in chain.full.skipped:
        emit(Notice(f"not in the backup: {s.describe()}"))
    return chain


async def _keyed(backup: Backup, o: RestoreOptions) -> Backup:
    """One backup of the chain with its keys, checked whole first with --verify-first."""
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
    return backup


class _Target:
    """Where the restore goes: the backup, the database ``params`` names (made by
    --create when ``creating`` is set), and the schema archive staged for pg_restore."""

    def __init__(
        self,
        backup: Backup,
        params: ConnectParams,
        policy: SessionPolicy,
        scratch: PrivateScratch,
        archive: Path | None,
        creating: CreatePlan | None,
    ) -> None:
        self.backup, self.params, self.policy = backup, params, policy
        self.scratch, self.archive, self.creating = scratch, archive, creating
        self.chain = Chain(full=backup, increments=())  # run_restore's, when a chain


async def _restore_into(
    into: _Target,
    o: RestoreOptions,
    announce: Callable[[str], None],
    emit: EventCallback,
    started: float,
    compare_step: CompareStep | None,
) -> RestoreResult:
    """The restore proper, into ``into``'s database (a created one's own properties are
    given once everything else is done)."""
    session = Session(into.params, into.policy)
    try:
        conn = await loading.loading_connection(session)
    except DatabaseMissing as exc:
        exc.hint = (
            "create it first (createdb, or CREATE DATABASE), or pass --create and connect "
            "to another database of the server (e.g. postgres) to make it from the backup"
        )
        raise
    run = _RestoreRun(conn, session, into, o, announce, emit)
    try:
        rehearsed = await run.load(started)
        if rehearsed is not None:
            return rehearsed
        return await run.complete(started, compare_step)
    finally:
        # The database stays held until here: after the compare and the properties.
        if not conn.is_closed():
            conn.terminate()


class _RestoreRun:
    """The restore into one database as a list of steps (``load``: hold the target,
    choose the kind, pre-data, rows, post-data; ``complete``: compare, the database's own
    properties), with what a failure's message needs to say what was committed."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        session: Session,
        into: _Target,
        o: RestoreOptions,
        announce: Callable[[str], None],
        emit: EventCallback,
    ) -> None:
        self.conn, self.session, self.into, self.backup = conn, session, into, into.backup
        self.creating = into.creating
        self.o, self.announce, self.emit = o, announce, emit
        self.plan: RestorePlan | None = None
        self.kind = "existing"
        self.results: list[RestoredTable] = []  # as each unit commits (for failures)
        self.single = o.single_transaction
        self.lines: list[str] = []
        self.sequences = self.large_objects = self.refreshed = self.changes = 0
        self.replays: dict[TableKey, TableReplay] = {}  # a chain's tables replayed as loaded
        self.cluster: BackgroundCluster | None = None  # with --cluster (``_cluster_if_any``)

    async def load(self, started: float) -> RestoreResult | None:
        """Everything that writes the target but its database's properties; a dry run's
        result, or None."""
        with self._translated():
            # Before anything is looked at: one restore at a time into a database.
            await restore_target.hold_database(self.conn, self.session.target.database)
            async with self._cluster_if_any():
                return await self._steps(started)

    @contextlib.asynccontextmanager
    async def _cluster_if_any(self) -> AsyncIterator[None]:
        """With --cluster (rows to load, not a dry run): the cluster started in the
        background as the restore begins, its workers starting while this plans and
        creates tables (``self.cluster``); asked to close once the rows are loaded
        (``_load``), and closed by the block's end, however it ends."""
        o = self.o
        if o.cluster is None or o.dry_run or o.schema_only:
            yield
            return
        from ..cluster import ClusterAddress, background_cluster

        address = ClusterAddress.parse(o.cluster)
        async with background_cluster(address, self.session.params) as self.cluster:
            yield

    async def _steps(self, started: float) -> RestoreResult | None:
        """``load``'s steps, once the target is held (and the cluster starting)."""
        o, conn, backup = self.o, self.conn, self.backup
        chain = self.into.chain
        if chain.increments:
            if o.schema_only:
                raise UsageError(
                    "--schema-only restores no rows, and a chain's increments are rows",
                    hint="give the chain's full backup, or leave out --schema-only",
                )
            await restore_chain.check_can_apply(conn)
        self.kind, reason, replaced = await restore_target.choose_kind(conn, backup, o)
        self.lines = [reason, *chain.describe()]
        steps = None
        if self.kind == "whole":
            steps = await self._schema_steps(replaced)
            if o.dry_run:
                await restore_schema.pre_data(conn, steps, backup, rehearse=True)
                return self._rehearsed(None, started)
            await self._pre_data(steps)
        if truncates_in_one_transaction(self.kind, o):
            self.single = True
            self.lines.append(TRUNCATE_IN_ONE)
        if not o.schema_only and await self._rows():
            return self._rehearsed(self.plan, started)
        if steps is not None:
            await finish.post_data(
                conn,
                self.session.params,
                steps,
                backup,
                self.emit,
                jobs=o.jobs,
                schema_only=o.schema_only,
            )
        if chain.increments:
            await self._apply(chain)
        return None

    async def _apply(self, chain: Chain) -> None:
        """The chain's increments, once the full backup is restored (its indexes, which
        find each changed row, are there), unless they were replayed as its rows loaded;
        then the last increment's sequences."""
        assert self.plan is not None
        if self.replays:  # every table's, as its rows loaded
            for number, increment in enumerate(chain.increments):
                changes = sum(r.counts[number] for r in self.replays.values())
                restore_chain.said_applied(increment, changes, self.emit)
                self.changes += changes
        else:
            # The target's triggers and rules as they are now (post-data made them).
            loads = await restore_target.with_switches(self.conn, self.plan.loads, self.o.mode)
            self.changes = await restore_chain.apply_increments(self.conn, chain, loads, self.emit)
        last = chain.increments[-1]
        wanted = {(s[0], s[1]) for s in self.plan.sequences}
        sequences = [
            (s.schema, s.name, s.last_value, s.is_called)
            for s in last.sequences
            if (s.schema, s.name) in wanted
        ]
        self.sequences = await finish.set_sequences(
            self.conn, replace(self.plan, sequences=sequences), self.emit
        )
        if not self.replays:  # refreshed on the chain's end state, not the full backup's
            self.refreshed = await finish.refresh_views(self.conn, self.plan, self.emit)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """A server's error as the restore's (permission denied, or a failure), and with
        any error, what was committed and how to finish."""
        try:
            yield
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"permission denied: {exc}",
                hint=self._committed() or "restore as the tables' owner or grant INSERT",
            ) from exc
        except asyncpg.PostgresError as exc:
            message, hint = server_error(exc, "restore fewer tables at once (-t/-T)")
            raise RestoreFailed(f"server error: {message}", hint=self._committed() or hint) from exc
        except AsyncsnapError as exc:
            told = self._committed(created=self.creating is not None)
            if told:
                exc.hint = f"{exc.hint}; {told}" if exc.hint else told
            raise

    def _committed(self, *, created: bool = False) -> str | None:
        return committed(self.plan, self.results, self.single, self.kind, created=created)

    def _say(self, lines: list[str]) -> None:
        """Lines of the plan: in the result, and logged as they come on a real run."""
        for line in lines:
            self.announce(line)
        self.lines += lines

    def _rehearsed(self, plan: RestorePlan | None, started: float) -> RestoreResult:
        seconds = time.monotonic() - started
        return RestoreResult(plan=plan, lines=self.lines, dry_run=True, seconds=seconds)

    async def _schema_steps(self, replaced: list[str]) -> restore_schema.SchemaSteps:
        """A whole restore's schema steps, said in words (its flags checked first)."""
        o, backup, into = self.o, self.backup, self.into
        check_whole_flags(o)
        steps = await restore_schema.plan_steps(
            backup,
            server_major=int(self.conn.get_server_version().major),
            clean=o.clean,
            create=self.creating.name if self.creating is not None else None,
            no_owner=o.no_owner,
            no_privileges=o.no_privileges,
            replaced=replaced,
            archive=into.archive
            or await anyio.to_thread.run_sync(restore_schema.staged_archive, backup, into.scratch),
        )
        pre, post = steps.describe(o.jobs), steps.describe_post(o.jobs)
        self._say(whole_restore_lines(pre, post, backup, schema_only=o.schema_only))
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

    async def _rows(self) -> bool:
        """Plan and load the rows; True when this is a dry run (nothing loaded)."""
        o = self.o
        self.plan = plan = await restore_target.plan_rows(self.conn, self.backup, o, kind=self.kind)
        retyped = [
            ld.target.qualified
            for ld in plan.loads
            if ld.retyped
            # or a column generated at the source written here: changes do not carry it
            or any(c.generated and c.name in ld.columns for c in ld.source.columns)
        ]
        if self.into.chain.increments and retyped:
            # A full restore checks every value its type here would change (a staging
            # table); changes are applied straight into the table, unchecked.
            raise UsageError(
                f"{retyped[0]} has columns of other types or kinds than the chain's: a "
                "chain's changes are restored only into tables of its own definition",
                hint="restore into tables made from the backup (a whole restore), or give "
                "the full backup alone",
            )
        if self.kind == "existing":
            self._say(plan.describe())
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
            async with self.conn.transaction():
                await self._load(plan)
        else:
            await self._load(plan)
        return False

    async def _load(self, plan: RestorePlan) -> None:
        """The rows, then the sequences, the large objects and the materialized views (in
        the caller's transaction with --single-transaction)."""
        o, conn, backup, emit = self.o, self.conn, self.backup, self.emit
        if o.cluster is None:
            chain = self.into.chain
            if chain.increments and o.mode != "append":
                # the tables' rows are the full backup's: changes replay as they load
                self.replays = await anyio.to_thread.run_sync(plan_replays, chain, plan.loads)
            await loading.load_rows(
                plan,
                conn,
                self.session,
                backup,
                emit,
                self.results,
                jobs=o.jobs,
                mode=o.mode,
                single=self.single,
                replays=self.replays,
            )
        else:
            from .spread import load_rows_on_cluster

            assert self.cluster is not None
            await load_rows_on_cluster(
                plan,
                self.session,
                backup,
                emit,
                self.results,
                self.cluster,
                o.identity_file,
                o.mode,
                conn,
            )
            self.cluster.close()  # in the background, while the rest goes on
        self.sequences = await finish.set_sequences(conn, plan, emit)
        self.large_objects = await loading.load_large_objects(
            conn, plan, backup, emit, mode=o.mode, single=self.single
        )
        if not self.into.chain.increments or self.replays:
            self.refreshed = await finish.refresh_views(conn, plan, emit)
        # else once a chain's changes are applied (``_apply``): the views read their rows

    async def complete(self, started: float, compare_step: CompareStep | None) -> RestoreResult:
        """The result; --compare's answer; the created database's own properties, last."""
        tables = merge(self.results)
        result = RestoreResult(
            plan=self.plan,
            lines=self.lines,
            tables=tables,
            rows=sum(t.rows for t in tables),
            sequences=self.sequences,
            large_objects=self.large_objects,
            refreshed=self.refreshed,
            increments=len(self.into.chain.increments),
            changes=self.changes,
            seconds=time.monotonic() - started,
            kind=self.kind,
            database=self.creating.name if self.creating is not None else None,
        )
        if self.o.compare and compare_step is not None and self.plan is not None:
            result = replace(result, comparison=await self._compare(compare_step, self.plan))
        if self.creating is not None:
            await finish.database_properties(self.conn, self.creating, self.emit)
        return finish.report(result, self.emit)

    async def _compare(self, compare_step: CompareStep, plan: RestorePlan) -> CompareResult:
        """restore --compare, while the target is still held: every table, or only the
        ones loaded."""
        self.emit(Notice("comparing the restored tables with the backup"))
        only = (
            None
            if restored_all(self.backup, plan)
            else frozenset(ld.source.key for ld in plan.loads)
        )
        return await compare_step(self.backup, self.session.params, only, self.o.jobs, self.emit)
