"""``asyncsnap compare``: options, then ``asyncsnap.compare`` through the envelope."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from ..errors import AsyncsnapError, ExitCode
from ..text import count
from .options import (
    BackupArgument,
    DbnameOption,
    DebugOption,
    DsnArgument,
    EndpointOption,
    HostOption,
    IdentityOption,
    NoPasswordOption,
    PasswordPromptOption,
    PortOption,
    UserOption,
    connection_spec,
    jobs_option,
    quiet_option,
)

SHORT_HELP = "Whether a database holds exactly a backup's rows."


def compare_command(
    backup_dir: BackupArgument,
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    jobs: Annotated[int, jobs_option("Connections reading.")] = 2,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison as JSON (exit codes the same).")
    ] = False,
    quiet: Annotated[bool, quiet_option("Print only differences.")] = False,
    debug: DebugOption = False,
) -> None:
    """Compare a backup with a live database: per table the row count and a fingerprint
    of the rows (docs/format.md, "Row fingerprints"), read in one snapshot; sequences'
    values; the large objects. Tables the backup does not hold are not looked at.

    Exit 0 when the database holds exactly the backup's rows; 7, with one error line per
    difference (table, counts), when it does not; other codes as for dump.

    \b
    Examples:
      # Is the restored database exact? (exit 7, one line per difference, if not)
      asyncsnap compare /backups/backup_20261124T021500Z -h db.internal -U app -d shop
      # What differs from the backup, for a script
      asyncsnap compare /backups/before-migration-42 -d shop --json | jq '.differences'
    """
    import orjson

    from ..analysis.compare import compare
    from ..storage.encryption import load_identities
    from .envelope import Envelope, print_problems, use_endpoint
    from .reports import comparison_json, describe_differences, summary_line

    env = Envelope(debug=debug, dsn=dsn)
    with env.guard(AsyncsnapError):
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
    work = partial(compare, backup_dir, connection, jobs=jobs, identities=identities)
    result = env.run(work, left="nothing was changed")
    differences = describe_differences(result)
    if as_json:
        typer.echo(orjson.dumps(comparison_json(result), option=orjson.OPT_INDENT_2).decode())
    elif differences:
        print_problems(
            differences,
            f"{count(len(differences), 'difference')}: the database does not hold "
            "exactly the backup's rows",
        )
    elif not quiet:
        typer.echo(summary_line(result))
    if differences:
        raise typer.Exit(ExitCode.DIFFERENT)
