"""``asyncsnap diff``: options, then ``asyncsnap.diff`` through the envelope."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ExitCode
from .options import (
    DEFAULT_MEMORY_LIMIT,
    DebugOption,
    EndpointOption,
    IdentityOption,
    jobs_option,
)

SHORT_HELP = "What changed between two backups, table by table."

# The lines of the schema's unified diff, printed as they are.
_UNIFIED = ("---", "+++", "@@", " ", "-", "+")


def diff_command(
    before: Annotated[str, typer.Argument(metavar="BEFORE", help="The earlier backup.")],
    after: Annotated[str, typer.Argument(metavar="AFTER", help="The later backup.")],
    rows: Annotated[
        Path | None,
        typer.Option(
            "--rows",
            metavar="DIR",
            help="Write each differing table's rows to DIR/<table file stem>.ndjson "
            "(added, removed, changed with before and after).",
            show_default=False,
        ),
    ] = None,
    memory_limit: Annotated[
        str,
        typer.Option(
            "--memory-limit",
            metavar="SIZE",
            help="DuckDB's memory limit (it spills to a private temporary directory past it).",
        ),
    ] = DEFAULT_MEMORY_LIMIT,
    jobs: Annotated[int, jobs_option("DuckDB threads.")] = 2,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 7 when the backups differ (as git diff).")
    ] = False,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """What changed from one backup to another: per table the rows added, removed and
    changed (paired by primary key; as whole rows without one), columns added, dropped or
    retyped, sequences that moved, the large objects, and the schema's SQL as a unified
    diff. Tables whose files are the same bytes are not read; the others are checked as
    restore checks them. Needs DuckDB (pip install 'asyncsnap[analysis]').

    \b
    Examples:
      # What did the benchmark run change? (a backup before it, one after it)
      asyncsnap diff /backups/bench-before /backups/backup_20261124T021500Z
      # The changed rows themselves, one NDJSON file per table, for a closer look
      asyncsnap diff /backups/bench-before /backups/backup_20261124T021500Z --rows changes
    """
    import orjson

    from ..analysis.diff import diff
    from ..storage.encryption import load_identities
    from .envelope import Envelope, use_endpoint
    from .progress import one_line
    from .reports import describe_diff, diff_json

    with Envelope(debug=debug).guard():
        use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        result = diff(
            before,
            after,
            rows_dir=rows,
            memory_limit=memory_limit,
            threads=jobs,
            identities=identities,
        )
    if as_json:
        typer.echo(orjson.dumps(diff_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in describe_diff(result):
            typer.echo(line if line.startswith(_UNIFIED) else one_line(line))
    if exit_code and not result.identical:
        raise typer.Exit(ExitCode.DIFFERENT)
