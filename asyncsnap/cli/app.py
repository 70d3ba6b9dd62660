"""The ``asyncsnap`` command: parses options, calls one library function, renders results.

No SQL here. Library errors (``AsyncsnapError``) become ``error:``/``hint:`` lines on stderr
and the documented exit code; anything else is a bug (exit 70; ``--debug`` shows the
traceback). SIGINT and SIGTERM cancel the run; cleanup is the library's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import orjson
import typer
from rich.console import Console

from ..analysis.compare import CompareResult, compare, describe_differences, summary_line
from ..analysis.compare import as_json as comparison_json
from ..analysis.diff import as_json as diff_json
from ..analysis.diff import describe as describe_diff
from ..analysis.diff import diff
from ..analysis.readers import DEFAULT_MEMORY_LIMIT, convert, views_sql
from ..connection import ConnectionSpec, resolve
from ..dump import DEFAULT_LOCK_TIMEOUT, DumpResult, dump
from ..errors import (
    AsyncsnapError,
    ExitCode,
    Interrupted,
    NotEqual,
    OutputError,
    UsageError,
    most_telling,
)
from ..events import DumpFinished, DumpStarted, Event, RestoreStarted
from ..format import PARTIAL_SUFFIX, Compression
from ..inspect import summary
from ..prune import prune
from ..restore.load import RestoreResult, restore
from ..storage.backup import open_backup
from ..storage.encryption import load_identities
from ..text import count
from ..verify import verify
from ..version import __version__
from .progress import JsonLog, LiveDisplay, PlainLog, one_line, summary_table, summary_tables

T = TypeVar("T")

app = typer.Typer(
    name="asyncsnap",
    help="Consistent, concurrent PostgreSQL exports to checksummed NDJSON, and back.\n\n"
    "asyncsnap dump makes a backup, verify checks it, restore loads it; see each "
    "command's --help for its options and examples.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int | None:
    """``256MB``, ``1.5GiB``, ``1024`` (bytes) or ``off``; units are 1024-based, as in
    PostgreSQL's own settings.

    >>> parse_size("1GB")
    1073741824
    """
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned in ("off", "none", "never"):
        return None
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise typer.BadParameter(f"{text!r} is not a size; try 256MB, 2GB or off")
    return int(value * _UNITS[unit])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asyncsnap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """asyncsnap: consistent, concurrent PostgreSQL exports to checksummed NDJSON."""
    from ..scratch import remove_abandoned_scratch

    # A run killed before its clean-up left its private scratch directory (of an
    # encrypted backup: plaintext); every run removes those whose process is gone.
    remove_abandoned_scratch()


def _passwords_in(text: str) -> list[str]:
    """The passwords a connection string holds, as written and decoded: a URI's
    ``user:PASSWORD@`` and ``?password=``, a key/value string's ``password=``. Also for a
    command-line word that carries one (``--dbname=...``, ``-d...``).

    >>> _passwords_in("--dbname=postgresql://u:p%40ss@h/d?password=other")
    ['p%40ss', 'p@ss', 'other']
    """
    for prefix in ("--dbname=", "-d"):
        if text.startswith(prefix) and ("=" in text[len(prefix) :] or "://" in text):
            text = text[len(prefix) :]
            break
    if "://" in text:
        try:
            parts = urlsplit(text)
            password = parts.password
        except ValueError:  # e.g. a bad port: not a DSN we could connect with either
            return []
        found = [password, unquote(password)] if password else []
        query = parse_qsl(parts.query, keep_blank_values=True)
        return found + [value for key, value in query if key == "password" and value]
    return [
        value.strip("'")
        for item in text.split()
        for key, _, value in [item.partition("=")]
        if key == "password" and value
    ]


def argv_secrets(argv: list[str]) -> list[str]:
    """Every password written on the command line, whichever word holds it."""
    return [s for arg in argv[1:] for s in _passwords_in(arg) if s]


Connection = str | ConnectionSpec | None


def _secrets(dsn: Connection) -> list[str]:
    text = dsn.dsn if isinstance(dsn, ConnectionSpec) else dsn
    candidates = [c for c in (text, os.environ.get("DATABASE_URL")) if c]
    found = [s for candidate in candidates for s in _passwords_in(candidate)]
    found += argv_secrets(sys.argv)  # a mistyped command line can hold one anywhere
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    with contextlib.suppress(AsyncsnapError):  # a password from a service file entry
        found += resolve(dsn).secrets
    return [s for s in found if s]


def redact(text: str, dsn: Connection) -> str:
    """Remove any password we know of from text about to be printed.

    A password is replaced where it stands on its own (between characters that are not
    letters or digits, as in a DSN's ``:pw@``), so that a short one ("r", "app") does not
    also mangle every word that contains it ("pe***mission").
    """
    for secret in sorted(set(_secrets(dsn)), key=len, reverse=True):
        text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", "***", text)
    return text


def hide_password_from_process_title(argv: list[str]) -> None:
    """A DSN argument with a password is readable by every user of the machine in ``ps``
    and ``/proc/PID/cmdline``. Rewrite the process title without it, first thing at start
    (the password is visible only while Python starts). ``sys.argv`` keeps the original."""
    secrets = set(argv_secrets(argv))
    if not secrets:
        return
    import setproctitle

    title = " ".join(["asyncsnap", *argv[1:]])
    for secret in sorted(secrets, key=len, reverse=True):
        title = title.replace(secret, "***")
    setproctitle.setproctitle(title)


def _fail(
    exc: BaseException, *, dsn: Connection, debug: bool, json_log: JsonLog | None = None
) -> typer.Exit:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if debug:
        err.print(redact("".join(traceback.format_exception(exc)), dsn), markup=False)
    code, message, hint = _describe_failure(exc)
    if json_log is not None:
        json_log.write(
            {
                "level": "error",
                "event": "error",
                "message": redact(message, dsn),
                "hint": redact(hint, dsn) if hint else None,
                "exit_code": code,
            }
        )
        return typer.Exit(code)
    # One line each, whatever the message holds: a server's DETAIL on a line of its own,
    # or a table name with a newline that would forge a line.
    err.print(f"error: {one_line(redact(message, dsn))}", markup=False)
    if hint:
        err.print(f"hint: {one_line(redact(hint, dsn))}", markup=False)
    return typer.Exit(code)


def _route_loop_messages(debug_log: Callable[[str], None] | None) -> None:
    """asyncio and asyncpg report some things straight to stderr through the event loop's
    exception handler: a future left holding ConnectionError('unexpected connection_lost()
    call') when a backend dies mid-COPY, "Resetting connection with an active transaction"
    when a cancelled run closes its pool. The library has handled each already (retried
    the chunk, reported the failure), and raw lines would break ``--log-format json``.
    They go to ``debug_log`` (``--debug``) or nowhere."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if debug_log is not None:
            exc = context.get("exception")
            message = str(context.get("message", ""))
            debug_log(message + (f": {exc!r}" if exc is not None else ""))

    loop.set_exception_handler(handler)


def _route_library_logging(debug_log: Callable[[str], None] | None) -> None:
    """Records that asyncio or asyncpg log (logging's last-resort handler would print them
    raw to stderr) go the same way as the loop's messages."""

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if debug_log is not None:
                debug_log(f"{record.name}: {record.getMessage()}")

    for name in ("asyncio", "asyncpg"):
        logger = logging.getLogger(name)
        logger.handlers = [Handler()]
        logger.propagate = False


def _describe_failure(exc: BaseException) -> tuple[int, str, str | None]:
    """Exit code, message and hint for any failure, as _fail prints them. A server's own
    HINT (asyncpg ends the error's text with it) joins ours, so there is one hint line."""
    if isinstance(exc, AsyncsnapError):
        message, server_hint = exc.message, _server_hint(exc)
        if server_hint is not None:
            message = message.removesuffix(f"\nHINT:  {server_hint}")
        hints = list(dict.fromkeys(h for h in (server_hint, exc.hint) if h))
        return exc.exit_code, message, "; ".join(hints) or None
    return (
        ExitCode.INTERNAL,
        f"internal error: {type(exc).__name__}: {exc}",
        "run again with --debug and report the traceback",
    )


def _server_hint(exc: AsyncsnapError) -> str | None:
    """The HINT of the server error behind ``exc`` (asyncpg's PostgresError has
    ``sqlstate`` and ``hint``) when the message ends with it, as asyncpg's text does. Only
    the server's own field counts: a line "HINT:" inside a table name is not one."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        hint = getattr(cause, "hint", None)
        if getattr(cause, "sqlstate", None) and isinstance(hint, str) and hint:
            return hint if exc.message.endswith(f"\nHINT:  {hint}") else None
        cause = cause.__cause__ or cause.__context__
    return None


def _write_summary(path: Path | None, fields: dict[str, object], dsn: Connection) -> str | None:
    """``--summary-json``: the run's outcome for scripts, written atomically, success or
    not. Returns why it could not be written (the caller says so), else None."""
    if path is None:
        return None
    body = orjson.loads(redact(orjson.dumps(fields).decode(), dsn))
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        return f"--summary-json {path} could not be written: {exc.strerror or exc}"
    return None


def _summary_written(problem: str | None, *, dsn: Connection, debug: bool) -> None:
    """After a successful run: a summary that could not be written fails it (exit 4),
    since whatever watches that file would never learn of this run."""
    if problem is not None:
        raise _fail(
            OutputError(problem, hint="the run itself succeeded; fix the path for the next"),
            dsn=dsn,
            debug=debug,
        )


def run_cancellable(
    work: Callable[[], Awaitable[T]],
    *,
    left: str = "nothing was kept",
    debug_log: Callable[[str], None] | None = None,
) -> T:
    """Run ``work`` on asyncio; SIGINT/SIGTERM cancel it and raise ``Interrupted``, whose
    message ends with ``left``: what the cancelled work leaves behind.

    A signal that arrives once ``work`` has finished (say, just after a backup was renamed
    into place) changes nothing: the result stands and is returned.
    """
    received: list[int] = []
    finished: list[T] = []

    async def main() -> None:
        _route_loop_messages(debug_log)
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received.append(signum)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            finished.append(await work())
            tg.cancel_scope.cancel()

    _route_library_logging(debug_log)
    try:
        anyio.run(main, backend="asyncio")
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    if finished:
        return finished[0]
    signum = received[0] if received else signal.SIGINT
    raise Interrupted(
        f"interrupted by {signal.Signals(signum).name}; {left}",
        exit_code=ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM,
    )


LogFormatOption = Annotated[
    Literal["text", "json"],
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="text (lines for people) or json (one object per line).",
    ),
]


def _summary_base(command: str, **known: object) -> dict[str, object]:
    """--summary-json's fields before the run: every key of the command's summary (README
    "Output for scripts"), null until known, so a failure has the same keys."""
    if command == "dump":
        base: dict[str, object] = {"path": None, "partial": None, **dict.fromkeys(_DUMP_COUNTS)}
    else:
        base = {"backup": None, "target": None, "dry_run": None, **dict.fromkeys(_RESTORE_COUNTS)}
    return {"command": command, "started_at": _now(), **base, **known}


# --summary-json's result fields, null when the run failed (README "Output for scripts").
_DUMP_COUNTS = (
    "snapshot",
    "tables",
    "files",
    "rows",
    "bytes",
    "stored_bytes",
    "seconds",
    "snapshot_held_seconds",
    "verified",
    "large_objects",
    "snapshots",
    "skipped",
)
_RESTORE_COUNTS = ("tables", "rows", "sequences", "large_objects", "refreshed", "seconds")
SummaryOption = Annotated[
    Path | None,
    typer.Option(
        "--summary-json",
        metavar="FILE",
        help="Write the outcome (exit code, rows, bytes, seconds, error) as JSON to FILE.",
    ),
]


TableOption = Annotated[
    list[str] | None,
    typer.Option(
        "--table", "-t", metavar="PATTERN", help="Only tables matching PATTERN (repeatable)."
    ),
]
ExcludeTableOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-table",
        "-T",
        metavar="PATTERN",
        help="Skip tables matching PATTERN (repeatable).",
    ),
]
SchemaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--schema",
        "-n",
        metavar="PATTERN",
        help="Only tables in schemas matching PATTERN (repeatable).",
    ),
]
ExcludeSchemaOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-schema",
        "-N",
        metavar="PATTERN",
        help="Skip tables in schemas matching PATTERN (repeatable).",
    ),
]
# Paths are taken as typed (str): Path() would turn "s3://b/x" into "s3:/b/x" before the
# library could see that it is a URL (location.py).
BackupArgument = Annotated[
    str,
    typer.Argument(
        metavar="BACKUP",
        help="A backup made by dump: its directory, or its URL (s3://bucket/prefix/NAME).",
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        metavar="URL",
        help="The S3 endpoint of an S3-compatible store (MinIO, SeaweedFS, R2...); "
        "default as the AWS CLI finds it ($AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the "
        "profile's endpoint_url), else AWS.",
        show_default=False,
    ),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        "-i",
        metavar="FILE",
        help="The age secret key file (age-keygen's) of an encrypted backup.",
        show_default=False,
    ),
]
DsnArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="DSN",
        help="Database name, postgresql:// URI or 'key=value ...' connection string "
        "(as -d). Default: $DATABASE_URL, then DATABASE_URL in ./.env, then libpq's PG* "
        "variables, service file and ~/.pgpass.",
        show_default=False,
    ),
]
DbnameOption = Annotated[
    str | None,
    typer.Option(
        "--dbname",
        "-d",
        metavar="DSN",
        help="The same as the DSN argument (pg_dump's -d): a name, URI or key=value string.",
        show_default=False,
    ),
]
HostOption = Annotated[
    str | None,
    typer.Option(
        "--host",
        "-h",
        metavar="HOST",
        help="Server host or socket directory; wins over the DSN's and PGHOST.",
        show_default=False,
    ),
]
PortOption = Annotated[
    str | None,
    typer.Option(
        "--port",
        "-p",
        metavar="PORT",
        help="Server port; wins over the DSN's and PGPORT.",
        show_default=False,
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--username",
        "-U",
        metavar="USER",
        help="User to connect as; wins over the DSN's and PGUSER.",
        show_default=False,
    ),
]
NoPasswordOption = Annotated[
    bool,
    typer.Option(
        "--no-password",
        "-w",
        help="Never ask for a password (the default: asyncsnap asks only with -W).",
    ),
]
PasswordPromptOption = Annotated[
    bool,
    typer.Option(
        "--password",
        "-W",
        help="Ask for the password on the terminal before connecting.",
    ),
]
_PORT = re.compile(r"[0-9]{1,5}(,[0-9]{1,5})*")


def connection_spec(
    dsn: str | None,
    dbname: str | None,
    *,
    host: str | None = None,
    port: str | None = None,
    user: str | None = None,
    no_password: bool = False,
    ask_password: bool = False,
) -> ConnectionSpec:
    """What the connection options say, checked; ``-W`` asks for the password here."""
    if dsn is not None and dbname is not None and dsn != dbname:
        raise UsageError(
            "the database is given twice: as the DSN argument and with -d",
            hint="give it once (-d NAME, or NAME as the argument)",
        )
    if port is not None and not (
        _PORT.fullmatch(port) and all(1 <= int(p) <= 65535 for p in port.split(","))
    ):
        raise UsageError(
            f"invalid port {port!r}",
            hint="a port is a number from 1 to 65535: check -p, the DSN and PGPORT",
        )
    if no_password and ask_password:
        raise UsageError("-w and -W exclude each other", hint="choose one")
    password = None
    if ask_password:
        if not sys.stdin.isatty():
            raise UsageError(
                "-W needs a terminal to ask on",
                hint="unattended runs take the password from PGPASSWORD, ~/.pgpass or a service",
            )
        try:
            password = typer.prompt("Password", hide_input=True, err=True)
        except typer.Abort:  # Ctrl-C or end of input: reported as any failure is
            raise Interrupted(
                "no password given at the prompt (-W); nothing was done",
                exit_code=ExitCode.SIGINT,
            ) from None
    return ConnectionSpec(
        dsn=dsn if dsn is not None else dbname,
        host=host,
        port=port,
        user=user,
        password=password,
    )


@app.command("dump", short_help="Back up tables at one moment: NDJSON files and a manifest.")
def dump_command(
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="OUTPUT",
            help="Directory to put the backup in, or an object store prefix "
            "(s3://bucket/prefix, gs://, az://), written to with no local copy.",
        ),
    ] = ".",
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Connections copying at once.")
    ] = 2,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
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
    endpoint_url: EndpointOption = None,
    log_format: LogFormatOption = "text",
    summary_json: SummaryOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    """
    split_bytes = parse_size(split_larger_than)
    json_log = JsonLog(sys.stderr) if log_format == "json" else None
    # --summary-json on failure: where the backup was to be, once that is known.
    outcome = _summary_base("dump", path=os.path.join(output, name) if name else None)
    try:
        _use_endpoint(endpoint_url)
        connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    except AsyncsnapError as exc:
        raise _handle(
            exc, dsn=dsn, debug=debug, json_log=json_log, summary=(summary_json, outcome)
        ) from None
    live, render = _renderers(quiet, log_format)
    finished: list[DumpFinished] = []

    def on_event(event: Event) -> None:
        if isinstance(event, DumpFinished):
            finished.append(event)
        if isinstance(event, DumpStarted):
            outcome["path"] = event.path.removesuffix(PARTIAL_SUFFIX)
        render(event)

    async def work() -> DumpResult:
        return await dump(
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
            on_event=on_event,
        )

    left = "the incomplete backup was kept (--keep-partial)" if keep_partial else "nothing was kept"
    try:
        result = _run_rendered(work, live, left=left, debug=debug, json_log=json_log)
    except BaseException as exc:
        where = str(outcome["path"] or "")
        kept = where if "://" in where else f"{where}{PARTIAL_SUFFIX}"  # a store: no rename
        if keep_partial and where and ("://" in where or Path(kept).is_dir()):
            outcome["partial"] = kept
        raise _handle(
            exc, dsn=connection, debug=debug, json_log=json_log, summary=(summary_json, outcome)
        ) from None
    problem = _write_summary(
        summary_json,
        {
            **outcome,
            "ok": True,
            "exit_code": 0,
            "finished_at": _now(),
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
            "error": None,
            "hint": None,
        },
        connection,
    )
    _summary_written(problem, dsn=connection, debug=debug)
    if live is not None and finished:
        Console(stderr=True).print(summary_table(result.tables, finished[0]))
    # The one line on stdout, in every mode: the backup's path, for scripts.
    typer.echo(str(result.path))


# glibc's mallopt parameter for MALLOC_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def _limit_malloc_arenas() -> None:
    """At most two malloc arenas, unless ``MALLOC_ARENA_MAX`` says otherwise. glibc gives
    threads that allocate at once arenas of their own (up to eight per core), and the
    converter, zstd, age and obstore threads each kept memory in theirs. Measured on 1 M
    mixed rows, five alternating pairs of whole runs: peak RSS 67 -> 61 MiB to disk and
    92 -> 86 MiB to S3, wall time 0.98 and 0.99 of before (within the runs' spread). Must
    run before threads start; a no-op off glibc."""
    import ctypes
    import platform

    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)


def main() -> None:
    """Console-script entry point.

    Option errors Click finds (an unknown option, a value out of range) get the same
    ``error:``/``hint:`` lines (or JSON line) and exit code 2 as the library's usage errors,
    instead of Click's usage block.
    """
    hide_password_from_process_title(sys.argv)
    _limit_malloc_arenas()
    try:
        code = app(prog_name="asyncsnap", standalone_mode=False)
    except typer.Abort:  # Ctrl-C or end of input at a prompt (-W)
        print("error: interrupted at the prompt; nothing was done", file=sys.stderr)
        sys.exit(ExitCode.SIGINT)
    except Exception as exc:
        # Click's UsageError (typer >= 0.22 vendors Click, so matched by name).
        kinds = {kind.__name__ for kind in type(exc).__mro__}
        if "UsageError" not in kinds:
            raise
        if "NoArgsIsHelpError" in kinds:  # bare `asyncsnap`: the help, as Click shows it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(ExitCode.USAGE)
        _usage_failed(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_failed(exc: Any) -> NoReturn:
    """An option error Click found: one error line and one hint line, exit 2."""
    command = exc.ctx.command_path if exc.ctx is not None else "asyncsnap"
    hint = f"see `{command} --help`"
    name = exc.ctx.info_name if exc.ctx is not None else None
    # Click quotes what it could not parse: a mistyped command line can hold a password.
    message = redact(exc.format_message(), None)
    summary = _argv_value("--summary-json")
    if summary and name in ("dump", "restore"):  # a cron job watching it sees this too
        problem = _write_summary(
            Path(summary),
            {
                **_summary_base(name),
                "ok": False,
                "exit_code": ExitCode.USAGE,
                "finished_at": _now(),
                "error": message,
                "hint": hint,
            },
            None,
        )
        hint += f" (and {problem})" if problem else ""
    if _argv_value("--log-format") == "json":
        JsonLog(sys.stderr).write(
            {
                "level": "error",
                "event": "error",
                "message": message,
                "hint": hint,
                "exit_code": ExitCode.USAGE,
            }
        )
    else:
        print(f"error: {one_line(message)}", file=sys.stderr)
        print(f"hint: {one_line(hint)}", file=sys.stderr)
    sys.exit(ExitCode.USAGE)


def _argv_value(option: str) -> str | None:
    """The value the command line gives ``option`` (``--opt VALUE`` or ``--opt=VALUE``),
    for errors Click finds before the options are parsed."""
    found = None  # the last one counts, as for Click
    for arg, following in itertools.pairwise([*sys.argv[1:], ""]):
        if arg == option and following:
            found = following
        elif arg.startswith(option + "="):
            found = arg.split("=", 1)[1]
    return found


def _renderers(
    quiet: bool, log_format: str = "text"
) -> tuple[LiveDisplay | None, Callable[[Event], None]]:
    """A live display on a terminal, plain lines elsewhere, JSON lines with --log-format
    json, nothing with --quiet."""
    if quiet:
        return None, lambda event: None
    if log_format == "json":
        return None, JsonLog(sys.stderr)
    if sys.stderr.isatty():
        live = LiveDisplay(Console(stderr=True))
        return live, live
    return None, PlainLog(sys.stderr)


def _run_rendered(
    work: Callable[[], Awaitable[T]],
    live: LiveDisplay | None,
    *,
    left: str = "nothing was kept",
    debug: bool = False,
    json_log: JsonLog | None = None,
) -> T:
    debug_log = _debug_logger(json_log) if debug else None
    if live is None:
        return run_cancellable(work, left=left, debug_log=debug_log)
    with live:
        return run_cancellable(work, left=left, debug_log=debug_log)


def _debug_logger(json_log: JsonLog | None) -> Callable[[str], None]:
    """``--debug``: internal messages as a ``debug:`` line, or a JSON line."""
    if json_log is not None:
        return lambda message: json_log.write(
            {"level": "debug", "event": "debug", "message": message}
        )
    return lambda message: print(f"debug: {message}", file=sys.stderr, flush=True)


@app.command("restore", short_help="Load a backup into a database: schema and rows, or rows.")
def restore_command(
    backup_dir: BackupArgument,
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Connections loading.")
    ] = 2,
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
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    log_format: LogFormatOption = "text",
    summary_json: SummaryOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    json_log = JsonLog(sys.stderr) if log_format == "json" else None
    outcome = _summary_base("restore", backup=str(backup_dir), dry_run=dry_run)
    try:
        if truncate and append:
            raise UsageError("--truncate and --append exclude each other", hint="choose one")
        _use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    except AsyncsnapError as exc:
        raise _handle(
            exc, dsn=dsn, debug=debug, json_log=json_log, summary=(summary_json, outcome)
        ) from None
    live, render = _renderers(quiet and not dry_run, log_format)

    def on_event(event: Event) -> None:
        if isinstance(event, RestoreStarted):
            outcome["target"] = event.target
        render(event)

    async def work() -> RestoreResult:
        return await restore(
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
            on_event=on_event,
        )

    left = (
        "nothing was loaded (one transaction)"
        if single_transaction
        else "tables already committed stay loaded, the rest was rolled back"
    )
    try:
        result = _run_rendered(work, live, left=left, debug=debug, json_log=json_log)
    except BaseException as exc:
        raise _handle(
            exc,
            dsn=connection,
            debug=debug,
            json_log=json_log,
            summary=(summary_json, outcome),
        ) from None
    comparison = result.comparison
    differences = describe_differences(comparison) if comparison is not None else []
    if differences:
        not_equal = NotEqual(
            f"restored, but the database does not hold exactly the backup's rows: {differences[0]}",
            hint=f"{count(len(differences), 'difference')}; `asyncsnap compare "
            f"{backup_dir} ...` lists them all",
        )
        raise _handle(
            not_equal,
            dsn=connection,
            debug=debug,
            json_log=json_log,
            summary=(summary_json, outcome),
        ) from None
    problem = _write_summary(
        summary_json,
        {
            **outcome,
            "ok": True,
            "exit_code": 0,
            "finished_at": _now(),
            "tables": len(result.tables),
            "rows": result.rows,
            "sequences": result.sequences,
            "large_objects": result.large_objects,
            "refreshed": result.refreshed,
            "seconds": round(result.seconds, 3),
            "error": None,
            "hint": None,
        },
        connection,
    )
    _summary_written(problem, dsn=connection, debug=debug)
    if json_log is not None:
        return
    if dry_run:
        for line in result.lines:
            typer.echo(line)
    else:  # the summary is stdout's promised line, --quiet or not (it quiets stderr)
        extra = f", {count(result.large_objects, 'large object')}" if result.large_objects else ""
        if result.refreshed:
            extra += f", {count(result.refreshed, 'materialized view')} refreshed"
        typer.echo(
            f"restored {count(len(result.tables), 'table')}, {count(result.rows, 'row')}, "
            f"{count(result.sequences, 'sequence')}{extra} in {result.seconds:.2f}s"
        )
        if comparison is not None:
            typer.echo(summary_line(comparison))


@app.command("compare", short_help="Whether a database holds exactly a backup's rows.")
def compare_command(
    backup_dir: BackupArgument,
    dsn: DsnArgument = None,
    dbname: DbnameOption = None,
    host: HostOption = None,
    port: PortOption = None,
    username: UserOption = None,
    no_password: NoPasswordOption = False,
    ask_password: PasswordPromptOption = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Connections reading.")
    ] = 2,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison as JSON (exit codes the same).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only differences.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    try:
        _use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        connection = connection_spec(
            dsn,
            dbname,
            host=host,
            port=port,
            user=username,
            no_password=no_password,
            ask_password=ask_password,
        )
    except AsyncsnapError as exc:
        raise _handle(exc, dsn=dsn, debug=debug) from None

    async def work() -> CompareResult:
        return await compare(backup_dir, connection, jobs=jobs, identities=identities)

    try:
        result = _run_rendered(work, None, left="nothing was changed", debug=debug)
    except BaseException as exc:
        raise _handle(exc, dsn=connection, debug=debug) from None
    differences = describe_differences(result)
    if as_json:
        typer.echo(orjson.dumps(comparison_json(result), option=orjson.OPT_INDENT_2).decode())
    elif differences:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for line in differences:
            err.print(f"error: {one_line(line)}", markup=False)
        err.print(
            f"hint: {count(len(differences), 'difference')}: the database does not hold "
            "exactly the backup's rows",
            markup=False,
        )
    elif not quiet:
        typer.echo(summary_line(result))
    if differences:
        raise typer.Exit(ExitCode.DIFFERENT)


@app.command("diff", short_help="What changed between two backups, table by table.")
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
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="DuckDB threads.")
    ] = 2,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 7 when the backups differ (as git diff).")
    ] = False,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    try:
        _use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        result = diff(
            before,
            after,
            rows_dir=rows,
            memory_limit=memory_limit,
            threads=jobs,
            identities=identities,
        )
    except BaseException as exc:
        raise _handle(exc, dsn=None, debug=debug) from None
    if as_json:
        typer.echo(orjson.dumps(diff_json(result), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in describe_diff(result):
            typer.echo(
                one_line(line) if not line.startswith(("---", "+++", "@@", " ", "-", "+")) else line
            )
    if exit_code and not result.identical:
        raise typer.Exit(ExitCode.DIFFERENT)


@app.command("convert", short_help="Write a backup's tables as Parquet files, exact types.")
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
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="DuckDB threads.")
    ] = 2,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    try:
        _use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else []
        result = convert(
            backup_dir,
            directory,
            to=to,
            identities=identities,
            memory_limit=memory_limit,
            threads=jobs,
        )
    except BaseException as exc:
        raise _handle(exc, dsn=None, debug=debug) from None
    if quiet:
        return
    for table in result.tables:
        text = f" (as text: {', '.join(table.text_columns)})" if table.text_columns else ""
        typer.echo(
            one_line(
                f"{table.schema}.{table.name}: {count(table.rows, 'row')} -> "
                f"{result.directory / table.path}{text}"
            )
        )
    typer.echo(f"converted {count(len(result.tables), 'table')} in {result.seconds:.2f}s")


@app.command("verify", short_help="Check a backup completely, offline.")
def verify_command(
    backup_dir: BackupArgument,
    identity: IdentityOption = None,
    endpoint_url: EndpointOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Check a backup completely, offline: manifest, checksums, rows, every line.

    Exit 0 when the backup is whole; 5, with one error line per problem, when it is not.

    \b
    Examples:
      asyncsnap verify /backups/before-migration-42 && echo good
      # The checksums alone, with standard tools
      cd /backups/before-migration-42 && sha256sum -c --quiet SHA256SUMS
    """
    try:
        _use_endpoint(endpoint_url)
        identities = load_identities(identity) if identity else None
        result = verify(backup_dir, identities=identities)
    except BaseException as exc:
        raise _handle(exc, dsn=None, debug=debug) from None
    if not result.ok:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for problem in result.problems:
            err.print(f"error: {one_line(str(problem))}", markup=False)
        err.print(
            f"hint: {count(len(result.problems), 'problem')}; do not restore from this backup",
            markup=False,
        )
        raise typer.Exit(ExitCode.VERIFY)
    if not quiet:
        typer.echo(
            f"OK {result.path}: {count(result.tables, 'table')}, {count(result.files, 'file')}, "
            f"{count(result.rows, 'row')}, {count(result.bytes, 'byte')} checked in "
            f"{result.seconds:.2f}s"
            if result.content_checked
            else f"OK {result.path}: {count(result.files, 'file')} match their sha256 and "
            f"size; encrypted, so no line was read (give --identity to check every line)"
        )


@app.command("prune", short_help="Remove old backups, keep the N newest.")
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    try:
        _use_endpoint(endpoint_url)
        result = prune(
            directory,
            keep=keep,
            dry_run=dry_run,
            include_named=include_named,
            abandoned_after=timedelta(seconds=abandoned_after),
        )
    except BaseException as exc:
        raise _handle(exc, dsn=None, debug=debug) from None
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


@app.command("inspect", short_help="Summarise a backup.")
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
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
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
    try:
        _use_endpoint(endpoint_url)
        backup = open_backup(backup_dir)
        if sql is not None:
            typer.echo(views_sql(backup), nl=False)
            return
    except BaseException as exc:
        raise _handle(exc, dsn=None, debug=debug) from None
    if as_json:
        typer.echo(orjson.dumps(summary(backup), option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    for renderable in summary_tables(backup):
        console.print(renderable)


def _handle(
    exc: BaseException,
    *,
    dsn: Connection,
    debug: bool,
    json_log: JsonLog | None = None,
    summary: tuple[Path | None, dict[str, object]] = (None, {}),
) -> BaseException:
    """Turn a failure into its message and exit code (and --summary-json, if asked)."""
    if isinstance(exc, typer.Exit | SystemExit):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted("interrupted by SIGINT; nothing was kept", exit_code=ExitCode.SIGINT)
    code, message, hint = _describe_failure(exc)
    path, fields = summary
    problem = _write_summary(
        path,
        {
            **fields,
            "ok": False,
            "exit_code": code,
            "finished_at": _now(),
            "error": message,
            "hint": hint,
        },
        dsn,
    )
    if problem is not None and isinstance(exc, AsyncsnapError):  # said in the one hint line
        exc.hint = f"{exc.hint} (and {problem})" if exc.hint else problem
    return _fail(exc, dsn=dsn, debug=debug, json_log=json_log)


def _use_endpoint(url: str | None) -> None:
    """``--endpoint-url``: the S3 endpoint for this run, before every other setting of
    one (``awsconfig``), as the AWS CLI's option is."""
    if url is None:
        return
    from ..storage.awsconfig import use_endpoint_option

    use_endpoint_option(url)


def _now() -> str:
    """A summary's timestamp: UTC, milliseconds, ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
