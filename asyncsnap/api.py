"""The library's commands as users call them (``asyncsnap.restore`` ...): each gathers its
options once and composes the library's steps; a command that uses another (``restore
--compare`` runs ``compare``) is composed here, so the library's modules need not import
each other's commands."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .analysis.compare import compare as compare_with_database
from .comparison import CompareResult
from .connection import ConnectionSpec, ConnectParams
from .events import EventCallback
from .format import Backup
from .restore.options import Mode, RestoreOptions
from .restore.result import RestoreResult
from .restore.steps import run_restore


async def restore(
    backup_dir: str | Path,
    dsn: str | ConnectionSpec | None = None,
    *,
    jobs: int = 2,
    tables: Iterable[str] = (),
    exclude_tables: Iterable[str] = (),
    schemas: Iterable[str] = (),
    exclude_schemas: Iterable[str] = (),
    mode: Mode = "refuse",
    single_transaction: bool = False,
    disable_triggers: bool = False,
    verify_first: bool = False,
    ignore_missing_columns: bool = False,
    clean: bool = False,
    create: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
    schema_only: bool = False,
    data_only: bool = False,
    dry_run: bool = False,
    drop_database: bool = False,
    identities: Sequence[Any] = (),
    compare: bool = False,
    to: str | None = None,
    cluster: str | None = None,
    identity_file: str | None = None,
    on_event: EventCallback | None = None,
) -> RestoreResult:
    """Restore a backup into the database ``dsn`` points at: the whole of it (schema and
    rows) into a database without its tables, or its rows into existing tables (the rule
    is in ``asyncsnap.restore.schema``; ``--dry-run`` shows which).

    :param backup_dir: a complete backup directory (with its manifest).
    :param dsn: target, a connection string or a ``ConnectionSpec`` (a string with
        -h/-p/-U style overrides); ``None`` uses ``$DATABASE_URL``, ``./.env``, then ``PG*``. With
        ``create``, a database of the server to connect to first (e.g. ``postgres``).
    :param jobs: connections loading at once (tables of one level run in parallel), and
        pg_restore's ``-j`` for post-data.
    :param tables, exclude_tables, schemas, exclude_schemas: -t/-T/-n/-N patterns, as
        for dump, applied to the backup's tables (rows into existing tables only).
    :param mode: ``"refuse"`` non-empty targets (default), ``"truncate"`` them first (in
        the same transaction as the load: everything then loads in one transaction), or
        ``"append"``.
    :param single_transaction: everything in one transaction on one connection.
    :param disable_triggers: disable the triggers (and so foreign-key checks) of tables in
        a foreign-key cycle while loading them.
    :param verify_first: check every file completely before touching the database.
    :param ignore_missing_columns: drop backup columns the target lacks, not an error.
    :param clean: drop the backup's objects (that exist) and re-create them, as
        pg_restore --clean: "the migration went wrong, take me back".
    :param create: create the backup's database (named as the source) and restore into it,
        with the source database's owner, privileges, settings and comment, as pg_restore
        -C; with ``clean``, replace it when it exists. A failed --create drops the
        database it made.
    :param drop_database: with ``create`` and ``clean``: replace the database even when it
        holds relations the backup does not (otherwise refused, naming them).
    :param no_owner, no_privileges: leave out ownership and GRANTs (a server without the
        source's roles).
    :param schema_only, data_only: only the schema, or only the rows.
    :param dry_run: plan and report, change nothing; a whole restore's schema is run and
        rolled back, so its errors show.
    :param to: for a chain (``backup_dir`` an increment): stop at this backup of it (a
        name), or at this WAL position (``X/Y``: the transactions committed before it).
    :param cluster: load the rows on a Dask cluster (``asyncsnap.cluster``: a scheduler's
        address or ``local:N``), a table or a split table's file a task in its own
        transaction; the schema, sequences, large objects and a chain's changes on this
        machine. Not with ``single_transaction`` or ``mode="truncate"``. The workers read
        the backup where it is (an object store, or a directory they share) and an
        encrypted backup's key from ``identity_file``, a path each worker reads.
    :param compare: after the restore, compare the restored tables with the backup
        (``asyncsnap.compare``; the result is ``comparison``: the caller decides what a
        difference means).

    Example::

        anyio.run(lambda: asyncsnap.restore("backups/backup_20261124T021500Z",
                                            "postgresql:///shop_copy", jobs=4))
    """
    options = RestoreOptions.build(
        jobs=jobs,
        tables=tables,
        exclude_tables=exclude_tables,
        schemas=schemas,
        exclude_schemas=exclude_schemas,
        mode=mode,
        single_transaction=single_transaction,
        disable_triggers=disable_triggers,
        verify_first=verify_first,
        ignore_missing_columns=ignore_missing_columns,
        clean=clean,
        create=create,
        no_owner=no_owner,
        no_privileges=no_privileges,
        schema_only=schema_only,
        data_only=data_only,
        dry_run=dry_run,
        drop_database=drop_database,
        identities=identities,
        compare=compare,
        to=to,
        cluster=cluster,
        identity_file=identity_file,
    )
    return await run_restore(
        backup_dir,
        dsn,
        options,
        on_event=on_event,
        compare_step=_compare_restored if compare else None,
    )


async def _compare_restored(
    backup: Backup,
    params: ConnectParams,
    only: frozenset[tuple[str, str]] | None,
    jobs: int,
    emit: EventCallback,
) -> CompareResult:
    """restore --compare: the restored tables (all of them, or ``only``) against the
    backup, read while the restore still holds the target."""
    return await compare_with_database(backup, params, jobs=jobs, only=only, on_event=emit)
