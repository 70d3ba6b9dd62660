"""``asyncsnap convert``: options, then ``asyncsnap.convert`` through the envelope."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ..text import count
from .options import (
    DEFAULT_MEMORY_LIMIT,
    BackupArgument,
    DebugOption,
    EndpointOption,
    IdentityOption,
    jobs_option,
    quiet_option,
)

if TYPE_CHECKING:
    from ..analysis.readers import ConvertResult

SHORT_HELP = "Write a backup's tables as Parquet files, exact types."


def convert_command(
    backup_dir: BackupArgument,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where the files go (created if missing).")
    ],
    to: Annotated[
        Literal["parquet"], typer.Option("--to", metavar="FORMAT", help="parquet.")
    ] = "parquet",
    memory_limit: Annotated[
        str, typer.Option("--memory-limit", metavar="SIZE", help="DuckDB's memory limit.")
    ] = DEFAULT_MEMORY_LIMIT,
    jobs: Annotated[int, jobs_option("DuckDB threads.")] = 2,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, quiet_option()] = False,
    debug: DebugOption = False,
) -> None:
    """Write each table of a backup as one Parquet file, DIR/<file stem>.parquet, with
    the manifest's types: numeric(p,s) as DECIMAL, bytea as BLOB, json/jsonb as JSON,
    timestamps with their microseconds; what Parquet cannot hold exactly (interval,
    money, unconstrained numeric, ranges...) as its PostgreSQL text form (docs/format.md
    "Reading with exact types" lists each type). Needs DuckDB (the analysis extra).

    \b
    Examples:
      asyncsnap convert /backups/bench-before --to parquet parquet/bench-before
    """
    from ..analysis.readers import convert
    from ..storage.encryption import load_identities
    from .envelope import Envelope, use_endpoint

    with Envelope(debug=debug).guard():
        use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        result = convert(
            backup_dir,
            directory,
            to=to,
            identities=identities,
            memory_limit=memory_limit,
            threads=jobs,
        )
    if not quiet:
        _render(result)


def _render(result: ConvertResult) -> None:
    """One line per table written (the columns kept as text named), then the total."""
    from .progress import one_line

    for table in result.tables:
        text = f" (as text: {', '.join(table.text_columns)})" if table.text_columns else ""
        typer.echo(
            one_line(
                f"{table.schema}.{table.name}: {count(table.rows, 'row')} -> "
                f"{result.directory / table.path}{text}"
            )
        )
    typer.echo(f"converted {count(len(result.tables), 'table')} in {result.seconds:.2f}s")
