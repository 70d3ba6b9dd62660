"""``asyncsnap inspect``: opens the backup through the envelope, prints its report."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from .options import BackupArgument, DebugOption, EndpointOption

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
    debug: DebugOption = False,
) -> None:
    """Summarise a backup: snapshot, server, tables, rows, sizes, restore order.

    With --sql duckdb, print instead one DuckDB view per table, reading the backup's
    files with the manifest's types (numeric as DECIMAL, bytea as BLOB, jsonb as JSON...;
    docs/format.md "Reading with exact types").

    \b
    Examples:
      asyncsnap inspect /backups/before-migration-42
      asyncsnap inspect /backups/before-migration-42 --json | jq .totals
      # Query a backup with exact types in DuckDB
      asyncsnap inspect /backups/before-migration-42 --sql duckdb > views.sql
    """
    from ..storage.backup import open_backup
    from .envelope import Envelope, use_endpoint

    with Envelope(debug=debug).guard():
        use_endpoint(endpoint_url)
        backup = open_backup(backup_dir, increments=True)
        if sql is not None:
            from ..analysis.readers import views_sql
            from ..storage.backup import refuse_increment

            refuse_increment(backup)  # its files hold changes, not a table's rows
            typer.echo(views_sql(backup), nl=False)
            return
    if as_json:
        import orjson

        from ..inspect import summary

        typer.echo(orjson.dumps(summary(backup), option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console

    from .reports import summary_tables

    console = Console()
    for renderable in summary_tables(backup):
        console.print(renderable)
