"""``asyncsnap prune``: options, then ``asyncsnap.prune`` through the envelope."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from ..text import count
from .options import DebugOption, EndpointOption

if TYPE_CHECKING:
    from ..prune import PruneResult

SHORT_HELP = "Remove old backups, keep the N newest."


def prune_command(
    directory: Annotated[
        str,
        typer.Argument(
            metavar="OUTPUT", help="The directory or store prefix dumps are written to (-o)."
        ),
    ],
    keep: Annotated[
        int,
        typer.Option("--keep", min=1, metavar="N", help="How many of the newest backups to keep."),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, remove nothing.")] = False,
    include_named: Annotated[
        bool,
        typer.Option(
            "--include-named",
            help="Also count and remove backups named with --name (kept by default).",
        ),
    ] = False,
    abandoned_after: Annotated[
        float,
        typer.Option(
            "--abandoned-after",
            min=0,
            metavar="SECONDS",
            help="In an object store: remove dumps that died (a claim without a manifest) "
            "once their claim is this old; at least 600 (a running dump renews its claim "
            "every minute).",
        ),
    ] = 86400.0,
    endpoint_url: EndpointOption = None,
    debug: DebugOption = False,
) -> None:
    """Remove complete backups older than the N newest; nothing else is touched.

    Only backups with the default name (backup_YYYYMMDDTHHMMSSZ) count: one named with
    --name is kept unless --include-named.

    \b
    Examples:
      # What would go; before-migration-42 and bench-before stay (named)
      asyncsnap prune /backups --keep 7 --dry-run
      asyncsnap prune /backups --keep 7
      # In a bucket: also removes dumps that died more than a day ago
      asyncsnap prune s3://backups/nightly/shop --keep 7
    """
    from ..prune import prune
    from .envelope import Envelope, use_endpoint

    with Envelope(debug=debug).guard():
        use_endpoint(endpoint_url)
        result = prune(
            directory,
            keep=keep,
            dry_run=dry_run,
            include_named=include_named,
            abandoned_after=timedelta(seconds=abandoned_after),
        )
    _render(result, dry_run=dry_run)


def _render(result: PruneResult, *, dry_run: bool) -> None:
    """One line per backup removed (or that would be) or left alone, then the totals."""
    verb = "would remove" if dry_run else "removed"
    for path in result.removed:
        typer.echo(f"{verb} {path}")
    for path in result.abandoned:
        typer.echo(f"{verb} {path} (a dump that died: no manifest)")
    for path in result.foreign:
        typer.echo(f"left alone {path} (not written by asyncsnap)")
    for path in result.ignored:
        typer.echo(f"left alone {path} ({result.reasons.get(str(path), 'not a backup')})")
    named = (
        f", kept {count(len(result.named), 'named backup')} (--include-named counts them)"
        if result.named
        else ""
    )
    foreign = (
        f"; {count(len(result.foreign), 'file')} not written by asyncsnap left in place"
        if result.foreign
        else ""
    )
    typer.echo(
        f"kept {len(result.kept)}, {verb} {len(result.removed) + len(result.abandoned)}, "
        f"left alone {len(result.ignored)} (not complete asyncsnap backups){named}{foreign}"
    )
