"""``asyncsnap dump``: options, then ``asyncsnap.dump`` through the envelope."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import AsyncsnapError
from .options import (
    DEFAULT_LOCK_TIMEOUT,
    Compression,
    DbnameOption,
    DebugOption,
    DsnArgument,
    EndpointOption,
    ExcludeSchemaOption,
    ExcludeTableOption,
    HostOption,
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
    parse_size,
    quiet_option,
)

if TYPE_CHECKING:
    from ..connection import ConnectionSpec
    from ..dump import DumpResult
    from ..events import DumpFinished, Event
    from .envelope import Envelope

SHORT_HELP = "Back up tables at one moment: NDJSON files and a manifest."
# --summary-json's keys of an increment (dump --since), beside a dump's.
INCREMENT_COUNTS = (
    "parent",
    "start_lsn",
    "end_lsn",
    "transactions",
    "changes",
    "sequences",
    "wal_held_bytes",
    "new_tables",
)


def dump_command(
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="OUTPUT",
            help="Directory to put the backup in (default: the current one; with --since, "
            "its parent's), or an object store prefix (s3://bucket/prefix, gs://, az://), "
            "written to with no local copy.",
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[int, jobs_option("Connections copying at once.")] = 2,
    table: TableOption = None,
    exclude_table: ExcludeTableOption = None,
    schema: SchemaOption = None,
    exclude_schema: ExcludeSchemaOption = None,
    compress: Annotated[
        Compression,
        typer.Option("--compress", metavar="METHOD", help="zstd, gzip or none."),
    ] = "zstd",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="Backup directory name (default: backup_YYYYMMDDTHHMMSSZ in UTC, with -2, "
            "-3 ... when a run of the same second has it).",
        ),
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            min=0,
            metavar="SECONDS",
            help="Seconds to wait for each table lock; 0 waits.",
        ),
    ] = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: Annotated[
        float,
        typer.Option(
            "--statement-timeout",
            min=0,
            metavar="SECONDS",
            help="Seconds one statement (a table's or range's COPY) may run; 0: no limit.",
        ),
    ] = 0.0,
    max_duration: Annotated[
        float | None,
        typer.Option(
            "--max-duration",
            min=0.001,
            metavar="SECONDS",
            help="Cancel the dump (keeping nothing) if it runs longer; bounds how long the "
            "snapshot holds back VACUUM.",
        ),
    ] = None,
    split_larger_than: Annotated[
        str,
        typer.Option(
            "--split-larger-than",
            metavar="SIZE",
            help="Read tables larger than SIZE in page ranges over several connections "
            "(e.g. 256MB, 2GB, off).",
        ),
    ] = "64MB",
    skip_unreadable: Annotated[
        bool,
        typer.Option(
            "--skip-unreadable",
            help="Leave out tables, sequences and large objects this role cannot read "
            "(listed in the manifest) instead of failing.",
        ),
    ] = False,
    enable_row_security: Annotated[
        bool,
        typer.Option(
            "--enable-row-security",
            help="Dump tables with row-level security as this role sees them (marked in the "
            "manifest); without it such a table fails the dump.",
        ),
    ] = False,
    large_objects: Annotated[
        bool | None,
        typer.Option(
            "--large-objects/--no-large-objects",
            "-b/-B",
            help="Include or leave out large objects. Default: included unless -t or -n "
            "is given, as in pg_dump.",
            show_default=False,
        ),
    ] = None,
    no_unlogged_table_data: Annotated[
        bool,
        typer.Option(
            "--no-unlogged-table-data",
            help="Leave out the rows of unlogged tables (named in the manifest).",
        ),
    ] = False,
    quiet: Annotated[bool, quiet_option()] = False,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep",
            min=1,
            metavar="N",
            help="After success, keep only the N newest complete backups in -o "
            "(backups named with --name are never removed).",
        ),
    ] = None,
    keep_partial: Annotated[
        bool,
        typer.Option(
            "--keep-partial",
            help="On failure or interrupt keep NAME.partial with the files written so far "
            "(never a manifest).",
        ),
    ] = False,
    verify_output: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read every file back and check it, as `asyncsnap verify` does, before the "
            "backup is made complete; a problem fails the dump (exit 5).",
        ),
    ] = False,
    no_schema: Annotated[
        bool,
        typer.Option(
            "--no-schema",
            help="Leave the schema out (no pg_dump needed): a data-only backup, which "
            "restores only into existing tables.",
        ),
    ] = False,
    encrypt_to: Annotated[
        list[str] | None,
        typer.Option(
            "--encrypt-to",
            metavar="RECIPIENT",
            help="Encrypt every file with age to this public key (age1...) or the keys in "
            "this file (repeatable); restoring needs the matching --identity.",
        ),
    ] = None,
    fingerprints: Annotated[
        bool,
        typer.Option(
            "--fingerprints",
            help="Record each file's row fingerprint, so that compare reads no file for it "
            "and diff checks what it reads (a SHA-256 of every line: about 12% more time).",
        ),
    ] = False,
    slot: Annotated[
        str | None,
        typer.Option(
            "--slot",
            metavar="NAME",
            help="Create the logical replication slot NAME and dump in the snapshot that is "
            "its start: the full backup increments follow (needs wal_level = logical, a "
            "role with REPLICATION and the incremental extra: psycopg).",
        ),
    ] = None,
    publication: Annotated[
        str | None,
        typer.Option(
            "--publication",
            metavar="NAME",
            help="With --slot: the existing publication to decode with (checked, never "
            "changed); by default one named like the slot is created for the tables.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="BACKUP",
            help="Write an incremental backup instead: the changes committed after BACKUP "
            "(the chain's last backup, full or incremental), read from its slot, beside it.",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="ADDRESS",
            help="Copy the chunks as tasks on a Dask cluster: a scheduler (tcp://host:8786) "
            "or local:N (N worker processes here). The workers write the files: -o is an "
            "object store or a directory they all share (needs the cluster extra).",
        ),
    ] = None,
    endpoint_url: EndpointOption = None,
    log_format: LogFormatOption = "text",
    summary_json: SummaryOption = None,
    debug: DebugOption = False,
) -> None:
    """Dump tables at one moment to NDJSON files with a checksummed manifest.

    Connects as pg_dump does: a DSN or -d, then -h/-p/-U over its parts; with neither,
    DATABASE_URL (or ./.env), then libpq's PG* variables. Prints the backup's path on
    stdout; progress, logs and errors go to stderr. Exit codes: 0 done, 1 failed, 2 bad
    usage, 3 cannot connect, 4 output problem, 5 verification failed, 6 directory locked,
    70 a bug, 130/143 interrupted.

    \b
    Examples:
      # Before a migration: a named backup, read back and checked before it is complete
      asyncsnap dump -h db.internal -U app -d shop -o /backups --name before-migration-42 --verify
      # Around a benchmark: a URI instead of the options, four connections
      asyncsnap dump postgresql://app@db.internal/shop -o /backups -j 4 --name bench-before
      # Nightly from cron: DATABASE_URL from ./.env, JSON log, outcome file, keep the newest 7
      asyncsnap dump -o /backups --keep 7 --log-format json --summary-json /backups/last-run.json
      # Straight to a bucket (credentials from AWS_* or AWS_PROFILE), keep the newest 7 there
      asyncsnap dump -d shop -o s3://backups/nightly/shop --keep 7
      # A chain: a full backup that starts a slot, then the changes since the last backup
      asyncsnap dump -d shop -o /backups --slot shop_chain --name full
      asyncsnap dump -d shop --since /backups/full --name inc-1
      # One snapshot's chunks on a Dask cluster, each worker writing to the bucket
      asyncsnap dump -d shop -o s3://backups/shop --cluster tcp://scheduler:8786
    """
    from rich.console import Console

    from ..dump import dump
    from .envelope import Envelope, renderers, summary_base, use_endpoint
    from .progress import summary_table

    refused = _not_for_increments(locals()) if since is not None else []
    output_dir = "." if output is None else output
    # --summary-json on failure: where the backup was to be, once that is known; an
    # increment's keys too (the same keys on failure as on success).
    env = Envelope(
        debug=debug,
        dsn=dsn,
        log_format=log_format,
        summary_json=summary_json,
        outcome=summary_base("dump", path=os.path.join(output_dir, name) if name else None)
        if since is None
        else summary_base("dump", path=None, **dict.fromkeys(INCREMENT_COUNTS)),
    )
    with env.guard(AsyncsnapError):
        if refused:
            from ..errors import UsageError

            raise UsageError(
                f"{refused[0]} does not apply to an incremental backup (--since)",
                hint="an increment holds every change of the chain's tables; leave it out",
            )
        use_endpoint(endpoint_url)
        env.dsn = connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    if since is not None:
        _dump_increment(
            env,
            connection,
            since=since,
            output=output,
            name=name,
            compress=compress,
            encrypt_to=encrypt_to or [],
            quiet=quiet,
            log_format=log_format,
        )
        return
    output = output_dir
    split_bytes = parse_size(split_larger_than)
    live, render = renderers(quiet, log_format)
    watch = _Watch(env.outcome, render)
    work = partial(
        dump,
        connection,
        output=output,
        jobs=jobs,
        tables=table or (),
        exclude_tables=exclude_table or (),
        schemas=schema or (),
        exclude_schemas=exclude_schema or (),
        compression=compress,
        name=name,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        max_duration=max_duration,
        split_larger_than=split_bytes,
        skip_unreadable=skip_unreadable,
        enable_row_security=enable_row_security,
        large_objects=large_objects,
        unlogged_table_data=not no_unlogged_table_data,
        keep=keep,
        keep_partial=keep_partial,
        verify_output=verify_output,
        with_schema=not no_schema,
        encrypt_to=encrypt_to or (),
        fingerprints=fingerprints,
        slot=slot,
        publication=publication,
        cluster=cluster,
        on_event=watch,
    )
    left = "the incomplete backup was kept (--keep-partial)" if keep_partial else "nothing was kept"
    result = env.run(
        work, live, left=left, on_failure=partial(_note_partial, env.outcome, keep_partial)
    )
    env.succeed(**_summary(result))
    if live is not None and watch.finished:
        Console(stderr=True).print(summary_table(result.tables, watch.finished[0]))
    # The one line on stdout, in every mode: the backup's path, for scripts.
    typer.echo(str(result.path))


def _not_for_increments(given: dict[str, Any]) -> list[str]:
    """The options of ``dump_command`` (its arguments, ``given``) that a full backup takes
    and an increment cannot: those given, by their names."""
    refused = {
        "-j": given["jobs"] != 2,
        "-t/-T/-n/-N": bool(
            given["table"] or given["exclude_table"] or given["schema"] or given["exclude_schema"]
        ),
        "--lock-timeout": given["lock_timeout"] != DEFAULT_LOCK_TIMEOUT,
        "--statement-timeout": given["statement_timeout"] != 0.0,
        "--max-duration": given["max_duration"] is not None,
        "--split-larger-than": given["split_larger_than"] != "64MB",
        "--skip-unreadable": given["skip_unreadable"],
        "--enable-row-security": given["enable_row_security"],
        "-b/-B": given["large_objects"] is not None,
        "--no-unlogged-table-data": given["no_unlogged_table_data"],
        "--keep": given["keep"] is not None,
        "--keep-partial": given["keep_partial"],
        "--verify": given["verify_output"],
        "--no-schema": given["no_schema"],
        "--fingerprints": given["fingerprints"],
        "--slot": given["slot"] is not None,
        "--publication": given["publication"] is not None,
        "--cluster": given["cluster"] is not None,
    }
    return [option for option, is_given in refused.items() if is_given]


def _dump_increment(
    env: Envelope,
    connection: ConnectionSpec,
    *,
    since: str,
    output: str | None,
    name: str | None,
    compress: str,
    encrypt_to: list[str],
    quiet: bool,
    log_format: str,
) -> None:
    """``dump --since``: ``asyncsnap.dump_increment`` through the envelope."""
    from ..increment import dump_increment
    from ..text import count
    from .envelope import renderers
    from .progress import human_bytes

    live, render = renderers(quiet, log_format)
    work = partial(
        dump_increment,
        connection,
        since=since,
        output=output,
        name=name,
        compression=compress,  # type: ignore[arg-type]
        encrypt_to=encrypt_to,
        on_event=render,
    )
    result = env.run(work, live, left="nothing was kept; the slot was not advanced")
    env.succeed(
        path=str(result.path),
        parent=result.parent,
        start_lsn=result.start_lsn,
        end_lsn=result.end_lsn,
        transactions=result.transactions,
        changes=result.changes,
        tables=len(result.tables),
        files=result.files,
        bytes=result.bytes,
        stored_bytes=result.stored_bytes,
        sequences=result.sequences,
        seconds=round(result.seconds, 3),
        wal_held_bytes=result.wal_held_bytes,
        new_tables=list(result.new_tables),
    )
    if not quiet:
        held = (
            ""
            if result.wal_held_bytes is None
            else f"; the slot holds {human_bytes(result.wal_held_bytes)} of WAL"
        )
        typer.echo(
            f"increment of {result.parent}: {count(result.transactions, 'transaction')}, "
            f"{count(result.changes, 'change')} in {count(len(result.tables), 'table')} "
            f"({result.start_lsn} to {result.end_lsn}){held}",
            err=True,
        )
    typer.echo(str(result.path))


class _Watch:
    """Passes each event to the renderer, noting for the summary where the backup goes
    and keeping the last event for the table printed at the end."""

    def __init__(self, outcome: dict[str, object], render: Callable[[Event], None]) -> None:
        # Imported here, once: an import statement in __call__ cost a few microseconds
        # for each of a 10,000-table dump's 30,000 events (py-spy: 19% of the loop's time).
        from ..events import DumpFinished, DumpStarted
        from ..format import PARTIAL_SUFFIX

        self._finished_type, self._started_type = DumpFinished, DumpStarted
        self._partial_suffix = PARTIAL_SUFFIX
        self.outcome = outcome
        self.render = render
        self.finished: list[DumpFinished] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, self._finished_type):
            self.finished.append(event)
        elif isinstance(event, self._started_type):
            self.outcome["path"] = event.path.removesuffix(self._partial_suffix)
        self.render(event)


def _note_partial(outcome: dict[str, object], keep_partial: bool) -> None:
    """--summary-json of a failed dump: ``partial`` names what --keep-partial kept."""
    from ..format import PARTIAL_SUFFIX

    where = str(outcome["path"] or "")
    kept = where if "://" in where else f"{where}{PARTIAL_SUFFIX}"  # a store: no rename
    if keep_partial and where and ("://" in where or Path(kept).is_dir()):
        outcome["partial"] = kept


def _summary(result: DumpResult) -> dict[str, object]:
    """--summary-json's result fields of a dump that succeeded."""
    return {
        "path": str(result.path),
        "snapshot": result.snapshot_id,
        "tables": len(result.tables),
        "files": result.files,
        "rows": result.rows,
        "bytes": result.bytes,
        "stored_bytes": result.stored_bytes,
        "seconds": round(result.seconds, 3),
        "snapshot_held_seconds": round(result.snapshot_held_seconds, 3),
        "verified": result.verified,
        "large_objects": result.large_objects,
        "snapshots": result.snapshots,
        "skipped": [asdict(k) for k in result.skipped],
        "slot": result.slot.to_json() if result.slot is not None else None,
    }
