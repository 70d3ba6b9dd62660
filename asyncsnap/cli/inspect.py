"""``asyncsnap inspect``: opens the backup through the envelope, prints its report."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from ..errors import AsyncsnapError, UsageError
from .options import (
    BackupArgument,
    DbnameOption,
    DebugOption,
    EndpointOption,
    HostOption,
    NoPasswordOption,
    PasswordPromptOption,
    PortOption,
    UserOption,
    connection_spec,
)

SHORT_HELP = "Summarise a backup."


def inspect_command(
    backup_dir: BackupArgument,
    endpoint_url: EndpointOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    sql: Annotated[
        Literal["duckdb"] | None,
        typer.Option(
            "--sql",
            metavar="ENGINE",
            help="Print SQL for ENGINE (duckdb) that reads every table with exact types.",
            show_default=False,
        ),
    ] = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    debug: DebugOption = False,
) -> None:
    """Summarise a backup: snapshot, server, tables, rows, sizes, restore order.

    A backup of a chain (dump --slot, dump --since) with -d DB: also its slot on that
    server now: how much WAL it holds, and whether dump --since this backup would work
    (nothing is changed on the server).

    With --sql duckdb, print instead one DuckDB view per table, reading the backup's
    files with the manifest's types (numeric as DECIMAL, bytea as BLOB, jsonb as JSON...;
    docs/format.md "Reading with exact types").

    \b
    Examples:
      asyncsnap inspect /backups/before-migration-42
      asyncsnap inspect /backups/before-migration-42 --json | jq .totals
      # Query a backup with exact types in DuckDB
      asyncsnap inspect /backups/before-migration-42 --sql duckdb > views.sql
      # How much WAL does the chain's slot hold, and can this backup be followed?
      asyncsnap inspect /backups/inc-1 -d shop
    """
    from ..storage.backup import open_backup
    from .envelope import Envelope, use_endpoint

    slot_now = None
    env = Envelope(debug=debug)
    with env.guard(AsyncsnapError):
        use_endpoint(endpoint_url)
        backup = open_backup(backup_dir, increments=True)
        work = None
        if any(x is not None for x in (dbname, host, port, username)):
            work = _slot_now(env, backup, dbname, host, port, username, no_password, ask_password)
        if sql is not None:
            from ..analysis.readers import views_sql
            from ..storage.backup import refuse_increment

            refuse_increment(backup)  # its files hold changes, not a table's rows
            typer.echo(views_sql(backup), nl=False)
            return
    if work is not None:
        slot_now = env.run(work, left="nothing was changed")
    if as_json:
        import orjson

        from ..inspect import summary

        typer.echo(orjson.dumps(summary(backup, slot_now), option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console

    from .reports import summary_tables

    console = Console()
    for renderable in summary_tables(backup, slot_now):
        console.print(renderable)


def _slot_now(
    env: Any,
    backup: Any,
    dbname: str | None,
    host: str | None,
    port: str | None,
    username: str | None,
    no_password: bool,
    ask_password: bool,
) -> Any:
    """What finds the backup's chain's slot on the server the options name
    (``slot.slot_standing``), to run."""
    from functools import partial

    from ..slot import slot_standing

    slot = backup.manifest.slot
    if slot is None:
        raise UsageError(
            f"{backup.path} was not made with a replication slot: -d shows a chain's slot",
            hint="leave out -d, or give a backup of a chain (dump --slot, dump --since)",
        )
    end = backup.increment.end_lsn if backup.increment is not None else slot.consistent_lsn
    env.dsn = connection = connection_spec(
        None,
        dbname,
        host=host,
        port=port,
        user=username,
        no_password=no_password,
        ask_password=ask_password,
    )
    return partial(slot_standing, connection, slot, end)
