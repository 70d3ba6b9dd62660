"""``asyncsnap restore``: options, then ``asyncsnap.restore`` through the envelope."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import AsyncsnapError, NotEqual, UsageError
from ..text import count
from .options import (
    BackupArgument,
    DbnameOption,
    DebugOption,
    DsnArgument,
    EndpointOption,
    ExcludeSchemaOption,
    ExcludeTableOption,
    HostOption,
    IdentityOption,
    LogFormatOption,
    NoPasswordOption,
    PasswordPromptOption,
    PortOption,
    SchemaOption,
    SummaryOption,
    TableOption,
    UserOption,
    connection_spec,
    jobs_option,
    quiet_option,
)

if TYPE_CHECKING:
    from ..events import Event
    from ..restore.result import RestoreResult
    from .envelope import Envelope

SHORT_HELP = "Load a backup into a database: schema and rows, or rows."


def restore_command(
    backup_dir: BackupArgument,
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    jobs: Annotated[int, jobs_option("Connections loading.")] = 2,
    table: TableOption = None,
    exclude_table: ExcludeTableOption = None,
    schema: SchemaOption = None,
    exclude_schema: ExcludeSchemaOption = None,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="Empty the selected tables first.")
    ] = False,
    append: Annotated[bool, typer.Option("--append", help="Add to rows already there.")] = False,
    single_transaction: Annotated[
        bool, typer.Option("--single-transaction", help="All or nothing, on one connection.")
    ] = False,
    disable_triggers: Annotated[
        bool, typer.Option("--disable-triggers", help="Disable triggers (FK checks) while loading.")
    ] = False,
    verify_first: Annotated[
        bool, typer.Option("--verify-first", help="Check every file before loading anything.")
    ] = False,
    ignore_missing_columns: Annotated[
        bool,
        typer.Option("--ignore-missing-columns", help="Drop backup columns the target lacks."),
    ] = False,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean",
            help="Drop the backup's objects that exist, then re-create them and load the rows "
            "(take a database back to the backup).",
        ),
    ] = False,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Create the backup's database (named as the source; connect to another "
            "database of the server, e.g. postgres) with its owner, privileges, settings "
            "and comment, and restore into it; with --clean, replace it.",
        ),
    ] = False,
    drop_database: Annotated[
        bool,
        typer.Option(
            "--drop-database",
            help="With --create --clean: replace the database even when it holds tables, "
            "views or sequences the backup does not (refused otherwise, naming them).",
        ),
    ] = False,
    no_owner: Annotated[
        bool, typer.Option("--no-owner", help="Do not give objects their source owners.")
    ] = False,
    no_privileges: Annotated[
        bool, typer.Option("--no-privileges", help="Do not restore GRANTs and REVOKEs.")
    ] = False,
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="Only the schema, no rows.")
    ] = False,
    data_only: Annotated[
        bool, typer.Option("--data-only", help="Only the rows, into existing tables.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan and change nothing (the schema is run and rolled back, so "
            "its errors show).",
        ),
    ] = False,
    compare_after: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Then compare the restored tables with the backup (as asyncsnap compare); "
            "exit 7 if they differ.",
        ),
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="POINT",
            help="For a chain (BACKUP an increment): stop at POINT, a backup of it (its name), "
            "or a WAL position (X/Y: what committed before it).",
        ),
    ] = None,
    identity: IdentityOption = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="ADDRESS",
            help="Load the rows on a Dask cluster's workers (tcp://host:8786 or local:N), a "
            "table or file a task; the schema and the rest here. Not with "
            "--single-transaction or --truncate (needs the cluster extra).",
        ),
    ] = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, quiet_option()] = False,
    log_format: LogFormatOption = "text",
    summary_json: SummaryOption = None,
    debug: DebugOption = False,
) -> None:
    """Restore a backup: into an empty database, schema and rows; into existing tables,
    the rows (parents before children).

    The target is given as for dump (DSN or -d, -h, -p, -U). Without --clean, --create or
    --data-only, the schema is created when none of its tables exist, and rows go into
    existing tables only when they are empty; --dry-run prints what would happen. Exit
    codes as for dump (5: the backup failed its checks; nothing was loaded; 6: another
    restore is running into the database).

    \b
    Examples:
      # After a failed migration: take the database back to the backup
      asyncsnap restore /backups/before-migration-42 -h db.internal -U app -d shop --clean
      # After a benchmark run: the rows of the order tables back as they were
      asyncsnap restore /backups/bench-before -d shop -t 'public.order*' --data-only --truncate
      # Test last night's backup: a new database named as the source, on another server,
      # then prove it holds exactly the backup's rows
      asyncsnap restore /backups/backup_20261124T021500Z -h db.internal -U app -d postgres --create --compare
    """  # noqa: E501 (an example is one line: the help test runs it as written)
    from ..api import restore
    from ..storage.encryption import load_identities
    from .envelope import Envelope, renderers, summary_base, use_endpoint

    env = Envelope(
        debug=debug,
        dsn=dsn,
        log_format=log_format,
        summary_json=summary_json,
        outcome=summary_base("restore", backup=str(backup_dir), dry_run=dry_run),
    )
    with env.guard(AsyncsnapError):
        if truncate and append:
            raise UsageError("--truncate and --append exclude each other", hint="choose one")
        use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        env.dsn = connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    live, render = renderers(quiet and not dry_run, log_format)
    work = partial(
        restore,
        backup_dir,
        connection,
        jobs=jobs,
        tables=table or (),
        exclude_tables=exclude_table or (),
        schemas=schema or (),
        exclude_schemas=exclude_schema or (),
        mode="truncate" if truncate else "append" if append else "refuse",
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
        compare=compare_after,
        to=to,
        cluster=cluster,
        identity_file=identity,
        on_event=partial(_note_target, env.outcome, render),
    )
    left = (
        "nothing was loaded (one transaction)"
        if single_transaction
        else "tables already committed stay loaded, the rest was rolled back"
    )
    result = env.run(work, live, left=left)
    _check_comparison(env, result, backup_dir)
    env.succeed(**_summary(result))
    if env.json_log is None:
        _render(result, dry_run=dry_run)


def _note_target(outcome: dict[str, object], render: Callable[[Event], None], event: Event) -> None:
    """Passes each event to the renderer, noting for the summary the target it names."""
    from ..events import RestoreStarted

    if isinstance(event, RestoreStarted):
        outcome["target"] = event.target
    render(event)


def _check_comparison(env: Envelope, result: RestoreResult, backup_dir: str) -> None:
    """--compare: a database that does not hold exactly the backup's rows fails the
    restore (exit 7), its first difference in the error line."""
    from .reports import describe_differences

    comparison = result.comparison
    differences = describe_differences(comparison) if comparison is not None else []
    if differences:
        not_equal = NotEqual(
            f"restored, but the database does not hold exactly the backup's rows: {differences[0]}",
            hint=f"{count(len(differences), 'difference')}; `asyncsnap compare "
            f"{backup_dir} ...` lists them all",
        )
        raise env.failure(not_equal) from None


def _summary(result: RestoreResult) -> dict[str, object]:
    """--summary-json's result fields of a restore that succeeded."""
    return {
        "tables": len(result.tables),
        "rows": result.rows,
        "sequences": result.sequences,
        "large_objects": result.large_objects,
        "refreshed": result.refreshed,
        "increments": result.increments,
        "changes": result.changes,
        "seconds": round(result.seconds, 3),
    }


def _render(result: RestoreResult, *, dry_run: bool) -> None:
    """The plan (--dry-run), or the summary line: stdout's promised line, --quiet or not
    (it quiets stderr); with --compare, the comparison's line after it."""
    if dry_run:
        for line in result.lines:
            typer.echo(line)
        return
    extra = f", {count(result.large_objects, 'large object')}" if result.large_objects else ""
    if result.refreshed:
        extra += f", {count(result.refreshed, 'materialized view')} refreshed"
    if result.increments:
        extra += (
            f", then {count(result.increments, 'increment')} applied "
            f"({count(result.changes, 'change')})"
        )
    typer.echo(
        f"restored {count(len(result.tables), 'table')}, {count(result.rows, 'row')}, "
        f"{count(result.sequences, 'sequence')}{extra} in {result.seconds:.2f}s"
    )
    if result.comparison is not None:
        from .reports import summary_line

        typer.echo(summary_line(result.comparison))
