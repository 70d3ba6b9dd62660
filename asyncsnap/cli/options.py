"""The options commands share, declared once: connection (as pg_dump's), table selection,
the backup and its store (``--endpoint-url``, ``--identity``), jobs, and output for
people and scripts (``--quiet``, ``--log-format``, ``--summary-json``, ``--debug``).

Each is an ``Annotated`` type a command's parameter takes; the few whose help says what
the option means for that command (``--jobs``, ``--quiet``) are made by a function.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..errors import ExitCode, Interrupted, UsageError

if TYPE_CHECKING:
    from ..connection import ConnectionSpec

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


def jobs_option(help: str) -> Any:
    """``--jobs``/``-j``, with what the jobs are for this command."""
    return typer.Option("--jobs", "-j", min=1, metavar="N", help=help)


def quiet_option(help: str = "Print only errors.") -> Any:
    """``--quiet``/``-q``, with what is still printed."""
    return typer.Option("--quiet", "-q", help=help)


# -- the library's values that --help shows, written out here so that --help imports no
# library module (tests/test_fast_start.py pins each to the library's own)

Compression = Literal["zstd", "gzip", "none"]  # format.Compression
DEFAULT_LOCK_TIMEOUT = 30.0  # dump.DEFAULT_LOCK_TIMEOUT
DEFAULT_MEMORY_LIMIT = "256MB"  # analysis.readers.DEFAULT_MEMORY_LIMIT

# -- output for people and scripts

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
LogFormatOption = Annotated[
    Literal["text", "json"],
    typer.Option(
        "--log-format",
        metavar="FORMAT",
        help="text (lines for people) or json (one object per line).",
    ),
]
SummaryOption = Annotated[
    Path | None,
    typer.Option(
        "--summary-json",
        metavar="FILE",
        help="Write the outcome (exit code, rows, bytes, seconds, error) as JSON to FILE.",
    ),
]

# -- table selection

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

# -- the backup and its store

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

# -- connection, as pg_dump's

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
    from ..connection import ConnectionSpec  # asyncpg: not for --help (tests/test_fast_start.py)

    return ConnectionSpec(
        dsn=dsn if dsn is not None else dbname,
        host=host,
        port=port,
        user=user,
        password=password,
    )
