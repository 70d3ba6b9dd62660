"""``restore --cluster``: the rows loaded by a Dask cluster's workers.

What is spread: the rows only, the same units as ``-j`` (a table, one file of a split
table, or the tables of a foreign-key cycle), each a task that opens its own connection
to the target with the restore's session policy, reads its files where the backup is (an
object store, or a directory the workers share) and loads them in one transaction of its
own (``load._load_unit``, the local path's code). Level by level, parents before
children; within a level, a split table's first file (whose transaction checks the table
is empty) before its others. Until a local cluster is up, the restore's own connection
loads the units in turn (``_load_here``), as ``-j`` would: its workers are this machine's
processes, with this one's files and environment, and their check that they read the
backup comes once they are up. The schema before and after, the sequences, the large
objects and a chain's changes stay on this machine's connection.

What is not: ``--single-transaction`` and ``--truncate`` (one transaction on one
connection), refused by ``options.RestoreOptions``. As with ``-j``, a failure leaves the
units already committed; the restore fails and says so. Dask cannot stop a running task:
the workers are told the restore stopped (``cluster.run_tasks`` with ``settle``), each
unit then running rolls back at its next check (its load's events, its last step before
the COMMIT) or, when its COMMIT was already under way, returns what it committed, and the
restore waits for those answers (at most 10 s) before it reports.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
import asyncpg

from ..cluster import (
    BackgroundCluster,
    cancellation_check,
    guarded,
    run_tasks,
    without_password,
)
from ..connection import ConnectParams
from ..errors import UsageError, most_telling
from ..events import ChunkFinished, ChunkStarted, EventCallback
from ..format import Backup
from ..session import Session, SessionPolicy
from ..storage.backup import open_backup
from .load import _load_unit, file_label, loading_connection
from .options import Mode
from .plan import RestorePlan, Unit, units
from .result import RestoredTable


def load_unit_task(
    location: str,
    identity_file: str | None,
    unit: Unit,
    params: ConnectParams,
    policy: SessionPolicy,
) -> list[RestoredTable]:
    """On a worker: one unit loaded in a transaction of its own, on a connection of its
    own; the backup opened where it is, the key read from ``identity_file`` here."""

    stop_if_cancelled = cancellation_check()
    stop_if_cancelled()  # sent just as its restore failed

    async def go() -> list[RestoredTable]:
        backup = open_backup(location)
        if identity_file is not None and backup.encryption:
            from ..storage.encryption import load_identities

            backup = replace(backup, identities=tuple(load_identities(identity_file)))
        conn = await loading_connection(Session(params, policy))
        try:
            # Events stay here, but each asks whether the restore still wants this unit,
            # and so does the last step before the commit: a cancelled unit rolls back.
            return await _load_unit(
                conn,
                unit,
                backup,
                lambda event: stop_if_cancelled(),
                own_transaction=True,
                before_commit=stop_if_cancelled,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    return asyncio.run(go())


def sees_backup(location: str, checksum: str | None) -> bool:
    """On a worker: whether the backup at ``location`` is there, the same one (its
    manifest's checksum)."""
    try:
        return open_backup(location).manifest.checksum == checksum
    except Exception:
        return False


def _location(backup: Backup) -> str:
    """Where workers find the backup: its store URL, or its directory's absolute path."""
    return backup.path if isinstance(backup.path, str) else os.path.abspath(backup.path)


def _label(unit: Unit) -> str:
    first = unit.loads[0].source.qualified
    if unit.file_index is not None:
        return file_label(unit.loads[0], unit.file_index)
    if len(unit.loads) == 1:
        return first
    return (
        f"{first} and its cycle"
        if unit.cycle is not None
        else f"{first} and {len(unit.loads) - 1} more"
    )


async def load_rows_on_cluster(
    plan: RestorePlan,
    session: Session,
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    running: BackgroundCluster,
    identity_file: str | None,
    mode: Mode,
    conn: asyncpg.Connection,
) -> None:
    """The plan's rows, each unit a task on the cluster ``running`` (started as the
    restore began); until it is up, units loaded on the restore's own connection ``conn``
    (``_load_here``)."""
    params, _ = without_password(session.params)
    task = (identity_file, params, session.policy)
    workers = _Workers(running, _location(backup), backup.manifest.checksum)
    for level in plan.levels:
        level_units = units(plan, level, split_files=True, checks=mode == "refuse")
        # A split table's first file checks the table is empty; its others follow.
        first = [u for u in level_units if u.after is None]
        later = [u for u in level_units if u.after is not None]
        for phase in (first, later):
            pending = collections.deque(phase)
            try:
                async with anyio.create_task_group() as tg:
                    if workers.starting_here:
                        tg.start_soon(_load_here, conn, pending, workers, backup, emit, results, tg)
                    client = await workers.client()
                    given = list(pending)  # from now on, every unit is the cluster's
                    pending.clear()
                    await _run_phase(client, given, workers.location, task, emit, results)
            except BaseExceptionGroup as group:
                raise most_telling(group) from None


class _Workers:
    """The cluster's workers as the restore's rows see them: ``started`` once its client
    is ready (units taken from then on are theirs), ``checked`` once every worker said it
    reads the backup where this restore found it."""

    def __init__(self, running: BackgroundCluster, location: str, checksum: str | None) -> None:
        self.running, self.location, self.checksum = running, location, checksum
        self.started = False
        self.checked = False

    @property
    def starting_here(self) -> bool:
        """Whether units load here meanwhile (``_load_here``): while a local cluster
        starts (its processes import Dask, about half a second of two cores). A cluster of
        one's own is running already: its client is ready as soon as it connects."""
        return self.running.address.local_workers is not None and not self.started

    async def client(self) -> Any:
        """The client, once the cluster is up and its workers read the backup.

        :raises UsageError: a worker cannot read it."""
        client = await self.running.ready()
        self.started = True
        if not self.checked:
            seen = await client.run(sees_backup, self.location, self.checksum)
            blind = sorted(worker for worker, ok in seen.items() if not ok)
            if not seen or blind:
                raise UsageError(
                    f"worker {blind[0] if blind else '(none)'} cannot read the backup at "
                    f"{self.location}: with --cluster, workers read the files themselves",
                    hint="keep the backup in an object store, or in a directory every "
                    "worker mounts at the same path",
                )
            self.checked = True
        return client


async def _load_here(
    conn: asyncpg.Connection,
    pending: collections.deque[Unit],
    workers: _Workers,
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    phase: anyio.abc.TaskGroup,
) -> None:
    """While a local cluster starts (about half a second, which the target's server would
    otherwise spend waiting): the phase's units, one after another, on the restore's
    own connection, as a local restore loads them. When none is left before the cluster
    is up, the phase is done: its wait for the cluster ends (the ``phase`` cancelled, this
    its last task)."""
    while pending and workers.starting_here:
        unit = replace(pending.popleft(), after=None)  # its phase follows the first file's
        results.extend(await _load_unit(conn, unit, backup, emit, own_transaction=True))
    if not workers.started:  # the cluster took nothing of this phase
        phase.cancel_scope.cancel()


async def _run_phase(
    client: Any,
    phase: Sequence[Unit],
    location: str,
    task: tuple[str | None, ConnectParams, SessionPolicy],
    emit: EventCallback,
    results: list[RestoredTable],
) -> None:
    """One phase of a level: its units as tasks, each result kept as it comes."""
    identity_file, params, policy = task
    if not phase:
        return
    futures = []
    units_by_key = {}
    prefix = f"asyncsnap-load-{secrets.token_hex(6)}-"  # every task's key: its index after it
    for i, unit in enumerate(phase):
        sent = replace(unit, checked=None, after=None)  # events stay here
        emit(ChunkStarted(label=_label(unit), est_rows=unit.rows, verb="loading"))
        future = client.submit(
            guarded,
            load_unit_task,
            location,
            identity_file,
            sent,
            params,
            policy,
            key=f"{prefix}{i}",
            pure=False,
        )
        futures.append(future)
        units_by_key[future.key] = unit

    def loaded(key: str, found: list[RestoredTable]) -> None:
        results.extend(found)
        # The worker's own figures: a unit's tables load one after another in its task.
        emit(
            ChunkFinished(
                label=_label(units_by_key[key]),
                rows=sum(r.rows for r in found),
                bytes=sum(r.bytes for r in found),
                stored_bytes=0,
                seconds=sum(r.seconds for r in found),
                verb="loaded",
            )
        )

    labels = {key: _label(unit) for key, unit in units_by_key.items()}
    # After a failure, no unit still loading: what the failure says was committed stays so.
    await run_tasks(
        client,
        futures,
        labels,
        loaded,
        doing="loading",
        prefix=prefix,
        emit=emit,
        settle=True,  # a unit committing as the failure came is still reported
    )
