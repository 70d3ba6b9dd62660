"""``asyncsnap verify``: options, then ``asyncsnap.verify`` through the envelope."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import ExitCode
from ..text import count
from .options import BackupArgument, DebugOption, EndpointOption, IdentityOption, quiet_option

if TYPE_CHECKING:
    from ..verify import VerifyResult

SHORT_HELP = "Check a backup completely, offline."


def verify_command(
    backup_dir: BackupArgument,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, quiet_option("Print only problems.")] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="ADDRESS",
            help="Check the data files on a Dask cluster's workers (tcp://host:8786 or "
            "local:N), each reading them where the backup is; the --identity file is read "
            "by each worker at its path (needs the cluster extra).",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Check a backup completely, offline: manifest, checksums, rows, every line.

    Exit 0 when the backup is whole; 5, with one error line per problem, when it is not.

    \b
    Examples:
      asyncsnap verify /backups/before-migration-42 && echo good
      # The checksums alone, with standard tools
      cd /backups/before-migration-42 && sha256sum -c --quiet SHA256SUMS
      # A big backup's files checked by a cluster's workers (a directory they all mount)
      asyncsnap verify /backups/before-migration-42 --cluster tcp://scheduler:8786
    """
    from ..storage.encryption import load_identities
    from ..verify import verify
    from .envelope import Envelope, interrupted_by_signals, print_problems, use_endpoint

    with (
        Envelope(debug=debug).guard(),
        interrupted_by_signals("the backup was not checked to the end"),
    ):
        use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else None
        result = verify(backup_dir, identities=identities, cluster=cluster, identity_file=identity)
    if not result.ok:
        print_problems(
            [str(problem) for problem in result.problems],
            f"{count(len(result.problems), 'problem')}; do not restore from this backup",
        )
        raise typer.Exit(ExitCode.VERIFY)
    if not quiet:
        typer.echo(_ok_line(result))


def _ok_line(result: VerifyResult) -> str:
    chain = f" (a chain of {result.backups} backups)" if result.backups > 1 else ""
    if result.content_checked:
        return (
            f"OK {result.path}{chain}: {count(result.tables, 'table')}, "
            f"{count(result.files, 'file')}, "
            f"{count(result.rows, 'row')}, {count(result.bytes, 'byte')} checked in "
            f"{result.seconds:.2f}s"
        )
    return (
        f"OK {result.path}{chain}: {count(result.files, 'file')} match their sha256 and "
        f"size; encrypted, so no line was read (give --identity to check every line)"
    )
